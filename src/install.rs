//! `cri-imaged install --root DIR`: put the binary, the systemd units and a
//! default config onto a host (DIR = the host's root, e.g. `/host` from a
//! pod), enable the units, and restart the service when something changed.
//! Idempotent: a second run changes nothing and restarts nothing. The binary
//! is replaced atomically (written beside, then renamed over), and while the
//! service restarts, cri-imaged.socket keeps queueing kubelet's connections.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

pub const SERVICE_UNIT: &str = include_str!("../packaging/systemd/cri-imaged.service");
pub const SOCKET_UNIT: &str = include_str!("../packaging/systemd/cri-imaged.socket");
pub const DEFAULT_CONFIG: &str = include_str!("../packaging/config.yaml");

pub const BINARY_PATH: &str = "usr/local/bin/cri-imaged";
pub const UNIT_DIR: &str = "etc/systemd/system";
pub const CONFIG_PATH: &str = "etc/cri-imaged/config.yaml";
/// The socket unit's ListenStream, under the root.
pub const SOCKET_PATH: &str = "run/cri-imaged/cri-imaged.sock";
/// The service's StateDirectory=cri-imaged (the default config's spool).
pub const STATE_DIR: &str = "var/lib/cri-imaged";
const UNITS: [&str; 2] = ["cri-imaged.socket", "cri-imaged.service"];

pub struct InstallOpts {
    /// The host's root directory.
    pub root: PathBuf,
    /// The binary to install (default: this one).
    pub binary: PathBuf,
    /// A config to install (replacing the host's when different); None: keep
    /// the host's, or write the default one when there is none.
    pub config: Option<PathBuf>,
    /// How to run the host's systemctl, e.g. `nsenter -t 1 -m -u -i -n -p -- systemctl`
    /// from a pod with hostPID. Empty: only enable offline (`systemctl --root`),
    /// start nothing.
    pub systemctl: Vec<String>,
}

/// What an install did, one line each.
#[derive(Debug, Default)]
pub struct Installed {
    pub lines: Vec<String>,
    pub changed: bool,
}

/// Write `data` to `path` unless it already holds exactly that; atomically.
fn put(path: &Path, data: &[u8], mode: u32, out: &mut Installed) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read(path).is_ok_and(|cur| cur == data) {
        out.lines.push(format!("unchanged {}", path.display()));
        return Ok(());
    }
    let dir = path.parent().context("path without a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.new-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming over {}", path.display()))?;
    out.lines.push(format!("wrote {}", path.display()));
    out.changed = true;
    Ok(())
}

fn run(cmd: &[String], args: &[&str], out: &mut Installed) -> anyhow::Result<()> {
    let (prog, pre) = cmd.split_first().context("empty systemctl command")?;
    let st = Command::new(prog)
        .args(pre)
        .args(args)
        .status()
        .with_context(|| format!("running {}", cmd.join(" ")))?;
    if !st.success() {
        bail!("{} {} failed: {st}", cmd.join(" "), args.join(" "));
    }
    out.lines
        .push(format!("ran {} {}", cmd.join(" "), args.join(" ")));
    Ok(())
}

