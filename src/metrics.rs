//! The registry of metrics and the /metrics, /healthz, /readyz server.
//!
//! Label values are bounded: RPC method names, gRPC code names, pull results,
//! failure reasons and phases. No image name, repository, user or credential
//! ever becomes a label value.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

/// Why a pull failed; one label value each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    NotFound,
    Unauthorized,
    PlatformMismatch,
    RegistryUnavailable,
    Stalled,
    Canceled,
    NoSpace,
    DigestMismatch,
    Other,
}

impl FailureReason {
    pub const ALL: [FailureReason; 9] = [
        FailureReason::NotFound,
        FailureReason::Unauthorized,
        FailureReason::PlatformMismatch,
        FailureReason::RegistryUnavailable,
        FailureReason::Stalled,
        FailureReason::Canceled,
        FailureReason::NoSpace,
        FailureReason::DigestMismatch,
        FailureReason::Other,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::NotFound => "not_found",
            FailureReason::Unauthorized => "unauthorized",
            FailureReason::PlatformMismatch => "platform_mismatch",
            FailureReason::RegistryUnavailable => "registry_unavailable",
            FailureReason::Stalled => "stalled",
            FailureReason::Canceled => "canceled",
            FailureReason::NoSpace => "no_space",
            FailureReason::DigestMismatch => "digest_mismatch",
            FailureReason::Other => "other",
        }
    }
}

pub const PHASES: [&str; 4] = ["resolve", "fetch", "unpack", "records"];
pub const RPC_METHODS: [&str; 5] = [
    "ListImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
];

pub struct Metrics {
    pub registry: Registry,
    pub grpc_requests: IntCounterVec,
    pub grpc_duration: HistogramVec,
    pub pulls: IntCounterVec,
    pub pull_failures: IntCounterVec,
    pub pulls_in_flight: IntGauge,
    pub pulls_coalesced: IntCounter,
    /// By `result` (success, failure, present = already here) and `size`
    /// (the image's packed size class, as kubelet's pull histogram; "unknown"
    /// when the pull failed before the size was known).
    pub pull_duration: HistogramVec,
    pub registry_retries: IntCounter,
    pub registry_host_fallthroughs: IntCounter,
    pub blob_range_resumes: IntCounter,
    pub phase_duration: HistogramVec,
    pub bytes_fetched: IntCounter,
    pub layers_fetched: IntCounter,
    pub layers_reused: IntCounter,
    /// Layers written into snapshots, by who wrote them.
    pub layers_unpacked_native: IntCounter,
    pub layers_unpacked_containerd: IntCounter,
    pub layers_served_remote: IntCounter,
    pub layers_staged: IntCounter,
    /// Layer blobs the native unpack's downloads put into the content store,
    /// by way: containerd's ingest file written in place, or the Write API.
    pub blobs_stored_ingest_file: IntCounter,
    pub blobs_stored_write_api: IntCounter,
    pub blobs_stored_blob_file: IntCounter,
    /// Background content-store writes that failed (the image still runs from its snapshots).
    pub blob_store_failures: IntCounter,
    pub removals: IntCounter,
    pub images: IntGauge,
    pub imagefs_used_bytes: Gauge,
    pub imagefs_inodes_used: Gauge,
    pub containerd_up: IntGauge,
    pub build_info: GaugeVec,
    /// Set once the CRI socket is listening.
    pub socket_ready: AtomicBool,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    r.expect("metric definitions are static and valid")
}

const GRPC_BUCKETS: [f64; 20] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];
const PULL_BUCKETS: [f64; 16] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
    1800.0,
];
const PHASE_BUCKETS: [f64; 15] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// A metric's name and help text.
type Def = (&'static str, &'static str);

