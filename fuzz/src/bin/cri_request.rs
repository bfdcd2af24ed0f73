//! AFL target `cri_request` (see `cri_imaged_fuzz::cri_request`).
fn main() {
    afl::fuzz!(|data: &[u8]| cri_imaged_fuzz::cri_request(data));
}
