//! The host service: `install --root` into a temporary root (files, enable
//! symlinks, idempotence, atomic upgrade, units that `systemd-analyze verify`
//! accepts), socket activation under `systemd-socket-activate` with
//! READY=1 / STOPPING=1 on `$NOTIFY_SOCKET`, and `cri-imaged health`.

use std::os::unix::net::{UnixDatagram, UnixListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cri_imaged_test_rig::*;

const BIN: &str = env!("CARGO_BIN_EXE_cri-imaged");

/// What `install --root` puts under the root (files and enable symlinks).
const INSTALLED: [&str; 6] = [
    "usr/local/bin/cri-imaged",
    "etc/systemd/system/cri-imaged.service",
    "etc/systemd/system/cri-imaged.socket",
    "etc/cri-imaged/config.yaml",
    "etc/systemd/system/sockets.target.wants/cri-imaged.socket",
    "etc/systemd/system/multi-user.target.wants/cri-imaged.service",
];

fn cmd(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run cri-imaged");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn install_into_a_root_is_idempotent_atomic_and_verifies() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let rs = r.to_str().unwrap();
    let (ok, first) = cmd(&["install", "--root", rs]);
    assert!(ok, "{first}");
    for f in INSTALLED {
        assert!(
            r.join(f).exists() || r.join(f).is_symlink(),
            "{f} missing:\n{first}"
        );
    }
    // The installed default config is one the binary accepts.
    let cfg = r.join("etc/cri-imaged/config.yaml");
    let (ok, out) = cmd(&["serve", "--config", cfg.to_str().unwrap(), "--check"]);
    assert!(ok, "{out}");

    // Again: nothing changes.
    let (ok, second) = cmd(&["install", "--root", rs]);
    assert!(ok, "{second}");
    assert!(
        !second.contains("wrote"),
        "second install wrote something:\n{second}"
    );

    // An upgrade replaces the binary by rename (a new inode; the running one
    // keeps its own) and leaves no temporary file; the operator's config stays.
    use std::os::unix::fs::MetadataExt;
    std::fs::write(&cfg, "listen: /run/cri-imaged/cri-imaged.sock\n").unwrap();
    let ino = std::fs::metadata(r.join("usr/local/bin/cri-imaged"))
        .unwrap()
        .ino();
    let newer = r.join("newer-binary");
    let mut b = std::fs::read(BIN).unwrap();
    b.extend_from_slice(b"\0upgrade");
    std::fs::write(&newer, &b).unwrap();
    let (ok, third) = cmd(&["install", "--root", rs, "--binary", newer.to_str().unwrap()]);
    assert!(ok, "{third}");
    assert!(third.contains("wrote") && third.contains("kept"), "{third}");
    let installed = r.join("usr/local/bin/cri-imaged");
    assert_ne!(std::fs::metadata(&installed).unwrap().ino(), ino);
    assert_eq!(std::fs::read(&installed).unwrap(), b);
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap(),
        "listen: /run/cri-imaged/cri-imaged.sock\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(r.join("usr/local/bin"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".new-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // systemd-analyze verify, inside the root (with systemd's own units there).
    let units = r.join("usr/lib/systemd");
    std::fs::create_dir_all(&units).unwrap();
    let st = Command::new("cp")
        .args(["-r", "/lib/systemd/system"])
        .arg(&units)
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new("systemd-analyze")
        .arg(format!("--root={rs}"))
        .arg("verify")
        .arg(r.join("etc/systemd/system/cri-imaged.socket"))
        .arg(r.join("etc/systemd/system/cri-imaged.service"))
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A config given to install replaces the host's (the chart's host mode).
    let given = r.join("given.yaml");
    std::fs::write(
        &given,
        "listen: /run/cri-imaged/cri-imaged.sock\nlog_level: debug\n",
    )
    .unwrap();
    let (ok, out) = cmd(&["install", "--root", rs, "--config", given.to_str().unwrap()]);
    assert!(
        ok && out.contains(&format!("wrote {}", cfg.display())),
        "{out}"
    );

    // What the running units leave: the socket file (systemd keeps it) and
    // the state directory with the spool.
    std::fs::create_dir_all(r.join("run/cri-imaged")).unwrap();
    let _listener =
        std::os::unix::net::UnixListener::bind(r.join("run/cri-imaged/cri-imaged.sock")).unwrap();
    std::fs::create_dir_all(r.join("var/lib/cri-imaged/spool")).unwrap();
    std::fs::write(r.join("var/lib/cri-imaged/spool/blob"), b"x").unwrap();

    // Uninstall: units disabled and every installed file gone.
    let (ok, out) = cmd(&["uninstall", "--root", rs]);
    assert!(ok, "{out}");
    for f in INSTALLED {
        assert!(
            !r.join(f).exists() && !r.join(f).is_symlink(),
            "{f} left:\n{out}"
        );
    }
    for d in ["run/cri-imaged", "var/lib/cri-imaged", "etc/cri-imaged"] {
        assert!(!r.join(d).exists(), "{d} left:\n{out}");
    }
}

