//! Observability end to end (real binary, real containerd and registry):
//! /metrics (checked by `promtool check metrics`), every counter and
//! histogram moving as it should, /healthz and /readyz following containerd,
//! structured logs (text and JSON) and that no credential ever reaches a log
//! line or the scrape.

use cri_imaged_test_rig::*;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use tonic::transport::Channel;

// ---------------------------------------------------------------- helpers

/// A sample's labels, as (name, value) pairs.
type Labels = Vec<(String, String)>;

/// A parsed scrape: "name{k="v",...}" (labels as rendered) -> value.
struct Scrape {
    text: String,
    samples: Vec<(String, Labels, f64)>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let mut samples = Vec::new();
        for l in text.lines() {
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (series, value) = l.rsplit_once(' ').expect("sample line");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let rest = rest.strip_suffix('}').expect("closing brace");
                    let labels = rest
                        .split("\",")
                        .filter(|s| !s.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once("=\"").expect("label k=\"v\"");
                            (k.to_string(), v.trim_end_matches('"').to_string())
                        })
                        .collect();
                    (n.to_string(), labels)
                }
                None => (series.to_string(), Vec::new()),
            };
            samples.push((name, labels, value));
        }
        Scrape { text, samples }
    }

    /// The value of the one series `name` whose labels include `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let hits: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, ls, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        match hits.len() {
            1 => hits[0],
            0 => 0.0,
            _ => panic!("{name}{labels:?} matches {} series", hits.len()),
        }
    }

    /// Every distinct value of label `label` on metric `name`.
    fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .flat_map(|(_, ls, _)| {
                ls.iter()
                    .filter(|(k, _)| k == label)
                    .map(|(_, v)| v.clone())
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

async fn scrape(d: &CriImaged) -> Scrape {
    let (st, body) = d.http_get("/metrics").await;
    assert_eq!(st, 200, "{body}");
    Scrape::parse(body)
}

/// `promtool check metrics` on a scrape: exit 0 and no lint output at all.
fn promtool_check(text: &str) {
    let mut child = Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/promtool (Debian package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let problems: Vec<&str> = all.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "promtool check metrics: {:?}\n{}\n--- scrape ---\n{text}",
        out.status,
        problems.join("\n")
    );
}

/// Metric family names from the # TYPE lines, with their type.
fn families(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (n, t) = l.split_once(' ').unwrap();
            (n.to_string(), t.to_string())
        })
        .collect()
}

fn status_req(image: &str) -> cri::ImageStatusRequest {
    cri::ImageStatusRequest {
        image: spec(image),
        verbose: false,
    }
}

fn small_image(seed: u64) -> BuiltImage {
    ImageBuilder::new()
        .layer(base_layer(), Compression::Gzip)
        .layer(Layer::random(64 << 10, seed), Compression::Gzip)
        .build()
}

