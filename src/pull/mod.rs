//! The pull pipeline: resolve -> fetch into containerd's content store ->
//! unpack with containerd's diff service (pipelined with the fetch) -> image
//! records. Concurrent pulls of one image share one run (single-flight).

mod fetch;
pub mod singleflight;
mod unpack;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{try_join, try_join_all};
use tokio::sync::Semaphore;

use crate::containerd::{labels, Containerd, ContainerdError, ImageRecord};
use crate::manifest::{self, Descriptor, Document, ManifestError};
use crate::metrics::{FailureReason, Metrics};
use crate::platform::{Platform, PlatformError};
use crate::reference::{Reference, ReferenceError};
use crate::registry::{PullAuth, Registries, RegistryError};
use crate::store::Store;
pub use fetch::Fetched;
pub use unpack::cleanup_interrupted;

#[derive(Debug, thiserror::Error, Clone)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("{0}")]
    Registry(Arc<RegistryError>),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error("{0}")]
    Containerd(Arc<ContainerdError>),
    #[error("RegistryUnavailable: pull stalled: no bytes received for {} while downloading {digest} ({received} of {total} bytes); raise pull_progress_timeout if the registry is just slow", humantime::format_duration(*after))]
    Stalled {
        digest: String,
        after: Duration,
        received: u64,
        total: u64,
    },
    #[error("digest mismatch: {0}")]
    DigestMismatch(String),
    #[error("image {0}: the config lists {1} layer diff IDs but the manifest has {2} layers")]
    LayerCount(String, usize, usize),
    #[error("pull canceled before it finished")]
    Canceled,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<RegistryError> for PullError {
    fn from(e: RegistryError) -> Self {
        PullError::Registry(Arc::new(e))
    }
}

impl From<ContainerdError> for PullError {
    fn from(e: ContainerdError) -> Self {
        match e {
            ContainerdError::DigestMismatch(m) => PullError::DigestMismatch(m),
            e => PullError::Containerd(Arc::new(e)),
        }
    }
}

impl PullError {
    /// The metric reason for this failure.
    pub fn reason(&self) -> FailureReason {
        match self {
            PullError::Registry(e) => match **e {
                RegistryError::NotFound(_) => FailureReason::NotFound,
                RegistryError::Unauthorized(_)
                | RegistryError::Forbidden(_)
                | RegistryError::BadCredentials(_) => FailureReason::Unauthorized,
                RegistryError::Unavailable(_) => FailureReason::RegistryUnavailable,
                RegistryError::DigestMismatch(_) => FailureReason::DigestMismatch,
                _ => FailureReason::Other,
            },
            PullError::Platform(_) => FailureReason::PlatformMismatch,
            PullError::Stalled { .. } => FailureReason::Stalled,
            PullError::Canceled => FailureReason::Canceled,
            PullError::DigestMismatch(_) => FailureReason::DigestMismatch,
            PullError::Containerd(e) => match **e {
                ContainerdError::NoSpace(_) => FailureReason::NoSpace,
                _ => FailureReason::Other,
            },
            _ => FailureReason::Other,
        }
    }
}

/// Registry errors worth a resumed download.
pub(crate) fn retryable(e: &RegistryError) -> bool {
    matches!(
        e,
        RegistryError::Unavailable(_) | RegistryError::Protocol(_)
    )
}

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub struct PullConfig {
    pub snapshotter: String,
    pub runtime_handler_snapshotters: HashMap<String, String>,
    pub progress_timeout: Duration,
    pub per_pull_downloads: usize,
    pub lease_expiry: Duration,
    pub pinned: Vec<String>,
}

/// What a pull did.
#[derive(Debug, Clone, Default)]
pub struct PullReport {
    pub image_id: String,
    pub platform: String,
    pub bytes: u64,
    pub layers_fetched: usize,
    pub layers_reused: usize,
    pub resolve: Duration,
    pub fetch: Duration,
    pub unpack: Duration,
    pub records: Duration,
    /// True when the image was already complete locally.
    pub already_present: bool,
}

