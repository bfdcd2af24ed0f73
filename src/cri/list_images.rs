//! ListImages: served from the in-memory index; `filter.image` is honoured.

use k8s_cri::v1 as cri;
use tonic::Status;

use super::{error, to_cri, ImageService};

pub async fn handle(svc: &ImageService, req: cri::ListImagesRequest) -> Result<cri::ListImagesResponse, Status> {
    let filter = req
        .filter
        .and_then(|f| f.image)
        .map(|s| s.image)
        .filter(|s| !s.is_empty());
    let images = match filter {
        Some(q) => {
            let q = super::image_of(Some(&cri::ImageSpec { image: q, ..Default::default() }))?.to_string();
            svc.store
                .resolve(&q)
                .map_err(|e| error::resolve(&e))?
                .map(|v| vec![to_cri(&v)])
                .unwrap_or_default()
        }
        None => svc
            .store
            .list()
            .map_err(|e| error::store(&e))?
            .iter()
            .map(to_cri)
            .collect(),
    };
    Ok(cri::ListImagesResponse { images })
}
