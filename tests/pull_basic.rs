//! PullImage against a real containerd and registry: the records, the CRI
//! fields and interop with containerd's own CRI image service.

use cri_imaged_test_rig::*;

use k8s_cri::v1 as cri;

#[tokio::test(flavor = "multi_thread")]
async fn pull_by_tag_then_status_by_every_form() {
    let env = TestEnv::start();
    let imgs = standard_images();
    env.push("std/u1002", Some("v1"), &imgs.user_1002).await;
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;

    let r = env.image_ref("std/u1002", "v1");
    let id = pull(&mut c, &r).await.expect("pull");
    assert_eq!(id, imgs.user_1002.config_digest);

    let by_tag = status(&mut c, &r).await.expect("by tag");
    assert_eq!(by_tag.id, id);
    assert_eq!(by_tag.repo_tags, vec![r.clone()]);
    let digest_ref = env.digest_ref("std/u1002", &imgs.user_1002.manifest_digest);
    assert_eq!(by_tag.repo_digests, vec![digest_ref.clone()]);
    assert_eq!(by_tag.uid.as_ref().map(|u| u.value), Some(1002));
    assert!(by_tag.size > 0);
    assert_eq!(
        by_tag.size,
        imgs.user_1002.total_size() + imgs.user_1002.manifest_bytes.len() as u64
    );
    assert_eq!(by_tag.spec.as_ref().unwrap().image, id);

    let by_digest = status(&mut c, &digest_ref).await.expect("by digest");
    let by_id = status(&mut c, &id).await.expect("by id");
    let by_short = status(&mut c, &id[7..19]).await.expect("by short id");
    assert_eq!(by_tag, by_digest);
    assert_eq!(by_tag, by_id);
    assert_eq!(by_tag, by_short);

    // verbose info
    let v = c
        .image_status(cri::ImageStatusRequest {
            image: spec(&id),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&v.info["info"]).unwrap();
    assert_eq!(info["chainID"].as_str().unwrap(), imgs.user_1002.chain_id());
    assert_eq!(info["imageSpec"]["config"]["User"], "1002");

    // containerd's own CRI sees the same image ID.
    let mut theirs = cri_client(&env.containerd.socket).await;
    let t = status(&mut theirs, &r)
        .await
        .expect("containerd CRI ImageStatus");
    assert_eq!(t.id, id);
    assert_eq!(t.size, by_tag.size, "size as containerd's CRI reports it");
    assert_eq!(t.uid, by_tag.uid);
    // and ctr says it is complete and unpacked
    let checks = env.containerd.images_check();
    let mine: Vec<_> = checks.iter().filter(|(n, _, _)| n == &r).collect();
    assert_eq!(mine.len(), 1, "{checks:?}");
    assert!(mine[0].1.starts_with("complete"), "{checks:?}");
    assert!(mine[0].2, "not unpacked: {checks:?}");

    // absent image: empty response, no error
    assert!(status(&mut c, &env.image_ref("std/none", "v1"))
        .await
        .is_none());
}