impl PullReport {
    /// The report of a pull that found the image complete locally.
    fn present(info: &crate::store::ImageInfo, resolve: Duration) -> PullReport {
        PullReport {
            image_id: info.id.clone(),
            platform: info.platform.to_string(),
            already_present: true,
            resolve,
            ..Default::default()
        }
    }
}

/// Everything one pull's steps need.
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
}

impl PullCtx {
    pub fn progress(&self, n: u64) {
        self.bytes
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        self.metrics.bytes_fetched.inc_by(n);
    }
}

type FlightKey = (String, String, String);

pub struct Puller {
    cd: Containerd,
    store: Arc<Store>,
    registries: Registries,
    cfg: PullConfig,
    metrics: Arc<Metrics>,
    global_downloads: Arc<Semaphore>,
    flights: singleflight::SingleFlight<FlightKey, Result<PullReport, PullError>>,
    blob_flights: singleflight::SingleFlight<String, Result<Fetched, PullError>>,
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

    /// The snapshotter for a runtime handler.
    pub fn snapshotter_for(&self, runtime_handler: &str) -> String {
        self.cfg
            .runtime_handler_snapshotters
            .get(runtime_handler)
            .cloned()
            .unwrap_or_else(|| self.cfg.snapshotter.clone())
    }

    /// Pull `image` (any user form) and return the image ID (config digest).
    pub async fn pull(
        self: &Arc<Self>,
        image: &str,
        auth: PullAuth,
        runtime_handler: &str,
    ) -> Result<PullReport, PullError> {
        let reference = Reference::parse_normalized(image)?.with_default_tag();
        let auth = auth.normalized()?;
        let snapshotter = self.snapshotter_for(runtime_handler);
        let key = (
            reference.to_string(),
            auth.fingerprint(),
            snapshotter.clone(),
        );
        let this = self.clone();
        let started = Instant::now();
        let in_flight = crate::metrics::GaugeGuard::inc(&self.metrics.pulls_in_flight); // dec also when the caller goes away
        let joined = self
            .flights
            .run(
                key,
                move || {
                    let r = reference.clone();
                    async move { this.pull_once(r, auth, snapshotter).await }
                },
                || Err(PullError::Canceled),
            )
            .await;
        drop(in_flight);
        if joined.coalesced {
            self.metrics.pulls_coalesced.inc();
        } else {
            self.metrics
                .pull_duration
                .observe(started.elapsed().as_secs_f64());
        }
        joined.value
    }

