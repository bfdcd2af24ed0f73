//! Streaming a blob from a registry into containerd's content store.
//!
//! The write uses a stable ingest ref per digest, so a write interrupted by a
//! crash or a broken connection resumes where containerd's ingest stopped
//! (with an HTTP Range request). containerd verifies size and digest on commit.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use containerd_client::services::v1::{WriteAction, WriteContentRequest, WriteContentResponse};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use std::sync::Arc;
use std::time::Instant;

use futures::future::{try_join, try_join_all};
use tokio::sync::Semaphore;

use super::{records, unpack, PullCtx, PullError, Puller};
use crate::containerd::{ContainerdError, LeaseResource};
use crate::manifest::Descriptor;

/// Bytes per content write message.
const CHUNK: usize = 1 << 20;
/// Re-opens of a blob download after a broken or short body.
const MAX_RESUMES: usize = 5;

/// A content ingest another writer holds ("locked") is retried this often,
/// this far apart (10 s in all), before the pull gives up.
const LOCKED_RETRIES: usize = 50;
const LOCKED_RETRY_PAUSE: Duration = Duration::from_millis(200);
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// Already in containerd's content store.
    Reused,
    /// Downloaded this many bytes.
    Downloaded(u64),
}

fn ingest_ref(digest: &str) -> String {
    format!("cri-imaged-{digest}")
}

/// An open content write.
struct Writer {
    tx: mpsc::Sender<WriteContentRequest>,
    responses: tokio::task::JoinHandle<Result<Option<WriteContentResponse>, tonic::Status>>,
    r#ref: String,
    offset: u64,
}

enum Opened {
    Exists,
    Open(Writer),
}

async fn open(ctx: &PullCtx, desc: &Descriptor) -> Result<Opened, PullError> {
    let r#ref = ingest_ref(&desc.digest);
    let mut attempt = 0;
    loop {
        let (tx, rx) = mpsc::channel::<WriteContentRequest>(4);
        tx.send(WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: r#ref.clone(),
            total: desc.size,
            expected: desc.digest.clone(),
            ..Default::default()
        })
        .await
        .ok();
        let res = ctx
            .cd
            .write_stream(ReceiverStream::new(rx), Some(&ctx.lease))
            .await;
        let mut stream = match res {
            Ok(s) => s,
            Err(ContainerdError::AlreadyExists(_)) => return Ok(Opened::Exists),
            Err(e) => return Err(e.into()),
        };
        match stream.message().await {
            Ok(Some(first)) => {
                let offset = first.offset.max(0) as u64;
                let responses = tokio::spawn(async move {
                    let mut last = None;
                    while let Some(m) = stream.message().await? {
                        last = Some(m);
                    }
                    Ok(last)
                });
                return Ok(Opened::Open(Writer {
                    tx,
                    responses,
                    r#ref: r#ref.clone(),
                    offset,
                }));
            }
            Ok(None) => {
                return Err(PullError::Internal(
                    "containerd closed the content write".into(),
                ))
            }
            Err(s) => match ctx.cd.map_status(s) {
                ContainerdError::AlreadyExists(_) => return Ok(Opened::Exists),
                // Another writer holds the ref lock (a concurrent pull in another
                // process): wait and retry.
                ContainerdError::Unavailable { message, .. }
                    if message.contains("locked") && attempt < LOCKED_RETRIES =>
                {
                    attempt += 1;
                    tokio::time::sleep(LOCKED_RETRY_PAUSE).await;
                }
                e => return Err(e.into()),
            },
        }
    }
}

impl Writer {
    async fn send(&mut self, data: Vec<u8>, ctx: &PullCtx) -> Result<(), PullError> {
        let len = data.len() as u64;
        let msg = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: self.r#ref.clone(),
            offset: self.offset as i64,
            data,
            ..Default::default()
        };
        if self.tx.send(msg).await.is_err() {
            return Err(self.failure(ctx).await);
        }
        self.offset += len;
        Ok(())
    }

    /// The error that made containerd close the stream.
    async fn failure(&mut self, ctx: &PullCtx) -> PullError {
        match (&mut self.responses).await {
            Ok(Err(s)) => ctx.cd.map_status(s).into(),
            _ => PullError::Internal("containerd closed the content write".into()),
        }
    }

    async fn commit(
        mut self,
        desc: &Descriptor,
        labels: HashMap<String, String>,
        ctx: &PullCtx,
    ) -> Result<(), PullError> {
        let msg = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.r#ref.clone(),
            offset: self.offset as i64,
            total: desc.size,
            expected: desc.digest.clone(),
            labels,
            ..Default::default()
        };
        if self.tx.send(msg).await.is_err() {
            return Err(self.commit_error(ctx, desc).await);
        }
        drop(self.tx);
        match self.responses.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => match ctx.cd.map_status(s) {
                ContainerdError::AlreadyExists(_) => Ok(()),
                ContainerdError::DigestMismatch(m) => {
                    let _ = ctx.cd.abort_write(&self.r#ref).await;
                    Err(PullError::DigestMismatch(format!(
                        "blob {}: {m}",
                        desc.digest
                    )))
                }
                e => Err(e.into()),
            },
            Err(e) => Err(PullError::Internal(format!("content writer task: {e}"))),
        }
    }

    async fn commit_error(&mut self, ctx: &PullCtx, desc: &Descriptor) -> PullError {
        match self.failure(ctx).await {
            PullError::DigestMismatch(m) => {
                let _ = ctx.cd.abort_write(&self.r#ref).await;
                PullError::DigestMismatch(format!("blob {}: {m}", desc.digest))
            }
            e => e,
        }
    }
}

