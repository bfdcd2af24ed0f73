//! A private containerd per test.
use crate::{mount_tmpfs, tail_file, unmount_under, wait_for};
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// Options for [`Containerd::start`]. `Default` = overlayfs, certs.d in the temp dir,
/// root in the temp dir, debug logging.
#[derive(Clone, Debug)]
pub struct ContainerdOpts {
    /// Snapshotter for the CRI plugin and for `load_with_ctr` ("overlayfs" or "native").
    pub snapshotter: String,
    /// certs.d directory (CRI `registry.config_path`); default `<dir>/certs.d`.
    pub certs_d: Option<PathBuf>,
    /// containerd root override (e.g. a small tmpfs); default `<dir>/root`.
    pub root: Option<PathBuf>,
    /// If set (and `root` is None), mount a tmpfs of this many bytes at `<dir>/root`
    /// (unmounted on drop).
    pub root_tmpfs_bytes: Option<u64>,
    /// `[debug] level`; default "debug".
    pub log_level: String,
    /// Extra TOML appended verbatim to config.toml (careful with duplicate tables).
    pub extra_config: String,
}

impl Default for ContainerdOpts {
    fn default() -> Self {
        ContainerdOpts {
            snapshotter: "overlayfs".into(),
            certs_d: None,
            root: None,
            root_tmpfs_bytes: None,
            log_level: "debug".into(),
            extra_config: String::new(),
        }
    }
}

impl ContainerdOpts {
    pub fn snapshotter(mut self, s: &str) -> Self {
        self.snapshotter = s.into();
        self
    }
    pub fn root(mut self, p: impl Into<PathBuf>) -> Self {
        self.root = Some(p.into());
        self
    }
    pub fn root_tmpfs(mut self, bytes: u64) -> Self {
        self.root_tmpfs_bytes = Some(bytes);
        self
    }
    pub fn certs_d(mut self, p: impl Into<PathBuf>) -> Self {
        self.certs_d = Some(p.into());
        self
    }
}

/// The containerd the tests run against: `CRI_IMAGED_CONTAINERD` = `1.6`
/// (default: the machine's `containerd`, Debian bookworm's 1.6.20), `1.7` or
/// `2.1` (Debian trixie's and sid's packages, unpacked under `target/` by
/// `scripts/containerd-versions.sh`, which records the exact versions).
#[derive(Debug, Clone)]
pub struct ContainerdVersion {
    /// "1.6", "1.7", "2.1".
    pub name: String,
    /// Directory holding `containerd`, `ctr` and the shim; None = from PATH.
    pub bin_dir: Option<PathBuf>,
    /// 1 or 2: the config format (2 or 3) and plugin names differ.
    pub major: u32,
}

impl ContainerdVersion {
    fn binary(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }
}

/// The selected containerd version (resolved, and fetched if needed, once per process).
pub fn containerd_version() -> &'static ContainerdVersion {
    static V: std::sync::OnceLock<ContainerdVersion> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let name = std::env::var("CRI_IMAGED_CONTAINERD").unwrap_or_else(|_| "1.6".into());
        let major = name
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(1);
        if name == "1.6" {
            return ContainerdVersion {
                name,
                bin_dir: None,
                major,
            };
        }
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/containerd-versions.sh");
        let out = Command::new("bash")
            .arg(&script)
            .args(["path", &name])
            .output()
            .expect("run scripts/containerd-versions.sh");
        assert!(
            out.status.success(),
            "containerd {name} is not available: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        eprintln!("rig: containerd {name} from {}", bin.display());
        ContainerdVersion {
            name,
            bin_dir: bin.parent().map(|p| p.to_path_buf()),
            major,
        }
    })
}

