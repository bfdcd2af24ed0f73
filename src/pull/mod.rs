//! The pull pipeline, in named phases: resolve (registry -> this node's
//! manifest and config) -> local (already here? then only records) -> fetch
//! into containerd's content store, pipelined with the unpack into its
//! snapshots -> records (documents with GC references, then the image
//! records). All of it under a lease. Concurrent pulls of one image share one
//! run (single-flight).

mod error;
mod fetch;
mod leftovers;
mod local;
mod native;
mod place;
mod records;
mod recover;
mod remote;
mod resolve;
mod singleflight;
mod spool;
mod stage;
mod unpack;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::containerd::{Containerd, Lease, LeaseKind, OnDrop};
use crate::metrics::{FailureReason, Metrics};
use crate::reference::Reference;
use crate::registry::{PullAuth, Registries};
use crate::select::Selected;
use crate::store::Store;
pub(crate) use error::retryable;
pub use error::PullError;
use fetch::{BlobKey, Fetched, LayersDone};
pub use leftovers::cleanup_interrupted;
pub use place::cleanup as cleanup_blob_tmp;
pub use recover::at_start as repair_at_start;
use resolve::RegistrySource;
pub use stage::cleanup as cleanup_staging;

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub struct PullConfig {
    pub snapshotter: String,
    pub runtime_handler_snapshotters: HashMap<String, String>,
    pub progress_timeout: Duration,
    pub per_pull_downloads: usize,
    pub lease_expiry: Duration,
    pub pinned: Vec<String>,
    /// Unpack natively into overlayfs snapshots where possible.
    pub native_unpack: bool,
    /// Where downloads are spooled for the native unpack.
    pub spool_dir: std::path::PathBuf,
    /// Keep no layer blobs in the content store once unpacked.
    pub discard_unpacked_layers: bool,
    /// containerd's content store directory, when visible from here
    /// (`<containerd_root>/io.containerd.content.v1.content`).
    pub content_root: Option<std::path::PathBuf>,
    /// Which snapshotters get the labels remote snapshotters read on Prepare.
    pub snapshot_annotations: crate::config::SnapshotAnnotations,
    /// Hard limits on what the native unpack writes.
    pub limits: crate::layer::Limits,
}

/// A failed pull no retry can resume: its lease goes once its unfinished
/// snapshots are removed, and containerd collects what it wrote at once
/// (while the caller hears the error).
fn give_back(ctx: &PullCtx, lease: Lease) {
    let removals = std::mem::take(&mut *ctx.removals.lock());
    tokio::spawn(async move {
        for r in removals {
            let _ = r.await;
        }
        lease.release_and_collect().await
    });
}

/// What a pull did.
#[derive(Debug, Clone, Default)]
pub struct PullReport {
    pub image_id: String,
    pub platform: String,
    pub bytes: u64,
    pub layers_fetched: usize,
    pub layers_reused: usize,
    /// Layers a remote snapshotter served (neither downloaded nor unpacked).
    pub layers_remote: usize,
    pub resolve: Duration,
    pub fetch: Duration,
    pub unpack: Duration,
    pub records: Duration,
    /// True when the image was already complete locally.
    pub already_present: bool,
    /// The image's packed size (indexes, manifest, config, layers).
    pub size: u64,
}

impl PullReport {
    /// The report of a pull that found the image complete locally.
    fn present(info: &crate::store::ImageInfo, resolve: Duration) -> PullReport {
        PullReport {
            image_id: info.id.clone(),
            platform: info.platform.to_string(),
            already_present: true,
            size: info.size,
            resolve,
            ..Default::default()
        }
    }

    fn resolved(image: &Selected, resolve: Duration) -> PullReport {
        PullReport {
            image_id: image.manifest.config.digest.clone(),
            platform: image.config.platform().to_string(),
            size: crate::store::ImageInfo::of(image).size,
            resolve,
            ..Default::default()
        }
    }

    fn layers(&mut self, l: &LayersDone) {
        self.layers_fetched = l.downloaded;
        self.layers_reused = l.reused;
        self.layers_remote = l.remote;
        self.fetch = l.fetch;
        self.unpack = l.unpack;
    }
}

