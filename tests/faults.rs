//! Reliability under faults: crashes of cri-imaged and containerd during
//! pulls, registry faults through a fault-injecting proxy, a full disk and
//! concurrent pulls/removes. Nothing may be lost or left half-done.
//!
//! Fast variants run in `cargo test`; long variants:
//!   cargo test --test faults -- --ignored --nocapture --test-threads=1

use cri_imaged_test_rig::*;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

// ---------------------------------------------------------------------------
// helpers

/// An image of `layers` random layers of `size` bytes (incompressible, gzip).
fn random_image(seed: u64, layers: usize, size: usize) -> BuiltImage {
    let mut b = ImageBuilder::new();
    for i in 0..layers {
        b = b.layer(
            Layer::random(size, seed * 1000 + i as u64),
            Compression::Gzip,
        );
    }
    b.build()
}

/// Active snapshots whose key starts with "extract-" (left by an interrupted unpack).
fn active_extract_snapshots(c: &Containerd) -> Vec<String> {
    let out = c.ctr_ok(&["snapshots", "--snapshotter", &c.snapshotter, "ls"]);
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // KEY may contain a space ("extract-… <chainID>"): KIND is the last column.
            if cols.last() == Some(&"Active") && cols[0].starts_with("extract-") {
                Some(l.to_string())
            } else {
                None
            }
        })
        .collect()
}

/// (lease id, labels column) from `ctr leases ls`.
fn leases_with_labels(c: &Containerd) -> Vec<(String, String)> {
    let out = c.ctr_ok(&["leases", "ls"]);
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.is_empty() {
                return None;
            }
            Some((cols[0].to_string(), cols[1..].join(" ")))
        })
        .collect()
}

/// Every image record in k8s.io is complete (no record points at missing content).
fn assert_all_images_complete(c: &Containerd) {
    // Layer blobs reach the content store in the background: let them.
    let _ = c.images_check();
    let out = c.ctr(&["images", "check"]);
    if !out.status.success() || String::from_utf8_lossy(&out.stdout).contains("incomplete") {
        let content = String::from_utf8_lossy(&c.ctr(&["content", "ls"]).stdout).into_owned();
        let snaps = String::from_utf8_lossy(&c.ctr(&["snapshots", "ls"]).stdout).into_owned();
        let leases = String::from_utf8_lossy(&c.ctr(&["leases", "ls"]).stdout).into_owned();
        panic!(
            "images check failed:\nstdout: {}\nstderr: {}\ncontent:\n{content}\nsnapshots:\n{snaps}\nleases:\n{leases}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let checks = c.images_check();
    for (name, st, _) in &checks {
        assert!(
            st.starts_with("complete"),
            "image record {name} is {st}: {checks:?}"
        );
    }
}

/// Names cri-imaged's index knows (tags, digests, IDs).
async fn index_names(
    c: &mut k8s_cri::v1::image_service_client::ImageServiceClient<tonic::transport::Channel>,
) -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    for i in list(c).await {
        s.insert(i.id.clone());
        s.extend(i.repo_tags);
        s.extend(i.repo_digests);
    }
    s
}

/// The index (ListImages) and containerd (`ctr images ls`) agree, eventually.
async fn assert_index_agrees(d: &CriImaged, cd: &Containerd) {
    let mut c = d.client().await;
    let mut last = (BTreeSet::new(), BTreeSet::new());
    for _ in 0..100 {
        let ours = index_names(&mut c).await;
        let theirs: BTreeSet<String> = cd.image_names().into_iter().collect();
        if ours == theirs {
            return;
        }
        last = (ours, theirs);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "index and containerd disagree:\n index: {:?}\n ctr:   {:?}",
        last.0, last.1
    );
}

struct ProxyEnv {
    env: TestEnv,
    proxy: FaultProxy,
}

impl ProxyEnv {
    /// Registry behind a fault proxy; certs.d for the proxy's host:port.
    fn start() -> ProxyEnv {
        let env = TestEnv::start();
        let proxy = FaultProxy::start(env.registry_addr());
        write_hosts_toml(&env.containerd.certs_d, &proxy.addr, &proxy.addr);
        ProxyEnv { env, proxy }
    }
    fn image_ref(&self, repo: &str, tag: &str) -> String {
        format!("{}/{}:{}", self.proxy.addr, repo, tag)
    }
}

/// The image is not recorded anywhere (neither in our index nor containerd).
async fn assert_no_record(d: &CriImaged, cd: &Containerd, r: &str) {
    let mut c = d.client().await;
    assert!(
        status(&mut c, r).await.is_none(),
        "{r} has a record after a failed pull"
    );
    let names = cd.image_names();
    assert!(
        !names.iter().any(|n| n == r),
        "{r} in containerd: {names:?}"
    );
}

// ---------------------------------------------------------------------------
// 1. cri-imaged killed during cold pulls

/// When to SIGKILL cri-imaged during a cold pull.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// After a fixed delay from the start of the pull.
    Delay(Duration),
    /// Once this many layer blobs are in the content store (during fetch).
    Content(usize),
    /// Once this many layer snapshots are committed (during unpack).
    Snapshots(usize),
    /// Once the first image record exists (during record creation).
    Record,
}

