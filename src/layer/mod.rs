//! Layers applied natively: a verified, streaming decode of a layer blob
//! (compressed digest, decompression, diff ID) and a tar applier that writes
//! into a snapshot directory the way containerd's own applier does, without
//! ever creating, following or removing anything outside that directory.
//!
//! Plain blocking Rust on purpose: the pull pipeline runs it on blocking
//! threads, and the unit tests call it on a temporary directory.

mod apply;
mod decode;

pub use apply::{apply_tar, empty_dir, ApplyOptions, ApplyStats, Whiteouts};
pub use decode::{decode, Blob, Check, ChunkPool, Compression, Decoded, DecodedReader};
pub use limits::{Budget, Limits};

mod limits;

use std::path::PathBuf;

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer {what}: {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("layer stream: {0}")]
    Read(#[source] std::io::Error),
    #[error("layer tar entry {path:?}: {message}")]
    Entry { path: String, message: String },
    #[error("layer blob {expected}: the bytes hash to {actual}")]
    Digest { expected: String, actual: String },
    #[error("layer blob {digest}: {got} bytes where the manifest declares {want}")]
    Size { digest: String, got: u64, want: u64 },
    #[error("layer {digest} unpacks to diff ID {actual} but the image config expects {expected}")]
    DiffId {
        digest: String,
        expected: String,
        actual: String,
    },
    #[error("layer apply canceled")]
    Canceled,
    /// A hard limit (hostile or broken layer); nothing of it is kept.
    #[error("{message}")]
    Limit {
        message: String,
        setting: &'static str,
        limit: u64,
        /// Resource exhaustion (bytes, entries) rather than a malformed layer.
        exhausted: bool,
    },
}

impl LayerError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
        e: impl Into<std::io::Error>,
    ) -> Self {
        LayerError::Io {
            what,
            path: path.into(),
            source: e.into(),
        }
    }

    /// The OS error behind this, if any (ENOSPC maps to resource exhaustion).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            LayerError::Io { source, .. } | LayerError::Read(source) => source.raw_os_error(),
            _ => None,
        }
    }

    /// A malformed layer (bad names, too deep, too long, oversized headers):
    /// the image is at fault, not the node.
    pub fn is_malformed(&self) -> bool {
        match self {
            LayerError::Entry { .. } => true,
            LayerError::Limit { exhausted, .. } => !exhausted,
            LayerError::Io { source, .. } => source.raw_os_error() == Some(libc::ENAMETOOLONG),
            _ => false,
        }
    }

    /// A verification failure (the registry sent other bytes than the manifest names).
    pub fn is_mismatch(&self) -> bool {
        matches!(
            self,
            LayerError::Digest { .. } | LayerError::Size { .. } | LayerError::DiffId { .. }
        )
    }
}
