//! Unpacking, pipelined with the download: layer i is applied (snapshots
//! Prepare -> write the files -> verify -> Commit) in order, as soon as every
//! layer below it is committed.
//!
//! Who writes the files: cri-imaged itself (the native unpack, `crate::layer`)
//! for a layer this pull downloads into an overlayfs snapshot it can see; it
//! streams the spooled download through a decoder thread (digest, decompress,
//! diff ID) into an applier thread that writes the upper directory. Layers
//! decode up to `DECODE_AHEAD` ahead of the one being written. Otherwise
//! (another snapshotter, content already present, a snapshot directory in
//! another mount namespace, `unpacker: containerd`) containerd's diff service
//! applies it from the content store. Either way containerd owns the
//! snapshots: Prepare and Commit go through its API under the pull's lease.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Semaphore};

use super::native::{apply_native, native_target, start_decoder, Decoding, Target};
use super::spool::Spool;
use super::stage;
use super::{AbortOnDrop, PullCtx, PullError};
use crate::containerd::{labels, ContainerdError, LeaseResource};
use crate::layer;
use crate::manifest::Descriptor;

/// Key prefix of our active (being extracted) snapshots:
/// `extract-crii-<pid>-<nanos>-<random> <chainID>`.
pub const EXTRACT_KEY_PREFIX: &str = "extract-crii-";

/// Layers whose decoders may run at once (each buffers at most
/// `DECODE_BUFFER` MiB of tar ahead of its applier).
const DECODE_AHEAD: usize = 3;

/// `DECODE_AHEAD`, or `CRI_IMAGED_DECODE_AHEAD` (1-16) for measuring what
/// the lookahead buys (BENCHMARKS.md); not a configuration key.
fn decode_ahead() -> usize {
    static N: once_cell::sync::Lazy<usize> = once_cell::sync::Lazy::new(|| {
        std::env::var("CRI_IMAGED_DECODE_AHEAD")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(|n: usize| n.clamp(1, 16))
            .unwrap_or(DECODE_AHEAD)
    });
    *N
}
/// Settings of the native unpack for one pull.
#[derive(Debug, Clone)]
pub struct Native {
    pub spool_dir: PathBuf,
    pub limits: layer::Limits,
    /// Decompressed bytes this pull's layers may still produce.
    pub budget: Arc<std::sync::atomic::AtomicU64>,
}

/// A fallback to containerd's applier is logged once per process.
static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

/// Unpack `layers`; `fetched[i]` fires when layer i is in the content store;
/// `spools[i]` yields layer i's download as it streams in, when this pull
/// downloads it natively; `chain` holds the layers' chain IDs. Returns the
/// time (since the start of the call) at which the unpack finished.
pub async fn unpack(
    ctx: &PullCtx,
    layers: &[Descriptor],
    diff_ids: &[String],
    chain: &[String],
    fetched: Vec<oneshot::Receiver<()>>,
    spools: Vec<oneshot::Receiver<Arc<Spool>>>,
) -> Result<Duration, PullError> {
    let start = Instant::now();
    let present_up_to = present_up_to(ctx, chain).await?;
    let needed: Vec<bool> = (0..layers.len())
        .map(|i| present_up_to.is_none_or(|k| i > k))
        .collect();
    // Decoders start in layer order (so the bounded lookahead cannot block
    // the layer the applier waits for), as soon as each download starts.
    let (decoded_tx, decoded): (Vec<_>, Vec<_>) = layers
        .iter()
        .map(|_| oneshot::channel::<Decoding>())
        .unzip();
    let (starter, stager, sources) = if let Some(native) = &ctx.native {
        let starter = start_decoders(native, layers, spools, decoded_tx, &needed);
        let (stager, sources) = start_stager(layers, diff_ids, decoded, &needed);
        (Some(starter), Some(stager), sources)
    } else {
        (
            None,
            None,
            layers.iter().map(|_| Source::Containerd).collect(),
        )
    };
    let mut labelling = Vec::new();
    let mut parent = String::new();
    for (i, ((layer, done), source)) in layers.iter().zip(fetched).zip(sources).enumerate() {
        let chain_id = &chain[i];
        if !needed[i] {
            // Still wait for the blob: the image must be complete in content too.
            ctx.open_commit_gate();
            done.await.map_err(|_| PullError::Canceled)?;
        } else {
            let at = LayerAt {
                index: i,
                layer,
                diff_id: &diff_ids[i],
                chain_id,
                parent: &parent,
            };
            // Labelling is off the critical path: the next layer's Prepare
            // need not wait for it; all are joined before the unpack ends.
            match apply_layer(ctx, &at, source, done).await? {
                // Labelled when its blob is committed (in the background).
                Label::AtCommit => {}
                Label::Now => labelling.push(label_later(ctx, layer, &diff_ids[i], None)),
                Label::After(done) => {
                    // Waiting on a blob: let the commits go.
                    ctx.open_commit_gate();
                    labelling.push(label_later(ctx, layer, &diff_ids[i], Some(done)));
                }
            }
        }
        parent = chain_id.clone();
    }
    drop((starter, stager));
    for l in labelling {
        l.await
            .map_err(|e| PullError::Internal(format!("labelling task: {e}")))??;
    }
    Ok(start.elapsed())
}

