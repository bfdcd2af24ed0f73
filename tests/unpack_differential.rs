//! The native unpack writes the same filesystem as containerd's own applier.
//!
//! One containerd, two cri-imaged: one with `unpacker: containerd` (containerd's
//! diff service) in namespace `ref`, one native in `k8s.io`; snapshots are
//! namespaced, so each writes its own. Both pull an image whose layers are a
//! corpus of awkward cases; then every layer's snapshot directory and the
//! merged overlay view are compared entry by entry (type, mode, owner, size,
//! content hash, xattrs including overlay's, link target, device numbers,
//! hardlink groups, mtime).

use cri_imaged_test_rig::*;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::Digest;

/// A tar layer built entry by entry with full control of the headers.
struct T(tar::Builder<Vec<u8>>, BTreeSet<String>);

const MTIME: u64 = 1_650_000_000;

impl T {
    fn new() -> T {
        T(tar::Builder::new(Vec::new()), BTreeSet::new())
    }
    fn h(kind: tar::EntryType, mode: u32, size: u64, uid: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(MTIME);
        h.set_size(size);
        h
    }
    fn file_o(mut self, name: &str, data: &[u8], mode: u32, uid: u64) -> T {
        let mut h = T::h(tar::EntryType::Regular, mode, data.len() as u64, uid);
        self.0.append_data(&mut h, name, data).unwrap();
        self
    }
    fn file(self, name: &str, data: &[u8]) -> T {
        self.file_o(name, data, 0o644, 0)
    }
    fn dir_o(mut self, name: &str, mode: u32, uid: u64) -> T {
        let mut h = T::h(tar::EntryType::Directory, mode, 0, uid);
        self.0.append_data(&mut h, name, std::io::empty()).unwrap();
        self.1.insert(name.trim_end_matches('/').to_string());
        self
    }
    fn dir(self, name: &str) -> T {
        self.dir_o(name, 0o755, 0)
    }
    fn link(mut self, kind: tar::EntryType, name: &str, target: &str, mode: u32) -> T {
        let mut h = T::h(kind, mode, 0, 0);
        self.0.append_link(&mut h, name, target).unwrap();
        self
    }
    fn dev(mut self, kind: tar::EntryType, name: &str, major: u32, minor: u32) -> T {
        let mut h = T::h(kind, 0o640, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.0.append_data(&mut h, name, std::io::empty()).unwrap();
        self
    }
    fn pax(mut self, records: &[(&str, &[u8])]) -> T {
        self.0
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }
    fn layer(self) -> (Layer, BTreeSet<String>) {
        (Layer::from_tar(self.0.into_inner().unwrap()), self.1)
    }
}

/// The corpus: 5 layers, every case the issue lists.
fn corpus() -> Vec<(Layer, BTreeSet<String>, Compression)> {
    use tar::EntryType::*;
    let long = format!("deep/{}/{}", "d".repeat(120), "f".repeat(200));
    let l1 = T::new()
        .dir("bin/")
        .dir("etc/")
        .dir_o("tmp/", 0o1777, 0)
        .dir("data/")
        .dir("data/gone-dir/")
        .file("data/gone-dir/inner", b"inner")
        .file("data/gone", b"to be whited out")
        .file("data/keep", b"keep")
        .dir("opq/")
        .file("opq/a", b"a")
        .file("opq/b", b"b")
        .dir("opq/sub/")
        .file("opq/sub/c", b"c")
        .file_o("bin/su", b"#!setuid", 0o4755, 0)
        .file_o("bin/sg", b"#!setgid", 0o2755, 0)
        .file_o("home-file", b"owned", 0o600, 1000)
        .dir_o("home/", 0o750, 1000)
        .file("bin/tool", b"the tool")
        .link(Link, "etc/tool-hardlink", "bin/tool", 0o644)
        .link(Link, "home/tool-hardlink", "bin/tool", 0o644)
        .link(Symlink, "l1", "l2", 0o777)
        .link(Symlink, "l2", "l3", 0o777)
        .link(Symlink, "l3", "bin/tool", 0o777)
        .link(Symlink, "abs-link", "/etc/passwd", 0o777)
        .link(Symlink, "dangling", "../../nowhere", 0o777)
        .dir("dev/")
        .dev(Char, "dev/null", 1, 3)
        .dev(Block, "dev/loop0", 7, 0)
        .dev(Fifo, "dev/fifo", 0, 0)
        .pax(&[
            ("SCHILY.xattr.user.origin", b"layer1"),
            ("mtime", b"1650000000.123456789"),
        ])
        .file("etc/with-xattr", b"x")
        .pax(&[("SCHILY.xattr.user.dir", b"d")])
        .dir("etc/xdir/")
        .file("caf\u{e9}-\u{65e5}\u{672c}", b"non-ascii")
        .file(&long, b"long name")
        .file("swap", b"file then dir")
        .dir("swapdir/")
        .file("swapdir/child", b"dir then file")
        .file("empty", b"")
        .file("data/.wh.never-there", b"")
        .layer();
    let l2 = T::new()
        .dir("data/")
        .file("data/.wh.gone", b"")
        .file("data/.wh.gone-dir", b"")
        .file("opq/.wh..wh..opq", b"")
        .file("opq/new", b"repopulated")
        .dir("opq/sub/")
        .file("opq/sub/d", b"d")
        .dir("swap/")
        .file("swap/inside", b"now a dir")
        .file("swapdir", b"now a file")
        // etc/ is not in this layer: its attributes come from layer 1.
        .dir_o("etc/sub/", 0o700, 0)
        .file("etc/sub/new", b"new")
        .file_o("bin/su", b"#!setuid v2", 0o4750, 0)
        .layer();
    // An empty layer (just the end marker).
    let l3 = T::new().layer();
    let l4 = T::new()
        .dir("opq/")
        .file("opq/.wh.new", b"")
        .pax(&[("SCHILY.xattr.user.v", b"4")])
        .file("data/keep", b"keep v4")
        .file("swap", b"a file again")
        .link(Symlink, "l3", "etc/sub/new", 0o777)
        .dir_o("tmp/", 0o1777, 0)
        .file("tmp/.wh..wh..opq", b"")
        .layer();
    let l5 = T::new()
        .dir("etc/")
        .file("etc/last", b"top")
        // etc/xdir/ is not in this layer: it takes layer 1's xattr.
        .file("etc/xdir/added", b"in a lower directory")
        .layer();
    vec![
        (l1.0, l1.1, Compression::Gzip),
        (l2.0, l2.1, Compression::Zstd),
        (l3.0, l3.1, Compression::None),
        (l4.0, l4.1, Compression::Gzip),
        (l5.0, l5.1, Compression::Zstd),
    ]
}

/// Everything compared about one entry.
#[derive(Debug, PartialEq)]
struct Meta {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    content: String,
    link: String,
    rdev: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
    mtime: Option<(i64, i64)>,
    hardlinks: Vec<String>,
}

fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 64 << 10];
    let n = rustix::fs::llistxattr(p, &mut names).unwrap_or(0);
    for k in names[..n].split(|b| *b == 0).filter(|k| !k.is_empty()) {
        let k = String::from_utf8_lossy(k).to_string();
        let mut v = vec![0u8; 64 << 10];
        if let Ok(m) = rustix::fs::lgetxattr(p, k.as_str(), &mut v) {
            out.insert(k, v[..m].to_vec());
        }
    }
    out
}

