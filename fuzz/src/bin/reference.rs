//! AFL target `reference` (see `cri_imaged_fuzz::reference`).
fn main() {
    afl::fuzz!(|data: &[u8]| cri_imaged_fuzz::reference(data));
}
