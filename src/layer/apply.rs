//! The tar applier: a layer's tar stream into one snapshot directory, with
//! containerd's semantics (`archive.Apply`: replace what exists unless both are
//! directories, parents created with the lower layers' attributes, ownership,
//! xattrs, mode after owner, times, directory times last) and whiteouts either
//! converted to overlayfs form or applied by removal.
//!
//! Confinement: every name is cleaned lexically (`..` stops at the root),
//! every parent directory is resolved with `openat2(RESOLVE_IN_ROOT)` beneath a
//! descriptor of the root (a symlink, absolute or relative, resolves inside the
//! root as if the root were `/`), and the last component is always created,
//! changed or removed through that parent descriptor without following it.
//! A hardlink's target is resolved the same way. So nothing outside the root
//! is created, followed or removed, whatever the layer holds.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags,
};
use rustix::io::Errno;

use super::{LayerError, Limits};

/// How whiteout entries (`.wh.<name>`, `.wh..wh..opq`) are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// Into an overlayfs upper directory: `.wh.x` becomes a 0/0 character
    /// device `x`, `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its
    /// directory (containerd's overlay path).
    Overlay,
    /// Into a plain directory holding the full tree (a base layer): remove
    /// the named path, or everything in the directory not written by this
    /// layer (containerd's default).
    Remove,
}

pub struct ApplyOptions<'a> {
    pub whiteouts: Whiteouts,
    /// The lower layers' directories, topmost first: where a missing parent
    /// directory takes its owner, mode, times and xattrs from. Already open
    /// ones (`lower_fds`, a layer staged ahead of its snapshot, whose
    /// directory may be renamed meanwhile) come before `parents`.
    pub lower_fds: &'a [std::sync::Arc<OwnedFd>],
    pub parents: &'a [PathBuf],
    /// Set from another thread to stop between entries.
    pub cancel: Option<&'a AtomicBool>,
    /// Entries, depth and header size (the bytes are the decoder's).
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyStats {
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
}

const OPAQUE: &[u8] = b".wh..wh..opq";
const WH_PREFIX: &[u8] = b".wh.";
const XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Apply the tar stream `input` to the directory `root`. The stream is read to
/// its end (past the tar end marker), so a caller hashing it sees every byte.
pub fn apply_tar(
    root: &Path,
    input: impl Read,
    opts: &ApplyOptions<'_>,
) -> Result<ApplyStats, LayerError> {
    let root_fd = rfs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| LayerError::io("open snapshot directory", root, e))?;
    let mut parents = Vec::new();
    for fd in opts.lower_fds {
        parents.push(
            fd.try_clone()
                .map_err(|e| LayerError::io("dup lower directory", root, e))?,
        );
    }
    for p in opts.parents {
        let fd = rfs::open(
            p,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| LayerError::io("open lower directory", p, e))?;
        parents.push(fd);
    }
    let mut a = Applier {
        root: root_fd,
        root_path: root.to_path_buf(),
        parents,
        whiteouts: opts.whiteouts,
        unpacked: HashSet::new(),
        opaque_done: HashSet::new(),
        dirs: Vec::new(),
        buf: vec![0u8; 256 << 10],
        stats: ApplyStats::default(),
        parent: None,
    };
    let meter = std::rc::Rc::new(Meter::default());
    let mut archive = tar::Archive::new(Metered {
        inner: input,
        meter: meter.clone(),
    });
    {
        let mut entries = archive.entries().map_err(LayerError::Read)?;
        loop {
            if opts.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(LayerError::Canceled);
            }
            // The tar reader holds PAX records and GNU long names in memory:
            // bound what it reads for one entry's headers.
            meter.arm(opts.limits.layer_max_header_bytes);
            let next = entries.next();
            meter.disarm();
            let Some(entry) = next else { break };
            let mut entry = entry.map_err(|e| meter.error(e, &opts.limits))?;
            a.entry(&mut entry, &opts.limits)?;
            // What the entry did not read (a directory's or a link's data):
            // read here, not inside the bounded header window.
            io::copy(&mut entry, &mut io::sink()).map_err(LayerError::Read)?;
        }
    }
    // Everything after the end marker too (padding), as containerd does.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(LayerError::Read)?;
    a.finish_dirs()?;
    Ok(a.stats)
}

/// How much the tar reader has taken, and a bound it may not pass while
/// armed (reading one entry's headers).
#[derive(Default)]
struct Meter {
    read: std::cell::Cell<u64>,
    cap: std::cell::Cell<Option<u64>>,
    tripped: std::cell::Cell<bool>,
}