/// The highest layer whose chain's snapshot exists, held in the lease.
/// Which snapshots exist is asked all at once (read-only Stats). A chain's
/// snapshot keeps its parents, so only the highest present one joins the
/// lease; it is looked at again after that, in case a concurrent RemoveImage
/// collected it in between (then every layer is applied; commits of chains
/// that exist are accepted).
async fn present_up_to(ctx: &PullCtx, chain: &[String]) -> Result<Option<usize>, PullError> {
    let exists = futures::future::try_join_all(
        chain
            .iter()
            .map(|c| ctx.cd.snapshot_exists(&ctx.snapshotter, c)),
    )
    .await?;
    let Some(k) = exists.iter().rposition(|e| *e) else {
        return Ok(None);
    };
    let held = LeaseResource::Snapshot {
        snapshotter: &ctx.snapshotter,
        key: &chain[k],
    };
    ctx.cd.lease_add(&ctx.lease, held).await?;
    if !ctx.cd.snapshot_exists(&ctx.snapshotter, &chain[k]).await? {
        return Ok(None);
    }
    Ok(Some(k))
}

/// Start each needed layer's decoder once its download starts, in layer
/// order, at most `decode_ahead()` at a time.
fn start_decoders(
    native: &Native,
    layers: &[Descriptor],
    spools: Vec<oneshot::Receiver<Arc<Spool>>>,
    decoded_tx: Vec<oneshot::Sender<Decoding>>,
    needed: &[bool],
) -> AbortOnDrop<()> {
    let ahead = Arc::new(Semaphore::new(decode_ahead()));
    // The pull's decoders reuse each other's chunk buffers.
    let pool = layer::ChunkPool::default();
    let (limits, budget) = (native.limits, native.budget.clone());
    let jobs: Vec<_> = layers
        .iter()
        .cloned()
        .zip(spools)
        .zip(decoded_tx)
        .zip(needed.iter().copied())
        .collect();
    AbortOnDrop::spawn(async move {
        for (((desc, spool), tx), needed) in jobs {
            if !needed {
                continue;
            }
            let Ok(permit) = ahead.clone().acquire_owned().await else {
                return;
            };
            if let Ok(spool) = spool.await {
                let b = layer::Budget::new(&limits, desc.size.max(0) as u64, budget.clone());
                let _ = tx.send(start_decoder(spool, &desc, permit, &pool, &limits, b));
            }
        }
    })
}

/// The stager writes the needed layers ahead of the chain (stage.rs);
/// returns it and where each layer comes from.
fn start_stager(
    layers: &[Descriptor],
    diff_ids: &[String],
    decoded: Vec<oneshot::Receiver<Decoding>>,
    needed: &[bool],
) -> (AbortOnDrop<()>, Vec<Source>) {
    let (base_tx, base_rx) = oneshot::channel();
    let mut base_tx = Some(base_tx);
    let mut jobs = Vec::new();
    let mut sources = Vec::with_capacity(layers.len());
    for (i, decoded) in decoded.into_iter().enumerate() {
        if !needed[i] {
            sources.push(Source::Containerd);
            continue;
        }
        let (out, outcome) = oneshot::channel();
        jobs.push(stage::Job {
            layer: layers[i].clone(),
            diff_id: diff_ids[i].clone(),
            decoded,
            out,
        });
        sources.push(Source::Stager {
            outcome,
            base: base_tx.take(),
        });
    }
    (AbortOnDrop::spawn(stage::run(base_rx, jobs)), sources)
}

