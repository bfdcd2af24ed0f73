//! The applier on a temporary directory: what it writes, and that nothing a
//! layer holds gets outside the root. Needs root (chown, mknod, trusted xattrs).

use super::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

/// A tar stream built entry by entry.
struct T(tar::Builder<Vec<u8>>);

impl T {
    fn new() -> T {
        T(tar::Builder::new(Vec::new()))
    }
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(size);
        h
    }
    fn file(mut self, name: &str, data: &[u8]) -> T {
        let mut h = T::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        self.0.append_data(&mut h, name, data).unwrap();
        self
    }
    fn file_with(mut self, name: &str, data: &[u8], f: impl FnOnce(&mut tar::Header)) -> T {
        let mut h = T::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        f(&mut h);
        self.0.append_data(&mut h, name, data).unwrap();
        self
    }
    fn dir(mut self, name: &str, mode: u32) -> T {
        let mut h = T::header(tar::EntryType::Directory, mode, 0);
        self.0.append_data(&mut h, name, io::empty()).unwrap();
        self
    }
    fn link(mut self, kind: tar::EntryType, name: &str, target: &str) -> T {
        let mut h = T::header(kind, 0o777, 0);
        self.0.append_link(&mut h, name, target).unwrap();
        self
    }
    fn symlink(self, name: &str, target: &str) -> T {
        self.link(tar::EntryType::Symlink, name, target)
    }
    /// As real tar writers do: the header repeats the file's owner and mode.
    fn hardlink_as(mut self, name: &str, target: &str, uid: u64, gid: u64, mode: u32) -> T {
        let mut h = T::header(tar::EntryType::Link, mode, 0);
        h.set_uid(uid);
        h.set_gid(gid);
        self.0.append_link(&mut h, name, target).unwrap();
        self
    }
    fn hardlink(self, name: &str, target: &str) -> T {
        self.hardlink_as(name, target, 0, 0, 0o644)
    }
    fn pax(mut self, records: &[(&str, &[u8])]) -> T {
        self.0
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }
    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

struct Dirs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

/// `<tmp>/root` (the snapshot) and `<tmp>/outside/secret` (must never change).
fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    Dirs {
        _tmp: tmp,
        root,
        outside,
    }
}

fn apply(root: &Path, tar: &[u8], w: Whiteouts) -> Result<ApplyStats, LayerError> {
    apply_with(root, tar, w, &[])
}

fn apply_with(
    root: &Path,
    tar: &[u8],
    w: Whiteouts,
    parents: &[PathBuf],
) -> Result<ApplyStats, LayerError> {
    apply_tar(
        root,
        tar,
        &ApplyOptions {
            lower_fds: &[],
            whiteouts: w,
            parents,
            cancel: None,
            limits: Limits::default(),
        },
    )
}

/// Into an overlay upper directory above the one lower layer `lower`.
fn apply_over(root: &Path, tar: &[u8], lower: &Path) -> Result<ApplyStats, LayerError> {
    apply_with(root, tar, Whiteouts::Overlay, &[lower.to_path_buf()])
}

/// Every path under `dir` (relative), sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn outside_untouched(d: &Dirs) {
    assert_eq!(
        tree(&d.outside),
        vec!["secret".to_string()],
        "outside changed"
    );
    assert_eq!(std::fs::read(d.outside.join("secret")).unwrap(), b"secret");
    assert_eq!(
        std::fs::metadata(d.outside.join("secret")).unwrap().nlink(),
        1
    );
}