/// Write bytes we already hold (manifests, indexes, configs).
pub async fn write_bytes(
    ctx: &PullCtx,
    desc: &Descriptor,
    data: Bytes,
    labels: HashMap<String, String>,
) -> Result<Fetched, PullError> {
    // No separate existence check: containerd's Writer answers AlreadyExists
    // for present content and, in the same transaction, adds it to the lease
    // the write carries, so a concurrent RemoveImage cannot collect it from
    // under this pull.
    let mut w = match open(ctx, desc).await? {
        Opened::Exists => {
            if !labels.is_empty() {
                ctx.cd.label_content(&desc.digest, labels).await?;
            }
            return Ok(Fetched::Reused);
        }
        Opened::Open(w) => w,
    };
    if w.offset != 0 {
        // Restart a stale partial ingest from scratch.
        w.offset = 0;
    }
    let n = data.len() as u64;
    w.send(data.to_vec(), ctx).await?;
    w.commit(desc, labels, ctx).await?;
    Ok(Fetched::Downloaded(n))
}

/// Download a blob from the registry into containerd (unless present).
pub async fn fetch_blob(
    ctx: &PullCtx,
    desc: &Descriptor,
    labels: HashMap<String, String>,
) -> Result<Fetched, PullError> {
    // Existence check and lease reference in one step (see write_bytes).
    let mut w = match open(ctx, desc).await? {
        Opened::Exists => return Ok(Fetched::Reused),
        Opened::Open(w) => w,
    };
    let size = desc.size.max(0) as u64;
    if w.offset > size {
        w.offset = 0;
    }
    let start_offset = w.offset;
    let mut resumes = 0;
    // One copy per byte: registry chunks are gathered straight into the
    // Vec that becomes the write message.
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
    'download: while w.offset + buf.len() as u64 != size || size == 0 {
        let want = w.offset + buf.len() as u64;
        let blob = ctx
            .registries
            .get_blob(&ctx.domain, &ctx.repo, &desc.digest, want, &ctx.auth)
            .await?;
        let mut skip = want.saturating_sub(blob.offset);
        let mut stream = blob.stream;
        loop {
            let next = if ctx.progress_timeout.is_zero() {
                stream.next().await
            } else {
                match tokio::time::timeout(ctx.progress_timeout, stream.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        return Err(PullError::Stalled {
                            digest: desc.digest.clone(),
                            after: ctx.progress_timeout,
                            received: w.offset + buf.len() as u64,
                            total: size,
                        })
                    }
                }
            };
            match next {
                None => break,
                Some(Ok(mut chunk)) => {
                    ctx.progress(chunk.len() as u64);
                    if skip > 0 {
                        let s = (skip as usize).min(chunk.len());
                        let _ = chunk.split_to(s);
                        skip -= s as u64;
                    }
                    if w.offset + (buf.len() + chunk.len()) as u64 > size {
                        let _ = ctx.cd.abort_write(&w.r#ref).await;
                        return Err(PullError::DigestMismatch(format!(
                            "blob {} from {}/{}: the registry sent more than the {} bytes the manifest declares",
                            desc.digest, ctx.domain, ctx.repo, size
                        )));
                    }
                    let mut rest: &[u8] = &chunk;
                    while !rest.is_empty() {
                        let take = (CHUNK - buf.len()).min(rest.len());
                        buf.extend_from_slice(&rest[..take]);
                        rest = &rest[take..];
                        if buf.len() == CHUNK {
                            let data = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK));
                            w.send(data, ctx).await?;
                        }
                    }
                }
                Some(Err(e)) => {
                    if resumes >= MAX_RESUMES || !super::retryable(&e) {
                        return Err(e.into());
                    }
                    resumes += 1;
                    ctx.metrics.blob_range_resumes.inc();
                    tracing::info!(digest = %desc.digest, offset = want, error = %e, "blob download broke; resuming with a range request");
                    continue 'download;
                }
            }
        }
        if size == 0 || w.offset + buf.len() as u64 == size {
            break;
        }
        if resumes >= MAX_RESUMES {
            return Err(PullError::from(crate::registry::RegistryError::Protocol(
                format!(
                    "blob {} from {}/{}: body ended at {} of {} bytes {} times",
                    desc.digest,
                    ctx.domain,
                    ctx.repo,
                    w.offset + buf.len() as u64,
                    size,
                    resumes + 1
                ),
            )));
        }
        resumes += 1;
        ctx.metrics.blob_range_resumes.inc();
    }
    if !buf.is_empty() {
        w.send(buf, ctx).await?;
    }
    w.commit(desc, labels, ctx).await?;
    Ok(Fetched::Downloaded(size - start_offset))
}

