//! The native applier's two halves for one layer: a decoder thread (digest,
//! decompress, diff ID) reading the layer's download as it streams in, and
//! an applier thread writing the snapshot directory (`crate::layer`); used by
//! the chain (unpack.rs) and by the stager writing ahead of it (stage.rs).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use super::spool::Spool;
use super::PullError;
use crate::layer::{self, LayerError, Whiteouts};
use crate::manifest::Descriptor;

/// MiB of decoded tar a decoder buffers ahead of its applier.
const DECODE_BUFFER: usize = 4;

/// Sets the flag when dropped: stops the blocking threads of an abandoned unpack.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One layer being decoded ahead of its apply.
pub(super) struct Decoding {
    rx: Receiver<Vec<u8>>,
    task: tokio::task::JoinHandle<Result<layer::Decoded, LayerError>>,
    cancel: CancelOnDrop,
    _permit: OwnedSemaphorePermit,
    pool: layer::ChunkPool,
    /// The download it reads (for the download's own error).
    spool: Arc<Spool>,
    /// The applier's limits (the decoder holds the byte budget).
    limits: layer::Limits,
}

/// Start decoding a layer's download (as it streams in) on a blocking thread.
pub(super) fn start_decoder(
    spool: Arc<Spool>,
    desc: &Descriptor,
    permit: OwnedSemaphorePermit,
    pool: &layer::ChunkPool,
    limits: &layer::Limits,
    budget: layer::Budget,
) -> Decoding {
    let (tx, rx) = sync_channel(DECODE_BUFFER);
    let cancel = Arc::new(AtomicBool::new(false));
    let (flag, digest, size) = (cancel.clone(), desc.digest.clone(), desc.size.max(0) as u64);
    let pool2 = pool.clone();
    let spool2 = spool.clone();
    let task = tokio::task::spawn_blocking(move || {
        // The spool ends only once the download matched the digest.
        let blob = layer::Blob {
            digest: &digest,
            size,
            check: layer::Check::SizeOnly,
        };
        let r = layer::decode(spool.reader(), blob, tx, &flag, &pool2, &budget);
        r.map_err(|e| named(&digest, e))
    });
    Decoding {
        rx,
        task,
        cancel: CancelOnDrop(cancel),
        _permit: permit,
        pool: pool.clone(),
        spool: spool2,
        limits: *limits,
    }
}

/// Where a prepared snapshot's files go, from the mounts Prepare returned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    pub upper: PathBuf,
    pub lowers: Vec<PathBuf>,
    pub whiteouts: Whiteouts,
}

/// The overlayfs snapshotter's mounts: a bind of the (empty) directory for a
/// layer without parent, an overlay with `upperdir` and `lowerdir` (topmost
/// first) otherwise. `None` for anything else, or directories not visible
/// from here (another mount namespace).
pub(crate) fn native_target(mounts: &[containerd_client::types::Mount]) -> Option<Target> {
    let [m] = mounts else { return None };
    let t = match m.r#type.as_str() {
        "bind" => Target {
            upper: PathBuf::from(&m.source),
            lowers: Vec::new(),
            // containerd applies a base layer through a mount, removing
            // what its whiteouts name; there is nothing below to hide.
            whiteouts: Whiteouts::Remove,
        },
        "overlay" => {
            let opt = |k: &str| m.options.iter().find_map(|o| o.strip_prefix(k));
            Target {
                upper: PathBuf::from(opt("upperdir=")?),
                lowers: opt("lowerdir=")
                    .map(|l| l.split(':').map(PathBuf::from).collect())
                    .unwrap_or_default(),
                whiteouts: Whiteouts::Overlay,
            }
        }
        _ => return None,
    };
    // Writable from here too: a read-only mount (the chart's pod mode, a
    // host service with ProtectSystem) leaves the writing to containerd.
    let writable = rustix::fs::access(&t.upper, rustix::fs::Access::WRITE_OK).is_ok();
    (writable && t.upper.is_dir() && t.lowers.iter().all(|l| l.is_dir())).then_some(t)
}