/// Every entry under `root` (relative path -> Meta). `dir_times`: the
/// directories whose mtime is defined by the layer (named in its tar).
fn snapshot(root: &Path, dir_times: Option<&BTreeSet<String>>) -> BTreeMap<String, Meta> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, std::fs::Metadata)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            out.push((
                p.strip_prefix(root).unwrap().display().to_string(),
                m.clone(),
            ));
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut all = Vec::new();
    walk(root, root, &mut all);
    let mut by_inode: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (p, m) in &all {
        if !m.is_dir() && m.nlink() > 1 {
            by_inode.entry(m.ino()).or_default().push(p.clone());
        }
    }
    let mut out = BTreeMap::new();
    for (p, m) in all {
        let full = root.join(&p);
        let ft = m.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "other"
        };
        let whiteout = kind == "char" && m.rdev() == 0;
        let mtime = match kind {
            // Directories: only where the layer defines the time (others
            // were created or changed "now" by either applier).
            "dir" => dir_times
                .filter(|d| d.contains(&p))
                .map(|_| (m.mtime(), m.mtime_nsec())),
            // Whiteout devices are made "now" by either applier.
            _ if whiteout => None,
            _ => Some((m.mtime(), m.mtime_nsec())),
        };
        let content = if kind == "file" {
            hex::encode(sha2::Sha256::digest(std::fs::read(&full).unwrap()))
        } else {
            String::new()
        };
        let link = if kind == "symlink" {
            std::fs::read_link(&full).unwrap().display().to_string()
        } else {
            String::new()
        };
        let mut hardlinks = by_inode.get(&m.ino()).cloned().unwrap_or_default();
        hardlinks.sort();
        out.insert(
            p,
            Meta {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: if kind == "dir" { 0 } else { m.size() },
                content,
                link,
                rdev: m.rdev(),
                xattrs: xattrs(&full),
                mtime,
                hardlinks,
            },
        );
    }
    out
}

