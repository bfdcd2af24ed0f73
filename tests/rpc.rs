//! The read side of the CRI ImageService (ListImages, ImageStatus, RemoveImage,
//! ImageFsInfo) against a real containerd, the index staying in sync with
//! out-of-band changes, containerd outages, bad requests, the socket's life
//! cycle and `--managed-containerd`.

use cri_imaged_test_rig::*;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use tonic::transport::Channel;
use tonic::Code;

// ---------------------------------------------------------------- helpers

type Client = ImageServiceClient<Channel>;

async fn list_filtered(c: &mut Client, image: &str) -> Result<Vec<cri::Image>, tonic::Status> {
    c.list_images(cri::ListImagesRequest {
        filter: Some(cri::ImageFilter { image: spec(image) }),
    })
    .await
    .map(|r| r.into_inner().images)
}

async fn try_status(c: &mut Client, image: &str) -> Result<Option<cri::Image>, tonic::Status> {
    c.image_status(cri::ImageStatusRequest {
        image: spec(image),
        verbose: false,
    })
    .await
    .map(|r| r.into_inner().image)
}

async fn fs_info(c: &mut Client) -> cri::FilesystemUsage {
    let r = c
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .expect("ImageFsInfo")
        .into_inner();
    assert_eq!(r.image_filesystems.len(), 1, "{r:?}");
    r.image_filesystems[0].clone()
}

/// containerd records that belong to an image: names containing `repo`, or the ID record.
fn records_of(cd: &Containerd, repo: &str, id: &str) -> Vec<String> {
    cd.image_names()
        .into_iter()
        .filter(|n| n.contains(repo) || n == id)
        .collect()
}

fn small(seed: u64) -> BuiltImage {
    ImageBuilder::new()
        .env(&format!("RPC_SEED={seed}"))
        .layer(base_layer(), Compression::Gzip)
        .layer(Layer::random(8 * 1024, seed), Compression::Gzip)
        .build()
}

fn ids(v: &[cri::Image]) -> BTreeSet<String> {
    v.iter().map(|i| i.id.clone()).collect()
}

// ---------------------------------------------------------------- ListImages / ImageStatus

