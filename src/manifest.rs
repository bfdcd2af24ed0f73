//! OCI / Docker manifest, index and config documents: media types, parsing,
//! size limits. Pure functions, shared by the pull pipeline and the image index.

use serde::{Deserialize, Serialize};

use crate::platform::Platform;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Manifests, indexes and configs larger than this are refused.
pub const MAX_DOCUMENT_BYTES: u64 = 4 << 20;

/// Manifests with more layers than this are refused: 4 MiB holds ~30,000
/// layer descriptors, each a snapshot to unpack, while overlayfs stacks at
/// most 500 and real images stay under 128.
pub const MAX_LAYERS: usize = 1000;

/// Indexes with more entries than this are refused: an entry without a
/// platform costs a manifest and a config request, and 4 MiB holds ~30,000
/// entries; real indexes list a few dozen.
pub const MAX_INDEX_ENTRIES: usize = 1000;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ManifestError {
    #[error("{0} is a Docker schema 1 manifest, which is not supported: push the image again with a current docker, buildah or skopeo")]
    Schema1(String),
    #[error("{what} {digest} is {size} bytes, more than the 4 MiB allowed")]
    TooLarge {
        what: &'static str,
        digest: String,
        size: u64,
    },
    #[error("{what} {digest} lists {count} {items}, more than the {limit} allowed")]
    TooMany {
        what: &'static str,
        digest: String,
        items: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("unsupported media type {media_type:?} for {digest}")]
    Unsupported { media_type: String, digest: String },
    #[error("invalid {what} {digest}: {message}")]
    Invalid {
        what: &'static str,
        digest: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::HashMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PlatformJson {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl PlatformJson {
    pub fn to_platform(&self) -> Platform {
        Platform::new(
            &self.os,
            &self.architecture,
            self.variant.as_deref().filter(|v| !v.is_empty()),
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Index {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct ConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<RunConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct RunConfig {
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ConfigFile {
    pub fn platform(&self) -> Platform {
        Platform::new(
            &self.os,
            &self.architecture,
            self.variant.as_deref().filter(|v| !v.is_empty()),
        )
    }
    pub fn user(&self) -> &str {
        self.config
            .as_ref()
            .and_then(|c| c.user.as_deref())
            .unwrap_or("")
    }
    pub fn diff_ids(&self) -> &[String] {
        self.rootfs
            .as_ref()
            .map(|r| r.diff_ids.as_slice())
            .unwrap_or(&[])
    }
}

/// The `Accept` header of a manifest request: every document kind we read,
/// schema 1 last (it is refused with a clear error, not a 404).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.5, application/vnd.docker.distribution.manifest.v1+json;q=0.5";

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// `algo:hex` of `data` for the algorithms a registry may name (sha256,
/// sha512); None for others.
pub fn digest_of(algo: &str, data: &[u8]) -> Option<String> {
    if !matches!(algo, "sha256" | "sha512") {
        return None;
    }
    let mut h = DigestHasher::for_algorithm(algo)?;
    h.update(data);
    Some(h.finish())
}

/// A digest computed as the bytes stream past, for the algorithms
/// containerd registers (sha256, sha384, sha512).
pub enum DigestHasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl DigestHasher {
    /// For the algorithm `algo:hex` names.
    pub fn for_digest(digest: &str) -> Option<DigestHasher> {
        DigestHasher::for_algorithm(digest.split_once(':')?.0)
    }

    pub fn for_algorithm(algo: &str) -> Option<DigestHasher> {
        use sha2::Digest as _;
        match algo {
            "sha256" => Some(DigestHasher::Sha256(sha2::Sha256::new())),
            "sha384" => Some(DigestHasher::Sha384(sha2::Sha384::new())),
            "sha512" => Some(DigestHasher::Sha512(sha2::Sha512::new())),
            _ => None,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        match self {
            DigestHasher::Sha256(h) => h.update(data),
            DigestHasher::Sha384(h) => h.update(data),
            DigestHasher::Sha512(h) => h.update(data),
        }
    }

    /// `algo:hex`.
    pub fn finish(self) -> String {
        use sha2::Digest as _;
        match self {
            DigestHasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            DigestHasher::Sha384(h) => format!("sha384:{}", hex::encode(h.finalize())),
            DigestHasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        }
    }
}

/// What a manifest-ish document is.
#[derive(Debug, Clone)]
pub enum Document {
    Index(Index),
    Manifest(Manifest),
}

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

pub fn is_schema1(media_type: &str) -> bool {
    media_type == DOCKER_SCHEMA1 || media_type == DOCKER_SCHEMA1_SIGNED
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
    #[serde(rename = "fsLayers", default)]
    fs_layers: Option<serde_json::Value>,
    #[serde(default)]
    signatures: Option<serde_json::Value>,
}

/// The effective media type of a document: the served (or descriptor's) type
/// when it names a document kind we know, else the document's own
/// `mediaType`, else guessed from its shape (schema 1, index, manifest), else
/// the served type as given. Registries often serve `application/json`,
/// `text/plain` or nothing at all.
pub fn sniff_media_type(served: &str, bytes: &[u8]) -> String {
    let served = served
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if is_index(&served) || is_manifest(&served) || is_schema1(&served) {
        return served;
    }
    let Ok(p) = serde_json::from_slice::<Probe>(bytes) else {
        return served;
    };
    if p.schema_version == Some(1) || p.fs_layers.is_some() {
        return if p.signatures.is_some() {
            DOCKER_SCHEMA1_SIGNED.to_string()
        } else {
            DOCKER_SCHEMA1.to_string()
        };
    }
    if let Some(mt) = p.media_type.filter(|m| !m.is_empty()) {
        return mt;
    }
    if p.manifests.is_some() {
        OCI_INDEX.to_string()
    } else if p.config.is_some() || p.layers.is_some() {
        OCI_MANIFEST.to_string()
    } else {
        served
    }
}

fn check_size(what: &'static str, digest: &str, len: usize) -> Result<(), ManifestError> {
    if len as u64 > MAX_DOCUMENT_BYTES {
        return Err(ManifestError::TooLarge {
            what,
            digest: digest.into(),
            size: len as u64,
        });
    }
    Ok(())
}

/// `count` `items` of a `what` within `limit`, else [`ManifestError::TooMany`].
fn check_count(
    (what, items): (&'static str, &'static str),
    digest: &str,
    count: usize,
    limit: usize,
) -> Result<(), ManifestError> {
    if count > limit {
        return Err(ManifestError::TooMany {
            what,
            digest: digest.into(),
            items,
            count,
            limit,
        });
    }
    Ok(())
}

/// Parse an index or manifest of the given media type.
pub fn parse(media_type: &str, digest: &str, bytes: &[u8]) -> Result<Document, ManifestError> {
    check_size("manifest", digest, bytes.len())?;
    let invalid = |e: serde_json::Error| ManifestError::Invalid {
        what: "manifest",
        digest: digest.into(),
        message: e.to_string(),
    };
    if is_schema1(media_type) {
        return Err(ManifestError::Schema1(digest.into()));
    }
    if is_index(media_type) {
        let i: Index = serde_json::from_slice(bytes).map_err(invalid)?;
        let n = i.manifests.len();
        check_count(("index", "entries"), digest, n, MAX_INDEX_ENTRIES)?;
        return Ok(Document::Index(i));
    }
    if is_manifest(media_type) {
        let m: Manifest = serde_json::from_slice(bytes).map_err(invalid)?;
        check_count(("manifest", "layers"), digest, m.layers.len(), MAX_LAYERS)?;
        return Ok(Document::Manifest(m));
    }
    Err(ManifestError::Unsupported {
        media_type: media_type.into(),
        digest: digest.into(),
    })
}

pub fn parse_config(digest: &str, bytes: &[u8]) -> Result<ConfigFile, ManifestError> {
    check_size("config", digest, bytes.len())?;
    serde_json::from_slice(bytes).map_err(|e| ManifestError::Invalid {
        what: "config",
        digest: digest.into(),
        message: e.to_string(),
    })
}

/// uid / username from a config `User` ("1002", "www-data", "1003:1004", "www-data:1004").
pub fn split_user(user: &str) -> (Option<i64>, String) {
    let u = user.split(':').next().unwrap_or("");
    if u.is_empty() {
        return (None, String::new());
    }
    match u.parse::<i64>() {
        Ok(n) if u.chars().all(|c| c.is_ascii_digit()) => (Some(n), String::new()),
        _ => (None, u.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_sniffing() {
        let m = "application/vnd.oci.image.manifest.v1+json; charset=utf-8";
        assert_eq!(sniff_media_type(m, b"{}"), OCI_MANIFEST);
        let list = br#"{"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json"}"#;
        assert_eq!(sniff_media_type("application/json", list), DOCKER_LIST);
        let s1 = br#"{"schemaVersion":1,"signatures":[]}"#;
        assert_eq!(sniff_media_type("text/plain", s1), DOCKER_SCHEMA1_SIGNED);
        assert_eq!(
            sniff_media_type("", br#"{"schemaVersion":1,"fsLayers":[]}"#),
            DOCKER_SCHEMA1
        );
        assert_eq!(
            sniff_media_type("", br#"{"schemaVersion":2,"manifests":[]}"#),
            OCI_INDEX
        );
        assert_eq!(
            sniff_media_type("", br#"{"schemaVersion":2,"layers":[]}"#),
            OCI_MANIFEST
        );
        assert_eq!(
            sniff_media_type("application/x-odd", b"not json"),
            "application/x-odd"
        );
    }

    #[test]
    fn digests() {
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(sha256_digest(b""), empty);
        assert_eq!(digest_of("sha256", b"").as_deref(), Some(empty));
        assert!(digest_of("sha512", b"")
            .unwrap()
            .starts_with("sha512:cf83e135"));
        assert_eq!(digest_of("md5", b""), None);
    }

    #[test]
    fn users() {
        assert_eq!(split_user("1002"), (Some(1002), String::new()));
        assert_eq!(split_user("www-data"), (None, "www-data".into()));
        assert_eq!(split_user("1003:1004"), (Some(1003), String::new()));
        assert_eq!(split_user("www-data:1004"), (None, "www-data".into()));
        assert_eq!(split_user(""), (None, String::new()));
        assert_eq!(split_user("0"), (Some(0), String::new()));
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff_media_type(DOCKER_LIST, b"{}"), DOCKER_LIST);
        assert_eq!(
            sniff_media_type("application/json", br#"{"schemaVersion":1,"fsLayers":[]}"#),
            DOCKER_SCHEMA1
        );
        assert_eq!(
            sniff_media_type(
                "application/octet-stream",
                br#"{"schemaVersion":2,"manifests":[]}"#
            ),
            OCI_INDEX
        );
        assert_eq!(
            sniff_media_type(
                "",
                br#"{"schemaVersion":2,"config":{"digest":"x","size":1},"layers":[]}"#
            ),
            OCI_MANIFEST
        );
    }

    #[test]
    fn schema1_refused_with_advice() {
        let e = parse(DOCKER_SCHEMA1_SIGNED, "sha256:x", b"{}").unwrap_err();
        assert!(e.to_string().contains("schema 1"));
    }

    #[test]
    fn too_large_refused() {
        let big = vec![b' '; (MAX_DOCUMENT_BYTES + 1) as usize];
        assert!(matches!(
            parse(OCI_MANIFEST, "sha256:x", &big),
            Err(ManifestError::TooLarge { .. })
        ));
        assert!(matches!(
            parse_config("sha256:x", &big),
            Err(ManifestError::TooLarge { .. })
        ));
    }

    /// A manifest of `n` layers (or an index of `n` entries) in compact JSON.
    fn many(kind: &str, n: usize) -> Vec<u8> {
        let d = r#"{"mediaType":"x","digest":"sha256:00","size":1}"#;
        let list = vec![d; n].join(",");
        match kind {
            "index" => format!(r#"{{"schemaVersion":2,"manifests":[{list}]}}"#),
            _ => format!(r#"{{"schemaVersion":2,"config":{d},"layers":[{list}]}}"#),
        }
        .into_bytes()
    }

    #[test]
    fn layer_and_entry_counts_are_limited() {
        assert!(parse(OCI_MANIFEST, "d", &many("manifest", MAX_LAYERS)).is_ok());
        assert!(parse(OCI_INDEX, "d", &many("index", MAX_INDEX_ENTRIES)).is_ok());
        let e = parse(OCI_MANIFEST, "d", &many("manifest", MAX_LAYERS + 1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "manifest d lists 1001 layers, more than the 1000 allowed"
        );
        let e = parse(DOCKER_LIST, "d", &many("index", 30_000)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "index d lists 30000 entries, more than the 1000 allowed"
        );
    }

    #[test]
    fn parses_index_and_manifest() {
        let idx = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a","size":1,"platform":{"os":"linux","architecture":"arm","variant":"v7"}}]}"#;
        let Document::Index(i) = parse(OCI_INDEX, "d", idx).unwrap() else {
            panic!()
        };
        assert_eq!(
            i.manifests[0]
                .platform
                .as_ref()
                .unwrap()
                .to_platform()
                .to_string(),
            "linux/arm/v7"
        );
        let m = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:c","size":2},"layers":[{"mediaType":"l","digest":"sha256:l","size":3}]}"#;
        let Document::Manifest(m) = parse(DOCKER_MANIFEST, "d", m).unwrap() else {
            panic!()
        };
        assert_eq!(m.layers.len(), 1);
        assert!(parse(OCI_MANIFEST, "d", b"not json").is_err());
        assert!(matches!(
            parse("text/html", "d", b"{}"),
            Err(ManifestError::Unsupported { .. })
        ));
    }
}
