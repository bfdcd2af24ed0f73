//! AFL target `manifest` (see `cri_imaged_fuzz::manifest`).
fn main() {
    afl::fuzz!(|data: &[u8]| cri_imaged_fuzz::manifest(data));
}
