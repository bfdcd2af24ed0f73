//! The one walk from a record's or a reference's target to this node's image:
//! index (possibly nested) → the manifest for this node's platform → its config.
//!
//! Pull (documents from the registry) and the image index (documents from
//! containerd's content store) both call [`select_manifest`], so an image
//! always resolves to the same manifest whichever side looks at it.
//!
//! Rules, as containerd's `images.Manifest` walks an index:
//! - an entry with a `platform` is judged by it (attestations carry
//!   `unknown/unknown` and never match);
//! - an entry without one is read: a manifest is judged by its config's
//!   os/architecture/variant, a nested index by the manifest it selects; an
//!   entry that cannot be read or is neither is no candidate;
//! - the best match by the node's preference order wins (first on ties);
//! - nesting deeper than [`MAX_INDEX_DEPTH`] is refused as an invalid index.

use bytes::Bytes;

use crate::manifest::{self, ConfigFile, Descriptor, Document, Index, Manifest, ManifestError};
use crate::platform::{self, Matcher, Platform, PlatformError};

/// Indexes nested deeper than this are refused (a loop guard; real images nest at most once).
pub const MAX_INDEX_DEPTH: usize = 4;

/// Where documents are read from: the registry for a pull, containerd's
/// content store for the index.
pub trait BlobSource {
    type Error: std::fmt::Display;
    /// An index or manifest: its bytes (at most [`manifest::MAX_DOCUMENT_BYTES`])
    /// and the media type the source reports for them ("" when it has none).
    fn document(
        &self,
        desc: &Descriptor,
    ) -> impl std::future::Future<Output = Result<(String, Bytes), Self::Error>> + Send;
    /// A config blob (at most [`manifest::MAX_DOCUMENT_BYTES`]).
    fn config(
        &self,
        desc: &Descriptor,
    ) -> impl std::future::Future<Output = Result<Bytes, Self::Error>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum SelectError<E> {
    #[error("{0}")]
    Source(E),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

fn too_deep(digest: &str) -> ManifestError {
    ManifestError::Invalid {
        what: "index",
        digest: digest.to_string(),
        message: format!("indexes nest more than {MAX_INDEX_DEPTH} deep"),
    }
}

/// A document as read: its descriptor (media type sniffed, size = bytes read) and bytes.
#[derive(Debug, Clone)]
pub struct Doc {
    pub desc: Descriptor,
    pub bytes: Bytes,
}

/// An index on the way from the top to the chosen manifest.
#[derive(Debug, Clone)]
pub struct IndexDoc {
    pub doc: Doc,
    pub index: Index,
}

/// The image this node runs from a target.
#[derive(Debug, Clone)]
pub struct Selected {
    /// Indexes from the top down to the chosen manifest's parent (empty when
    /// the target is a manifest).
    pub indexes: Vec<IndexDoc>,
    pub manifest_doc: Doc,
    pub manifest: Manifest,
    /// The chosen manifest's config, as read (the image ID is its digest).
    pub config_doc: Doc,
    pub config: ConfigFile,
}

impl Selected {
    /// The top document (the record's target).
    pub fn top(&self) -> &Doc {
        self.indexes
            .first()
            .map(|i| &i.doc)
            .unwrap_or(&self.manifest_doc)
    }
}

/// Read the index or manifest `desc` from `src`, with its effective media type.
pub async fn read_doc<S: BlobSource>(
    src: &S,
    desc: &Descriptor,
) -> Result<Doc, SelectError<S::Error>> {
    let (served, bytes) = src.document(desc).await.map_err(SelectError::Source)?;
    let served = if served.is_empty() {
        &desc.media_type
    } else {
        &served
    };
    let media_type = manifest::sniff_media_type(served, &bytes);
    Ok(Doc {
        desc: Descriptor {
            media_type,
            digest: desc.digest.clone(),
            size: bytes.len() as i64,
            ..Default::default()
        },
        bytes,
    })
}

/// Select this node's manifest from `top` (already read, e.g. a resolved
/// tag), reading the chosen manifest and its config from `src`.
pub async fn select_manifest<S: BlobSource + Sync>(
    src: &S,
    matcher: &Matcher,
    top: Doc,
) -> Result<Selected, SelectError<S::Error>> {
    let mut indexes = Vec::new();
    let mut doc = top;
    loop {
        match manifest::parse(&doc.desc.media_type, &doc.desc.digest, &doc.bytes)? {
            Document::Manifest(m) => {
                let bytes = src.config(&m.config).await.map_err(SelectError::Source)?;
                let config = manifest::parse_config(&m.config.digest, &bytes)?;
                let config_doc = Doc {
                    desc: m.config.clone(),
                    bytes,
                };
                return Ok(Selected {
                    indexes,
                    manifest_doc: doc,
                    manifest: m,
                    config_doc,
                    config,
                });
            }
            Document::Index(idx) => {
                if indexes.len() >= MAX_INDEX_DEPTH {
                    return Err(too_deep(&doc.desc.digest).into());
                }
                let chosen = choose_entry(src, matcher, &idx, 1).await?;
                let next = read_doc(src, &idx.manifests[chosen]).await?;
                indexes.push(IndexDoc { doc, index: idx });
                doc = next;
            }
        }
    }
}

/// Index of this node's entry in `idx`.
async fn choose_entry<S: BlobSource + Sync>(
    src: &S,
    matcher: &Matcher,
    idx: &Index,
    depth: usize,
) -> Result<usize, SelectError<S::Error>> {
    let mut entries: Vec<Option<Platform>> = Vec::with_capacity(idx.manifests.len());
    for d in &idx.manifests {
        entries.push(match &d.platform {
            Some(p) => Some(p.to_platform()),
            None => Box::pin(derived_platform(src, matcher, d, depth)).await,
        });
    }
    Ok(platform::select(matcher, &entries)?)
}

/// The platform of an index entry that names none: its config's, or for a
/// nested index the platform of the manifest it selects. None when the entry
/// cannot be read or selects nothing.
async fn derived_platform<S: BlobSource + Sync>(
    src: &S,
    matcher: &Matcher,
    d: &Descriptor,
    depth: usize,
) -> Option<Platform> {
    let doc = read_doc(src, d).await.ok()?;
    match manifest::parse(&doc.desc.media_type, &d.digest, &doc.bytes).ok()? {
        Document::Manifest(m) => {
            let c = src.config(&m.config).await.ok()?;
            Some(
                manifest::parse_config(&m.config.digest, &c)
                    .ok()?
                    .platform(),
            )
        }
        Document::Index(nested) => {
            if depth >= MAX_INDEX_DEPTH {
                return None;
            }
            let i = choose_entry(src, matcher, &nested, depth + 1).await.ok()?;
            let e = &nested.manifests[i];
            match &e.platform {
                Some(p) => Some(p.to_platform()),
                None => Box::pin(derived_platform(src, matcher, e, depth + 1)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Documents in memory, keyed by digest; counts reads.
    #[derive(Default)]
    struct Mem {
        blobs: HashMap<String, (String, Bytes)>,
        reads: std::sync::Mutex<Vec<String>>,
    }

    impl Mem {
        fn put(&mut self, media_type: &str, v: serde_json::Value) -> Descriptor {
            let b = Bytes::from(serde_json::to_vec(&v).unwrap());
            let d = {
                use sha2::Digest as _;
                format!("sha256:{}", hex::encode(sha2::Sha256::digest(&b)))
            };
            self.blobs.insert(d.clone(), (media_type.into(), b.clone()));
            Descriptor {
                media_type: media_type.into(),
                digest: d,
                size: b.len() as i64,
                ..Default::default()
            }
        }
        fn image(&mut self, arch: &str) -> Descriptor {
            let cfg = self.put(
                manifest::OCI_CONFIG,
                serde_json::json!({"os": "linux", "architecture": arch,
                    "rootfs": {"type": "layers", "diff_ids": []}}),
            );
            self.put(
                manifest::OCI_MANIFEST,
                serde_json::json!({"schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
                    "config": cfg, "layers": []}),
            )
        }
        fn index(&mut self, entries: Vec<Descriptor>) -> Descriptor {
            self.put(
                manifest::OCI_INDEX,
                serde_json::json!({"schemaVersion": 2, "mediaType": manifest::OCI_INDEX,
                    "manifests": entries}),
            )
        }
        async fn top(&self, d: &Descriptor) -> Doc {
            read_doc(self, d).await.unwrap()
        }
    }

    impl BlobSource for Mem {
        type Error = String;
        async fn document(&self, d: &Descriptor) -> Result<(String, Bytes), String> {
            self.reads.lock().unwrap().push(d.digest.clone());
            self.blobs
                .get(&d.digest)
                .cloned()
                .ok_or_else(|| format!("{} not found", d.digest))
        }
        async fn config(&self, d: &Descriptor) -> Result<Bytes, String> {
            Ok(self.document(d).await?.1)
        }
    }

    fn with_platform(mut d: Descriptor, os: &str, arch: &str) -> Descriptor {
        d.platform = Some(manifest::PlatformJson {
            os: os.into(),
            architecture: arch.into(),
            variant: None,
        });
        d
    }

    fn amd64() -> Matcher {
        Matcher::new(vec![Platform::new("linux", "amd64", None)], false)
    }

    #[tokio::test]
    async fn plain_manifest_is_itself() {
        let mut m = Mem::default();
        let a = m.image("amd64");
        let s = select_manifest(&m, &amd64(), m.top(&a).await)
            .await
            .unwrap();
        assert!(s.indexes.is_empty());
        assert_eq!(s.manifest_doc.desc.digest, a.digest);
        assert_eq!(s.top().desc.digest, a.digest);
    }

    #[tokio::test]
    async fn entries_without_platform_are_judged_by_their_config_whatever_their_media_type() {
        for mt in [
            "",
            manifest::OCI_MANIFEST,
            "application/vnd.example.unusual+json",
        ] {
            let mut m = Mem::default();
            let arm = with_platform(m.image("arm64"), "linux", "arm64");
            let mut x86 = m.image("amd64");
            x86.media_type = mt.into();
            let top = m.index(vec![arm, x86.clone()]);
            let s = select_manifest(&m, &amd64(), m.top(&top).await)
                .await
                .unwrap();
            assert_eq!(
                s.manifest_doc.desc.digest, x86.digest,
                "entry media type {mt:?}"
            );
            assert_eq!(s.manifest_doc.desc.media_type, manifest::OCI_MANIFEST);
            assert_eq!(s.config.platform().architecture, "amd64");
        }
    }

    #[tokio::test]
    async fn a_nested_index_is_walked() {
        let mut m = Mem::default();
        let x86 = with_platform(m.image("amd64"), "linux", "amd64");
        let arm = with_platform(m.image("arm64"), "linux", "arm64");
        let inner = m.index(vec![arm.clone(), x86.clone()]);
        let other = with_platform(m.image("s390x"), "linux", "s390x");
        let top = m.index(vec![other, inner.clone()]);
        let s = select_manifest(&m, &amd64(), m.top(&top).await)
            .await
            .unwrap();
        assert_eq!(s.indexes.len(), 2);
        assert_eq!(s.indexes[1].doc.desc.digest, inner.digest);
        assert_eq!(s.manifest_doc.desc.digest, x86.digest);
    }

    #[tokio::test]
    async fn attestations_and_unreadable_entries_never_match() {
        let mut m = Mem::default();
        let att = with_platform(m.image("amd64"), "unknown", "unknown");
        let missing = Descriptor {
            media_type: manifest::OCI_MANIFEST.into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size: 2,
            ..Default::default()
        };
        let arm = with_platform(m.image("arm64"), "linux", "arm64");
        let top = m.index(vec![att, missing, arm]);
        let e = select_manifest(&m, &amd64(), m.top(&top).await)
            .await
            .unwrap_err();
        assert!(
            matches!(e, SelectError::Platform(PlatformError::NoMatch { .. })),
            "{e}"
        );
    }

    #[tokio::test]
    async fn indexes_nested_too_deep_are_refused() {
        let mut m = Mem::default();
        let mut d = with_platform(m.image("amd64"), "linux", "amd64");
        for _ in 0..=MAX_INDEX_DEPTH {
            d = with_platform(m.index(vec![d]), "linux", "amd64");
        }
        let e = select_manifest(&m, &amd64(), m.top(&d).await)
            .await
            .unwrap_err();
        assert!(
            matches!(
                &e,
                SelectError::Manifest(ManifestError::Invalid { what: "index", .. })
            ),
            "{e}"
        );
    }
}
