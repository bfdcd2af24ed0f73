//! PullImage end to end against a real containerd and docker-registry:
//! reference forms, media types and compressions, multi-arch, the containerd
//! records and GC labels, registry auth, hosts.toml mirrors, single-flight,
//! the stall watchdog, caller deadlines, crash/resume and warm pulls.

use cri_imaged_test_rig::*;

use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use tonic::transport::Channel;
use tonic::Code;

// ---------------------------------------------------------------- helpers

/// `ctr -n k8s.io images ls` rows: (name, labels column).
fn ctr_images(c: &Containerd) -> Vec<(String, String)> {
    c.ctr_ok(&["images", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.is_empty() {
                return None;
            }
            let labels = if cols.len() >= 7 {
                cols[cols.len() - 1].to_string()
            } else {
                String::new()
            };
            Some((cols[0].to_string(), labels))
        })
        .collect()
}

/// Labels of one blob from `ctr -n k8s.io content ls` (last column, `k=v,k=v`).
fn content_labels(c: &Containerd, digest: &str) -> Vec<String> {
    let out = c.ctr_ok(&["content", "ls"]);
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(digest))
        .unwrap_or_else(|| panic!("{digest} not in the content store:\n{out}"));
    let last = line.split_whitespace().last().unwrap_or("");
    if last.contains('=') {
        last.split(',').map(str::to_string).collect()
    } else {
        vec![]
    }
}

fn assert_label(c: &Containerd, digest: &str, kv: &str) {
    let l = content_labels(c, digest);
    assert!(
        l.iter().any(|x| x == kv),
        "blob {digest}: label {kv} missing; has {l:?}"
    );
}

/// What one pull should have produced.
struct Expect<'a> {
    /// The reference to ask ImageStatus with.
    reference: String,
    id: String,
    repo_tags: Vec<String>,
    repo_digests: Vec<String>,
    /// The image for the node's platform.
    image: &'a BuiltImage,
    /// Index bytes when pulled through an index.
    index: Option<&'a BuiltIndex>,
}

