//! Thin typed wrappers over containerd-client: every call carries the
//! namespace (and the lease, when one is given), errors are typed.
//!
//! The channel is lazy and reconnects by itself: while containerd is down every
//! call fails with `ContainerdError::Unavailable`, and the first call after it
//! comes back succeeds without any action from us.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::types::{Descriptor, Mount};
use futures::{Stream, StreamExt};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

pub use api::Image as ImageRecord;
pub use containerd_client::types::Envelope;

/// Connecting to containerd's socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on the containerd connection, so a dead containerd is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest content-service message either way (writes are 1 MiB chunks).
const MAX_CONTENT_MESSAGE: usize = 64 << 20;

pub mod labels {
    pub const CRI_MANAGED: &str = "io.cri-containerd.image";
    pub const CRI_MANAGED_VALUE: &str = "managed";
    pub const CRI_PINNED: &str = "io.cri-containerd.pinned";
    pub const CRI_PINNED_VALUE: &str = "pinned";
    pub const GC_EXPIRE: &str = "containerd.io/gc.expire";
    pub const GC_FLAT: &str = "containerd.io/gc.flat";
    pub const UNCOMPRESSED: &str = "containerd.io/uncompressed";
    pub const SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
    pub const DISTRIBUTION_SOURCE_PREFIX: &str = "containerd.io/distribution.source.";
    pub const GC_REF_CONTENT_CONFIG: &str = "containerd.io/gc.ref.content.config";
    pub const GC_REF_CONTENT_LAYER_PREFIX: &str = "containerd.io/gc.ref.content.l.";
    pub const GC_REF_CONTENT_MANIFEST_PREFIX: &str = "containerd.io/gc.ref.content.m.";
    pub const GC_REF_SNAPSHOT_PREFIX: &str = "containerd.io/gc.ref.snapshot.";

    /// `containerd.io/distribution.source.<host>=<repo>`, with the host as
    /// containerd writes it: the reference's domain without its port (Go's
    /// `url.Hostname()`), so `localhost:5000/a` gives `...source.localhost=a`.
    pub fn source_label(domain: &str, repo: &str) -> (String, String) {
        (
            format!("{}{}", DISTRIBUTION_SOURCE_PREFIX, hostname(domain)),
            repo.to_string(),
        )
    }

    /// `host[:port]` or `[v6]:port` without the port (and brackets).
    fn hostname(domain: &str) -> &str {
        if let Some(rest) = domain.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        match domain.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
            _ => domain,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("containerd is unavailable at {socket}: {message}")]
    Unavailable { socket: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("containerd: {0}")]
    NoSpace(String),
    #[error("containerd: {0}")]
    DigestMismatch(String),
    #[error("containerd: {0}")]
    Other(String),
}

impl ContainerdError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ContainerdError::NotFound(_))
    }
}

/// Classify a containerd gRPC status. ENOSPC surfaces as Unknown/Internal with
/// "no space left on device" in the message.
fn classify(socket: &Path, s: Status) -> ContainerdError {
    let msg = s.message().to_string();
    let lower = msg.to_ascii_lowercase();
    if lower.contains("no space left on device") || lower.contains("disk quota exceeded") {
        return ContainerdError::NoSpace(msg);
    }
    match s.code() {
        Code::Unavailable => ContainerdError::Unavailable {
            socket: socket.display().to_string(),
            message: if msg.is_empty() {
                "connection failed".into()
            } else {
                msg
            },
        },
        Code::NotFound => ContainerdError::NotFound(msg),
        Code::AlreadyExists => ContainerdError::AlreadyExists(msg),
        Code::FailedPrecondition | Code::InvalidArgument
            if lower.contains("unexpected commit digest") || lower.contains("digest mismatch") =>
        {
            ContainerdError::DigestMismatch(msg)
        }
        Code::Unknown if lower.contains("transport") || lower.contains("connection") => {
            ContainerdError::Unavailable {
                socket: socket.display().to_string(),
                message: msg,
            }
        }
        _ => ContainerdError::Other(format!("{:?}: {msg}", s.code())),
    }
}

pub type Result<T> = std::result::Result<T, ContainerdError>;

/// A handle on one containerd namespace. Cheap to clone.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    socket: PathBuf,
    namespace: String,
}