/// A limit's error names its layer (the applier does not know it).
fn named(digest: &str, e: LayerError) -> LayerError {
    match e {
        LayerError::Limit {
            message,
            setting,
            limit,
            exhausted,
        } => LayerError::Limit {
            message: format!("layer {digest}: {message}"),
            setting,
            limit,
            exhausted,
        },
        e => e,
    }
}

fn layer_error(e: LayerError) -> PullError {
    if e.is_mismatch() {
        return PullError::DigestMismatch(e.to_string());
    }
    if e.is_malformed() {
        return PullError::BadLayer(e.to_string());
    }
    match e {
        LayerError::Limit { .. } => PullError::LayerLimit(e.to_string()),
        LayerError::Canceled => PullError::Canceled,
        e => PullError::local_io(e.raw_os_error(), e.to_string()),
    }
}

/// The decoder thread (already running) feeds an applier thread writing the
/// snapshot's directory; both checks (blob digest, diff ID) pass before this
/// returns Ok.
pub(super) async fn apply_native(
    layer: &Descriptor,
    diff_id: &str,
    d: Decoding,
    t: Target,
    lower_fds: Vec<Arc<std::os::fd::OwnedFd>>,
) -> Result<(), PullError> {
    let Decoding {
        rx,
        task,
        cancel,
        _permit,
        pool,
        spool,
        limits,
    } = d;
    let flag = cancel.0.clone();
    let digest = layer.digest.clone();
    let upper = t.upper.clone();
    let applier = tokio::task::spawn_blocking(move || {
        layer::apply_tar(
            &t.upper,
            layer::DecodedReader::new(rx, pool),
            &layer::ApplyOptions {
                whiteouts: t.whiteouts,
                lower_fds: &lower_fds,
                parents: &t.lowers,
                cancel: Some(&flag),
                limits,
            },
        )
        .map_err(|e| named(&digest, e))
    });
    let (decoded, applied) = futures::future::join(task, applier).await;
    let joined = |e: tokio::task::JoinError| PullError::Internal(format!("unpack thread: {e}"));
    let (decoded, applied) = (decoded.map_err(joined)?, applied.map_err(joined)?);
    if decoded.is_err() || applied.is_err() {
        // The snapshot goes, but containerd may free its directory only at
        // a later collection: what was written goes now (in the background).
        tokio::task::spawn_blocking(move || {
            if let Err(e) = layer::empty_dir(&upper) {
                tracing::debug!(dir = %upper.display(), error = %e, "could not empty a failed layer's directory");
            }
        });
    }
    if decoded.is_err() || applied.is_err() {
        // A failed download fails its reader: the download's error is the cause.
        if let Some(e) = spool.failure() {
            return Err(e);
        }
    }
    let decoded = match (decoded, applied) {
        // The decoder's failure (digest, size, corrupt stream) explains the applier's.
        (Err(e), _) if !matches!(e, LayerError::Canceled) => return Err(layer_error(e)),
        // The decoder delivered the whole stream (or stopped because the
        // applier did): a tar the applier cannot read is a malformed layer.
        (_, Err(LayerError::Read(e))) if e.raw_os_error().is_none() => {
            return Err(PullError::BadLayer(format!(
                "layer {}: not a readable tar stream: {e}",
                layer.digest
            )))
        }
        (_, Err(e)) => return Err(layer_error(e)),
        (Err(e), Ok(_)) => return Err(layer_error(e)),
        (Ok(d), Ok(_)) => d,
    };
    if decoded.diff_id != diff_id {
        return Err(layer_error(LayerError::DiffId {
            digest: layer.digest.clone(),
            expected: diff_id.to_string(),
            actual: decoded.diff_id,
        }));
    }
    drop(cancel);
    Ok(())
}
