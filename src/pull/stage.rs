//! Writing layers ahead of the snapshot chain. Layer i's snapshot can only be
//! prepared once layer i-1's is committed, so writing each layer's files
//! between its Prepare and its Commit makes the chain as slow as the writes.
//! The stager instead writes every layer (in order, as its bytes arrive) into
//! a staging directory beside the snapshotter's `snapshots/` directory; when
//! the chain reaches the layer, its staged directory is renamed onto the
//! prepared snapshot's (empty) upper directory, then committed. The first
//! layer of the chain is written straight into its prepared snapshot.
//!
//! The applier of a staged layer looks missing parent directories up in the
//! layers below through directory descriptors it holds, which stay valid
//! across their renames. Before the rename, the prepared snapshot's lower
//! directories must be the very directories the layer was staged against
//! (device and inode); if anything else happened (another process committed
//! a layer of the chain meanwhile), the staged files are dropped and
//! containerd's diff service applies the layer.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};
use tokio::sync::oneshot;

use super::native::{apply_native, Decoding, Target};
use super::PullError;
use crate::layer::Whiteouts;
use crate::manifest::Descriptor;

/// Directory (beside `snapshots/` in the snapshotter's root) of staged layers:
/// `<pid>-<random>`.
pub const STAGING_DIR: &str = "cri-imaged-staging";

/// A layer written into a staging directory; removed unless moved into its
/// snapshot.
pub struct StagedDir {
    path: PathBuf,
    /// (device, inode) of the directories it was staged against, topmost first.
    lowers: Vec<(u64, u64)>,
    moved: bool,
}

impl StagedDir {
    /// Whether `t` (the prepared snapshot) stacks on what this was staged against.
    pub fn fits(&self, t: &Target) -> bool {
        t.whiteouts == Whiteouts::Overlay
            && t.lowers.len() >= self.lowers.len()
            && self
                .lowers
                .iter()
                .zip(&t.lowers)
                .all(|(id, p)| std::fs::metadata(p).is_ok_and(|m| (m.dev(), m.ino()) == *id))
    }

    /// Rename it onto the snapshot's (empty) upper directory.
    pub fn move_into(mut self, upper: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.path, upper)?;
        self.moved = true;
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.moved {
            let p = self.path.clone();
            std::thread::spawn(move || {
                let _ = std::fs::remove_dir_all(p);
            });
        }
    }
}

/// What the stager did with one layer.
pub enum StageOutcome {
    /// Written and verified: into its prepared snapshot (None, the chain's
    /// first layer) or into a staging directory.
    Applied(Option<StagedDir>),
    /// Not staged: the chain applies it itself, natively from this decoder
    /// if there is one, else through containerd.
    Declined(Option<Decoding>),
    /// Writing or verifying it failed: the pull fails with this.
    Failed(PullError),
}

/// One layer for the stager, in chain order.
pub struct Job {
    pub layer: Descriptor,
    pub diff_id: String,
    pub decoded: oneshot::Receiver<Decoding>,
    pub out: oneshot::Sender<StageOutcome>,
}

/// `<snapshotter root>/cri-imaged-staging` for an upper directory
/// `<root>/snapshots/<id>/fs` (the overlayfs snapshotter's layout).
fn staging_root(upper: &Path) -> Option<PathBuf> {
    let snapshots = upper.parent()?.parent()?;
    (upper.file_name()? == "fs" && snapshots.file_name()? == "snapshots")
        .then(|| snapshots.parent().map(|r| r.join(STAGING_DIR)))
        .flatten()
}

fn dir_id(fd: &OwnedFd) -> Option<(u64, u64)> {
    rustix::fs::fstat(fd).ok().map(|st| (st.st_dev, st.st_ino))
}