/// Label a layer's blob with its uncompressed digest in the background,
/// after `wait` (a layer another pull committed may still be on its way
/// into the content store).
fn label_later(
    ctx: &PullCtx,
    layer: &Descriptor,
    diff_id: &str,
    wait: Option<oneshot::Receiver<()>>,
) -> tokio::task::JoinHandle<Result<(), PullError>> {
    let (cd, discard) = (ctx.cd.clone(), ctx.discard_layers);
    let (digest, diff_id) = (layer.digest.clone(), diff_id.to_string());
    tokio::spawn(async move {
        if let Some(done) = wait {
            done.await.map_err(|_| PullError::Canceled)?;
        }
        let label = HashMap::from([(labels::UNCOMPRESSED.to_string(), diff_id)]);
        match cd.label_content(&digest, label).await {
            // discard_unpacked_layers: a natively unpacked blob is never stored.
            Err(e) if discard && e.is_not_found() => Ok(()),
            r => r.map_err(PullError::from),
        }
    })
}

/// An active snapshot removed when dropped before `keep` (a failure, a
/// cancel): nothing half-written is ever committed or left behind.
struct Active<'a> {
    ctx: &'a PullCtx,
    key: String,
    armed: bool,
}

impl Active<'_> {
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        if self.armed {
            let (cd, sn, key) = (
                self.ctx.cd.clone(),
                self.ctx.snapshotter.clone(),
                self.key.clone(),
            );
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let removal = rt.spawn(async move {
                    let _ = cd.remove_snapshot(&sn, &key).await;
                });
                self.ctx.removals.lock().push(removal);
            }
        }
    }
}

/// Who writes a layer's files.
enum Source {
    /// containerd's diff service, from the content store.
    Containerd,
    /// The stager (stage.rs); the chain's first layer also tells it where
    /// its snapshot is (`base`).
    Stager {
        outcome: oneshot::Receiver<stage::StageOutcome>,
        base: Option<oneshot::Sender<Option<Target>>>,
    },
}

/// When a layer's blob gets its `containerd.io/uncompressed` label.
enum Label {
    /// Now: it is in the content store.
    Now,
    /// Once it is in the content store.
    After(oneshot::Receiver<()>),
    /// In its commit (the native unpack's background store).
    AtCommit,
}

/// The key of an active snapshot being extracted:
/// `extract-crii-<pid>-<nanos>-<random> <chainID>`.
pub(super) fn extract_key(chain_id: &str) -> String {
    format!(
        "{}{}-{}-{:08x} {chain_id}",
        EXTRACT_KEY_PREFIX,
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
        rand::random::<u32>()
    )
}

/// One layer of the chain: its place, its digests, its parent's chain ID.
#[derive(Clone, Copy)]
struct LayerAt<'a> {
    index: usize,
    layer: &'a Descriptor,
    diff_id: &'a str,
    chain_id: &'a str,
    parent: &'a str,
}