impl Meter {
    /// Headers up to `max` bytes, plus the padding and 512-byte blocks.
    fn arm(&self, max: u64) {
        self.cap
            .set(Some(self.read.get().saturating_add(max + 4096)));
    }

    fn disarm(&self) {
        self.cap.set(None);
    }

    fn error(&self, e: io::Error, limits: &Limits) -> LayerError {
        if !self.tripped.get() {
            return LayerError::Read(e);
        }
        LayerError::Limit {
            message: format!(
                "one entry's tar headers (PAX records, GNU long names) hold more than {} bytes \
                 (limits.layer_max_header_bytes)",
                limits.layer_max_header_bytes
            ),
            setting: "limits.layer_max_header_bytes",
            limit: limits.layer_max_header_bytes,
            exhausted: false,
        }
    }
}

struct Metered<R> {
    inner: R,
    meter: std::rc::Rc<Meter>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let m = &self.meter;
        let room = match m.cap.get() {
            Some(cap) if m.read.get() >= cap => {
                m.tripped.set(true);
                return Err(io::Error::other("tar headers over the limit"));
            }
            Some(cap) => (cap - m.read.get()).min(buf.len() as u64) as usize,
            None => buf.len(),
        };
        let n = self.inner.read(&mut buf[..room])?;
        m.read.set(m.read.get() + n as u64);
        Ok(n)
    }
}

struct Applier {
    root: OwnedFd,
    root_path: PathBuf,
    parents: Vec<OwnedFd>,
    whiteouts: Whiteouts,
    /// Cleaned relative paths written by this layer (for opaque removal).
    /// (128 bits of their SHA-256: 16 bytes an entry however long the name,
    /// and no name can be made to collide with another.)
    unpacked: HashSet<u128>,
    opaque_done: HashSet<Vec<u8>>,
    /// Directory entries whose times are set once everything is written.
    dirs: Vec<(Vec<u8>, Timestamps)>,
    buf: Vec<u8>,
    stats: ApplyStats,
    /// The last parent directory resolved (cleaned relative path, its
    /// descriptor): tar streams write many entries into one directory in a
    /// row. An entry creates or removes only a child of its own parent, so
    /// the cached directory stays what its path names; it is dropped all the
    /// same on whiteouts, removals and entries at or above its path.
    parent: Option<(Vec<u8>, std::rc::Rc<OwnedFd>)>,
}

/// Attributes of one entry, with PAX records applied.
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    times: Timestamps,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Where an entry goes: its parent directory (open), its name there, its
/// path in the layer and its name as the stream gave it (for errors).
struct Place<'a> {
    dir: BorrowedFd<'a>,
    base: &'a [u8],
    rel: &'a [u8],
    raw: &'a [u8],
}

/// What an entry other than a file or directory made: checked on reopening.
#[derive(Clone, Copy)]
enum Made {
    Symlink,
    /// A hardlink to the inode (device, inode number).
    Link(u64, u64),
    /// A device or fifo of this type and device number.
    Node(FileType, u64),
}

/// A symlink's or hardlink's target as the stream gives it.
fn link_name<R: Read>(entry: &tar::Entry<'_, R>) -> Vec<u8> {
    entry
        .link_name_bytes()
        .map(|c| c.into_owned())
        .unwrap_or_default()
}

/// A name cleaned the way `filepath.Clean("/" + name)` does: no empty, `.` or
/// `..` components, never above the root. `None`: a NUL byte (refused).
fn clean(name: &[u8]) -> Option<Vec<&[u8]>> {
    if name.contains(&0) {
        return None;
    }
    let mut out: Vec<&[u8]> = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    Some(out)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

fn os(c: &[u8]) -> &OsStr {
    OsStr::from_bytes(c)
}

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// `openat2(dir, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
fn open_in_root(dir: BorrowedFd<'_>, rel: &[u8], flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let path: &[u8] = if rel.is_empty() { b"." } else { rel };
    rfs::openat2(
        dir,
        os(path),
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
}

/// Seconds with an optional fraction (PAX `mtime=1700000000.5`).
fn pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    let digits: String = frac.chars().take(9).collect();
    if !digits.is_empty() {
        nanos = format!("{digits:0<9}").parse().ok()?;
        if secs < 0 {
            nanos = -nanos;
        }
    }
    Some(Timespec {
        tv_sec: secs,
        tv_nsec: nanos as _,
    })
}

/// containerd's `boundTime`: times before the epoch become the epoch.
fn bound(t: Timespec) -> Timespec {
    if t.tv_sec < 0 {
        Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        }
    } else {
        t
    }
}

