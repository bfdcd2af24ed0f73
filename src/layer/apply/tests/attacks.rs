//! The known archive attacks, replayed against the applier. Each case says
//! which advisory class it stands for, in our own words. Every case runs in
//! a fresh root inside a sentinel directory, over a lower layer whose
//! symlinks point out of it; afterwards nothing in the sentinel (but the
//! root) may have changed in any way that `lstat`, the bytes, the link
//! target or the xattrs show (the ctime catches every chmod, chown, xattr
//! and link count change), and no descriptor into the fixture may be left
//! open.

use super::*;
use std::os::unix::fs::{symlink, MetadataExt};

/// `<tmp>/sentinel/{secret, secret-dir/, xattr-file, lower/, root/}`.
struct Fixture {
    _tmp: tempfile::TempDir,
    sentinel: PathBuf,
    root: PathBuf,
    lower: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let sentinel = tmp.path().join("sentinel");
    let (root, lower) = (sentinel.join("root"), sentinel.join("lower"));
    for d in [&root, &lower, &sentinel.join("secret-dir")] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(sentinel.join("secret"), b"secret").unwrap();
    std::fs::write(sentinel.join("secret-dir/inner"), b"inner").unwrap();
    std::fs::write(sentinel.join("xattr-file"), b"x").unwrap();
    rfs::setxattr(
        sentinel.join("xattr-file"),
        "user.keep",
        b"v",
        XattrFlags::empty(),
    )
    .unwrap();
    // The lower layer: symlinks out of the root, absolute and relative.
    symlink(&sentinel, lower.join("abs")).unwrap();
    symlink("../../..", lower.join("rel")).unwrap();
    symlink(sentinel.join("secret"), lower.join("secretlink")).unwrap();
    std::fs::create_dir(lower.join("dir")).unwrap();
    Fixture {
        _tmp: tmp,
        sentinel,
        root,
        lower,
    }
}

