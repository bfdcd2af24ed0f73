//! socket_takeover: a new instance takes the socket over from a live one (the
//! chart's surge upgrade), and the old one's exit leaves the new socket alone.

use cri_imaged_test_rig::*;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn new_instance_takes_the_socket_over() {
    let env = TestEnv::start();
    // As the chart runs them: every instance has socket_takeover, so both
    // share the metrics port (SO_REUSEPORT) while they overlap.
    let mut old = cri_imaged!()
        .config(|c| c.socket_takeover = true)
        .start(&env.containerd);
    old.wait_synced().await;
    let ino_old = std::fs::metadata(&old.socket).unwrap().ino();

    let mut new = start_second(&old, old.cfg.clone());
    let sock = old.socket.clone();
    assert!(
        wait_for(
            || std::fs::metadata(&sock)
                .map(|m| m.ino() != ino_old)
                .unwrap_or(false),
            Duration::from_secs(20)
        ),
        "the new instance did not take the socket over: {}",
        tail_file(&old.dir.path().join("new.log"), 20)
    );
    // Both share the metrics port meanwhile (SO_REUSEPORT).
    assert_eq!(old.http_get("/healthz").await.0, 200);

    // The old instance exits cleanly and leaves the new socket in place.
    assert_eq!(old.stop(), Some(0));
    assert!(
        old.socket.exists(),
        "old instance removed the new instance's socket"
    );
    let mut c = cri_client(&old.socket).await;
    for _ in 0..100 {
        if c.list_images(k8s_cri::v1::ListImagesRequest { filter: None })
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.list_images(k8s_cri::v1::ListImagesRequest { filter: None })
        .await
        .expect("new instance serves");
    unsafe {
        libc::kill(new.id() as i32, libc::SIGTERM);
    }
    let st = new.wait().unwrap();
    assert_eq!(st.code(), Some(0));
}

/// The second instance, killed if a failed assertion ends the test first.
struct Second(std::process::Child);

impl Second {
    fn id(&self) -> u32 {
        self.0.id()
    }
    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for Second {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Start a second instance with `cfg` (socket_takeover on) beside `old`,
/// logging to `<old dir>/new.log`.
fn start_second(old: &CriImaged, mut cfg: cri_imaged::config::Config) -> Second {
    let path = old.dir.path().join("new.yaml");
    cfg.socket_takeover = true;
    write_config(&path, &cfg);
    let log = std::fs::File::create(old.dir.path().join("new.log")).unwrap();
    Second(
        Command::new(old.binary())
            .args(["serve", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// ListImages on a fresh connection (so it reaches whichever instance holds
/// the socket path now), as each crictl call does.
async fn list_on_fresh_connection(sock: &std::path::Path) -> Result<(), String> {
    let mut c = cri_client(sock).await;
    c.list_images(k8s_cri::v1::ListImagesRequest { filter: None })
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// The new instance moves the socket path over only once its image index is
/// in sync: before that, every caller still reaches the old instance, so no
/// call of a rolling upgrade is answered UNAVAILABLE ("not in sync"). Its
/// containerd is held unreachable (a socket path that does not exist yet)
/// until the test makes it appear.
#[tokio::test(flavor = "multi_thread")]
async fn takeover_waits_until_the_new_instance_can_answer() {
    let env = TestEnv::start();
    let mut old = cri_imaged!()
        .config(|c| c.socket_takeover = true)
        .start(&env.containerd);
    old.wait_synced().await;
    let sock = old.socket.clone();
    let ino_old = std::fs::metadata(&sock).unwrap().ino();
    let late = old.dir.path().join("late-containerd.sock");
    let mut cfg = old.cfg.clone();
    cfg.containerd_address = late.clone();
    let mut new = start_second(&old, cfg);

    // 1.5 s with the new instance unable to sync: the old one keeps the path.
    let mut calls = 0;
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < until {
        let r = list_on_fresh_connection(&sock).await;
        assert!(
            r.is_ok(),
            "call {calls} failed while the new instance was not in sync: {r:?}"
        );
        calls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        std::fs::metadata(&sock).unwrap().ino(),
        ino_old,
        "the socket was taken over before the new instance was in sync: {}",
        tail_file(&old.dir.path().join("new.log"), 20)
    );

    // containerd appears: the new instance syncs, then takes the path over.
    std::os::unix::fs::symlink(&env.containerd.socket, &late).unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&sock).unwrap().ino() == ino_old {
        assert!(
            std::time::Instant::now() < until,
            "no takeover: {}",
            tail_file(&old.dir.path().join("new.log"), 20)
        );
        let r = list_on_fresh_connection(&sock).await;
        assert!(r.is_ok(), "call {calls} failed during the takeover: {r:?}");
        calls += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..20 {
        let r = list_on_fresh_connection(&sock).await;
        assert!(r.is_ok(), "call {calls} to the new instance failed: {r:?}");
        calls += 1;
    }
    assert_eq!(old.stop(), Some(0));
    unsafe {
        libc::kill(new.id() as i32, libc::SIGTERM);
    }
    assert_eq!(new.wait().unwrap().code(), Some(0));
    eprintln!("{calls} calls across the takeover, none failed");
}