/// Scrape until `cond` holds (gauges are sampled in the background).
async fn wait_scrape(d: &CriImaged, what: &str, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    let mut last = scrape(d).await;
    for _ in 0..100 {
        if cond(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = scrape(d).await;
    }
    panic!("never true: {what}\n{}", last.text);
}

async fn wait_metric(d: &CriImaged, name: &str, labels: &[(&str, &str)], want: f64) -> Scrape {
    wait_scrape(d, &format!("{name}{labels:?} == {want}"), |s| {
        s.get(name, labels) == want
    })
    .await
}

// ---------------------------------------------------------------- metrics

/// The families listed in docs/behaviour.md (Metrics) exist with the right types, and their label
/// sets are bounded and pre-created.
#[tokio::test(flavor = "multi_thread")]
async fn metric_set_matches_the_contract() {
    let env = TestEnv::start();
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let s = wait_metric(&d, "cri_imaged_containerd_up", &[], 1.0).await;
    let f = families(&s.text);
    for (name, ty) in [
        ("cri_imaged_grpc_requests_total", "counter"),
        ("cri_imaged_grpc_request_duration_seconds", "histogram"),
        ("cri_imaged_pulls_total", "counter"),
        ("cri_imaged_pull_failures_total", "counter"),
        ("cri_imaged_pulls_in_flight", "gauge"),
        ("cri_imaged_pulls_coalesced_total", "counter"),
        ("cri_imaged_pull_duration_seconds", "histogram"),
        ("cri_imaged_pull_phase_duration_seconds", "histogram"),
        ("cri_imaged_fetched_bytes_total", "counter"),
        ("cri_imaged_layers_fetched_total", "counter"),
        ("cri_imaged_layers_reused_total", "counter"),
        ("cri_imaged_image_removals_total", "counter"),
        ("cri_imaged_images", "gauge"),
        ("cri_imaged_imagefs_used_bytes", "gauge"),
        ("cri_imaged_imagefs_inodes_used", "gauge"),
        ("cri_imaged_containerd_up", "gauge"),
        ("cri_imaged_build_info", "gauge"),
        ("cri_imaged_registry_retries_total", "counter"),
        ("cri_imaged_registry_host_fallthroughs_total", "counter"),
        ("cri_imaged_blob_range_resumes_total", "counter"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert_eq!(
            f.get(name).map(String::as_str),
            Some(ty),
            "{name}\n{}",
            s.text
        );
    }
    assert_eq!(
        s.label_values("cri_imaged_pull_failures_total", "reason"),
        [
            "canceled",
            "digest_mismatch",
            "no_space",
            "not_found",
            "other",
            "platform_mismatch",
            "registry_unavailable",
            "stalled",
            "unauthorized"
        ]
    );
    assert_eq!(
        s.label_values("cri_imaged_pulls_total", "result"),
        ["failure", "success"]
    );
    for p in ["fetch", "resolve", "unpack"] {
        assert!(
            s.label_values("cri_imaged_pull_phase_duration_seconds_count", "phase")
                .contains(&p.to_string()),
            "phase {p}"
        );
    }
    assert_eq!(
        s.get(
            "cri_imaged_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // The git revision (a hex prefix, or "unknown" outside a checkout) and rustc's version.
    let revs = s.label_values("cri_imaged_build_info", "revision");
    assert!(
        revs.len() == 1 && (revs[0] == "unknown" || revs[0].chars().all(|c| c.is_ascii_hexdigit())),
        "{revs:?}"
    );
    let rustc = s.label_values("cri_imaged_build_info", "rustc_version");
    assert!(rustc.len() == 1 && rustc[0].starts_with("1."), "{rustc:?}");
    assert!(s.get("process_resident_memory_bytes", &[]) > 1e6);
    assert_eq!(s.get("cri_imaged_pulls_in_flight", &[]), 0.0);
    promtool_check(&s.text);
}

/// Successful, coalesced, failed (not found, platform mismatch) pulls,
/// removals and RPC codes each move their series; the final scrape passes
/// promtool and names no image.
#[tokio::test(flavor = "multi_thread")]
async fn counters_and_histograms_move() {
    let env = TestEnv::start();
    let small = small_image(11);
    let sibling = small_image(12); // shares the base layer with `small`
    let big = ImageBuilder::new()
        .layer(Layer::random(8 << 20, 21), Compression::None)
        .layer(Layer::random(8 << 20, 22), Compression::None)
        .layer(Layer::random(8 << 20, 23), Compression::None)
        .build();
    let arm = ImageBuilder::new()
        .platform("linux", "arm64", None)
        .layer(Layer::random(32 << 10, 31), Compression::Gzip)
        .build();
    let arm_only = IndexBuilder::new(MediaFamily::Oci).manifest(&arm).build();
    env.push("obsrepo/small", Some("v1"), &small).await;
    env.push("obsrepo/sibling", Some("v1"), &sibling).await;
    env.push("obsrepo/big", Some("v1"), &big).await;
    env.push_index("obsrepo/armonly", Some("v1"), &arm_only)
        .await;

    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;

    // ---- a successful pull
    let s0 = scrape(&d).await;
    let r_small = env.image_ref("obsrepo/small", "v1");
    assert_eq!(pull(&mut c, &r_small).await.unwrap(), small.config_digest);
    let s1 = scrape(&d).await;
    let delta = |a: &Scrape, b: &Scrape, n: &str, l: &[(&str, &str)]| b.get(n, l) - a.get(n, l);
    assert_eq!(
        delta(&s0, &s1, "cri_imaged_pulls_total", &[("result", "success")]),
        1.0
    );
    assert_eq!(
        delta(&s0, &s1, "cri_imaged_pulls_total", &[("result", "failure")]),
        0.0
    );
    assert_eq!(
        delta(
            &s0,
            &s1,
            "cri_imaged_pull_duration_seconds_count",
            &[("result", "success"), ("size", "0-10MB")]
        ),
        1.0
    );
    assert!(
        delta(
            &s0,
            &s1,
            "cri_imaged_pull_duration_seconds_sum",
            &[("result", "success"), ("size", "0-10MB")]
        ) > 0.0
    );
    for p in ["resolve", "fetch", "unpack"] {
        assert_eq!(
            delta(
                &s0,
                &s1,
                "cri_imaged_pull_phase_duration_seconds_count",
                &[("phase", p)]
            ),
            1.0,
            "phase {p}"
        );
    }
    let blob_bytes: u64 = small
        .all_blobs()
        .iter()
        .map(|(_, b, _)| b.len() as u64)
        .sum();
    let fetched = delta(&s0, &s1, "cri_imaged_fetched_bytes_total", &[]);
    assert!(
        fetched >= blob_bytes as f64,
        "fetched {fetched} < blobs {blob_bytes}"
    );
    assert_eq!(delta(&s0, &s1, "cri_imaged_layers_fetched_total", &[]), 2.0);
    assert_eq!(delta(&s0, &s1, "cri_imaged_layers_reused_total", &[]), 0.0);
    assert_eq!(
        delta(
            &s0,
            &s1,
            "cri_imaged_grpc_requests_total",
            &[("method", "PullImage"), ("code", "OK")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            &s0,
            &s1,
            "cri_imaged_grpc_request_duration_seconds_count",
            &[("method", "PullImage")]
        ),
        1.0
    );

    // ---- a pull sharing the base layer: one fetched, one reused
    pull(&mut c, &env.image_ref("obsrepo/sibling", "v1"))
        .await
        .unwrap();
    let s2 = scrape(&d).await;
    assert_eq!(delta(&s1, &s2, "cri_imaged_layers_fetched_total", &[]), 1.0);
    assert_eq!(delta(&s1, &s2, "cri_imaged_layers_reused_total", &[]), 1.0);

    // ---- three concurrent pulls of a bigger image: one pull, the others join it
    let r_big = env.image_ref("obsrepo/big", "v1");
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let mut cc = d.client().await;
        let r = r_big.clone();
        tasks.push(tokio::spawn(async move { pull(&mut cc, &r).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), big.config_digest);
    }
    let s3 = scrape(&d).await;
    let coalesced = delta(&s2, &s3, "cri_imaged_pulls_coalesced_total", &[]);
    assert!(coalesced >= 1.0, "coalesced {coalesced}");
    assert_eq!(
        delta(&s2, &s3, "cri_imaged_pulls_total", &[("result", "success")]),
        3.0 - coalesced
    );
    assert_eq!(delta(&s2, &s3, "cri_imaged_layers_fetched_total", &[]), 3.0);
    assert!(delta(&s2, &s3, "cri_imaged_fetched_bytes_total", &[]) >= (24 << 20) as f64);
    assert_eq!(
        delta(
            &s2,
            &s3,
            "cri_imaged_grpc_requests_total",
            &[("method", "PullImage"), ("code", "OK")]
        ),
        3.0
    );
    assert_eq!(s3.get("cri_imaged_pulls_in_flight", &[]), 0.0);

    // ---- failures, each with its reason
    let e = pull(&mut c, &env.image_ref("obsrepo/small", "no-such-tag"))
        .await
        .expect_err("unknown tag");
    let s4 = scrape(&d).await;
    assert_eq!(
        delta(
            &s3,
            &s4,
            "cri_imaged_pull_failures_total",
            &[("reason", "not_found")]
        ),
        1.0,
        "{e:?}"
    );
    assert_eq!(
        delta(&s3, &s4, "cri_imaged_pulls_total", &[("result", "failure")]),
        1.0
    );
    assert_eq!(
        delta(&s3, &s4, "cri_imaged_pulls_total", &[("result", "success")]),
        0.0
    );
    let code = cri_code(&e);
    assert_eq!(
        delta(
            &s3,
            &s4,
            "cri_imaged_grpc_requests_total",
            &[("method", "PullImage"), ("code", code)]
        ),
        1.0
    );

    let e = pull(&mut c, &env.image_ref("obsrepo/armonly", "v1"))
        .await
        .expect_err("arm64-only index on amd64");
    let s5 = scrape(&d).await;
    assert_eq!(
        delta(
            &s4,
            &s5,
            "cri_imaged_pull_failures_total",
            &[("reason", "platform_mismatch")]
        ),
        1.0,
        "{e:?}"
    );
    assert_eq!(
        delta(&s4, &s5, "cri_imaged_pulls_total", &[("result", "failure")]),
        1.0
    );
    for r in ["not_found", "unauthorized", "stalled", "other"] {
        assert_eq!(
            delta(&s4, &s5, "cri_imaged_pull_failures_total", &[("reason", r)]),
            0.0,
            "{r}"
        );
    }

    // ---- RPC counts by method and code
    for _ in 0..2 {
        c.image_status(status_req(&r_small)).await.unwrap();
    }
    let e = c
        .image_status(cri::ImageStatusRequest {
            image: None,
            verbose: false,
        })
        .await
        .expect_err("no image spec");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    c.list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap();
    c.image_fs_info(cri::ImageFsInfoRequest {}).await.unwrap();

    // ---- a removal
    remove(&mut c, &r_small).await.unwrap();
    let s6 = scrape(&d).await;
    let rpc = |m: &str, code: &str| {
        delta(
            &s5,
            &s6,
            "cri_imaged_grpc_requests_total",
            &[("method", m), ("code", code)],
        )
    };
    assert_eq!(rpc("ImageStatus", "OK"), 2.0);
    assert_eq!(rpc("ImageStatus", "INVALID_ARGUMENT"), 1.0);
    assert_eq!(rpc("ListImages", "OK"), 1.0);
    assert_eq!(rpc("ImageFsInfo", "OK"), 1.0);
    assert_eq!(rpc("RemoveImage", "OK"), 1.0);
    assert_eq!(
        delta(
            &s5,
            &s6,
            "cri_imaged_grpc_request_duration_seconds_count",
            &[("method", "ImageStatus")]
        ),
        3.0
    );
    assert_eq!(delta(&s5, &s6, "cri_imaged_image_removals_total", &[]), 1.0);

    // ---- gauges mirror state (sampled every 500 ms): sibling + big remain
    let s7 = wait_scrape(&d, "images == 2 and imagefs holds the big image", |s| {
        s.get("cri_imaged_images", &[]) == 2.0
            && s.get("cri_imaged_imagefs_used_bytes", &[]) >= (24 << 20) as f64
            && s.get("cri_imaged_imagefs_inodes_used", &[]) > 0.0
    })
    .await;
    assert_eq!(s7.get("cri_imaged_containerd_up", &[]), 1.0);
    assert_eq!(s7.get("cri_imaged_pulls_in_flight", &[]), 0.0);

    // ---- the scrape after pulls, failures and removals: lint-clean, bounded labels
    promtool_check(&s7.text);
    for needle in [
        "obsrepo",
        env.registry_addr(),
        "no-such-tag",
        &small.config_digest,
    ] {
        assert!(
            !s7.text.contains(needle),
            "{needle:?} in the scrape:\n{}",
            s7.text
        );
    }
    // Bounded: each of these takes a fixed, small set of values (build_info's
    // revision and rustc_version one each).
    let allowed: &[&str] = &[
        "method",
        "code",
        "result",
        "reason",
        "phase",
        "le",
        "version",
        "revision",
        "rustc_version",
        "size",
        "unpacker",
        "via",
    ];
    for (n, ls, _) in &s7.samples {
        for (k, _) in ls {
            assert!(allowed.contains(&k.as_str()), "label {k} on {n}");
        }
    }
}

fn cri_code(s: &tonic::Status) -> &'static str {
    match s.code() {
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        other => panic!("unexpected code {other:?}"),
    }
}

/// A blob body that stops mid-way fails the pull as `stalled`.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_pull_is_counted_as_stalled() {
    let env = TestEnv::start();
    let img = ImageBuilder::new()
        .layer(base_layer(), Compression::Gzip)
        .layer(Layer::random(2 << 20, 41), Compression::None)
        .build();
    env.push("obsrepo/stall", Some("v1"), &img).await;
    let proxy = FaultProxy::stalling(env.registry_addr(), &img.layer_digests()[1], 128 * 1024);
    write_hosts_toml(&env.containerd.certs_d, &proxy.addr, &proxy.addr);
    let d = cri_imaged!()
        .config(|c| c.pull_progress_timeout = Duration::from_secs(1))
        .start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let r = format!("{}/obsrepo/stall:v1", proxy.addr);
    // A caller that gives up (drops its request) is counted as CANCELLED.
    let s_before = scrape(&d).await;
    let mut c2 = d.client().await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), pull(&mut c2, &r))
            .await
            .is_err()
    );
    wait_metric(
        &d,
        "cri_imaged_grpc_requests_total",
        &[("method", "PullImage"), ("code", "CANCELLED")],
        s_before.get(
            "cri_imaged_grpc_requests_total",
            &[("method", "PullImage"), ("code", "CANCELLED")],
        ) + 1.0,
    )
    .await;
    // Its flight had no other waiter: it is gone, nothing in flight.
    wait_metric(&d, "cri_imaged_pulls_in_flight", &[], 0.0).await;
    // ... and the aborted pull itself is a failure with reason "canceled".
    wait_metric(
        &d,
        "cri_imaged_pull_failures_total",
        &[("reason", "canceled")],
        s_before.get("cri_imaged_pull_failures_total", &[("reason", "canceled")]) + 1.0,
    )
    .await;

    let s0 = scrape(&d).await;
    tokio::time::timeout(Duration::from_secs(20), pull(&mut c, &r))
        .await
        .expect("a stalled pull must not hang")
        .expect_err("a stalled pull must fail");
    assert!(proxy.stalls() >= 1);
    let s1 = scrape(&d).await;
    let delta = |n: &str, l: &[(&str, &str)]| s1.get(n, l) - s0.get(n, l);
    assert_eq!(
        delta("cri_imaged_pull_failures_total", &[("reason", "stalled")]),
        1.0,
        "{}",
        s1.text
    );
    assert_eq!(
        delta("cri_imaged_pulls_total", &[("result", "failure")]),
        1.0
    );
    assert_eq!(
        delta(
            "cri_imaged_pull_duration_seconds_count",
            &[("result", "failure"), ("size", "unknown")]
        ),
        1.0
    );
    assert!(delta("cri_imaged_fetched_bytes_total", &[]) >= (128 * 1024) as f64);
    assert_eq!(s1.get("cri_imaged_pulls_in_flight", &[]), 0.0);
    promtool_check(&s1.text);
}

