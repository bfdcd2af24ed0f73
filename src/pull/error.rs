//! Why a pull failed, and the metric reason for it.

use std::sync::Arc;
use std::time::Duration;

use crate::containerd::ContainerdError;
use crate::manifest::ManifestError;
use crate::metrics::FailureReason;
use crate::platform::PlatformError;
use crate::reference::ReferenceError;
use crate::registry::RegistryError;
use crate::select::SelectError;

#[derive(Debug, thiserror::Error, Clone)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("{0}")]
    Registry(Arc<RegistryError>),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error("{0}")]
    Containerd(Arc<ContainerdError>),
    #[error("RegistryUnavailable: pull stalled: no bytes received for {} while downloading {digest} ({received} of {total} bytes); raise pull_progress_timeout if the registry is just slow", humantime::format_duration(*after))]
    Stalled {
        digest: String,
        after: Duration,
        received: u64,
        total: u64,
    },
    #[error("digest mismatch: {0}")]
    DigestMismatch(String),
    #[error("image {0}: the config lists {1} layer diff IDs but the manifest has {2} layers")]
    LayerCount(String, usize, usize),
    /// This node's disk (snapshot directory, spool) is full.
    #[error("{0}")]
    NoSpace(String),
    /// A layer past a hard limit (`limits:`): RESOURCE_EXHAUSTED.
    #[error("{0}")]
    LayerLimit(String),
    /// A layer that cannot be written as it is (bad names, too deep).
    #[error("{0}")]
    BadLayer(String),
    #[error("pull canceled before it finished")]
    Canceled,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<RegistryError> for PullError {
    fn from(e: RegistryError) -> Self {
        PullError::Registry(Arc::new(e))
    }
}

impl From<ContainerdError> for PullError {
    fn from(e: ContainerdError) -> Self {
        match e {
            ContainerdError::DigestMismatch(m) => PullError::DigestMismatch(m),
            e => PullError::Containerd(Arc::new(e)),
        }
    }
}

impl PullError {
    /// A local I/O failure (spool, snapshot directory) described by `message`:
    /// a full disk or quota is RESOURCE_EXHAUSTED like containerd's own, the
    /// rest is internal.
    pub(crate) fn local_io(errno: Option<i32>, message: String) -> PullError {
        match errno {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => PullError::NoSpace(message),
            _ => PullError::Internal(message),
        }
    }

    /// A failure a retry gains nothing from resuming (the layer is past a
    /// limit or malformed; the disk is full): what the pull wrote goes.
    pub fn nothing_to_resume(&self) -> bool {
        match self {
            PullError::LayerLimit(_) | PullError::BadLayer(_) | PullError::NoSpace(_) => true,
            PullError::Containerd(e) => matches!(**e, ContainerdError::NoSpace(_)),
            _ => false,
        }
    }

    /// The metric reason for this failure.
    pub fn reason(&self) -> FailureReason {
        match self {
            PullError::Registry(e) => match **e {
                RegistryError::NotFound(_) => FailureReason::NotFound,
                RegistryError::Unauthorized(_)
                | RegistryError::Forbidden(_)
                | RegistryError::BadCredentials(_) => FailureReason::Unauthorized,
                RegistryError::Unavailable(_) => FailureReason::RegistryUnavailable,
                RegistryError::DigestMismatch(_) => FailureReason::DigestMismatch,
                _ => FailureReason::Other,
            },
            PullError::Platform(_) => FailureReason::PlatformMismatch,
            PullError::Stalled { .. } => FailureReason::Stalled,
            PullError::NoSpace(_) => FailureReason::NoSpace,
            PullError::Canceled => FailureReason::Canceled,
            PullError::DigestMismatch(_) => FailureReason::DigestMismatch,
            PullError::Containerd(e) => match **e {
                ContainerdError::NoSpace(_) => FailureReason::NoSpace,
                _ => FailureReason::Other,
            },
            _ => FailureReason::Other,
        }
    }
}

/// Registry errors worth a resumed download.
pub(crate) fn retryable(e: &RegistryError) -> bool {
    matches!(
        e,
        RegistryError::Unavailable(_) | RegistryError::Protocol(_)
    )
}

impl From<SelectError<PullError>> for PullError {
    fn from(e: SelectError<PullError>) -> Self {
        match e {
            SelectError::Source(e) => e,
            SelectError::Manifest(e) => e.into(),
            SelectError::Platform(e) => e.into(),
        }
    }
}