fn open_dir(p: &Path) -> std::io::Result<OwnedFd> {
    rustix::fs::open(
        p,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(Into::into)
}

/// A fresh staging directory, 0755 root-owned like the snapshotter's own.
fn make_staging_dir(root: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(root)?;
    let p = root.join(format!(
        "{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir(&p)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::chown(&p, Some(0), Some(0))?;
    Ok(p)
}

/// Run the stager: `base` (where the chain's first layer goes) arrives once
/// that layer is prepared (None: it cannot be written natively); `jobs` are that layer and those
/// above it, in order.
pub async fn run(base: oneshot::Receiver<Option<Target>>, jobs: Vec<Job>) {
    let base = base.await.ok().flatten();
    let staging = base.as_ref().and_then(|b| staging_root(&b.upper));
    // The directories written so far (topmost first), held open.
    let mut below: Vec<Arc<OwnedFd>> = Vec::new();
    let mut ids: Vec<(u64, u64)> = Vec::new();
    let mut declining = base.is_none();
    for (k, job) in jobs.into_iter().enumerate() {
        let Ok(decoding) = job.decoded.await else {
            // Not downloaded by this pull: containerd applies it, and the
            // layers above it cannot be staged against it.
            declining = true;
            let _ = job.out.send(StageOutcome::Declined(None));
            continue;
        };
        let Some(base) = base.as_ref().filter(|_| !declining) else {
            let _ = job.out.send(StageOutcome::Declined(Some(decoding)));
            continue;
        };
        let (root, whiteouts, staged) = if k == 0 {
            (base.upper.clone(), base.whiteouts, None)
        } else {
            let Some(staging) = &staging else {
                declining = true;
                let _ = job.out.send(StageOutcome::Declined(Some(decoding)));
                continue;
            };
            match make_staging_dir(staging) {
                Ok(p) => (
                    p.clone(),
                    Whiteouts::Overlay,
                    Some(StagedDir {
                        path: p,
                        lowers: ids.clone(),
                        moved: false,
                    }),
                ),
                Err(e) => {
                    // Not writable here after all: the chain writes in place.
                    tracing::debug!(dir = %staging.display(), error = %e, "cannot stage layers; writing them in place");
                    declining = true;
                    let _ = job.out.send(StageOutcome::Declined(Some(decoding)));
                    continue;
                }
            }
        };
        let fd = match open_dir(&root) {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                let _ = job.out.send(StageOutcome::Failed(PullError::local_io(
                    e.raw_os_error(),
                    format!("open {}: {e}", root.display()),
                )));
                return;
            }
        };
        let t = Target {
            upper: root,
            lowers: base.lowers.clone(),
            whiteouts,
        };
        let t0 = std::time::Instant::now();
        let r = apply_native(&job.layer, &job.diff_id, decoding, t, below.clone()).await;
        tracing::debug!(
            layer = %job.layer.digest,
            staged = k > 0,
            apply_us = t0.elapsed().as_micros() as u64,
            "layer written"
        );
        match r {
            Ok(()) => {
                if let Some(id) = dir_id(&fd) {
                    ids.insert(0, id);
                    below.insert(0, fd);
                } else {
                    declining = true;
                }
                let _ = job.out.send(StageOutcome::Applied(staged));
            }
            Err(e) => {
                let _ = job.out.send(StageOutcome::Failed(e));
                return;
            }
        }
    }
}

/// Remove staging directories a killed cri-imaged left under
/// `<snapshotter_root>/cri-imaged-staging`. Runs at start.
pub fn cleanup(snapshotter_root: &Path) -> usize {
    super::leftovers::remove_dead_leftovers(&snapshotter_root.join(STAGING_DIR), |p| {
        std::fs::remove_dir_all(p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_sits_beside_the_snapshots_directory() {
        assert_eq!(
            staging_root(Path::new(
                "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/12/fs"
            )),
            Some(PathBuf::from(
                "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/cri-imaged-staging"
            ))
        );
        assert_eq!(staging_root(Path::new("/x/other/12/fs")), None);
        assert_eq!(staging_root(Path::new("/x/snapshots/12/upper")), None);
    }
}
