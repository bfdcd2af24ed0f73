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

use super::spool::{Spool, SpoolWriter};
use super::{unpack, PullCtx, PullError, Puller};
use crate::containerd::{ContainerdError, LeaseResource};
use crate::manifest::{Descriptor, DigestHasher};
use tokio::sync::oneshot;

/// Bytes per content write message.
const CHUNK: usize = 1 << 20;
/// Re-opens of a blob download after a broken or short body.
const MAX_RESUMES: usize = 5;

/// A content ingest another writer holds ("locked") is retried this often,
/// this far apart (10 s in all), before the pull gives up.
const LOCKED_RETRIES: usize = 50;
const LOCKED_RETRY_PAUSE: Duration = Duration::from_millis(200);
#[derive(Debug, Clone)]
pub enum Fetched {
    /// Already in containerd's content store.
    Reused,
    /// Downloaded.
    Downloaded,
    /// Downloaded into a spool the native unpack reads; the
    /// blob reaches containerd's content store in the background
    /// (`Spool::wait_stored`).
    Storing(Arc<Spool>),
    /// Not fetched: the snapshotter serves the layer (a remote snapshotter).
    Remote,
}

impl Fetched {
    fn downloaded(&self) -> bool {
        !matches!(self, Fetched::Reused | Fetched::Remote)
    }
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
            // The ref is locked by another writer (a concurrent pull in another
            // process, or the start-up commit of an interrupted ingest):
            // containerd refuses the call itself; wait and retry.
            Err(ContainerdError::Unavailable { message, .. })
                if message.contains("locked") && attempt < LOCKED_RETRIES =>
            {
                attempt += 1;
                tokio::time::sleep(LOCKED_RETRY_PAUSE).await;
                continue;
            }
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
    w.send(data.to_vec(), ctx).await?;
    w.commit(desc, labels, ctx).await?;
    Ok(Fetched::Downloaded)
}

/// Where downloaded bytes go, in order.
trait Sink {
    async fn put(&mut self, chunk: &[u8], ctx: &PullCtx) -> Result<(), PullError>;
}

/// Into a content write, gathered into messages of `CHUNK` bytes.
struct ContentSink {
    w: Writer,
    buf: Vec<u8>,
}

impl Sink for ContentSink {
    async fn put(&mut self, mut rest: &[u8], ctx: &PullCtx) -> Result<(), PullError> {
        while !rest.is_empty() {
            let take = (CHUNK - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == CHUNK {
                let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
                self.w.send(data, ctx).await?;
            }
        }
        Ok(())
    }
}

impl ContentSink {
    async fn finish(
        mut self,
        desc: &Descriptor,
        labels: HashMap<String, String>,
        ctx: &PullCtx,
    ) -> Result<(), PullError> {
        if !self.buf.is_empty() {
            let data = std::mem::take(&mut self.buf);
            self.w.send(data, ctx).await?;
        }
        self.w.commit(desc, labels, ctx).await
    }
}

/// Into a spool the native unpack and the content writer read, hashed as
/// it goes: the spool is completed only once the digest matched, so what
/// reads it to the end has read verified bytes, and the blob can go into
/// the content store without containerd reading it again.
struct SpoolSink {
    writer: SpoolWriter,
    pos: u64,
    hash: DigestHasher,
}

impl Sink for SpoolSink {
    async fn put(&mut self, chunk: &[u8], _ctx: &PullCtx) -> Result<(), PullError> {
        self.writer
            .write_at(chunk, self.pos)
            .map_err(|e| spool_io_error("spool write", e))?;
        self.hash.update(chunk);
        self.pos += chunk.len() as u64;
        Ok(())
    }
}

/// Stream `desc` from the registry from byte `from` into `sink`: range
/// resumes on broken or short bodies, the stall watchdog, and no byte past
/// the size the manifest declares.
async fn download(
    ctx: &PullCtx,
    desc: &Descriptor,
    from: u64,
    sink: &mut impl Sink,
) -> Result<(), PullError> {
    let size = desc.size.max(0) as u64;
    let mut pos = from;
    let mut resumes = 0;
    'download: while pos != size || size == 0 {
        let want = pos;
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
                            received: pos,
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
                    if pos + chunk.len() as u64 > size {
                        return Err(PullError::DigestMismatch(format!(
                            "blob {} from {}/{}: the registry sent more than the {} bytes the manifest declares",
                            desc.digest, ctx.domain, ctx.repo, size
                        )));
                    }
                    sink.put(&chunk, ctx).await?;
                    pos += chunk.len() as u64;
                }
                Some(Err(e)) => {
                    if resumes >= MAX_RESUMES || !super::retryable(&e) {
                        return Err(e.into());
                    }
                    resumes += 1;
                    ctx.metrics.blob_range_resumes.inc();
                    tracing::info!(digest = %desc.digest, offset = pos, error = %e, "blob download broke; resuming with a range request");
                    continue 'download;
                }
            }
        }
        if size == 0 || pos == size {
            break;
        }
        if resumes >= MAX_RESUMES {
            return Err(PullError::from(crate::registry::RegistryError::Protocol(
                format!(
                    "blob {} from {}/{}: body ended at {} of {} bytes {} times",
                    desc.digest,
                    ctx.domain,
                    ctx.repo,
                    pos,
                    size,
                    resumes + 1
                ),
            )));
        }
        resumes += 1;
        ctx.metrics.blob_range_resumes.inc();
    }
    Ok(())
}

