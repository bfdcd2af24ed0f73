//! ListImages: served from the in-memory index; `filter.image` is honoured.

use k8s_cri::v1 as cri;
use std::sync::Arc;

use tonic::Status;

use super::{error, to_cri, ImageService};

pub async fn handle(
    svc: &ImageService,
    req: cri::ListImagesRequest,
) -> Result<cri::ListImagesResponse, Status> {
    let filter = req
        .filter
        .and_then(|f| f.image)
        .map(|s| s.image)
        .filter(|s| !s.is_empty());
    let images = match filter {
        Some(q) => {
            let q = super::image_of(Some(&cri::ImageSpec {
                image: q,
                ..Default::default()
            }))?
            .to_string();
            svc.store
                .resolve(&q)
                .map_err(|e| error::resolve(&e))?
                .map(|v| vec![to_cri(&v)])
                .unwrap_or_default()
        }
        None => {
            // Served from a cache keyed by the index generation: kubelet lists
            // every few seconds and the index rarely changes in between.
            let generation = svc.store.generation();
            let cached = svc.list_cache.lock().clone();
            match cached {
                Some((g, images)) if g == generation && svc.store.is_synced() => {
                    images.as_ref().clone()
                }
                _ => {
                    let images: Vec<cri::Image> = svc
                        .store
                        .list()
                        .map_err(|e| error::store(&e))?
                        .iter()
                        .map(to_cri)
                        .collect();
                    let images = Arc::new(images);
                    *svc.list_cache.lock() = Some((generation, images.clone()));
                    images.as_ref().clone()
                }
            }
        }
    };
    Ok(cri::ListImagesResponse { images })
}
