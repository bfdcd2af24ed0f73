//! The records, labels and GC references cri-imaged writes are the ones the
//! containerd under test writes itself when its own CRI pulls: same record
//! names, same record labels, same content labels (distribution source, GC
//! references, uncompressed digests) and the same snapshot chain. Run per
//! containerd version (`CRI_IMAGED_CONTAINERD=1.6|1.7|2.1`, see README).

use std::collections::{BTreeMap, BTreeSet};

use cri_imaged::containerd::Containerd as Client;
use cri_imaged_test_rig::*;

/// Everything containerd holds for one pulled image, with the names that
/// differ between the two pulls (repository, digests) replaced.
#[derive(Debug, PartialEq)]
struct Written {
    records: BTreeMap<String, BTreeMap<String, String>>,
    content: BTreeMap<String, BTreeSet<String>>,
    snapshots: usize,
}

async fn written(c: &Client, repo: &str, img: &BuiltImage, ns_addr: &str) -> Written {
    let norm = |s: &str| {
        let s = s.replace(repo, "REPO").replace(ns_addr, "HOST");
        let mut s = s.replace(ns_addr.split(':').next().unwrap_or(ns_addr), "HOSTNAME");
        s = s
            .replace(&img.manifest_digest, "MANIFEST")
            .replace(&img.config_digest, "CONFIG");
        for (i, (d, _, _)) in img.blobs.iter().enumerate() {
            s = s.replace(d, &format!("LAYER{i}"));
        }
        for (i, d) in img.diff_ids.iter().enumerate() {
            s = s.replace(d, &format!("DIFF{i}"));
        }
        s = s.replace(&img.chain_id(), "TOPCHAIN");
        s
    };
    let mut records = BTreeMap::new();
    for r in c.list_images().await.unwrap() {
        let t = r
            .target
            .as_ref()
            .map(|t| t.digest.clone())
            .unwrap_or_default();
        if r.name.contains(repo) || r.name == img.config_digest {
            assert_eq!(t, img.manifest_digest, "record {} target", r.name);
            let labels = r.labels.iter().map(|(k, v)| (norm(k), norm(v))).collect();
            records.insert(norm(&r.name), labels);
        }
    }
    let mut content = BTreeMap::new();
    let mut digests = vec![img.manifest_digest.clone(), img.config_digest.clone()];
    digests.extend(img.blobs.iter().map(|(d, _, _)| d.clone()));
    for d in digests {
        let info = c
            .content_info(&d)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{d} not in content"));
        // Label keys and the values that name other objects (normalised);
        // values that are timestamps differ and are left out.
        let labels = info
            .labels
            .iter()
            .filter(|(k, _)| !k.contains("gc.expire"))
            .map(|(k, v)| format!("{}={}", norm(k), norm(v)))
            .collect();
        content.insert(norm(&d), labels);
    }
    Written {
        records,
        content,
        snapshots: img.diff_ids.len(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn records_and_labels_match_containerds_own_cri() {
    let env = TestEnv::start();
    // Two images alike but for their content, one pulled by each service.
    let mk = |seed| {
        ImageBuilder::new()
            .layer(Layer::random(16 * 1024, seed), Compression::Gzip)
            .layer(Layer::random(32 * 1024, seed + 100), Compression::Gzip)
            .build()
    };
    let (theirs, ours) = (mk(81), mk(82));
    env.push("interop/theirs", Some("v1"), &theirs).await;
    env.push("interop/ours", Some("v1"), &ours).await;
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;

    let mut their_cri = cri_client(&env.containerd.socket).await;
    pull(&mut their_cri, &env.image_ref("interop/theirs", "v1"))
        .await
        .expect("containerd's CRI pull");
    let mut c = d.client().await;
    pull(&mut c, &env.image_ref("interop/ours", "v1"))
        .await
        .expect("our pull");

    // Layer blobs reach the content store right after PullImage returns
    // (their pull's lease goes once they are in).
    env.containerd.leases_settled();
    let client = Client::new(&env.containerd.socket, "k8s.io");
    let addr = env.registry_addr().to_string();
    let w_theirs = written(&client, "interop/theirs", &theirs, &addr).await;
    let w_ours = written(&client, "interop/ours", &ours, &addr).await;
    assert_eq!(
        w_ours.records, w_theirs.records,
        "image records and their labels"
    );
    assert_eq!(w_ours.content, w_theirs.content, "content labels");
    assert_eq!(w_ours.records.len(), 3, "{:?}", w_ours.records);

    // Both images' top snapshots exist under their chain IDs.
    let keys = env.containerd.snapshot_keys();
    for img in [&theirs, &ours] {
        assert!(
            keys.contains(&img.chain_id()),
            "{} not among {keys:?}",
            img.chain_id()
        );
    }
    let _ = (w_ours.snapshots, w_theirs.snapshots);
}
