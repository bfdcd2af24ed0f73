//! AFL target `token_response` (see `cri_imaged_fuzz::token_response`).
fn main() {
    afl::fuzz!(|data: &[u8]| cri_imaged_fuzz::token_response(data));
}
