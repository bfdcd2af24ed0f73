//! Serving: the unix socket (mode, group, stale and live sockets), the gRPC
//! server over it, background tasks, and graceful shutdown on SIGTERM/SIGINT.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::UnixListener;

use crate::config::Config;
use crate::containerd::Containerd;
use crate::cri::{ImageService, ImageServiceServer};
use crate::imagefs::ImageFs;
use crate::metrics::{self, Metrics};
use crate::platform::Matcher;
use crate::pull::{PullConfig, Puller};
use crate::registry::Registries;
use crate::store::Store;

/// Cleanup of a killed predecessor's half-done unpacks: tried once a second
/// for a minute while containerd is not answering yet.
const CLEANUP_ATTEMPTS: usize = 60;
const CLEANUP_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How often the gauges that mirror state (images, imagefs, containerd up) are set.
const GAUGE_REFRESH: Duration = Duration::from_millis(500);
/// Pause after a failed accept (e.g. out of file descriptors) before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// How often start-up checks whether the index is in sync, to report READY=1.
const READY_POLL: Duration = Duration::from_millis(50);
/// Concurrent RPCs one client connection may have open.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// How long start-up holds the socket's callers (queued in the listen
/// backlog) until the image index is in sync with containerd, and how long a
/// takeover waits before it moves the socket path over anyway. Answering
/// before that would give every caller UNAVAILABLE ("not in sync"); the
/// index normally syncs in milliseconds.
const START_SYNC_WAIT: Duration = Duration::from_secs(10);

/// The file of the CRI socket this instance bound. With `socket_takeover` and
/// another instance serving the path, it is bound beside the path
/// (`<listen>.new-<pid>`) and [`SocketFile::publish`] moves it over the path
/// once this instance can answer: until then, callers reach the old instance.
pub struct SocketFile {
    pending: Option<std::path::PathBuf>,
    ino: Option<u64>,
}

impl SocketFile {
    /// Rename a takeover's socket over `path` (atomic: new connections reach
    /// this instance, the old one keeps its open ones). No-op otherwise.
    pub fn publish(&mut self, path: &Path) -> anyhow::Result<()> {
        if let Some(side) = self.pending.take() {
            std::fs::rename(&side, path)
                .with_context(|| format!("renaming {} over {}", side.display(), path.display()))?;
            tracing::info!(socket = %path.display(), "socket taken over: new connections reach this instance");
        }
        Ok(())
    }

    /// Remove the socket file this instance bound: the side path of a
    /// takeover that never happened, else `path` if it is still ours (a newer
    /// instance may have taken the path over).
    pub fn remove(&self, path: &Path) {
        use std::os::unix::fs::MetadataExt;
        let file = self.pending.as_deref().unwrap_or(path);
        match (std::fs::metadata(file), self.ino) {
            (Ok(m), Some(i)) if m.ino() != i => {}
            _ => {
                let _ = std::fs::remove_file(file);
            }
        }
    }
}

/// Bind the CRI socket: refuse when another instance answers on it (unless
/// `socket_takeover`), replace a stale file, then apply mode and group.
pub fn bind_socket(cfg: &Config) -> anyhow::Result<(UnixListener, SocketFile)> {
    let path = &cfg.listen;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    let mut bind_path = path.clone();
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() && cfg.socket_takeover {
            tracing::info!(socket = %path.display(), "another instance serves this socket; taking it over once the image index is in sync (socket_takeover)");
            bind_path = path.with_extension(format!("new-{}", std::process::id()));
            let _ = std::fs::remove_file(&bind_path);
        } else if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another process is serving on {}: refusing to start a second instance (stop it, choose another `listen` path, or set socket_takeover)",
                path.display()
            );
        } else {
            use std::os::unix::fs::FileTypeExt;
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            if !is_socket {
                bail!(
                    "{} exists and is not a unix socket: refusing to replace it (check `listen`)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
    }
    let listener = UnixListener::bind(&bind_path)
        .with_context(|| format!("binding {}", bind_path.display()))?;
    let file = SocketFile {
        ino: {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&bind_path).ok().map(|m| m.ino())
        },
        pending: (bind_path != *path).then(|| bind_path.clone()),
    };
    if let Err(e) = set_owner_and_mode(cfg, &bind_path) {
        file.remove(path);
        return Err(e);
    }
    Ok((listener, file))
}

