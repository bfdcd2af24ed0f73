//! The layer writer target: a layer blob decoded (`layer::decode`, as the
//! pull does, on its own thread) and applied (`layer::apply_tar`) into a fresh
//! directory that sits inside a sentinel tree, next to symlinks that point out
//! of it.
//!
//! The first input byte picks the mode: bit 0 the whiteout style (0 Remove,
//! 1 Overlay), `(b >> 1) % 3` the blob: 0 the rest as is (gzip and zstd are
//! sniffed from the magic bytes, as for a registry's blob), 1 the rest as a
//! tar gzipped here, 2 the rest as a tar compressed with zstd here.
//!
//! Layout (in /dev/shm when it exists, else the temporary directory; or
//! `$CRI_IMAGED_FUZZ_DIR`), `B` = `cri-imaged-fuzz-<parent pid>`:
//!
//! ```text
//! B/sentinel/secret            0600, xattrs user.fuzz and trusted.fuzz
//! B/sentinel/dir/inner         a file;  dir/link -> /
//! B/sentinel/lower/            the lower layer (ApplyOptions::parents):
//!                                abs -> /, up -> .., out -> ../dir,
//!                                usr -> ../dir, bin -> /bin, etc/ (0700, 1:2)
//! B/sentinel/t1/t2/root/       the target, made afresh for every input with
//!                                abs -> /, up -> ../../.. (the sentinel),
//!                                upup -> ../../../.. (B), secret -> B/sentinel/secret,
//!                                sdir -> B/sentinel/dir, rel -> ../../../dir,
//!                                d/x -> ../../../../secret, etc -> ../../../lower/etc
//! ```
//!
//! Checked on every input: no panic (in the applier, the decoder or its
//! thread); the apply ends with success or an error; every entry of `B`
//! outside `root` has the same inode, type and mode, owner, size, mtime and
//! ctime, link count, device number, content (files), target (symlinks) and
//! xattrs as before; the names in `/` are the same; the process has as many
//! open file descriptors as before. A difference panics with what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use cri_imaged::layer::{self, ApplyOptions, Check, ChunkPool, DecodedReader, Whiteouts};

/// Decompressed bytes read per input at most (a zstd frame of a few KiB can
/// expand to far more; the applier's own limits are not what is fuzzed).
const MAX_TAR: u64 = 16 << 20;

struct Env {
    base: PathBuf,
    sentinel: PathBuf,
    root: PathBuf,
    lower: PathBuf,
    pool: ChunkPool,
}

static ENV: Mutex<Option<Env>> = Mutex::new(None);

/// The layer writer target (see the module documentation).
pub fn layer_writer(data: &[u8]) {
    let mut g = ENV.lock().unwrap_or_else(|e| e.into_inner());
    g.get_or_insert_with(Env::new).run(data);
}

/// Remove the target's directory tree (the replay test calls this at its end;
/// an AFL run reuses the directory of its fork server's pid).
pub fn layer_writer_cleanup() {
    let mut g = ENV.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(env) = g.take() {
        let _ = std::fs::remove_dir_all(&env.base);
    }
}

fn ok<T, E: std::fmt::Display>(what: &str, p: &Path, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("fuzz setup: {what} {}: {e}", p.display()))
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // Best effort: some file systems take no user.* or trusted.* xattrs.
    unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        );
    }
}