const GRPC_REQUESTS_TOTAL: Def = (
    "cri_imaged_grpc_requests_total",
    "CRI gRPC requests by method and status code.",
);
const GRPC_REQUEST_DURATION_SECONDS: Def = (
    "cri_imaged_grpc_request_duration_seconds",
    "CRI gRPC request latency by method.",
);
const PULLS_TOTAL: Def = (
    "cri_imaged_pulls_total",
    "Image pulls by result (success or failure).",
);
const PULL_FAILURES_TOTAL: Def = (
    "cri_imaged_pull_failures_total",
    "Failed image pulls by reason.",
);
const PULLS_IN_FLIGHT: Def = ("cri_imaged_pulls_in_flight", "Image pulls in progress.");
const PULLS_COALESCED_TOTAL: Def = (
    "cri_imaged_pulls_coalesced_total",
    "PullImage calls that joined a pull already in progress.",
);
const PULL_DURATION_SECONDS: Def = (
    "cri_imaged_pull_duration_seconds",
    "Wall time of image pulls, by result (success, failure, present) and image size class.",
);
const REGISTRY_RETRIES_TOTAL: Def = (
    "cri_imaged_registry_retries_total",
    "Registry requests retried after 429, 5xx or a broken connection.",
);
const REGISTRY_HOST_FALLTHROUGHS_TOTAL: Def = (
    "cri_imaged_registry_host_fallthroughs_total",
    "Times a registry host (a mirror) failed or lacked the content and the next host was tried.",
);
const BLOB_RANGE_RESUMES_TOTAL: Def = (
    "cri_imaged_blob_range_resumes_total",
    "Blob downloads resumed with a Range request after the body broke off.",
);
const PULL_PHASE_DURATION_SECONDS: Def = (
    "cri_imaged_pull_phase_duration_seconds",
    "Time spent in each pull phase.",
);
const FETCHED_BYTES_TOTAL: Def = (
    "cri_imaged_fetched_bytes_total",
    "Bytes received from registries (blobs and manifests).",
);
const LAYERS_FETCHED_TOTAL: Def = ("cri_imaged_layers_fetched_total", "Layers downloaded.");
const LAYERS_REUSED_TOTAL: Def = (
    "cri_imaged_layers_reused_total",
    "Layers already in containerd's content store, not downloaded.",
);
const LAYERS_STAGED_TOTAL: Def = ("cri_imaged_layers_staged_total", "Layers the native unpack wrote ahead of the snapshot chain (into a staging directory beside the snapshots) and then moved into their snapshot.");
const LAYER_BLOB_STORE_FAILURES_TOTAL: Def = ("cri_imaged_layer_blob_store_failures_total", "Layer blobs a native-unpack pull downloaded but could not commit to containerd's content store in the background (the image runs from its snapshots; a later pull of the blob stores it).");
const IMAGE_REMOVALS_TOTAL: Def = ("cri_imaged_image_removals_total", "Images removed.");
const IMAGES: Def = ("cri_imaged_images", "Images known to the index.");
const IMAGEFS_USED_BYTES: Def = (
    "cri_imaged_imagefs_used_bytes",
    "Bytes used by the snapshotter.",
);
const IMAGEFS_INODES_USED: Def = (
    "cri_imaged_imagefs_inodes_used",
    "Inodes used by the snapshotter.",
);
const CONTAINERD_UP: Def = (
    "cri_imaged_containerd_up",
    "1 when containerd is reachable and the image index is in sync.",
);
const LAYERS_UNPACKED_TOTAL: Def = ("cri_imaged_layers_unpacked_total", "Layers that became snapshots, by unpacker: native (cri-imaged wrote the files), containerd (its diff service) or remote (a remote snapshotter served the layer: not downloaded).");
const LAYER_BLOBS_STORED_TOTAL: Def = ("cri_imaged_layer_blobs_stored_total", "Layer blobs downloaded for the native unpack and committed to containerd's content store, by way: blob_file (verified by cri-imaged and put in place as the store's blob file; containerd only records it), ingest_file (written in place, verified by containerd on commit) or write_api (streamed through its content Write API).");

/// Makes each metric and registers it in the same step, so a metric defined
/// is a metric exported.
struct Defs(Registry);

