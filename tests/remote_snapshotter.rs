//! Remote (lazy-pull) snapshotters: Prepare carries the labels stargz, nydus
//! and soci read (`containerd.io/snapshot/cri.*` and `containerd.io/snapshot.ref`),
//! and a layer the snapshotter serves (AlreadyExists + its chain ID
//! committed) is never downloaded. The snapshotter is a fake served by the
//! test as a containerd proxy plugin (`FakeSnapshotter`), loaded by a real
//! containerd; the registry is real.

use std::time::Duration;

use cri_imaged::config::SnapshotAnnotations;
use cri_imaged_test_rig::*;

const SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
const IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
const MANIFEST: &str = "containerd.io/snapshot/cri.manifest-digest";
const LAYER: &str = "containerd.io/snapshot/cri.layer-digest";
const LAYERS: &str = "containerd.io/snapshot/cri.image-layers";

fn three_layers() -> BuiltImage {
    ImageBuilder::new()
        .layer(
            Layer::from_files(&[("bottom/one", b"one".as_slice())]),
            Compression::Gzip,
        )
        .layer(
            Layer::from_files(&[("middle/two", b"two".as_slice())]),
            Compression::Gzip,
        )
        .layer(
            Layer::from_files(&[("top/three", b"three".as_slice())]),
            Compression::Gzip,
        )
        .build()
}

fn start(fake: &FakeSnapshotter) -> TestEnv {
    TestEnv::start_with(
        ContainerdOpts {
            extra_config: fake.proxy_config(),
            ..Default::default()
        },
        None,
    )
}