/// Kill points: fixed delays spread over a cold pull plus state-triggered
/// points for each phase.
fn kill_points(n: usize, cold: Duration) -> Vec<KillAt> {
    let states = [
        KillAt::Content(1),
        KillAt::Snapshots(1),
        KillAt::Content(3),
        KillAt::Snapshots(3),
        KillAt::Record,
    ];
    if n <= 5 {
        return vec![
            KillAt::Delay(Duration::from_millis(5)),
            KillAt::Content(2),
            KillAt::Snapshots(1),
            KillAt::Snapshots(3),
            KillAt::Record,
        ][..n]
            .to_vec();
    }
    let delays = n - states.len();
    let mut v: Vec<KillAt> = (0..delays)
        .map(|i| {
            KillAt::Delay(
                cold.mul_f64(i as f64 / delays as f64)
                    .max(Duration::from_millis(2)),
            )
        })
        .collect();
    v.extend(states);
    v
}

async fn crash_during_pull(kills: usize) {
    let env = TestEnv::start();
    // Calibration image + one fresh image per kill point (always a cold pull).
    let calib = random_image(9000, 4, 1 << 20);
    env.push("crash/calib", Some("v1"), &calib).await;
    let imgs: Vec<BuiltImage> = (0..kills)
        .map(|i| random_image(100 + i as u64, 4, 1 << 20))
        .collect();
    for (i, img) in imgs.iter().enumerate() {
        env.push(&format!("crash/img{i}"), Some("v1"), img).await;
    }
    let cd = cri_imaged::containerd::Containerd::new(&env.containerd.socket, "k8s.io");
    let mut d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let t = Instant::now();
    pull(&mut c, &env.image_ref("crash/calib", "v1"))
        .await
        .expect("calibration pull");
    let cold = t.elapsed();
    println!("crash: a cold pull of 4 x 1 MiB layers takes {cold:?}");

    let mut survived = 0;
    let points = kill_points(kills, cold);
    for (i, (img, at)) in imgs.iter().zip(points).enumerate() {
        let r = env.image_ref(&format!("crash/img{i}"), "v1");
        let mut c = d.client().await;
        let r2 = r.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move { pull(&mut c, &r2).await });
        let (layers, chains) = (img.layer_digests(), img.chain_ids());
        loop {
            let hit = match at {
                KillAt::Delay(dl) => {
                    tokio::time::sleep(dl).await;
                    true
                }
                KillAt::Content(k) => {
                    let mut n = 0;
                    for l in &layers {
                        if matches!(cd.content_info(l).await, Ok(Some(_))) {
                            n += 1;
                        }
                    }
                    n >= k
                }
                KillAt::Snapshots(k) => {
                    let mut n = 0;
                    for ch in &chains {
                        if matches!(
                            cd.snapshot_exists(&env.containerd.snapshotter, ch).await,
                            Ok(true)
                        ) {
                            n += 1;
                        }
                    }
                    n >= k
                }
                KillAt::Record => matches!(cd.get_image(&r).await, Ok(Some(_))),
            };
            if hit || task.is_finished() || started.elapsed() > Duration::from_secs(30) {
                break;
            }
        }
        let killed_after = started.elapsed();
        d.kill();
        let first = task.await.unwrap();
        // What was there at the kill.
        let content = layers
            .iter()
            .filter(|l| env.containerd.has_content(l))
            .count();
        let snaps = env
            .containerd
            .snapshot_keys()
            .iter()
            .filter(|k| chains.contains(k))
            .count();
        let recorded = env.containerd.image_names().iter().any(|n| n == &r);
        let phase = format!(
            "kill {i} ({at:?}) after {killed_after:?}: first pull {}, layers in content {content}/4, snapshots {snaps}/4, record {recorded}",
            if first.is_ok() { "finished" } else { "interrupted" }
        );
        println!("crash: {phase}");

        d.start_again();
        d.wait_synced().await;
        let mut c = d.client().await;
        let id = pull(&mut c, &r)
            .await
            .unwrap_or_else(|e| panic!("pull after restart ({phase}): {e}"));
        assert_eq!(id, img.config_digest);
        let st = status(&mut c, &r).await.expect("status after retry");
        assert_eq!(st.id, img.config_digest);
        assert!(
            env.containerd.snapshot_keys().contains(&img.chain_id()),
            "top snapshot missing after retry"
        );
        survived += 1;
    }
    assert_all_images_complete(&env.containerd);
    // The startup cleanup runs in the background: give it a moment.
    let mut stale = active_extract_snapshots(&env.containerd);
    for _ in 0..50 {
        if stale.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stale = active_extract_snapshots(&env.containerd);
    }
    assert!(
        stale.is_empty(),
        "active extract snapshots left: {stale:#?}"
    );
    let leases = leases_with_labels(&env.containerd);
    for (id, labels) in &leases {
        if id.starts_with("cri-imaged-") {
            assert!(
                labels.contains("containerd.io/gc.expire"),
                "lease {id} has no gc.expire: {labels}"
            );
        }
    }
    assert_index_agrees(&d, &env.containerd).await;
    println!(
        "crash: kills survived {survived}/{kills}; leases left by killed processes {} (all with gc.expire)",
        leases.iter().filter(|(id, _)| id.starts_with("cri-imaged-")).count()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_during_pull_5_kill_points() {
    crash_during_pull(5).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "long: cargo test --test faults -- --ignored"]
async fn crash_during_pull_20_kill_points() {
    crash_during_pull(20).await;
}

// ---------------------------------------------------------------------------
// 2. containerd restarted during a pull and while idle

#[tokio::test(flavor = "multi_thread")]
async fn containerd_restart_during_pull_and_idle() {
    let mut pe = ProxyEnv::start();
    let img = random_image(7, 2, 256 << 10);
    pe.env.push("ctdrestart/a", Some("v1"), &img).await;
    // Slow the layers down so the restart lands in the middle of the pull.
    for l in img.layer_digests() {
        pe.proxy.add(Rule::new(
            &format!("/blobs/{l}"),
            Fault::Trickle(256 << 10),
            1,
        ));
    }
    let d = cri_imaged!()
        .config(|c| c.pull_progress_timeout = Duration::from_secs(10))
        .start(&pe.env.containerd);
    d.wait_synced().await;
    let r = pe.image_ref("ctdrestart/a", "v1");
    let mut c = d.client().await;
    let r2 = r.clone();
    let task = tokio::spawn(async move { pull(&mut c, &r2).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    pe.env.containerd.restart();
    let first = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("pull hung across a containerd restart")
        .unwrap();
    println!(
        "ctd-restart: pull during restart: {:?}",
        first
            .as_ref()
            .map_err(|e| (e.code(), e.message().to_string()))
    );
    if let Err(e) = &first {
        assert!(
            matches!(
                e.code(),
                Code::Unavailable
                    | Code::Internal
                    | Code::Unknown
                    | Code::Cancelled
                    | Code::Aborted
            ),
            "unexpected code {e:?}"
        );
        assert!(!e.message().is_empty());
    }
    // A retry succeeds (cri-imaged reconnects by itself).
    let mut ok = None;
    for _ in 0..40 {
        let mut c = d.client().await;
        match pull(&mut c, &r).await {
            Ok(id) => {
                ok = Some(id);
                break;
            }
            Err(e) => {
                println!("ctd-restart: retry: {}", e.message());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    assert_eq!(
        ok.as_deref(),
        Some(img.config_digest.as_str()),
        "retry after containerd restart never succeeded"
    );
    assert_all_images_complete(&pe.env.containerd);

    // While idle: restart containerd; without any call from us in between,
    // cri-imaged reconnects (events resubscribed: a record created behind
    // its back shows up).
    pe.env.containerd.restart();
    let img2 = random_image(8, 1, 64 << 10);
    pe.env.push("ctdrestart/b", Some("v1"), &img2).await;
    let r_b = pe.env.image_ref("ctdrestart/b", "v1");
    tokio::time::sleep(Duration::from_secs(1)).await;
    pe.env.load_with_ctr(&r_b);
    let mut c = d.client().await;
    let mut seen = false;
    for _ in 0..100 {
        if let Ok(resp) = c
            .image_status(k8s_cri::v1::ImageStatusRequest {
                image: spec(&r_b),
                verbose: false,
            })
            .await
        {
            if resp.into_inner().image.is_some() {
                seen = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen,
        "an image loaded after containerd restarted never reached the index"
    );
    assert_index_agrees(&d, &pe.env.containerd).await;
    let r_c = pe.image_ref("ctdrestart/b", "v1");
    pull(&mut c, &r_c).await.expect("pull after idle restart");
}

// ---------------------------------------------------------------------------
// 3. registry faults through the proxy

fn report(name: &str, proxy: &FaultProxy, handled: bool) {
    println!(
        "registry-fault {name}: faults injected {}, handled {}",
        proxy.faults_injected(),
        if handled { "yes" } else { "NO" }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_5xx_and_429_are_retried() {
    let pe = ProxyEnv::start();
    let img = random_image(11, 2, 64 << 10);
    pe.env.push("faults/retry", Some("v1"), &img).await;
    pe.proxy
        .add(Rule::new("/manifests/", Fault::Status(503), 1));
    pe.proxy
        .add(Rule::new("/manifests/", Fault::Status(429), 1));
    pe.proxy.add(Rule::new(
        &format!("/blobs/{}", img.config_digest),
        Fault::Status(500),
        2,
    ));
    let l0 = &img.layer_digests()[0];
    pe.proxy
        .add(Rule::new(&format!("/blobs/{l0}"), Fault::Status(503), 1));
    pe.proxy
        .add(Rule::new(&format!("/blobs/{l0}"), Fault::Status(429), 1));
    let d = cri_imaged!().start(&pe.env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let id = pull(&mut c, &pe.image_ref("faults/retry", "v1"))
        .await
        .expect("pull with transient 5xx/429");
    assert_eq!(id, img.config_digest);
    assert_eq!(pe.proxy.faults_injected(), 6);
    // Every injected fault cost one retry, and the metrics count them.
    assert!(
        wait_counter(&d, "cri_imaged_registry_retries_total", 6.0).await,
        "retries not counted:\n{}",
        d.metrics().await
    );
    report("500/503/429", &pe.proxy, true);
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_reset_mid_blob_resumes_with_range() {
    let pe = ProxyEnv::start();
    let img = random_image(12, 1, 512 << 10);
    pe.env.push("faults/reset", Some("v1"), &img).await;
    let l0 = img.layer_digests()[0].clone();
    let size = img.blobs[0].1.len();
    pe.proxy.add(Rule::new(
        &format!("/blobs/{l0}"),
        Fault::ResetAfter(size / 2),
        1,
    ));
    let d = cri_imaged!().start(&pe.env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let id = pull(&mut c, &pe.image_ref("faults/reset", "v1"))
        .await
        .expect("pull across a reset");
    assert_eq!(id, img.config_digest);
    let reqs = pe.proxy.blob_requests(&l0);
    println!("reset: blob requests {reqs:#?}");
    assert!(
        reqs.iter().any(|e| e.range.is_some()),
        "no Range request after the reset: {reqs:?}"
    );
    let served: usize = reqs.iter().map(|e| e.body_bytes).sum();
    assert!(
        served < 2 * size,
        "served {served} bytes for a {size}-byte blob"
    );
    assert!(
        wait_counter(&d, "cri_imaged_blob_range_resumes_total", 1.0).await,
        "resume not counted:\n{}",
        d.metrics().await
    );
    report("reset mid-blob", &pe.proxy, true);
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_body_is_resumed() {
    let pe = ProxyEnv::start();
    let img = random_image(13, 1, 300 << 10);
    pe.env.push("faults/trunc", Some("v1"), &img).await;
    let l0 = img.layer_digests()[0].clone();
    let size = img.blobs[0].1.len();
    pe.proxy.add(Rule::new(
        &format!("/blobs/{l0}"),
        Fault::TruncateAfter(size / 3),
        2,
    ));
    let d = cri_imaged!().start(&pe.env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let r = pe.image_ref("faults/trunc", "v1");
    match pull(&mut c, &r).await {
        Ok(id) => assert_eq!(id, img.config_digest),
        Err(e) => {
            // A clean error is acceptable, a retry must then succeed.
            println!("truncated: clean error {:?} {}", e.code(), e.message());
            assert_no_record(&d, &pe.env.containerd, &r).await;
            pull(&mut c, &r).await.expect("retry after truncation");
        }
    }
    let reqs = pe.proxy.blob_requests(&l0);
    assert!(reqs.iter().any(|e| e.range.is_some()), "{reqs:?}");
    report("truncated body", &pe.proxy, true);
}

#[tokio::test(flavor = "multi_thread")]
async fn stall_is_detected_by_the_watchdog() {
    let pe = ProxyEnv::start();
    let img = random_image(14, 1, 256 << 10);
    pe.env.push("faults/stall", Some("v1"), &img).await;
    let l0 = img.layer_digests()[0].clone();
    pe.proxy.add(Rule::new(
        &format!("/blobs/{l0}"),
        Fault::StallAfter(10_000),
        usize::MAX,
    ));
    let d = cri_imaged!()
        .config(|c| c.pull_progress_timeout = Duration::from_secs(2))
        .start(&pe.env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let r = pe.image_ref("faults/stall", "v1");
    let t = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(30), pull(&mut c, &r))
        .await
        .expect("a stalled pull must not hang")
        .expect_err("stalled pull must fail");
    println!(
        "stall: after {:?}: {:?} {}",
        t.elapsed(),
        e.code(),
        e.message()
    );
    assert!(e.message().contains("stalled"), "{}", e.message());
    assert_no_record(&d, &pe.env.containerd, &r).await;
    report("stall", &pe.proxy, true);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_trickle_is_not_a_stall() {
    let pe = ProxyEnv::start();
    let img = random_image(15, 1, 300 << 10);
    pe.env.push("faults/trickle", Some("v1"), &img).await;
    let l0 = img.layer_digests()[0].clone();
    pe.proxy.add(Rule::new(
        &format!("/blobs/{l0}"),
        Fault::Trickle(64 << 10),
        usize::MAX,
    ));
    let d = cri_imaged!()
        .config(|c| c.pull_progress_timeout = Duration::from_secs(2))
        .start(&pe.env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let t = Instant::now();
    let id = pull(&mut c, &pe.image_ref("faults/trickle", "v1"))
        .await
        .expect("slow but steady pull");
    assert_eq!(id, img.config_digest);
    println!("trickle: 300 KiB at 64 KiB/s took {:?}", t.elapsed());
    assert!(
        t.elapsed() > Duration::from_secs(3),
        "the trickle was not applied"
    );
    report("trickle", &pe.proxy, true);
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_blob_is_data_loss_and_commits_nothing() {
    let pe = ProxyEnv::start();
    let img = random_image(16, 2, 128 << 10);
    pe.env.push("faults/corrupt", Some("v1"), &img).await;
    let l1 = img.layer_digests()[1].clone();
    pe.proxy.add(Rule::new(
        &format!("/blobs/{l1}"),
        Fault::Corrupt,
        usize::MAX,
    ));
    let d = cri_imaged!().start(&pe.env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let r = pe.image_ref("faults/corrupt", "v1");
    let e = pull(&mut c, &r)
        .await
        .expect_err("corrupted blob must fail");
    println!("corrupt: {:?} {}", e.code(), e.message());
    assert_eq!(e.code(), Code::DataLoss, "{}", e.message());
    assert!(
        !pe.env.containerd.has_content(&l1),
        "corrupted blob was committed"
    );
    assert_no_record(&d, &pe.env.containerd, &r).await;
    // Once the registry serves the right bytes the same pull works.
    pe.proxy.clear_rules();
    assert_eq!(
        pull(&mut c, &r).await.expect("pull after repair"),
        img.config_digest
    );
    report("corrupt blob", &pe.proxy, true);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_manifest_and_redirect_loop_fail_cleanly() {
    let pe = ProxyEnv::start();
    let img = random_image(17, 1, 32 << 10);
    pe.env.push("faults/big", Some("v1"), &img).await;
    pe.env.push("faults/loop", Some("v1"), &img).await;
    // A 5 MiB "manifest".
    let mut big =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"pad":""#
            .to_vec();
    big.extend(std::iter::repeat_n(b'a', 5 << 20));
    big.extend_from_slice(br#""}}"#);
    pe.proxy.add(Rule::new(
        "/faults/big/manifests/",
        Fault::Replace {
            body: Arc::new(big),
            content_type: "application/vnd.oci.image.manifest.v1+json".into(),
        },
        usize::MAX,
    ));
    pe.proxy
        .add(Rule::new("/faults/loop/", Fault::RedirectLoop, usize::MAX));
    let d = cri_imaged!().start(&pe.env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;

    let r = pe.image_ref("faults/big", "v1");
    let e = pull(&mut c, &r)
        .await
        .expect_err("5 MiB manifest must be refused");
    println!("big manifest: {:?} {}", e.code(), e.message());
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(
        e.message().contains("4 MiB")
            || e.message().contains("limit")
            || e.message().to_lowercase().contains("large"),
        "{}",
        e.message()
    );
    assert_no_record(&d, &pe.env.containerd, &r).await;

    let r = pe.image_ref("faults/loop", "v1");
    let t = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(30), pull(&mut c, &r))
        .await
        .expect("redirect loop must not hang")
        .expect_err("redirect loop must fail");
    println!(
        "redirect loop: after {:?}: {:?} {}",
        t.elapsed(),
        e.code(),
        e.message()
    );
    assert!(e.message().contains("redirect"), "{}", e.message());
    assert_no_record(&d, &pe.env.containerd, &r).await;
    report("big manifest + redirect loop", &pe.proxy, true);
}

// ---------------------------------------------------------------------------
// 4. disk full

fn free_bytes(p: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().to_string_lossy().as_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_bavail as u64 * s.f_frsize as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_full_is_resource_exhausted_then_recovers() {
    let env = TestEnv::start_with(ContainerdOpts::default().root_tmpfs(96 << 20), None);
    let img = random_image(21, 3, 3 << 20);
    env.push("faults/disk", Some("v1"), &img).await;
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    // Leave ~2 MiB: the ~9 MiB image (plus 9 MiB unpacked) cannot fit.
    let dummy = env.containerd.root.join("dummy-fill");
    let free = free_bytes(&env.containerd.root);
    let fill = free.saturating_sub(2 << 20);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&dummy).unwrap();
        let block = vec![0x55u8; 1 << 20];
        let mut left = fill;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            f.write_all(&block[..n]).unwrap();
            left -= n as u64;
        }
    }
    let mut c = d.client().await;
    let r = env.image_ref("faults/disk", "v1");
    let e = pull(&mut c, &r)
        .await
        .expect_err("pull onto a full disk must fail");
    println!("disk full: {:?} {}", e.code(), e.message());
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert_no_record(&d, &env.containerd, &r).await;
    std::fs::remove_file(&dummy).unwrap();
    let id = pull(&mut c, &r).await.expect("pull after freeing space");
    assert_eq!(id, img.config_digest);
    assert_all_images_complete(&env.containerd);
    println!("disk full: faults injected 1, handled 1");
}

// ---------------------------------------------------------------------------
// 5. concurrency

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_removes_and_races() {
    let env = TestEnv::start();
    let imgs: Vec<BuiltImage> = (0..10)
        .map(|i| random_image(300 + i, 2, 32 << 10))
        .collect();
    for (i, img) in imgs.iter().enumerate() {
        env.push(&format!("conc/img{i}"), Some("v1"), img).await;
    }
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let refs: Vec<String> = (0..10)
        .map(|i| env.image_ref(&format!("conc/img{i}"), "v1"))
        .collect();

    // 50 concurrent pulls of 10 images.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..50 {
        let r = refs[k % 10].clone();
        let want = imgs[k % 10].config_digest.clone();
        let mut c = d.client().await;
        tasks.push(tokio::spawn(async move {
            let id = pull(&mut c, &r).await.map_err(|e| format!("{r}: {e}"))?;
            if id != want {
                return Err(format!("{r}: id {id} != {want}"));
            }
            Ok::<(), String>(())
        }));
    }
    let mut errors = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            errors.push(e);
        }
    }
    println!(
        "concurrency: 50 pulls of 10 images in {:?}, errors {}",
        t.elapsed(),
        errors.len()
    );
    assert!(errors.is_empty(), "{errors:#?}");
    assert_all_images_complete(&env.containerd);
    assert_index_agrees(&d, &env.containerd).await;

    // RemoveImage racing PullImage of the same image (warm: image present), several rounds.
    const RACES: usize = 20;
    let mut race_errors = Vec::new();
    for round in 0..RACES {
        let r = refs[round % 10].clone();
        let mut c1 = d.client().await;
        let mut c2 = d.client().await;
        let (p, rm) = tokio::join!(pull(&mut c1, &r), remove(&mut c2, &r));
        if let Err(e) = p {
            race_errors.push(format!("pull: {:?} {}", e.code(), e.message()));
        }
        if let Err(e) = rm {
            race_errors.push(format!("remove: {:?} {}", e.code(), e.message()));
        }
        // Whatever the interleaving, a pull afterwards gives a complete image.
        // No record may point at content the remove collected meanwhile.
        assert_all_images_complete(&env.containerd);
        pull(&mut c1, &r).await.expect("pull after race");
    }
    println!("concurrency: remove/pull races {RACES}, errors {race_errors:?}");
    assert!(race_errors.is_empty(), "{race_errors:#?}");
    assert_all_images_complete(&env.containerd);
    assert_index_agrees(&d, &env.containerd).await;

    // Parallel removes: 5 removes of each image at once, all succeed.
    let mut tasks = Vec::new();
    for k in 0..50 {
        let r = if k % 2 == 0 {
            refs[k % 10].clone()
        } else {
            imgs[k % 10].config_digest.clone()
        };
        let mut c = d.client().await;
        tasks.push(tokio::spawn(async move {
            remove(&mut c, &r).await.map_err(|e| format!("{r}: {e}"))
        }));
    }
    let mut errors = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            errors.push(e);
        }
    }
    println!("concurrency: 50 parallel removes, errors {}", errors.len());
    assert!(errors.is_empty(), "{errors:#?}");
    let mut c = d.client().await;
    assert!(list(&mut c).await.is_empty());
    assert_index_agrees(&d, &env.containerd).await;
}

/// Wait (up to 3 s: the registry counters are synced every 500 ms) until the
/// unlabelled counter `name` reaches at least `min`.
async fn wait_counter(d: &CriImaged, name: &str, min: f64) -> bool {
    for _ in 0..60 {
        let text = d.metrics().await;
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if v >= min {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// Several containerds on one host (the tests run two at a time; a managed
/// containerd runs beside the node's own): none may take a host-wide socket.
/// containerd 2.x opens NRI on /var/run/nri/nri.sock unless told otherwise,
/// and the second one to start then exits with "address already in use".
#[test]
fn containerds_side_by_side_share_no_host_socket() {
    use std::os::unix::fs::MetadataExt;
    let host_nri = std::path::Path::new("/var/run/nri/nri.sock");
    let stamp = || {
        std::fs::metadata(host_nri)
            .map(|m| (m.ino(), m.mtime(), m.mtime_nsec()))
            .ok()
    };
    let before = stamp();
    let mut a = Containerd::start(ContainerdOpts::default());
    let mut b = Containerd::start(ContainerdOpts::default());
    // Restart one while the other runs: a stale socket left by a kill must not
    // matter either.
    a.kill();
    a.start_again();
    for c in [&mut a, &mut b] {
        assert!(c.is_running(), "containerd exited:\n{}", c.log_tail(20));
        assert!(
            c.plugin_ok("io.containerd.grpc.v1", "cri"),
            "{}",
            c.log_tail(20)
        );
        let log = std::fs::read_to_string(&c.log).unwrap();
        assert!(
            !log.contains("/var/run/nri/"),
            "NRI on the host socket:\n{log}"
        );
    }
    let after = stamp();
    assert_eq!(before, after, "a test containerd (re)created {host_nri:?}");
}

/// Small layer blobs are stored in containerd's content store only after
/// their pull, from named spools; a cri-imaged killed in between leaves the
/// spools behind, and the next one stores them at start (with the labels the
/// pull would have set), and removes what cannot be stored.
#[tokio::test(flavor = "multi_thread")]
async fn spooled_blobs_a_killed_process_left_are_stored_at_start() {
    let env = TestEnv::start();
    let spool = tempfile::tempdir().unwrap();
    let dead = 4_194_303; // above any pid in use here
    let blob = Layer::random(64 << 10, 7).compress(Compression::Gzip);
    let digest = sha256_digest(&blob);
    let socket = env.containerd.socket.display().to_string();
    let write = |stem: &str, size: usize, data: &[u8], containerd: &str| {
        let record = serde_json::json!({
            "containerd": containerd,
            "namespace": "k8s.io",
            "digest": digest,
            "size": size,
            "labels": {
                "containerd.io/distribution.source.example.com": "team/app",
                "containerd.io/uncompressed": "sha256:0123",
            },
        });
        std::fs::write(
            spool.path().join(format!("{stem}.json")),
            record.to_string(),
        )
        .unwrap();
        std::fs::write(spool.path().join(format!("{stem}.blob")), data).unwrap();
    };
    // Complete; partial (killed mid-download); a data file without record;
    // one for another containerd on the host (left alone).
    write(
        &format!("cri-imaged-spool-{dead}-00000000000000aa-0000000000000001"),
        blob.len(),
        &blob,
        &socket,
    );
    write(
        &format!("cri-imaged-spool-{dead}-00000000000000aa-0000000000000002"),
        blob.len() + 10,
        &blob,
        &socket,
    );
    let other = format!("cri-imaged-spool-{dead}-00000000000000aa-0000000000000004");
    write(&other, blob.len(), &blob, "/run/other/containerd.sock");
    std::fs::write(
        spool.path().join(format!(
            "cri-imaged-spool-{dead}-00000000000000aa-0000000000000003.blob"
        )),
        b"orphan",
    )
    .unwrap();

    let dir = spool.path().to_path_buf();
    let _d = cri_imaged!()
        .config(move |c| c.spool_dir = dir)
        .start(&env.containerd);
    assert!(
        wait_for(
            || env.containerd.has_content(&digest),
            Duration::from_secs(10)
        ),
        "the spooled blob was not stored"
    );
    let ls = env.containerd.ctr_ok(&["content", "ls"]);
    let line = ls.lines().find(|l| l.starts_with(&digest)).unwrap();
    assert!(
        line.contains("containerd.io/distribution.source.example.com=team/app"),
        "{line}"
    );
    // Held by a lease that expires, until records reference it.
    assert!(
        leases_with_labels(&env.containerd)
            .iter()
            .any(|(_, l)| l.contains("containerd.io/gc.expire")),
        "{:?}",
        leases_with_labels(&env.containerd)
    );
    let left = || {
        let mut v: Vec<String> = std::fs::read_dir(spool.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let others = vec![format!("{other}.blob"), format!("{other}.json")];
    assert!(
        wait_for(|| left() == others, Duration::from_secs(5)),
        "spool files left: {:?}",
        left()
    );
}