impl Defs {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, c: prometheus::Result<C>) -> C {
        let c = must(c);
        must(self.0.register(Box::new(c.clone())));
        c
    }
    fn counter(&self, (name, help): Def) -> IntCounter {
        self.add(IntCounter::new(name, help))
    }
    fn int_gauge(&self, (name, help): Def) -> IntGauge {
        self.add(IntGauge::new(name, help))
    }
    fn gauge(&self, (name, help): Def) -> Gauge {
        self.add(Gauge::new(name, help))
    }
    fn counter_vec(&self, (name, help): Def, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels))
    }
    fn histogram_vec(&self, (name, help): Def, buckets: &[f64], labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(HistogramVec::new(opts, labels))
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let d = Defs(Registry::new());
        let layers_unpacked = d.counter_vec(LAYERS_UNPACKED_TOTAL, &["unpacker"]);
        let blobs_stored = d.counter_vec(LAYER_BLOBS_STORED_TOTAL, &["via"]);
        let build_info = d.add(GaugeVec::new(
            Opts::new("cri_imaged_build_info", "Build information; always 1."),
            &["version", "revision", "rustc_version"],
        ));
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("CRI_IMAGED_REVISION"),
                env!("CRI_IMAGED_RUSTC_VERSION"),
            ])
            .set(1.0);
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, process_start_time_seconds, ...
        must(d.0.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )));
        let m = Metrics {
            grpc_requests: d.counter_vec(GRPC_REQUESTS_TOTAL, &["method", "code"]),
            grpc_duration: d.histogram_vec(
                GRPC_REQUEST_DURATION_SECONDS,
                &GRPC_BUCKETS,
                &["method"],
            ),
            pulls: d.counter_vec(PULLS_TOTAL, &["result"]),
            pull_failures: d.counter_vec(PULL_FAILURES_TOTAL, &["reason"]),
            pulls_in_flight: d.int_gauge(PULLS_IN_FLIGHT),
            pulls_coalesced: d.counter(PULLS_COALESCED_TOTAL),
            pull_duration: d.histogram_vec(
                PULL_DURATION_SECONDS,
                &PULL_BUCKETS,
                &["result", "size"],
            ),
            registry_retries: d.counter(REGISTRY_RETRIES_TOTAL),
            registry_host_fallthroughs: d.counter(REGISTRY_HOST_FALLTHROUGHS_TOTAL),
            blob_range_resumes: d.counter(BLOB_RANGE_RESUMES_TOTAL),
            phase_duration: d.histogram_vec(
                PULL_PHASE_DURATION_SECONDS,
                &PHASE_BUCKETS,
                &["phase"],
            ),
            bytes_fetched: d.counter(FETCHED_BYTES_TOTAL),
            layers_fetched: d.counter(LAYERS_FETCHED_TOTAL),
            layers_reused: d.counter(LAYERS_REUSED_TOTAL),
            layers_unpacked_native: layers_unpacked.with_label_values(&["native"]),
            layers_unpacked_containerd: layers_unpacked.with_label_values(&["containerd"]),
            layers_served_remote: layers_unpacked.with_label_values(&["remote"]),
            layers_staged: d.counter(LAYERS_STAGED_TOTAL),
            blobs_stored_ingest_file: blobs_stored.with_label_values(&["ingest_file"]),
            blobs_stored_write_api: blobs_stored.with_label_values(&["write_api"]),
            blobs_stored_blob_file: blobs_stored.with_label_values(&["blob_file"]),
            blob_store_failures: d.counter(LAYER_BLOB_STORE_FAILURES_TOTAL),
            removals: d.counter(IMAGE_REMOVALS_TOTAL),
            images: d.int_gauge(IMAGES),
            imagefs_used_bytes: d.gauge(IMAGEFS_USED_BYTES),
            imagefs_inodes_used: d.gauge(IMAGEFS_INODES_USED),
            containerd_up: d.int_gauge(CONTAINERD_UP),
            build_info,
            socket_ready: AtomicBool::new(false),
            registry: d.0,
        };
        m.precreate_series();
        Arc::new(m)
    }

    /// Pre-create the bounded label sets so every series exists from the start.
    fn precreate_series(&self) {
        for r in ["success", "failure"] {
            self.pulls.with_label_values(&[r]);
        }
        for r in FailureReason::ALL {
            self.pull_failures.with_label_values(&[r.as_str()]);
        }
        for p in PHASES {
            self.phase_duration.with_label_values(&[p]);
        }
        self.pull_duration
            .with_label_values(&["failure", "unknown"]);
        for size in SIZE_CLASSES {
            for result in ["success", "present"] {
                self.pull_duration.with_label_values(&[result, size]);
            }
        }
        for m in RPC_METHODS {
            self.grpc_duration.with_label_values(&[m]);
        }
    }

    /// Bring the registry client's counters over (called periodically).
    pub fn sync_registry(&self, c: &crate::registry::RegistryCounters) {
        use std::sync::atomic::Ordering::Relaxed;
        for (counter, now) in [
            (&self.registry_retries, c.retries.load(Relaxed)),
            (
                &self.registry_host_fallthroughs,
                c.host_fallthroughs.load(Relaxed),
            ),
        ] {
            let seen = counter.get();
            if now > seen {
                counter.inc_by(now - seen);
            }
        }
    }

    pub fn observe_rpc(&self, method: &'static str, code: tonic::Code, seconds: f64) {
        self.grpc_requests
            .with_label_values(&[method, code_name(code)])
            .inc();
        self.grpc_duration
            .with_label_values(&[method])
            .observe(seconds);
    }

    pub fn pull_failed(&self, reason: FailureReason) {
        self.pulls.with_label_values(&["failure"]).inc();
        self.pull_failures
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    pub fn pull_succeeded(&self) {
        self.pulls.with_label_values(&["success"]).inc();
    }

    pub fn phase(&self, phase: &'static str, seconds: f64) {
        self.phase_duration
            .with_label_values(&[phase])
            .observe(seconds);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

pub fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Increments a gauge now and decrements it when dropped, so a future that
/// is dropped half-way (the caller went away) still leaves the gauge right.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn inc(g: &IntGauge) -> GaugeGuard {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Readiness: a closure answering Err(reason) when not ready.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Serve /metrics, /healthz and /readyz until `shutdown` resolves.
/// Bind the metrics port (with SO_REUSEPORT for socket_takeover). Done at
/// start, so a port that cannot be bound stops the daemon with the reason
/// instead of leaving it running without metrics and probes.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        // A newer instance taking over (socket_takeover) shares the port until we exit.
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(128)
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: ReadyCheck,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let m = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready() {
                        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        );
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics server listening");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Mark the socket as listening (for /readyz).
pub fn set_socket_ready(m: &Metrics, v: bool) {
    m.socket_ready.store(v, Ordering::Release);
}

/// The size classes [`size_class`] gives for a known size.
pub const SIZE_CLASSES: [&str; 7] = [
    "0-10MB",
    "10MB-100MB",
    "100MB-500MB",
    "500MB-1GB",
    "1GB-5GB",
    "5GB-10GB",
    "10GB+",
];

/// kubelet's image size classes (its pull-duration histogram), by packed size.
pub fn size_class(bytes: Option<u64>) -> &'static str {
    const MB: u64 = 1_000_000;
    match bytes {
        None => "unknown",
        Some(b) if b < 10 * MB => "0-10MB",
        Some(b) if b < 100 * MB => "10MB-100MB",
        Some(b) if b < 500 * MB => "100MB-500MB",
        Some(b) if b < 1000 * MB => "500MB-1GB",
        Some(b) if b < 5000 * MB => "1GB-5GB",
        Some(b) if b < 10000 * MB => "5GB-10GB",
        Some(_) => "10GB+",
    }
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn size_classes() {
        use super::size_class;
        assert_eq!(size_class(None), "unknown");
        assert_eq!(size_class(Some(833)), "0-10MB");
        assert_eq!(size_class(Some(64_000_000)), "10MB-100MB");
        assert_eq!(size_class(Some(2_000_000_000)), "1GB-5GB");
        assert_eq!(size_class(Some(20_000_000_000)), "10GB+");
    }
}
