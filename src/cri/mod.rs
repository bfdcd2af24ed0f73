//! The gRPC face: CRI v1 ImageService. One file per RPC; each converts CRI
//! types to domain calls and domain errors to tonic::Status (error.rs).

mod error;
mod image_fs_info;
mod image_status;
mod list_images;
mod pull_image;
mod remove_image;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use tonic::{Request, Response, Status};

use crate::imagefs::ImageFs;
use crate::metrics::Metrics;
use crate::pull::Puller;
use crate::store::{ImageView, Store};

pub use cri::image_service_server::ImageServiceServer;

/// The CRI ImageService.
#[derive(Clone)]
pub struct ImageService {
    pub store: Arc<Store>,
    pub puller: Arc<Puller>,
    pub imagefs: Arc<ImageFs>,
    pub metrics: Arc<Metrics>,
    /// The unfiltered ListImages answer, rebuilt when the index changes.
    pub list_cache: ListCache,
}

pub type ListCache = Arc<parking_lot::Mutex<Option<(u64, Arc<Vec<cri::Image>>)>>>;

/// Longest accepted image string in a request.
pub const MAX_IMAGE_LEN: usize = 4096;

/// The caller's deadline from the `grpc-timeout` header.
pub fn deadline_of<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(v)
}

pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (num, unit) = v.split_at(v.len() - 1);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// CRI view of an image.
pub(crate) fn to_cri(v: &ImageView) -> cri::Image {
    let (uid, username) = crate::manifest::split_user(&v.info.user);
    cri::Image {
        id: v.info.id.clone(),
        repo_tags: v.repo_tags.clone(),
        repo_digests: v.repo_digests.clone(),
        size: v.info.size,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec {
            image: v.info.id.clone(),
            ..Default::default()
        }),
        pinned: v.pinned,
    }
}

/// The image string of an optional ImageSpec, checked for size.
pub(crate) fn image_of(spec: Option<&cri::ImageSpec>) -> Result<&str, Status> {
    let image = spec.map(|s| s.image.as_str()).unwrap_or("");
    if image.is_empty() {
        return Err(Status::invalid_argument(
            "image spec is empty: an image reference or ID is required",
        ));
    }
    if image.len() > MAX_IMAGE_LEN {
        return Err(Status::invalid_argument(format!(
            "image reference is {} bytes long; at most {MAX_IMAGE_LEN} are accepted",
            image.len()
        )));
    }
    Ok(image)
}

/// For the fuzz targets (fuzz/): one request's protobuf bytes through what
/// the handlers run before the store, containerd or a registry: the prost
/// decode of RPC `rpc` (0 ListImages, 1 ImageStatus, 2 PullImage,
/// 3 RemoveImage, 4 ImageFsInfo), `image_of`, the image string's resolution
/// over a two-image index whose IDs share a prefix, and for PullImage the
/// reference and the credentials as `Puller::pull` checks them. Every
/// rejection is an error (a `Status` for the caller), never a panic.
#[doc(hidden)]
pub fn fuzz_request(rpc: u8, bytes: &[u8]) -> Result<(), Status> {
    use prost::Message;
    fn decode<M: Message + Default>(b: &[u8]) -> Result<M, Status> {
        M::decode(b).map_err(|e| Status::internal(e.to_string()))
    }
    const IDS: [&str; 2] = [
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b856",
    ];
    let resolve = |image: &str| {
        crate::store::resolve::resolve(
            image,
            |name| (name == "docker.io/library/busybox:latest").then(|| IDS[0].to_string()),
            |prefix| {
                IDS.iter()
                    .filter(|id| id.starts_with(prefix))
                    .map(|id| id.to_string())
                    .collect()
            },
        )
        .map_err(|e| error::resolve(&e))
    };
    match rpc % 5 {
        0 => {
            let req: cri::ListImagesRequest = decode(bytes)?;
            if let Some(q) = req.filter.and_then(|f| f.image).map(|s| s.image) {
                if !q.is_empty() {
                    let spec = cri::ImageSpec {
                        image: q,
                        ..Default::default()
                    };
                    resolve(image_of(Some(&spec))?)?;
                }
            }
        }
        1 => {
            let req: cri::ImageStatusRequest = decode(bytes)?;
            resolve(image_of(req.image.as_ref())?)?;
        }
        2 => {
            let req: cri::PullImageRequest = decode(bytes)?;
            let image = image_of(req.image.as_ref())?.to_string();
            let auth = pull_image::auth_of(req.auth);
            crate::reference::Reference::parse_normalized(&image)
                .map_err(|e| error::reference(&e))?;
            auth.normalized().map_err(|e| error::registry(&e))?;
        }
        3 => {
            let req: cri::RemoveImageRequest = decode(bytes)?;
            resolve(image_of(req.image.as_ref())?)?;
        }
        _ => {
            let _: cri::ImageFsInfoRequest = decode(bytes)?;
        }
    }
    Ok(())
}