pub fn install(opts: &InstallOpts) -> anyhow::Result<Installed> {
    let mut out = Installed::default();
    let root = &opts.root;
    if !root.is_dir() {
        bail!("--root {} is not a directory", root.display());
    }
    let bin = std::fs::read(&opts.binary)
        .with_context(|| format!("reading the binary {}", opts.binary.display()))?;
    put(&root.join(BINARY_PATH), &bin, 0o755, &mut out)?;
    for (name, text) in [
        ("cri-imaged.socket", SOCKET_UNIT),
        ("cri-imaged.service", SERVICE_UNIT),
    ] {
        put(
            &root.join(UNIT_DIR).join(name),
            text.as_bytes(),
            0o644,
            &mut out,
        )?;
    }
    let cfg = root.join(CONFIG_PATH);
    if let Some(src) = &opts.config {
        let text = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        put(&cfg, &text, 0o644, &mut out)?;
    } else if cfg.exists() {
        out.lines
            .push(format!("kept {} (the operator's)", cfg.display()));
    } else {
        put(&cfg, DEFAULT_CONFIG.as_bytes(), 0o644, &mut out)?;
    }
    if opts.systemctl.is_empty() {
        // Offline: the [Install] symlinks, nothing started.
        let root_arg = format!("--root={}", root.display());
        let mut args = vec![root_arg.as_str(), "enable"];
        args.extend(UNITS);
        run(&["systemctl".to_string()], &args, &mut out)?;
        return Ok(out);
    }
    let sc = &opts.systemctl;
    if out.changed {
        run(sc, &["daemon-reload"], &mut out)?;
    }
    let mut enable = vec!["enable", "--now"];
    enable.extend(UNITS);
    run(sc, &enable, &mut out)?;
    if out.changed {
        // The socket stays up and queues connections while the service restarts.
        run(sc, &["restart", "cri-imaged.service"], &mut out)?;
    }
    Ok(out)
}

/// `cri-imaged uninstall --root DIR`: stop and disable the units, then remove
/// the binary, the units, the config, the socket file and the state
/// directory. Pulled images stay in containerd.
pub fn uninstall(root: &Path, systemctl: &[String]) -> anyhow::Result<Installed> {
    let mut out = Installed::default();
    let mut disable = vec!["disable"];
    if systemctl.is_empty() {
        let root_arg = format!("--root={}", root.display());
        let mut args = vec![root_arg.as_str()];
        args.append(&mut disable);
        args.extend(UNITS);
        run(&["systemctl".to_string()], &args, &mut out)?;
    } else {
        disable.push("--now");
        disable.extend(UNITS);
        run(systemctl, &disable, &mut out)?;
    }
    for f in [
        root.join(UNIT_DIR).join("cri-imaged.socket"),
        root.join(UNIT_DIR).join("cri-imaged.service"),
        root.join(BINARY_PATH),
        root.join(CONFIG_PATH),
    ] {
        match std::fs::remove_file(&f) {
            Ok(()) => {
                out.lines.push(format!("removed {}", f.display()));
                out.changed = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", f.display())),
        }
    }
    remove_leftovers(root, &mut out)?;
    if !systemctl.is_empty() {
        run(systemctl, &["daemon-reload"], &mut out)?;
    }
    Ok(out)
}

/// What the units leave once stopped: the socket file (systemd keeps it,
/// RemoveOnStop=no), the state directory (the spool of blobs not yet in
/// containerd: nobody will store them now) and the emptied directories.
/// Only these exact paths; a directory that still holds something of the
/// operator's stays.
fn remove_leftovers(root: &Path, out: &mut Installed) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let sock = root.join(SOCKET_PATH);
    if std::fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(&sock).with_context(|| format!("removing {}", sock.display()))?;
        out.lines.push(format!("removed {}", sock.display()));
    }
    let state = root.join(STATE_DIR);
    if state.is_dir() && !state.is_symlink() {
        std::fs::remove_dir_all(&state).with_context(|| format!("removing {}", state.display()))?;
        out.lines.push(format!("removed {}", state.display()));
    }
    for dir in [root.join(SOCKET_PATH), root.join(CONFIG_PATH)] {
        let Some(dir) = dir.parent().map(Path::to_path_buf) else {
            continue;
        };
        if std::fs::remove_dir(&dir).is_ok() {
            out.lines.push(format!("removed {}", dir.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_paths_are_the_units_own() {
        assert!(SOCKET_UNIT.contains(&format!("ListenStream=/{SOCKET_PATH}\n")));
        assert!(SERVICE_UNIT.contains(&format!(
            "StateDirectory={}\n",
            STATE_DIR.trim_start_matches("var/lib/")
        )));
    }
}
