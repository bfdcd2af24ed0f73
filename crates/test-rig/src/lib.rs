//! Integration-test rig for cri-imaged.
//!
//! A dev-only workspace crate. Usage from a cri-imaged integration test or
//! bench: `use cri_imaged_test_rig::*;` and start the daemon with
//! [`cri_imaged!`]`().start(&containerd)`.
//!
//! * [`Containerd`] – a private containerd (own root/state/socket/certs.d) per test.
//! * [`Registry`]   – a private `docker-registry` on a free 127.0.0.1 port.
//! * [`ImageBuilder`] / [`IndexBuilder`] / [`Layer`] – deterministic OCI/Docker images.
//! * [`push`] / [`push_index`] / [`Pusher`] – push images over the registry HTTP API.
//! * [`TestEnv`]    – one containerd + one registry, with certs.d wired for plain http.
//! * [`CriImaged`]  – the daemon under test; its config is a typed [`Config`].
//! * [`FaultProxy`] – an HTTP proxy injecting registry faults (errors, resets,
//!   truncation, stalls, corruption, slow bodies, redirect loops, custom
//!   answers, longer/shorter bodies, endless bodies, redirects to another host).
//! * [`Mock`]       – a scripted HTTP server (fake registries, token servers).
//! * [`FakeSnapshotter`] – a remote (lazy-pull) snapshotter served as a
//!   containerd proxy plugin, recording every Prepare and its labels.
//!
//! Everything cleans up on drop (also on panic): processes are killed and
//! waited for, mounts under the temp dirs are lazily unmounted.
//!
//! Blocking helpers (process start/stop, `ctr`) are plain sync functions; when
//! the code under test runs in the same tokio runtime, use
//! `#[tokio::test(flavor = "multi_thread")]` so a blocking rig call (e.g.
//! `Containerd::stop`, up to 10 s) doesn't starve it.

pub mod containerd;
pub mod daemon;
pub mod env;
pub mod fault_proxy;
pub mod image;
pub mod loopback;
pub mod mock;
pub mod mounts;
pub mod push;
pub mod registry;
pub mod snapshotter;

pub use containerd::{containerd_version, Containerd, ContainerdOpts, ContainerdVersion};
pub use daemon::*;
pub use env::{load_with_ctr, load_with_ctr_args, write_hosts_toml, TestEnv};
pub use fault_proxy::{Fault, FaultProxy, LogEntry, Rule};
pub use image::base_layer;
pub use image::{
    standard_images, BuiltImage, BuiltIndex, Compression, Entry, ImageBuilder, IndexBuilder, Layer,
    MediaFamily, StandardImages,
};
pub use loopback::LoopbackServer;
pub use mock::{Handler, Mock, MockResponse, SeenRequest};
pub use mounts::{mount_tmpfs, mounts_under, unmount_under, Tmpfs};
pub use push::{
    block_on, push, push_blocking, push_index, push_index_blocking, push_with_auth, Pusher,
};
pub use registry::http_status;
pub use registry::{Pki, Registry, RegistryOpts};
pub use snapshotter::{FakeSnapshotter, Prepared};

use sha2::{Digest as _, Sha256};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A free TCP port on 127.0.0.1 (bind port 0, read it, release it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// Poll `cond` every 50 ms until it returns true or `timeout` passes.
/// Returns whether the condition became true.
pub fn wait_for<F: FnMut() -> bool>(mut cond: F, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Async variant of [`wait_for`] (sleeps with tokio).
pub async fn wait_for_async<F, Fut>(mut cond: F, timeout: Duration) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Last `n` lines of a (log) file, for panic messages.
pub fn tail_file(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Write `<dir>/<host>/hosts.toml` with `text` verbatim; returns its path.
pub fn write_hosts(dir: &Path, host: &str, text: &str) -> PathBuf {
    let d = dir.join(host);
    std::fs::create_dir_all(&d).unwrap();
    let f = d.join("hosts.toml");
    std::fs::write(&f, text).unwrap();
    f
}