/// config.toml for the selected version: format 2 (1.x) or 3 (2.x, whose CRI
/// is split into the `cri.v1.images` and `cri.v1.runtime` plugins).
#[allow(clippy::too_many_arguments)]
fn config_toml(
    major: u32,
    root: &std::path::Path,
    state: &std::path::Path,
    socket: &std::path::Path,
    ttrpc: &std::path::Path,
    dir: &std::path::Path,
    certs: &std::path::Path,
    opts: &ContainerdOpts,
) -> String {
    let (root, state, socket, ttrpc, dir, certs) = (
        root.display(),
        state.display(),
        socket.display(),
        ttrpc.display(),
        dir.display(),
        certs.display(),
    );
    let (level, snap, extra) = (&opts.log_level, &opts.snapshotter, &opts.extra_config);
    let common = format!(
        r#"root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{ttrpc}"

[debug]
  address = ""
  level = "{level}"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
"#
    );
    if major >= 2 {
        return format!(
            r#"version = 3
{common}
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "{snap}"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "registry.k8s.io/pause:3.9"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{certs}"

[plugins."io.containerd.cri.v1.runtime"]
  disable_cgroup = true
  disable_apparmor = true
  restrict_oom_score_adj = true
  disable_hugetlb_controller = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{dir}/cni/bin"]
    conf_dir = "{dir}/cni/net.d"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

# 2.x turns NRI on with a fixed socket, /var/run/nri/nri.sock: a second
# containerd on the host (tests run several at once) fails to bind it and
# exits. Off, and pointed into the private directory besides.
[plugins."io.containerd.nri.v1.nri"]
  disable = true
  socket_path = "{dir}/nri.sock"
{extra}
"#
        );
    }
    format!(
        r#"version = 2
{common}
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  disable_cgroup = true
  disable_apparmor = true
  restrict_oom_score_adj = true
  disable_hugetlb_controller = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snap}"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{dir}/cni/bin"
    conf_dir = "{dir}/cni/net.d"

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
{extra}
"#
    )
}

pub struct Containerd {
    /// The temp dir holding everything (config.toml, sockets, log, state, default root).
    pub dir: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    /// gRPC socket (what cri-imaged connects to).
    pub socket: PathBuf,
    pub ttrpc_socket: PathBuf,
    pub certs_d: PathBuf,
    pub config: PathBuf,
    /// containerd's stdout+stderr (appended across restarts).
    pub log: PathBuf,
    pub snapshotter: String,
    child: Option<Child>,
    root_is_tmpfs: bool,
    // Last: removed after Drop::drop ran (which kills + unmounts).
    _tmp: tempfile::TempDir,
}

impl Containerd {
    /// Write the config and start containerd; returns once `ctr version` answers.
    pub fn start(opts: ContainerdOpts) -> Containerd {
        // Keep the path short: unix socket paths are limited to 108 bytes.
        // CRI_IMAGED_CONTAINERD_TMP puts containerd's root elsewhere (the
        // bench's tmpfs line: a tmpfs mounted there).
        let parent = std::env::var_os("CRI_IMAGED_CONTAINERD_TMP").unwrap_or_else(|| "/tmp".into());
        let tmp = tempfile::Builder::new()
            .prefix("ctd-")
            .tempdir_in(parent)
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let state = dir.join("state");
        let socket = dir.join("containerd.sock");
        let ttrpc_socket = dir.join("containerd.sock.ttrpc");
        let certs_d = opts.certs_d.clone().unwrap_or_else(|| dir.join("certs.d"));
        let mut root_is_tmpfs = false;
        let root = match &opts.root {
            Some(r) => r.clone(),
            None => {
                let r = dir.join("root");
                std::fs::create_dir_all(&r).unwrap();
                if let Some(sz) = opts.root_tmpfs_bytes {
                    mount_tmpfs(&r, sz);
                    root_is_tmpfs = true;
                }
                r
            }
        };
        for d in [
            &root,
            &state,
            &certs_d,
            &dir.join("opt"),
            &dir.join("cni/net.d"),
            &dir.join("cni/bin"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        let config = dir.join("config.toml");
        let version = containerd_version();
        let cfg = config_toml(
            version.major,
            &root,
            &state,
            &socket,
            &ttrpc_socket,
            &dir,
            &certs_d,
            &opts,
        );
        std::fs::write(&config, cfg).unwrap();
        let log = dir.join("containerd.log");
        let mut c = Containerd {
            dir,
            root,
            state,
            socket,
            ttrpc_socket,
            certs_d,
            config,
            log,
            snapshotter: opts.snapshotter.clone(),
            child: None,
            root_is_tmpfs,
            _tmp: tmp,
        };
        c.spawn();
        c.wait_ready();
        c
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "containerd already running");
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.ttrpc_socket);
        let logf = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let version = containerd_version();
        let mut cmd = Command::new(version.binary("containerd"));
        if let Some(d) = &version.bin_dir {
            // The matching shim (containerd-shim-runc-v2) is found on PATH.
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", d.display()));
        }
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .process_group(0)
            .spawn()
            .expect("spawn containerd");
        self.child = Some(child);
    }

