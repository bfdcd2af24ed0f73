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
            "imageSpec": image_spec(&view.info.config_raw),
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

/// The config as containerd's CRI shows it in verbose info: the OCI image
/// config type (oci-spec), falling back to the stored JSON when a registry's
/// config does not fit the OCI schema.
fn image_spec(raw: &[u8]) -> serde_json::Value {
    match oci_spec::image::ImageConfiguration::from_reader(raw) {
        Ok(c) => serde_json::to_value(&c).unwrap_or_default(),
        Err(_) => serde_json::from_slice(raw).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_spec_is_the_oci_config() {
        let raw = br#"{"architecture":"amd64","os":"linux","config":{"User":"1002","Env":["A=b"]},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let v = super::image_spec(raw);
        assert_eq!(v["config"]["User"], "1002");
        assert_eq!(v["os"], "linux");
        // Not an OCI config: the stored JSON is shown as it is.
        assert_eq!(super::image_spec(br#"{"odd":true}"#)["odd"], true);
    }
}