    async fn pull_once(
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
        let result = self.pull_inner(&reference, &auth, &snapshotter).await;
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

    async fn pull_inner(
        self: &Arc<Self>,
        reference: &Reference,
        auth: &PullAuth,
        snapshotter: &str,
    ) -> Result<PullReport, PullError> {
        let mut report = PullReport::default();
        let t0 = Instant::now();
        let domain = reference.domain().to_string();
        let repo = reference.path().to_string();
        let name = reference.name();

        // Fast path: a digest reference already complete locally needs no network.
        if let Some(d) = reference.digest() {
            if let Some(view) = self.store.get_by_record(&format!("{name}@{d}")) {
                let target = view.info.target_descriptor();
                if self
                    .use_local(reference, &target, &view.info, snapshotter)
                    .await?
                {
                    return Ok(PullReport::present(&view.info, t0.elapsed()));
                }
            }
        }

        // ---- resolve ----
        let wanted = reference
            .digest()
            .or(reference.tag())
            .unwrap_or("latest")
            .to_string();
        let top = self
            .registries
            .get_manifest(&domain, &repo, &wanted, auth)
            .await?;
        self.metrics.bytes_fetched.inc_by(top.bytes.len() as u64);
        let top_type = manifest::sniff_media_type(&top.media_type, &top.bytes);
        let top_desc = Descriptor {
            media_type: top_type.clone(),
            digest: top.digest.clone(),
            size: top.bytes.len() as i64,
            ..Default::default()
        };
        // Warm path: the same target is already an image here.
        if let Some(view) = self.store.get_by_record(&format!("{name}@{}", top.digest)) {
            if self
                .use_local(reference, &top_desc, &view.info, snapshotter)
                .await?
            {
                return Ok(PullReport::present(&view.info, t0.elapsed()));
            }
        }

        let mut index_bytes: Option<(Descriptor, Bytes, Vec<Descriptor>)> = None;
        let (manifest_desc, manifest_bytes) =
            match manifest::parse(&top_type, &top.digest, &top.bytes)? {
                Document::Manifest(_) => (top_desc.clone(), top.bytes.clone()),
                Document::Index(idx) => {
                    let mut derived: Vec<Option<Platform>> = vec![None; idx.manifests.len()];
                    for (i, d) in idx.manifests.iter().enumerate() {
                        if d.platform.is_none()
                            && (manifest::is_manifest(&d.media_type) || d.media_type.is_empty())
                        {
                            derived[i] = self.remote_config_platform(&domain, &repo, d, auth).await;
                        }
                    }
                    let i = crate::store::inspect::choose(self.store.matcher(), &idx, &derived)?;
                    let chosen = idx.manifests[i].clone();
                    let m = self
                        .registries
                        .get_manifest(&domain, &repo, &chosen.digest, auth)
                        .await?;
                    self.metrics.bytes_fetched.inc_by(m.bytes.len() as u64);
                    let mt = manifest::sniff_media_type(&m.media_type, &m.bytes);
                    let desc = Descriptor {
                        media_type: mt,
                        digest: chosen.digest.clone(),
                        size: m.bytes.len() as i64,
                        ..Default::default()
                    };
                    index_bytes =
                        Some((top_desc.clone(), top.bytes.clone(), idx.manifests.clone()));
                    (desc, m.bytes)
                }
            };
        let Document::Manifest(man) = manifest::parse(
            &manifest_desc.media_type,
            &manifest_desc.digest,
            &manifest_bytes,
        )?
        else {
            return Err(ManifestError::Unsupported {
                media_type: manifest_desc.media_type.clone(),
                digest: manifest_desc.digest.clone(),
            }
            .into());
        };
        let config_bytes = self.fetch_small(&domain, &repo, &man.config, auth).await?;
        let config = manifest::parse_config(&man.config.digest, &config_bytes)?;
        let diff_ids = config.diff_ids().to_vec();
        if diff_ids.len() != man.layers.len() {
            return Err(PullError::LayerCount(
                man.config.digest.clone(),
                diff_ids.len(),
                man.layers.len(),
            ));
        }
        report.platform = config.platform().to_string();
        report.image_id = man.config.digest.clone();
        report.resolve = t0.elapsed();
        self.metrics.phase("resolve", report.resolve.as_secs_f64());

        // ---- fetch + unpack (pipelined), under a lease ----
        let lease = format!(
            "cri-imaged-pull-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        );
        self.cd.create_lease(&lease, self.cfg.lease_expiry).await?;
        let ctx = Arc::new(PullCtx {
            cd: self.cd.clone(),
            registries: self.registries.clone(),
            domain: domain.clone(),
            repo: repo.clone(),
            auth: auth.clone(),
            lease: lease.clone(),
            snapshotter: snapshotter.to_string(),
            progress_timeout: self.cfg.progress_timeout,
            metrics: self.metrics.clone(),
            bytes: Default::default(),
        });
        let source = source_label(&domain, &repo);
        let t1 = Instant::now();
        let per_pull = Arc::new(Semaphore::new(self.cfg.per_pull_downloads.max(1)));
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in &man.layers {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            senders.push(tx);
            receivers.push(rx);
        }
        let fetches = man
            .layers
            .iter()
            .cloned()
            .zip(senders)
            .map(|(layer, done)| {
                let ctx = ctx.clone();
                let this_b = self.clone();
                let per_pull = per_pull.clone();
                let global = self.global_downloads.clone();
                let source = source.clone();
                async move {
                    let _p = per_pull
                        .acquire_owned()
                        .await
                        .map_err(|_| PullError::Canceled)?;
                    let _g = global
                        .acquire_owned()
                        .await
                        .map_err(|_| PullError::Canceled)?;
                    // One download per blob in this process, even across different images.
                    let joined = this_b
                        .blob_flights
                        .run(
                            // Same source and credentials only: another pull's failure
                            // (say, unauthorized) must not become ours.
                            format!(
                                "{}|{}/{}|{}",
                                layer.digest,
                                ctx.domain,
                                ctx.repo,
                                ctx.auth.fingerprint()
                            ),
                            {
                                let ctx = ctx.clone();
                                let layer = layer.clone();
                                move || async move {
                                    fetch::fetch_blob(&ctx, &layer, HashMap::from([source])).await
                                }
                            },
                            || Err(PullError::Canceled),
                        )
                        .await;
                    let mut r = joined.value?;
                    if joined.coalesced {
                        // Fetched under another pull's lease: reference it from ours too.
                        ctx.cd
                            .lease_add(&ctx.lease, "content", &layer.digest)
                            .await?;
                        r = Fetched::Reused;
                    }
                    match r {
                        Fetched::Reused => ctx.metrics.layers_reused.inc(),
                        Fetched::Downloaded(_) => ctx.metrics.layers_fetched.inc(),
                    }
                    let _ = done.send(());
                    Ok::<Fetched, PullError>(r)
                }
            });
        let fetch_all = async {
            let r = try_join_all(fetches).await?;
            Ok::<(Vec<Fetched>, Duration), PullError>((r, t1.elapsed()))
        };
        let unpacking = unpack::unpack(&ctx, &man.layers, &diff_ids, receivers);
        let result = try_join(fetch_all, unpacking).await;
        let ((fetched, fetch_time), (top_chain, unpack_done)) = match result {
            Ok(v) => v,
            Err(e) => {
                // The lease stays until it expires so a retry resumes; what was
                // written is collected by containerd's GC after that.
                return Err(e);
            }
        };
        report.layers_fetched = fetched
            .iter()
            .filter(|f| matches!(f, Fetched::Downloaded(_)))
            .count();
        report.layers_reused = fetched.len() - report.layers_fetched;
        report.fetch = fetch_time;
        report.unpack = unpack_done.saturating_sub(fetch_time);
        self.metrics.phase("fetch", report.fetch.as_secs_f64());
        self.metrics.phase("unpack", report.unpack.as_secs_f64());

        // ---- parents, with GC references, then records (not abortable) ----
        let t2 = Instant::now();
        let this = self.clone();
        let ctx2 = ctx.clone();
        let reference2 = reference.clone();
        let cfg_desc = man.config.clone();
        let layers = man.layers.clone();
        let snapshotter2 = snapshotter.to_string();
        let finish = tokio::spawn(async move {
            let ctx = ctx2;
            let mut cfg_labels = HashMap::from([source_label(&ctx.domain, &ctx.repo)]);
            if !top_chain.is_empty() {
                cfg_labels.insert(
                    format!("{}{}", labels::GC_REF_SNAPSHOT_PREFIX, snapshotter2),
                    top_chain,
                );
            }
            fetch::write_bytes(&ctx, &cfg_desc, config_bytes, cfg_labels).await?;
            let mut m_labels = HashMap::from([source_label(&ctx.domain, &ctx.repo)]);
            m_labels.insert(
                labels::GC_REF_CONTENT_CONFIG.to_string(),
                cfg_desc.digest.clone(),
            );
            for (i, l) in layers.iter().enumerate() {
                m_labels.insert(
                    format!("{}{i}", labels::GC_REF_CONTENT_LAYER_PREFIX),
                    l.digest.clone(),
                );
            }
            fetch::write_bytes(&ctx, &manifest_desc, manifest_bytes, m_labels).await?;
            let target = match index_bytes {
                Some((idx_desc, idx_bytes, entries)) => {
                    let mut i_labels = HashMap::from([source_label(&ctx.domain, &ctx.repo)]);
                    for (i, d) in entries.iter().enumerate() {
                        // Only the chosen manifest is local; refs to absent content are harmless.
                        i_labels.insert(
                            format!("{}{i}", labels::GC_REF_CONTENT_MANIFEST_PREFIX),
                            d.digest.clone(),
                        );
                    }
                    fetch::write_bytes(&ctx, &idx_desc, idx_bytes, i_labels).await?;
                    idx_desc
                }
                None => manifest_desc,
            };
            this.ensure_records(&reference2, &target, &cfg_desc.digest)
                .await?;
            let _ = ctx.cd.delete_lease(&ctx.lease).await;
            Ok::<(), PullError>(())
        });
        match finish.await {
            Ok(r) => r?,
            Err(e) => return Err(PullError::Internal(format!("record task: {e}"))),
        }
        report.records = t2.elapsed();
        self.metrics.phase("records", report.records.as_secs_f64());
        report.bytes = ctx.bytes.load(std::sync::atomic::Ordering::Relaxed);
        Ok(report)
    }

    /// Records for an image that is already here. A RemoveImage running at
    /// the same moment may just have collected its content: pin the target
    /// and top snapshot with a short lease first, re-check they are still
    /// there, then write the records (which keep them from then on). False:
    /// something is gone, pull it normally.
    async fn reuse_local(
        &self,
        reference: &Reference,
        target: &Descriptor,
        info: &crate::store::ImageInfo,
        snapshotter: &str,
    ) -> Result<bool, PullError> {
        let lease = format!(
            "cri-imaged-pull-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        );
        // Not flat: the target keeps its manifest, config, layers and snapshot.
        self.cd
            .create_lease_deep(&lease, self.cfg.lease_expiry)
            .await?;
        let result = async {
            self.cd.lease_add(&lease, "content", &target.digest).await?;
            if !info.chain_id.is_empty() {
                self.cd.lease_add(&lease, &format!("snapshots/{snapshotter}"), &info.chain_id).await?;
            }
            let present = self.cd.content_info(&target.digest).await?.is_some()
                && self.cd.content_info(&info.id).await?.is_some()
                && self.complete_locally(info, snapshotter).await;
            if !present {
                tracing::debug!(image = %reference, "local image went away while reusing it; pulling");
                return Ok(false);
            }
            self.ensure_records(reference, target, &info.id).await?;
            Ok::<bool, PullError>(true)
        }
        .await;
        let _ = self.cd.delete_lease(&lease).await;
        result
    }

    /// The image is already here: make sure its records exist, writing
    /// nothing when they are current. False when a real pull is needed.
    async fn use_local(
        &self,
        reference: &Reference,
        target: &Descriptor,
        info: &crate::store::ImageInfo,
        snapshotter: &str,
    ) -> Result<bool, PullError> {
        if self
            .already_current(reference, &target.digest, info, snapshotter)
            .await
        {
            return Ok(true);
        }
        if info.target != target.digest || !self.complete_locally(info, snapshotter).await {
            return Ok(false);
        }
        self.reuse_local(reference, target, info, snapshotter).await
    }

    /// Warm pull: every record this pull would write already points at
    /// `target` (as the index knows it) and the image's top snapshot exists.
    /// Then nothing needs writing at all.
    async fn already_current(
        &self,
        reference: &Reference,
        target: &str,
        info: &crate::store::ImageInfo,
        snapshotter: &str,
    ) -> bool {
        let pinned = self.is_pinned(reference);
        let current = record_names(reference, target, &info.id).iter().all(|n| {
            matches!(self.store.record(n), Some((id, t, p)) if id == info.id && t == target && (p || !pinned))
        });
        current && self.complete_locally(info, snapshotter).await
    }

    /// Is everything this image needs on this node present (content + top snapshot)?
    async fn complete_locally(&self, info: &crate::store::ImageInfo, snapshotter: &str) -> bool {
        if info.chain_id.is_empty() {
            return true;
        }
        matches!(
            self.cd.snapshot_exists(snapshotter, &info.chain_id).await,
            Ok(true)
        )
    }

    /// Create (or update) the image records: name:tag, name@digest, sha256:<id>.
    async fn ensure_records(
        &self,
        reference: &Reference,
        target: &Descriptor,
        image_id: &str,
    ) -> Result<(), PullError> {
        let names = record_names(reference, &target.digest, image_id);
        let pinned = self.is_pinned(reference);
        for n in &names {
            let mut l = HashMap::from([(
                labels::CRI_MANAGED.to_string(),
                labels::CRI_MANAGED_VALUE.to_string(),
            )]);
            if pinned {
                l.insert(
                    labels::CRI_PINNED.to_string(),
                    labels::CRI_PINNED_VALUE.to_string(),
                );
            }
            let rec = ImageRecord {
                name: n.clone(),
                labels: l,
                target: Some(containerd_client::types::Descriptor {
                    media_type: target.media_type.clone(),
                    digest: target.digest.clone(),
                    size: target.size,
                    annotations: HashMap::new(),
                }),
                created_at: None,
                updated_at: None,
            };
            self.cd.put_image(rec, None).await?;
        }
        for n in &names {
            self.store.refresh(n).await?;
        }
        Ok(())
    }

    fn is_pinned(&self, reference: &Reference) -> bool {
        self.cfg.pinned.iter().any(|p| {
            Reference::parse_normalized(p)
                .map(|r| r.with_default_tag().to_string() == reference.to_string())
                .unwrap_or(false)
        })
    }

    /// A small blob (config) from the registry, size-limited and digest-checked.
    async fn fetch_small(
        &self,
        domain: &str,
        repo: &str,
        desc: &Descriptor,
        auth: &PullAuth,
    ) -> Result<Bytes, PullError> {
        if desc.size as u64 > manifest::MAX_DOCUMENT_BYTES {
            return Err(ManifestError::TooLarge {
                what: "config",
                digest: desc.digest.clone(),
                size: desc.size as u64,
            }
            .into());
        }
        // Already local (warm content, cold records)?
        if let Ok(b) = self
            .cd
            .read_blob(&desc.digest, manifest::MAX_DOCUMENT_BYTES)
            .await
        {
            return Ok(b);
        }
        let blob = self
            .registries
            .get_blob(domain, repo, &desc.digest, 0, auth)
            .await?;
        let mut out = Vec::with_capacity(desc.size.max(0) as usize);
        let mut s = blob.stream;
        use futures::StreamExt;
        while let Some(chunk) = s.next().await {
            let chunk = chunk?;
            self.metrics.bytes_fetched.inc_by(chunk.len() as u64);
            out.extend_from_slice(&chunk);
            if out.len() as u64 > manifest::MAX_DOCUMENT_BYTES {
                return Err(ManifestError::TooLarge {
                    what: "config",
                    digest: desc.digest.clone(),
                    size: out.len() as u64,
                }
                .into());
            }
        }
        let got = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&out))
        );
        if desc.digest.starts_with("sha256:") && got != desc.digest {
            return Err(PullError::DigestMismatch(format!(
                "config {} from {domain}/{repo} has digest {got}",
                desc.digest
            )));
        }
        Ok(Bytes::from(out))
    }

