//! AFL target `layer_writer` (see `cri_imaged_fuzz::layer_writer`).
fn main() {
    afl::fuzz!(|data: &[u8]| cri_imaged_fuzz::layer_writer(data));
}
