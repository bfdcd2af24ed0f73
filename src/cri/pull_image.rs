//! PullImage: the pull pipeline, bounded by the caller's deadline; returns the
//! image ID (config digest) as image_ref.

use std::time::Duration;

use k8s_cri::v1 as cri;
use tonic::Status;

use super::{error, image_of, ImageService};
use crate::registry::PullAuth;

pub fn auth_of(a: Option<cri::AuthConfig>) -> PullAuth {
    let a = a.unwrap_or_default();
    PullAuth {
        username: a.username,
        password: a.password,
        auth: a.auth,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
        server_address: a.server_address,
    }
}

pub async fn handle(
    svc: &ImageService,
    req: cri::PullImageRequest,
    deadline: Option<Duration>,
) -> Result<cri::PullImageResponse, Status> {
    let image = image_of(req.image.as_ref())?.to_string();
    let handler = req
        .image
        .as_ref()
        .map(|s| s.runtime_handler.clone())
        .unwrap_or_default();
    let auth = auth_of(req.auth);
    let pull = svc.puller.pull(&image, auth, &handler);
    let report = match deadline {
        Some(d) => match tokio::time::timeout(d, pull).await {
            Ok(r) => r,
            Err(_) => {
                // The pull itself is counted as canceled when its last caller leaves.
                return Err(Status::deadline_exceeded(format!(
                    "pulling {image:?}: the caller's deadline of {} passed before the pull finished",
                    humantime::format_duration(d)
                )));
            }
        },
        None => pull.await,
    }
    .map_err(|e| error::pull(&image, &e))?;
    if !report.already_present {
        svc.imagefs.changed();
    }
    Ok(cri::PullImageResponse {
        image_ref: report.image_id,
    })
}