fn compare(what: &str, a: &BTreeMap<String, Meta>, b: &BTreeMap<String, Meta>) -> usize {
    let ka: BTreeSet<_> = a.keys().collect();
    let kb: BTreeSet<_> = b.keys().collect();
    assert_eq!(ka, kb, "{what}: different entries (containerd vs native)");
    for (p, ma) in a {
        assert_eq!(
            ma, &b[p],
            "{what}: {p} differs (left: containerd, right: native)"
        );
    }
    a.len()
}

/// The snapshot directories of the image's layers, bottom first, through a
/// view of the top chain (`ctr snapshots view` + `mounts`).
fn layer_dirs(c: &Containerd, ns: &str, top_chain: &str, n: usize) -> Vec<PathBuf> {
    let key = format!("diffview-{ns}");
    let out = c.ctr_ns(
        ns,
        &[
            "snapshots",
            "--snapshotter",
            "overlayfs",
            "view",
            "--mounts",
            &key,
            top_chain,
        ],
    );
    assert!(
        out.status.success(),
        "view: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lower = text
        .split(|ch: char| ",\"[]{}".contains(ch) || ch.is_whitespace())
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap_or_else(|| panic!("no lowerdir in {text:?}"));
    let mut dirs: Vec<PathBuf> = lower.split(':').map(PathBuf::from).collect();
    dirs.reverse();
    assert_eq!(dirs.len(), n, "{text}");
    dirs
}

/// Mount the layers read-only as one overlay (what a container sees).
fn mount_merged(dirs: &[PathBuf], at: &Path) {
    let lower: Vec<String> = dirs.iter().rev().map(|d| d.display().to_string()).collect();
    std::fs::create_dir_all(at).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={}", lower.join(":")))
        .arg(at)
        .status()
        .unwrap();
    assert!(st.success(), "mount overlay");
}

#[tokio::test(flavor = "multi_thread")]
async fn native_unpack_matches_containerds_applier_entry_by_entry() {
    let env = TestEnv::start();
    let layers = corpus();
    let mut b = ImageBuilder::new();
    for (l, _, c) in &layers {
        b = b.layer(l.clone(), *c);
    }
    let img = b.build();
    env.push("diff/corpus", Some("v1"), &img).await;
    let r = env.image_ref("diff/corpus", "v1");

    let (ours, theirs) = native_and_reference(&env).await;
    // Ours first: the content store is shared across namespaces, and blobs
    // already there are unpacked by containerd (nothing to stream).
    for d in [&ours, &theirs] {
        let mut c = d.client().await;
        assert_eq!(pull(&mut c, &r).await.expect("pull"), img.config_digest);
    }
    // Who wrote what, from the metrics.
    // Blobs are committed in the background once the unpack is done: these
    // small ones from spools, put in place as the store's blob files.
    let want_stored = format!(
        "cri_imaged_layer_blobs_stored_total{{via=\"blob_file\"}} {}",
        layers.len()
    );
    let mut m_ours = ours.metrics().await;
    for _ in 0..100 {
        if m_ours.contains(&want_stored) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        m_ours = ours.metrics().await;
    }
    let m_theirs = theirs.metrics().await;
    assert!(
        m_ours.contains(&format!(
            "cri_imaged_layers_unpacked_total{{unpacker=\"native\"}} {}",
            layers.len()
        )),
        "{m_ours}"
    );
    assert!(
        m_ours.contains(&want_stored),
        "small layer blobs are stored after the pull, through the Write API: {m_ours}"
    );
    // Every layer above the first was written ahead of the chain (staged)
    // and moved into its snapshot: the comparison below covers that path.
    assert!(
        m_ours.contains(&format!(
            "cri_imaged_layers_staged_total {}",
            layers.len() - 1
        )),
        "{m_ours}"
    );
    assert!(
        m_theirs.contains(&format!(
            "cri_imaged_layers_unpacked_total{{unpacker=\"containerd\"}} {}",
            layers.len()
        )),
        "{m_theirs}"
    );

    let top = img.chain_id();
    let ref_dirs = layer_dirs(&env.containerd, "ref", &top, layers.len());
    let our_dirs = layer_dirs(&env.containerd, "k8s.io", &top, layers.len());
    let mut compared = 0;
    for (i, (rd, od)) in ref_dirs.iter().zip(&our_dirs).enumerate() {
        let named = &layers[i].1;
        compared += compare(
            &format!("layer {}", i + 1),
            &snapshot(rd, Some(named)),
            &snapshot(od, Some(named)),
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let (ma, mb) = (tmp.path().join("ref"), tmp.path().join("ours"));
    mount_merged(&ref_dirs, &ma);
    mount_merged(&our_dirs, &mb);
    let merged = compare("merged view", &snapshot(&ma, None), &snapshot(&mb, None));
    for m in [&ma, &mb] {
        let _ = std::process::Command::new("umount").arg(m).status();
    }
    println!(
        "differential: {} layers, {compared} entries compared per layer directory, {merged} in the merged view: identical",
        layers.len()
    );
    assert!(
        compared >= 60 && merged >= 30,
        "corpus too small: {compared}/{merged}"
    );
}

/// A layer whose diff ID is not what the config says: DATA_LOSS, and no
/// snapshot (committed or active) is left for it.
#[tokio::test(flavor = "multi_thread")]
async fn diff_id_mismatch_commits_nothing_and_leaves_no_active_snapshot() {
    let env = TestEnv::start();
    let base = Layer::from_tar(T::new().dir("ok/").file("ok/f", b"fine").layer().0.tar);
    let mut bad = Layer::from_tar(
        T::new()
            .file("x", b"not what the config says")
            .layer()
            .0
            .tar,
    );
    bad.diff_id = format!("sha256:{}", "0".repeat(64));
    let img = ImageBuilder::new()
        .layer(base, Compression::Gzip)
        .layer(bad, Compression::Gzip)
        .build();
    env.push("diff/bad", Some("v1"), &img).await;
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    let e = pull(&mut c, &env.image_ref("diff/bad", "v1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e:?}");
    assert!(e.message().contains("diff ID"), "{}", e.message());
    // The active snapshot is removed by a task right after the failure.
    let chains = img.chain_ids();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let keys = env.containerd.snapshot_keys();
        let left: Vec<_> = keys
            .iter()
            .filter(|k| k.starts_with("extract-crii-"))
            .collect();
        if left.is_empty() {
            assert!(
                !keys.contains(&chains[1]),
                "the bad layer was committed: {keys:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "active snapshots left: {left:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(env.containerd.image_names().is_empty(), "no image record");
    // The bad layer was written ahead into a staging directory: gone too.
    let staging = env
        .containerd
        .root
        .join("io.containerd.snapshotter.v1.overlayfs/cri-imaged-staging");
    let empty = || {
        std::fs::read_dir(&staging)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    };
    assert!(
        wait_for(empty, std::time::Duration::from_secs(10)),
        "staged files left in {}",
        staging.display()
    );
}

/// `discard_unpacked_layers`: only the snapshots stay. Layer blobs never
/// reach the content store; the image is complete for both CRIs, a second
/// pull downloads nothing, and it removes as usual.
#[tokio::test(flavor = "multi_thread")]
async fn discard_unpacked_layers_keeps_only_snapshots() {
    let env = TestEnv::start();
    let img = ImageBuilder::new()
        .layer(Layer::from_files(&[("a/one", b"1")]), Compression::Gzip)
        .layer(Layer::from_files(&[("b/two", b"2")]), Compression::Zstd)
        .build();
    env.push("diff/discard", Some("v1"), &img).await;
    let r = env.image_ref("diff/discard", "v1");
    let d = cri_imaged!()
        .config(|c| c.discard_unpacked_layers = true)
        .start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    assert_eq!(pull(&mut c, &r).await.expect("pull"), img.config_digest);
    let content = env.containerd.content_digests();
    for l in img.layer_digests() {
        assert!(
            !content.contains(&l),
            "layer blob {l} was stored: {content:?}"
        );
    }
    assert!(content.contains(&img.config_digest) && content.contains(&img.manifest_digest));
    assert!(env.containerd.snapshot_keys().contains(&img.chain_id()));
    // Both CRIs see a complete image.
    assert_eq!(
        status(&mut c, &r).await.expect("our status").id,
        img.config_digest
    );
    let mut theirs = cri_client(&env.containerd.socket).await;
    assert_eq!(
        status(&mut theirs, &r)
            .await
            .expect("containerd's status")
            .id,
        img.config_digest
    );
    // A second pull finds it here: nothing is downloaded again.
    let fetched = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("cri_imaged_layers_fetched_total "))
            .map(str::to_string)
    };
    let before = fetched(&d.metrics().await);
    assert_eq!(
        pull(&mut c, &r).await.expect("pull again"),
        img.config_digest
    );
    assert_eq!(
        fetched(&d.metrics().await),
        before,
        "layers downloaded again"
    );
    remove(&mut c, &r).await.expect("remove");
    assert!(status(&mut c, &r).await.is_none());
}

/// Where a layer's compressed blob goes during the pull: a small one (under
/// 32 MiB) into a spool of our own (no content-store transaction while the
/// snapshots are being made); a large one straight into containerd's ingest
/// file. Once the pull is done, both are put in place as the content store's
/// blob files (verified by us, read-only, no ingest left) and containerd
/// records them with their labels without reading them.
#[tokio::test(flavor = "multi_thread")]
async fn small_blobs_are_spooled_large_ones_go_into_containerds_ingest() {
    let env = TestEnv::start();
    let img = ImageBuilder::new()
        .layer(Layer::random(64 << 10, 71), Compression::Gzip)
        .layer(Layer::random(33 << 20, 72), Compression::None)
        .build();
    env.push("diff/sizes", Some("v1"), &img).await;
    let d = cri_imaged!().start(&env.containerd);
    d.wait_synced().await;
    let mut c = d.client().await;
    pull(&mut c, &env.image_ref("diff/sizes", "v1"))
        .await
        .expect("pull");
    let want = [
        // The second layer was written ahead of its snapshot, then moved in.
        "cri_imaged_layers_staged_total 1",
        r#"cri_imaged_layer_blobs_stored_total{via="blob_file"} 2"#,
        r#"cri_imaged_layer_blobs_stored_total{via="ingest_file"} 0"#,
        r#"cri_imaged_layer_blobs_stored_total{via="write_api"} 0"#,
        r#"cri_imaged_layers_unpacked_total{unpacker="native"} 2"#,
    ];
    let mut m = d.metrics().await;
    for _ in 0..100 {
        if want.iter().all(|w| m.contains(w)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        m = d.metrics().await;
    }
    for w in want {
        assert!(m.contains(w), "{w}:\n{m}");
    }
    let content = env.containerd.root.join("io.containerd.content.v1.content");
    let listed = env.containerd.ctr_ok(&["content", "ls"]);
    for (l, diff_id) in img.layer_digests().iter().zip(&img.diff_ids) {
        assert!(env.containerd.has_content(l), "{l} not stored");
        // The blob file: the verified bytes, read-only as containerd leaves it.
        let file = content
            .join("blobs/sha256")
            .join(l.trim_start_matches("sha256:"));
        let meta = std::fs::metadata(&file).expect("blob file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o444, "{l}");
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes))),
            *l
        );
        // containerd recorded it with the labels the commit carried.
        let line = listed
            .lines()
            .find(|x| x.starts_with(l.as_str()))
            .unwrap_or_else(|| panic!("{l} not listed:\n{listed}"));
        assert!(
            line.contains(&format!("containerd.io/uncompressed={diff_id}")),
            "{line}"
        );
    }
    env.containerd.leases_settled();
    // No ingest is left behind (the large layer's was dropped once its file
    // was in place), and no copy in cri-imaged's temporary directory.
    let ingests = std::fs::read_dir(content.join("ingest"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(ingests, 0, "ingests left");
    assert!(std::fs::read_dir(content.join("cri-imaged-tmp"))
        .map(|d| d.count() == 0)
        .unwrap_or(true));
}

/// Two cri-imaged on one containerd, in sync: the native unpack in `k8s.io`
/// and the reference, containerd's diff service (`unpacker: containerd`), in
/// `ref` (snapshots are namespaced, so each writes its own).
async fn native_and_reference(env: &TestEnv) -> (CriImaged, CriImaged) {
    let theirs = cri_imaged!()
        .config(|c| {
            c.unpacker = cri_imaged::config::Unpacker::Containerd;
            c.containerd_namespace = "ref".into();
        })
        .start(&env.containerd);
    let ours = cri_imaged!().start(&env.containerd);
    for d in [&ours, &theirs] {
        d.wait_synced().await;
    }
    (ours, theirs)
}

/// The directory names a layer's tar holds (cleaned, no trailing slash):
/// the directories whose mtime the layer defines.
fn tar_dir_names(blob: &[u8], media_type: &str) -> BTreeSet<String> {
    let r: Box<dyn std::io::Read> = if media_type.contains("zstd") {
        Box::new(zstd::stream::read::Decoder::new(blob).unwrap())
    } else if media_type.contains("gzip") {
        Box::new(flate2::read::GzDecoder::new(blob))
    } else {
        Box::new(blob)
    };
    let mut a = tar::Archive::new(r);
    let mut out = BTreeSet::new();
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        if e.header().entry_type().is_dir() {
            let p = e.path().unwrap().display().to_string();
            let p = p.trim_start_matches("./").trim_end_matches('/').to_string();
            if !p.is_empty() && p != "." {
                out.insert(p);
            }
        }
    }
    out
}

/// The same comparison on real images (scripts/build-real-images.sh: Debian
/// content by mmdebstrap, apt and buildah: a package install layer, a file
/// capability, hardlinks, 137 whiteouts and an opaque directory, zstd
/// layers, 20,803 small files). The corpus directory is
/// `CRI_IMAGED_REAL_IMAGES` (default `target/real-images`); scripts/test.sh
/// builds it first. Without it the test says so and passes, unless
/// `CRI_IMAGED_REQUIRE_REAL_IMAGES` is set (the test command sets it).
#[tokio::test(flavor = "multi_thread")]
async fn real_images_unpack_like_containerds_applier() {
    let dir = std::env::var("CRI_IMAGED_REAL_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/real-images"));
    let mut layouts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("index.json").exists())
                .collect()
        })
        .unwrap_or_default();
    layouts.sort();
    // Single-layer images are the bottom layer of the others.
    let images: Vec<(String, BuiltImage)> = layouts
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            (
                name,
                BuiltImage::from_oci_layout(p, None).expect("OCI layout"),
            )
        })
        .filter(|(_, i)| i.blobs.len() > 1)
        .collect();
    if images.is_empty() {
        assert!(
            std::env::var_os("CRI_IMAGED_REQUIRE_REAL_IMAGES").is_none(),
            "no real images in {} (scripts/build-real-images.sh)",
            dir.display()
        );
        eprintln!(
            "skipped: no real images in {} (run scripts/build-real-images.sh)",
            dir.display()
        );
        return;
    }
    let env = TestEnv::start();
    let (ours, theirs) = native_and_reference(&env).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut summary = Vec::new();
    for (k, (name, img)) in images.iter().enumerate() {
        let repo = format!("real/{}", name.to_lowercase());
        env.push(&repo, Some("v1"), img).await;
        let r = env.image_ref(&repo, "v1");
        // Ours first: a blob already in the content store is applied by containerd.
        for d in [&ours, &theirs] {
            let mut c = d.client().await;
            assert_eq!(
                pull(&mut c, &r).await.expect("pull"),
                img.config_digest,
                "{name}"
            );
        }
        let n = img.blobs.len();
        let top = img.chain_id();
        let ref_dirs = layer_dirs(&env.containerd, "ref", &top, n);
        let our_dirs = layer_dirs(&env.containerd, "k8s.io", &top, n);
        let mut compared = 0;
        for (i, (rd, od)) in ref_dirs.iter().zip(&our_dirs).enumerate() {
            let named = tar_dir_names(&img.blobs[i].1, &img.blobs[i].2);
            compared += compare(
                &format!("{name} layer {}", i + 1),
                &snapshot(rd, Some(&named)),
                &snapshot(od, Some(&named)),
            );
        }
        let (ma, mb) = (
            tmp.path().join(format!("ref{k}")),
            tmp.path().join(format!("ours{k}")),
        );
        mount_merged(&ref_dirs, &ma);
        mount_merged(&our_dirs, &mb);
        let merged = compare(
            &format!("{name} merged view"),
            &snapshot(&ma, None),
            &snapshot(&mb, None),
        );
        for m in [&ma, &mb] {
            let _ = std::process::Command::new("umount").arg(m).status();
        }
        for ns in ["ref", "k8s.io"] {
            let _ = env.containerd.ctr_ns(
                ns,
                &[
                    "snapshots",
                    "--snapshotter",
                    "overlayfs",
                    "rm",
                    &format!("diffview-{ns}"),
                ],
            );
        }
        summary.push(format!(
            "{name}: {n} layers, {compared} entries per layer directory, {merged} merged"
        ));
    }
    let m = ours.metrics().await;
    assert!(
        !m.contains("cri_imaged_layers_unpacked_total{unpacker=\"native\"} 0"),
        "nothing was unpacked natively: {m}"
    );
    println!(
        "differential on real images, identical: {}",
        summary.join("; ")
    );
}
