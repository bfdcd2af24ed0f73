//! A hostile registry (issue #24): the fault proxy serves blobs longer or
//! shorter than their descriptors, manifests and indexes of 100,000 entries,
//! a 10 MB token, a `WWW-Authenticate` of 10,000 parameters, redirects to
//! other hosts and endless trickles. Each pull ends with the right gRPC code
//! within its time bound, in bounded memory, leaves no image record, and
//! cri-imaged serves afterwards.
//!
//!   cargo test --test hostile_registry -- --nocapture

use cri_imaged_test_rig::*;

use k8s_cri::v1 as cri;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

const USER: &str = "hostile-user";
const PASS: &str = "hostile-pass-0123";
/// cri-imaged's peak RSS (VmHWM) must stay under this.
const RSS_BOUND_KIB: u64 = 200 << 10;

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

/// A proxy in front of `upstream`, wired as its own registry host.
fn proxy(env: &TestEnv, upstream: &str) -> FaultProxy {
    let p = FaultProxy::start(upstream);
    write_hosts_toml(&env.containerd.certs_d, &p.addr, &p.addr);
    p
}

/// A proxy in front of `upstream` whose hosts.toml names it once (`server`
/// only): a host listed twice is tried twice, so each bound would count twice.
fn single_host_proxy(env: &TestEnv, upstream: &str) -> FaultProxy {
    let p = FaultProxy::start(upstream);
    let hosts = format!("server = \"http://{}\"\n", p.addr);
    write_hosts(&env.containerd.certs_d, &p.addr, &hosts);
    p
}

