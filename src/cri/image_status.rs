//! ImageStatus: by tag, digest reference, full ID or short ID; absent -> empty
//! response; verbose -> info["info"] JSON with imageSpec and chainID.

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use tonic::Status;

use super::{error, image_of, to_cri, ImageService};

pub async fn handle(
    svc: &ImageService,
    req: cri::ImageStatusRequest,
) -> Result<cri::ImageStatusResponse, Status> {
    let image = image_of(req.image.as_ref())?;
    let Some(view) = svc.store.resolve(image).map_err(|e| error::resolve(&e))? else {
        return Ok(cri::ImageStatusResponse::default());
    };
    let mut info = HashMap::new();
    if req.verbose {
        let v = serde_json::json!({
            "chainID": view.info.chain_id,
            "imageSpec": serde_json::from_slice::<serde_json::Value>(&view.info.config_raw).unwrap_or_default(),
            "manifestDigest": view.info.manifest,
            "target": view.info.target,
            "platform": view.info.platform.to_string(),
        });
        info.insert("info".to_string(), v.to_string());
    }
    Ok(cri::ImageStatusResponse {
        image: Some(to_cri(&view)),
        info,
    })
}
