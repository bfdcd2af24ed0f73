//! ImageFsInfo: the snapshotter's usage, sampled in the background the way
//! containerd's CRI does it (sum of every snapshot's usage), answered from cache.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::containerd::Containerd;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsUsage {
    pub mountpoint: String,
    pub used_bytes: u64,
    pub inodes_used: u64,
    /// Sample time, nanoseconds since the epoch (0 = never sampled).
    pub timestamp_ns: i64,
}

/// After a pull or removal, wait this long for more changes before sampling,
/// so a burst of pulls costs one sample, not one each.
const CHANGE_DEBOUNCE: Duration = Duration::from_millis(100);

pub struct ImageFs {
    cd: Containerd,
    snapshotter: String,
    mountpoint: PathBuf,
    last: RwLock<FsUsage>,
    changed: tokio::sync::Notify,
}

impl ImageFs {
    pub fn new(cd: Containerd, snapshotter: String, mountpoint: PathBuf) -> Arc<ImageFs> {
        let last = FsUsage {
            mountpoint: mountpoint.display().to_string(),
            ..Default::default()
        };
        Arc::new(ImageFs {
            cd,
            snapshotter,
            mountpoint,
            last: RwLock::new(last),
            changed: tokio::sync::Notify::new(),
        })
    }

    pub fn mountpoint(&self) -> &std::path::Path {
        &self.mountpoint
    }

    /// The latest sample.
    pub fn current(&self) -> FsUsage {
        self.last.read().clone()
    }

    /// Something changed the snapshots (a pull or a removal finished): sample
    /// again soon (debounced) instead of at the next interval, so ImageFsInfo
    /// reflects what was just done.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// Take one sample now.
    pub async fn sample(&self) -> Result<FsUsage, crate::containerd::ContainerdError> {
        let mut bytes = 0u64;
        let mut inodes = 0u64;
        for s in self.cd.list_snapshots(&self.snapshotter).await? {
            match self.cd.snapshot_usage(&self.snapshotter, &s.name).await {
                Ok((b, i)) => {
                    bytes += b.max(0) as u64;
                    inodes += i.max(0) as u64;
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let u = FsUsage {
            mountpoint: self.mountpoint.display().to_string(),
            used_bytes: bytes,
            inodes_used: inodes,
            timestamp_ns: ts,
        };
        *self.last.write() = u.clone();
        Ok(u)
    }

    /// Sample forever: every `interval`, and shortly after each [`changed`](Self::changed).
    pub async fn run(self: Arc<Self>, interval: Duration) {
        loop {
            if let Err(e) = self.sample().await {
                tracing::debug!(error = %e, "imagefs sample failed; keeping the previous one");
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.changed.notified() => tokio::time::sleep(CHANGE_DEBOUNCE).await,
            }
        }
    }
}
