//! What an image record's target means on this node: the platform's manifest
//! (chosen by [`crate::select`], the same walk a pull makes), its config (the
//! image ID), size, user and chain ID, read from containerd's content store.

use bytes::Bytes;

use crate::containerd::{Containerd, ContainerdError};
use crate::manifest::{self, Descriptor, MAX_DOCUMENT_BYTES};
use crate::platform::{self, Matcher, Platform};
use crate::select::{read_doc, select_manifest, BlobSource, SelectError, Selected};

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

/// containerd's content store as a [`BlobSource`]: what the index reads.
pub struct ContentStore<'a>(pub &'a Containerd);

impl BlobSource for ContentStore<'_> {
    type Error = ContainerdError;
    async fn document(&self, desc: &Descriptor) -> Result<(String, Bytes), ContainerdError> {
        let b = self.0.read_blob(&desc.digest, MAX_DOCUMENT_BYTES).await?;
        Ok((String::new(), b))
    }
    async fn config(&self, desc: &Descriptor) -> Result<Bytes, ContainerdError> {
        self.0.read_blob(&desc.digest, MAX_DOCUMENT_BYTES).await
    }
}

impl From<SelectError<ContainerdError>> for InspectError {
    fn from(e: SelectError<ContainerdError>) -> Self {
        match e {
            SelectError::Source(e) => InspectError::Containerd(e),
            SelectError::Manifest(e) => InspectError::Manifest(e),
            SelectError::Platform(e) => InspectError::Platform(e),
        }
    }
}

/// Inspect a record target stored in containerd.
pub async fn inspect(
    cd: &Containerd,
    matcher: &Matcher,
    target_media_type: &str,
    target_digest: &str,
) -> Result<ImageInfo, InspectError> {
    let src = ContentStore(cd);
    let top = Descriptor {
        media_type: target_media_type.to_string(),
        digest: target_digest.to_string(),
        ..Default::default()
    };
    let top = read_doc(&src, &top).await?;
    let s = select_manifest(&src, matcher, top).await?;
    Ok(ImageInfo::of(&s))
}

impl ImageInfo {
    /// What the CRI shows of a selected image.
    pub fn of(s: &Selected) -> ImageInfo {
        let top = s.top();
        // index(es) (if any) + manifest + config + layers
        let size = s
            .indexes
            .iter()
            .map(|i| i.doc.bytes.len() as u64)
            .sum::<u64>()
            + s.manifest_doc.bytes.len() as u64
            + s.config_doc.bytes.len() as u64
            + s.manifest
                .layers
                .iter()
                .map(|l| l.size.max(0) as u64)
                .sum::<u64>();
        let chain = crate::reference::chain_id(s.config.diff_ids());
        ImageInfo {
            id: s.manifest.config.digest.clone(),
            target: top.desc.digest.clone(),
            target_media_type: top.desc.media_type.clone(),
            target_size: top.bytes.len() as i64,
            manifest: s.manifest_doc.desc.digest.clone(),
            size,
            user: s.config.user().to_string(),
            platform: s.config.platform(),
            chain_id: chain.last().cloned().unwrap_or_default(),
            config_raw: s.config_doc.bytes.clone(),
        }
    }
}