/// Apply one layer; says when its blob is to be labelled.
async fn apply_layer(
    ctx: &PullCtx,
    at: &LayerAt<'_>,
    source: Source,
    done: oneshot::Receiver<()>,
) -> Result<Label, PullError> {
    let t0 = Instant::now();
    let key = extract_key(at.chain_id);
    // For a remote snapshotter: the labels it may serve the layer by.
    let prepare_labels = ctx
        .remote
        .as_ref()
        .map(|r| r.image.for_layer(&r.layers, at.index, at.chain_id))
        .unwrap_or_default();
    let prepared = ctx
        .cd
        .prepare_snapshot(
            &ctx.snapshotter,
            &key,
            at.parent,
            prepare_labels,
            Some(&ctx.lease),
        )
        .await;
    let mounts = match prepared {
        Ok(m) => m,
        Err(ContainerdError::AlreadyExists(_)) => return Ok(Label::After(done)),
        Err(e) => return Err(e.into()),
    };
    let active = Active {
        ctx,
        key: key.clone(),
        armed: true,
    };
    let target = native_target(&mounts);
    let (staged, decoding) = take_source(source, &target).await?;
    let t1 = Instant::now();
    let staged = place_staged(ctx, at.layer, staged, &target)?;
    let rest = match (staged, decoding, target) {
        (Some(true), _, _) => {
            ctx.metrics.layers_unpacked_native.inc();
            Label::AtCommit
        }
        (None, Some(d), Some(t)) => {
            apply_native(at.layer, at.diff_id, d, t, Vec::new()).await?;
            ctx.metrics.layers_unpacked_native.inc();
            Label::AtCommit
        }
        (_, decoding, _) => apply_by_containerd(ctx, at, mounts, decoding, done).await?,
    };
    let t2 = Instant::now();
    let labels = HashMap::from([(labels::SNAPSHOT_REF.to_string(), at.chain_id.to_string())]);
    let committed = ctx
        .cd
        .commit_snapshot(
            &ctx.snapshotter,
            at.chain_id,
            &key,
            labels,
            Some(&ctx.lease),
        )
        .await;
    match committed {
        Ok(()) => active.keep(),
        // Someone else committed the same chain meanwhile: theirs is as good
        // (ours is removed by the guard).
        Err(ContainerdError::AlreadyExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    tracing::debug!(
        layer = at.index,
        digest = %at.layer.digest,
        prepare_us = (t1 - t0).as_micros() as u64,
        write_us = (t2 - t1).as_micros() as u64,
        commit_us = t2.elapsed().as_micros() as u64,
        "layer unpacked"
    );
    Ok(rest)
}

/// What the layer's source left: written by the stager (ahead of this
/// Prepare; `Some(None)`: into this very snapshot), or a decoder to apply
/// here, or neither (containerd applies it).
async fn take_source(
    source: Source,
    target: &Option<Target>,
) -> Result<(Option<Option<stage::StagedDir>>, Option<Decoding>), PullError> {
    match source {
        Source::Containerd => Ok((None, None)),
        Source::Stager { outcome, base } => {
            if let Some(tx) = base {
                let _ = tx.send(target.clone());
            }
            match outcome.await {
                Ok(stage::StageOutcome::Applied(dir)) => Ok((Some(dir), None)),
                Ok(stage::StageOutcome::Declined(d)) => Ok((None, d)),
                Ok(stage::StageOutcome::Failed(e)) => Err(e),
                Err(_) => Ok((None, None)),
            }
        }
    }
}

/// Move a staged layer into its snapshot: `Some(true)` when the snapshot
/// now holds it, `Some(false)` when the staging does not fit (containerd
/// applies it), `None` when nothing was staged.
fn place_staged(
    ctx: &PullCtx,
    layer: &Descriptor,
    staged: Option<Option<stage::StagedDir>>,
    target: &Option<Target>,
) -> Result<Option<bool>, PullError> {
    match (staged, target) {
        // Written straight into this snapshot (the chain's first layer).
        (Some(None), _) => Ok(Some(true)),
        (Some(Some(dir)), Some(t)) if dir.fits(t) => {
            dir.move_into(&t.upper).map_err(|e| {
                PullError::local_io(
                    e.raw_os_error(),
                    format!("move a staged layer into {}: {e}", t.upper.display()),
                )
            })?;
            ctx.metrics.layers_staged.inc();
            Ok(Some(true))
        }
        // Staged against other lower layers than the snapshot has: dropped.
        (Some(Some(_)), _) => {
            tracing::debug!(layer = %layer.digest, "staged layer does not fit the prepared snapshot; containerd applies it");
            Ok(Some(false))
        }
        (None, _) => Ok(None),
    }
}

/// containerd's diff service applies the layer from the content store, once
/// its blob is there; the result must be the config's diff ID.
async fn apply_by_containerd(
    ctx: &PullCtx,
    at: &LayerAt<'_>,
    mounts: Vec<containerd_client::types::Mount>,
    decoding: Option<Decoding>,
    done: oneshot::Receiver<()>,
) -> Result<Label, PullError> {
    if decoding.is_some() && !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            snapshotter = %ctx.snapshotter,
            mounts = ?mounts.iter().map(|m| &m.r#type).collect::<Vec<_>>(),
            "native unpack not possible here (snapshot directories not visible from this mount namespace?); containerd's diff service applies the layers (logged once)"
        );
    }
    drop(decoding);
    ctx.open_commit_gate();
    done.await.map_err(|_| PullError::Canceled)?;
    let layer = at.layer;
    let blob = containerd_client::types::Descriptor {
        media_type: layer.media_type.clone(),
        digest: layer.digest.clone(),
        size: layer.size,
        annotations: HashMap::new(),
    };
    let applied = ctx.cd.apply_diff(blob, mounts, Some(&ctx.lease)).await?;
    if applied.digest != at.diff_id {
        return Err(PullError::DigestMismatch(format!(
            "layer {} unpacked to {} but the image config expects diff ID {}",
            layer.digest, applied.digest, at.diff_id
        )));
    }
    ctx.metrics.layers_unpacked_containerd.inc();
    Ok(Label::Now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Whiteouts;
    use containerd_client::types::Mount;

    /// When a download fails, the unpack reading its spool fails too; the
    /// error the pull reports must be the download's (here: a stall), not
    /// the reader's "abandoned", whichever of the two is seen first.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_unpack_reports_its_failed_downloads_error() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::create(tmp.path()).unwrap();
        let w = spool.writer();
        w.write_at(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0], 0).unwrap();
        let desc = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 1 << 20,
            platform: None,
            annotations: None,
            urls: None,
        };
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        let limits = layer::Limits::default();
        let budget = layer::Budget::layer_only(u64::MAX);
        let pool = layer::ChunkPool::default();
        let d = start_decoder(spool.clone(), &desc, permit, &pool, &limits, budget);
        let stalled = PullError::Stalled {
            digest: desc.digest.clone(),
            after: Duration::from_secs(2),
            received: 8,
            total: 1 << 20,
        };
        w.fail(stalled);
        let upper = tmp.path().join("upper");
        std::fs::create_dir(&upper).unwrap();
        let t = Target {
            upper,
            lowers: Vec::new(),
            whiteouts: Whiteouts::Overlay,
        };
        let e = apply_native(&desc, "sha256:x", d, t, Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(e, PullError::Stalled { .. }), "{e}");
    }

    fn mount(ty: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: ty.into(),
            source: source.into(),
            target: String::new(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn targets_from_the_overlayfs_snapshotter_mounts() {
        let tmp = tempfile::tempdir().unwrap();
        let d = |n: &str| {
            let p = tmp.path().join(n);
            std::fs::create_dir_all(&p).unwrap();
            p.display().to_string()
        };
        let (up, l1, l2, work) = (d("3/fs"), d("2/fs"), d("1/fs"), d("3/work"));
        // A base layer: a bind of the empty directory; whiteouts remove.
        let t = native_target(&[mount("bind", &up, &["rw", "rbind"])]).unwrap();
        assert_eq!(
            (t.upper.display().to_string(), t.whiteouts),
            (up.clone(), Whiteouts::Remove)
        );
        assert!(t.lowers.is_empty());
        // Above it: upperdir and lowerdir (topmost first) from the options.
        let opts = [
            "index=off".to_string(),
            format!("workdir={work}"),
            format!("upperdir={up}"),
            format!("lowerdir={l1}:{l2}"),
        ];
        let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
        let t = native_target(&[mount("overlay", "overlay", &opts)]).unwrap();
        assert_eq!(t.whiteouts, Whiteouts::Overlay);
        assert_eq!(t.lowers, vec![PathBuf::from(&l1), PathBuf::from(&l2)]);
        // Anything else falls back to containerd's applier.
        assert!(native_target(&[]).is_none());
        assert!(native_target(&[mount("ext4", "/dev/vdb", &[])]).is_none());
        assert!(
            native_target(&[mount("overlay", "overlay", &["lowerdir=/a:/b"])]).is_none(),
            "a view"
        );
        assert!(native_target(&[mount("bind", "/nonexistent/in/this/namespace", &[])]).is_none());
        let two = [mount("bind", &up, &[]), mount("bind", &up, &[])];
        assert!(native_target(&two).is_none());
    }
}
