//! Pull options: pinned images from config, the per-runtime-handler
//! snapshotter, and blobs already present in another namespace.

use cri_imaged_test_rig::*;

use k8s_cri::v1 as cri;

fn ctr_images_ls(c: &Containerd) -> String {
    String::from_utf8_lossy(&c.ctr(&["images", "ls"]).stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_images_are_labelled_and_reported() {
    let env = TestEnv::start();
    let imgs = standard_images();
    env.push("opt/pinned", Some("v1"), &imgs.user_1002).await;
    env.push("opt/plain", Some("v1"), &imgs.user_www_data).await;
    let pinned = env.image_ref("opt/pinned", "v1");
    let d = {
        let pinned = pinned.clone();
        cri_imaged!()
            .config(move |c| c.pinned_images = vec![pinned])
            .start(&env.containerd)
    };
    d.wait_synced().await;
    let mut c = d.client().await;
    pull(&mut c, &pinned).await.unwrap();
    pull(&mut c, &env.image_ref("opt/plain", "v1"))
        .await
        .unwrap();
    assert!(status(&mut c, &pinned).await.unwrap().pinned);
    assert!(
        !status(&mut c, &env.image_ref("opt/plain", "v1"))
            .await
            .unwrap()
            .pinned
    );
    let ls = ctr_images_ls(&env.containerd);
    let row = ls
        .lines()
        .find(|l| l.starts_with(&format!("{pinned} ")))
        .expect("pinned record");
    assert!(row.contains("io.cri-containerd.pinned=pinned"), "{row}");
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_handler_selects_its_snapshotter() {
    let env = TestEnv::start();
    let imgs = standard_images();
    env.push("opt/handler", Some("v1"), &imgs.user_1002).await;
    let d = cri_imaged!()
        .config(|c| {
            c.runtime_handler_snapshotters
                .insert("alt".into(), "native".into());
        })
        .start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let r = env.image_ref("opt/handler", "v1");
    let id = c
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: r.clone(),
                runtime_handler: "alt".into(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .expect("pull with runtime handler")
        .into_inner()
        .image_ref;
    assert_eq!(id, imgs.user_1002.config_digest);
    let top = imgs.user_1002.chain_id();
    let native = String::from_utf8_lossy(
        &env.containerd
            .ctr(&["snapshots", "--snapshotter", "native", "ls"])
            .stdout,
    )
    .into_owned();
    assert!(
        native.contains(&top),
        "top snapshot not in the native snapshotter:\n{native}"
    );
    let overlay = env.containerd.snapshot_keys();
    assert!(
        !overlay.contains(&top),
        "unpacked into overlayfs too: {overlay:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_present_in_another_namespace_are_not_fetched() {
    let env = TestEnv::start();
    let img = ImageBuilder::new()
        .layer(base_layer(), Compression::Gzip)
        .layer(Layer::random(512 << 10, 77), Compression::Gzip)
        .build();
    env.push("opt/shared", Some("v1"), &img).await;
    let r = env.image_ref("opt/shared", "v1");
    // containerd fetches it into the "default" namespace first.
    let certs = env.containerd.certs_d.to_string_lossy().into_owned();
    let out = env.containerd.ctr_ns(
        "default",
        &["images", "pull", "--plain-http", "--hosts-dir", &certs, &r],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before: Vec<usize> = img
        .layer_digests()
        .iter()
        .map(|d| env.registry.blob_get_count(d))
        .collect();
    assert!(before.iter().all(|n| *n == 1), "{before:?}");

    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    assert_eq!(pull(&mut c, &r).await.unwrap(), img.config_digest);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let after: Vec<usize> = img
        .layer_digests()
        .iter()
        .map(|d| env.registry.blob_get_count(d))
        .collect();
    assert_eq!(
        before, after,
        "layers were fetched again although containerd had them"
    );
    let checks = env.containerd.images_check();
    assert!(
        checks
            .iter()
            .any(|(n, s, u)| n == &r && s.starts_with("complete") && *u),
        "{checks:?}"
    );
}