/// Download a blob from the registry into containerd (unless present).
pub async fn fetch_blob(
    ctx: &PullCtx,
    desc: &Descriptor,
    labels: HashMap<String, String>,
) -> Result<Fetched, PullError> {
    // Existence check and lease reference in one step (see write_bytes).
    match open(ctx, desc).await? {
        Opened::Exists => Ok(Fetched::Reused),
        Opened::Open(w) => fetch_into(ctx, desc, labels, w).await,
    }
}

/// The download into an open content write, resumed from where its ingest stands.
async fn fetch_into(
    ctx: &PullCtx,
    desc: &Descriptor,
    labels: HashMap<String, String>,
    mut w: Writer,
) -> Result<Fetched, PullError> {
    let size = desc.size.max(0) as u64;
    if w.offset > size {
        w.offset = 0;
    }
    let start_offset = w.offset;
    let r#ref = w.r#ref.clone();
    // One copy per byte: registry chunks are gathered straight into the
    // Vec that becomes the write message.
    let mut sink = ContentSink {
        w,
        buf: Vec::with_capacity(CHUNK),
    };
    if let Err(e) = download(ctx, desc, start_offset, &mut sink).await {
        if matches!(e, PullError::DigestMismatch(_)) {
            let _ = ctx.cd.abort_write(&r#ref).await;
        }
        return Err(e);
    }
    sink.finish(desc, labels, ctx).await?;
    Ok(Fetched::Downloaded)
}

/// Download a blob into a spool handed to the native unpack at once (through
/// `spooled`) while it also reaches containerd's content store, off the
/// unpack's path: when cri-imaged can see containerd's ingest directory the
/// spool *is* containerd's ingest file, and once verified it is put in place
/// as the blob file (`place.rs`); else a copy task streams the spool through
/// the content Write API. Present content is not downloaded (and `spooled`
/// is dropped: the unpack reads containerd's copy).
pub async fn fetch_blob_spooled(
    ctx: &Arc<PullCtx>,
    desc: &Descriptor,
    labels: HashMap<String, String>,
    spool_dir: &std::path::Path,
    spooled: oneshot::Sender<Arc<Spool>>,
) -> Result<Fetched, PullError> {
    let size = desc.size.max(0) as u64;
    if size < defer_open_below() {
        // Here already (a read, no transaction)? Then it joins the lease, and
        // is looked at again in case it was collected in between.
        if ctx.cd.content_info(&desc.digest).await?.is_some() {
            ctx.cd
                .lease_add(&ctx.lease, LeaseResource::Content(&desc.digest))
                .await?;
            if ctx.cd.content_info(&desc.digest).await?.is_some() {
                return Ok(reused(ctx, desc, spooled));
            }
        }
        // One another namespace holds goes the way of a large blob: the
        // write's open adopts it (shared content) without the bytes.
        if !ctx.content_elsewhere(&desc.digest).await? {
            return fetch_small_spooled(ctx, desc, labels, spool_dir, spooled).await;
        }
    }
    let w = match open(ctx, desc).await? {
        Opened::Exists => return Ok(reused(ctx, desc, spooled)),
        Opened::Open(w) => w,
    };
    if w.offset > 0 && w.offset <= size {
        // An ingest an interrupted pull left half done: resume it with a
        // Range request rather than fetch it all again; or content another
        // namespace holds (shared content policy: the write opens complete
        // and only needs its commit). containerd's applier unpacks it from
        // the content store.
        return fetch_into(ctx, desc, labels, w).await;
    }
    let r#ref = w.r#ref.clone();
    let direct = match (&ctx.content_root, ctx.discard_layers) {
        (Some(root), false) => ingest_data_file(root, ctx.cd.namespace(), &r#ref),
        _ => None,
    };
    let (spool, writer) = match direct {
        Some(data) => {
            // containerd's side of the write closes (the ingest stays, to be
            // resumed once the bytes are in).
            drop(w);
            match Spool::open_at(&data) {
                Ok(s) => (s, None),
                Err(e) => {
                    tracing::debug!(path = %data.display(), error = %e, "cannot write containerd's ingest file; copying through the content API");
                    (new_spool(spool_dir)?, None)
                }
            }
        }
        None => (new_spool(spool_dir)?, Some(w)),
    };
    spool_and_store(ctx, desc, labels, spool, writer, r#ref, spooled).await
}

/// A blob this pull did not download: where containerd's file is visible,
/// the native unpack reads it from there (else containerd's applier does).
fn reused(ctx: &PullCtx, desc: &Descriptor, spooled: oneshot::Sender<Arc<Spool>>) -> Fetched {
    let path = ctx
        .content_root
        .as_deref()
        .and_then(|root| super::place::blob_path(root, &desc.digest));
    if let Some(spool) = path.and_then(|p| Spool::stored_blob(&p).ok()) {
        if spool.reader_len() == desc.size.max(0) as u64 {
            let _ = spooled.send(spool);
        }
    }
    Fetched::Reused
}

/// Blobs smaller than this open no write in containerd's content store while
/// the pull runs: each open is a metadata transaction (an fsync, and an
/// ingest directory made) that the snapshot chain's Prepare and Commit queue
/// behind, and the chain, not the bytes, is what a pull of many layers waits
/// for (with 10 x 6 MB layers on containerd 2.1, 32 instead of 4 MiB here
/// made the pull 15-25 % faster; BENCHMARKS.md). They are spooled to
/// `spool_dir` and stored once the pull is done; a crash mid-download costs
/// at most this much downloaded again. Larger blobs are downloaded straight
/// into containerd's ingest file, which a retried pull resumes with a Range
/// request.
const DEFER_OPEN_BELOW: u64 = 32 << 20;

/// `DEFER_OPEN_BELOW`, or `CRI_IMAGED_DEFER_OPEN_MIB` (MiB) for measuring
/// what the deferral buys (BENCHMARKS.md); not a configuration key.
fn defer_open_below() -> u64 {
    static N: once_cell::sync::Lazy<u64> = once_cell::sync::Lazy::new(|| {
        std::env::var("CRI_IMAGED_DEFER_OPEN_MIB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(|m| m << 20)
            .unwrap_or(DEFER_OPEN_BELOW)
    });
    *N
}

/// A small layer: downloaded into a spool of our own, its write in the
/// content store opened only when the pull is done.
async fn fetch_small_spooled(
    ctx: &Arc<PullCtx>,
    desc: &Descriptor,
    labels: HashMap<String, String>,
    spool_dir: &std::path::Path,
    spooled: oneshot::Sender<Arc<Spool>>,
) -> Result<Fetched, PullError> {
    let record = super::spool::SpoolRecord {
        containerd: ctx.cd.socket().display().to_string(),
        namespace: ctx.cd.namespace().to_string(),
        digest: desc.digest.clone(),
        size: desc.size.max(0) as u64,
        labels: labels.clone(),
    };
    let spool = Spool::create_named(spool_dir, &record).map_err(|e| {
        PullError::local_io(
            e.raw_os_error(),
            format!(
                "cannot create a download spool in {} (spool_dir): {e}",
                spool_dir.display()
            ),
        )
    })?;
    spool_and_store(
        ctx,
        desc,
        labels,
        spool,
        None,
        ingest_ref(&desc.digest),
        spooled,
    )
    .await
}

/// Hand `spool` to the unpack, start its store into the content store (in
/// the background, behind the commit gate) and download into it.
async fn spool_and_store(
    ctx: &Arc<PullCtx>,
    desc: &Descriptor,
    labels: HashMap<String, String>,
    spool: Arc<Spool>,
    mut writer: Option<Writer>,
    r#ref: String,
    spooled: oneshot::Sender<Arc<Spool>>,
) -> Result<Fetched, PullError> {
    let _ = spooled.send(spool.clone());
    // The content store write runs on its own, following the spool: the
    // pull (unpack, records) does not wait for it.
    let (ctx2, desc2, spool2) = (ctx.clone(), desc.clone(), spool.clone());
    let (ctx3, digest, ref2) = (ctx.clone(), desc.digest.clone(), r#ref.clone());
    let store = async move {
        let (ctx, desc, spool) = (&*ctx2, &desc2, &spool2);
        if ctx.discard_layers {
            // Unpacked straight from the spool, never stored.
            drop(writer.take());
            let _ = ctx.cd.abort_write(&r#ref).await;
            return Ok(());
        }
        // containerd restarting meanwhile is ridden out: the reopened write
        // resumes from what its ingest holds (the spool stays until then).
        let mut attempt = 0;
        loop {
            match store_from_spool(ctx, desc, labels.clone(), spool, writer.take()).await {
                Err(PullError::Containerd(e))
                    if attempt < STORE_RETRIES
                        && matches!(*e, ContainerdError::Unavailable { .. }) =>
                {
                    attempt += 1;
                    tracing::debug!(digest = %desc.digest, error = %e, "content store unavailable; retrying the blob's commit");
                    tokio::time::sleep(STORE_RETRY_PAUSE).await;
                }
                r => return r,
            }
        }
    };
    let spool3 = spool.clone();
    let store = tokio::spawn(async move {
        let r = store.await;
        match &r {
            Ok(()) => {}
            // The pull itself failed; its error says why.
            Err(_) if spool3.is_failed() => {}
            Err(e) => {
                if matches!(e, PullError::DigestMismatch(_)) {
                    let _ = ctx3.cd.abort_write(&ref2).await;
                }
                ctx3.metrics.blob_store_failures.inc();
                tracing::warn!(digest = %digest, error = %e, "layer blob not stored in containerd's content store (the image runs from its snapshots; a later pull of the blob stores it)");
            }
        }
        spool3.set_stored(r.is_ok());
    });
    ctx.background.lock().push(store);
    let mut sink = SpoolSink {
        writer: spool.writer(),
        pos: 0,
        hash: DigestHasher::for_digest(&desc.digest).ok_or_else(|| {
            PullError::DigestMismatch(format!(
                "blob {}: unsupported digest algorithm (sha256, sha384 and sha512 are)",
                desc.digest
            ))
        })?,
    };
    let downloaded = download(ctx, desc, 0, &mut sink).await;
    let SpoolSink { writer, pos, hash } = sink;
    let verified = downloaded.and_then(|()| match hash.finish() {
        got if got == desc.digest => Ok(()),
        got => Err(PullError::DigestMismatch(format!(
            "blob {} from {}/{}: the registry sent {pos} bytes whose digest is {got}",
            desc.digest, ctx.domain, ctx.repo
        ))),
    });
    if let Err(e) = verified {
        // The unpack reading the spool fails too, and reports this cause.
        writer.fail(e.clone());
        return Err(e);
    }
    writer.complete();
    tracing::debug!(digest = %desc.digest, size = pos, "blob downloaded and verified");
    Ok(Fetched::Storing(spool))
}

/// Background blob commits ride out a containerd restart this long.
const STORE_RETRIES: usize = 120;
const STORE_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Commit the spooled blob to containerd's content store: through `writer`
/// (an open write following the spool); else, once the spool is complete,
/// as its blob file put in place (`place_blob`) that the reopened write
/// adopts, or by reopening the write and sending what containerd's ingest
/// lacks through the Write API.
async fn store_from_spool(
    ctx: &PullCtx,
    desc: &Descriptor,
    labels: HashMap<String, String>,
    spool: &Arc<Spool>,
    writer: Option<Writer>,
) -> Result<(), PullError> {
    let size = desc.size.max(0) as u64;
    let spool_err = |e: std::io::Error| PullError::Internal(format!("spool: {e}"));
    ctx.commit_gate_open().await;
    let w = match writer {
        Some(w) => w,
        None => {
            let mut pos = 0;
            loop {
                let (avail, complete) = spool.wait_past(pos).await.map_err(spool_err)?;
                if complete {
                    break;
                }
                pos = avail;
            }
            if place_blob(ctx, desc, spool).await {
                match open(ctx, desc).await? {
                    Opened::Exists => return Ok(()),
                    // Opened complete: containerd adopted the blob file
                    // (shared content) and only records it on commit. The
                    // open's ingest names the digest, which keeps the file
                    // from containerd's GC; one swept away just before
                    // that is written again below.
                    Opened::Open(w) if w.offset == size && blob_file_present(ctx, desc) => {
                        ctx.metrics.blobs_stored_blob_file.inc();
                        return w.commit(desc, labels, ctx).await;
                    }
                    Opened::Open(w) => {
                        tracing::debug!(digest = %desc.digest, offset = w.offset, "blob file not adopted (isolated content policy?); writing it through the content API");
                        drop(w);
                        let _ = ctx.cd.abort_write(&ingest_ref(&desc.digest)).await;
                    }
                }
            }
            match open(ctx, desc).await? {
                Opened::Exists => return Ok(()),
                Opened::Open(w) => w,
            }
        }
    };
    tracing::debug!(digest = %desc.digest, offset = w.offset, size, "blob store: containerd reports its ingest at");
    let mut pos = if w.offset > size { 0 } else { w.offset };
    if pos == size && size > 0 {
        ctx.metrics.blobs_stored_ingest_file.inc();
    } else {
        ctx.metrics.blobs_stored_write_api.inc();
    }
    let mut sink = ContentSink {
        w,
        buf: Vec::with_capacity(CHUNK),
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        let (avail, complete) = spool.wait_past(pos).await.map_err(spool_err)?;
        while pos < avail {
            let n = ((avail - pos) as usize).min(CHUNK);
            let got = spool.read_at(&mut buf[..n], pos).map_err(spool_err)?;
            if got == 0 {
                break;
            }
            sink.put(&buf[..got], ctx).await?;
            pos += got as u64;
        }
        if complete && pos >= avail {
            break;
        }
    }
    sink.finish(desc, labels, ctx).await
}

/// Put the complete, verified spool into containerd's content store as the
/// blob file itself (`place.rs`), when containerd's content directory is
/// visible. A spool that is containerd's ingest file is linked and its
/// ingest dropped. False when it could not be (the caller writes the blob
/// through the content API instead).
async fn place_blob(ctx: &PullCtx, desc: &Descriptor, spool: &Arc<Spool>) -> bool {
    let Some(root) = ctx.content_root.clone() else {
        return false;
    };
    if spool.named_file().is_none() {
        return false;
    }
    let (spool2, digest) = (spool.clone(), desc.digest.clone());
    let placed = tokio::task::spawn_blocking(move || {
        let (file, path) = spool2.named_file().expect("checked above");
        super::place::place(&root, file, path, &digest)
    })
    .await;
    match placed {
        Ok(Ok(how)) => {
            tracing::debug!(digest = %desc.digest, ?how, "blob file in the content store");
            if spool.in_ingest() {
                // The bytes are in place under the blob's name; the ingest
                // (whose file is the same inode) is no longer needed.
                let _ = ctx.cd.abort_write(&ingest_ref(&desc.digest)).await;
            }
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(digest = %desc.digest, error = %e, "cannot put the blob file in place; writing it through the content API");
            false
        }
        Err(_) => false,
    }
}

fn blob_file_present(ctx: &PullCtx, desc: &Descriptor) -> bool {
    let path = ctx
        .content_root
        .as_deref()
        .and_then(|r| super::place::blob_path(r, &desc.digest));
    path.and_then(|p| p.metadata().ok())
        .is_some_and(|m| m.len() == desc.size.max(0) as u64)
}

/// A spool file error: a full disk is RESOURCE_EXHAUSTED, as everywhere else.
fn spool_io_error(what: &str, e: std::io::Error) -> PullError {
    PullError::local_io(e.raw_os_error(), format!("{what}: {e}"))
}

fn new_spool(dir: &std::path::Path) -> Result<Arc<Spool>, PullError> {
    Spool::create(dir).map_err(|e| {
        PullError::Internal(format!(
            "cannot create a download spool in {} (spool_dir): {e}",
            dir.display()
        ))
    })
}

/// The `data` file of the ingest containerd opened for our write `r#ref` in
/// `namespace`, when this process can see and write it: containerd's local
/// content store keeps `<root>/ingest/<hash>/{ref,data,total,…}`, the `ref`
/// file holding `<namespace>/<sequence>/<ref>` (containerd's metadata store
/// names the backend write so).
fn ingest_data_file(
    content_root: &std::path::Path,
    namespace: &str,
    r#ref: &str,
) -> Option<std::path::PathBuf> {
    let (prefix, suffix) = (format!("{namespace}/"), format!("/{ref}"));
    for e in std::fs::read_dir(content_root.join("ingest"))
        .ok()?
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(e.path().join("ref")) else {
            continue;
        };
        let seq = text
            .strip_prefix(&prefix)
            .and_then(|t| t.strip_suffix(&suffix));
        if seq.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())) {
            let data = e.path().join("data");
            let writable = rustix::fs::access(&data, rustix::fs::Access::WRITE_OK).is_ok();
            return writable.then_some(data);
        }
    }
    None
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
    /// Served by a remote snapshotter (or its snapshot was here): not fetched.
    pub remote: usize,
    pub fetch: Duration,
    /// Unpack time after the last byte arrived.
    pub unpack: Duration,
}

/// Fetch every layer into the content store (bounded per pull and globally)
/// while unpacking them in order as they arrive.
pub(super) async fn fetch_and_unpack(
    puller: &Arc<Puller>,
    ctx: &Arc<PullCtx>,
    layers: &[Descriptor],
    diff_ids: &[String],
    chain: &[String],
) -> Result<LayersDone, PullError> {
    let start = Instant::now();
    // A remote snapshotter may serve the bottom layers: those are not fetched.
    let served = match &ctx.remote {
        Some(r) => super::remote::probe(ctx, &r.image, layers, chain).await?,
        None => 0,
    };
    ctx.metrics.layers_served_remote.inc_by(served as u64);
    let per_pull = Arc::new(Semaphore::new(puller.cfg.per_pull_downloads.max(1)));
    let (arrived, arrivals): (Vec<_>, Vec<_>) =
        layers.iter().map(|_| oneshot::channel::<()>()).unzip();
    // Each layer downloaded by this pull is handed to the native unpack as
    // soon as its download starts (a dropped sender: read containerd's copy).
    let (spooled, spools): (Vec<_>, Vec<_>) = layers
        .iter()
        .map(|_| oneshot::channel::<Arc<Spool>>())
        .unzip();
    let fetches = layers
        .iter()
        .zip(diff_ids)
        .zip(arrived)
        .zip(spooled)
        .enumerate()
        .map(|(i, (((layer, diff_id), arrived), spooled))| {
            let per_pull = per_pull.clone();
            async move {
                if i < served {
                    let _ = arrived.send(());
                    return Ok(Fetched::Remote);
                }
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
                let r = fetch_layer(puller, ctx, layer, diff_id, spooled).await?;
                // `arrived` means "in the content store": for a spooled
                // download that is when its background store commits.
                match &r {
                    Fetched::Storing(spool) => {
                        let spool = spool.clone();
                        tokio::spawn(async move {
                            if spool.wait_stored().await {
                                let _ = arrived.send(());
                            }
                        });
                    }
                    _ => {
                        let _ = arrived.send(());
                    }
                }
                Ok::<Fetched, PullError>(r)
            }
        });
    let fetch_all = async {
        let r = try_join_all(fetches).await?;
        Ok::<_, PullError>((r, start.elapsed()))
    };
    let unpacking = unpack::unpack(ctx, layers, diff_ids, chain, arrivals, spools);
    // On failure the lease stays until it expires so a retry resumes; what
    // was written is collected by containerd's GC after that.
    let ((fetched, fetch), unpack_done) = try_join(fetch_all, unpacking).await?;
    let downloaded = fetched.iter().filter(|f| f.downloaded()).count();
    Ok(LayersDone {
        downloaded,
        reused: fetched.len() - downloaded - served,
        remote: served,
        fetch,
        unpack: unpack_done.saturating_sub(fetch),
    })
}

/// One layer into the content store, sharing a download another pull of this
/// process already runs for the same blob, source and credentials.
async fn fetch_layer(
    puller: &Arc<Puller>,
    ctx: &Arc<PullCtx>,
    layer: &Descriptor,
    diff_id: &str,
    spooled: oneshot::Sender<Arc<Spool>>,
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
                let (ctx, layer, diff_id) = (ctx.clone(), layer.clone(), diff_id.to_string());
                // Only the caller that runs the download hands out a spool.
                move || async move {
                    let source = crate::containerd::labels::source_label(&ctx.domain, &ctx.repo);
                    let labels = HashMap::from([source]);
                    match &ctx.native {
                        Some(n) => {
                            // The diff ID label goes on at commit: the commit
                            // may come after the pull returned.
                            let mut labels = labels;
                            labels.insert(
                                crate::containerd::labels::UNCOMPRESSED.to_string(),
                                diff_id,
                            );
                            fetch_blob_spooled(&ctx, &layer, labels, &n.spool_dir, spooled).await
                        }
                        None => fetch_blob(&ctx, &layer, labels).await,
                    }
                }
            },
            || Err(PullError::Canceled),
        )
        .await;
    let mut r = joined.value?;
    if joined.coalesced {
        // Fetched under another pull's lease: reference it from ours too,
        // once it is in the content store (our unpack reads it from there).
        if let Fetched::Storing(spool) = &r {
            if !spool.wait_stored().await {
                return Err(PullError::Internal(format!(
                    "layer {}: the concurrent download this pull shared could not store it",
                    layer.digest
                )));
            }
        }
        ctx.cd
            .lease_add(&ctx.lease, LeaseResource::Content(&layer.digest))
            .await?;
        r = Fetched::Reused;
    }
    if r.downloaded() {
        ctx.metrics.layers_fetched.inc()
    } else {
        ctx.metrics.layers_reused.inc()
    }
    Ok(r)
}