/// (VmHWM, VmRSS) of cri-imaged in KiB.
fn rss_kib(d: &CriImaged) -> (u64, u64) {
    let pid = d.pid().expect("cri-imaged runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn assert_rss_bounded(d: &CriImaged, case: &str) {
    let (hwm, rss) = rss_kib(d);
    println!(
        "hostile {case}: cri-imaged peak RSS {} MiB, RSS {} MiB",
        hwm >> 10,
        rss >> 10
    );
    assert!(
        hwm < RSS_BOUND_KIB,
        "{case}: peak RSS {hwm} KiB over {RSS_BOUND_KIB} KiB"
    );
}

/// Neither cri-imaged's index nor containerd has a record of `r`.
async fn assert_no_record(d: &CriImaged, cd: &Containerd, r: &str) {
    let mut c = d.client().await;
    assert!(status(&mut c, r).await.is_none(), "{r} has a record");
    let names = cd.image_names();
    assert!(
        !names.iter().any(|n| n == r),
        "{r} in containerd: {names:?}"
    );
}

/// Pull `r` (with `auth`), expecting `code` within `bound`; returns the message.
async fn pull_fails(
    d: &CriImaged,
    r: &str,
    auth: Option<cri::AuthConfig>,
    code: Code,
    bound: Duration,
) -> String {
    let mut c = d.client().await;
    let t = Instant::now();
    let res = match auth {
        Some(a) => tokio::time::timeout(bound, pull_auth(&mut c, r, a)).await,
        None => tokio::time::timeout(bound, pull(&mut c, r)).await,
    };
    let e = res
        .unwrap_or_else(|_| panic!("{r}: no answer within {bound:?}"))
        .expect_err("the pull must fail");
    println!(
        "hostile {r}: {:?} after {:.1?}: {}",
        e.code(),
        t.elapsed(),
        e.message()
    );
    assert_eq!(e.code(), code, "{r}: {}", e.message());
    e.message().to_string()
}

/// A good image pulls afterwards: cri-imaged still serves.
async fn still_serves(d: &CriImaged, env: &TestEnv, img: &BuiltImage, repo: &str) {
    env.push(repo, Some("v1"), img).await;
    let mut c = d.client().await;
    let id = tokio::time::timeout(
        Duration::from_secs(30),
        pull(&mut c, &env.image_ref(repo, "v1")),
    )
    .await
    .expect("a good pull afterwards hung")
    .expect("a good pull afterwards");
    assert_eq!(id, img.config_digest);
}

fn respond(status: u16, headers: &[(&str, &str)], body: Vec<u8>) -> Fault {
    Fault::Respond {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: Arc::new(body),
    }
}

fn replace(body: Vec<u8>, content_type: &str) -> Fault {
    Fault::Replace {
        body: Arc::new(body),
        content_type: content_type.into(),
    }
}

fn oci(kind: &str) -> String {
    format!("application/vnd.oci.image.{kind}.v1+json")
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn blobs_longer_or_shorter_than_their_descriptors_are_data_loss() {
    let env = TestEnv::start();
    let p = proxy(&env, env.registry_addr());
    let img = random_image(41, 2, 64 << 10);
    env.push("hostile/long", Some("v1"), &img).await;
    env.push("hostile/short", Some("v1"), &img).await;
    let l1 = img.layer_digests()[1].clone();
    // Longer: the registry sends 4 KiB more than the descriptor's size.
    p.add(Rule::new(
        &format!("/hostile/long/blobs/{l1}"),
        Fault::Extend(4096),
        usize::MAX,
    ));
    // Shorter: the manifest declares 100 bytes more than the blob has.
    let mut m: serde_json::Value = serde_json::from_slice(&img.manifest_bytes).unwrap();
    let size = m["layers"][1]["size"].as_i64().unwrap();
    m["layers"][1]["size"] = (size + 100).into();
    p.add(Rule::new(
        "/hostile/short/manifests/v1",
        replace(serde_json::to_vec(&m).unwrap(), &img.manifest_media_type),
        usize::MAX,
    ));
    // Every response cut short, the range resumes too: a bounded number of resumes.
    env.push("hostile/cut", Some("v1"), &img).await;
    p.add(Rule::new(
        &format!("/hostile/cut/blobs/{l1}"),
        Fault::Cut(1000),
        usize::MAX,
    ));
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let bound = Duration::from_secs(30);

    let r = format!("{}/hostile/cut:v1", p.addr);
    let msg = pull_fails(&d, &r, None, Code::Unavailable, bound).await;
    assert!(msg.contains("body ended at"), "{msg}");
    let cut = p.blob_requests(&l1).len();
    println!("hostile cut: {cut} requests for the cut blob");
    assert!(cut <= 2 * 6, "{cut} requests for a blob cut short");
    assert_no_record(&d, &env.containerd, &r).await;

    let r = format!("{}/hostile/long:v1", p.addr);
    let msg = pull_fails(&d, &r, None, Code::DataLoss, bound).await;
    assert!(msg.contains("more than the"), "{msg}");
    assert!(
        !env.containerd.has_content(&l1),
        "the long blob was committed"
    );
    assert_no_record(&d, &env.containerd, &r).await;

    let r = format!("{}/hostile/short:v1", p.addr);
    let msg = pull_fails(&d, &r, None, Code::DataLoss, bound).await;
    assert!(msg.contains("shorter"), "{msg}");
    assert!(
        !env.containerd.has_content(&l1),
        "the short blob was committed"
    );
    assert_no_record(&d, &env.containerd, &r).await;

    still_serves(&d, &env, &img, "hostile/good").await;
    assert_rss_bounded(&d, "long/short blobs");
}

/// A manifest of `n` layer descriptors, all `layer`, with `config`.
fn manifest_of(n: usize, config: &serde_json::Value, layer: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci("manifest"),
        "config": config,
        "layers": vec![layer; n],
    }))
    .unwrap()
}

/// An index of `n` entries without platform (each would be read to learn it).
fn index_of(n: usize) -> Vec<u8> {
    let entries: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "mediaType": oci("manifest"),
                "digest": sha256_digest(format!("entry {i}").as_bytes()),
                "size": 500,
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci("index"),
        "manifests": entries,
    }))
    .unwrap()
}

