//! systemd integration, all no-ops when systemd is not involved:
//! `READY=1` / `STOPPING=1` through `$NOTIFY_SOCKET` (`Type=notify`), and the
//! CRI socket inherited through `$LISTEN_FDS` (socket activation).

use std::os::fd::FromRawFd;
use std::os::unix::net::UnixListener;

use anyhow::{bail, Context};

/// Tell the service manager we serve (socket bound, index in sync).
pub fn ready() {
    notify(sd_notify::NotifyState::Ready);
}

/// Tell the service manager we are shutting down.
pub fn stopping() {
    notify(sd_notify::NotifyState::Stopping);
}

fn notify(state: sd_notify::NotifyState) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// The listening unix socket systemd passed us, if any (the first of
/// `$LISTEN_FDS`, when `$LISTEN_PID` is ours).
pub fn inherited_listener() -> anyhow::Result<Option<UnixListener>> {
    let mut fds = sd_notify::listen_fds().context("reading LISTEN_FDS")?;
    let Some(fd) = fds.next() else {
        return Ok(None);
    };
    if fds.len() > 0 {
        tracing::warn!(
            extra = fds.len(),
            "more than one socket inherited; serving the first"
        );
    }
    // SAFETY: LISTEN_PID names this process, so fd 3.. are ours to own, per
    // the sd_listen_fds protocol; nothing else in the process uses them.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    let addr = listener
        .local_addr()
        .context("the inherited socket (LISTEN_FDS) is not a unix socket")?;
    if addr.as_pathname().is_none() {
        bail!("the inherited socket (LISTEN_FDS) has no path: give the socket unit a ListenStream= path");
    }
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}
