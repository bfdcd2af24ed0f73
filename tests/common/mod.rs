//! Integration-test rig for cri-imaged.
//!
//! Usage from a test file: `mod common; use common::*;`
//!
//! * [`Containerd`] – a private containerd (own root/state/socket/certs.d) per test.
//! * [`Registry`]   – a private `docker-registry` on a free 127.0.0.1 port.
//! * [`ImageBuilder`] / [`IndexBuilder`] / [`Layer`] – deterministic OCI/Docker images.
//! * [`push`] / [`push_index`] / [`Pusher`] – push images over the registry HTTP API.
//! * [`TestEnv`]    – one containerd + one registry, with certs.d wired for plain http.
//!
//! Everything cleans up on drop (also on panic): processes are killed and
//! waited for, mounts under the temp dirs are lazily unmounted.
//!
//! Blocking helpers (process start/stop, `ctr`) are plain sync functions; when
//! the code under test runs in the same tokio runtime, use
//! `#[tokio::test(flavor = "multi_thread")]` so a blocking rig call (e.g.
//! `Containerd::stop`, up to 10 s) doesn't starve it.
#![allow(dead_code)]
#![allow(unused_imports)]

pub mod containerd;
pub mod daemon;
pub mod image;
pub mod loopback;
pub mod push;
pub mod registry;

pub use containerd::{Containerd, ContainerdOpts};
pub use daemon::*;
pub use image::base_layer;
pub use image::{
    standard_images, BuiltImage, BuiltIndex, Compression, Entry, ImageBuilder, IndexBuilder, Layer,
    MediaFamily, StandardImages,
};
pub use push::{
    block_on, push, push_blocking, push_index, push_index_blocking, push_with_auth, Pusher,
};
pub use registry::http_status;
pub use registry::Registry;

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

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo (octal).
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points (from /proc/self/mountinfo) equal to or below `dir`,
/// deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(&dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    v.dedup();
    v
}

/// Lazily unmount everything strictly below `dir` (and `dir` itself if
/// `include_self`). Repeats until nothing is left (stacked mounts).
pub fn unmount_under(dir: &Path, include_self: bool) {
    let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for _ in 0..10 {
        let ms: Vec<PathBuf> = mounts_under(&canon)
            .into_iter()
            .filter(|m| include_self || m != &canon)
            .collect();
        if ms.is_empty() {
            return;
        }
        for m in ms {
            if let Ok(c) = std::ffi::CString::new(m.as_os_str().to_string_lossy().as_bytes()) {
                unsafe {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
    }
}

/// A tmpfs of a given size mounted on a fresh temp dir; unmounted on drop.
/// Handy for "disk full" tests: `ContainerdOpts { root: Some(tmpfs.path().into()), .. }`
/// (or use `ContainerdOpts::root_tmpfs_bytes`, which manages one for you).
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size_bytes: u64) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("rig-tmpfs-")
            .tempdir()
            .unwrap();
        mount_tmpfs(dir.path(), size_bytes);
        Tmpfs { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub(crate) fn mount_tmpfs(path: &Path, size_bytes: u64) {
    let st = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size_bytes},mode=0755"),
            "tmpfs",
        ])
        .arg(path)
        .status()
        .expect("run mount");
    assert!(st.success(), "mount tmpfs on {} failed", path.display());
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount_under(self.dir.path(), true);
    }
}

/// One containerd + one registry, with `certs.d/127.0.0.1:PORT/hosts.toml`
/// pointing containerd (and `ctr --hosts-dir`) at the registry over plain http.
pub struct TestEnv {
    // Field order = drop order: containerd first (unmounts), then registry.
    pub containerd: Containerd,
    pub registry: Registry,
}

impl TestEnv {
    /// Default containerd (overlayfs) + registry without auth.
    pub fn start() -> TestEnv {
        Self::start_with(ContainerdOpts::default(), None)
    }