/// One download per blob in this process, even across different images, but
/// only for the same source and credentials: another pull's failure (say,
/// unauthorized) must not become ours.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobKey {
    digest: String,
    /// `<domain>/<repo>`
    source: String,
    credentials: String,
}

/// What the fetch and unpack of one image's layers did.
#[derive(Debug, Clone, Default)]
pub(super) struct LayersDone {
    pub downloaded: usize,
    pub reused: usize,
    pub fetch: Duration,
    /// Unpack time after the last byte arrived.
    pub unpack: Duration,
    /// Chain ID of the top layer ("" without layers).
    pub top_chain: String,
}

/// Fetch every layer into the content store (bounded per pull and globally)
/// while unpacking them in order as they arrive.
pub(super) async fn fetch_and_unpack(
    puller: &Arc<Puller>,
    ctx: &Arc<PullCtx>,
    layers: &[Descriptor],
    diff_ids: &[String],
) -> Result<LayersDone, PullError> {
    let start = Instant::now();
    let per_pull = Arc::new(Semaphore::new(puller.cfg.per_pull_downloads.max(1)));
    let (arrived, arrivals): (Vec<_>, Vec<_>) = layers
        .iter()
        .map(|_| tokio::sync::oneshot::channel::<()>())
        .unzip();
    let fetches = layers.iter().zip(arrived).map(|(layer, arrived)| {
        let per_pull = per_pull.clone();
        async move {
            let _p = per_pull
                .acquire_owned()
                .await
                .map_err(|_| PullError::Canceled)?;
            let _g = puller
                .global_downloads
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| PullError::Canceled)?;
            let r = fetch_layer(puller, ctx, layer).await?;
            let _ = arrived.send(());
            Ok::<Fetched, PullError>(r)
        }
    });
    let fetch_all = async {
        let r = try_join_all(fetches).await?;
        Ok::<_, PullError>((r, start.elapsed()))
    };
    let unpacking = unpack::unpack(ctx, layers, diff_ids, arrivals);
    // On failure the lease stays until it expires so a retry resumes; what
    // was written is collected by containerd's GC after that.
    let ((fetched, fetch), (top_chain, unpack_done)) = try_join(fetch_all, unpacking).await?;
    let downloaded = fetched
        .iter()
        .filter(|f| matches!(f, Fetched::Downloaded(_)))
        .count();
    Ok(LayersDone {
        downloaded,
        reused: fetched.len() - downloaded,
        fetch,
        unpack: unpack_done.saturating_sub(fetch),
        top_chain,
    })
}

/// One layer into the content store, sharing a download another pull of this
/// process already runs for the same blob, source and credentials.
async fn fetch_layer(
    puller: &Arc<Puller>,
    ctx: &Arc<PullCtx>,
    layer: &Descriptor,
) -> Result<Fetched, PullError> {
    let key = BlobKey {
        digest: layer.digest.clone(),
        source: format!("{}/{}", ctx.domain, ctx.repo),
        credentials: ctx.auth.fingerprint(),
    };
    let joined = puller
        .blob_flights
        .run(
            key,
            {
                let (ctx, layer) = (ctx.clone(), layer.clone());
                move || async move {
                    let source = records::source_label(&ctx.domain, &ctx.repo);
                    fetch_blob(&ctx, &layer, HashMap::from([source])).await
                }
            },
            || Err(PullError::Canceled),
        )
        .await;
    let mut r = joined.value?;
    if joined.coalesced {
        // Fetched under another pull's lease: reference it from ours too.
        ctx.cd
            .lease_add(&ctx.lease, LeaseResource::Content(&layer.digest))
            .await?;
        r = Fetched::Reused;
    }
    match r {
        Fetched::Reused => ctx.metrics.layers_reused.inc(),
        Fetched::Downloaded(_) => ctx.metrics.layers_fetched.inc(),
    }
    Ok(r)
}
