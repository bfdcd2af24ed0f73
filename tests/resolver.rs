//! One resolver: a pull and the image index (which reads containerd's content
//! store, e.g. after a restart) choose the same manifest for indexes whose
//! entries lack `platform`, carry an unusual or empty media type, or nest
//! another index. Both go through `cri_imaged::select`.

use cri_imaged_test_rig::*;

use serde_json::{json, Value};

fn image(arch: &str, seed: u64) -> BuiltImage {
    ImageBuilder::new()
        .platform("linux", arch, None)
        .layer(Layer::random(4 * 1024, seed), Compression::Gzip)
        .build()
}

fn entry(img: &BuiltImage, media_type: Option<&str>, platform: Option<(&str, &str)>) -> Value {
    let mut d = json!({"digest": img.manifest_digest, "size": img.manifest_bytes.len()});
    if let Some(mt) = media_type {
        d["mediaType"] = json!(mt);
    }
    if let Some((os, arch)) = platform {
        d["platform"] = json!({"os": os, "architecture": arch});
    }
    d
}

fn index(entries: Vec<Value>) -> (String, Vec<u8>) {
    let b = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    (sha256_digest(&b), b)
}

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[tokio::test(flavor = "multi_thread")]
async fn pull_and_index_agree_on_unusual_indexes() {
    let env = TestEnv::start();
    let p = env.pusher();
    let amd = image("amd64", 1);
    let arm = image("arm64", 2);
    let s390 = image("s390x", 3);
    for img in [&amd, &arm, &s390] {
        p.push_image("sel/img", None, img).await.unwrap();
    }
    let arm_e = entry(&arm, Some(OCI_MANIFEST), Some(("linux", "arm64")));
    let (inner_digest, inner) = index(vec![
        entry(&s390, Some(OCI_MANIFEST), Some(("linux", "s390x"))),
        entry(&amd, Some(OCI_MANIFEST), Some(("linux", "amd64"))),
    ]);
    p.put_manifest("sel/img", &inner_digest, &inner, OCI_INDEX)
        .await
        .unwrap();
    let cases: Vec<(&str, Vec<Value>)> = vec![
        // no platform, a media type that is neither a manifest's nor empty:
        // the pull used to skip such an entry while the index judged it by its config
        (
            "unusual-type",
            vec![
                arm_e.clone(),
                entry(&amd, Some("application/vnd.example.unusual+json"), None),
            ],
        ),
        ("no-type", vec![arm_e.clone(), entry(&amd, None, None)]),
        (
            "no-platform",
            vec![arm_e.clone(), entry(&amd, Some(OCI_MANIFEST), None)],
        ),
        // an index inside the index, with and without a platform of its own
        (
            "nested",
            vec![
                arm_e.clone(),
                json!({"mediaType": OCI_INDEX, "digest": inner_digest, "size": inner.len(), "platform": {"os": "linux", "architecture": "amd64"}}),
            ],
        ),
        (
            "nested-no-platform",
            vec![
                arm_e.clone(),
                json!({"mediaType": OCI_INDEX, "digest": inner_digest, "size": inner.len()}),
            ],
        ),
    ];
    for (tag, entries) in &cases {
        let (d, b) = index(entries.clone());
        p.put_manifest("sel/img", &d, &b, OCI_INDEX).await.unwrap();
        p.put_manifest("sel/img", tag, &b, OCI_INDEX).await.unwrap();
    }

    let mut d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let mut pulled = Vec::new();
    for (tag, _) in &cases {
        let r = env.image_ref("sel/img", tag);
        let id = pull(&mut c, &r)
            .await
            .unwrap_or_else(|e| panic!("pull {tag}: {e:?}"));
        assert_eq!(
            id, amd.config_digest,
            "pull chose another manifest for {tag}"
        );
        let st = status(&mut c, &r).await.expect("status after pull");
        assert_eq!(st.id, amd.config_digest, "{tag}");
        pulled.push((r, st));
    }
    // A restart rebuilds the index from containerd's content store alone.
    d.stop();
    d.start_again();
    d.wait_synced().await;
    let mut c = d.client().await;
    for (r, before) in &pulled {
        let after = status(&mut c, r)
            .await
            .unwrap_or_else(|| panic!("{r} not indexed after restart"));
        assert_eq!(after.id, before.id, "index and pull disagree on {r}");
        assert!(
            after.repo_tags.contains(r),
            "{r} not among {:?}",
            after.repo_tags
        );
    }
}