fn set_owner_and_mode(cfg: &Config, bind_path: &Path) -> anyhow::Result<()> {
    let mode = cfg.socket_mode_bits()?;
    std::fs::set_permissions(bind_path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {:o} on {}", mode, bind_path.display()))?;
    if !cfg.socket_group.is_empty() {
        let gid = match cfg.socket_group.parse::<u32>() {
            Ok(g) => g,
            Err(_) => nix::unistd::Group::from_name(&cfg.socket_group)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
                .with_context(|| format!("socket_group {:?} does not exist", cfg.socket_group))?,
        };
        nix::unistd::chown(bind_path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .with_context(|| format!("chown {} to group {gid}", bind_path.display()))?;
    }
    Ok(())
}

/// Wait (at most `limit`, or until a stop) for the index to be in sync.
async fn wait_for_sync(store: &Store, limit: Duration, stop: &tokio::sync::watch::Receiver<bool>) {
    let deadline = tokio::time::Instant::now() + limit;
    while !store.is_synced() && !*stop.borrow() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                containerd = %store.containerd().socket().display(),
                waited = ?limit,
                "the image index is not in sync with containerd yet; serving anyway (calls that need it answer UNAVAILABLE until it is)"
            );
            return;
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// Everything the daemon runs.
pub struct Daemon {
    pub service: ImageService,
}

pub fn build(cfg: &Config) -> anyhow::Result<Daemon> {
    // With the native unpack, small layers are spooled here during every
    // pull: it must be writable (created if missing), else the start fails
    // with the reason.
    if cfg.unpacker == crate::config::Unpacker::Auto {
        let spool_dir = cfg.effective_spool_dir();
        std::fs::create_dir_all(&spool_dir).map_err(|e| {
            anyhow::anyhow!("spool_dir {}: cannot create it: {e}", spool_dir.display())
        })?;
    }
    let cd = Containerd::new(&cfg.containerd_address, &cfg.containerd_namespace);
    let matcher = Matcher::new(cfg.node_platforms()?, cfg.strict_platform);
    let metrics = Metrics::new();
    let store = Store::new(cd.clone(), matcher, &cfg.pinned_images);
    let registries = Registries::new(&cfg.registry_config_path);
    let puller = Puller::new(
        store.clone(),
        registries,
        PullConfig {
            snapshotter: cfg.snapshotter.clone(),
            runtime_handler_snapshotters: cfg
                .runtime_handler_snapshotters
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
            progress_timeout: cfg.pull_progress_timeout,
            per_pull_downloads: cfg.max_concurrent_downloads_per_pull,
            lease_expiry: cfg.lease_expiry,
            pinned: cfg.pinned_images.clone(),
            native_unpack: cfg.unpacker == crate::config::Unpacker::Auto,
            discard_unpacked_layers: cfg.discard_unpacked_layers,
            snapshot_annotations: cfg.snapshot_annotations,
            // Looked at per blob (a managed containerd creates it after we start).
            content_root: Some(cfg.containerd_root.join("io.containerd.content.v1.content")),
            spool_dir: cfg.effective_spool_dir(),
            limits: cfg.limits,
        },
        cfg.max_concurrent_downloads,
        metrics.clone(),
    );
    let imagefs = ImageFs::new(
        cd,
        cfg.snapshotter.clone(),
        cfg.effective_snapshotter_root(),
    );
    Ok(Daemon {
        service: ImageService {
            store,
            puller,
            imagefs,
            metrics,
            list_cache: Default::default(),
        },
    })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Run until a signal; in-flight RPCs get `shutdown_grace` to finish.
pub async fn serve(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let daemon = build(&cfg)?;
    let svc = daemon.service.clone();
    // Socket activation: systemd owns the socket file (and keeps it across
    // our restarts); else we bind it ourselves and remove it on the way out.
    let (listener, mut socket_file) = match crate::systemd::inherited_listener()? {
        Some(l) => {
            let path = l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.to_path_buf()));
            tracing::info!(socket = ?path, "serving the socket systemd passed (socket activation)");
            (UnixListener::from_std(l)?, None)
        }
        None => {
            let (l, file) = bind_socket(&cfg)?;
            (l, Some(file))
        }
    };
    // A metrics port that cannot be bound stops the start (after the CRI
    // socket checks, whose refusal says more), removing the socket again.
    let metrics_listener = if cfg.metrics_address.is_empty() {
        None
    } else {
        let addr: std::net::SocketAddr = cfg.metrics_address.parse()?;
        match metrics::bind(addr, cfg.socket_takeover) {
            Ok(l) => Some(l),
            Err(e) => {
                if let Some(f) = &socket_file {
                    f.remove(&cfg.listen);
                }
                return Err(anyhow::Error::new(e).context(format!(
                    "binding metrics_address {addr} (is another process using it? change metrics_address, or set it to \"\" to turn metrics off)"
                )));
            }
        }
    };
    tracing::info!(
        socket = %cfg.listen.display(),
        containerd = %cfg.containerd_address.display(),
        namespace = %cfg.containerd_namespace,
        snapshotter = %cfg.snapshotter,
        platforms = %svc.store.matcher().describe(),
        "cri-imaged serving"
    );
    let background = spawn_background(&cfg, &svc);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        crate::systemd::stopping();
        let _ = stop_tx.send(true);
    });
    // Type=notify: ready once the socket serves and the index is in sync.
    let store = svc.store.clone();
    tokio::spawn(async move {
        while !store.is_synced() {
            tokio::time::sleep(READY_POLL).await;
        }
        crate::systemd::ready();
    });

    if let Some(metrics_listener) = metrics_listener {
        let m = svc.metrics.clone();
        let store = svc.store.clone();
        let socket_path = cfg.listen.clone();
        let ready: metrics::ReadyCheck = Arc::new(move || {
            if !m.socket_ready.load(std::sync::atomic::Ordering::Acquire) || !socket_path.exists() {
                return Err("the CRI socket is not listening".into());
            }
            if !store.is_synced() {
                return Err(format!(
                    "containerd at {} is not reachable (or the image index is not in sync yet)",
                    store.containerd().socket().display()
                ));
            }
            Ok(())
        });
        let mut rx = stop_rx.clone();
        let m2 = svc.metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(metrics_listener, m2, ready, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
            {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }

    // Callers queue in the listen backlog (and a takeover's keep reaching the
    // old instance) until the index can answer them.
    wait_for_sync(&svc.store, START_SYNC_WAIT, &stop_rx).await;
    if let Some(f) = socket_file.as_mut() {
        if let Err(e) = f.publish(&cfg.listen) {
            f.remove(&cfg.listen);
            return Err(e);
        }
    }
    metrics::set_socket_ready(&svc.metrics, true);

    let grpc = <_ as tower::ServiceExt<hyper::Request<hyper::body::Incoming>>>::map_response(
        ImageServiceServer::new(svc.clone()),
        decode_error_is_invalid_argument,
    );
    serve_grpc(listener, grpc, stop_rx, cfg.shutdown_grace).await;
    metrics::set_socket_ready(&svc.metrics, false);
    for b in background {
        b.abort();
    }
    if let Some(f) = &socket_file {
        f.remove(&cfg.listen);
    }
    tracing::info!("cri-imaged stopped");
    Ok(())
}

fn spawn_background(cfg: &Config, svc: &ImageService) -> Vec<tokio::task::JoinHandle<()>> {
    let mut v = Vec::new();
    v.push(tokio::spawn(svc.store.clone().run_sync()));
    v.push(tokio::spawn(
        svc.imagefs.clone().run(cfg.imagefs_sample_interval),
    ));
    // Snapshots a killed predecessor left mid-unpack (retried until containerd answers).
    let (cd, mut snapshotters) = (
        svc.store.containerd().clone(),
        vec![cfg.snapshotter.clone()],
    );
    snapshotters.extend(cfg.runtime_handler_snapshotters.values().cloned());
    snapshotters.sort();
    snapshotters.dedup();
    v.push(tokio::spawn(async move {
        for _ in 0..CLEANUP_ATTEMPTS {
            match crate::pull::cleanup_interrupted(&cd, &snapshotters).await {
                Ok(_) => break,
                Err(e) => tracing::debug!(error = %e, "cleanup of interrupted unpacks: retrying"),
            }
            tokio::time::sleep(CLEANUP_RETRY_PAUSE).await;
        }
    }));
    // Layers a killed predecessor had staged (written ahead of their snapshots).
    // And half-copied blob files of one (`<content root>/cri-imaged-tmp`).
    let root = cfg.effective_snapshotter_root();
    let content = cfg.containerd_root.join("io.containerd.content.v1.content");
    v.push(tokio::task::spawn_blocking(move || {
        let n = crate::pull::cleanup_staging(&root);
        if n > 0 {
            tracing::info!(removed = n, "removed layers an interrupted pull had staged");
        }
        let n = crate::pull::cleanup_blob_tmp(&content);
        if n > 0 {
            tracing::info!(
                removed = n,
                "removed blob copies an interrupted pull had left"
            );
        }
    }));
    // Layer blobs a killed predecessor downloaded whole (into containerd's
    // ingest, or into a spool) but did not get to commit.
    let (cd, content_root, spool_dir, expiry) = (
        svc.store.containerd().clone(),
        cfg.containerd_root.join("io.containerd.content.v1.content"),
        cfg.effective_spool_dir(),
        cfg.lease_expiry,
    );
    v.push(tokio::spawn(async move {
        for _ in 0..CLEANUP_ATTEMPTS {
            match crate::pull::repair_at_start(&cd, &content_root, &spool_dir, expiry).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "commit of interrupted blob writes: retrying")
                }
            }
            tokio::time::sleep(CLEANUP_RETRY_PAUSE).await;
        }
    }));
    // Gauges that mirror state.
    let (store, m, fs) = (svc.store.clone(), svc.metrics.clone(), svc.imagefs.clone());
    let registry_counters = svc.puller.registry_counters();
    v.push(tokio::spawn(async move {
        loop {
            m.sync_registry(&registry_counters);
            m.images.set(store.len() as i64);
            m.containerd_up.set(store.is_synced() as i64);
            let u = fs.current();
            m.imagefs_used_bytes.set(u.used_bytes as f64);
            m.imagefs_inodes_used.set(u.inodes_used as f64);
            tokio::time::sleep(GAUGE_REFRESH).await;
        }
    }));
    v
}

