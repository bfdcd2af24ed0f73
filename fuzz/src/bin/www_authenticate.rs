//! AFL target `www_authenticate` (see `cri_imaged_fuzz::www_authenticate`).
fn main() {
    afl::fuzz!(|data: &[u8]| cri_imaged_fuzz::www_authenticate(data));
}
