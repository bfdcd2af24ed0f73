//! AFL target `digest` (see `cri_imaged_fuzz::digest`).
fn main() {
    afl::fuzz!(|data: &[u8]| cri_imaged_fuzz::digest(data));
}
