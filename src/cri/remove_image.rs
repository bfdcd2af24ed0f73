//! RemoveImage: every record of the resolved image (all tags, digests and the
//! ID record) is deleted; absent -> success; the last delete is synchronous so
//! containerd's GC reclaims content and snapshots.

use k8s_cri::v1 as cri;
use tonic::Status;

use super::{error, image_of, ImageService};

pub async fn handle(
    svc: &ImageService,
    req: cri::RemoveImageRequest,
) -> Result<cri::RemoveImageResponse, Status> {
    let image = image_of(req.image.as_ref())?;
    let Some(view) = svc.store.resolve(image).map_err(|e| error::resolve(&e))? else {
        return Ok(cri::RemoveImageResponse {});
    };
    // Records other than the ID record first, the ID record last (sync GC).
    let mut names: Vec<String> = view
        .records
        .iter()
        .filter(|n| **n != view.info.id)
        .cloned()
        .collect();
    names.push(view.info.id.clone());
    let last = names.len() - 1;
    for (i, n) in names.iter().enumerate() {
        svc.store
            .containerd()
            .delete_image(n, i == last)
            .await
            .map_err(|e| error::containerd(&e))?;
    }
    svc.store.forget(&names);
    svc.metrics.removals.inc();
    svc.imagefs.changed();
    tracing::info!(image_id = %view.info.id, records = names.len(), "image removed");
    Ok(cri::RemoveImageResponse {})
}