/// Check CRI fields, containerd's own CRI view, ctr records/labels, GC labels
/// and `ctr images check`.
async fn check_pulled(env: &TestEnv, c: &mut ImageServiceClient<Channel>, e: &Expect<'_>) {
    let st = status(c, &e.reference)
        .await
        .unwrap_or_else(|| panic!("ImageStatus({}) empty", e.reference));
    assert_eq!(st.id, e.id, "id = config digest");
    assert_eq!(st.id, e.image.config_digest);
    assert_eq!(st.repo_tags, e.repo_tags, "repo_tags of {}", e.reference);
    assert_eq!(
        st.repo_digests, e.repo_digests,
        "repo_digests of {}",
        e.reference
    );
    assert_eq!(
        st.spec.as_ref().map(|s| s.image.as_str()),
        Some(e.id.as_str())
    );
    let expected_size = e.image.total_size()
        + e.image.manifest_bytes.len() as u64
        + e.index.map(|i| i.bytes.len() as u64).unwrap_or(0);
    assert_eq!(
        st.size, expected_size,
        "size = index + manifest + config + layers"
    );

    // ListImages has exactly one entry for this ID, equal to ImageStatus.
    let all = list(c).await;
    let mine: Vec<_> = all.iter().filter(|i| i.id == e.id).collect();
    assert_eq!(mine.len(), 1, "{all:?}");
    assert_eq!(mine[0], &st);

    // containerd's CRI: same id and size (it picks the image up by event).
    let mut theirs = cri_client(&env.containerd.socket).await;
    let mut t = None;
    for _ in 0..100 {
        t = status(&mut theirs, &e.id).await;
        if t.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = t.expect("containerd's CRI knows the image");
    assert_eq!(t.id, e.id);
    assert_eq!(t.size, st.size, "size as containerd's CRI reports it");

    // Records: name:tag (if tagged), name@digest, sha256:<id>, all managed.
    let mut records: Vec<String> = e.repo_tags.clone();
    records.extend(e.repo_digests.iter().cloned());
    records.push(e.id.clone());
    let imgs = ctr_images(&env.containerd);
    for r in &records {
        let row = imgs
            .iter()
            .find(|(n, _)| n == r)
            .unwrap_or_else(|| panic!("no record {r}: {imgs:?}"));
        assert!(
            row.1
                .split(',')
                .any(|kv| kv == "io.cri-containerd.image=managed"),
            "record {r} lacks the managed label: {row:?}"
        );
    }
    let checks = env.containerd.images_check();
    for r in &records {
        let row = checks
            .iter()
            .find(|(n, _, _)| n == r)
            .unwrap_or_else(|| panic!("{r} not in check: {checks:?}"));
        assert!(row.1.starts_with("complete"), "{row:?}");
        assert!(row.2, "not unpacked: {row:?}");
    }

    // GC references.
    let cd = &env.containerd;
    let m = &e.image.manifest_digest;
    assert_label(
        cd,
        m,
        &format!(
            "containerd.io/gc.ref.content.config={}",
            e.image.config_digest
        ),
    );
    for (i, l) in e.image.layer_digests().iter().enumerate() {
        assert_label(cd, m, &format!("containerd.io/gc.ref.content.l.{i}={l}"));
        assert_label(
            cd,
            l,
            &format!("containerd.io/uncompressed={}", e.image.diff_ids[i]),
        );
    }
    assert_label(
        cd,
        &e.image.config_digest,
        &format!(
            "containerd.io/gc.ref.snapshot.overlayfs={}",
            e.image.chain_id()
        ),
    );
    if let Some(idx) = e.index {
        let i = idx
            .manifests
            .iter()
            .position(|x| x.manifest_digest == *m)
            .unwrap();
        assert_label(
            cd,
            &idx.digest,
            &format!("containerd.io/gc.ref.content.m.{i}={m}"),
        );
    }
    // The top snapshot exists.
    assert!(cd.snapshot_keys().contains(&e.image.chain_id()));
    // No lease left behind by a successful pull.
    assert_eq!(
        cd.leases_settled(),
        Vec::<String>::new(),
        "leases left after pull"
    );
}

/// A CRI client on a bare hyper h2 connection: unlike tonic's Channel it does
/// not enforce `grpc-timeout` itself, so deadline errors come from the server.
async fn raw_h2_client(
    socket: &std::path::Path,
) -> ImageServiceClient<
    impl tonic::client::GrpcService<
            tonic::body::Body,
            ResponseBody = hyper::body::Incoming,
            Error = hyper::Error,
            Future = impl Send,
        > + Clone,
> {
    let io = hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(socket).await.unwrap());
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let svc = tower::service_fn(move |mut req: hyper::Request<tonic::body::Body>| {
        let mut s = sender.clone();
        async move {
            // tonic leaves the origin relative; h2 needs scheme + authority.
            let uri = format!(
                "http://localhost{}",
                req.uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
            );
            *req.uri_mut() = uri.parse().unwrap();
            s.send_request(req).await
        }
    });
    ImageServiceClient::new(svc)
}

fn small(seed: u64) -> BuiltImage {
    ImageBuilder::new()
        .layer(base_layer(), Compression::Gzip)
        .layer(Layer::random(16 * 1024, seed), Compression::Gzip)
        .build()
}

fn all_blob_gets(r: &Registry) -> usize {
    r.access_log()
        .iter()
        .filter(|(m, p, _)| m == "GET" && p.contains("/blobs/"))
        .count()
}