/// The four documents the crowded test serves: (tag, body, media type,
/// streamed without Content-Length). The config matches 20,000 layers, so
/// nothing but the count is wrong with the compact manifest; it is pushed.
async fn crowded_documents(
    env: &TestEnv,
    img: &BuiltImage,
) -> Vec<(&'static str, Vec<u8>, String, bool)> {
    let (layer_digest, layer_bytes, layer_type) = img.blobs[0].clone();
    let layer = serde_json::json!({
        "mediaType": layer_type, "digest": layer_digest, "size": layer_bytes.len(),
    });
    let mut config = img.config_json();
    config["rootfs"]["diff_ids"] = serde_json::json!(vec![&img.diff_ids[0]; 20_000]);
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = sha256_digest(&config_bytes);
    env.pusher()
        .push_blob("hostile/crowded", &config_digest, &config_bytes)
        .await
        .unwrap();
    let config = serde_json::json!({
        "mediaType": oci("config"), "digest": config_digest, "size": config_bytes.len(),
    });
    vec![
        (
            "m100k",
            manifest_of(100_000, &config, &layer),
            oci("manifest"),
            false,
        ),
        (
            "m20k",
            manifest_of(20_000, &config, &layer),
            oci("manifest"),
            false,
        ),
        // Streamed without Content-Length: refused as it passes 4 MiB.
        ("i100k", index_of(100_000), oci("index"), true),
        ("i20k", index_of(20_000), oci("index"), false),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_and_crowded_documents_are_refused_in_bounded_memory() {
    let env = TestEnv::start();
    let p = proxy(&env, env.registry_addr());
    let img = random_image(42, 1, 16 << 10);
    env.push("hostile/crowded", Some("v1"), &img).await;
    let cases = crowded_documents(&env, &img).await;
    for (tag, body, ct, streamed) in &cases {
        println!("hostile {tag}: {} bytes", body.len());
        let fault = if *streamed {
            Fault::Endless {
                rate: 40 << 20,
                prefix: Arc::new(body.clone()),
                content_type: ct.clone(),
            }
        } else {
            replace(body.clone(), ct)
        };
        p.add(Rule::new(
            &format!("/hostile/crowded/manifests/{tag}"),
            fault,
            usize::MAX,
        ));
    }
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    for (tag, _, _, _) in &cases {
        let r = format!("{}/hostile/crowded:{tag}", p.addr);
        let msg = pull_fails(
            &d,
            &r,
            None,
            Code::FailedPrecondition,
            Duration::from_secs(20),
        )
        .await;
        let limit = match *tag {
            "m20k" => "20000 layers, more than the 1000 allowed",
            "i20k" => "20000 entries, more than the 1000 allowed",
            _ => "4194304 byte limit",
        };
        assert!(msg.contains(limit), "{tag}: {msg}");
        assert_no_record(&d, &env.containerd, &r).await;
        assert_rss_bounded(&d, tag);
    }
    // Only the crowded index's own GET reached the registry: no entry was read.
    let entry_reads = p
        .log()
        .iter()
        .filter(|e| e.path.contains("/manifests/sha256:"))
        .count();
    assert_eq!(entry_reads, 0, "index entries were fetched");
    still_serves(&d, &env, &img, "hostile/good").await;
}

/// A 401 on `repo`'s manifests with this `WWW-Authenticate`.
fn challenge_rule(repo: &str, www_authenticate: &str) -> Rule {
    Rule::new(
        &format!("/{repo}/manifests/"),
        respond(
            401,
            &[
                ("WWW-Authenticate", www_authenticate),
                ("Content-Type", "application/json"),
            ],
            br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.to_vec(),
        ),
        usize::MAX,
    )
}

/// `WWW-Authenticate: Basic realm="hostile", p0="<pad>0", …` with `n` parameters.
fn many_params(n: usize, pad: usize) -> String {
    let pad = "v".repeat(pad);
    let params: Vec<String> = (0..n).map(|i| format!("p{i}=\"{pad}{i}\"")).collect();
    format!("Basic realm=\"hostile\", {}", params.join(", "))
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_challenges_and_tokens_end_cleanly_in_bounded_memory() {
    let env = TestEnv::start();
    let img = random_image(43, 1, 16 << 10);
    // One proxy per case: a challenge is cached per registry host.
    let (hdr, big_hdr, tok) = (
        proxy(&env, env.registry_addr()),
        proxy(&env, env.registry_addr()),
        proxy(&env, env.registry_addr()),
    );
    // 10,000 parameters (~150 KB): parsed, the first 32 kept; no credentials apply.
    hdr.add(challenge_rule("hostile/params", &many_params(10_000, 4)));
    // 10,000 parameters of 100 bytes (~1.1 MB): over the HTTP client's head limit.
    big_hdr.add(challenge_rule("hostile/params", &many_params(10_000, 100)));
    // A bearer challenge whose token server answers a 10 MB token.
    let realm = format!(
        "Bearer realm=\"http://{}/token/big\",service=hostile",
        tok.addr
    );
    tok.add(challenge_rule("hostile/token", &realm));
    let mut big = br#"{"token":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 10 << 20));
    big.extend_from_slice(br#""}"#);
    tok.add(Rule::new(
        "/token/big",
        respond(200, &[("Content-Type", "application/json")], big),
        usize::MAX,
    ));
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let bound = Duration::from_secs(30);

    let r = format!("{}/hostile/params:v1", hdr.addr);
    let msg = pull_fails(&d, &r, None, Code::Unauthenticated, bound).await;
    assert!(msg.contains("requires authentication"), "{msg}");
    assert_no_record(&d, &env.containerd, &r).await;
    assert_rss_bounded(&d, "10,000 challenge parameters");

    let r = format!("{}/hostile/params:v1", big_hdr.addr);
    let msg = pull_fails(&d, &r, None, Code::Unavailable, bound).await;
    assert!(msg.starts_with("RegistryUnavailable"), "{msg}");
    assert_no_record(&d, &env.containerd, &r).await;
    assert_rss_bounded(&d, "1 MB challenge header");

    let r = format!("{}/hostile/token:v1", tok.addr);
    let msg = pull_fails(&d, &r, None, Code::FailedPrecondition, bound).await;
    assert!(msg.contains("token") && msg.contains("1024 KiB"), "{msg}");
    assert_no_record(&d, &env.containerd, &r).await;
    assert_rss_bounded(&d, "10 MB token");

    still_serves(&d, &env, &img, "hostile/good").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_trickles_end_within_their_bounds() {
    let env = TestEnv::start();
    let img = random_image(44, 1, 2 << 10);
    env.push("hostile/slowman", Some("v1"), &img).await;
    env.push("hostile/slowblob", Some("v1"), &img).await;
    env.push("hostile/slowcfg", Some("v1"), &img).await;
    env.push("hostile/longcfg", Some("v1"), &img).await;
    let (p, tok) = (
        single_host_proxy(&env, env.registry_addr()),
        single_host_proxy(&env, env.registry_addr()),
    );
    let endless = |rate: usize, prefix: &[u8], ct: &str| Fault::Endless {
        rate,
        prefix: Arc::new(prefix.to_vec()),
        content_type: ct.into(),
    };
    // The manifest, then spaces forever, at 100 bytes/s.
    p.add(Rule::new(
        "/hostile/slowman/manifests/",
        endless(100, &img.manifest_bytes, &img.manifest_media_type),
        usize::MAX,
    ));
    // The layer, then bytes forever, at 10 KiB/s.
    let (l0, blob, _) = img.blobs[0].clone();
    p.add(Rule::new(
        &format!("/hostile/slowblob/blobs/{l0}"),
        endless(10 << 10, &blob, "application/octet-stream"),
        usize::MAX,
    ));
    // The config: at 5 bytes/s (never whole in time), or past its size at 10 KiB/s.
    let cfg = img.config_digest.clone();
    p.add(Rule::new(
        &format!("/hostile/slowcfg/blobs/{cfg}"),
        endless(5, b"{", "application/octet-stream"),
        usize::MAX,
    ));
    p.add(Rule::new(
        &format!("/hostile/longcfg/blobs/{cfg}"),
        endless(10 << 10, &img.config_bytes, "application/octet-stream"),
        usize::MAX,
    ));
    // A token that never ends.
    let realm = format!(
        "Bearer realm=\"http://{}/token/slow\",service=hostile",
        tok.addr
    );
    tok.add(challenge_rule("hostile/slowtok", &realm));
    tok.add(Rule::new(
        "/token/slow",
        endless(100, br#"{"token":"abc""#, "application/json"),
        usize::MAX,
    ));
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let bound = Duration::from_secs(45);
    let (man, blob_r, token) = (
        format!("{}/hostile/slowman:v1", p.addr),
        format!("{}/hostile/slowblob:v1", p.addr),
        format!("{}/hostile/slowtok:v1", tok.addr),
    );
    let (slow_cfg, long_cfg) = (
        format!("{}/hostile/slowcfg:v1", p.addr),
        format!("{}/hostile/longcfg:v1", p.addr),
    );
    let t = Instant::now();
    let (m, b, k, sc, lc) = tokio::join!(
        pull_fails(&d, &man, None, Code::Unavailable, bound),
        pull_fails(&d, &blob_r, None, Code::DataLoss, bound),
        pull_fails(&d, &token, None, Code::Unavailable, bound),
        pull_fails(&d, &slow_cfg, None, Code::Unavailable, bound),
        pull_fails(&d, &long_cfg, None, Code::DataLoss, bound),
    );
    assert!(sc.contains("did not arrive whole within 30s"), "{sc}");
    assert!(lc.contains("more than the"), "{lc}");
    println!(
        "hostile endless trickles: all five ended after {:.1?}",
        t.elapsed()
    );
    assert!(m.contains("did not arrive whole within 30s"), "{m}");
    assert!(b.contains("more than the"), "{b}");
    assert!(k.contains("did not arrive whole within 30s"), "{k}");
    for r in [&man, &blob_r, &token, &slow_cfg, &long_cfg] {
        assert_no_record(&d, &env.containerd, r).await;
    }
    assert!(
        !env.containerd.has_content(&l0),
        "the endless blob was committed"
    );
    still_serves(&d, &env, &img, "hostile/good").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_to_another_host_carries_no_credentials() {
    let env = TestEnv::start_with(ContainerdOpts::default(), Some((USER, PASS)));
    let img = random_image(45, 2, 32 << 10);
    env.push("hostile/redir", Some("v1"), &img).await;
    // Another host serving the same blobs without auth (a CDN).
    let cdn_registry = Registry::start();
    cdn_registry
        .pusher()
        .push_image("hostile/redir", Some("v1"), &img)
        .await
        .unwrap();
    let home = proxy(&env, env.registry_addr());
    let cdn = FaultProxy::start(&cdn_registry.addr);
    home.add(Rule::new(
        "/hostile/redir/blobs/",
        Fault::RedirectTo(format!("http://{}", cdn.addr)),
        usize::MAX,
    ));
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;

    let mut c = d.client().await;
    let r = format!("{}/hostile/redir:v1", home.addr);
    let id = tokio::time::timeout(Duration::from_secs(30), pull_auth(&mut c, &r, auth()))
        .await
        .expect("a redirected pull hung")
        .expect("a pull redirected to a CDN");
    assert_eq!(id, img.config_digest);
    let blob_reqs = |p: &FaultProxy| {
        p.log()
            .into_iter()
            .filter(|e| e.path.contains("/blobs/"))
            .collect::<Vec<_>>()
    };
    assert!(
        blob_reqs(&home).iter().any(|e| e.authorization.is_some()),
        "credentials never went to the home registry's blobs: {:?}",
        home.log()
    );
    assert!(!blob_reqs(&cdn).is_empty(), "nothing was redirected");
    assert!(
        cdn.log().iter().all(|e| e.authorization.is_none()),
        "credentials followed a redirect to another host: {:?}",
        cdn.log()
    );
    println!(
        "hostile redirect: {} blob requests redirected, none with credentials",
        blob_reqs(&cdn).len()
    );
    assert_rss_bounded(&d, "redirect to a CDN");
}

fn auth() -> cri::AuthConfig {
    cri::AuthConfig {
        username: USER.into(),
        password: PASS.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_ping_pong_between_hosts_ends() {
    let env = TestEnv::start_with(ContainerdOpts::default(), Some((USER, PASS)));
    env.push(
        "hostile/pingpong",
        Some("v1"),
        &random_image(47, 1, 4 << 10),
    )
    .await;
    // The manifest comes with credentials, then two hosts bounce the blobs.
    let (ping, pong) = (
        proxy(&env, env.registry_addr()),
        FaultProxy::start(env.registry_addr()),
    );
    ping.add(Rule::new(
        "/hostile/pingpong/blobs/",
        Fault::RedirectTo(format!("http://{}", pong.addr)),
        usize::MAX,
    ));
    pong.add(Rule::new(
        "/hostile/pingpong/blobs/",
        Fault::RedirectTo(format!("http://{}", ping.addr)),
        usize::MAX,
    ));
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let r = format!("{}/hostile/pingpong:v1", ping.addr);
    let msg = pull_fails(
        &d,
        &r,
        Some(auth()),
        Code::Unavailable,
        Duration::from_secs(30),
    )
    .await;
    assert!(msg.contains("too many redirects"), "{msg}");
    assert!(
        pong.log().iter().all(|e| e.authorization.is_none()),
        "credentials followed a redirect: {:?}",
        pong.log()
    );
    // Back on the first host after a detour, still without credentials.
    let blobs: Vec<LogEntry> = ping
        .log()
        .into_iter()
        .filter(|e| e.path.contains("/blobs/"))
        .collect();
    let with = blobs.iter().filter(|e| e.authorization.is_some()).count();
    println!(
        "hostile ping-pong: {} blob requests on the first host, {with} with credentials; {} on the second, none",
        blobs.len(),
        pong.log().len()
    );
    assert!(with > 0 && with * 2 < blobs.len(), "{blobs:?}");
    assert_no_record(&d, &env.containerd, &r).await;
    assert_rss_bounded(&d, "redirect ping-pong");
}
