//! What an image record's target means on this node: the platform's manifest,
//! its config (the image ID), size, user and chain ID, read from containerd's
//! content store.

use crate::containerd::{Containerd, ContainerdError};
use crate::manifest::{self, Document, MAX_DOCUMENT_BYTES};
use crate::platform::{self, Matcher, Platform};

/// Everything the CRI needs to know about one image, for this node.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// Config digest: the image ID.
    pub id: String,
    /// Digest of the record's target (index or manifest).
    pub target: String,
    pub target_media_type: String,
    pub target_size: i64,
    /// Digest of the manifest chosen for this node.
    pub manifest: String,
    /// index (if any) + manifest + config + layers.
    pub size: u64,
    pub user: String,
    pub platform: Platform,
    pub chain_id: String,
    /// The OCI config as stored (for verbose ImageStatus; parsed on demand,
    /// which keeps thousands of images in a few MB).
    pub config_raw: bytes::Bytes,
}

impl ImageInfo {
    pub fn target_descriptor(&self) -> crate::manifest::Descriptor {
        crate::manifest::Descriptor {
            media_type: self.target_media_type.clone(),
            digest: self.target.clone(),
            size: self.target_size,
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Platform(#[from] platform::PlatformError),
}

/// Choose this node's manifest within an index. `derived[i]` is the platform
/// read from entry i's config, used when the entry itself names none.
pub fn choose(
    matcher: &Matcher,
    index: &manifest::Index,
    derived: &[Option<Platform>],
) -> Result<usize, platform::PlatformError> {
    let entries: Vec<Option<Platform>> = index
        .manifests
        .iter()
        .enumerate()
        .map(|(i, d)| match &d.platform {
            Some(p) => Some(p.to_platform()),
            None => derived.get(i).cloned().flatten(),
        })
        .collect();
    platform::select(matcher, &entries)
}

/// Inspect a record target stored in containerd.
pub async fn inspect(
    cd: &Containerd,
    matcher: &Matcher,
    target_media_type: &str,
    target_digest: &str,
) -> Result<ImageInfo, InspectError> {
    let bytes = cd.read_blob(target_digest, MAX_DOCUMENT_BYTES).await?;
    let media_type = manifest::sniff_media_type(target_media_type, &bytes);
    let mut size = 0u64;
    let (manifest_digest, manifest) = match manifest::parse(&media_type, target_digest, &bytes)? {
        Document::Manifest(m) => (target_digest.to_string(), m),
        Document::Index(idx) => {
            size += bytes.len() as u64;
            // Platforms of entries without one, from their configs (rare; sequential is fine).
            let mut derived: Vec<Option<Platform>> = Vec::new();
            for d in &idx.manifests {
                if d.platform.is_none() {
                    derived.push(config_platform_of(cd, d).await);
                } else {
                    derived.push(None);
                }
            }
            let i = choose(matcher, &idx, &derived)?;
            let d = &idx.manifests[i];
            let mb = cd.read_blob(&d.digest, MAX_DOCUMENT_BYTES).await?;
            let mt = manifest::sniff_media_type(&d.media_type, &mb);
            match manifest::parse(&mt, &d.digest, &mb)? {
                Document::Manifest(m) => {
                    size += mb.len() as u64;
                    (d.digest.clone(), m)
                }
                Document::Index(_) => {
                    return Err(manifest::ManifestError::Unsupported {
                        media_type: mt,
                        digest: d.digest.clone(),
                    }
                    .into())
                }
            }
        }
    };
    if manifest_digest == target_digest {
        size += bytes.len() as u64;
    }
    let cfg_bytes = cd
        .read_blob(&manifest.config.digest, MAX_DOCUMENT_BYTES)
        .await?;
    let cfg = manifest::parse_config(&manifest.config.digest, &cfg_bytes)?;
    size += cfg_bytes.len() as u64;
    size += manifest
        .layers
        .iter()
        .map(|l| l.size.max(0) as u64)
        .sum::<u64>();
    let chain = crate::reference::chain_id(cfg.diff_ids());
    Ok(ImageInfo {
        id: manifest.config.digest.clone(),
        target: target_digest.to_string(),
        target_media_type: media_type.clone(),
        target_size: bytes.len() as i64,
        manifest: manifest_digest,
        size,
        user: cfg.user().to_string(),
        platform: cfg.platform(),
        chain_id: chain.last().cloned().unwrap_or_default(),
        config_raw: cfg_bytes.clone(),
    })
}

pub async fn config_platform_of(cd: &Containerd, d: &manifest::Descriptor) -> Option<Platform> {
    let mb = cd.read_blob(&d.digest, MAX_DOCUMENT_BYTES).await.ok()?;
    let mt = manifest::sniff_media_type(&d.media_type, &mb);
    let Document::Manifest(m) = manifest::parse(&mt, &d.digest, &mb).ok()? else {
        return None;
    };
    let cb = cd
        .read_blob(&m.config.digest, MAX_DOCUMENT_BYTES)
        .await
        .ok()?;
    let cfg = manifest::parse_config(&m.config.digest, &cb).ok()?;
    Some(cfg.platform())
}