fn records_matching(c: &Containerd, needle: &str) -> Vec<String> {
    c.image_names()
        .into_iter()
        .filter(|n| n.contains(needle))
        .collect()
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread")]
async fn pull_reference_forms_and_warm_pull() {
    let env = TestEnv::start();
    let by_tag = small(11);
    let latest = small(12);
    let by_digest = small(13);
    let tag_digest = small(14);
    env.push("forms/tag", Some("v1"), &by_tag).await;
    env.push("forms/latest", Some("latest"), &latest).await;
    env.push("forms/digest", None, &by_digest).await;
    env.push("forms/tagdigest", Some("v2"), &tag_digest).await;
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let a = env.registry_addr().to_string();

    // by tag
    let r = env.image_ref("forms/tag", "v1");
    assert_eq!(
        pull(&mut c, &r).await.expect("pull by tag"),
        by_tag.config_digest
    );
    check_pulled(
        &env,
        &mut c,
        &Expect {
            reference: r.clone(),
            id: by_tag.config_digest.clone(),
            repo_tags: vec![r.clone()],
            repo_digests: vec![env.digest_ref("forms/tag", &by_tag.manifest_digest)],
            image: &by_tag,
            index: None,
        },
    )
    .await;

    // without a tag -> :latest
    let r = format!("{a}/forms/latest");
    assert_eq!(
        pull(&mut c, &r).await.expect("pull without tag"),
        latest.config_digest
    );
    check_pulled(
        &env,
        &mut c,
        &Expect {
            reference: r.clone(),
            id: latest.config_digest.clone(),
            repo_tags: vec![format!("{r}:latest")],
            repo_digests: vec![env.digest_ref("forms/latest", &latest.manifest_digest)],
            image: &latest,
            index: None,
        },
    )
    .await;

    // by digest: no tag
    let r = env.digest_ref("forms/digest", &by_digest.manifest_digest);
    assert_eq!(
        pull(&mut c, &r).await.expect("pull by digest"),
        by_digest.config_digest
    );
    check_pulled(
        &env,
        &mut c,
        &Expect {
            reference: r.clone(),
            id: by_digest.config_digest.clone(),
            repo_tags: vec![],
            repo_digests: vec![r.clone()],
            image: &by_digest,
            index: None,
        },
    )
    .await;

    // name:tag@digest resolves by the digest (like containerd: the tag is dropped)
    let r = format!("{a}/forms/tagdigest:v2@{}", tag_digest.manifest_digest);
    assert_eq!(
        pull(&mut c, &r).await.expect("pull by tag@digest"),
        tag_digest.config_digest
    );
    let dr = env.digest_ref("forms/tagdigest", &tag_digest.manifest_digest);
    check_pulled(
        &env,
        &mut c,
        &Expect {
            reference: dr.clone(),
            id: tag_digest.config_digest.clone(),
            repo_tags: vec![],
            repo_digests: vec![dr.clone()],
            image: &tag_digest,
            index: None,
        },
    )
    .await;

    // Warm pulls: quick, and no blob is fetched again.
    let before = all_blob_gets(&env.registry);
    for r in [
        env.image_ref("forms/tag", "v1"),
        env.digest_ref("forms/digest", &by_digest.manifest_digest),
    ] {
        let t = Instant::now();
        let id = pull(&mut c, &r).await.expect("warm pull");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "warm pull of {r} took {:?}",
            t.elapsed()
        );
        assert!(id == by_tag.config_digest || id == by_digest.config_digest);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        all_blob_gets(&env.registry),
        before,
        "warm pulls fetched blobs"
    );
    // And the warm pull by digest needed no manifest GET either.
    assert_eq!(
        env.registry
            .manifest_get_count(Some(&by_digest.manifest_digest)),
        1
    );
    assert_eq!(env.containerd.leases_settled(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_media_types_compressions_and_multi_arch() {
    let env = TestEnv::start();
    // Every layer is unique to its image: a layer whose snapshot already exists
    // is not applied again and (as in containerd) gets no uncompressed label.
    let v = |m: MediaFamily, name: &str, seed: u64, cs: &[Compression]| -> BuiltImage {
        let mut b = ImageBuilder::new().media(m);
        for (i, c) in cs.iter().enumerate() {
            let l = if i == 0 {
                Layer::from_files(&[
                    ("etc/variant", name.as_bytes()),
                    ("etc/passwd", b"root:x:0:0::/:/bin/sh\n"),
                ])
            } else {
                Layer::random(20_000, seed * 10 + i as u64)
            };
            b = b.layer(l, *c);
        }
        b.build()
    };
    use Compression::{Gzip, None as Raw, Zstd};
    let variants: Vec<(&str, BuiltImage)> = vec![
        (
            "oci-gzip",
            v(MediaFamily::Oci, "oci-gzip", 2, &[Gzip, Gzip]),
        ),
        (
            "oci-zstd",
            v(MediaFamily::Oci, "oci-zstd", 3, &[Zstd, Zstd]),
        ),
        ("oci-none", v(MediaFamily::Oci, "oci-none", 4, &[Raw, Raw])),
        (
            "oci-mixed",
            v(MediaFamily::Oci, "oci-mixed", 5, &[Raw, Zstd, Gzip]),
        ),
        (
            "docker-gzip",
            v(MediaFamily::Docker, "docker-gzip", 6, &[Gzip, Gzip]),
        ),
        (
            "docker-none",
            v(MediaFamily::Docker, "docker-none", 7, &[Raw, Raw]),
        ),
    ];
    for (repo, img) in &variants {
        env.push(&format!("media/{repo}"), Some("v1"), img).await;
    }
    let imgs = standard_images();
    env.push_index("media/multi-oci", Some("v1"), &imgs.multi_arch)
        .await;
    // A Docker manifest list with amd64 + arm64.
    let amd = ImageBuilder::new()
        .media(MediaFamily::Docker)
        .platform("linux", "amd64", None)
        .layer(Layer::random(8000, 31), Compression::Gzip)
        .build();
    let arm = ImageBuilder::new()
        .media(MediaFamily::Docker)
        .platform("linux", "arm64", None)
        .layer(Layer::random(8000, 32), Compression::Gzip)
        .build();
    let list_idx = IndexBuilder::new(MediaFamily::Docker)
        .manifest(&arm)
        .manifest(&amd)
        .build();
    env.push_index("media/multi-docker", Some("v1"), &list_idx)
        .await;

    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;

    for (repo, img) in &variants {
        let r = env.image_ref(&format!("media/{repo}"), "v1");
        let id = pull(&mut c, &r)
            .await
            .unwrap_or_else(|e| panic!("pull {repo}: {e:?}"));
        assert_eq!(id, img.config_digest, "{repo}");
        check_pulled(
            &env,
            &mut c,
            &Expect {
                reference: r.clone(),
                id,
                repo_tags: vec![r.clone()],
                repo_digests: vec![env.digest_ref(&format!("media/{repo}"), &img.manifest_digest)],
                image: img,
                index: None,
            },
        )
        .await;
    }

    // Multi-arch: the node's platform (this machine is linux/amd64).
    assert_eq!(
        std::env::consts::ARCH,
        "x86_64",
        "test assumes an amd64 node"
    );
    for (repo, idx) in [
        ("media/multi-oci", &imgs.multi_arch),
        ("media/multi-docker", &list_idx),
    ] {
        let want = idx.for_platform("linux/amd64").unwrap();
        let r = env.image_ref(repo, "v1");
        let id = pull(&mut c, &r)
            .await
            .unwrap_or_else(|e| panic!("pull {repo}: {e:?}"));
        assert_eq!(id, want.config_digest, "{repo}: amd64 child chosen");
        check_pulled(
            &env,
            &mut c,
            &Expect {
                reference: r.clone(),
                id,
                repo_tags: vec![r.clone()],
                repo_digests: vec![env.digest_ref(repo, &idx.digest)],
                image: want,
                index: Some(idx),
            },
        )
        .await;
        // Other platforms' blobs were not fetched.
        for other in idx
            .manifests
            .iter()
            .filter(|m| m.manifest_digest != want.manifest_digest)
        {
            assert_eq!(
                env.registry.blob_get_count(&other.config_digest),
                0,
                "{repo}: fetched another platform's config"
            );
            for l in other.layer_digests() {
                if !want.layer_digests().contains(&l) {
                    assert_eq!(
                        env.registry.blob_get_count(&l),
                        0,
                        "{repo}: fetched another platform's layer"
                    );
                }
            }
        }
    }
}

const PASSWORD: &str = "Pw-9f3b2c71-do-not-log";

fn basic(u: &str, p: &str, server: &str) -> cri::AuthConfig {
    cri::AuthConfig {
        username: u.into(),
        password: p.into(),
        server_address: server.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_with_basic_auth() {
    use base64::Engine as _;
    let env = TestEnv::start_with(ContainerdOpts::default(), Some(("user", PASSWORD)));
    let i1 = small(41);
    let i2 = small(42);
    let i3 = small(43);
    env.push("auth/a", Some("v1"), &i1).await;
    env.push("auth/b", Some("v1"), &i2).await;
    env.push("auth/c", Some("v1"), &i3).await;
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let addr = env.registry_addr().to_string();

    // anonymous -> UNAUTHENTICATED
    let e = pull(&mut c, &env.image_ref("auth/a", "v1"))
        .await
        .expect_err("anonymous pull must fail");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // wrong password -> UNAUTHENTICATED
    let e = pull_auth(
        &mut c,
        &env.image_ref("auth/a", "v1"),
        basic("user", "wrong-password", ""),
    )
    .await
    .expect_err("wrong password must fail");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // credentials for another server are not sent -> anonymous -> UNAUTHENTICATED
    let e = pull_auth(
        &mut c,
        &env.image_ref("auth/a", "v1"),
        basic("user", PASSWORD, "other.example.com"),
    )
    .await
    .expect_err("credentials for another server must not be used");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(records_matching(&env.containerd, "auth/").is_empty());

    // username + password
    let id = pull_auth(
        &mut c,
        &env.image_ref("auth/a", "v1"),
        basic("user", PASSWORD, ""),
    )
    .await
    .expect("user+pass");
    assert_eq!(id, i1.config_digest);
    // username + password with a matching server_address
    let id = pull_auth(
        &mut c,
        &env.image_ref("auth/c", "v1"),
        basic("user", PASSWORD, &addr),
    )
    .await
    .expect("user+pass+server");
    assert_eq!(id, i3.config_digest);
    // base64 auth
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("user:{PASSWORD}"));
    let id = pull_auth(
        &mut c,
        &env.image_ref("auth/b", "v1"),
        cri::AuthConfig {
            auth: b64.clone(),
            ..Default::default()
        },
    )
    .await
    .expect("base64 auth");
    assert_eq!(id, i2.config_digest);
    check_pulled(
        &env,
        &mut c,
        &Expect {
            reference: env.image_ref("auth/b", "v1"),
            id,
            repo_tags: vec![env.image_ref("auth/b", "v1")],
            repo_digests: vec![env.digest_ref("auth/b", &i2.manifest_digest)],
            image: &i2,
            index: None,
        },
    )
    .await;

    // The secret is nowhere in logs or metrics.
    let (code, metrics) = d.http_get("/metrics").await;
    assert_eq!(code, 200);
    assert!(!metrics.contains(PASSWORD), "password in /metrics");
    assert!(!metrics.contains(&b64), "base64 auth in /metrics");
    let log = d.log_text();
    assert!(!log.is_empty());
    for l in log.lines() {
        assert!(!l.contains(PASSWORD), "password in log line: {l}");
        assert!(!l.contains(&b64), "base64 auth in log line: {l}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_toml_mirror_down_and_mapped_host() {
    let env = TestEnv::start();
    let i1 = small(51);
    let i2 = small(52);
    env.push("mirror/a", Some("v1"), &i1).await;
    env.push("team/app", Some("v1"), &i2).await;
    let reg = env.registry_addr().to_string();
    let closed = free_port();
    std::fs::write(
        env.containerd.certs_d.join(&reg).join("hosts.toml"),
        format!(
            "server = \"http://{reg}\"\n\n[host.\"http://127.0.0.1:{closed}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://{reg}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
    env.map_host("gcr.io");
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;

    let r = env.image_ref("mirror/a", "v1");
    let t = Instant::now();
    assert_eq!(
        pull(&mut c, &r).await.expect("pull past a dead mirror"),
        i1.config_digest
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "dead mirror cost {:?}",
        t.elapsed()
    );
    assert!(status(&mut c, &r).await.is_some());
    // The dead mirror's failures moved the pull on to the upstream: counted.
    let mut fell_through = 0.0;
    for _ in 0..60 {
        fell_through = d
            .metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix("cri_imaged_registry_host_fallthroughs_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if fell_through >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(fell_through >= 1.0, "mirror fall-through not counted");

    let r = "gcr.io/team/app:v1";
    let id = pull(&mut c, r).await.expect("pull gcr.io via hosts.toml");
    assert_eq!(id, i2.config_digest);
    check_pulled(
        &env,
        &mut c,
        &Expect {
            reference: r.to_string(),
            id,
            repo_tags: vec![r.to_string()],
            repo_digests: vec![format!("gcr.io/team/app@{}", i2.manifest_digest)],
            image: &i2,
            index: None,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_share_one_download() {
    let env = TestEnv::start();
    let img = ImageBuilder::new()
        .layer(base_layer(), Compression::Gzip)
        .layer(Layer::random(2 << 20, 61), Compression::None)
        .layer(Layer::random(2 << 20, 62), Compression::None)
        .layer(Layer::random(1 << 20, 63), Compression::None)
        .build();
    env.push("conc/img", Some("v1"), &img).await;
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let c = d.client().await;
    let r = env.image_ref("conc/img", "v1");

    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut c = c.clone();
        let r = r.clone();
        tasks.push(tokio::spawn(async move { pull(&mut c, &r).await }));
    }
    for t in tasks {
        assert_eq!(
            t.await.unwrap().expect("concurrent pull"),
            img.config_digest
        );
    }
    for (dg, _, _) in img.all_blobs() {
        assert!(
            wait_for(
                || env.registry.blob_get_count(&dg) >= 1,
                Duration::from_secs(5)
            ),
            "blob {dg} never fetched?"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (dg, _, _) in img.all_blobs() {
        assert_eq!(
            env.registry.blob_get_count(&dg),
            1,
            "blob {dg} fetched more than once"
        );
    }
    let mut c = c.clone();
    let imgs = list(&mut c).await;
    assert_eq!(imgs.len(), 1, "{imgs:?}");
    assert_eq!(imgs[0].repo_tags, vec![r.clone()]);
    assert!(env
        .containerd
        .images_check()
        .iter()
        .any(|(n, s, u)| n == &r && s.starts_with("complete") && *u));
    assert_eq!(env.containerd.leases_settled(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_registry_fails_the_pull() {
    let env = TestEnv::start();
    let img = ImageBuilder::new()
        .layer(base_layer(), Compression::Gzip)
        .layer(Layer::random(4 << 20, 71), Compression::None)
        .build();
    env.push("stall/img", Some("v1"), &img).await;
    let stalled = img.layer_digests()[1].clone();
    let proxy = FaultProxy::stalling(env.registry_addr(), &stalled, 256 * 1024);
    write_hosts_toml(&env.containerd.certs_d, &proxy.addr, &proxy.addr);
    let d = cri_imaged!()
        .config(|c| c.pull_progress_timeout = Duration::from_secs(2))
        .start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;

    let r = format!("{}/stall/img:v1", proxy.addr);
    let t = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(30), pull(&mut c, &r))
        .await
        .expect("a stalled pull must not hang")
        .expect_err("a stalled pull must fail");
    let took = t.elapsed();
    assert_eq!(proxy.stalls(), 1);
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "failed after {took:?}"
    );
    assert!(e.message().contains("stalled"), "{e:?}");
    assert!(
        e.message().starts_with("RegistryUnavailable"),
        "kubelet reason: {e:?}"
    );

    assert!(
        records_matching(&env.containerd, "stall/img").is_empty(),
        "{:?}",
        env.containerd.image_names()
    );
    assert!(list(&mut c).await.is_empty());
    assert!(status(&mut c, &r).await.is_none());
    let (_, m) = d.http_get("/metrics").await;
    assert!(
        m.lines()
            .any(|l| l.contains("reason=\"stalled\"") && !l.starts_with('#') && !l.ends_with(" 0")),
        "no stalled failure in metrics:\n{m}"
    );
    // What was written stays usable: once the registry behaves, a retry works.
    proxy.clear_rules();
    let id = pull(&mut c, &r).await.expect("retry after the stall");
    assert_eq!(id, img.config_digest);
    assert_eq!(proxy.stalls(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_millisecond_deadline_is_deadline_exceeded() {
    let env = TestEnv::start();
    let img = ImageBuilder::new()
        .layer(base_layer(), Compression::Gzip)
        .layer(Layer::random(1 << 20, 81), Compression::None)
        .build();
    env.push("deadline/img", Some("v1"), &img).await;
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let r = env.image_ref("deadline/img", "v1");

    // The deadline as a Go client (kubelet, critest) sends it: the
    // grpc-timeout header, answered by the server (tonic's Channel would give
    // up locally first, so use a bare h2 connection).
    let mut raw = raw_h2_client(&d.socket).await;
    let mut req = tonic::Request::new(cri::PullImageRequest {
        image: spec(&r),
        auth: None,
        sandbox_config: None,
    });
    req.set_timeout(Duration::from_millis(1));
    let e = raw.pull_image(req).await.expect_err("1 ms is too short");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("deadline"), "{e:?}");

    // With tonic's own client timeout the client gives up locally (tonic
    // reports its own expiry as Cancelled "Timeout expired"); either way the
    // pull must fail and leave nothing behind.
    let mut req = tonic::Request::new(cri::PullImageRequest {
        image: spec(&r),
        auth: None,
        sandbox_config: None,
    });
    req.set_timeout(Duration::from_millis(1));
    let e = c.pull_image(req).await.expect_err("1 ms is too short");
    assert!(
        e.code() == Code::DeadlineExceeded
            || (e.code() == Code::Cancelled && e.message() == "Timeout expired"),
        "{e:?}"
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        records_matching(&env.containerd, "deadline/img").is_empty(),
        "{:?}",
        env.containerd.image_names()
    );
    assert!(list(&mut c).await.is_empty());
    assert!(status(&mut c, &r).await.is_none());
    // And a normal pull afterwards works.
    assert_eq!(pull(&mut c, &r).await.expect("pull"), img.config_digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_mid_pull_then_resume() {
    let env = TestEnv::start();
    let mut b = ImageBuilder::new();
    // Above 32 MiB: downloaded straight into containerd's ingest files,
    // which a retried pull resumes (smaller ones are spooled).
    for i in 0..4 {
        b = b.layer(Layer::random(33 << 20, 90 + i), Compression::None);
    }
    let img = b.build();
    env.push("crash/img", Some("v1"), &img).await;
    let layers = img.layer_digests();
    // Hold the last layer after 3 MiB so the kill lands mid-pull, deterministically.
    let proxy = FaultProxy::stalling(env.registry_addr(), &layers[3], 3 << 20);
    write_hosts_toml(&env.containerd.certs_d, &proxy.addr, &proxy.addr);
    let mut d = cri_imaged!()
        .config(|c| {
            c.pull_progress_timeout = Duration::from_secs(60);
            c.max_concurrent_downloads_per_pull = 3;
        })
        .start(&env.containerd);
    d.wait_synced().await;
    let r = format!("{}/crash/img:v1", proxy.addr);

    let mut c = d.client().await;
    let r2 = r.clone();
    let first = tokio::spawn(async move { pull(&mut c, &r2).await });
    let cd = &env.containerd;
    // Layers 0-2 complete: committed, or (native unpack, which commits blobs
    // once the unpack is done) whole in containerd's ingest file.
    let sizes: std::collections::HashMap<String, u64> = img
        .all_blobs()
        .into_iter()
        .map(|(d, b, _)| (d, b.len() as u64))
        .collect();
    let whole_ingest = |digest: &str| -> bool {
        let ingest = cd.root.join("io.containerd.content.v1.content/ingest");
        std::fs::read_dir(ingest)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path().join("ref")).is_ok_and(|r| r.ends_with(digest))
                    && std::fs::metadata(e.path().join("data"))
                        .is_ok_and(|m| Some(&m.len()) == sizes.get(digest))
            })
    };
    let ok = wait_for(
        || {
            proxy.stalls() >= 1
                && layers[..3]
                    .iter()
                    .all(|l| cd.has_content(l) || whole_ingest(l))
        },
        Duration::from_secs(60),
    );
    assert!(
        ok,
        "layers 0-2 never committed / layer 3 never stalled: {}",
        tail_file(&d.log, 30)
    );
    assert!(!cd.has_content(&layers[3]));
    // Let the partial write of layer 3 reach containerd's ingest (>= 1 MiB).
    let ingested = wait_for(
        || {
            cd.ctr_ok(&["content", "active"]).lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() >= 2 && cols[0].contains(&layers[3][7..]) && cols[1].ends_with("MB")
            })
        },
        Duration::from_secs(20),
    );
    assert!(
        ingested,
        "no partial ingest of layer 3: {}",
        cd.ctr_ok(&["content", "active"])
    );
    d.kill();
    assert!(
        first.await.unwrap().is_err(),
        "the pull died with the daemon"
    );
    assert!(records_matching(cd, "crash/img").is_empty());

    proxy.clear_rules();
    d.start_again();
    d.wait_synced().await;
    let mut c = d.client().await;
    let id = pull(&mut c, &r).await.expect("pull after restart");
    assert_eq!(id, img.config_digest);
    for l in &layers[..3] {
        assert_eq!(
            env.registry.blob_get_count(l),
            1,
            "layer {l} complete before the crash was fetched again"
        );
    }
    // The interrupted layer resumed with a range request.
    let resumed =
        env.registry.access_log().iter().any(|(m, p, s)| {
            m == "GET" && p.ends_with(&format!("/blobs/{}", layers[3])) && *s == 206
        });
    assert!(
        resumed,
        "layer 3 was not resumed with a Range request: {:?}",
        env.registry.access_log()
    );
    let checks = cd.images_check();
    assert!(
        checks
            .iter()
            .any(|(n, s, u)| n == &r && s.starts_with("complete") && *u),
        "{checks:?}"
    );
    let st = status(&mut c, &r).await.expect("status");
    assert_eq!(st.id, img.config_digest);
}