impl Env {
    fn new() -> Env {
        let top = match std::env::var_os("CRI_IMAGED_FUZZ_DIR") {
            Some(d) => PathBuf::from(d),
            None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        // The fork server's pid: every child AFL forks reuses (and first
        // clears) the same directory.
        let base = top.join(format!(
            "cri-imaged-fuzz-{}",
            std::os::unix::process::parent_id()
        ));
        match std::fs::remove_dir_all(&base) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                panic!("fuzz setup: remove {}: {e}", base.display())
            }
            _ => {}
        }
        let s = base.join("sentinel");
        let lower = s.join("lower");
        for d in [&base, &s, &s.join("dir"), &lower, &s.join("t1/t2")] {
            ok("mkdir", d, std::fs::create_dir_all(d));
        }
        let secret = s.join("secret");
        ok("write", &secret, std::fs::write(&secret, b"secret\n"));
        ok(
            "chmod",
            &secret,
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)),
        );
        set_xattr(&secret, "user.fuzz", b"1");
        set_xattr(&secret, "trusted.fuzz", b"1");
        let inner = s.join("dir/inner");
        ok("write", &inner, std::fs::write(&inner, b"inner\n"));
        let links: [(&str, &Path); 6] = [
            ("/", &s.join("dir/link")),
            ("/", &lower.join("abs")),
            ("..", &lower.join("up")),
            ("../dir", &lower.join("out")),
            ("../dir", &lower.join("usr")),
            ("/bin", &lower.join("bin")),
        ];
        for (target, at) in links {
            ok("symlink", at, symlink(target, at));
        }
        let etc = lower.join("etc");
        ok("mkdir", &etc, std::fs::create_dir(&etc));
        ok(
            "chmod",
            &etc,
            std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o700)),
        );
        ok(
            "chown",
            &etc,
            std::os::unix::fs::lchown(&etc, Some(1), Some(2)),
        );
        set_xattr(&etc, "user.lower", b"etc");
        ok(
            "write",
            &etc.join("passwd"),
            std::fs::write(etc.join("passwd"), b"root:x:0:0::/root:/bin/sh\n"),
        );
        Env {
            root: s.join("t1/t2/root"),
            sentinel: s,
            lower,
            base,
            pool: ChunkPool::default(),
        }
    }

    /// A fresh target directory holding the outward symlinks.
    fn reset_root(&self) {
        let root = &self.root;
        match std::fs::remove_dir_all(root) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                panic!("fuzz: cannot clean {}: {e}", root.display())
            }
            _ => {}
        }
        ok("mkdir", root, std::fs::create_dir(root));
        ok(
            "mkdir",
            &root.join("d"),
            std::fs::create_dir(root.join("d")),
        );
        let s = &self.sentinel;
        let links: [(PathBuf, &str); 8] = [
            ("/".into(), "abs"),
            ("../../..".into(), "up"),
            ("../../../..".into(), "upup"),
            (s.join("secret"), "secret"),
            (s.join("dir"), "sdir"),
            ("../../../dir".into(), "rel"),
            ("../../../../secret".into(), "d/x"),
            ("../../../lower/etc".into(), "etc"),
        ];
        for (target, name) in links {
            let at = root.join(name);
            ok("symlink", &at, symlink(&target, &at));
        }
    }

    fn run(&mut self, data: &[u8]) {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        let whiteouts = if mode & 1 == 0 {
            Whiteouts::Remove
        } else {
            Whiteouts::Overlay
        };
        let blob: Vec<u8> = match (mode >> 1) % 3 {
            0 => rest.to_vec(),
            1 => {
                let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                z.write_all(rest).unwrap();
                z.finish().unwrap()
            }
            _ => zstd::bulk::compress(rest, 1).unwrap(),
        };
        self.reset_root();
        let before = snapshot(&self.base, &self.root);
        let fds = fd_count();
        let _result = self.apply(&blob, whiteouts);
        if std::env::var_os("CRI_IMAGED_FUZZ_SELFTEST").is_some() {
            // Check the checker: an "escape" it must report.
            let p = self.sentinel.join("dir/inner");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        }
        let fds_after = fd_count();
        let after = snapshot(&self.base, &self.root);
        if before != after {
            panic!(
                "layer writer: changed outside the target ({whiteouts:?}):\n{}",
                diff(&before, &after)
            );
        }
        assert_eq!(fds, fds_after, "layer writer: file descriptors leaked");
    }

    fn apply(&self, blob: &[u8], whiteouts: Whiteouts) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let cancel = AtomicBool::new(false);
        let pool = self.pool.clone();
        let parents = [self.lower.clone()];
        std::thread::scope(|scope| {
            let cancel = &cancel;
            let decoder = scope.spawn(move || {
                let b = layer::Blob {
                    digest: "sha256:fuzz",
                    size: blob.len() as u64,
                    check: Check::SizeOnly,
                };
                // The byte limit's own path (a bomb stops here), then the cap.
                let budget = layer::Budget::layer_only(MAX_TAR);
                layer::decode(blob, b, tx, cancel, &pool, &budget)
            });
            let reader = DecodedReader::new(rx, self.pool.clone()).take(MAX_TAR);
            let opts = ApplyOptions {
                whiteouts,
                lower_fds: &[],
                parents: &parents,
                cancel: None,
                // Small enough that inputs reach the entry and header limits.
                limits: layer::Limits {
                    layer_max_entries: 20_000,
                    layer_max_header_bytes: 256 << 10,
                    ..layer::Limits::default()
                },
            };
            let applied = layer::apply_tar(&self.root, reader, &opts);
            let decoded = match decoder.join() {
                Ok(d) => d,
                Err(p) => std::panic::resume_unwind(p),
            };
            applied.map_err(|e| e.to_string())?;
            decoded.map_err(|e| e.to_string())?;
            Ok(())
        })
    }
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[derive(Debug, PartialEq, Eq)]
struct Node {
    dev: u64,
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    nlink: u64,
    rdev: u64,
    /// A file's bytes or a symlink's target.
    content: Option<Vec<u8>>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

type Snapshot = (BTreeMap<PathBuf, Node>, BTreeSet<std::ffi::OsString>);

/// Every entry under `top` except `skip` and what it holds, and the names in `/`.
fn snapshot(top: &Path, skip: &Path) -> Snapshot {
    let mut map = BTreeMap::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p == skip {
            continue;
        }
        let m = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) => panic!("snapshot {}: {e}", p.display()),
        };
        let ft = m.file_type();
        let content = if ft.is_file() {
            Some(std::fs::read(&p).unwrap_or_else(|e| format!("error {e}").into_bytes()))
        } else if ft.is_symlink() {
            Some(std::fs::read_link(&p).unwrap().into_os_string().into_vec())
        } else {
            None
        };
        if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        map.insert(
            p.clone(),
            Node {
                dev: m.dev(),
                ino: m.ino(),
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                size: m.size(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
                nlink: m.nlink(),
                rdev: m.rdev(),
                content,
                xattrs: xattrs(&p),
            },
        );
    }
    let slash = std::fs::read_dir("/")
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    (map, slash)
}

use std::os::unix::ffi::OsStringExt;

fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 64 << 10];
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    let mut value = vec![0u8; 64 << 10];
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let cn = CString::new(name).unwrap();
        let v = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cn.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        let v = if v < 0 {
            b"<error>".to_vec()
        } else {
            value[..v as usize].to_vec()
        };
        out.insert(name.to_vec(), v);
    }
    out
}

fn diff(a: &Snapshot, b: &Snapshot) -> String {
    let mut out = String::new();
    for (p, n) in &a.0 {
        match b.0.get(p) {
            None => out += &format!("  removed {}\n", p.display()),
            Some(m) if m != n => {
                out += &format!("  changed {}:\n    {n:?}\n -> {m:?}\n", p.display())
            }
            _ => {}
        }
    }
    for p in b.0.keys().filter(|p| !a.0.contains_key(*p)) {
        out += &format!("  created {}\n", p.display());
    }
    if a.1 != b.1 {
        out += &format!("  names in /: {:?} -> {:?}\n", a.1, b.1);
    }
    out
}