/// Chain IDs containerd lists for the fake snapshotter.
fn chains_in_containerd(env: &TestEnv, name: &str) -> Vec<String> {
    env.containerd
        .ctr_ok(&["snapshots", "--snapshotter", name, "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn layers_the_snapshotter_serves_are_never_downloaded() {
    let fake = FakeSnapshotter::start("fakeremote");
    let env = start(&fake);
    let img = three_layers();
    env.push("remote/app", Some("v1"), &img).await;
    let (layers, chain) = (img.layer_digests(), img.chain_ids());
    // The bottom two are "in the remote store"; the top one is not.
    fake.serve_remotely(&layers[0]);
    fake.serve_remotely(&layers[1]);

    let root = fake.root.clone();
    let d = cri_imaged!()
        .config(move |c| {
            c.snapshotter = "fakeremote".into();
            c.snapshotter_root = root;
        })
        .start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let r = env.image_ref("remote/app", "v1");
    let id = pull(&mut c, &r)
        .await
        .expect("pull into the remote snapshotter");
    assert_eq!(id, img.config_digest);

    // Served layers: not a byte fetched; the other one, once.
    assert_eq!(
        env.registry.blob_get_count(&layers[0]),
        0,
        "layer 0 fetched"
    );
    assert_eq!(
        env.registry.blob_get_count(&layers[1]),
        0,
        "layer 1 fetched"
    );
    assert_eq!(env.registry.blob_get_count(&layers[2]), 1, "layer 2");

    // Every layer's Prepare carried the labels containerd's CRI passes.
    let prepares = fake.prepares();
    for (i, layer) in layers.iter().enumerate() {
        let p = prepares
            .iter()
            .find(|p| p.labels.get(LAYER) == Some(layer))
            .unwrap_or_else(|| panic!("no Prepare labelled with layer {i}: {prepares:#?}"));
        assert_eq!(p.labels[SNAPSHOT_REF], chain[i], "layer {i}");
        assert_eq!(p.labels[IMAGE_REF], r, "layer {i}");
        assert_eq!(p.labels[MANIFEST], img.manifest_digest, "layer {i}");
        assert_eq!(p.labels[LAYERS], layers[i..].join(","), "layer {i}");
        assert_eq!(p.served, i < 2, "layer {i}");
    }
    // The top layer: every Prepare of it (probe and unpack) was labelled.
    assert!(prepares
        .iter()
        .filter(|p| p.labels.get(SNAPSHOT_REF) == Some(&chain[2]))
        .all(|p| p.labels.get(LAYER) == Some(&layers[2])));

    // containerd knows the whole chain in that snapshotter; the served
    // layers' blobs are not in its content store, the downloaded one is.
    let chains = chains_in_containerd(&env, "fakeremote");
    for c in &chain {
        assert!(chains.contains(c), "{c} not in {chains:?}");
    }
    let content = env.containerd.content_digests();
    assert!(!content.contains(&layers[0]) && !content.contains(&layers[1]));
    assert!(content.contains(&layers[2]) && content.contains(&img.config_digest));

    // The CRI sees a usable image; the metrics count the served layers.
    let st = status(&mut c, &r).await.expect("ImageStatus");
    assert_eq!(st.id, id);
    let m = d.metrics().await;
    assert!(
        m.contains(r#"cri_imaged_layers_unpacked_total{unpacker="remote"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"cri_imaged_layers_unpacked_total{unpacker="containerd"} 1"#),
        "{m}"
    );

    // Pulled again: present, nothing more fetched.
    pull(&mut c, &r).await.expect("second pull");
    assert_eq!(env.registry.blob_get_count(&layers[0]), 0);
    assert_eq!(env.registry.blob_get_count(&layers[2]), 1);

    // Removed: containerd's GC takes the snapshots out of the snapshotter too.
    env.containerd.leases_settled();
    remove(&mut c, &r).await.expect("remove");
    assert!(
        wait_for(|| fake.count() == 0, Duration::from_secs(15)),
        "snapshots left in the snapshotter: {:?}",
        fake.committed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_image_on_served_layers_fetches_only_its_own() {
    // Two images share the bottom layer; the snapshotter serves it. The
    // second pull finds its chain present and downloads only its own top.
    let fake = FakeSnapshotter::start("fakeremote");
    let env = start(&fake);
    let base = Layer::from_files(&[("base/file", b"shared".as_slice())]);
    let a = ImageBuilder::new()
        .layer(base.clone(), Compression::Gzip)
        .layer(
            Layer::from_files(&[("a/file", b"a".as_slice())]),
            Compression::Gzip,
        )
        .build();
    let b = ImageBuilder::new()
        .layer(base, Compression::Gzip)
        .layer(
            Layer::from_files(&[("b/file", b"b".as_slice())]),
            Compression::Gzip,
        )
        .build();
    env.push("remote/a", Some("v1"), &a).await;
    env.push("remote/b", Some("v1"), &b).await;
    let shared = a.layer_digests()[0].clone();
    fake.serve_remotely(&shared);
    let d = cri_imaged!()
        .config(|c| c.snapshotter = "fakeremote".into())
        .start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    pull(&mut c, &env.image_ref("remote/a", "v1"))
        .await
        .expect("a");
    pull(&mut c, &env.image_ref("remote/b", "v1"))
        .await
        .expect("b");
    assert_eq!(env.registry.blob_get_count(&shared), 0);
    assert_eq!(env.registry.blob_get_count(&a.layer_digests()[1]), 1);
    assert_eq!(env.registry.blob_get_count(&b.layer_digests()[1]), 1);
    // The shared layer was served once; b found its chain present.
    let served: Vec<_> = fake.prepares().into_iter().filter(|p| p.served).collect();
    assert_eq!(served.len(), 1, "{served:#?}");
    let chains = chains_in_containerd(&env, "fakeremote");
    assert!(chains.contains(&a.chain_id()) && chains.contains(&b.chain_id()));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_annotations_every_layer_is_downloaded() {
    // `snapshot_annotations: never`: no labels, so the snapshotter cannot
    // serve anything, and every layer is fetched and unpacked as usual.
    let fake = FakeSnapshotter::start("fakeremote");
    let env = start(&fake);
    let img = three_layers();
    env.push("remote/app", Some("v1"), &img).await;
    for l in img.layer_digests() {
        fake.serve_remotely(&l);
    }
    let d = cri_imaged!()
        .config(|c| {
            c.snapshotter = "fakeremote".into();
            c.snapshot_annotations = SnapshotAnnotations::Never;
        })
        .start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let r = env.image_ref("remote/app", "v1");
    pull(&mut c, &r).await.expect("pull");
    for l in img.layer_digests() {
        assert_eq!(env.registry.blob_get_count(&l), 1, "{l}");
    }
    let prepares = fake.prepares();
    assert!(!prepares.is_empty());
    assert!(
        prepares.iter().all(|p| !p.served
            && !p.labels.contains_key(LAYER)
            && !p.labels.contains_key(IMAGE_REF)),
        "{prepares:#?}"
    );
    let chains = chains_in_containerd(&env, "fakeremote");
    assert!(chains.contains(&img.chain_id()), "{chains:?}");
}