#[tokio::test(flavor = "multi_thread")]
async fn list_and_status_by_every_form_and_user_fields() {
    let env = TestEnv::start();
    let imgs = standard_images();
    let repos = [
        ("std/user-1002", &imgs.user_1002),
        ("std/user-www-data", &imgs.user_www_data),
        ("std/user-1003-1004", &imgs.user_1003_1004),
        ("std/user-www-data-1004", &imgs.user_www_data_1004),
    ];
    for (repo, img) in repos {
        env.push(repo, Some("v1"), img).await;
    }
    let multi = small(7);
    for t in ["t1", "t2", "t3"] {
        env.push("std/multi-tag", Some(t), &multi).await;
    }
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    assert!(list(&mut c).await.is_empty());

    // 3 images -> 3 entries, each with its one tag and one digest.
    for (repo, img) in &repos[..3] {
        let id = pull(&mut c, &env.image_ref(repo, "v1"))
            .await
            .expect("pull");
        assert_eq!(id, img.config_digest);
    }
    let l = list(&mut c).await;
    assert_eq!(l.len(), 3, "{l:#?}");
    for (repo, img) in &repos[..3] {
        let e = l
            .iter()
            .find(|i| i.id == img.config_digest)
            .expect("listed");
        assert_eq!(e.repo_tags, vec![env.image_ref(repo, "v1")]);
        assert_eq!(
            e.repo_digests,
            vec![env.digest_ref(repo, &img.manifest_digest)]
        );
        assert!(e.size > 0);
        assert_eq!(e.spec.as_ref().unwrap().image, img.config_digest);
    }

    // 3 tags on one image -> one entry with 3 tags.
    for t in ["t1", "t2", "t3"] {
        let id = pull(&mut c, &env.image_ref("std/multi-tag", t))
            .await
            .expect("pull tag");
        assert_eq!(id, multi.config_digest);
    }
    let l = list(&mut c).await;
    assert_eq!(l.len(), 4, "{l:#?}");
    let e = l.iter().find(|i| i.id == multi.config_digest).unwrap();
    let mut tags = e.repo_tags.clone();
    tags.sort();
    assert_eq!(
        tags,
        ["t1", "t2", "t3"]
            .map(|t| env.image_ref("std/multi-tag", t))
            .to_vec()
    );
    assert_eq!(
        e.repo_digests,
        vec![env.digest_ref("std/multi-tag", &multi.manifest_digest)]
    );

    // filter.image is honoured: by tag, digest, ID, short ID; no match -> empty.
    let by_tag = list_filtered(&mut c, &env.image_ref("std/multi-tag", "t2"))
        .await
        .unwrap();
    assert_eq!(ids(&by_tag), BTreeSet::from([multi.config_digest.clone()]));
    assert_eq!(by_tag[0].repo_tags.len(), 3);
    let one = &imgs.user_1002;
    for q in [
        env.digest_ref("std/user-1002", &one.manifest_digest),
        one.config_digest.clone(),
        one.config_digest[7..19].to_string(),
    ] {
        let f = list_filtered(&mut c, &q).await.unwrap();
        assert_eq!(
            ids(&f),
            BTreeSet::from([one.config_digest.clone()]),
            "filter {q}"
        );
    }
    assert!(list_filtered(&mut c, &env.image_ref("std/none", "v1"))
        .await
        .unwrap()
        .is_empty());
    // An empty filter string means no filter.
    assert_eq!(list_filtered(&mut c, "").await.unwrap().len(), 4);

    // ImageStatus by tag, digest ref, full ID (with and without sha256:), short ID: equal.
    for (repo, img) in &repos[..3] {
        let by_tag = status(&mut c, &env.image_ref(repo, "v1"))
            .await
            .expect("by tag");
        let forms = [
            env.digest_ref(repo, &img.manifest_digest),
            img.config_digest.clone(),
            img.config_digest[7..].to_string(),
            img.config_digest[7..19].to_string(),
            format!("sha256:{}", &img.config_digest[7..19]),
        ];
        for f in forms {
            assert_eq!(
                status(&mut c, &f).await.as_ref(),
                Some(&by_tag),
                "status by {f}"
            );
        }
        // the list entry is the same image
        assert!(l.contains(&by_tag));
    }
    // Absent: empty response, no error (a name, a digest ref, an ID, a short ID).
    for q in [
        env.image_ref("std/none", "v1"),
        env.digest_ref("std/user-1002", &imgs.user_www_data.manifest_digest),
        format!("sha256:{}", "ab".repeat(32)),
        "abcdef0123".to_string(),
    ] {
        let r = c
            .image_status(cri::ImageStatusRequest {
                image: spec(&q),
                verbose: true,
            })
            .await
            .unwrap_or_else(|e| panic!("absent {q}: {e:?}"))
            .into_inner();
        assert!(r.image.is_none() && r.info.is_empty(), "absent {q}: {r:?}");
    }

    // uid / username from the config's User.
    pull(&mut c, &env.image_ref(repos[3].0, "v1"))
        .await
        .expect("pull");
    for (repo, uid, username) in [
        ("std/user-1002", Some(1002), ""),
        ("std/user-www-data", None, "www-data"),
        ("std/user-1003-1004", Some(1003), ""),
        ("std/user-www-data-1004", None, "www-data"),
    ] {
        let s = status(&mut c, &env.image_ref(repo, "v1"))
            .await
            .expect("status");
        assert_eq!(s.uid.map(|u| u.value), uid, "{repo}");
        assert_eq!(s.username, username, "{repo}");
    }
    assert_eq!(list(&mut c).await.len(), 5);
}

// ---------------------------------------------------------------- RemoveImage

