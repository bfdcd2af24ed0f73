//! Hostile layers through the whole pull, against a real containerd and
//! docker-registry: a decompression bomb, a layer of a million entries, the
//! configured limits, malformed names, a disk that fills in the middle of a
//! layer and a spool directory that fills. Each must end with a clear gRPC
//! error naming the layer and the limit, no image record, no snapshot or
//! staging directory left, the space given back, and memory bounded.
//!
//!   cargo test --test hostile_layers -- --nocapture
//!   cargo test --test hostile_layers -- --ignored --nocapture   (the 1,000,000 entries written)

use cri_imaged_test_rig::image::compress;
use cri_imaged_test_rig::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::Code;

/// A fake diff ID (these pulls fail before it is checked).
const FAKE_DIFF_ID: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// `members` gzip members of 1 MiB of zeros each (about 1 KiB apiece).
fn gzip_bomb(members: usize) -> Vec<u8> {
    let one = compress(&vec![0u8; 1 << 20], Compression::Gzip);
    one.repeat(members)
}

/// A tar of `n` empty files in directories of 1,000, written header by
/// header (the tar crate's builder takes minutes for a million in a debug build).
fn many_files_tar(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 512 + (n / 1000 + 2) * 512 + 1024);
    let mut h = tar::Header::new_ustar();
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    for i in 0..n {
        if i % 1000 == 0 {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_path(format!("d{}/", i / 1000)).unwrap();
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
        }
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_path(format!("d{}/f{}", i / 1000, i % 1000)).unwrap();
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Peak resident memory of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The pull failed cleanly: no record anywhere, no unpack snapshot, no
/// staging directory, nothing in the spool, and the daemon still answers.
async fn assert_nothing_left(d: &CriImaged, cd: &Containerd, r: &str, spool: &Path) {
    let mut c = d.client().await;
    assert!(status(&mut c, r).await.is_none(), "{r} has a record");
    assert!(
        !cd.image_names().iter().any(|n| n == r),
        "{r} in containerd"
    );
    // The unfinished snapshot and staging directories go right after the
    // error is answered (in the background): a few seconds at most.
    let active = || {
        let snaps = cd.ctr_ok(&["snapshots", "--snapshotter", &cd.snapshotter, "ls"]);
        let v: Vec<String> = snaps
            .lines()
            .filter(|l| l.ends_with("Active"))
            .map(String::from)
            .collect();
        v
    };
    let staging = cd
        .root
        .join(format!("io.containerd.snapshotter.v1.{}", cd.snapshotter))
        .join("cri-imaged-staging");
    let staged = || {
        let v: Vec<PathBuf> = std::fs::read_dir(&staging)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        v
    };
    wait_for(
        || active().is_empty() && staged().is_empty(),
        Duration::from_secs(15),
    );
    assert!(active().is_empty(), "snapshots left: {:?}", active());
    assert!(staged().is_empty(), "staging left: {:?}", staged());
    let spooled: Vec<_> = std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(spooled.is_empty(), "spool left: {spooled:?}");
    // Still serving (list panics on an error).
    list(&mut c).await;
}

/// A daemon with its own spool directory (checked for leftovers).
fn start(cd: &Containerd, spool: &Path, f: impl FnOnce(&mut Config) + 'static) -> CriImaged {
    let spool = spool.to_path_buf();
    cri_imaged!()
        .config(move |c| {
            c.spool_dir = spool;
            f(c)
        })
        .start(cd)
}

fn small_image(seed: u64) -> BuiltImage {
    ImageBuilder::new()
        .layer(Layer::random(64 << 10, seed), Compression::Gzip)
        .build()
}

#[tokio::test(flavor = "multi_thread")]
async fn decompression_bomb_is_resource_exhausted_with_the_default_limits() {
    let env = TestEnv::start();
    let spool = tempfile::tempdir().unwrap();
    // 300 MiB of zeros in about 300 KiB: past the 256 MiB floor.
    let bomb = gzip_bomb(300);
    let digest = sha256_digest(&bomb);
    println!("bomb: {} bytes compressed, 300 MiB inflated", bomb.len());
    let img = ImageBuilder::new()
        .layer(Layer::random(32 << 10, 1), Compression::Gzip)
        .layer_blob(FAKE_DIFF_ID, bomb, Compression::Gzip)
        .build();
    env.push("hostile/bomb", Some("v1"), &img).await;
    env.push("hostile/good", Some("v1"), &small_image(2)).await;
    let d = start(&env.containerd, spool.path(), |_| {});
    d.wait_synced().await;
    let mut c = d.client().await;
    let r = env.image_ref("hostile/bomb", "v1");
    let t = Instant::now();
    let e = pull(&mut c, &r).await.expect_err("a bomb must be refused");
    println!(
        "bomb: {:?} after {:?}: {}",
        e.code(),
        t.elapsed(),
        e.message()
    );
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(
        e.message().contains(&digest),
        "names the layer: {}",
        e.message()
    );
    assert!(
        e.message().contains("limits.layer_expansion_ratio"),
        "{}",
        e.message()
    );
    assert_nothing_left(&d, &env.containerd, &r, spool.path()).await;
    let kib = peak_rss_kib(d.pid().unwrap());
    println!("bomb: cri-imaged peak RSS {} MiB", kib / 1024);
    assert!(kib < 256 << 10, "peak RSS {kib} KiB");
    pull(&mut c, &env.image_ref("hostile/good", "v1"))
        .await
        .expect("the next pull works");
}

/// Push an image whose one layer holds `n` empty files; returns (ref, digest).
async fn push_many_files(env: &TestEnv, repo: &str, n: usize) -> (String, String) {
    let t = Instant::now();
    let layer = Layer::from_tar(many_files_tar(n));
    let blob = compress(&layer.tar, Compression::Gzip);
    let digest = sha256_digest(&blob);
    println!(
        "{n} entries: tar {} MiB, gzip {} KiB, built in {:?}",
        layer.tar.len() >> 20,
        blob.len() >> 10,
        t.elapsed()
    );
    let img = ImageBuilder::new()
        .layer_blob(&layer.diff_id, blob, Compression::Gzip)
        .build();
    env.push(repo, Some("v1"), &img).await;
    (env.image_ref(repo, "v1"), digest)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_million_entries_stop_at_the_entry_limit_in_bounded_memory() {
    let env = TestEnv::start();
    let spool = tempfile::tempdir().unwrap();
    let (r, digest) = push_many_files(&env, "hostile/million", 1_000_000).await;
    let d = start(&env.containerd, spool.path(), |_| {});
    d.wait_synced().await;
    let mut c = d.client().await;
    let t = Instant::now();
    let e = pull(&mut c, &r).await.expect_err("past the entry limit");
    let kib = peak_rss_kib(d.pid().unwrap());
    println!(
        "1,000,000 entries: {:?} after {:?}, peak RSS {} MiB: {}",
        e.code(),
        t.elapsed(),
        kib / 1024,
        e.message()
    );
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains(&digest), "{}", e.message());
    assert!(e
        .message()
        .contains("more than 500000 entries (limits.layer_max_entries)"));
    assert!(kib < 256 << 10, "peak RSS {kib} KiB");
    assert_nothing_left(&d, &env.containerd, &r, spool.path()).await;
}

/// The same layer written whole (the limit raised): memory stays bounded
/// however many entries a layer has. Minutes in a debug build.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn a_million_entries_written_in_bounded_memory() {
    let env = TestEnv::start();
    let spool = tempfile::tempdir().unwrap();
    let (r, _) = push_many_files(&env, "hostile/million", 1_000_000).await;
    let d = start(&env.containerd, spool.path(), |c| {
        c.limits.layer_max_entries = 2_000_000;
        c.limits.layer_expansion_ratio = 1000;
    });
    d.wait_synced().await;
    let mut c = d.client().await;
    let t = Instant::now();
    pull(&mut c, &r).await.expect("pull with raised limits");
    let kib = peak_rss_kib(d.pid().unwrap());
    println!(
        "1,000,000 entries written in {:?}, peak RSS {} MiB",
        t.elapsed(),
        kib / 1024
    );
    assert!(kib < 256 << 10, "peak RSS {kib} KiB");
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_limits_name_the_layer_and_the_setting() {
    let env = TestEnv::start();
    let spool = tempfile::tempdir().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..60)
        .map(|i| (format!("f{i}"), vec![b'x'; 40 << 10]))
        .collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), &b[..])).collect();
    let wide = ImageBuilder::new()
        .layer(Layer::from_files(&refs), Compression::Gzip)
        .build();
    let deep_name: String = (0..12).map(|i| format!("d{i}/")).collect::<String>() + "f";
    let deep = ImageBuilder::new()
        .layer(
            Layer::from_files(&[(&deep_name, b"deep")]),
            Compression::Gzip,
        )
        .build();
    env.push("hostile/wide", Some("v1"), &wide).await;
    env.push("hostile/deep", Some("v1"), &deep).await;
    let d = start(&env.containerd, spool.path(), |c| {
        c.limits.layer_max_entries = 50;
        c.limits.layer_max_depth = 10;
    });
    d.wait_synced().await;
    let mut c = d.client().await;
    for (repo, img, code, setting) in [
        (
            "hostile/wide",
            &wide,
            Code::ResourceExhausted,
            "limits.layer_max_entries",
        ),
        (
            "hostile/deep",
            &deep,
            Code::InvalidArgument,
            "limits.layer_max_depth",
        ),
    ] {
        let r = env.image_ref(repo, "v1");
        let e = pull(&mut c, &r).await.expect_err("past a limit");
        println!("{repo}: {:?}: {}", e.code(), e.message());
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(e.message().contains(setting), "{}", e.message());
        assert!(e.message().contains(&img.blobs[0].0), "{}", e.message());
        assert_nothing_left(&d, &env.containerd, &r, spool.path()).await;
    }
    // The bytes of a whole pull: 2.4 MiB of files, 1 MiB allowed.
    let d2 = start(&env.containerd, spool.path(), |c| {
        c.limits.pull_max_bytes = 1 << 20;
    });
    d2.wait_synced().await;
    let mut c2 = d2.client().await;
    let r = env.image_ref("hostile/wide", "v1");
    let e = pull(&mut c2, &r).await.expect_err("past the pull's bytes");
    println!("pull bytes: {:?}: {}", e.code(), e.message());
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("limits.pull_max_bytes"),
        "{}",
        e.message()
    );
    assert_nothing_left(&d2, &env.containerd, &r, spool.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_layers_are_invalid_argument() {
    let env = TestEnv::start();
    let spool = tempfile::tempdir().unwrap();
    let long = format!("dir/{}", "n".repeat(300));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(4);
    b.append_data(&mut h, &long, &b"long"[..]).unwrap();
    let long_name = Layer::from_tar(b.into_inner().unwrap());
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    b.append_pax_extensions([("path", &b"a/.wh.."[..])])
        .unwrap();
    b.append_data(&mut h, "placeholder", std::io::empty())
        .unwrap();
    let bad_whiteout = Layer::from_tar(b.into_inner().unwrap());
    let base = Layer::from_files(&[("a/keep", b"k")]);
    for (repo, layer) in [
        ("hostile/longname", long_name),
        ("hostile/whiteout", bad_whiteout),
    ] {
        let img = ImageBuilder::new()
            .layer(base.clone(), Compression::Gzip)
            .layer(layer, Compression::Gzip)
            .build();
        env.push(repo, Some("v1"), &img).await;
    }
    let d = start(&env.containerd, spool.path(), |_| {});
    d.wait_synced().await;
    let mut c = d.client().await;
    for repo in ["hostile/longname", "hostile/whiteout"] {
        let r = env.image_ref(repo, "v1");
        let e = pull(&mut c, &r).await.expect_err("a malformed layer");
        println!("{repo}: {:?}: {}", e.code(), e.message());
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert_nothing_left(&d, &env.containerd, &r, spool.path()).await;
    }
}

fn free_bytes(p: &Path) -> u64 {
    let s = rustix::fs::statvfs(p).unwrap();
    s.f_bavail * s.f_frsize
}

/// Fill `dir` until `leave` bytes are free; returns the filler file.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0x55u8; 1 << 20];
    while free_bytes(dir) > leave + (1 << 20) {
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
    }
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_full_in_the_middle_of_a_layer() {
    let env = TestEnv::start_with(ContainerdOpts::default().root_tmpfs(128 << 20), None);
    let spool = tempfile::tempdir().unwrap();
    // 48 MiB of text that gzips to well under 1 MiB: the blob fits, its
    // files do not.
    let line: Vec<u8> = (0..48 << 20)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz\n"[i % 27])
        .collect();
    let files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| (format!("data/f{i}"), line[..4 << 20].to_vec()))
        .collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), &b[..])).collect();
    let img = ImageBuilder::new()
        .layer(Layer::from_files(&refs), Compression::Gzip)
        .build();
    println!(
        "disk full: layer blob {} KiB, 48 MiB of files",
        img.blobs[0].1.len() >> 10
    );
    env.push("hostile/disk", Some("v1"), &img).await;
    let d = start(&env.containerd, spool.path(), |_| {});
    d.wait_synced().await;
    let root = env.containerd.root.clone();
    let filler = fill(&root, 16 << 20);
    let free_before = free_bytes(&root);
    let mut c = d.client().await;
    let r = env.image_ref("hostile/disk", "v1");
    let e = pull(&mut c, &r)
        .await
        .expect_err("the disk fills mid-layer");
    println!("disk full: {:?}: {}", e.code(), e.message());
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert_nothing_left(&d, &env.containerd, &r, spool.path()).await;
    // The space comes back (containerd collects the pull's lease).
    let back = wait_for(
        || free_bytes(&root) + (2 << 20) >= free_before,
        Duration::from_secs(20),
    );
    println!(
        "disk full: free before the pull {} KiB, after {} KiB",
        free_before >> 10,
        free_bytes(&root) >> 10
    );
    if !back {
        let du = std::process::Command::new("du")
            .args(["-a", "-k", "-d", "4"])
            .arg(&root)
            .output()
            .unwrap();
        let snaps = env.containerd.ctr_ok(&["snapshots", "ls"]);
        let leases = env.containerd.ctr_ok(&["leases", "ls"]);
        panic!(
            "space not given back:\n{}\n{snaps}\n{leases}",
            String::from_utf8_lossy(&du.stdout)
        );
    }
    std::fs::remove_file(filler).unwrap();
    let id = pull(&mut c, &r)
        .await
        .expect("the pull after space is freed");
    assert_eq!(id, img.config_digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn spool_directory_full_is_resource_exhausted() {
    let env = TestEnv::start();
    let spool = Tmpfs::mount(2 << 20);
    // A 6 MiB layer (under 32 MiB: spooled as a named file).
    let img = ImageBuilder::new()
        .layer(Layer::random(6 << 20, 7), Compression::Gzip)
        .build();
    env.push("hostile/spool", Some("v1"), &img).await;
    let d = start(&env.containerd, spool.path(), |_| {});
    d.wait_synced().await;
    let mut c = d.client().await;
    let r = env.image_ref("hostile/spool", "v1");
    let e = pull(&mut c, &r).await.expect_err("the spool fills");
    println!("spool full: {:?}: {}", e.code(), e.message());
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert_nothing_left(&d, &env.containerd, &r, spool.path()).await;
    let ok = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(spool.path())
        .status()
        .unwrap();
    assert!(ok.success());
    let id = pull(&mut c, &r)
        .await
        .expect("the pull once the spool has room");
    assert_eq!(id, img.config_digest);
}