fn is_dir(st: &rfs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

impl Applier {
    fn err(&self, path: &[u8], message: impl Into<String>) -> LayerError {
        LayerError::Entry {
            path: String::from_utf8_lossy(path).into_owned(),
            message: message.into(),
        }
    }

    fn io_err(&self, what: &'static str, rel: &[u8], e: impl Into<io::Error>) -> LayerError {
        LayerError::io(what, self.root_path.join(os(rel)), e)
    }

    fn attrs<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> Result<Attrs, LayerError> {
        let h = entry.header();
        let mode = h.mode().map_err(LayerError::Read)? & 0o7777;
        let uid = h.uid().map_err(LayerError::Read)? as u32;
        let gid = h.gid().map_err(LayerError::Read)? as u32;
        let mut mtime = Timespec {
            tv_sec: h.mtime().map_err(LayerError::Read)? as i64,
            tv_nsec: 0,
        };
        let mut atime: Option<Timespec> = None;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(LayerError::Read)? {
            for ext in pax {
                let ext = ext.map_err(LayerError::Read)?;
                let Ok(key) = ext.key() else { continue };
                match key {
                    "mtime" => {
                        if let Some(t) = pax_time(ext.value_bytes()) {
                            mtime = t;
                        }
                    }
                    "atime" => atime = pax_time(ext.value_bytes()),
                    k if k.starts_with(XATTR_PREFIX) => xattrs.push((
                        k[XATTR_PREFIX.len()..].to_string(),
                        ext.value_bytes().to_vec(),
                    )),
                    _ => {}
                }
            }
        }
        // containerd: atime = the later of atime and mtime.
        let atime = match atime {
            Some(a) if (a.tv_sec, a.tv_nsec) > (mtime.tv_sec, mtime.tv_nsec) => a,
            _ => mtime,
        };
        Ok(Attrs {
            mode,
            uid,
            gid,
            times: Timestamps {
                last_access: bound(atime),
                last_modification: bound(mtime),
            },
            xattrs,
        })
    }

    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        limits: &Limits,
    ) -> Result<(), LayerError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let comps = clean(&raw).ok_or_else(|| self.err(&raw, "the name holds a NUL byte"))?;
        let Some((base, parent)) = comps.split_last() else {
            return Ok(()); // the root itself
        };
        self.within(limits, comps.len() as u64)?;
        let (base, parent) = (*base, parent.to_vec());
        let rel = join(&comps);
        self.stats.entries += 1;
        if base.starts_with(WH_PREFIX) {
            // A whiteout removes (or opaques) things: resolve afresh after it.
            self.parent = None;
        } else {
            self.forget_parent_under(&rel);
        }
        let parent_fd = self.ensure_parent(&parent)?;
        if let Some(orig) = base.strip_prefix(WH_PREFIX) {
            let r = self.whiteout(&parent, parent_fd.as_fd(), base, orig, entry);
            self.parent = None;
            return r;
        }
        let attrs = self.attrs(entry)?;
        let at = Place {
            dir: parent_fd.as_fd(),
            base,
            rel: &rel,
            raw: &raw,
        };
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous => self.write_file(&at, entry, &attrs)?,
            T::Directory => self.make_dir(&at, attrs)?,
            T::Symlink => self.make_symlink(&at, entry, &attrs)?,
            T::Link => self.make_hardlink(&at, entry, &attrs)?,
            T::Char | T::Block | T::Fifo => self.make_node(&at, entry, &attrs)?,
            other => {
                return Err(self.err(
                    &raw,
                    format!("unhandled tar entry type {:?}", other.as_byte() as char),
                ))
            }
        }
        // Only opaque removal reads it (a base layer): kept nowhere else.
        if self.whiteouts == Whiteouts::Remove {
            self.unpacked.insert(path_key(&rel));
        }
        Ok(())
    }

    /// One more entry, `depth` components deep, within the limits.
    fn within(&self, limits: &Limits, depth: u64) -> Result<(), LayerError> {
        if self.stats.entries >= limits.layer_max_entries {
            return Err(LayerError::Limit {
                message: format!(
                    "the layer holds more than {} entries (limits.layer_max_entries)",
                    limits.layer_max_entries
                ),
                setting: "limits.layer_max_entries",
                limit: limits.layer_max_entries,
                exhausted: true,
            });
        }
        if depth > limits.layer_max_depth {
            return Err(LayerError::Limit {
                message: format!(
                    "an entry is {depth} directories deep, more than {} (limits.layer_max_depth)",
                    limits.layer_max_depth
                ),
                setting: "limits.layer_max_depth",
                limit: limits.layer_max_depth,
                exhausted: false,
            });
        }
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        at: &Place<'_>,
        entry: &mut tar::Entry<'_, R>,
        attrs: &Attrs,
    ) -> Result<(), LayerError> {
        let create = || {
            rfs::openat(
                at.dir,
                os(at.base),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
        };
        let fd = self
            .create_replacing(at.dir, at.base, create)
            .map_err(|e| self.io_err("create file", at.rel, e))?;
        created(at.dir, at.base);
        let want = entry.header().entry_size().map_err(LayerError::Read)?;
        let mut file = std::fs::File::from(fd);
        let mut written = 0u64;
        loop {
            let n = entry.read(&mut self.buf).map_err(LayerError::Read)?;
            if n == 0 {
                break;
            }
            file.write_all(&self.buf[..n])
                .map_err(|e| self.io_err("write file", at.rel, e))?;
            written += n as u64;
        }
        if written != want {
            return Err(self.err(at.raw, format!("{written} of {want} bytes in the stream")));
        }
        self.stats.bytes += written;
        self.finish_fd(file.as_fd(), at.rel, attrs)
    }

    fn make_dir(&mut self, at: &Place<'_>, attrs: Attrs) -> Result<(), LayerError> {
        // An existing directory is kept (its attributes are set below).
        self.mkdir_replacing(at.dir, at.base)
            .map_err(|e| self.io_err("mkdir", at.rel, e))?;
        created(at.dir, at.base);
        let fd = rfs::openat(
            at.dir,
            os(at.base),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io_err("open directory", at.rel, e))?;
        self.finish_fd_no_times(fd.as_fd(), at.rel, &attrs)?;
        self.dirs.push((at.rel.to_vec(), attrs.times));
        Ok(())
    }

    fn make_symlink<R: Read>(
        &mut self,
        at: &Place<'_>,
        entry: &tar::Entry<'_, R>,
        attrs: &Attrs,
    ) -> Result<(), LayerError> {
        let target = link_name(entry);
        if target.contains(&0) {
            return Err(self.err(at.raw, "the link target holds a NUL byte"));
        }
        let mk = || rfs::symlinkat(os(&target), at.dir, os(at.base));
        self.create_replacing(at.dir, at.base, mk)
            .map_err(|e| self.io_err("symlink", at.rel, e))?;
        self.finish_at(at, attrs, Made::Symlink)
    }

    fn make_hardlink<R: Read>(
        &mut self,
        at: &Place<'_>,
        entry: &tar::Entry<'_, R>,
        attrs: &Attrs,
    ) -> Result<(), LayerError> {
        let target = link_name(entry);
        let tcomps =
            clean(&target).ok_or_else(|| self.err(at.raw, "the link target holds a NUL byte"))?;
        let Some((tbase, tparent)) = tcomps.split_last() else {
            return Err(self.err(at.raw, "a hardlink to the root"));
        };
        let tdir = open_in_root(
            self.root.as_fd(),
            &join(tparent),
            OFlags::PATH | OFlags::DIRECTORY,
        )
        .map_err(|e| self.io_err("resolve hardlink target", &target, e))?;
        // The inode the new name must end up on (checked after the link).
        let tfd = rfs::openat(
            &tdir,
            os(tbase),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io_err("resolve hardlink target", &target, e))?;
        let tst = rfs::fstat(&tfd).map_err(|e| self.io_err("stat hardlink target", &target, e))?;
        let mk = || rfs::linkat(&tdir, os(tbase), at.dir, os(at.base), AtFlags::empty());
        self.create_replacing(at.dir, at.base, mk)
            .map_err(|e| self.io_err("hardlink", at.rel, e))?;
        self.finish_at(at, attrs, Made::Link(tst.st_dev, tst.st_ino))
    }

    fn make_node<R: Read>(
        &mut self,
        at: &Place<'_>,
        entry: &tar::Entry<'_, R>,
        attrs: &Attrs,
    ) -> Result<(), LayerError> {
        use tar::EntryType as T;
        let h = entry.header();
        let ft = match h.entry_type() {
            T::Char => FileType::CharacterDevice,
            T::Block => FileType::BlockDevice,
            _ => FileType::Fifo,
        };
        let major = h.device_major().ok().flatten().unwrap_or(0);
        let minor = h.device_minor().ok().flatten().unwrap_or(0);
        let mk = || {
            rfs::mknodat(
                at.dir,
                os(at.base),
                ft,
                Mode::from_raw_mode(attrs.mode & 0o777),
                rfs::makedev(major, minor),
            )
        };
        self.create_replacing(at.dir, at.base, mk)
            .map_err(|e| self.io_err("mknod", at.rel, e))?;
        self.finish_at(at, attrs, Made::Node(ft, rfs::makedev(major, minor)))
    }

    /// Create `name` in `parent` with `create`; where something is there
    /// already (EEXIST), remove it and create again: an entry that is not a
    /// directory replaces whatever is there (containerd's rule). Trying the
    /// create first saves a stat per entry: layers mostly add new names.
    /// A removal drops the cached parent descriptor: the removed entry may be
    /// the directory it names under another spelling (through a symlink).
    fn create_replacing<T>(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        create: impl Fn() -> rustix::io::Result<T>,
    ) -> io::Result<T> {
        match create() {
            Err(Errno::EXIST) => {
                self.parent = None;
                remove_all(parent, name)?;
                create().map_err(errno_io)
            }
            r => r.map_err(errno_io),
        }
    }

    /// `mkdir name` in `parent`, keeping a directory already there and
    /// replacing anything else.
    fn mkdir_replacing(&mut self, parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
        let mk = || rfs::mkdirat(parent, os(name), Mode::from_raw_mode(0o700));
        match mk() {
            Err(Errno::EXIST) => {
                let st =
                    rfs::statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW).map_err(errno_io)?;
                if is_dir(&st) {
                    return Ok(());
                }
                self.parent = None;
                remove_all(parent, name)?;
                mk().map_err(errno_io)
            }
            r => r.map_err(errno_io),
        }
    }

    /// Drop the cached parent when the entry at `rel` could change what its
    /// path resolves to: `rel` is that directory or one of its ancestors.
    fn forget_parent_under(&mut self, rel: &[u8]) {
        if let Some((p, _)) = &self.parent {
            let under = p.len() == rel.len() || (p.len() > rel.len() && p[rel.len()] == b'/');
            if p.starts_with(rel) && under {
                self.parent = None;
            }
        }
    }

    /// Owner, xattrs, mode (after the owner: chown clears setuid), times.
    fn finish_fd(&self, fd: BorrowedFd<'_>, rel: &[u8], a: &Attrs) -> Result<(), LayerError> {
        self.finish_fd_no_times(fd, rel, a)?;
        rfs::futimens(fd, &a.times).map_err(|e| self.io_err("set times", rel, e))
    }

    fn finish_fd_no_times(
        &self,
        fd: BorrowedFd<'_>,
        rel: &[u8],
        a: &Attrs,
    ) -> Result<(), LayerError> {
        rfs::fchown(
            fd,
            Some(rfs::Uid::from_raw(a.uid)),
            Some(rfs::Gid::from_raw(a.gid)),
        )
        .map_err(|e| self.io_err("chown", rel, e))?;
        for (k, v) in &a.xattrs {
            match rfs::fsetxattr(fd, k.as_str(), v, XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::NOTSUP) => {
                    tracing::warn!(xattr = %k, "ignored xattr in layer: not supported here")
                }
                Err(e) => return Err(self.io_err("setxattr", rel, e)),
            }
        }
        rfs::fchmod(fd, Mode::from_raw_mode(a.mode)).map_err(|e| self.io_err("chmod", rel, e))
    }

    /// The same for a symlink, hardlink or device: through a descriptor of
    /// the inode just made (`O_PATH`, the name not followed), checked to be
    /// that inode, so a name swapped meanwhile redirects nothing.
    fn finish_at(&self, at: &Place<'_>, a: &Attrs, made: Made) -> Result<(), LayerError> {
        let fd = self.open_made(at.dir, at.base, at.rel, made)?;
        let is_link = matches!(made, Made::Symlink)
            || rfs::fstat(&fd)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
        let empty = AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW;
        rfs::chownat(
            &fd,
            "",
            Some(rfs::Uid::from_raw(a.uid)),
            Some(rfs::Gid::from_raw(a.gid)),
            empty,
        )
        .map_err(|e| self.io_err("chown", at.rel, e))?;
        self.set_xattrs(&fd, at, a, is_link)?;
        if !is_link {
            // The magic link names the inode itself (not a symlink: no
            // further resolution); O_PATH descriptors have no fchmod.
            rfs::chmod(proc_path(fd.as_fd(), b""), Mode::from_raw_mode(a.mode))
                .map_err(|e| self.io_err("chmod", at.rel, e))?;
        }
        rfs::utimensat(&fd, "", &a.times, empty).map_err(|e| self.io_err("set times", at.rel, e))
    }

    /// Open what `name` names now, and check it is what was made there.
    fn open_made(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        rel: &[u8],
        made: Made,
    ) -> Result<OwnedFd, LayerError> {
        created(dir, name);
        let fd = rfs::openat(
            dir,
            os(name),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io_err("open", rel, e))?;
        let st = rfs::fstat(&fd).map_err(|e| self.io_err("stat", rel, e))?;
        let ft = FileType::from_raw_mode(st.st_mode);
        let same = match made {
            Made::Symlink => ft == FileType::Symlink,
            Made::Link(dev, ino) => st.st_dev == dev && st.st_ino == ino,
            Made::Node(want, rdev) => ft == want && (ft == FileType::Fifo || st.st_rdev == rdev),
        };
        if !same {
            return Err(self.err(rel, "changed by someone else while the layer was written"));
        }
        Ok(fd)
    }

    /// xattrs of a symlink, hardlink or device. A symlink's go by its name
    /// in its parent, not followed (no call sets them through an `O_PATH`
    /// descriptor of a symlink); the others' through the magic link.
    fn set_xattrs(
        &self,
        fd: &OwnedFd,
        at: &Place<'_>,
        a: &Attrs,
        is_link: bool,
    ) -> Result<(), LayerError> {
        if a.xattrs.is_empty() {
            return Ok(());
        }
        for (k, v) in &a.xattrs {
            let r = if is_link {
                rfs::lsetxattr(
                    proc_path(at.dir, at.base),
                    k.as_str(),
                    v,
                    XattrFlags::empty(),
                )
            } else {
                rfs::setxattr(
                    proc_path(fd.as_fd(), b""),
                    k.as_str(),
                    v,
                    XattrFlags::empty(),
                )
            };
            match r {
                Ok(()) => {}
                Err(Errno::NOTSUP) | Err(Errno::PERM) => {
                    tracing::warn!(xattr = %k, "ignored xattr in layer: not supported on this file type")
                }
                Err(e) => return Err(self.io_err("setxattr", at.rel, e)),
            }
        }
        Ok(())
    }

    fn whiteout<R: Read>(
        &mut self,
        parent: &[&[u8]],
        parent_fd: BorrowedFd<'_>,
        base: &[u8],
        orig: &[u8],
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), LayerError> {
        let prel = join(parent);
        if base == OPAQUE {
            match self.whiteouts {
                Whiteouts::Overlay => {
                    let dir = rfs::openat(
                        parent_fd,
                        ".",
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| self.io_err("open directory", &prel, e))?;
                    rfs::fsetxattr(&dir, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                        .map_err(|e| self.io_err("set opaque xattr", &prel, e))?;
                }
                Whiteouts::Remove => {
                    if self.opaque_done.insert(prel.clone()) {
                        self.remove_not_unpacked(parent_fd, &prel)?;
                    }
                }
            }
            return Ok(());
        }
        if orig.is_empty() || orig == b"." || orig == b".." || orig.starts_with(WH_PREFIX) {
            return Err(self.err(base, "an invalid whiteout name"));
        }
        let rel = if prel.is_empty() {
            orig.to_vec()
        } else {
            [&prel[..], b"/", orig].concat()
        };
        match self.whiteouts {
            Whiteouts::Overlay => {
                let a = self.attrs(entry)?;
                let mk = || {
                    rfs::mknodat(
                        parent_fd,
                        os(orig),
                        FileType::CharacterDevice,
                        Mode::empty(),
                        0,
                    )
                };
                match mk() {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        remove_all(parent_fd, orig).map_err(|e| self.io_err("remove", &rel, e))?;
                        mk().map_err(|e| self.io_err("mknod whiteout", &rel, e))?;
                    }
                    Err(e) => return Err(self.io_err("mknod whiteout", &rel, e)),
                }
                let made = Made::Node(FileType::CharacterDevice, 0);
                let fd = self.open_made(parent_fd, orig, &rel, made)?;
                rfs::chownat(
                    &fd,
                    "",
                    Some(rfs::Uid::from_raw(a.uid)),
                    Some(rfs::Gid::from_raw(a.gid)),
                    AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| self.io_err("chown whiteout", &rel, e))?;
            }
            Whiteouts::Remove => match remove_all(parent_fd, orig) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io_err("remove", &rel, e)),
            },
        }
        Ok(())
    }

    /// Remove every entry under `dir` this layer did not write.
    fn remove_not_unpacked(&self, dir: BorrowedFd<'_>, rel: &[u8]) -> Result<(), LayerError> {
        for name in list_dir(dir).map_err(|e| self.io_err("list", rel, e))? {
            let child: Vec<u8> = if rel.is_empty() {
                name.as_bytes().to_vec()
            } else {
                [rel, b"/", name.as_bytes()].concat()
            };
            if self.unpacked.contains(&path_key(&child)) {
                if let Ok(sub) = rfs::openat(
                    dir,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    self.remove_not_unpacked(sub.as_fd(), &child)?;
                }
                continue;
            }
            remove_all(dir, name.as_bytes()).map_err(|e| self.io_err("remove", &child, e))?;
        }
        Ok(())
    }

    /// The directory `parent` (resolved in the root), created with the
    /// lower layers' attributes where missing (containerd's `mkparent`).
    fn ensure_parent(&mut self, parent: &[&[u8]]) -> Result<std::rc::Rc<OwnedFd>, LayerError> {
        let rel = join(parent);
        if let Some((p, fd)) = &self.parent {
            if *p == rel {
                return Ok(fd.clone());
            }
        }
        let fd = std::rc::Rc::new(self.resolve_parent(parent, &rel)?);
        self.parent = Some((rel, fd.clone()));
        Ok(fd)
    }

    fn resolve_parent(&self, parent: &[&[u8]], rel: &[u8]) -> Result<OwnedFd, LayerError> {
        let flags = OFlags::PATH | OFlags::DIRECTORY;
        match open_in_root(self.root.as_fd(), rel, flags) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(self.io_err("resolve parent directory", rel, e)),
        }
        let mut fd = open_in_root(self.root.as_fd(), b"", flags)
            .map_err(|e| self.io_err("open root", b"", e))?;
        for k in 1..=parent.len() {
            let sub = join(&parent[..k]);
            match open_in_root(self.root.as_fd(), &sub, flags) {
                Ok(f) => {
                    fd = f;
                    continue;
                }
                Err(Errno::NOENT) => {}
                Err(e) => return Err(self.io_err("resolve parent directory", &sub, e)),
            }
            let name = os(parent[k - 1]);
            match rfs::mkdirat(&fd, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(self.io_err("mkdir parent", &sub, e)),
            }
            let made = rfs::openat(
                &fd,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| self.io_err("open parent", &sub, e))?;
            // 0755 whatever the umask, unless a lower layer says otherwise.
            rfs::fchmod(&made, Mode::from_raw_mode(0o755))
                .map_err(|e| self.io_err("chmod", &sub, e))?;
            self.copy_parent_info(&sub, made.as_fd())?;
            fd = made;
        }
        Ok(fd)
    }

    /// Owner, mode, times and non-trusted xattrs of `rel` in the topmost
    /// lower layer that has it, if it is a directory there.
    fn copy_parent_info(&self, rel: &[u8], made: BorrowedFd<'_>) -> Result<(), LayerError> {
        for lower in &self.parents {
            let found = match open_in_root(lower.as_fd(), rel, OFlags::PATH) {
                Ok(f) => f,
                Err(Errno::NOENT) | Err(Errno::NOTDIR) => continue,
                Err(e) => return Err(self.io_err("look up parent in lower layer", rel, e)),
            };
            let st = rfs::fstat(&found).map_err(|e| self.io_err("stat lower", rel, e))?;
            if !is_dir(&st) {
                break; // replaced: keep the defaults
            }
            rfs::fchown(
                made,
                Some(rfs::Uid::from_raw(st.st_uid)),
                Some(rfs::Gid::from_raw(st.st_gid)),
            )
            .map_err(|e| self.io_err("chown parent", rel, e))?;
            rfs::fchmod(made, Mode::from_raw_mode(st.st_mode & 0o7777))
                .map_err(|e| self.io_err("chmod parent", rel, e))?;
            let times = Timestamps {
                last_access: Timespec {
                    tv_sec: st.st_atime as _,
                    tv_nsec: st.st_atime_nsec as _,
                },
                last_modification: Timespec {
                    tv_sec: st.st_mtime as _,
                    tv_nsec: st.st_mtime_nsec as _,
                },
            };
            // `<fd>/.`: through the descriptor's magic link to the directory
            // itself (the l*xattr calls do not follow a last component, and
            // the bare magic link is that last component).
            let src = proc_path(found.as_fd(), b".");
            if let Ok(names) = list_xattrs(&src) {
                for k in names
                    .iter()
                    .filter(|k| !k.as_bytes().starts_with(b"trusted."))
                {
                    let mut v = vec![0u8; 64 << 10];
                    if let Ok(n) = rfs::lgetxattr(&src, k.as_os_str(), &mut v) {
                        let _ = rfs::fsetxattr(made, k.as_os_str(), &v[..n], XattrFlags::empty());
                    }
                }
            }
            rfs::futimens(made, &times).map_err(|e| self.io_err("set parent times", rel, e))?;
            return Ok(());
        }
        Ok(())
    }

    /// Directory times, once nothing more is written into them.
    fn finish_dirs(&mut self) -> Result<(), LayerError> {
        for (rel, times) in std::mem::take(&mut self.dirs) {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
            let fd = match open_in_root(self.root.as_fd(), &rel, flags) {
                Ok(fd) => fd,
                // Removed or replaced later in the same layer.
                Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => continue,
                Err(e) => return Err(self.io_err("open directory", &rel, e)),
            };
            rfs::futimens(&fd, &times).map_err(|e| self.io_err("set directory times", &rel, e))?;
        }
        Ok(())
    }
}