#[tokio::test(flavor = "multi_thread")]
async fn remove_by_one_tag_removes_every_record_and_concurrent_removes_succeed() {
    let env = TestEnv::start();
    let img = small(21);
    for t in ["a", "b", "c"] {
        env.push("rm/img", Some(t), &img).await;
    }
    let keep = small(22);
    env.push("rm/keep", Some("v1"), &keep).await;
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    for t in ["a", "b", "c"] {
        pull(&mut c, &env.image_ref("rm/img", t))
            .await
            .expect("pull");
    }
    pull(&mut c, &env.image_ref("rm/keep", "v1"))
        .await
        .expect("pull keep");
    let id = img.config_digest.clone();
    let before = records_of(&env.containerd, "rm/img", &id);
    // 3 tags + 1 digest + the ID record
    assert_eq!(before.len(), 5, "{before:?}");

    remove(&mut c, &env.image_ref("rm/img", "b"))
        .await
        .expect("RemoveImage by one tag");
    assert!(status(&mut c, &env.image_ref("rm/img", "a"))
        .await
        .is_none());
    assert!(status(&mut c, &id).await.is_none());
    assert_eq!(
        ids(&list(&mut c).await),
        BTreeSet::from([keep.config_digest.clone()])
    );
    let after = records_of(&env.containerd, "rm/img", &id);
    assert!(after.is_empty(), "records left in containerd: {after:?}");
    // the other image is untouched
    assert_eq!(
        records_of(&env.containerd, "rm/keep", &keep.config_digest).len(),
        3
    );
    // GC reclaimed the config blob (synchronous delete of the last record).
    assert!(
        wait_for(|| !env.containerd.has_content(&id), Duration::from_secs(5)),
        "config blob not collected"
    );

    // Not found -> OK (by tag, by ID, by short ID).
    remove(&mut c, &env.image_ref("rm/img", "a"))
        .await
        .expect("absent tag");
    remove(&mut c, &id).await.expect("absent id");
    remove(&mut c, "abcdef0123").await.expect("absent short id");

    // 8 concurrent removes of one image: all OK, nothing left.
    pull(&mut c, &env.image_ref("rm/img", "a"))
        .await
        .expect("pull again");
    pull(&mut c, &env.image_ref("rm/img", "c"))
        .await
        .expect("pull again");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut cc = c.clone();
        let q = match i % 3 {
            0 => env.image_ref("rm/img", "a"),
            1 => id.clone(),
            _ => env.image_ref("rm/img", "c"),
        };
        tasks.push(tokio::spawn(async move { remove(&mut cc, &q).await }));
    }
    for t in tasks {
        t.await.unwrap().expect("concurrent RemoveImage");
    }
    assert!(status(&mut c, &id).await.is_none());
    let after = records_of(&env.containerd, "rm/img", &id);
    assert!(
        after.is_empty(),
        "records left after concurrent removes: {after:?}"
    );
    assert_eq!(list(&mut c).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn same_image_via_two_registries_is_one_id_and_one_removal() {
    let env = TestEnv::start();
    env.map_host("gcr.io");
    let img = small(31);
    env.push("two/img", Some("v1"), &img).await;
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;

    let local = env.image_ref("two/img", "v1");
    let remote = "gcr.io/two/img:v1".to_string();
    let a = pull(&mut c, &local).await.expect("pull local");
    let b = pull(&mut c, &remote).await.expect("pull gcr.io");
    assert_eq!(a, b);
    assert_eq!(a, img.config_digest);
    let l = list(&mut c).await;
    assert_eq!(l.len(), 1, "{l:#?}");
    let mut tags = l[0].repo_tags.clone();
    tags.sort();
    let mut want = vec![local.clone(), remote.clone()];
    want.sort();
    assert_eq!(tags, want);
    let mut digests = l[0].repo_digests.clone();
    digests.sort();
    let mut want_d = vec![
        env.digest_ref("two/img", &img.manifest_digest),
        format!("gcr.io/two/img@{}", img.manifest_digest),
    ];
    want_d.sort();
    assert_eq!(digests, want_d);
    assert_eq!(status(&mut c, &remote).await, status(&mut c, &local).await);
    // containerd's own CRI sees one image with both tags as well.
    let mut theirs = cri_client(&env.containerd.socket).await;
    let t = list(&mut theirs).await;
    assert_eq!(t.len(), 1, "{t:#?}");
    let mut ttags = t[0].repo_tags.clone();
    ttags.sort();
    assert_eq!(ttags, want);

    remove(&mut c, &remote).await.expect("remove via gcr.io");
    assert!(status(&mut c, &local).await.is_none(), "local tag survived");
    assert!(list(&mut c).await.is_empty());
    let left = records_of(&env.containerd, "two/img", &img.config_digest);
    assert!(left.is_empty(), "{left:?}");
}

// ---------------------------------------------------------------- out-of-band changes

#[tokio::test(flavor = "multi_thread")]
async fn out_of_band_ctr_changes_show_within_a_second() {
    let env = TestEnv::start();
    let img = small(41);
    let other = small(42);
    env.push("oob/img", Some("v1"), &img).await;
    env.push("oob/ctr", Some("v1"), &other).await;
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;

    let r = env.image_ref("oob/img", "v1");
    pull(&mut c, &r).await.expect("pull");
    let names = records_of(&env.containerd, "oob/img", &img.config_digest);
    assert_eq!(names.len(), 3, "{names:?}");
    // The pull's lease holds its snapshots until its blobs are committed in
    // the background: let that end first, so the collection the removal
    // below starts is over before ctr pulls an image sharing the base layer
    // (containerd's own unpacker fails if its parent snapshot is collected
    // under it).
    assert!(env.containerd.leases_settled().is_empty());
    let mut args = vec!["images", "rm"];
    args.extend(names.iter().map(String::as_str));
    env.containerd.ctr_ok(&args);
    let t0 = Instant::now();
    let gone = wait_for_async(
        || {
            let mut c = c.clone();
            let id = img.config_digest.clone();
            async move { !list(&mut c).await.iter().any(|i| i.id == id) }
        },
        Duration::from_secs(1),
    )
    .await;
    assert!(
        gone,
        "image removed with ctr still listed after {:?}",
        t0.elapsed()
    );
    assert!(status(&mut c, &r).await.is_none());

    // An image pulled with ctr appears (with its tag).
    let r2 = env.image_ref("oob/ctr", "v1");
    env.load_with_ctr(&r2);
    let t0 = Instant::now();
    let seen = wait_for_async(
        || {
            let mut c = c.clone();
            let r2 = r2.clone();
            let id = other.config_digest.clone();
            async move {
                list(&mut c)
                    .await
                    .iter()
                    .any(|i| i.id == id && i.repo_tags.contains(&r2))
            }
        },
        Duration::from_secs(1),
    )
    .await;
    assert!(
        seen,
        "image pulled with ctr not listed after {:?}",
        t0.elapsed()
    );
    let s = status(&mut c, &r2)
        .await
        .expect("status of ctr-pulled image");
    assert_eq!(s.id, other.config_digest);
    assert!(s.size > 0);
    // Same answer as containerd's own CRI for an image it did not get from us.
    let mut theirs = cri_client(&env.containerd.socket).await;
    let t = status(&mut theirs, &r2)
        .await
        .expect("containerd CRI status");
    assert_eq!((t.id, t.size, t.uid), (s.id.clone(), s.size, s.uid));
    // and RemoveImage removes ctr's records as well
    remove(&mut c, &r2).await.expect("remove");
    let left = records_of(&env.containerd, "oob/ctr", &other.config_digest);
    assert!(left.is_empty(), "{left:?}");
}

// ---------------------------------------------------------------- ImageFsInfo

#[tokio::test(flavor = "multi_thread")]
async fn image_fs_info_reports_the_snapshotter_root() {
    let env = TestEnv::start();
    let img = ImageBuilder::new()
        .layer(base_layer(), Compression::Gzip)
        .layer(Layer::random(256 * 1024, 51), Compression::Gzip)
        .build();
    env.push("fs/img", Some("v1"), &img).await;
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;

    let want = env
        .containerd
        .root
        .join("io.containerd.snapshotter.v1.overlayfs");
    assert!(want.is_dir());
    let u = fs_info(&mut c).await;
    assert_eq!(
        u.fs_id.as_ref().unwrap().mountpoint,
        want.display().to_string()
    );

    pull(&mut c, &env.image_ref("fs/img", "v1"))
        .await
        .expect("pull");
    let t_pull = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let mut last = None;
    let mut ok = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let u = fs_info(&mut c).await;
        let good = u.timestamp >= t_pull
            && u.used_bytes.as_ref().map(|b| b.value).unwrap_or(0) >= 256 * 1024
            && u.inodes_used.as_ref().map(|b| b.value).unwrap_or(0) > 0;
        last = Some(u);
        if good {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "no fresh sample with usage after the pull: {last:?}");
    let u = last.unwrap();
    assert_eq!(u.fs_id.unwrap().mountpoint, want.display().to_string());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(
        u.timestamp <= now && now - u.timestamp < 10_000_000_000,
        "timestamp {}",
        u.timestamp
    );
    // sampled in the background: the timestamp moves on (interval 200ms)
    tokio::time::sleep(Duration::from_millis(700)).await;
    let u2 = fs_info(&mut c).await;
    assert!(u2.timestamp > u.timestamp);
}

/// A pull or a removal is reflected by ImageFsInfo right away, not at the next
/// periodic sample (here an hour away).
#[tokio::test(flavor = "multi_thread")]
async fn image_fs_info_is_resampled_after_pull_and_remove() {
    let env = TestEnv::start();
    let img = ImageBuilder::new()
        .layer(base_layer(), Compression::Gzip)
        .layer(Layer::random(512 * 1024, 52), Compression::Gzip)
        .build();
    env.push("fs/resample", Some("v1"), &img).await;
    let d = cri_imaged!()
        .config(|c| c.imagefs_sample_interval = Duration::from_secs(3600))
        .start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let used = |u: &cri::FilesystemUsage| u.used_bytes.as_ref().map(|b| b.value).unwrap_or(0);
    let before = used(&fs_info(&mut c).await);

    let id = pull(&mut c, &env.image_ref("fs/resample", "v1"))
        .await
        .expect("pull");
    let mut after_pull = 0;
    for _ in 0..60 {
        after_pull = used(&fs_info(&mut c).await);
        if after_pull >= before + 512 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        after_pull >= before + 512 * 1024,
        "ImageFsInfo after the pull: {after_pull} bytes (before: {before})"
    );

    c.remove_image(cri::RemoveImageRequest { image: spec(&id) })
        .await
        .expect("remove");
    let mut after_remove = after_pull;
    for _ in 0..60 {
        after_remove = used(&fs_info(&mut c).await);
        if after_remove < after_pull {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        after_remove < after_pull,
        "ImageFsInfo after the removal: {after_remove} bytes (after the pull: {after_pull})"
    );
}

// ---------------------------------------------------------------- containerd outage

#[tokio::test(flavor = "multi_thread")]
async fn containerd_down_is_unavailable_then_recovers_without_restart() {
    let mut env = TestEnv::start();
    let img = small(61);
    let img2 = small(62);
    env.push("out/img", Some("v1"), &img).await;
    env.push("out/img2", Some("v1"), &img2).await;
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let r = env.image_ref("out/img", "v1");
    pull(&mut c, &r).await.expect("pull");
    let pid = d.pid();

    env.containerd.stop();
    let mut last = None;
    let mut down = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let r = c.list_images(cri::ListImagesRequest { filter: None }).await;
        down = matches!(&r, Err(s) if s.code() == Code::Unavailable);
        last = Some(r.map(|r| r.into_inner().images.len()));
        if down {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(down, "ListImages with containerd stopped: {last:?}");
    let e = c
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap_err();
    assert!(
        e.message().contains("containerd"),
        "message must name containerd: {e:?}"
    );
    let e = try_status(&mut c, &r).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("containerd"), "{e:?}");
    let e = remove(&mut c, &r).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = pull(&mut c, &env.image_ref("out/img2", "v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::Unavailable | Code::Internal | Code::Unknown),
        "{e:?}"
    );
    assert!(e.message().contains("containerd"), "{e:?}");
    // ImageFsInfo still answers from its cache (kubelet's eviction manager calls it).
    let _ = fs_info(&mut c).await;

    env.containerd.start_again();
    let up = wait_for_async(
        || {
            let mut c = c.clone();
            async move {
                c.list_images(cri::ListImagesRequest { filter: None })
                    .await
                    .is_ok()
            }
        },
        Duration::from_secs(10),
    )
    .await;
    assert!(up, "never recovered: {}", tail_file(&d.log, 30));
    assert_eq!(d.pid(), pid, "cri-imaged was not restarted");
    // Once it answers again it keeps answering: no "in sync" for a moment
    // and then "not in sync" because the event subscription had failed while
    // containerd was still coming up (seen once in CI).
    for i in 0..40 {
        if let Err(e) = try_status(&mut c, &r).await {
            panic!("call {i} after recovery: {e:?}\n{}", tail_file(&d.log, 30));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        status(&mut c, &r).await.expect("status after recovery").id,
        img.config_digest
    );
    assert_eq!(
        pull(&mut c, &env.image_ref("out/img2", "v1"))
            .await
            .expect("pull after recovery"),
        img2.config_digest
    );
    assert_eq!(list(&mut c).await.len(), 2);
}

// ---------------------------------------------------------------- bad requests

/// Two images (same layers, different Env) whose config digests share the
/// first 4 hex characters; returns them and the length of the common prefix.
fn colliding_pair() -> (BuiltImage, BuiltImage, usize) {
    let layer = base_layer();
    let mut seen: std::collections::HashMap<String, BuiltImage> = Default::default();
    for i in 0..100_000u32 {
        let img = ImageBuilder::new()
            .env(&format!("COLLIDE={i}"))
            .layer(layer.clone(), Compression::None)
            .build();
        let p = img.config_digest[7..11].to_string();
        if let Some(prev) = seen.remove(&p) {
            let a = &prev.config_digest[7..];
            let b = &img.config_digest[7..];
            let common = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
            return (prev, img, common);
        }
        seen.insert(p, img);
    }
    panic!("no 4-hex collision in 100000 configs");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_invalid_argument_and_the_server_keeps_serving() {
    let env = TestEnv::start();
    let (a, b, common) = colliding_pair();
    env.push("amb/a", Some("v1"), &a).await;
    env.push("amb/b", Some("v1"), &b).await;
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    assert_eq!(
        pull(&mut c, &env.image_ref("amb/a", "v1")).await.unwrap(),
        a.config_digest
    );
    assert_eq!(
        pull(&mut c, &env.image_ref("amb/b", "v1")).await.unwrap(),
        b.config_digest
    );

    // Empty image spec / no spec at all.
    for s in [None, spec("")] {
        assert_invalid_everywhere(&mut c, s).await;
    }
    // A 1 MB reference.
    let huge = format!("{}/{}:v1", env.registry_addr(), "a".repeat(1 << 20));
    let e = try_status(&mut c, &huge).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.code());
    assert!(
        e.message().len() < 4096,
        "the error must not echo the reference"
    );
    let e = pull(&mut c, &huge).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = remove(&mut c, &huge).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Upper-case repository.
    let upper = env.image_ref("Amb/A", "v1");
    for e in [
        try_status(&mut c, &upper).await.unwrap_err(),
        pull(&mut c, &upper).await.unwrap_err(),
        remove(&mut c, &upper).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    // Other malformed references.
    for q in [
        "a b",
        "busybox:",
        "busybox@sha256:zz",
        "-x",
        "busybox:bad:tag",
    ] {
        let e = try_status(&mut c, q).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{q}: {e:?}");
    }

    // Ambiguous short ID: a prefix shared by two image IDs.
    let prefix = &a.config_digest[7..11];
    for q in [prefix.to_string(), format!("sha256:{prefix}")] {
        let e = try_status(&mut c, &q).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{q}: {e:?}");
        assert!(e.message().contains("ambiguous"), "{q}: {e:?}");
        let e = remove(&mut c, &q).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "remove {q}: {e:?}");
        assert!(e.message().contains("ambiguous"), "{e:?}");
    }
    // Both still there; one more character tells them apart.
    assert_eq!(list(&mut c).await.len(), 2);
    let ua = &a.config_digest[7..7 + common + 1];
    let ub = &b.config_digest[7..7 + common + 1];
    if ua.len() >= 4 {
        assert_eq!(
            status(&mut c, ua).await.expect("unique prefix a").id,
            a.config_digest
        );
        assert_eq!(
            status(&mut c, ub).await.expect("unique prefix b").id,
            b.config_digest
        );
    }

    // Still serving.
    assert_eq!(
        status(&mut c, &env.image_ref("amb/a", "v1"))
            .await
            .unwrap()
            .id,
        a.config_digest
    );
    let mut fresh = d.client().await;
    assert_eq!(list(&mut fresh).await.len(), 2);
}

// ---------------------------------------------------------------- the socket

#[tokio::test(flavor = "multi_thread")]
async fn socket_mode_stale_socket_second_instance_and_sigterm() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let env = TestEnv::start();
    let mut d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o660,
        "default socket mode"
    );

    // A second instance on the live socket refuses to start.
    let mut second = Command::new(env!("CARGO_BIN_EXE_cri-imaged"))
        .args(["serve", "--config"])
        .arg(&d.config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_for(
        || matches!(second.try_wait(), Ok(Some(_))),
        Duration::from_secs(10),
    );
    if !exited {
        let _ = second.kill();
    }
    let out = second.wait_with_output().unwrap();
    assert!(exited, "a second instance kept running on a live socket");
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("another") && msg.contains(&d.socket.display().to_string()),
        "message: {msg}"
    );
    // The first one is unaffected.
    let mut c = d.client().await;
    list(&mut c).await;

    // A crash leaves a stale socket file; the next start replaces it.
    d.kill();
    assert!(d.socket.exists(), "SIGKILL leaves the socket file");
    assert!(std::os::unix::net::UnixStream::connect(&d.socket).is_err());
    d.start_again();
    d.wait_synced().await;
    assert_eq!(
        std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o7777,
        0o660
    );

    // SIGTERM: exit 0, socket removed.
    assert_eq!(d.stop(), Some(0), "{}", d.log_text());
    assert!(!d.socket.exists(), "socket left behind after SIGTERM");
}

#[test]
fn listen_path_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::Builder::new()
        .prefix("nsk-")
        .tempdir_in("/tmp")
        .unwrap();
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, b"precious").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cri-imaged"))
        .arg("serve")
        .arg("--listen")
        .arg(&path)
        .args(["--metrics-address", ""])
        .arg("--containerd-address")
        .arg(dir.path().join("no-containerd.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_for(
        || matches!(child.try_wait(), Ok(Some(_))),
        Duration::from_secs(10),
    );
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(exited && !out.status.success(), "started on a regular file");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a unix socket"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_mode_is_configurable() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::start();
    let d = cri_imaged!()
        .config(|c| c.socket_mode = "0600".into())
        .start(&env.containerd);
    d.wait_synced().await;
    assert_eq!(
        std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o7777,
        0o600
    );
}

// ---------------------------------------------------------------- --managed-containerd

/// PIDs whose command line mentions `needle`.
fn pids_mentioning(needle: &str) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                v.push(pid);
            }
        }
    }
    v
}

