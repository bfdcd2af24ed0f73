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

    let cfg2 = old.dir.path().join("new.yaml");
    let mut cfg = old.cfg.clone();
    cfg.socket_takeover = true;
    write_config(&cfg2, &cfg);
    let log2 = std::fs::File::create(old.dir.path().join("new.log")).unwrap();
    let mut new = Command::new(old.binary())
        .args(["serve", "--config"])
        .arg(&cfg2)
        .stdin(Stdio::null())
        .stdout(log2.try_clone().unwrap())
        .stderr(log2)
        .spawn()
        .unwrap();
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
