//! `cri-imaged health`: does the CRI socket answer ImageFsInfo in time? For
//! exec probes (they check this pod's own socket, unlike an HTTP probe on a
//! metrics port that SO_REUSEPORT may share with another pod) and for the
//! installer's wait.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use k8s_cri::v1 as cri;

/// A gRPC channel over the unix socket at `socket` (tonic sends a valid
/// authority; the socket path goes to the connector only).
pub async fn unix_channel(
    socket: &Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = socket.to_path_buf();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}

pub async fn check(socket: &Path, timeout: Duration) -> anyhow::Result<String> {
    let call = async {
        let ch = unix_channel(socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let r = cri::image_service_client::ImageServiceClient::new(ch)
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await
            .with_context(|| format!("ImageFsInfo on {}", socket.display()))?
            .into_inner();
        let Some(fs) = r.image_filesystems.first() else {
            bail!("ImageFsInfo on {} listed no filesystem", socket.display());
        };
        Ok(format!(
            "ok: {} answers; image filesystem {} uses {} bytes",
            socket.display(),
            fs.fs_id
                .as_ref()
                .map(|f| f.mountpoint.as_str())
                .unwrap_or("?"),
            fs.used_bytes.as_ref().map(|b| b.value).unwrap_or(0)
        ))
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => bail!(
            "{} did not answer ImageFsInfo within {}",
            socket.display(),
            humantime::format_duration(timeout)
        ),
    }
}