/// Wait for a notification datagram; returns its text.
fn recv_notify(sock: &UnixDatagram, within: Duration) -> Option<String> {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_activation_queues_the_first_call_and_notifies() {
    let env = TestEnv::start();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cri.sock");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let mut cfg = daemon_config(&env.containerd, dir.path(), "");
    cfg.listen = sock.clone();
    let cfg_path = dir.path().join("config.yaml");
    write_config(&cfg_path, &cfg);
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    // systemd-socket-activate binds the socket, waits for the first
    // connection, then execs cri-imaged with LISTEN_FDS=1, as the socket unit does.
    let mut child = Command::new("systemd-socket-activate")
        .arg("--listen")
        .arg(&sock)
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .args([BIN, "serve", "--config"])
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("systemd-socket-activate");
    assert!(
        wait_for(|| sock.exists(), Duration::from_secs(10)),
        "the activator did not bind"
    );
    // The first call starts the service and is answered, not refused.
    let t = Instant::now();
    let (ok, out) = cmd(&[
        "health",
        "--socket",
        sock.to_str().unwrap(),
        "--timeout",
        "20s",
    ]);
    assert!(
        ok,
        "first call through the activated socket: {out}\n{}",
        tail_file(&dir.path().join("log"), 30)
    );
    let ready = recv_notify(&notify, Duration::from_secs(10)).expect("no notification");
    assert!(ready.contains("READY=1"), "{ready:?}");
    println!(
        "activation: first ImageFsInfo answered in {:?}",
        t.elapsed()
    );
    let log_text = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(log_text.contains("socket activation"), "{log_text}");

    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let stopping = recv_notify(&notify, Duration::from_secs(10)).expect("no STOPPING");
    assert!(stopping.contains("STOPPING=1"), "{stopping:?}");
    let st = child.wait().unwrap();
    assert!(st.success(), "exit {st:?}");
    // The socket belongs to the service manager: left in place.
    assert!(sock.exists(), "an inherited socket must not be removed");
}

#[test]
fn health_fails_fast_on_a_dead_socket_and_on_a_silent_one() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("nothing.sock");
    let (ok, out) = cmd(&[
        "health",
        "--socket",
        dead.to_str().unwrap(),
        "--timeout",
        "2s",
    ]);
    assert!(!ok && out.contains("unhealthy"), "{out}");
    // A socket that accepts and never answers: the timeout decides.
    let silent = dir.path().join("silent.sock");
    let _l = UnixListener::bind(&silent).unwrap();
    let t = Instant::now();
    let (ok, out) = cmd(&[
        "health",
        "--socket",
        silent.to_str().unwrap(),
        "--timeout",
        "1s",
    ]);
    assert!(!ok && out.contains("within 1s"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(10));
}
