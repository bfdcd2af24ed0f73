//! Smoke test of the integration-test rig itself (containerd + registry + image builder).

use cri_imaged_test_rig::*;
use std::time::{Duration, Instant};

fn pid_alive(pid: u32) -> bool {
    // A zombie would still have /proc/<pid>; we reap, so absence == gone.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rig_smoke() {
    let t0 = Instant::now();
    let mut env = TestEnv::start();
    let c = &env.containerd;
    eprintln!("containerd+registry up in {:?}", t0.elapsed());

    // Plugins: CRI and overlayfs must load in this sandbox.
    assert!(
        c.plugin_ok("io.containerd.grpc.v1", "cri"),
        "cri plugin not ok:\n{}",
        c.ctr_ok(&["plugins", "ls"])
    );
    assert!(
        c.plugin_ok("io.containerd.snapshotter.v1", "overlayfs"),
        "overlayfs not ok"
    );

    // Determinism.
    let std_imgs = standard_images();
    let again = standard_images();
    assert_eq!(std_imgs.multi_arch.digest, again.multi_arch.digest);
    assert_eq!(
        std_imgs.user_1002.manifest_digest,
        again.user_1002.manifest_digest
    );
    assert_eq!(
        Layer::random(1000, 7).diff_id,
        Layer::random(1000, 7).diff_id
    );
    assert_ne!(
        Layer::random(1000, 7).diff_id,
        Layer::random(1000, 8).diff_id
    );
    // Distinct config per arch.
    let ma = &std_imgs.multi_arch;
    let cfgs: std::collections::HashSet<_> = ma
        .manifests
        .iter()
        .map(|m| m.config_digest.clone())
        .collect();
    assert_eq!(cfgs.len(), 4);
    assert_eq!(ma.manifests.len(), 4); // amd64, arm64, arm/v7, attestation
    assert!(ma.for_platform("linux/arm/v7").is_some());
    assert_eq!(
        std_imgs.user_www_data_1004.config_json()["config"]["User"],
        "www-data:1004"
    );

    // Push: standard set, a Docker-media image with a zstd layer, an OCI image with zstd + uncompressed.
    std_imgs.push_all(&env.pusher()).await;
    let docker = ImageBuilder::new()
        .media(MediaFamily::Docker)
        .user("1002")
        .layer(base_layer(), Compression::Gzip)
        .layer(
            Layer::from_files(&[("docker.txt", b"docker")]),
            Compression::Gzip,
        )
        .layer(Layer::random(100 * 1024, 42), Compression::Zstd)
        .build();
    assert_eq!(
        docker.manifest_media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        docker.blobs[2].2,
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    env.push("smoke/docker", Some("v1"), &docker).await;
    let oci = ImageBuilder::new()
        .media(MediaFamily::Oci)
        .user("www-data")
        .layer(
            Layer::from_files(&[("oci/a.txt", b"a"), ("oci/b/c.txt", b"c")]),
            Compression::Zstd,
        )
        .layer(Layer::random(10 * 1024, 43), Compression::None)
        .build();
    env.push("smoke/oci", Some("v1"), &oci).await;
    // Docker manifest list too.
    let dl = IndexBuilder::new(MediaFamily::Docker)
        .manifest(ma.for_platform("linux/amd64").unwrap())
        .manifest(ma.for_platform("linux/arm64/v8").unwrap())
        .build();
    env.push_index("smoke/dockerlist", Some("v1"), &dl).await;

    // Pull with ctr (plain http).
    let t1 = Instant::now();
    let refs = [
        env.image_ref("std/multi-arch", "v1"),
        env.image_ref("std/user-1002", "v1"),
        env.image_ref("smoke/docker", "v1"),
        env.image_ref("smoke/oci", "v1"),
        env.image_ref("smoke/dockerlist", "v1"),
    ];
    for r in &refs {
        env.load_with_ctr(r);
    }
    // A mapped fake host, through certs.d/gcr.io/hosts.toml (no --plain-http needed).
    env.map_host("gcr.io");
    env.load_with_ctr("gcr.io/smoke/oci:v1");
    eprintln!("ctr pulls took {:?}", t1.elapsed());

    let c = &env.containerd;
    let names = c.image_names();
    for r in refs
        .iter()
        .map(String::as_str)
        .chain(["gcr.io/smoke/oci:v1"])
    {
        assert!(names.iter().any(|n| n == r), "{r} missing from {names:?}");
    }
    let check = c.images_check();
    for (r, st, unpacked) in &check {
        assert!(
            st.starts_with("complete"),
            "{r} not complete: {st}\n{}",
            c.ctr_ok(&["images", "check"])
        );
        assert!(*unpacked, "{r} not unpacked");
    }
    eprintln!("{}", c.ctr_ok(&["images", "check"]));
    assert_eq!(check.len(), names.len());

    // Snapshots: committed layer snapshots are named by chain id.
    let snaps = c.snapshot_keys();
    let amd64 = ma.for_platform("linux/amd64").unwrap();
    assert!(
        snaps.contains(&amd64.chain_id()),
        "chain id {} not in {snaps:?}",
        amd64.chain_id()
    );
    assert!(snaps.contains(&oci.chain_id()));
    assert!(c.has_content(&docker.config_digest));

    // Registry access-log counting (the gcr.io pull reused the content store: no refetch).
    assert_eq!(env.registry.blob_get_count(&docker.blobs[2].0), 1);
    assert_eq!(env.registry.blob_get_count(&oci.blobs[0].0), 1);
    assert_eq!(env.registry.blob_get_count(&amd64.blobs[2].0), 1);
    let arm64 = ma.for_platform("linux/arm64/v8").unwrap();
    assert_eq!(env.registry.blob_get_count(&arm64.blobs[2].0), 0);
    assert!(
        env.registry
            .manifest_get_count(Some(&amd64.manifest_digest))
            >= 1
    );
    assert!(env.registry.manifest_get_count(None) >= 5);

    // Restart containerd: same socket, state survives.
    let t2 = Instant::now();
    env.containerd.restart();
    eprintln!("containerd restart took {:?}", t2.elapsed());
    assert!(env.containerd.plugin_ok("io.containerd.grpc.v1", "cri"));
    let names2 = env.containerd.image_names();
    assert_eq!(names.len(), names2.len());

    // Cleanup on drop: no process, no mounts, dir gone.
    let dir = env.containerd.dir.clone();
    let pid = env.containerd.pid().unwrap();
    drop(env);
    assert!(!pid_alive(pid), "containerd still alive");
    assert!(mounts_under(&dir).is_empty());
    assert!(!dir.exists());
    eprintln!("rig_smoke total {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rig_auth_registry_and_tmpfs_root() {
    let t0 = Instant::now();
    let env = TestEnv::start_with(
        ContainerdOpts::default().root_tmpfs(256 << 20),
        Some(("alice", "s3cret")),
    );
    assert_eq!(http_status(&env.registry.addr, "GET", "/v2/"), Some(401));
    let img = standard_images().user_1003_1004;
    // Unauthenticated push fails, authenticated works.
    assert!(push(&env.registry.addr, "auth/img", Some("v1"), &img)
        .await
        .is_err());
    env.push("auth/img", Some("v1"), &img).await;
    // Blocking variant from inside a runtime also works.
    push_blocking(&env.pusher(), "auth/img2", Some("v1"), &img).unwrap();
    let r = env.image_ref("auth/img", "v1");
    load_with_ctr_args(&env.containerd, &r, &["--user", "alice:s3cret"]);
    assert!(env.containerd.image_names().contains(&r));
    assert_eq!(env.registry.blob_get_count(&img.blobs[0].0), 1);
    // Root is the tmpfs.
    assert!(mounts_under(&env.containerd.root)
        .contains(&std::fs::canonicalize(&env.containerd.root).unwrap()));
    let dir = env.containerd.dir.clone();
    drop(env);
    assert!(mounts_under(&dir).is_empty());
    eprintln!("rig_auth_registry_and_tmpfs_root total {:?}", t0.elapsed());
}

#[test]
fn rig_wait_for_and_ports() {
    let p = free_port();
    assert!(p > 0);
    let t = Instant::now();
    assert!(!wait_for(|| false, Duration::from_millis(200)));
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert!(wait_for(|| true, Duration::from_secs(1)));
}