    /// Custom containerd options, optional registry basic auth (user, pass).
    pub fn start_with(opts: ContainerdOpts, auth: Option<(&str, &str)>) -> TestEnv {
        let registry = match auth {
            Some((u, p)) => Registry::start_with_auth(u, p),
            None => Registry::start(),
        };
        let containerd = Containerd::start(opts);
        let env = TestEnv {
            containerd,
            registry,
        };
        env.write_hosts_toml(&env.registry.addr.clone());
        env
    }

    /// "127.0.0.1:PORT"
    pub fn registry_addr(&self) -> &str {
        &self.registry.addr
    }

    /// "127.0.0.1:PORT/<repo>:<tag>"
    pub fn image_ref(&self, repo: &str, tag: &str) -> String {
        format!("{}/{}:{}", self.registry.addr, repo, tag)
    }

    /// "127.0.0.1:PORT/<repo>@<digest>"
    pub fn digest_ref(&self, repo: &str, digest: &str) -> String {
        format!("{}/{}@{}", self.registry.addr, repo, digest)
    }

    /// Make `host` (e.g. "gcr.io") resolve to the local registry for containerd:
    /// writes certs.d/<host>/hosts.toml with `server = "http://127.0.0.1:PORT"`.
    pub fn map_host(&self, host: &str) {
        self.write_hosts_toml(host);
    }

    fn write_hosts_toml(&self, host: &str) {
        write_hosts_toml(&self.containerd.certs_d, host, &self.registry.addr);
    }

    /// Push a single image to the env's registry (uses the registry's credentials if any).
    pub async fn push(&self, repo: &str, tag: Option<&str>, img: &BuiltImage) {
        self.pusher()
            .push_image(repo, tag, img)
            .await
            .expect("push image");
    }

    /// Push an index (and all its children) to the env's registry.
    pub async fn push_index(&self, repo: &str, tag: Option<&str>, idx: &BuiltIndex) {
        self.pusher()
            .push_index(repo, tag, idx)
            .await
            .expect("push index");
    }

    /// A [`Pusher`] for the env's registry, with its credentials if any.
    pub fn pusher(&self) -> Pusher {
        let p = Pusher::new(&self.registry.addr);
        match &self.registry.auth {
            Some((u, pw)) => p.with_auth(u, pw),
            None => p,
        }
    }

    /// `ctr images pull` of `reference` into this env's containerd (see [`load_with_ctr`]).
    pub fn load_with_ctr(&self, reference: &str) {
        load_with_ctr(&self.containerd, reference)
    }
}

/// Write `<certs_d>/<host>/hosts.toml` sending `host` to `http://<registry_addr>`.
pub fn write_hosts_toml(certs_d: &Path, host: &str, registry_addr: &str) {
    let d = certs_d.join(host);
    std::fs::create_dir_all(&d).unwrap();
    let s = format!(
        "server = \"http://{registry_addr}\"\n\n[host.\"http://{registry_addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
    );
    std::fs::write(d.join("hosts.toml"), s).unwrap();
}

/// Pull `reference` with `ctr -n k8s.io images pull --plain-http --hosts-dir <certs_d>
/// --snapshotter <snapshotter>` (unpacks for the default platform).
/// Panics with ctr's output on failure.
pub fn load_with_ctr(c: &Containerd, reference: &str) {
    load_with_ctr_args(c, reference, &[])
}

/// Like [`load_with_ctr`] with extra `ctr images pull` flags, e.g.
/// `&["--platform", "linux/arm64"]`, `&["--all-platforms"]`, `&["--skip-unpack"]`,
/// `&["--user", "u:p"]`.
pub fn load_with_ctr_args(c: &Containerd, reference: &str, extra: &[&str]) {
    let certs = c.certs_d.to_string_lossy().into_owned();
    let mut args: Vec<&str> = vec![
        "images",
        "pull",
        "--plain-http",
        "--hosts-dir",
        &certs,
        "--snapshotter",
        &c.snapshotter,
    ];
    args.extend_from_slice(extra);
    args.push(reference);
    let out = c.ctr(&args);
    assert!(
        out.status.success(),
        "ctr images pull {reference} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
