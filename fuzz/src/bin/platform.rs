//! AFL target `platform` (see `cri_imaged_fuzz::platform`).
fn main() {
    afl::fuzz!(|data: &[u8]| cri_imaged_fuzz::platform(data));
}