/// Everything `lstat` and a read say of every path under the sentinel but
/// the root.
fn snapshot(f: &Fixture) -> Vec<String> {
    fn walk(f: &Fixture, p: &Path, out: &mut Vec<String>) {
        if p == f.root {
            return;
        }
        let m = std::fs::symlink_metadata(p).unwrap();
        let xattrs: Vec<String> = list_xattrs(p)
            .unwrap_or_default()
            .into_iter()
            .map(|k| {
                let mut v = [0u8; 256];
                let n = rfs::lgetxattr(p, k.as_os_str(), &mut v).unwrap_or(0);
                format!("{}={:?}", k.to_string_lossy(), &v[..n])
            })
            .collect();
        let content = if m.file_type().is_file() {
            format!("{:?}", std::fs::read(p).unwrap())
        } else if m.file_type().is_symlink() {
            std::fs::read_link(p).unwrap().display().to_string()
        } else {
            String::new()
        };
        out.push(format!(
            "{} ino={} mode={:o} uid={} gid={} size={} nlink={} mtime={}.{} ctime={}.{} {content} {xattrs:?}",
            p.display(),
            m.ino(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.nlink(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        ));
        if m.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for n in names {
                walk(f, &n, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(f, &f.sentinel, &mut out);
    out
}

/// Descriptors of this process that point into the fixture.
fn open_fds_into(dir: &Path) -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.starts_with(dir))
        .map(|t| t.display().to_string())
        .collect()
}

/// Apply `tar` in both whiteout modes (overlay above the lower layer; a
/// base layer with removals) and check the invariants. Returns the results.
fn replay(name: &str, build: impl Fn(&Fixture) -> Vec<u8>) -> Vec<Result<ApplyStats, LayerError>> {
    let mut results = Vec::new();
    for w in [Whiteouts::Overlay, Whiteouts::Remove] {
        let f = fixture();
        let tar = build(&f);
        let before = snapshot(&f);
        let parents = match w {
            Whiteouts::Overlay => vec![f.lower.clone()],
            Whiteouts::Remove => vec![],
        };
        let r = apply_with(&f.root, &tar, w, &parents);
        let after = snapshot(&f);
        let changed: Vec<_> = after.iter().filter(|l| !before.contains(l)).collect();
        assert!(
            changed.is_empty() && before.len() == after.len(),
            "{name} ({w:?}) changed the sentinel: {changed:#?} (result {r:?})"
        );
        let fds = open_fds_into(&f.sentinel);
        assert!(
            fds.is_empty(),
            "{name} ({w:?}) left descriptors open: {fds:?}"
        );
        results.push(r);
    }
    results
}

fn abs(f: &Fixture, rel: &str) -> String {
    f.sentinel.join(rel).display().to_string()
}

/// An entry whose name is written as given (a PAX `path` record: the tar
/// builder refuses `..` and absolute names).
fn raw(mut t: T, kind: tar::EntryType, name: &str, mode: u32, data: &[u8]) -> T {
    t = t.pax(&[("path", name.as_bytes())]);
    let mut h = T::header(kind, mode, data.len() as u64);
    h.set_uid(4242);
    t.0.append_data(&mut h, "placeholder", data).unwrap();
    t
}

/// Entries of every type in `dir`, to reach a target through it.
fn every_type_under(t: T, dir: &str) -> T {
    use tar::EntryType as E;
    let t = raw(t, E::Regular, &format!("{dir}/secret"), 0o4777, b"pwned");
    let t = raw(t, E::Directory, &format!("{dir}/secret-dir/"), 0o777, b"");
    let t = raw(t, E::Fifo, &format!("{dir}/fifo"), 0o777, b"");
    let t = t.pax(&[("path", format!("{dir}/new-link").as_bytes())]);
    let t = t.symlink("placeholder", "/");
    let t = t.pax(&[("path", format!("{dir}/xattr-file").as_bytes())]);
    t.hardlink_as("placeholder", "etc/x", 4242, 4242, 0o777)
}

#[test]
fn path_traversal_absolute_and_dotdot_names() {
    // moby and containerd, early archive advisories: names like `/x` or
    // `../x` written as they stand land outside the extraction root.
    replay("absolute names", |f| {
        let t = T::new().file("etc/x", b"x");
        every_type_under(t, &abs(f, "")).bytes()
    });
    for dir in ["..", "../..", "a/../../..", "./../."] {
        replay("dotdot names", |_| {
            every_type_under(T::new().file("etc/x", b"x"), dir).bytes()
        });
    }
}

#[test]
fn symlink_parent_in_the_same_layer_written_through() {
    // The classic symlink escape: a layer first makes `evil -> /outside`,
    // then writes `evil/file`; a writer that resolves parents on the host
    // writes outside.
    for target in ["ABS", "../..", "../../..", "/"] {
        replay("symlink parent", |f| {
            let tgt = if target == "ABS" {
                abs(f, "")
            } else {
                target.into()
            };
            let t = T::new().file("etc/x", b"x").symlink("evil", &tgt);
            every_type_under(t, "evil").bytes()
        });
    }
}

#[test]
fn symlink_parent_from_the_lower_layer_written_through() {
    // The same through a symlink a lower layer holds: the parent must be
    // resolved in this layer's root, never through the lower's link.
    replay("lower symlink parent", |_| {
        let t = T::new().file("etc/x", b"x");
        let t = every_type_under(t, "abs");
        let t = every_type_under(t, "rel/sentinel");
        t.file("secretlink", b"replaces the name, not the target")
            .bytes()
    });
}

#[test]
fn hardlinks_to_outside_or_through_outward_symlinks() {
    // Hardlink escapes: a link whose target is outside (absolute, `..`, or
    // through a symlink) would give the container a name for a host file.
    let r = replay("hardlink escapes", |f| {
        T::new()
            .symlink("evil", &abs(f, ""))
            .hardlink("h1", &abs(f, "secret"))
            .hardlink("h2", "../secret")
            .hardlink("h3", "evil/secret")
            .bytes()
    });
    assert!(r.iter().all(|r| r.is_err()));
    // A hardlink to a symlink that points outside is another symlink; its
    // header's mode and owner must not reach the target.
    replay("hardlink to an outward symlink", |f| {
        T::new()
            .symlink("s", &abs(f, "secret"))
            .hardlink_as("h", "s", 4242, 4242, 0o4777)
            .file("h/x", b"through the hardlinked symlink")
            .bytes()
    });
}

#[test]
fn directory_replaced_by_a_symlink_within_the_layer() {
    // A directory entry, files in it (the writer has it resolved), then
    // the same name as a symlink out, then more files "in" it.
    for target in ["ABS", "../..", "/"] {
        replay("dir swapped for a symlink", |f| {
            let tgt = if target == "ABS" {
                abs(f, "")
            } else {
                target.into()
            };
            let t = T::new()
                .file("etc/x", b"x")
                .dir("d/", 0o755)
                .file("d/a", b"a")
                .symlink("d", &tgt);
            every_type_under(t, "d").bytes()
        });
    }
}

#[test]
fn chmod_and_chown_never_reach_a_symlinks_target() {
    // containerd GHSA-c72p-9xmj-rx3w class: metadata meant for an entry
    // applied through a symlink to something outside. Symlink headers carry
    // mode and owner; hardlinks to symlinks, and entries that replace a
    // symlink, carry them too.
    replay("chmod through symlinks", |f| {
        let mut t = T::new().link(tar::EntryType::Symlink, "s", &abs(f, "secret"));
        t = t.hardlink_as("h", "s", 4242, 4242, 0o4777);
        t = t.symlink("d", &abs(f, "secret-dir")).dir("d/", 0o777);
        t = t.symlink("x", &abs(f, "xattr-file"));
        t = t.pax(&[("SCHILY.xattr.user.keep", b"changed")]);
        t = t.hardlink_as("x2", "x", 4242, 4242, 0o777);
        let mut h = T::header(tar::EntryType::Char, 0o777, 0);
        t.0.append_data(&mut h, "s", io::empty()).unwrap();
        t.bytes()
    });
}

#[test]
fn whiteouts_of_dotdot_the_root_and_through_symlinks() {
    // Whiteouts name a path to delete: `..`, the root, or a path through
    // an outward symlink would delete host files.
    for name in [
        ".wh..",
        ".wh...",
        "a/.wh..",
        "../.wh.secret",
        ".wh.",
        "/.wh.sentinel",
        "abs/.wh.secret",
        "rel/sentinel/.wh.secret",
        "evil/.wh.secret",
        "evil/.wh.secret-dir",
        "evil/.wh..wh..opq",
        "abs/.wh..wh..opq",
        ".wh..wh..opq",
        ".wh..wh..opq/.wh..wh..opq",
    ] {
        replay(name, |f| {
            let t = T::new().dir("a/", 0o755).symlink("evil", &abs(f, ""));
            raw(t, tar::EntryType::Regular, name, 0o644, b"").bytes()
        });
    }
    // Opaque markers in odd shapes: a directory of that name, with content.
    replay("opaque marker shapes", |f| {
        T::new()
            .symlink("evil", &abs(f, ""))
            .dir("evil/.wh..wh..opq/", 0o755)
            .file("evil/.wh..wh..opq", b"content")
            .dir(".wh..wh..opq/", 0o755)
            .bytes()
    });
}

#[test]
fn devices_and_fifos_through_symlinks() {
    replay("devices", |f| {
        let mut t = T::new().symlink("evil", &abs(f, ""));
        for (kind, name) in [
            (tar::EntryType::Char, "evil/secret"),
            (tar::EntryType::Block, "evil/dev"),
            (tar::EntryType::Fifo, "abs/fifo"),
        ] {
            let mut h = T::header(kind, 0o777, 0);
            t.0.append_data(&mut h, name, io::empty()).unwrap();
        }
        t.bytes()
    });
}

#[test]
fn duplicate_entries_of_different_types_end_as_the_last() {
    let r = replay("duplicates", |f| {
        let mut t = T::new()
            .file("x", b"1")
            .dir("x/", 0o755)
            .file("x/in", b"in")
            .symlink("x", &abs(f, ""))
            .file("x", b"file again");
        let mut h = T::header(tar::EntryType::Fifo, 0o644, 0);
        t.0.append_data(&mut h, "x", io::empty()).unwrap();
        t.hardlink("y", "x").dir("x/", 0o700).bytes()
    });
    for r in r {
        r.unwrap();
    }
}

#[test]
fn symlink_loops_and_long_names_fail_cleanly() {
    let r = replay("symlink loop", |_| {
        T::new()
            .symlink("a", "b")
            .symlink("b", "a")
            .file("a/x", b"x")
            .bytes()
    });
    assert!(r.iter().all(|r| r.is_err()));
    // A name over 255 bytes, a path over PATH_MAX: refused as malformed.
    let long = "n".repeat(300);
    let deep: String = (0..20).map(|_| format!("{}/", "d".repeat(250))).collect();
    for name in [long, format!("{deep}f")] {
        let r = replay("long name", |_| {
            T::new()
                .pax(&[("path", name.as_bytes())])
                .file("x", b"x")
                .bytes()
        });
        for r in r {
            let e = r.unwrap_err();
            assert!(e.is_malformed(), "{e}");
        }
    }
}

/// A layer with `n` entries 1 deep, applied with `limits`.
fn apply_limited(f: &Fixture, tar: &[u8], limits: Limits) -> Result<ApplyStats, LayerError> {
    apply_tar(
        &f.root,
        tar,
        &ApplyOptions {
            lower_fds: &[],
            whiteouts: Whiteouts::Overlay,
            parents: &[],
            cancel: None,
            limits,
        },
    )
}

#[test]
fn limits_entries_depth_and_header_bytes() {
    let f = fixture();
    let mut t = T::new();
    for i in 0..101 {
        t = t.file(&format!("f{i}"), b"");
    }
    let few = Limits {
        layer_max_entries: 100,
        ..Limits::default()
    };
    let e = apply_limited(&f, &t.bytes(), few).unwrap_err();
    assert!(
        matches!(
            e,
            LayerError::Limit {
                exhausted: true,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("more than 100 entries (limits.layer_max_entries)"),
        "{e}"
    );

    let deep: String = (0..129).map(|_| "d/").collect();
    let tar = T::new().file(&format!("{deep}f"), b"").bytes();
    let e = apply_limited(&f, &tar, Limits::default()).unwrap_err();
    assert!(e.is_malformed(), "{e}");
    assert!(
        e.to_string()
            .contains("130 directories deep, more than 128"),
        "{e}"
    );

    // A PAX header of 2 MiB (an xattr no filesystem takes): refused before
    // the tar reader holds more than the limit.
    let big = vec![b'v'; 2 << 20];
    let tar = T::new()
        .pax(&[("SCHILY.xattr.user.big", &big[..])])
        .file("x", b"")
        .bytes();
    let e = apply_limited(&f, &tar, Limits::default()).unwrap_err();
    assert!(
        e.to_string().contains("limits.layer_max_header_bytes"),
        "{e}"
    );
    // A GNU long name of 2 MiB, the same.
    let mut h = T::header(tar::EntryType::GNULongName, 0, big.len() as u64 + 1);
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut h, "././@LongLink", &[&big[..], b"\0"].concat()[..])
        .unwrap();
    let e = apply_limited(&f, &b.into_inner().unwrap(), Limits::default()).unwrap_err();
    assert!(
        e.to_string().contains("limits.layer_max_header_bytes"),
        "{e}"
    );
}

#[test]
fn huge_claimed_sizes_and_truncated_streams_fail_cleanly() {
    let f = fixture();
    // A PAX header claiming a terabyte, then the stream ends.
    let mut h = T::header(tar::EntryType::XHeader, 0, 1 << 40);
    let mut raw = h.as_bytes().to_vec();
    h.set_cksum();
    raw.copy_from_slice(h.as_bytes());
    raw.extend_from_slice(b"30 path=something-plausible\n");
    // Ends (an error or an empty layer) without reserving the claimed size.
    let _ = apply_limited(&f, &raw, Limits::default());
    // A file whose PAX size says more than the stream holds.
    let tar = T::new()
        .pax(&[("size", b"99999999999")])
        .file("big", b"tiny")
        .bytes();
    assert!(apply_limited(&f, &tar, Limits::default()).is_err());
    // A stream cut in the middle of a file's data.
    let tar = T::new().file("cut", &vec![7u8; 8192]).bytes();
    let e = apply_limited(&f, &tar[..512 + 3000], Limits::default()).unwrap_err();
    assert!(
        e.to_string().contains("bytes in the stream") || matches!(e, LayerError::Read(_)),
        "{e}"
    );
    assert!(open_fds_into(&f.sentinel).is_empty());
}

#[test]
fn symlink_swapped_in_while_the_writer_works() {
    // moby CVE-2018-15664 (and the check-then-act pattern hardened again
    // in 2026): another process swaps a directory, or a just-created name,
    // for a symlink out while the layer is written. Parents resolve in the
    // root and every attribute goes through the created inode's descriptor,
    // so whatever the interleaving nothing outside changes.
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    for round in 0..4 {
        let f = fixture();
        let mut t = T::new().dir("d/", 0o755);
        for i in 0..400 {
            t = t
                .file_with(&format!("d/f{i}"), b"data", |h| {
                    h.set_mode(0o4777);
                    h.set_uid(4242);
                })
                .hardlink_as(&format!("d/h{i}"), &format!("d/f{i}"), 4242, 4242, 0o777)
                .symlink(&format!("d/s{i}"), "/secret");
            let mut h = T::header(tar::EntryType::Fifo, 0o777, 0);
            h.set_uid(4242);
            t.0.append_data(&mut h, format!("d/p{i}"), io::empty())
                .unwrap();
        }
        let tar = t.bytes();
        let before = snapshot(&f);
        let stop = Arc::new(AtomicBool::new(false));
        let (root, outside) = (f.root.clone(), f.sentinel.clone());
        let swapper = {
            let stop = stop.clone();
            std::thread::spawn(move || swap_loop(&root, &outside, &stop, round))
        };
        let _ = apply_limited(&f, &tar, Limits::default());
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        assert!(swaps > 0, "the swapper never ran");
        let after = snapshot(&f);
        let changed: Vec<_> = after.iter().filter(|l| !before.contains(l)).collect();
        assert!(changed.is_empty(), "round {round}: {changed:#?}");
    }
}

#[test]
fn names_swapped_for_symlinks_right_after_creation() {
    // The check-then-act pattern (containerd hardened it again in 2026):
    // attributes set by path after the entry was made follow a symlink
    // swapped in meanwhile. Here every new name is swapped, at once, for a
    // symlink out; the writer must set nothing through it.
    let f = fixture();
    let (secret, dir) = (abs(&f, "secret"), abs(&f, "secret-dir"));
    let hook = move |parent: BorrowedFd<'_>, name: &[u8]| {
        let target = if name.starts_with(b"dir") {
            &dir
        } else {
            &secret
        };
        let _ = remove_all(parent, name);
        rfs::symlinkat(target.as_str(), parent, os(name)).unwrap();
    };
    AFTER_CREATE.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
    use tar::EntryType as E;
    let mut results = Vec::new();
    let one = |kind: E, name: &str| {
        let t = T::new().file("target", b"t");
        let t = match kind {
            E::Link => t.hardlink_as(name, "target", 4242, 4242, 0o4777),
            E::Symlink => t.symlink(name, "target"),
            k => {
                let mut h = T::header(k, 0o4777, 0);
                h.set_uid(4242);
                let mut t = t;
                t.0.append_data(&mut h, name, io::empty()).unwrap();
                t
            }
        };
        t.pax(&[("SCHILY.xattr.user.keep", b"changed")])
            .file("after", b"a")
            .bytes()
    };
    let before = snapshot(&f);
    for (kind, name) in [
        (E::Link, "hardlink"),
        (E::Fifo, "fifo"),
        (E::Char, "char"),
        (E::Block, "block"),
        (E::Symlink, "symlink"),
        (E::Directory, "dir"),
        (E::Regular, "file"),
    ] {
        for e in std::fs::read_dir(&f.root).unwrap() {
            let p = e.unwrap().path();
            let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir_all(&p));
        }
        results.push((name, apply_limited(&f, &one(kind, name), Limits::default())));
    }
    // A whiteout device (overlay form) too.
    let wh = T::new().file(".wh.gone", b"").bytes();
    results.push(("whiteout", apply_limited(&f, &wh, Limits::default())));
    AFTER_CREATE.with(|h| *h.borrow_mut() = None);
    let after = snapshot(&f);
    let changed: Vec<_> = after.iter().filter(|l| !before.contains(l)).collect();
    assert!(changed.is_empty(), "{changed:#?}\n{results:#?}");
    for (name, r) in results {
        if let Err(e) = r {
            println!("{name}: {e}");
        }
    }
}

/// Swap `root/d` and the names in it for symlinks to `outside` until told
/// to stop; returns how many swaps were made.
fn swap_loop(root: &Path, outside: &Path, stop: &AtomicBool, round: u64) -> u64 {
    let mut n = 0u64;
    let mut i = round;
    while !stop.load(Ordering::Relaxed) {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let k = (i >> 33) % 400;
        let tmp = root.join(format!(".swap{}", n % 8));
        let _ = std::fs::remove_file(&tmp);
        let target = if n.is_multiple_of(2) {
            outside.join("secret")
        } else {
            outside.to_path_buf()
        };
        n += 1;
        if symlink(&target, &tmp).is_err() {
            continue;
        }
        let name = match n % 4 {
            0 => "d".to_string(),
            1 => format!("d/h{k}"),
            2 => format!("d/p{k}"),
            _ => format!("d/f{k}"),
        };
        // Swap in, then back: the writer meets the symlink for a moment.
        let swap = || {
            rfs::renameat_with(
                rfs::CWD,
                &tmp,
                rfs::CWD,
                root.join(&name),
                rfs::RenameFlags::EXCHANGE,
            )
        };
        if swap().is_ok() {
            std::thread::yield_now();
            let _ = swap();
        }
    }
    n
}