/// Everything one pull's fetch, unpack and records steps need.
pub(crate) struct PullCtx {
    pub cd: Containerd,
    pub registries: Registries,
    pub domain: String,
    pub repo: String,
    pub auth: PullAuth,
    pub lease: String,
    pub snapshotter: String,
    pub progress_timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub bytes: std::sync::atomic::AtomicU64,
    /// Set when layers may be unpacked natively (overlayfs, not turned off).
    pub native: Option<unpack::Native>,
    /// Layer blobs are not kept in the content store (and not referenced by
    /// the manifest's GC labels) once unpacked.
    pub discard_layers: bool,
    /// containerd's content store directory, for downloads straight into its ingest.
    pub content_root: Option<std::path::PathBuf>,
    /// Content-store writes still running after their download: the pull's
    /// lease is released once they end.
    pub background: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Removals of snapshots a failed unpack left (awaited before the
    /// failed pull's space is collected).
    pub removals: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Opened when the pull no longer needs the disk to itself (it ended, or
    /// its unpack waits for a blob in the content store): background blob
    /// commits (containerd hashing and fsyncing them) wait for it, so they do
    /// not slow the snapshot and record transactions the pull waits for.
    pub commit_gate: tokio::sync::watch::Sender<bool>,
    /// Set when Prepare carries the labels remote snapshotters read.
    pub remote: Option<RemotePull>,
    /// containerd's other namespaces, listed once per pull when needed.
    pub other_namespaces: tokio::sync::OnceCell<Vec<String>>,
}

/// What a remote snapshotter is told about this pull's layers.
pub(crate) struct RemotePull {
    pub image: remote::ImageLabels,
    pub layers: Vec<crate::manifest::Descriptor>,
}

impl PullCtx {
    /// Whether another namespace holds `digest` (shared content: a write in
    /// ours adopts it without the bytes). Reads only.
    pub async fn content_elsewhere(&self, digest: &str) -> Result<bool, PullError> {
        let others = self
            .other_namespaces
            .get_or_try_init(|| self.cd.other_namespaces())
            .await?;
        for ns in others {
            if self.cd.content_exists_in(ns, digest).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn open_commit_gate(&self) {
        self.commit_gate.send_replace(true);
    }

    pub async fn commit_gate_open(&self) {
        let mut rx = self.commit_gate.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

impl PullCtx {
    fn new(
        puller: &Puller,
        reference: &Reference,
        auth: &PullAuth,
        lease: &Lease,
        snapshotter: &str,
        image: &Selected,
    ) -> PullCtx {
        PullCtx {
            cd: puller.cd.clone(),
            registries: puller.registries.clone(),
            domain: reference.domain().to_string(),
            repo: reference.path().to_string(),
            auth: auth.clone(),
            lease: lease.id().to_string(),
            snapshotter: snapshotter.to_string(),
            progress_timeout: puller.cfg.progress_timeout,
            metrics: puller.metrics.clone(),
            bytes: Default::default(),
            native: (puller.cfg.native_unpack && snapshotter == "overlayfs").then(|| {
                unpack::Native {
                    spool_dir: puller.cfg.spool_dir.clone(),
                    limits: puller.cfg.limits,
                    budget: crate::layer::Budget::for_pull(&puller.cfg.limits),
                }
            }),
            discard_layers: puller.cfg.discard_unpacked_layers,
            content_root: puller.cfg.content_root.clone(),
            background: Default::default(),
            removals: Default::default(),
            commit_gate: tokio::sync::watch::channel(false).0,
            other_namespaces: Default::default(),
            remote: puller
                .cfg
                .snapshot_annotations
                .applies_to(snapshotter)
                .then(|| RemotePull {
                    image: remote::ImageLabels {
                        image_ref: reference.to_string(),
                        manifest_digest: image.manifest_doc.desc.digest.clone(),
                    },
                    layers: image.manifest.layers.clone(),
                }),
        }
    }

    pub fn progress(&self, n: u64) {
        self.bytes
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        self.metrics.bytes_fetched.inc_by(n);
    }
}

/// A task aborted when dropped (a pull that fails or is abandoned stops it).
pub(crate) struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T: Send + 'static> AbortOnDrop<T> {
    pub(crate) fn spawn(f: impl std::future::Future<Output = T> + Send + 'static) -> Self {
        AbortOnDrop(Some(tokio::spawn(f)))
    }

    /// Wait for the task to end (it is no longer aborted on drop).
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        self.0.take().expect("joined once").await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// Pulls that share one run: the same image, credentials and snapshotter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FlightKey {
    reference: String,
    credentials: String,
    snapshotter: String,
}

pub struct Puller {
    cd: Containerd,
    store: Arc<Store>,
    registries: Registries,
    cfg: PullConfig,
    metrics: Arc<Metrics>,
    global_downloads: Arc<Semaphore>,
    flights: singleflight::SingleFlight<FlightKey, Result<PullReport, PullError>>,
    blob_flights: singleflight::SingleFlight<BlobKey, Result<Fetched, PullError>>,
}

impl Puller {
    pub fn new(
        store: Arc<Store>,
        registries: Registries,
        cfg: PullConfig,
        global_downloads: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<Puller> {
        Arc::new(Puller {
            cd: store.containerd().clone(),
            store,
            registries,
            cfg,
            metrics,
            global_downloads: Arc::new(Semaphore::new(global_downloads.max(1))),
            flights: singleflight::SingleFlight::default(),
            blob_flights: singleflight::SingleFlight::default(),
        })
    }

    /// The registry client's counters (retries, host fall-throughs), for the metrics.
    pub fn registry_counters(&self) -> Arc<crate::registry::RegistryCounters> {
        self.registries.counters()
    }

    /// The snapshotter for a runtime handler.
    pub fn snapshotter_for(&self, runtime_handler: &str) -> String {
        self.cfg
            .runtime_handler_snapshotters
            .get(runtime_handler)
            .cloned()
            .unwrap_or_else(|| self.cfg.snapshotter.clone())
    }

    /// Pull `image` (any user form) and return the image ID (config digest).
    /// Callers asking for the same image at once share one run.
    pub async fn pull(
        self: &Arc<Self>,
        image: &str,
        auth: PullAuth,
        runtime_handler: &str,
    ) -> Result<PullReport, PullError> {
        let reference = Reference::parse_normalized(image)?.with_default_tag();
        let auth = auth.normalized()?;
        let snapshotter = self.snapshotter_for(runtime_handler);
        let key = FlightKey {
            reference: reference.to_string(),
            credentials: auth.fingerprint(),
            snapshotter: snapshotter.clone(),
        };
        let this = self.clone();
        let started = Instant::now();
        let in_flight = crate::metrics::GaugeGuard::inc(&self.metrics.pulls_in_flight); // dec also when the caller goes away
        let joined = self
            .flights
            .run(
                key,
                move || async move { this.shared_run(reference, auth, snapshotter).await },
                || Err(PullError::Canceled),
            )
            .await;
        drop(in_flight);
        if joined.coalesced {
            self.metrics.pulls_coalesced.inc();
        } else {
            let (result, size) = match &joined.value {
                Ok(r) if r.already_present => ("present", Some(r.size)),
                Ok(r) => ("success", Some(r.size)),
                Err(_) => ("failure", None),
            };
            self.metrics
                .pull_duration
                .with_label_values(&[result, crate::metrics::size_class(size)])
                .observe(started.elapsed().as_secs_f64());
        }
        joined.value
    }

    /// The one run every caller of a flight shares: the pull, counted and logged.
    async fn shared_run(
        self: Arc<Self>,
        reference: Reference,
        auth: PullAuth,
        snapshotter: String,
    ) -> Result<PullReport, PullError> {
        let started = Instant::now();
        // Counts the pull as canceled when every caller went away and the
        // shared task was aborted before it finished.
        struct Aborted<'a>(&'a Metrics, bool);
        impl Drop for Aborted<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.pull_failed(FailureReason::Canceled);
                }
            }
        }
        let mut aborted = Aborted(&self.metrics, true);
        let result = self.pull_image(&reference, &auth, &snapshotter).await;
        aborted.1 = false;
        match &result {
            Ok(r) => {
                self.metrics.pull_succeeded();
                tracing::info!(
                    image = %reference,
                    platform = %r.platform,
                    image_id = %r.image_id,
                    bytes = r.bytes,
                    layers_fetched = r.layers_fetched,
                    layers_reused = r.layers_reused,
                    layers_remote = r.layers_remote,
                    already_present = r.already_present,
                    resolve_ms = r.resolve.as_millis() as u64,
                    fetch_ms = r.fetch.as_millis() as u64,
                    unpack_ms = r.unpack.as_millis() as u64,
                    records_ms = r.records.as_millis() as u64,
                    total_ms = started.elapsed().as_millis() as u64,
                    result = "success",
                    "pull"
                );
            }
            Err(e) => {
                self.metrics.pull_failed(e.reason());
                tracing::warn!(
                    image = %reference,
                    reason = e.reason().as_str(),
                    error = %e,
                    total_ms = started.elapsed().as_millis() as u64,
                    result = "failure",
                    "pull"
                );
            }
        }
        result
    }

    /// One pull, as the README tells it: resolve -> lease -> fetch + unpack ->
    /// documents and records.
    async fn pull_image(
        self: &Arc<Self>,
        reference: &Reference,
        auth: &PullAuth,
        snapshotter: &str,
    ) -> Result<PullReport, PullError> {
        let t0 = Instant::now();
        // A digest reference already complete here needs no network.
        if let Some(digest) = reference.digest() {
            if let Some(info) = self.use_local(reference, digest, None, snapshotter).await? {
                return Ok(PullReport::present(&info, t0.elapsed()));
            }
        }
        // Resolve at the registry; the same target already here needs nothing more.
        let registry = RegistrySource::new(self, reference, auth);
        let top = registry.top(reference).await?;
        let target = top.desc.clone();
        if let Some(info) = self
            .use_local(reference, &target.digest, Some(&target), snapshotter)
            .await?
        {
            return Ok(PullReport::present(&info, t0.elapsed()));
        }
        let image = registry.select(top).await?;
        let mut report = PullReport::resolved(&image, t0.elapsed());
        self.metrics.phase("resolve", report.resolve.as_secs_f64());

        // Everything written from here on is held by a lease until the records
        // hold it; a failed pull leaves the lease to expire, so a retry resumes.
        let lease = Lease::create(
            &self.cd,
            LeaseKind::Flat,
            self.cfg.lease_expiry,
            OnDrop::Expire,
        )
        .await?;
        let ctx = Arc::new(PullCtx::new(
            self,
            reference,
            auth,
            &lease,
            snapshotter,
            &image,
        ));
        // However this pull ends (records written, failed, dropped), its
        // blobs' commits may go from then on.
        struct Gate(Arc<PullCtx>);
        impl Drop for Gate {
            fn drop(&mut self) {
                self.0.open_commit_gate();
            }
        }
        let _gate = Gate(ctx.clone());
        // The documents (config, manifest, indexes) go in while the layers
        // come: they name the top snapshot by its chain ID, known from the
        // config. Only the image records wait for the unpack.
        let image = Arc::new(image);
        let chain = crate::reference::chain_id(image.config.diff_ids());
        let documents = {
            let (ctx, image) = (ctx.clone(), image.clone());
            let top_chain = chain.last().cloned().unwrap_or_default();
            AbortOnDrop::spawn(
                async move { records::write_documents(&ctx, &image, &top_chain).await },
            )
        };
        let fetched = fetch::fetch_and_unpack(
            self,
            &ctx,
            &image.manifest.layers,
            image.config.diff_ids(),
            &chain,
        )
        .await;
        let layers = match fetched {
            Ok(l) => l,
            Err(e) if e.nothing_to_resume() => {
                drop(documents);
                give_back(&ctx, lease);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        report.layers(&layers);
        self.metrics.phase("fetch", report.fetch.as_secs_f64());
        self.metrics.phase("unpack", report.unpack.as_secs_f64());

        // Documents and records run to the end even if every caller leaves.
        let t2 = Instant::now();
        let (this, reference, ctx2) = (self.clone(), reference.clone(), ctx.clone());
        tokio::spawn(async move {
            documents
                .join()
                .await
                .map_err(|e| PullError::Internal(format!("documents task: {e}")))??;
            let target = image.top().desc.clone();
            this.ensure_records(&reference, &target, &image.manifest.config.digest)
                .await?;
            // Blobs still on their way into the content store keep the
            // lease until they are committed (or the lease expires).
            let pending = std::mem::take(&mut *ctx2.background.lock());
            if pending.is_empty() {
                lease.release().await;
            } else {
                tokio::spawn(async move {
                    for p in pending {
                        let _ = p.await;
                    }
                    lease.release().await;
                });
            }
            Ok::<(), PullError>(())
        })
        .await
        .map_err(|e| PullError::Internal(format!("record task: {e}")))??;
        report.records = t2.elapsed();
        self.metrics.phase("records", report.records.as_secs_f64());
        report.bytes = ctx.bytes.load(std::sync::atomic::Ordering::Relaxed);
        Ok(report)
    }
}