impl Containerd {
    /// A lazily connecting client; never fails because containerd is down.
    pub fn new(socket: impl Into<PathBuf>, namespace: impl Into<String>) -> Containerd {
        let socket = socket.into();
        let path = socket.clone();
        let channel = Endpoint::from_static("http://[::]:50051")
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(None)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }));
        Containerd {
            channel,
            socket,
            namespace: namespace.into(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn req<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        Self::req_in(&self.namespace, msg, lease)
    }

    fn req_in<T>(namespace: &str, msg: T, lease: Option<&str>) -> Request<T> {
        let mut r = Request::new(msg);
        let md = r.metadata_mut();
        if let Ok(v) = namespace.parse() {
            md.insert("containerd-namespace", v);
        }
        if let Some(l) = lease {
            if let Ok(v) = l.parse() {
                md.insert("containerd-lease", v);
            }
        }
        r
    }

    fn err(&self, s: Status) -> ContainerdError {
        classify(&self.socket, s)
    }

    /// containerd's version; used as a health check.
    pub async fn version(&self) -> Result<String> {
        let mut c = api::version_client::VersionClient::new(self.channel.clone());
        let r = c
            .version(self.req((), None))
            .await
            .map_err(|s| self.err(s))?;
        Ok(r.into_inner().version)
    }

    // ---- images ----

    pub async fn list_images(&self) -> Result<Vec<ImageRecord>> {
        let mut c = api::images_client::ImagesClient::new(self.channel.clone());
        let r = c
            .list(self.req(api::ListImagesRequest { filters: vec![] }, None))
            .await
            .map_err(|s| self.err(s))?;
        Ok(r.into_inner().images)
    }

    pub async fn get_image(&self, name: &str) -> Result<Option<ImageRecord>> {
        let mut c = api::images_client::ImagesClient::new(self.channel.clone());
        match c
            .get(self.req(api::GetImageRequest { name: name.into() }, None))
            .await
        {
            Ok(r) => Ok(r.into_inner().image),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(self.err(s)),
        }
    }

    /// Create the record, or update target and labels when it already exists
    /// (containerd's CRI plugin may create the same record at the same moment).
    pub async fn put_image(&self, image: ImageRecord, lease: Option<&str>) -> Result<()> {
        let mut c = api::images_client::ImagesClient::new(self.channel.clone());
        // A concurrent RemoveImage may delete the record between our Create
        // (AlreadyExists) and Update (NotFound): create it again then.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let created = c
                .create(self.req(
                    api::CreateImageRequest {
                        image: Some(image.clone()),
                        source_date_epoch: None,
                    },
                    lease,
                ))
                .await;
            match created {
                Ok(_) => return Ok(()),
                Err(s) if s.code() == Code::AlreadyExists => {
                    let mut paths = vec!["target".to_string()];
                    paths.extend(image.labels.keys().map(|k| format!("labels.{k}")));
                    match c
                        .update(self.req(
                            api::UpdateImageRequest {
                                image: Some(image.clone()),
                                update_mask: Some(prost_types::FieldMask { paths }),
                                source_date_epoch: None,
                            },
                            lease,
                        ))
                        .await
                    {
                        Ok(_) => return Ok(()),
                        Err(s) if s.code() == Code::NotFound && attempt < 5 => continue,
                        Err(s) => return Err(self.err(s)),
                    }
                }
                Err(s) => return Err(self.err(s)),
            }
        }
    }

    /// Delete a record; a record that is already gone is not an error.
    pub async fn delete_image(&self, name: &str, sync: bool) -> Result<()> {
        let mut c = api::images_client::ImagesClient::new(self.channel.clone());
        match c
            .delete(self.req(
                api::DeleteImageRequest {
                    name: name.into(),
                    sync,
                    target: None,
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(self.err(s)),
        }
    }

    // ---- events ----

    /// Subscribe to the image events of our namespace.
    pub async fn subscribe_images(
        &self,
    ) -> Result<impl Stream<Item = std::result::Result<Envelope, Status>>> {
        let mut c = api::events_client::EventsClient::new(self.channel.clone());
        let filter = format!("namespace=={},topic~=\"^/images/\"", self.namespace);
        let r = c
            .subscribe(Request::new(api::SubscribeRequest {
                filters: vec![filter],
            }))
            .await
            .map_err(|s| self.err(s))?;
        Ok(r.into_inner())
    }

    // ---- content ----

    pub async fn content_info(&self, digest: &str) -> Result<Option<api::Info>> {
        let mut c = api::content_client::ContentClient::new(self.channel.clone());
        match c
            .info(self.req(
                api::InfoRequest {
                    digest: digest.into(),
                },
                None,
            ))
            .await
        {
            Ok(r) => Ok(r.into_inner().info),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(self.err(s)),
        }
    }

    /// Every namespace but ours.
    pub async fn other_namespaces(&self) -> Result<Vec<String>> {
        let mut n = api::namespaces_client::NamespacesClient::new(self.channel.clone());
        let list = n
            .list(Request::new(api::ListNamespacesRequest {
                filter: String::new(),
            }))
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        Ok(list
            .namespaces
            .into_iter()
            .map(|n| n.name)
            .filter(|n| *n != self.namespace)
            .collect())
    }

    /// Whether `digest` is in the content store under `namespace` (a read).
    pub async fn content_exists_in(&self, namespace: &str, digest: &str) -> Result<bool> {
        let mut c = api::content_client::ContentClient::new(self.channel.clone());
        let r = Self::req_in(
            namespace,
            api::InfoRequest {
                digest: digest.into(),
            },
            None,
        );
        match c.info(r).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(self.err(s)),
        }
    }

    /// Set labels on a blob (merging with what is there).
    pub async fn label_content(&self, digest: &str, labels: HashMap<String, String>) -> Result<()> {
        let mut c = api::content_client::ContentClient::new(self.channel.clone());
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        c.update(self.req(
            api::UpdateRequest {
                info: Some(api::Info {
                    digest: digest.into(),
                    labels,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            },
            None,
        ))
        .await
        .map_err(|s| self.err(s))?;
        Ok(())
    }

    /// Read a whole (small) blob, refusing anything larger than `max` bytes.
    pub async fn read_blob(&self, digest: &str, max: u64) -> Result<Bytes> {
        let info = self
            .content_info(digest)
            .await?
            .ok_or_else(|| ContainerdError::NotFound(format!("content {digest} not found")))?;
        if info.size as u64 > max {
            return Err(ContainerdError::Other(format!(
                "blob {digest} is {} bytes, more than the {max} allowed",
                info.size
            )));
        }
        let mut c = api::content_client::ContentClient::new(self.channel.clone());
        let mut stream = c
            .read(self.req(
                api::ReadContentRequest {
                    digest: digest.into(),
                    offset: 0,
                    size: 0,
                },
                None,
            ))
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        let mut out = Vec::with_capacity(info.size.max(0) as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| self.err(s))?;
            out.extend_from_slice(&chunk.data);
            if out.len() as u64 > max {
                return Err(ContainerdError::Other(format!(
                    "blob {digest} exceeds {max} bytes"
                )));
            }
        }
        Ok(Bytes::from(out))
    }

    /// Status of an in-progress write (its committed offset), if any.
    pub async fn abort_write(&self, r#ref: &str) -> Result<()> {
        let mut c = api::content_client::ContentClient::new(self.channel.clone());
        match c
            .abort(self.req(
                api::AbortRequest {
                    r#ref: r#ref.into(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(self.err(s)),
        }
    }

    /// Open a content writer: the caller streams `WriteContentRequest`s.
    /// Returns the server's responses.
    pub async fn write_stream(
        &self,
        requests: impl Stream<Item = api::WriteContentRequest> + Send + 'static,
        lease: Option<&str>,
    ) -> Result<tonic::Streaming<api::WriteContentResponse>> {
        let mut c = api::content_client::ContentClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_CONTENT_MESSAGE)
            .max_encoding_message_size(MAX_CONTENT_MESSAGE);
        let r = c
            .write(self.req(requests, lease))
            .await
            .map_err(|s| self.err(s))?;
        Ok(r.into_inner())
    }

    /// A whole write (its requests end with a Commit), run to its end: Ok
    /// once containerd has committed it (AlreadyExists: it was there).
    pub async fn write_to_end(
        &self,
        requests: impl Stream<Item = api::WriteContentRequest> + Send + 'static,
        lease: Option<&str>,
    ) -> Result<()> {
        let mut stream = self.write_stream(requests, lease).await?;
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(s) => return Err(self.err(s)),
            }
        }
    }

    pub fn map_status(&self, s: Status) -> ContainerdError {
        self.err(s)
    }

    // ---- leases ----

    async fn create_lease(&self, id: &str, expire: Duration, kind: LeaseKind) -> Result<()> {
        let mut c = api::leases_client::LeasesClient::new(self.channel.clone());
        let when = std::time::SystemTime::now() + expire;
        let rfc3339 = humantime::format_rfc3339_seconds(when).to_string();
        let mut labels = HashMap::new();
        labels.insert(labels::GC_EXPIRE.to_string(), rfc3339);
        if kind == LeaseKind::Flat {
            labels.insert(labels::GC_FLAT.to_string(), "true".to_string());
        }
        c.create(self.req(
            api::CreateRequest {
                id: id.into(),
                labels,
            },
            None,
        ))
        .await
        .map_err(|s| self.err(s))?;
        Ok(())
    }

    /// Delete a lease; `sync`: containerd runs its garbage collection before
    /// answering (what the lease held, unreferenced, is gone from the disk).
    async fn delete_lease(&self, id: &str, sync: bool) -> Result<()> {
        let mut c = api::leases_client::LeasesClient::new(self.channel.clone());
        match c
            .delete(self.req(
                api::DeleteRequest {
                    id: id.into(),
                    sync,
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(self.err(s)),
        }
    }

    /// Reference an existing resource from a lease so GC keeps it meanwhile.
    pub async fn lease_add(&self, lease: &str, resource: LeaseResource<'_>) -> Result<()> {
        let mut c = api::leases_client::LeasesClient::new(self.channel.clone());
        c.add_resource(self.req(
            api::AddResourceRequest {
                id: lease.into(),
                resource: Some(api::Resource {
                    id: resource.id().into(),
                    r#type: resource.kind(),
                }),
            },
            None,
        ))
        .await
        .map_err(|s| self.err(s))?;
        Ok(())
    }

    // ---- snapshots ----

    pub async fn snapshot_exists(&self, snapshotter: &str, key: &str) -> Result<bool> {
        let mut c = snap::snapshots_client::SnapshotsClient::new(self.channel.clone());
        match c
            .stat(self.req(
                snap::StatSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    key: key.into(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(self.err(s)),
        }
    }

    pub async fn prepare_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        lease: Option<&str>,
    ) -> Result<Vec<Mount>> {
        let mut c = snap::snapshots_client::SnapshotsClient::new(self.channel.clone());
        let r = c
            .prepare(self.req(
                snap::PrepareSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    key: key.into(),
                    parent: parent.into(),
                    labels,
                },
                lease,
            ))
            .await
            .map_err(|s| self.err(s))?;
        Ok(r.into_inner().mounts)
    }

    pub async fn commit_snapshot(
        &self,
        snapshotter: &str,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
        lease: Option<&str>,
    ) -> Result<()> {
        let mut c = snap::snapshots_client::SnapshotsClient::new(self.channel.clone());
        c.commit(self.req(
            snap::CommitSnapshotRequest {
                snapshotter: snapshotter.into(),
                name: name.into(),
                key: key.into(),
                labels,
            },
            lease,
        ))
        .await
        .map_err(|s| self.err(s))?;
        Ok(())
    }

    pub async fn remove_snapshot(&self, snapshotter: &str, key: &str) -> Result<()> {
        let mut c = snap::snapshots_client::SnapshotsClient::new(self.channel.clone());
        match c
            .remove(self.req(
                snap::RemoveSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    key: key.into(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(self.err(s)),
        }
    }

    pub async fn list_snapshots(&self, snapshotter: &str) -> Result<Vec<snap::Info>> {
        let mut c = snap::snapshots_client::SnapshotsClient::new(self.channel.clone());
        let mut s = c
            .list(self.req(
                snap::ListSnapshotsRequest {
                    snapshotter: snapshotter.into(),
                    filters: vec![],
                },
                None,
            ))
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = s.next().await {
            out.extend(r.map_err(|s| self.err(s))?.info);
        }
        Ok(out)
    }

    /// (bytes, inodes) used by one snapshot.
    pub async fn snapshot_usage(&self, snapshotter: &str, key: &str) -> Result<(i64, i64)> {
        let mut c = snap::snapshots_client::SnapshotsClient::new(self.channel.clone());
        let r = c
            .usage(self.req(
                snap::UsageRequest {
                    snapshotter: snapshotter.into(),
                    key: key.into(),
                },
                None,
            ))
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        Ok((r.size, r.inodes))
    }

    // ---- diff ----

    /// Apply a layer blob onto mounts; returns the applied (uncompressed) descriptor.
    pub async fn apply_diff(
        &self,
        layer: Descriptor,
        mounts: Vec<Mount>,
        lease: Option<&str>,
    ) -> Result<Descriptor> {
        let mut c = api::diff_client::DiffClient::new(self.channel.clone());
        let r = c
            .apply(self.req(
                api::ApplyRequest {
                    diff: Some(layer),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                lease,
            ))
            .await
            .map_err(|s| self.err(s))?;
        r.into_inner()
            .applied
            .ok_or_else(|| ContainerdError::Other("diff apply returned no descriptor".into()))
    }
}

/// Prefix of every lease cri-imaged creates (`<prefix><pid>-<random>`).
pub const LEASE_PREFIX: &str = "cri-imaged-pull-";

/// What a lease references.
#[derive(Debug, Clone, Copy)]
pub enum LeaseResource<'a> {
    /// A blob of the content store, by digest.
    Content(&'a str),
    /// A snapshot, by key.
    Snapshot { snapshotter: &'a str, key: &'a str },
}

impl LeaseResource<'_> {
    fn kind(&self) -> String {
        match self {
            LeaseResource::Content(_) => "content".to_string(),
            LeaseResource::Snapshot { snapshotter, .. } => format!("snapshots/{snapshotter}"),
        }
    }
    fn id(&self) -> &str {
        match self {
            LeaseResource::Content(d) => d,
            LeaseResource::Snapshot { key, .. } => key,
        }
    }
}

/// Whether what a lease holds also keeps what it references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKind {
    /// `gc.flat`: only the resources added (a pull adds everything it writes).
    Flat,
    /// Resources keep their gc.ref children too (manifest -> config, layers, snapshot).
    Deep,
}

/// What happens to a lease whose guard is dropped without [`Lease::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDrop {
    /// Leave it until its `gc.expire` (a failed pull keeps its content for a resume).
    Expire,
    /// Delete it now (in the background).
    Delete,
}

/// A containerd lease held by this process: created with an expiry (so a
/// crash leaks nothing for long), released explicitly, or on drop as `OnDrop` says.
#[must_use = "a lease protects content only while it is held"]
pub struct Lease {
    cd: Containerd,
    id: String,
    on_drop: OnDrop,
    released: bool,
}

impl Lease {
    pub async fn create(
        cd: &Containerd,
        kind: LeaseKind,
        expire: Duration,
        on_drop: OnDrop,
    ) -> Result<Lease> {
        let id = format!(
            "{LEASE_PREFIX}{}-{}",
            std::process::id(),
            rand::random::<u64>()
        );
        cd.create_lease(&id, expire, kind).await?;
        Ok(Lease {
            cd: cd.clone(),
            id,
            on_drop,
            released: false,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub async fn add(&self, resource: LeaseResource<'_>) -> Result<()> {
        self.cd.lease_add(&self.id, resource).await
    }

    /// Delete the lease now; what it held is up to containerd's GC from then on.
    pub async fn release(mut self) {
        self.released = true;
        if let Err(e) = self.cd.delete_lease(&self.id, false).await {
            tracing::debug!(lease = %self.id, error = %e, "lease delete failed; it expires by itself");
        }
    }

    /// Release, and have containerd collect what nothing else holds before
    /// this returns: the space a failed pull wrote is given back now, not
    /// at containerd's next collection.
    pub async fn release_and_collect(mut self) {
        self.released = true;
        if let Err(e) = self.cd.delete_lease(&self.id, true).await {
            tracing::warn!(lease = %self.id, error = %e, "lease delete failed; it expires by itself");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released || self.on_drop == OnDrop::Expire {
            return;
        }
        let (cd, id) = (self.cd.clone(), std::mem::take(&mut self.id));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = cd.delete_lease(&id, false).await;
            });
        }
    }
}
