//! `--managed-containerd DIR`: start and supervise a private containerd rooted
//! in DIR (CRI plugin on, overlayfs), for a first run on a machine that has none.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

/// Restart backoff of a managed containerd that exits: doubles from min to max.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(200);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Time the managed containerd gets after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub struct Managed {
    pub socket: PathBuf,
    pub root: PathBuf,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The major version `containerd --version` reports (1 for 1.6/1.7, 2 for
/// 2.x): "containerd github.com/containerd/containerd/v2 2.1.9+unknown".
pub fn major_version(version_output: &str) -> Option<u32> {
    version_output
        .split_whitespace()
        .nth(2)?
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// The config for a containerd of `major` version: format 2 for 1.x, format 3
/// (with 2.x's split CRI plugins) for 2.x, so neither migrates it at start.
pub fn config_toml(dir: &Path, snapshotter: &str, certs_d: &Path, major: u32) -> String {
    let d = dir.display();
    let certs = certs_d.display();
    let common = format!(
        r#"root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
"#
    );
    if major >= 2 {
        format!(
            r#"version = 3
{common}
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "{snapshotter}"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{certs}"

[plugins."io.containerd.cri.v1.runtime"]
  disable_apparmor = true
  restrict_oom_score_adj = true

# 2.x starts NRI on the host-wide /var/run/nri/nri.sock by default; a
# managed containerd beside the node's own would fail to bind it and exit.
[plugins."io.containerd.nri.v1.nri"]
  disable = true
  socket_path = "{d}/nri.sock"
"#
        )
    } else {
        format!(
            r#"version = 2
{common}
[plugins."io.containerd.grpc.v1.cri"]
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#
        )
    }
}

impl Managed {
    /// Write the config and start containerd; restart it whenever it exits.
    pub async fn start(
        dir: &Path,
        binary: &str,
        snapshotter: &str,
        certs_d: &Path,
    ) -> anyhow::Result<Managed> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let cfg_path = dir.join("config.toml");
        let version = tokio::process::Command::new(binary)
            .arg("--version")
            .output()
            .await
            .with_context(|| format!("running {binary} --version"))?;
        let version = String::from_utf8_lossy(&version.stdout);
        let major = major_version(&version).unwrap_or(1);
        tracing::info!(version = %version.trim(), "managed containerd");
        std::fs::write(&cfg_path, config_toml(&dir, snapshotter, certs_d, major))?;
        let socket = dir.join("containerd.sock");
        let log = dir.join("containerd.log");
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let binary = binary.to_string();
        let task = tokio::spawn(async move {
            let mut backoff = RESTART_BACKOFF_MIN;
            loop {
                let logf = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log);
                let mut cmd = tokio::process::Command::new(&binary);
                cmd.arg("--config")
                    .arg(&cfg_path)
                    .stdin(Stdio::null())
                    .kill_on_drop(true);
                // If we die without stopping it (SIGKILL, crash), containerd gets
                // SIGTERM instead of running on unsupervised. Worker threads of
                // the runtime live as long as the process, so the thread-exit
                // semantics of PDEATHSIG do not fire early.
                let parent = std::process::id() as libc::pid_t;
                // SAFETY: the closure runs in the forked child before exec and
                // calls only async-signal-safe functions (prctl, getppid,
                // _exit); it allocates nothing and takes no locks.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        if libc::getppid() != parent {
                            // Already orphaned between fork and prctl.
                            libc::_exit(1);
                        }
                        Ok(())
                    });
                }
                if let Ok(f) = logf {
                    if let Ok(f2) = f.try_clone() {
                        cmd.stdout(f).stderr(f2);
                    }
                }
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(binary = %binary, error = %e, "cannot start managed containerd");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stopped(&mut rx) => return,
                        }
                        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
                        continue;
                    }
                };
                tracing::info!(pid = child.id(), "managed containerd started");
                tokio::select! {
                    st = child.wait() => {
                        tracing::warn!(status = ?st, "managed containerd exited; restarting");
                    }
                    _ = stopped(&mut rx) => {
                        if let Some(pid) = child.id() {
                            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
                        }
                        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                            let _ = child.kill().await;
                        }
                        return;
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
            }
        });
        Ok(Managed {
            socket,
            root: dir.join("root"),
            stop,
            task,
        })
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        let v = *rx.borrow_and_update();
        if v || rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v2 = "containerd github.com/containerd/containerd/v2 2.1.9+unknown ";
        assert_eq!(major_version(v2), Some(2));
        let v17 = "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1";
        assert_eq!(major_version(v17), Some(1));
        assert_eq!(
            major_version("containerd github.com/containerd/containerd v1.6.20"),
            Some(1)
        );
        assert_eq!(major_version("garbage"), None);
    }

    #[test]
    fn config_formats() {
        let (d, c) = (Path::new("/x"), Path::new("/c"));
        assert!(config_toml(d, "overlayfs", c, 1).starts_with("version = 2"));
        let v3 = config_toml(d, "overlayfs", c, 2);
        assert!(v3.starts_with("version = 3"));
        assert!(v3.contains(r#"[plugins."io.containerd.cri.v1.images"]"#));
        // NRI's host-wide socket would collide with the node's containerd.
        assert!(v3.contains("[plugins.\"io.containerd.nri.v1.nri\"]\n  disable = true"));
        for cfg in [config_toml(d, "native", c, 1), v3] {
            let t: toml::Value = toml::from_str(&cfg).unwrap();
            assert!(t.get("grpc").is_some());
        }
    }
}