#[test]
fn writes_files_dirs_links_devices_with_attributes() {
    let d = dirs();
    let tar = T::new()
        .dir("etc/", 0o755)
        .file_with("etc/passwd", b"root:x:0:0", |h| {
            h.set_uid(1000);
            h.set_gid(1001);
            h.set_mode(0o4755);
        })
        .symlink("etc/link", "passwd")
        .hardlink_as("etc/hard", "etc/passwd", 1000, 1001, 0o4755)
        .pax(&[("SCHILY.xattr.user.test", b"v1")])
        .file("etc/xattr", b"x")
        .pax(&[("path", "d\u{e9}j\u{e0}/\u{1F600}".as_bytes())])
        .file("ignored-name", b"unicode")
        .file(&format!("long/{}", "n".repeat(200)), b"long")
        .bytes();
    let mut with_dev = tar::Builder::new(Vec::new());
    let mut h = T::header(tar::EntryType::Char, 0o600, 0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    with_dev
        .append_data(&mut h, "dev/null", io::empty())
        .unwrap();
    let mut f = T::header(tar::EntryType::Fifo, 0o640, 0);
    with_dev
        .append_data(&mut f, "dev/fifo", io::empty())
        .unwrap();
    let dev_tar = with_dev.into_inner().unwrap();

    let stats = apply(&d.root, &tar, Whiteouts::Overlay).unwrap();
    assert_eq!(stats.entries, 7);
    apply(&d.root, &dev_tar, Whiteouts::Overlay).unwrap();
    let r = &d.root;
    let m = std::fs::symlink_metadata(r.join("etc/passwd")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1001, 0o4755));
    assert_eq!(m.mtime(), 1_600_000_000);
    assert_eq!(m.nlink(), 2, "hardlink shares the inode");
    assert_eq!(
        std::fs::read_link(r.join("etc/link")).unwrap(),
        Path::new("passwd")
    );
    assert_eq!(
        std::fs::metadata(r.join("etc")).unwrap().mtime(),
        1_600_000_000,
        "dir times set last"
    );
    let v = rfs::getxattr(r.join("etc/xattr"), "user.test", &mut [0u8; 16]).unwrap();
    assert_eq!(v, 2);
    assert_eq!(
        std::fs::read(r.join("d\u{e9}j\u{e0}/\u{1F600}")).unwrap(),
        b"unicode"
    );
    assert_eq!(
        std::fs::read(r.join(format!("long/{}", "n".repeat(200)))).unwrap(),
        b"long"
    );
    let dev = std::fs::symlink_metadata(r.join("dev/null")).unwrap();
    assert!(dev.file_type().is_char_device());
    assert_eq!(dev.rdev(), rfs::makedev(1, 3));
    assert!(std::fs::symlink_metadata(r.join("dev/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    // Parents the layer does not name: 0755 whatever the umask.
    assert_eq!(
        std::fs::metadata(r.join("long"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
}

#[test]
fn overlay_whiteouts_become_devices_and_opaque_xattrs() {
    let d = dirs();
    let tar = T::new()
        .dir("a/", 0o755)
        .file("a/.wh..wh..opq", b"")
        .file("a/new", b"n")
        .file(".wh.gone", b"")
        .bytes();
    apply(&d.root, &tar, Whiteouts::Overlay).unwrap();
    let wh = std::fs::symlink_metadata(d.root.join("gone")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!((wh.rdev(), wh.mode() & 0o7777), (0, 0));
    let mut v = [0u8; 4];
    let n = rfs::getxattr(d.root.join("a"), "trusted.overlay.opaque", &mut v).unwrap();
    assert_eq!(&v[..n], b"y");
    assert!(!d.root.join(".wh.gone").exists() && !d.root.join("a/.wh..wh..opq").exists());
}

#[test]
fn removal_whiteouts_delete_and_opaque_keeps_this_layers_entries() {
    let d = dirs();
    std::fs::create_dir_all(d.root.join("a/old")).unwrap();
    std::fs::write(d.root.join("a/old/f"), b"").unwrap();
    std::fs::write(d.root.join("gone"), b"").unwrap();
    let tar = T::new()
        .dir("a/", 0o755)
        .file("a/new", b"n")
        .file("a/.wh..wh..opq", b"")
        .file(".wh.gone", b"")
        .bytes();
    apply(&d.root, &tar, Whiteouts::Remove).unwrap();
    assert_eq!(tree(&d.root), vec!["a", "a/new"]);
}

#[test]
fn replaces_files_by_dirs_and_back() {
    let d = dirs();
    let t1 = T::new()
        .file("x", b"file")
        .dir("y/", 0o755)
        .file("y/in", b"")
        .bytes();
    apply(&d.root, &t1, Whiteouts::Overlay).unwrap();
    let t2 = T::new()
        .dir("x/", 0o700)
        .file("x/in", b"")
        .file("y", b"now a file")
        .bytes();
    apply(&d.root, &t2, Whiteouts::Overlay).unwrap();
    assert!(d.root.join("x").is_dir());
    assert_eq!(std::fs::read(d.root.join("y")).unwrap(), b"now a file");
}

#[test]
fn missing_parents_take_the_lower_layers_attributes() {
    let d = dirs();
    let lower = d.root.parent().unwrap().join("lower");
    std::fs::create_dir_all(lower.join("usr/share")).unwrap();
    std::fs::set_permissions(
        lower.join("usr/share"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    rfs::chown(
        lower.join("usr/share"),
        Some(rfs::Uid::from_raw(7)),
        Some(rfs::Gid::from_raw(8)),
    )
    .unwrap();
    let tar = T::new().file("usr/share/doc/x", b"").bytes();
    apply_over(&d.root, &tar, &lower).unwrap();
    let m = std::fs::metadata(d.root.join("usr/share")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (7, 8, 0o750));
    let doc = std::fs::metadata(d.root.join("usr/share/doc")).unwrap();
    assert_eq!(
        (doc.uid(), doc.mode() & 0o7777),
        (0, 0o755),
        "not in any lower: defaults"
    );
}

// ---- escapes: each one must stay inside the root ----

#[test]
fn escape_absolute_and_dotdot_names_stay_inside() {
    let d = dirs();
    let outside_abs = d.outside.join("abs").display().to_string();
    let tar = T::new()
        .pax(&[("path", outside_abs.as_bytes())])
        .file("x", b"abs")
        .pax(&[("path", b"../../outside/dotdot")])
        .file("y", b"dotdot")
        .bytes();
    apply(&d.root, &tar, Whiteouts::Overlay).unwrap();
    outside_untouched(&d);
    // Both landed inside, re-rooted.
    assert!(d.root.join(outside_abs.trim_start_matches('/')).is_file());
    assert!(d.root.join("outside/dotdot").is_file());
}

#[test]
fn escape_through_a_symlink_in_the_same_layer_stays_inside() {
    for target in ["/", "..", "../..", "ABS"] {
        let d = dirs();
        let target = if target == "ABS" {
            d.outside.display().to_string()
        } else {
            target.to_string()
        };
        let tar = T::new()
            .symlink("evil", &target)
            .file("evil/pwn", b"pwned")
            .file("evil/secret", b"overwritten")
            .bytes();
        let r = apply(&d.root, &tar, Whiteouts::Overlay);
        outside_untouched(&d);
        if target == "/" || target.starts_with("..") {
            // Resolved inside the root, as if the root were `/`.
            r.unwrap();
            assert_eq!(
                std::fs::read(d.root.join("secret")).unwrap(),
                b"overwritten"
            );
        } else {
            // A symlink to a path absent inside the root: refused, not followed out.
            assert!(r.is_err());
        }
    }
}

#[test]
fn escape_through_a_symlinked_parent_for_whiteouts_stays_inside() {
    for w in [Whiteouts::Overlay, Whiteouts::Remove] {
        let d = dirs();
        let tar = T::new()
            .symlink("evil", &d.outside.display().to_string())
            .file("evil/.wh.secret", b"")
            .file("evil/.wh..wh..opq", b"")
            .bytes();
        let _ = apply(&d.root, &tar, w);
        outside_untouched(&d);
    }
}

#[test]
fn escape_hardlinks_to_outside_fail_cleanly() {
    for target in [
        "ABS",
        "../outside/secret",
        "../../outside/secret",
        "evil/secret",
    ] {
        let d = dirs();
        let target = if target == "ABS" {
            d.outside.join("secret").display().to_string()
        } else {
            target.to_string()
        };
        let tar = T::new()
            .symlink("evil", &d.outside.display().to_string())
            .hardlink("hl", &target)
            .bytes();
        let e = apply(&d.root, &tar, Whiteouts::Overlay).unwrap_err();
        assert!(e.to_string().contains("hardlink"), "{e}");
        outside_untouched(&d);
    }
}

#[test]
fn escape_replacing_a_symlink_does_not_follow_it() {
    let d = dirs();
    let secret = d.outside.join("secret").display().to_string();
    let tar = T::new()
        .symlink("s", &secret)
        .file("s", b"replaced")
        .symlink("dir", &d.outside.display().to_string())
        .dir("dir/", 0o700)
        .bytes();
    apply(&d.root, &tar, Whiteouts::Overlay).unwrap();
    outside_untouched(&d);
    assert_eq!(std::fs::read(d.root.join("s")).unwrap(), b"replaced");
    assert!(std::fs::symlink_metadata(d.root.join("dir"))
        .unwrap()
        .is_dir());
}

#[test]
fn escape_dotdot_whiteout_and_nul_names_are_refused() {
    let d = dirs();
    std::fs::create_dir_all(d.root.join("a")).unwrap();
    let tar = T::new().file("a/.wh...", b"").bytes();
    let e = apply(&d.root, &tar, Whiteouts::Remove).unwrap_err();
    assert!(e.to_string().contains("invalid whiteout"), "{e}");
    assert!(d.root.join("a").is_dir(), "nothing removed");
    let tar = T::new()
        .pax(&[("path", b"bad\0name")])
        .file("x", b"")
        .bytes();
    let e = apply(&d.root, &tar, Whiteouts::Overlay).unwrap_err();
    assert!(e.to_string().contains("NUL"), "{e}");
    outside_untouched(&d);
}

#[test]
fn devices_are_created_inside_only() {
    let d = dirs();
    let mut h = T::header(tar::EntryType::Block, 0o600, 0);
    h.set_device_major(8).unwrap();
    h.set_device_minor(0).unwrap();
    // tar's builder refuses `..`; the name goes through PAX instead.
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("path", &b"../../outside/sda"[..])])
        .unwrap();
    b.append_data(&mut h, "sda", io::empty()).unwrap();
    apply(&d.root, &b.into_inner().unwrap(), Whiteouts::Overlay).unwrap();
    outside_untouched(&d);
    assert!(std::fs::symlink_metadata(d.root.join("outside/sda"))
        .unwrap()
        .file_type()
        .is_block_device());
}

/// A hardlink whose target only a lower layer has: containerd's applier
/// (which writes the upper directory directly, as this one does) fails the
/// layer with ENOENT; so does this one, cleanly, creating nothing for it.
#[test]
fn hardlink_to_a_lower_layers_file_fails_as_in_containerd() {
    let d = dirs();
    let lower = d.root.parent().unwrap().join("lower");
    std::fs::create_dir_all(lower.join("bin")).unwrap();
    std::fs::write(lower.join("bin/tool"), b"the tool").unwrap();
    let tar = T::new().hardlink("etc/tool-link", "bin/tool").bytes();
    let e = apply_over(&d.root, &tar, &lower).unwrap_err();
    assert!(e.to_string().contains("hardlink target"), "{e}");
    assert!(!d.root.join("bin/tool").exists());
    assert!(!d.root.join("etc/tool-link").exists());
}

/// A missing parent takes the lower directory's xattrs too (overlayfs'
/// copy-up of the directory, when containerd writes into the mounted view).
#[test]
fn missing_parents_take_the_lower_layers_xattrs() {
    let d = dirs();
    let lower = d.root.parent().unwrap().join("lower");
    std::fs::create_dir_all(lower.join("usr/share")).unwrap();
    rfs::setxattr(
        lower.join("usr/share"),
        "user.dir",
        b"lower",
        XattrFlags::empty(),
    )
    .unwrap();
    let tar = T::new().file("usr/share/doc/x", b"").bytes();
    apply_over(&d.root, &tar, &lower).unwrap();
    let mut v = [0u8; 16];
    let n = rfs::getxattr(d.root.join("usr/share"), "user.dir", &mut v).expect("xattr copied");
    assert_eq!(&v[..n], b"lower");
}

/// The applier keeps the last parent directory's descriptor for the entries
/// after it; a directory replaced under another spelling (here through the
/// symlink `a` -> `c`) must not leave it writing into the removed one. The
/// next entry goes where containerd's applier puts it: through the new
/// symlink, resolved inside the root; nothing lands outside.
/// (Also a regression input for the create-first replacement.)
#[test]
fn a_parent_replaced_under_another_name_is_resolved_again() {
    for target in ["/d", "ABS"] {
        let d = dirs();
        let target = if target == "ABS" {
            d.outside.display().to_string()
        } else {
            target.to_string()
        };
        let tar = T::new()
            .dir("c", 0o755)
            .dir("c/b", 0o755)
            .dir("d", 0o755)
            .symlink("a", "c")
            .file("a/b/x", b"first")
            .symlink("c/b", &target)
            .file("a/b/y", b"second")
            .bytes();
        let r = apply(&d.root, &tar, Whiteouts::Overlay);
        outside_untouched(&d);
        if target == "/d" {
            r.unwrap();
            assert_eq!(std::fs::read(d.root.join("d/y")).unwrap(), b"second");
            assert!(!d.root.join("c/b/x").exists());
        } else {
            // Resolved inside the root, where that path does not exist: refused.
            assert!(r.is_err());
            assert!(!d.outside.join("y").exists());
        }
    }
}

/// Entries that replace what is there (a file by a directory, a directory
/// by a file, a symlink by a file) are created, not refused, now that the
/// create is tried first and EEXIST handled.
#[test]
fn replacing_entries_in_one_layer_create_first() {
    let d = dirs();
    let tar = T::new()
        .file("p", b"file")
        .dir("p", 0o750)
        .file("p/inside", b"x")
        .file("q", b"one")
        .file("q", b"two")
        .symlink("s", "q")
        .file("s", b"not through the link")
        .dir("keep", 0o700)
        .file("keep/f", b"f")
        .dir("keep", 0o755)
        .bytes();
    apply(&d.root, &tar, Whiteouts::Overlay).unwrap();
    assert!(d.root.join("p").is_dir());
    assert_eq!(std::fs::read(d.root.join("p/inside")).unwrap(), b"x");
    assert_eq!(std::fs::read(d.root.join("q")).unwrap(), b"two");
    assert!(!std::fs::symlink_metadata(d.root.join("s"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read(d.root.join("s")).unwrap(),
        b"not through the link"
    );
    assert_eq!(std::fs::read(d.root.join("keep/f")).unwrap(), b"f");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(d.root.join("keep"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
}

mod attacks;
