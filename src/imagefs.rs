//! ImageFsInfo: the snapshotter's usage, sampled in the background the way
//! containerd's CRI does it (sum of every snapshot's usage), answered from cache.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
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

pub struct ImageFs {
    cd: Containerd,
    snapshotter: String,
    mountpoint: PathBuf,
    last: RwLock<FsUsage>,
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
        })
    }

    pub fn mountpoint(&self) -> &std::path::Path {
        &self.mountpoint
    }

    /// The latest sample.
    pub fn current(&self) -> FsUsage {
        self.last.read().unwrap().clone()
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
        *self.last.write().unwrap() = u.clone();
        Ok(u)
    }

    /// Sample forever at `interval`.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        loop {
            if let Err(e) = self.sample().await {
                tracing::debug!(error = %e, "imagefs sample failed; keeping the previous one");
            }
            tokio::time::sleep(interval).await;
        }
    }
}
