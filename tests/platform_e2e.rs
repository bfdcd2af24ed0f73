//! Platform selection end to end: which manifest of an index a PullImage
//! chooses for the node's platform(s), and the NOT_FOUND answer when none fits.

use cri_imaged_test_rig::*;

use serde_json::json;
use tonic::Code;

/// The rig's images are built for linux/amd64; these tests assume an amd64 node
/// for the default-platform cases.
fn host_is_amd64() -> bool {
    std::env::consts::ARCH == "x86_64"
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_arch_index_resolves_to_the_node_platform() {
    assert!(host_is_amd64(), "these tests expect an amd64 node");
    let env = TestEnv::start();
    let imgs = standard_images();
    env.push_index("std/multi-arch", Some("v1"), &imgs.multi_arch)
        .await;
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;

    let r = env.image_ref("std/multi-arch", "v1");
    let amd64 = imgs.multi_arch.for_platform("linux/amd64").unwrap();
    let id = pull(&mut c, &r).await.expect("pull multi-arch");
    assert_eq!(id, amd64.config_digest, "the amd64 manifest's config");
    let st = status(&mut c, &r).await.expect("status");
    assert_eq!(st.id, amd64.config_digest);
    assert_eq!(
        st.repo_digests,
        vec![env.digest_ref("std/multi-arch", &imgs.multi_arch.digest)]
    );
    // size: index + amd64 manifest + config + layers (not the other platforms)
    assert_eq!(
        st.size,
        imgs.multi_arch.bytes.len() as u64 + amd64.manifest_bytes.len() as u64 + amd64.total_size()
    );
    // Only amd64 content was fetched: the other platforms' configs are absent.
    for other in ["linux/arm64/v8", "linux/arm/v7"] {
        let o = imgs.multi_arch.for_platform(other).unwrap();
        assert!(
            !env.containerd.has_content(&o.config_digest),
            "{other} config fetched"
        );
    }
    // containerd's own CRI agrees.
    let mut theirs = cri_client(&env.containerd.socket).await;
    assert_eq!(
        status(&mut theirs, &r).await.expect("containerd CRI").id,
        id
    );

    // An index whose entries carry no platform is judged by the configs.
    let arm64 = imgs.multi_arch.for_platform("linux/arm64/v8").unwrap();
    let noplat = IndexBuilder::new(MediaFamily::Docker)
        .manifest_without_platform(arm64)
        .manifest_without_platform(amd64)
        .build();
    env.push_index("std/noplat", Some("v1"), &noplat).await;
    let id2 = pull(&mut c, &env.image_ref("std/noplat", "v1"))
        .await
        .expect("pull no-platform index");
    assert_eq!(id2, amd64.config_digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_platform_arm_v7_and_v6_fallback() {
    let env = TestEnv::start();
    let imgs = standard_images();
    env.push_index("std/multi-arch", Some("v1"), &imgs.multi_arch)
        .await;
    env.push_index("std/arm-only", Some("v1"), &imgs.arm_only)
        .await;
    let d = cri_imaged!()
        .config(|c| c.platforms = vec!["linux/arm/v7".into()])
        .start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;

    let v7 = imgs.multi_arch.for_platform("linux/arm/v7").unwrap();
    let r = env.image_ref("std/multi-arch", "v1");
    let id = pull(&mut c, &r).await.expect("pull multi-arch as arm/v7");
    assert_eq!(id, v7.config_digest, "the arm/v7 config");
    let st = status(&mut c, &r).await.expect("status");
    assert_eq!(st.id, v7.config_digest);
    assert_eq!(
        st.size,
        imgs.multi_arch.bytes.len() as u64 + v7.manifest_bytes.len() as u64 + v7.total_size()
    );
    let amd64 = imgs.multi_arch.for_platform("linux/amd64").unwrap();
    assert!(
        !env.containerd.has_content(&amd64.config_digest),
        "amd64 config fetched on an arm/v7 node"
    );

    // Only v6 and v5 offered: a v7 node takes the highest it can run, v6.
    let v6 = imgs.arm_only.for_platform("linux/arm/v6").unwrap();
    let r2 = env.image_ref("std/arm-only", "v1");
    let id2 = pull(&mut c, &r2).await.expect("pull arm-only as arm/v7");
    assert_eq!(id2, v6.config_digest, "v7 node must choose v6 over v5");
    assert_eq!(
        status(&mut c, &r2).await.expect("status").id,
        v6.config_digest
    );
    assert_eq!(list(&mut c).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_matching_platform_is_not_found_naming_both_sides() {
    assert!(host_is_amd64(), "these tests expect an amd64 node");
    let env = TestEnv::start();
    let imgs = standard_images();
    let arm64 = imgs
        .multi_arch
        .for_platform("linux/arm64/v8")
        .unwrap()
        .clone();
    // arm64 + an attestation (unknown/unknown) entry: nothing for amd64, and the
    // attestation must not be taken as a match.
    let idx = IndexBuilder::new(MediaFamily::Oci)
        .manifest(&arm64)
        .attestation_for(&arm64)
        .build();
    env.push_index("std/arm64-only", Some("v1"), &idx).await;
    env.push_index("std/arm-only", Some("v1"), &imgs.arm_only)
        .await;
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;

    let r = env.image_ref("std/arm64-only", "v1");
    let e = pull(&mut c, &r).await.expect_err("no amd64 manifest");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let m = e.message();
    assert!(
        m.contains("linux/amd64"),
        "message must name the wanted platform: {m}"
    );
    assert!(
        m.contains("linux/arm64"),
        "message must name what the index has: {m}"
    );
    assert!(
        status(&mut c, &r).await.is_none(),
        "no image after a failed pull"
    );
    assert!(
        !env.containerd
            .image_names()
            .iter()
            .any(|n| n.contains("arm64-only")),
        "no record after a failed pull: {:?}",
        env.containerd.image_names()
    );

    // arm v6/v5 only on an amd64 node: not found either.
    let e = pull(&mut c, &env.image_ref("std/arm-only", "v1"))
        .await
        .expect_err("no amd64 manifest");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("linux/arm/v6"), "{}", e.message());

    // An explicit platform field that disagrees with the config: the index entry wins
    // for selection (the entry says amd64).
    let amd64 = imgs.multi_arch.for_platform("linux/amd64").unwrap();
    let idx2 = IndexBuilder::new(MediaFamily::Oci)
        .manifest_with_platform(&arm64, json!({"os": "linux", "architecture": "arm64"}))
        .manifest(amd64)
        .build();
    env.push_index("std/two", Some("v1"), &idx2).await;
    assert_eq!(
        pull(&mut c, &env.image_ref("std/two", "v1"))
            .await
            .expect("pull"),
        amd64.config_digest
    );
}