// ---------------------------------------------------------------- health

#[tokio::test(flavor = "multi_thread")]
async fn readyz_follows_containerd() {
    let mut env = TestEnv::start();
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    assert!(
        wait_for_async(
            || async { d.http_get("/readyz").await.0 == 200 },
            Duration::from_secs(10)
        )
        .await,
        "{:?}",
        d.http_get("/readyz").await
    );
    assert_eq!(d.http_get("/healthz").await.0, 200);
    wait_metric(&d, "cri_imaged_containerd_up", &[], 1.0).await;

    tokio::task::block_in_place(|| env.containerd.stop());
    assert!(
        wait_for_async(
            || async { d.http_get("/readyz").await.0 == 503 },
            Duration::from_secs(15)
        )
        .await,
        "/readyz did not turn 503 with containerd stopped: {:?}",
        d.http_get("/readyz").await
    );
    let (st, body) = d.http_get("/readyz").await;
    assert_eq!(st, 503);
    assert!(
        body.contains("containerd"),
        "the reason names containerd: {body:?}"
    );
    assert_eq!(
        d.http_get("/healthz").await.0,
        200,
        "alive while containerd is down"
    );
    let s = wait_metric(&d, "cri_imaged_containerd_up", &[], 0.0).await;
    promtool_check(&s.text);

    tokio::task::block_in_place(|| env.containerd.start_again());
    assert!(
        wait_for_async(
            || async { d.http_get("/readyz").await.0 == 200 },
            Duration::from_secs(30)
        )
        .await,
        "/readyz did not recover: {:?}\n{}",
        d.http_get("/readyz").await,
        tail_file(&d.log, 30)
    );
    assert_eq!(d.http_get("/healthz").await.0, 200);
    wait_metric(&d, "cri_imaged_containerd_up", &[], 1.0).await;
}

