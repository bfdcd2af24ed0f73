//! A verified layer blob put straight into containerd's local content store
//! as its blob file, `<content root>/blobs/<algorithm>/<hex>`, so that
//! containerd only has to record it: with the shared content policy
//! (containerd's default) a write whose expected digest names a blob the
//! store already holds opens complete, with no ingest directory, and its
//! commit is one metadata transaction. containerd neither receives the bytes
//! nor reads and hashes them again. The file is made durable (fsync) and
//! read-only first, as containerd's own commit leaves it.
//!
//! The download's spool is linked into place when it is on the same
//! filesystem (containerd's ingest file always is); otherwise it is copied
//! in the kernel (`copy_file_range`) into `<content root>/cri-imaged-tmp`
//! and renamed into place.

use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Beside `blobs/` and `ingest/`, never looked at by containerd.
pub const TMP_DIR: &str = "cri-imaged-tmp";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// The store held the blob already.
    Existed,
    /// Hard-linked from the spool.
    Linked,
    /// Copied from a spool on another filesystem.
    Copied,
}

/// `<content root>/blobs/<algorithm>/<hex>` for `digest`, or None when the
/// digest is not a well-formed sha256/sha512 one (nothing else may become a
/// path).
pub fn blob_path(content_root: &Path, digest: &str) -> Option<PathBuf> {
    let (alg, hex) = digest.split_once(':')?;
    let len = match alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => return None,
    };
    let ok = hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then(|| content_root.join("blobs").join(alg).join(hex))
}

/// Put `file` (whose bytes are `digest`, already verified; its name is
/// `path`) into the content store at `content_root`. Blocking.
pub fn place(content_root: &Path, file: &File, path: &Path, digest: &str) -> io::Result<Placed> {
    let target = blob_path(content_root, digest)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a sha256/sha512 digest"))?;
    if target.symlink_metadata().is_ok() {
        return Ok(Placed::Existed);
    }
    // Durable and read-only before it has its content-store name, as
    // containerd's commit does (`fsync`, rename, mode minus write and exec).
    file.sync_data()?;
    read_only(file)?;
    match std::fs::hard_link(path, &target) {
        Ok(()) => Ok(Placed::Linked),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Placed::Existed),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            copy_into(content_root, file, &target)
        }
        Err(e) => Err(e),
    }
}

fn read_only(file: &File) -> io::Result<()> {
    let mode = file.metadata()?.permissions().mode() & 0o777;
    file.set_permissions(std::fs::Permissions::from_mode(mode & !0o333))
}

fn copy_into(content_root: &Path, file: &File, target: &Path) -> io::Result<Placed> {
    let dir = content_root.join(TMP_DIR);
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(
        "{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let r = (|| {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let mut src = file;
        io::Seek::seek(&mut src, io::SeekFrom::Start(0))?;
        io::copy(&mut src, &mut out)?;
        out.sync_data()?;
        out.set_permissions(std::fs::Permissions::from_mode(0o444))?;
        std::fs::rename(&tmp, target)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map(|()| Placed::Copied)
}

/// Remove what a killed cri-imaged left in `<content root>/cri-imaged-tmp`
/// (files named `<pid>-<random>`). Runs at start.
pub fn cleanup(content_root: &Path) -> usize {
    super::leftovers::remove_dead_leftovers(&content_root.join(TMP_DIR), |p| {
        std::fs::remove_file(p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    const D: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn only_well_formed_digests_become_paths() {
        let root = Path::new("/c");
        assert_eq!(
            blob_path(root, D).unwrap(),
            Path::new(
                "/c/blobs/sha256/2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
            )
        );
        for bad in [
            "sha256:../../etc/passwd",
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
            "sha256:2cf24dba",
            "md5:2cf24dba5fb0a30e26e83b2ac5b9e29e",
            "sha256",
            "",
        ] {
            assert_eq!(blob_path(root, bad), None, "{bad}");
        }
    }

    #[test]
    fn a_spool_is_linked_read_only_and_an_existing_blob_is_left_alone() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("blobs/sha256")).unwrap();
        let spool = root.path().join("spool");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&spool)
            .unwrap();
        f.write_all(b"hello").unwrap();
        assert_eq!(place(root.path(), &f, &spool, D).unwrap(), Placed::Linked);
        let target = blob_path(root.path(), D).unwrap();
        let m = target.metadata().unwrap();
        assert_eq!(m.mode() & 0o777, 0o444);
        assert_eq!(m.ino(), spool.metadata().unwrap().ino());
        assert_eq!(std::fs::read(&target).unwrap(), b"hello");
        // The spool goes; the blob stays.
        std::fs::remove_file(&spool).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"hello");
        let other = root.path().join("other");
        let g = File::create(&other).unwrap();
        assert_eq!(place(root.path(), &g, &other, D).unwrap(), Placed::Existed);
        assert_eq!(std::fs::read(&target).unwrap(), b"hello");
    }

    #[test]
    fn the_copy_path_renames_a_whole_file_into_place() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("blobs/sha256")).unwrap();
        let src = tempfile::NamedTempFile::new_in(root.path()).unwrap();
        std::fs::write(src.path(), b"hello").unwrap();
        let target = blob_path(root.path(), D).unwrap();
        assert_eq!(
            copy_into(root.path(), src.as_file(), &target).unwrap(),
            Placed::Copied
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"hello");
        assert_eq!(target.metadata().unwrap().mode() & 0o777, 0o444);
        assert_eq!(
            std::fs::read_dir(root.path().join(TMP_DIR))
                .unwrap()
                .count(),
            0
        );
        // A leftover of a dead process is removed at start.
        std::fs::write(root.path().join(TMP_DIR).join("999999999-00"), b"x").unwrap();
        assert_eq!(cleanup(root.path()), 1);
    }
}
