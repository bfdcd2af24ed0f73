//! The end of a pull: the documents (config, manifest, indexes) written with
//! the GC references that keep what they need, then the image records
//! `name:tag`, `name@digest` and `sha256:<id>` that containerd's CRI reads.

use std::collections::HashMap;

use super::{fetch, PullCtx, PullError, Puller};
use crate::containerd::{labels, ImageRecord};
use crate::manifest::Descriptor;
use crate::reference::Reference;
use crate::select::Selected;

/// The records a pull of `reference` leaves: name:tag (unless pulled by
/// digest), name@<target digest> and the ID record.
pub(super) fn names(reference: &Reference, target: &str, image_id: &str) -> Vec<String> {
    let mut names = Vec::new();
    if reference.digest().is_none() {
        if let Some(t) = reference.name_tag() {
            names.push(t);
        }
    }
    names.push(format!("{}@{target}", reference.name()));
    names.push(image_id.to_string());
    names
}

/// Write config, manifest and indexes (children first), each with the GC
/// references to what it needs: config -> top snapshot, manifest -> config
/// and layers, index -> its entries.
pub(super) async fn write_documents(
    ctx: &PullCtx,
    image: &Selected,
    top_chain: &str,
) -> Result<(), PullError> {
    let source = || HashMap::from([labels::source_label(&ctx.domain, &ctx.repo)]);
    let mut cfg_labels = source();
    if !top_chain.is_empty() {
        cfg_labels.insert(
            format!("{}{}", labels::GC_REF_SNAPSHOT_PREFIX, ctx.snapshotter),
            top_chain.to_string(),
        );
    }
    fetch::write_bytes(
        ctx,
        &image.manifest.config,
        image.config_doc.bytes.clone(),
        cfg_labels,
    )
    .await?;

    let mut m_labels = source();
    m_labels.insert(
        labels::GC_REF_CONTENT_CONFIG.to_string(),
        image.manifest.config.digest.clone(),
    );
    // With discard_unpacked_layers the manifest keeps no layer blob: the
    // snapshots are the image from then on (as in containerd's CRI).
    for (i, l) in image.manifest.layers.iter().enumerate() {
        if ctx.discard_layers {
            break;
        }
        m_labels.insert(
            format!("{}{i}", labels::GC_REF_CONTENT_LAYER_PREFIX),
            l.digest.clone(),
        );
    }
    let m = &image.manifest_doc;
    fetch::write_bytes(ctx, &m.desc, m.bytes.clone(), m_labels).await?;

    for idx in image.indexes.iter().rev() {
        let mut i_labels = source();
        for (i, d) in idx.index.manifests.iter().enumerate() {
            // Only the chosen path is local; refs to absent content are harmless.
            i_labels.insert(
                format!("{}{i}", labels::GC_REF_CONTENT_MANIFEST_PREFIX),
                d.digest.clone(),
            );
        }
        fetch::write_bytes(ctx, &idx.doc.desc, idx.doc.bytes.clone(), i_labels).await?;
    }
    Ok(())
}

impl Puller {
    /// Create (or update) the image records: name:tag, name@digest, sha256:<id>.
    pub(super) async fn ensure_records(
        &self,
        reference: &Reference,
        target: &Descriptor,
        image_id: &str,
    ) -> Result<(), PullError> {
        let names = names(reference, &target.digest, image_id);
        let pinned = self.is_pinned(reference);
        for n in &names {
            let mut l = HashMap::from([(
                labels::CRI_MANAGED.to_string(),
                labels::CRI_MANAGED_VALUE.to_string(),
            )]);
            if pinned {
                l.insert(
                    labels::CRI_PINNED.to_string(),
                    labels::CRI_PINNED_VALUE.to_string(),
                );
            }
            let rec = ImageRecord {
                name: n.clone(),
                labels: l,
                target: Some(containerd_client::types::Descriptor {
                    media_type: target.media_type.clone(),
                    digest: target.digest.clone(),
                    size: target.size,
                    annotations: HashMap::new(),
                }),
                created_at: None,
                updated_at: None,
            };
            self.cd.put_image(rec, None).await?;
        }
        for n in &names {
            self.store.refresh(n).await?;
        }
        Ok(())
    }

    /// Is `reference` one of the configured `pinned_images`?
    pub(super) fn is_pinned(&self, reference: &Reference) -> bool {
        self.cfg.pinned.iter().any(|p| {
            Reference::parse_normalized(p)
                .map(|r| r.with_default_tag().to_string() == reference.to_string())
                .unwrap_or(false)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_label_drops_the_port_like_containerd() {
        let key = |d| labels::source_label(d, "r").0;
        assert_eq!(
            key("docker.io"),
            "containerd.io/distribution.source.docker.io"
        );
        assert_eq!(
            key("localhost:5000"),
            "containerd.io/distribution.source.localhost"
        );
        assert_eq!(
            key("127.0.0.1:43211"),
            "containerd.io/distribution.source.127.0.0.1"
        );
        assert_eq!(key("[::1]:5000"), "containerd.io/distribution.source.::1");
    }
}