// ---------------------------------------------------------------- logs

const USER: &str = "obsuser";
const PASSWORD: &str = "s3cr3t-Pa55-7c41e";
const WRONG: &str = "wr0ng-s3cr3t-Pa55-93d2";

fn basic(p: &str, server: &str) -> cri::AuthConfig {
    cri::AuthConfig {
        username: USER.into(),
        password: p.into(),
        server_address: server.into(),
        ..Default::default()
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Every form a credential could leak in.
fn secrets() -> Vec<String> {
    let mut v = Vec::new();
    for p in [PASSWORD, WRONG] {
        v.push(p.to_string());
        v.push(b64(&format!("{USER}:{p}")));
        v.push(b64(p));
    }
    v
}

fn assert_no_secret(what: &str, text: &str) {
    for s in secrets() {
        assert!(
            !text.contains(&s),
            "{what} contains a credential ({s}):\n{text}"
        );
    }
}

/// Authenticated pulls (wrong password, right password, base64 `auth` form);
/// returns the failure reason counts seen.
async fn auth_pulls(env: &TestEnv, c: &mut ImageServiceClient<Channel>, repo: &str) {
    let r = env.image_ref(repo, "v1");
    let server = env.registry_addr().to_string();
    let e = pull_auth(c, &r, basic(WRONG, &server))
        .await
        .expect_err("wrong password");
    assert!(!e.message().contains(WRONG), "{e:?}");
    let e = pull_auth(
        c,
        &r,
        cri::AuthConfig {
            auth: b64(&format!("{USER}:{WRONG}")),
            server_address: server.clone(),
            ..Default::default()
        },
    )
    .await
    .expect_err("wrong password, base64 form");
    assert!(!e.message().contains(WRONG), "{e:?}");
    pull_auth(c, &r, basic(PASSWORD, &server))
        .await
        .expect("right password");
    pull_auth(
        c,
        &r,
        cri::AuthConfig {
            auth: b64(&format!("{USER}:{PASSWORD}")),
            server_address: server.clone(),
            ..Default::default()
        },
    )
    .await
    .expect("right password, base64 form");
}

/// Text logs (debug level for cri_imaged), JSON logs and the scrape after
/// authenticated pulls never contain the password in any form; failures are
/// counted as `unauthorized`; JSON logs are one object a line with the pull
/// line's fields and the RPC span.
#[tokio::test(flavor = "multi_thread")]
async fn logs_are_structured_and_never_contain_credentials() {
    let env = TestEnv::start_with(ContainerdOpts::default(), Some((USER, PASSWORD)));
    let img = small_image(51);
    let img2 = small_image(52);
    env.push("obsrepo/private", Some("v1"), &img).await;
    env.push("obsrepo/private2", Some("v1"), &img2).await;

    // ---- text format
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let s0 = scrape(&d).await;
    auth_pulls(&env, &mut c, "obsrepo/private").await;
    let s1 = scrape(&d).await;
    assert_eq!(
        s1.get(
            "cri_imaged_pull_failures_total",
            &[("reason", "unauthorized")]
        ) - s0.get(
            "cri_imaged_pull_failures_total",
            &[("reason", "unauthorized")]
        ),
        2.0,
        "{}",
        s1.text
    );
    assert_eq!(
        s1.get("cri_imaged_pulls_total", &[("result", "success")])
            - s0.get("cri_imaged_pulls_total", &[("result", "success")]),
        2.0
    );
    promtool_check(&s1.text);
    assert_no_secret("the scrape", &s1.text);
    let text = d.log_text();
    assert_no_secret("the text log", &text);
    assert!(
        !text.contains('\u{1b}'),
        "no ANSI colour codes in a log file"
    );
    let pull_line = text
        .lines()
        .find(|l| {
            l.contains(" pull ") && l.contains("result=\"success\"")
                || l.contains("pull") && l.contains("result=success")
        })
        .unwrap_or_else(|| panic!("no pull line:\n{text}"));
    for f in [
        "image=",
        "platform=",
        "bytes=",
        "layers_fetched=",
        "layers_reused=",
        "fetch_ms=",
        "unpack_ms=",
    ] {
        assert!(pull_line.contains(f), "{f} missing in {pull_line:?}");
    }
    assert!(
        text.lines()
            .any(|l| l.contains("rpc{method=\"PullImage\" request_id=")),
        "no rpc span in the text log:\n{text}"
    );
    drop(c);
    drop(d);

    // ---- JSON format (other images, so the pulls go to the registry again)
    let d = cri_imaged!()
        .config(|c| c.log_format = LogFormat::Json)
        .start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    auth_pulls(&env, &mut c, "obsrepo/private2").await;
    let server = env.registry_addr().to_string();
    pull_auth(
        &mut c,
        &env.image_ref("obsrepo/private2", "nope"),
        basic(PASSWORD, &server),
    )
    .await
    .expect_err("unknown tag");
    let s2 = scrape(&d).await;
    assert_no_secret("the scrape", &s2.text);
    let log = d.log_text();
    assert_no_secret("the JSON log", &log);
    let mut lines = Vec::new();
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{l}"
        );
        lines.push(v);
    }
    let pulls: Vec<&serde_json::Value> = lines.iter().filter(|v| v["message"] == "pull").collect();
    let ok = pulls
        .iter()
        .find(|v| v["result"] == "success")
        .unwrap_or_else(|| panic!("no successful pull line:\n{log}"));
    assert_eq!(ok["image"], env.image_ref("obsrepo/private2", "v1"));
    assert_eq!(ok["platform"], "linux/amd64");
    assert!(ok["bytes"].as_u64().unwrap() > 0, "{ok}");
    // The base layer may already be there from the text-format run.
    assert_eq!(
        ok["layers_fetched"].as_u64().unwrap() + ok["layers_reused"].as_u64().unwrap(),
        2,
        "{ok}"
    );
    assert_eq!(
        ok["span"]["method"], "PullImage",
        "the pull line carries the RPC span: {ok}"
    );
    for f in [
        "layers_reused",
        "resolve_ms",
        "fetch_ms",
        "unpack_ms",
        "total_ms",
    ] {
        assert!(ok[f].is_u64(), "{f} in {ok}");
    }
    let failed: Vec<&&serde_json::Value> =
        pulls.iter().filter(|v| v["result"] == "failure").collect();
    assert!(
        failed.iter().any(|v| v["reason"] == "unauthorized"),
        "no unauthorized pull line:\n{log}"
    );
    assert!(
        failed.iter().any(|v| v["reason"] == "not_found"),
        "no not_found pull line:\n{log}"
    );
    // RPC spans: method and request id, one id per request.
    let mut ids = std::collections::HashSet::new();
    for v in &lines {
        if let Some(span) = v.get("span") {
            if span["name"] == "rpc" {
                assert!(span["method"].is_string(), "{v}");
                ids.insert(span["request_id"].as_u64().expect("request_id"));
            }
        }
    }
    assert!(ids.len() >= 5, "rpc spans with request ids: {ids:?}\n{log}");
}