impl ImageService {
    async fn observe<T>(
        &self,
        method: &'static str,
        fut: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        use tracing::Instrument;
        // One span per RPC: method and a process-unique request id, nothing from the request body.
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let request_id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let span = tracing::info_span!("rpc", method, request_id);
        let mut guard = RpcGuard {
            metrics: &self.metrics,
            method,
            start: Instant::now(),
            span: span.clone(),
            done: false,
        };
        let r = fut.instrument(span).await;
        guard.done = true;
        let code = match &r {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        let elapsed = guard.start.elapsed();
        self.metrics
            .observe_rpc(method, code, elapsed.as_secs_f64());
        guard.span.in_scope(|| match &r {
            Ok(_) => tracing::debug!(
                code = crate::metrics::code_name(code),
                duration_ms = elapsed.as_millis() as u64,
                "rpc done"
            ),
            Err(s) => tracing::debug!(
                code = crate::metrics::code_name(code),
                duration_ms = elapsed.as_millis() as u64,
                error = %s.message(),
                "rpc failed"
            ),
        });
        r.map(Response::new)
    }
}

/// Counts an RPC whose future was dropped before it finished (the caller
/// went away) as CANCELLED.
struct RpcGuard<'a> {
    metrics: &'a Metrics,
    method: &'static str,
    start: Instant,
    span: tracing::Span,
    done: bool,
}

impl Drop for RpcGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            let elapsed = self.start.elapsed();
            self.metrics
                .observe_rpc(self.method, tonic::Code::Cancelled, elapsed.as_secs_f64());
            self.span.in_scope(|| {
                tracing::debug!(
                    code = "CANCELLED",
                    duration_ms = elapsed.as_millis() as u64,
                    "rpc canceled by the caller"
                )
            });
        }
    }
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for ImageService {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        self.observe("ListImages", list_images::handle(self, req.into_inner()))
            .await
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        self.observe("ImageStatus", image_status::handle(self, req.into_inner()))
            .await
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let deadline = deadline_of(&req);
        self.observe(
            "PullImage",
            pull_image::handle(self, req.into_inner(), deadline),
        )
        .await
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        self.observe("RemoveImage", remove_image::handle(self, req.into_inner()))
            .await
    }

    async fn image_fs_info(
        &self,
        req: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        self.observe("ImageFsInfo", image_fs_info::handle(self, req.into_inner()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(parse_grpc_timeout("30S"), Some(Duration::from_secs(30)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("100u"), Some(Duration::from_micros(100)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout("1234567890S"), None);
    }

    #[test]
    fn image_spec_checks() {
        assert_eq!(
            image_of(None).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let big = cri::ImageSpec {
            image: "a".repeat(MAX_IMAGE_LEN + 1),
            ..Default::default()
        };
        assert_eq!(
            image_of(Some(&big)).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
