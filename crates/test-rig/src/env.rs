//! [`TestEnv`]: one containerd + one registry, wired together through certs.d.
use std::path::Path;

use crate::{BuiltImage, BuiltIndex, Containerd, ContainerdOpts, Pusher, Registry};

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
        self.registry.pusher()
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
