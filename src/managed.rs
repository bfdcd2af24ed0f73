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

pub fn config_toml(dir: &Path, snapshotter: &str, certs_d: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
        certs = certs_d.display()
    )
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
        std::fs::write(&cfg_path, config_toml(&dir, snapshotter, certs_d))?;
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
