//! Resolve: the reference's digest or tag to its top document at the
//! registry, then, through [`crate::select`] (the same walk the image index
//! makes over containerd's content), to this node's manifest and config.

use bytes::Bytes;
use futures::StreamExt;

use super::{PullError, Puller};
use crate::manifest::{self, Descriptor, ManifestError, MAX_DOCUMENT_BYTES};
use crate::reference::Reference;
use crate::registry::{PullAuth, RegistryError};
use crate::select::{self, BlobSource, Doc, Selected};

/// One repository of one registry, read with the pull's credentials.
pub(super) struct RegistrySource<'a> {
    puller: &'a Puller,
    domain: &'a str,
    repo: &'a str,
    auth: &'a PullAuth,
}

impl<'a> RegistrySource<'a> {
    pub fn new(puller: &'a Puller, reference: &'a Reference, auth: &'a PullAuth) -> Self {
        RegistrySource {
            puller,
            domain: reference.domain(),
            repo: reference.path(),
            auth,
        }
    }

    /// The document the reference names: its digest, else its tag (`latest` when none).
    pub async fn top(&self, reference: &Reference) -> Result<Doc, PullError> {
        let wanted = reference.digest().or(reference.tag()).unwrap_or("latest");
        let m = self
            .puller
            .registries
            .get_manifest(self.domain, self.repo, wanted, self.auth)
            .await?;
        self.puller
            .metrics
            .bytes_fetched
            .inc_by(m.bytes.len() as u64);
        Ok(Doc {
            desc: Descriptor {
                media_type: manifest::sniff_media_type(&m.media_type, &m.bytes),
                digest: m.digest,
                size: m.bytes.len() as i64,
                ..Default::default()
            },
            bytes: m.bytes,
        })
    }

    /// This node's manifest and config under `top`, checked for consistency.
    pub async fn select(&self, top: Doc) -> Result<Selected, PullError> {
        let s = select::select_manifest(self, self.puller.store.matcher(), top).await?;
        let (diff_ids, layers) = (s.config.diff_ids().len(), s.manifest.layers.len());
        if diff_ids != layers {
            return Err(PullError::LayerCount(
                s.manifest.config.digest.clone(),
                diff_ids,
                layers,
            ));
        }
        Ok(s)
    }
}

impl BlobSource for RegistrySource<'_> {
    type Error = PullError;

    async fn document(&self, desc: &Descriptor) -> Result<(String, Bytes), PullError> {
        let m = self
            .puller
            .registries
            .get_manifest(self.domain, self.repo, &desc.digest, self.auth)
            .await?;
        self.puller
            .metrics
            .bytes_fetched
            .inc_by(m.bytes.len() as u64);
        Ok((m.media_type, m.bytes))
    }

    /// A config: from containerd's content store when it is already there
    /// (warm content, cold records), else from the registry, size-limited
    /// and digest-checked.
    async fn config(&self, desc: &Descriptor) -> Result<Bytes, PullError> {
        let too_large = |size: u64| ManifestError::TooLarge {
            what: "config",
            digest: desc.digest.clone(),
            size,
        };
        if desc.size as u64 > MAX_DOCUMENT_BYTES {
            return Err(too_large(desc.size as u64).into());
        }
        if let Ok(b) = self
            .puller
            .cd
            .read_blob(&desc.digest, MAX_DOCUMENT_BYTES)
            .await
        {
            return Ok(b);
        }
        let blob = self
            .puller
            .registries
            .get_blob(self.domain, self.repo, &desc.digest, 0, self.auth)
            .await?;
        let want = desc.size.max(0) as usize;
        let mut out = Vec::with_capacity(want);
        let mut s = blob.stream;
        // Whole within the documents' deadline, and never past its declared
        // size: an endless or trickling body ends here.
        let deadline = tokio::time::Instant::now() + crate::registry::DOCUMENT_DEADLINE;
        loop {
            let next = tokio::time::timeout_at(deadline, s.next()).await;
            let Ok(next) = next else {
                return Err(RegistryError::Unavailable(format!(
                    "config {} from {}/{} did not arrive whole within {} ({} of {want} bytes received)",
                    desc.digest,
                    self.domain,
                    self.repo,
                    humantime::format_duration(crate::registry::DOCUMENT_DEADLINE),
                    out.len()
                ))
                .into());
            };
            let Some(chunk) = next else { break };
            let chunk = chunk?;
            self.puller.metrics.bytes_fetched.inc_by(chunk.len() as u64);
            out.extend_from_slice(&chunk);
            if out.len() as u64 > MAX_DOCUMENT_BYTES {
                return Err(too_large(out.len() as u64).into());
            }
            if out.len() > want {
                return Err(PullError::DigestMismatch(format!(
                    "config {} from {}/{}: the registry sent more than the {want} bytes the manifest declares",
                    desc.digest, self.domain, self.repo
                )));
            }
        }
        let got = manifest::sha256_digest(&out);
        if desc.digest.starts_with("sha256:") && got != desc.digest {
            return Err(PullError::DigestMismatch(format!(
                "config {} from {}/{} has digest {got}",
                desc.digest, self.domain, self.repo
            )));
        }
        Ok(Bytes::from(out))
    }
}
