//! AFL target `hosts_toml` (see `cri_imaged_fuzz::hosts_toml`).
fn main() {
    afl::fuzz!(|data: &[u8]| cri_imaged_fuzz::hosts_toml(data));
}