    async fn remote_config_platform(
        &self,
        domain: &str,
        repo: &str,
        d: &Descriptor,
        auth: &PullAuth,
    ) -> Option<Platform> {
        let m = self
            .registries
            .get_manifest(domain, repo, &d.digest, auth)
            .await
            .ok()?;
        let mt = manifest::sniff_media_type(&m.media_type, &m.bytes);
        let Document::Manifest(man) = manifest::parse(&mt, &d.digest, &m.bytes).ok()? else {
            return None;
        };
        let b = self
            .fetch_small(domain, repo, &man.config, auth)
            .await
            .ok()?;
        Some(
            manifest::parse_config(&man.config.digest, &b)
                .ok()?
                .platform(),
        )
    }
}

/// The records a pull of `reference` leaves: name:tag (unless pulled by
/// digest), name@<target digest> and the ID record.
fn record_names(reference: &Reference, target: &str, image_id: &str) -> Vec<String> {
    let mut names = Vec::new();
    if reference.digest().is_none() {
        if let Some(t) = reference.name_tag() {
            names.push(t);
        }
    }
    names.push(format!("{}@{target}", reference.name()));
    names.push(image_id.to_string());
    names
}

fn source_label(domain: &str, repo: &str) -> (String, String) {
    (
        format!("{}{domain}", labels::DISTRIBUTION_SOURCE_PREFIX),
        repo.to_string(),
    )
}
