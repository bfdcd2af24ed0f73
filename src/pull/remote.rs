//! Remote (lazy-pull) snapshotters: stargz, nydus, soci and the like can serve
//! a layer from the registry themselves. As containerd's CRI does (with its
//! `disable_snapshot_annotations = false`), every Prepare of a layer carries
//! labels naming the image, its manifest, the layer and the layers above it,
//! plus `containerd.io/snapshot.ref` = the layer's chain ID. A snapshotter
//! that can serve the layer commits that chain ID itself and answers
//! AlreadyExists: the layer is then neither downloaded nor unpacked.
//!
//! The probe runs before any download, bottom layer up, and stops at the first
//! layer the snapshotter prepares normally: from there on every layer is
//! downloaded (containerd's unpacker does the same), and each Prepare of the
//! unpack still carries the labels.

use std::collections::HashMap;

use super::unpack::extract_key;
use super::{PullCtx, PullError};
use crate::containerd::{labels, ContainerdError};
use crate::manifest::Descriptor;

pub const TARGET_REF: &str = "containerd.io/snapshot/cri.image-ref";
pub const TARGET_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
pub const TARGET_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
pub const TARGET_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";

/// containerd's limit on a label (key and value together), in bytes.
const MAX_LABEL: usize = 4096;

/// What the labels of one pull are made of.
#[derive(Debug, Clone)]
pub struct ImageLabels {
    /// The normalized reference, e.g. `docker.io/library/busybox:latest`.
    pub image_ref: String,
    pub manifest_digest: String,
}

impl ImageLabels {
    /// The labels on the Prepare of layer `i`, whose chain ID is `chain_id`.
    pub fn for_layer(
        &self,
        layers: &[Descriptor],
        i: usize,
        chain_id: &str,
    ) -> HashMap<String, String> {
        HashMap::from([
            (labels::SNAPSHOT_REF.to_string(), chain_id.to_string()),
            (TARGET_REF.to_string(), self.image_ref.clone()),
            (
                TARGET_MANIFEST_DIGEST.to_string(),
                self.manifest_digest.clone(),
            ),
            (TARGET_LAYER_DIGEST.to_string(), layers[i].digest.clone()),
            (TARGET_IMAGE_LAYERS.to_string(), image_layers(&layers[i..])),
        ])
    }
}

/// The digests of `layers` (this one and those above it), comma-separated,
/// as many as fit in containerd's label size limit (a snapshotter uses them
/// to prefetch; a shortened list only costs it speed).
pub fn image_layers(layers: &[Descriptor]) -> String {
    let mut out = String::new();
    for l in layers {
        let sep = if out.is_empty() { 0 } else { 1 };
        if TARGET_IMAGE_LAYERS.len() + out.len() + sep + l.digest.len() > MAX_LABEL {
            break;
        }
        if sep == 1 {
            out.push(',');
        }
        out.push_str(&l.digest);
    }
    out
}

/// Offer each layer, bottom up, to the snapshotter; returns how many it
/// already has (committed by itself as a remote layer, or from an earlier
/// pull), which need no download. Those snapshots join the pull's lease.
pub async fn probe(
    ctx: &PullCtx,
    image: &ImageLabels,
    layers: &[Descriptor],
    chain: &[String],
) -> Result<usize, PullError> {
    let mut parent = String::new();
    for (i, chain_id) in chain.iter().enumerate() {
        let key = extract_key(chain_id);
        let labels = image.for_layer(layers, i, chain_id);
        match ctx
            .cd
            .prepare_snapshot(&ctx.snapshotter, &key, &parent, labels, Some(&ctx.lease))
            .await
        {
            Err(ContainerdError::AlreadyExists(_)) => {
                if !ctx.cd.snapshot_exists(&ctx.snapshotter, chain_id).await? {
                    // Our key, not the chain, was taken (cannot normally happen).
                    return Ok(i);
                }
                tracing::debug!(layer = %layers[i].digest, chain_id = %chain_id, snapshotter = %ctx.snapshotter, "layer served by the snapshotter; not downloaded");
                parent = chain_id.clone();
            }
            Ok(_) => {
                // Not remote: the unpack prepares it again, with its data.
                let _ = ctx.cd.remove_snapshot(&ctx.snapshotter, &key).await;
                return Ok(i);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(chain.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(n: u8) -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: format!("sha256:{}", hex::encode([n; 32])),
            size: 1,
            ..Default::default()
        }
    }

    #[test]
    fn labels_name_the_image_the_layer_and_those_above() {
        let layers: Vec<_> = (1..=3).map(layer).collect();
        let img = ImageLabels {
            image_ref: "docker.io/library/busybox:latest".into(),
            manifest_digest: "sha256:m".into(),
        };
        let l = img.for_layer(&layers, 1, "sha256:chain1");
        assert_eq!(l[labels::SNAPSHOT_REF], "sha256:chain1");
        assert_eq!(l[TARGET_REF], "docker.io/library/busybox:latest");
        assert_eq!(l[TARGET_MANIFEST_DIGEST], "sha256:m");
        assert_eq!(l[TARGET_LAYER_DIGEST], layers[1].digest);
        assert_eq!(
            l[TARGET_IMAGE_LAYERS],
            format!("{},{}", layers[1].digest, layers[2].digest)
        );
        assert_eq!(l.len(), 5);
    }

    #[test]
    fn image_layers_stops_at_containerds_label_limit() {
        // 71 bytes per digest, 72 with the comma: 56 fit in 4096 - 38.
        let layers: Vec<_> = (0..100).map(layer).collect();
        let v = image_layers(&layers);
        assert!(TARGET_IMAGE_LAYERS.len() + v.len() <= MAX_LABEL);
        let n = v.split(',').count();
        assert_eq!(n, (MAX_LABEL - TARGET_IMAGE_LAYERS.len() + 1) / 72);
        assert!(
            TARGET_IMAGE_LAYERS.len() + v.len() + 72 > MAX_LABEL,
            "one more would not fit"
        );
        assert_eq!(v.split(',').next().unwrap(), layers[0].digest);
        assert!(!v.ends_with(','));
        assert_eq!(image_layers(&[]), "");
    }
}