    /// PID of the running containerd, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Poll `ctr version` until it succeeds (20 s timeout; panics with the log tail).
    pub fn wait_ready(&mut self) {
        let sock = self.socket.clone();
        let mut exited = false;
        let ok = wait_for(
            || {
                if let Some(c) = self.child.as_mut() {
                    if let Ok(Some(_)) = c.try_wait() {
                        exited = true;
                        return true;
                    }
                }
                Command::new(containerd_version().binary("ctr"))
                    .arg("--address")
                    .arg(&sock)
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
            },
            Duration::from_secs(20),
        );
        if !ok || exited {
            panic!(
                "containerd not ready (exited={exited}); log tail:\n{}",
                tail_file(&self.log, 40)
            );
        }
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL. Keeps dirs; see [`start_again`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id() as i32;
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let exited = wait_for(
                || matches!(c.try_wait(), Ok(Some(_))),
                Duration::from_secs(10),
            );
            if !exited {
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
                let _ = c.wait();
            }
            // Reap anything else in its process group.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }

    /// SIGKILL (simulated crash) and reap. Keeps dirs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id() as i32;
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again with the same dirs, config and socket; waits until ready.
    pub fn start_again(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// `stop()` + `start_again()`.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// `ctr --address <sock> -n k8s.io <args...>`
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_ns("k8s.io", args)
    }

    /// `ctr --address <sock> -n <ns> <args...>`
    pub fn ctr_ns(&self, ns: &str, args: &[&str]) -> Output {
        Command::new(containerd_version().binary("ctr"))
            .arg("--address")
            .arg(&self.socket)
            .arg("-n")
            .arg(ns)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Like [`ctr`](Self::ctr) but panics unless it succeeds; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {:?} failed:\nstdout: {}\nstderr: {}",
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Image names in k8s.io (`ctr images ls -q`).
    pub fn image_names(&self) -> Vec<String> {
        lines(&self.ctr_ok(&["images", "ls", "-q"]))
    }

    /// Content digests in the content store (`ctr content ls -q`).
    pub fn content_digests(&self) -> Vec<String> {
        lines(&self.ctr_ok(&["content", "ls", "-q"]))
    }

    pub fn has_content(&self, digest: &str) -> bool {
        self.content_digests().iter().any(|d| d == digest)
    }

    /// Snapshot keys of this containerd's snapshotter in k8s.io.
    pub fn snapshot_keys(&self) -> Vec<String> {
        lines(&self.ctr_ok(&["snapshots", "--snapshotter", &self.snapshotter, "ls"]))
            .into_iter()
            .skip(1) // header
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// Lease IDs in k8s.io (`ctr leases ls -q`).
    /// Lease IDs once none is left (up to 10 s; a pull's lease outlives it
    /// until its background blob commits end), else as they stand.
    pub fn leases_settled(&self) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let l = self.leases();
            if l.is_empty() || std::time::Instant::now() > deadline {
                return l;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn leases(&self) -> Vec<String> {
        lines(&self.ctr_ok(&["leases", "ls", "-q"]))
    }

    /// `ctr images check` rows as (ref, status, unpacked), e.g.
    /// ("127.0.0.1:1/x:y", "complete (3/3)", true).
    /// `ctr images check`, once no image is still incomplete (up to 10 s):
    /// cri-imaged's native unpack commits layer blobs to the content store
    /// in the background, after PullImage returned.
    pub fn images_check(&self) -> Vec<(String, String, bool)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let rows = self.images_check_now();
            if rows.iter().all(|(_, st, _)| !st.starts_with("incomplete"))
                || std::time::Instant::now() > deadline
            {
                return rows;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// `ctr images check` as it stands.
    pub fn images_check_now(&self) -> Vec<(String, String, bool)> {
        let out = self.ctr_ok(&["images", "check"]);
        out.lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                if cols.len() < 5 {
                    return None;
                }
                // REF TYPE DIGEST STATUS(e.g. "complete (3/3)") SIZE UNPACKED
                let status = if cols[3] == "complete" || cols[3] == "incomplete" {
                    format!("{} {}", cols[3], cols.get(4).unwrap_or(&""))
                } else {
                    cols[3].to_string()
                };
                let unpacked = cols.last() == Some(&"true");
                Some((cols[0].to_string(), status, unpacked))
            })
            .collect()
    }

    /// Whether `ctr plugins ls` shows plugin `<type> <id>` with status ok.
    pub fn plugin_ok(&self, ty: &str, id: &str) -> bool {
        let out = self.ctr_ok(&["plugins", "ls"]);
        out.lines().any(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            c.len() >= 4 && c[0] == ty && c[1] == id && c[c.len() - 1] == "ok"
        })
    }

    /// Tail of containerd's log.
    pub fn log_tail(&self, n: usize) -> String {
        tail_file(&self.log, n)
    }
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill();
        // Unmount anything containerd left (snapshot/tmp mounts) before the
        // temp dir is deleted; also an overridden root outside dir.
        unmount_under(&self.root, self.root_is_tmpfs);
        unmount_under(&self.state, false);
        unmount_under(&self.dir, false);
    }
}