/// A layer path's key in the set of paths a layer wrote.
fn path_key(rel: &[u8]) -> u128 {
    use sha2::Digest;
    let h = sha2::Sha256::digest(rel);
    u128::from_le_bytes(h[..16].try_into().expect("16 of 32 bytes"))
}

/// A test's hook on each entry's name right after it is created.
#[cfg(test)]
type CreatedHook = Box<dyn Fn(BorrowedFd<'_>, &[u8])>;

#[cfg(test)]
thread_local! {
    /// Called right after each entry's name is created (tests swap it for
    /// a symlink there, as a concurrent process could).
    static AFTER_CREATE: std::cell::RefCell<Option<CreatedHook>> =
        const { std::cell::RefCell::new(None) };
}

#[inline]
fn created(_dir: BorrowedFd<'_>, _name: &[u8]) {
    #[cfg(test)]
    AFTER_CREATE.with(|h| {
        if let Some(h) = &*h.borrow() {
            h(_dir, _name)
        }
    });
}

/// `/proc/self/fd/<fd>/<name>`: a path for the calls that have no `*at` form
/// (l*xattr); the descriptor part is ours, the name is not followed.
fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> PathBuf {
    use std::os::fd::AsRawFd;
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    if !name.is_empty() {
        p.push(os(name));
    }
    p
}

fn list_xattrs(path: &Path) -> io::Result<Vec<OsString>> {
    let mut buf = vec![0u8; 64 << 10];
    let n = rfs::llistxattr(path, &mut buf).map_err(errno_io)?;
    Ok(buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsString::from_vec(s.to_vec()))
        .collect())
}

fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let fd = rfs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno_io)?;
    let mut out = Vec::new();
    let mut d = rfs::Dir::read_from(&fd).map_err(errno_io)?;
    while let Some(e) = d.read() {
        let e = e.map_err(errno_io)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsString::from_vec(n.to_vec()));
        }
    }
    Ok(out)
}

/// Remove everything in the directory `path` (not the directory itself),
/// following no symlink: what a failed layer wrote.
pub fn empty_dir(path: &Path) -> io::Result<()> {
    let fd = rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno_io)?;
    for name in list_dir(fd.as_fd())? {
        remove_all(fd.as_fd(), name.as_bytes())?;
    }
    Ok(())
}

/// `rm -rf <dir>/<name>` without following any symlink (containerd's
/// `os.RemoveAll`), beneath `dir`.
pub(crate) fn remove_all(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let st = rfs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW).map_err(errno_io)?;
    if is_dir(&st) {
        let sub = rfs::openat(
            dir,
            os(name),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno_io)?;
        for child in list_dir(sub.as_fd())? {
            remove_all(sub.as_fd(), child.as_bytes())?;
        }
        rfs::unlinkat(dir, os(name), AtFlags::REMOVEDIR).map_err(errno_io)
    } else {
        rfs::unlinkat(dir, os(name), AtFlags::empty()).map_err(errno_io)
    }
}

#[cfg(test)]
mod tests;
