//! At start: commit the layer blobs a killed cri-imaged had downloaded into
//! named spools (small layers, stored only after their pull) but not yet
//! stored in containerd's content store. The image they belong to may already
//! run from its snapshots; this makes its content complete again. containerd
//! verifies each blob's digest on commit.

use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1::{WriteAction, WriteContentRequest};
use tokio_stream::wrappers::ReceiverStream;

use super::spool::{SpoolRecord, INSTANCE, SPOOL_PREFIX};
use crate::containerd::{Containerd, ContainerdError, Lease, LeaseKind, OnDrop};

const CHUNK: usize = 1 << 20;

/// Commit every complete spool a dead process left in `spool_dir` and remove
/// the spool files (partial ones too). The commits are held by a lease of
/// `expiry`, as the blobs were by the dead pull's: a pull killed before its
/// records finds them there when it is retried. Returns how many were stored.
pub async fn commit_spooled(
    cd: &Containerd,
    spool_dir: &Path,
    expiry: Duration,
) -> Result<usize, ContainerdError> {
    let Ok(entries) = std::fs::read_dir(spool_dir) else {
        return Ok(0);
    };
    let me = std::process::id();
    let mut lease: Option<Lease> = None;
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
        if pid != me && super::unpack::pid_is_cri_imaged(pid) {
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
                if lease.is_none() {
                    lease = Some(Lease::create(cd, LeaseKind::Flat, expiry, OnDrop::Expire).await?);
                }
                let lease_id = lease.as_ref().map(|l| l.id().to_string());
                match store(cd, &rec, bytes, lease_id.as_deref()).await {
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
