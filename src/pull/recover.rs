//! At start: commit the layer blobs a killed cri-imaged had downloaded but not
//! yet stored in containerd's content store, whole in containerd's ingest
//! files (large layers) or in named spools (small layers, stored only after
//! their pull). The image they belong to may already run from its snapshots;
//! this makes its content complete again. containerd verifies each blob's
//! digest on commit.

use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1::{WriteAction, WriteContentRequest};
use tokio_stream::wrappers::ReceiverStream;

use super::spool::{SpoolRecord, INSTANCE, SPOOL_PREFIX};
use crate::containerd::{Containerd, ContainerdError, Lease, LeaseKind, OnDrop};

const CHUNK: usize = 1 << 20;

/// Both repairs, once; returns how many blobs were committed.
pub async fn at_start(
    cd: &Containerd,
    content_root: &Path,
    spool_dir: &Path,
    expiry: Duration,
) -> Result<usize, ContainerdError> {
    Ok(commit_interrupted(cd, content_root, expiry).await?
        + commit_spooled(cd, spool_dir, expiry).await?)
}

/// The lease holding repaired blobs (as the dead pull's held them, with an
/// expiry): created when the first blob needs it.
struct RepairLease {
    expiry: Duration,
    lease: Option<Lease>,
}

impl RepairLease {
    fn new(expiry: Duration) -> RepairLease {
        RepairLease {
            expiry,
            lease: None,
        }
    }

    async fn id(&mut self, cd: &Containerd) -> Result<String, ContainerdError> {
        if self.lease.is_none() {
            self.lease =
                Some(Lease::create(cd, LeaseKind::Flat, self.expiry, OnDrop::Expire).await?);
        }
        Ok(self
            .lease
            .as_ref()
            .map(|l| l.id().to_string())
            .unwrap_or_default())
    }
}

/// Commit the layer blobs a killed predecessor downloaded whole into
/// containerd's ingest files but did not get to commit (its pull had
/// returned: the image runs, its content is incomplete). containerd re-reads
/// and verifies each one. The commits are held by a lease of `expiry` (as
/// the ingests were by the dead pull's): a pull that was killed before its
/// records finds its blobs there when it is retried. Runs at start; returns
/// how many were committed.
async fn commit_interrupted(
    cd: &Containerd,
    content_root: &Path,
    expiry: Duration,
) -> Result<usize, ContainerdError> {
    let prefix = format!("{}/", cd.namespace());
    let mut done = 0;
    let Ok(dirs) = std::fs::read_dir(content_root.join("ingest")) else {
        return Ok(0);
    };
    let mut lease = RepairLease::new(expiry);
    for e in dirs.flatten() {
        let p = e.path();
        let Ok(backend) = std::fs::read_to_string(p.join("ref")) else {
            continue;
        };
        // <namespace>/<sequence>/cri-imaged-<digest>
        let Some(rest) = backend.strip_prefix(&prefix) else {
            continue;
        };
        let Some((_, r#ref)) = rest.split_once('/') else {
            continue;
        };
        let Some(digest) = r#ref.strip_prefix("cri-imaged-") else {
            continue;
        };
        let total: Option<i64> = std::fs::read_to_string(p.join("total"))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        let len = std::fs::metadata(p.join("data")).map(|m| m.len() as i64);
        let (Some(total), Ok(len)) = (total, len) else {
            continue;
        };
        if total <= 0 || len != total {
            continue; // partial: a later pull resumes it with a Range request
        }
        let lease_id = lease.id(cd).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(2);
        for action in [WriteAction::Stat, WriteAction::Commit] {
            let _ = tx
                .send(WriteContentRequest {
                    action: action as i32,
                    r#ref: r#ref.to_string(),
                    offset: if action == WriteAction::Commit {
                        total
                    } else {
                        0
                    },
                    total,
                    expected: digest.to_string(),
                    ..Default::default()
                })
                .await;
        }
        drop(tx);
        match cd
            .write_to_end(ReceiverStream::new(rx), Some(&lease_id))
            .await
        {
            Ok(()) => {
                done += 1;
                tracing::info!(%digest, "committed a layer blob an interrupted pull left in containerd's ingest");
            }
            Err(ContainerdError::AlreadyExists(_)) => {}
            Err(ContainerdError::Unavailable { message, socket }) => {
                return Err(ContainerdError::Unavailable { message, socket })
            }
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot commit a layer blob an interrupted pull left")
            }
        }
    }
    Ok(done)
}

