//! Unpacking in containerd, pipelined with the download: layer i is applied
//! (snapshots Prepare -> diff Apply -> verify diffID -> Commit) as soon as it
//! and every layer below it are in the content store.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{PullCtx, PullError};
use crate::containerd::{labels, ContainerdError, LeaseResource};
use crate::manifest::Descriptor;

/// Key prefix of our active (being extracted) snapshots:
/// `extract-crii-<pid>-<nanos>-<random> <chainID>`.
pub const EXTRACT_KEY_PREFIX: &str = "extract-crii-";

/// Unpack `layers`; `fetched[i]` fires when layer i is in the content store.
/// Returns the top chain ID and the time (since the start of the call) at
/// which the unpack finished.
pub async fn unpack(
    ctx: &PullCtx,
    layers: &[Descriptor],
    diff_ids: &[String],
    fetched: Vec<oneshot::Receiver<()>>,
) -> Result<(String, Duration), PullError> {
    let start = Instant::now();
    let chain = crate::reference::chain_id(diff_ids);
    // Which snapshots exist, all at once (read-only Stats). A chain's snapshot
    // keeps its parents, so only the highest present one joins the lease;
    // it is looked at again after that, in case a concurrent RemoveImage
    // collected it in between (then every layer is applied; commits of
    // chains that exist are accepted).
    let exists = futures::future::try_join_all(
        chain
            .iter()
            .map(|c| ctx.cd.snapshot_exists(&ctx.snapshotter, c)),
    )
    .await?;
    let mut present_up_to = exists.iter().rposition(|e| *e);
    if let Some(k) = present_up_to {
        let held = LeaseResource::Snapshot {
            snapshotter: &ctx.snapshotter,
            key: &chain[k],
        };
        ctx.cd.lease_add(&ctx.lease, held).await?;
        if !ctx.cd.snapshot_exists(&ctx.snapshotter, &chain[k]).await? {
            present_up_to = None;
        }
    }
    let mut labelling = Vec::new();
    let mut parent = String::new();
    for (i, (layer, done)) in layers.iter().zip(fetched).enumerate() {
        let chain_id = &chain[i];
        // Still wait for the blob: the image must be complete in content too.
        done.await.map_err(|_| PullError::Canceled)?;
        if present_up_to.is_none_or(|k| i > k) {
            apply_layer(ctx, layer, &diff_ids[i], chain_id, &parent).await?;
            // Off the critical path: the next layer's Prepare need not wait
            // for this label; all are joined before the unpack reports done.
            let cd = ctx.cd.clone();
            let (digest, diff_id) = (layer.digest.clone(), diff_ids[i].clone());
            labelling.push(tokio::spawn(async move {
                cd.label_content(
                    &digest,
                    HashMap::from([(labels::UNCOMPRESSED.to_string(), diff_id)]),
                )
                .await
            }));
        }
        parent = chain_id.clone();
    }
    for l in labelling {
        l.await
            .map_err(|e| PullError::Internal(format!("labelling task: {e}")))??;
    }
    Ok((chain.last().cloned().unwrap_or_default(), start.elapsed()))
}

async fn apply_layer(
    ctx: &PullCtx,
    layer: &Descriptor,
    diff_id: &str,
    chain_id: &str,
    parent: &str,
) -> Result<(), PullError> {
    let key = format!(
        "{}{}-{}-{:08x} {chain_id}",
        EXTRACT_KEY_PREFIX,
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
        rand::random::<u32>()
    );
    let mounts = match ctx
        .cd
        .prepare_snapshot(&ctx.snapshotter, &key, parent, Some(&ctx.lease))
        .await
    {
        Ok(m) => m,
        Err(ContainerdError::AlreadyExists(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let result = async {
        let applied = ctx
            .cd
            .apply_diff(
                containerd_client::types::Descriptor {
                    media_type: layer.media_type.clone(),
                    digest: layer.digest.clone(),
                    size: layer.size,
                    annotations: HashMap::new(),
                },
                mounts,
                Some(&ctx.lease),
            )
            .await?;
        if applied.digest != diff_id {
            return Err(PullError::DigestMismatch(format!(
                "layer {} unpacked to {} but the image config expects diff ID {diff_id}",
                layer.digest, applied.digest
            )));
        }
        let labels = HashMap::from([(labels::SNAPSHOT_REF.to_string(), chain_id.to_string())]);
        match ctx
            .cd
            .commit_snapshot(&ctx.snapshotter, chain_id, &key, labels, Some(&ctx.lease))
            .await
        {
            Ok(()) => {}
            // Someone else committed the same chain meanwhile: theirs is as good.
            Err(ContainerdError::AlreadyExists(_)) => {
                let _ = ctx.cd.remove_snapshot(&ctx.snapshotter, &key).await;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = ctx.cd.remove_snapshot(&ctx.snapshotter, &key).await;
    }
    result
}

/// Remove active snapshots a killed cri-imaged left behind mid-unpack: our
/// `extract-crii-<pid>-…` keys whose process is not a live cri-imaged (the
/// lease of that pull would otherwise keep them until it expires). Runs at
/// start; the retried pull prepares a fresh key.
pub async fn cleanup_interrupted(
    cd: &crate::containerd::Containerd,
    snapshotters: &[String],
) -> Result<usize, ContainerdError> {
    let me = std::process::id();
    let mut removed = 0;
    for sn in snapshotters {
        let infos = match cd.list_snapshots(sn).await {
            Ok(v) => v,
            // A snapshotter that is not loaded has nothing of ours.
            Err(ContainerdError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        for info in infos {
            let Some(rest) = info.name.strip_prefix(EXTRACT_KEY_PREFIX) else {
                continue;
            };
            if info.kind != containerd_client::services::v1::snapshots::Kind::Active as i32 {
                continue;
            }
            let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
            if let Some(pid) = pid {
                if pid == me || pid_is_cri_imaged(pid) {
                    continue;
                }
            }
            match cd.remove_snapshot(sn, &info.name).await {
                Ok(()) | Err(ContainerdError::NotFound(_)) => {
                    removed += 1;
                    tracing::info!(snapshotter = %sn, key = %info.name, "removed a snapshot left by an interrupted unpack");
                }
                Err(e) => {
                    tracing::warn!(snapshotter = %sn, key = %info.name, error = %e, "cannot remove a snapshot left by an interrupted unpack")
                }
            }
        }
    }
    Ok(removed)
}

/// Is `pid` a running cri-imaged (in our pid namespace)?
fn pid_is_cri_imaged(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().starts_with("cri-imaged"))
        .unwrap_or(false)
}