/// tonic answers a request it cannot decode (malformed protobuf, invalid
/// UTF-8 in a string field) with INTERNAL; it is the caller's fault, so
/// rewrite that to INVALID_ARGUMENT.
fn decode_error_is_invalid_argument(
    mut resp: hyper::Response<tonic::body::Body>,
) -> hyper::Response<tonic::body::Body> {
    let h = resp.headers();
    let internal = h
        .get("grpc-status")
        .map(|v| v.as_bytes() == b"13")
        .unwrap_or(false);
    let decode = h
        .get("grpc-message")
        .map(|v| {
            let m = v.as_bytes();
            m.starts_with(b"failed to decode Protobuf message")
                || m.starts_with(b"failed%20to%20decode%20Protobuf%20message")
        })
        .unwrap_or(false);
    if internal && decode {
        resp.headers_mut()
            .insert("grpc-status", hyper::header::HeaderValue::from_static("3"));
    }
    resp
}

/// gRPC over HTTP/2 on the unix socket, served with hyper directly so the
/// handlers see the caller's `grpc-timeout` and can answer DEADLINE_EXCEEDED.
async fn serve_grpc<S>(
    listener: UnixListener,
    svc: S,
    mut stop: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) where
    S: tower::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let (stream, _) = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let io = TokioIo::new(stream);
                let hyper_svc = hyper_util::service::TowerToHyperService::new(svc.clone());
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                    .serve_connection(io, hyper_svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("in-flight requests finished"),
        _ = tokio::time::sleep(grace) => tracing::warn!(grace = ?grace, "shutdown grace period over; dropping in-flight requests"),
    }
}