struct ManagedRun {
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Drop for ManagedRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Anything our run left behind (only processes rooted in our temp dir).
        for pid in pids_mentioning(&self.dir.path().display().to_string()) {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        unmount_under(self.dir.path(), false);
    }
}

fn spawn_managed(
    dir: &std::path::Path,
    cd_dir: &std::path::Path,
    sock: &std::path::Path,
    log: &std::path::Path,
) -> std::process::Child {
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_cri-imaged"))
        .arg("serve")
        .arg("--managed-containerd")
        .arg(cd_dir)
        .arg("--listen")
        .arg(sock)
        .args(["--metrics-address", ""])
        .arg("--registry-config-path")
        .arg(dir.join("certs.d"))
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .expect("start cri-imaged")
}

async fn wait_list_ok(sock: &std::path::Path, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    if !wait_for(
        || std::os::unix::net::UnixStream::connect(sock).is_ok(),
        within,
    ) {
        return false;
    }
    let mut c = cri_client(sock).await;
    while Instant::now() < deadline {
        if c.list_images(cri::ListImagesRequest { filter: None })
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_containerd_serves_and_stops_with_us() {
    let dir = tempfile::Builder::new()
        .prefix("mcd-")
        .tempdir_in("/tmp")
        .unwrap();
    let cd_dir = dir.path().join("cd");
    let sock = dir.path().join("s.sock");
    let log = dir.path().join("cri-imaged.log");
    let child = spawn_managed(dir.path(), &cd_dir, &sock, &log);
    let mut run = ManagedRun {
        dir,
        child: Some(child),
    };
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(20);
    let logs = |log: &std::path::Path, cd: &std::path::Path| {
        format!(
            "cri-imaged:\n{}\ncontainerd:\n{}",
            tail_file(log, 30),
            tail_file(&cd.join("containerd.log"), 30)
        )
    };
    assert!(
        wait_for(
            || std::os::unix::net::UnixStream::connect(&sock).is_ok(),
            Duration::from_secs(20)
        ),
        "socket never answered: {}",
        logs(&log, &cd_dir)
    );
    let mut c = cri_client(&sock).await;
    let mut ok = false;
    while Instant::now() < deadline {
        if c.list_images(cri::ListImagesRequest { filter: None })
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "ListImages not OK within 20 s: {}", logs(&log, &cd_dir));
    assert!(cd_dir.join("containerd.sock").exists());
    let cd_marker = cd_dir.join("config.toml").display().to_string();
    let cd_pids = pids_mentioning(&cd_marker);
    assert_eq!(cd_pids.len(), 1, "one managed containerd: {cd_pids:?}");
    let f = fs_info(&mut c).await;
    assert_eq!(
        f.fs_id.unwrap().mountpoint,
        std::fs::canonicalize(&cd_dir)
            .unwrap()
            .join("root/io.containerd.snapshotter.v1.overlayfs")
            .display()
            .to_string()
    );
    drop(c);

    // SIGTERM stops both.
    let mut child = run.child.take().unwrap();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let exited = wait_for(
        || matches!(child.try_wait(), Ok(Some(_))),
        Duration::from_secs(20),
    );
    if !exited {
        let _ = child.kill();
    }
    let st = child.wait().unwrap();
    assert!(
        exited,
        "cri-imaged did not exit on SIGTERM: {}",
        logs(&log, &cd_dir)
    );
    assert_eq!(st.code(), Some(0), "{}", logs(&log, &cd_dir));
    assert!(!sock.exists(), "socket left behind");
    let left = pids_mentioning(&cd_marker);
    assert!(left.is_empty(), "containerd still running: {left:?}");

    // Same directory again; then a crash (SIGKILL) of cri-imaged must not
    // leave its containerd running unsupervised.
    let _ = std::fs::remove_file(&sock);
    run.child = Some(spawn_managed(run.dir.path(), &cd_dir, &sock, &log));
    assert!(
        wait_list_ok(&sock, Duration::from_secs(20)).await,
        "second start on the same directory: {}",
        logs(&log, &cd_dir)
    );
    assert_eq!(pids_mentioning(&cd_marker).len(), 1);
    let mut child = run.child.take().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let gone = wait_for(
        || pids_mentioning(&cd_marker).is_empty(),
        Duration::from_secs(15),
    );
    assert!(
        gone,
        "managed containerd outlived a crashed cri-imaged: {:?}",
        pids_mentioning(&cd_marker)
    );
    // (ManagedRun's Drop cleans up if any assertion failed.)
}