/// Commit every complete spool a dead process left in `spool_dir` and remove
/// the spool files (partial ones too). The commits are held by a lease of
/// `expiry`, as the blobs were by the dead pull's: a pull killed before its
/// records finds them there when it is retried. Returns how many were stored.
async fn commit_spooled(
    cd: &Containerd,
    spool_dir: &Path,
    expiry: Duration,
) -> Result<usize, ContainerdError> {
    let Ok(entries) = std::fs::read_dir(spool_dir) else {
        return Ok(0);
    };
    let me = std::process::id();
    let mut lease = RepairLease::new(expiry);
    let mut stored = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(SPOOL_PREFIX) else {
            continue;
        };
        let mut parts = rest.split('-');
        let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let instance = parts.next().and_then(|i| u64::from_str_radix(i, 16).ok());
        // Ours, or a live cri-imaged's (a surge upgrade runs two): theirs to
        // store. Our pid with another instance is a dead predecessor's.
        if pid == me && instance == Some(*INSTANCE) {
            continue;
        }
        if pid != me && super::leftovers::pid_is_cri_imaged(pid) {
            continue;
        }
        let path = e.path();
        let Some(stem) = name.strip_suffix(".json") else {
            // A data file whose record is gone: nothing can commit it.
            if name.ends_with(".blob") && !path.with_extension("json").exists() {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        };
        let data = spool_dir.join(format!("{stem}.blob"));
        let record: Option<SpoolRecord> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        // Another containerd's (a second cri-imaged on this host): not ours.
        if record.as_ref().is_some_and(|r| {
            Path::new(&r.containerd) != cd.socket() || r.namespace != cd.namespace()
        }) {
            continue;
        }
        let bytes = std::fs::read(&data).ok();
        match (record, bytes) {
            (Some(rec), Some(bytes)) if bytes.len() as u64 == rec.size => {
                let lease_id = lease.id(cd).await?;
                match store(cd, &rec, bytes, Some(&lease_id)).await {
                    Ok(()) => {
                        stored += 1;
                        tracing::info!(digest = %rec.digest, "stored a layer blob an interrupted pull had spooled");
                    }
                    // containerd going away: try again later, files kept.
                    Err(e @ ContainerdError::Unavailable { .. }) => return Err(e),
                    Err(e) => {
                        tracing::warn!(digest = %rec.digest, error = %e, "cannot store a layer blob an interrupted pull had spooled")
                    }
                }
            }
            // Partial (killed mid-download) or unreadable: a later pull fetches it.
            _ => {}
        }
        let _ = std::fs::remove_file(&data);
        let _ = std::fs::remove_file(&path);
    }
    Ok(stored)
}

/// Write `bytes` as `rec.digest` with its labels (AlreadyExists is success).
async fn store(
    cd: &Containerd,
    rec: &SpoolRecord,
    bytes: Vec<u8>,
    lease: Option<&str>,
) -> Result<(), ContainerdError> {
    let r#ref = format!("cri-imaged-{}", rec.digest);
    let total = rec.size as i64;
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
    let sender = {
        let (r#ref, digest, labels) = (r#ref.clone(), rec.digest.clone(), rec.labels.clone());
        tokio::spawn(async move {
            let mut offset = 0usize;
            // Offset 0 first: containerd truncates an ingest left before.
            for chunk in bytes.chunks(CHUNK) {
                let msg = WriteContentRequest {
                    action: WriteAction::Write as i32,
                    r#ref: r#ref.clone(),
                    offset: offset as i64,
                    total,
                    expected: digest.clone(),
                    data: chunk.to_vec(),
                    ..Default::default()
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
                offset += chunk.len();
            }
            let _ = tx
                .send(WriteContentRequest {
                    action: WriteAction::Commit as i32,
                    r#ref,
                    offset: offset as i64,
                    total,
                    expected: digest,
                    labels,
                    ..Default::default()
                })
                .await;
        })
    };
    let result = cd.write_to_end(ReceiverStream::new(rx), lease).await;
    sender.abort();
    match result {
        Err(ContainerdError::AlreadyExists(_)) => Ok(()),
        r => r,
    }
}
