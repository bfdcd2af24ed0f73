//! Domain errors -> tonic::Status, in one place. Messages are written for a
//! node operator; a registry that cannot be reached gives a message starting
//! with `RegistryUnavailable` (kubelet turns that into its reason).

use tonic::{Code, Status};

use crate::containerd::ContainerdError;
use crate::pull::PullError;
use crate::reference::ReferenceError;
use crate::registry::RegistryError;
use crate::store::{ResolveError, StoreError};

pub fn reference(e: &ReferenceError) -> Status {
    Status::invalid_argument(e.to_string())
}

pub fn containerd(e: &ContainerdError) -> Status {
    let code = match e {
        ContainerdError::Unavailable { .. } => Code::Unavailable,
        ContainerdError::NotFound(_) => Code::NotFound,
        ContainerdError::AlreadyExists(_) => Code::AlreadyExists,
        ContainerdError::NoSpace(_) => Code::ResourceExhausted,
        ContainerdError::DigestMismatch(_) => Code::DataLoss,
        ContainerdError::Other(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}

pub fn store(e: &StoreError) -> Status {
    match e {
        StoreError::Containerd(c) => containerd(c),
        StoreError::NotSynced(_) => Status::unavailable(e.to_string()),
    }
}

pub fn resolve(e: &ResolveError) -> Status {
    match e {
        ResolveError::Reference(r) => reference(r),
        ResolveError::Ambiguous { .. } => Status::invalid_argument(e.to_string()),
        ResolveError::Store(s) => store(s),
    }
}

pub fn registry(e: &RegistryError) -> Status {
    let code = match e {
        RegistryError::NotFound(_) => Code::NotFound,
        RegistryError::Unauthorized(_) => Code::Unauthenticated,
        RegistryError::Forbidden(_) => Code::PermissionDenied,
        RegistryError::Unavailable(_) => Code::Unavailable,
        RegistryError::TooLarge(_) => Code::FailedPrecondition,
        RegistryError::Schema1(_) => Code::FailedPrecondition,
        RegistryError::DigestMismatch(_) => Code::DataLoss,
        RegistryError::BadCredentials(_) => Code::InvalidArgument,
        RegistryError::Protocol(_) => Code::Unavailable,
        RegistryError::Tls(_) => Code::Unavailable,
    };
    let msg = e.to_string();
    // kubelet keys its reason off this prefix.
    let msg = if code == Code::Unavailable && !msg.starts_with("RegistryUnavailable") {
        format!("RegistryUnavailable: {msg}")
    } else {
        msg
    };
    Status::new(code, msg)
}

pub fn pull(image: &str, e: &PullError) -> Status {
    let image: String = image.chars().take(256).collect();
    let (code, msg) = match e {
        PullError::Reference(r) => return reference(r),
        PullError::Registry(r) => {
            let s = registry(r);
            return Status::new(s.code(), with_image(s.message(), &image));
        }
        PullError::Manifest(m) => (
            match m {
                crate::manifest::ManifestError::Schema1(_) => Code::FailedPrecondition,
                crate::manifest::ManifestError::TooLarge { .. } => Code::FailedPrecondition,
                _ => Code::FailedPrecondition,
            },
            e.to_string(),
        ),
        PullError::Platform(_) => (Code::NotFound, e.to_string()),
        PullError::Containerd(c) => {
            let s = containerd(c);
            return Status::new(s.code(), with_image(s.message(), &image));
        }
        PullError::Stalled { .. } => (Code::Unavailable, e.to_string()),
        PullError::DigestMismatch(_) => (Code::DataLoss, e.to_string()),
        PullError::LayerCount(..) => (Code::FailedPrecondition, e.to_string()),
        PullError::LayerLimit(_) | PullError::NoSpace(_) => {
            (Code::ResourceExhausted, e.to_string())
        }
        PullError::BadLayer(_) => (Code::InvalidArgument, e.to_string()),
        PullError::Canceled => (Code::Cancelled, e.to_string()),
        PullError::Internal(_) => (Code::Internal, e.to_string()),
    };
    Status::new(code, with_image(&msg, &image))
}

/// "<message> (pulling <image>)", keeping a leading RegistryUnavailable prefix first.
fn with_image(msg: &str, image: &str) -> String {
    format!("{msg} (pulling {image:?})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_unavailable_prefix() {
        let s = registry(&RegistryError::Unavailable(
            "127.0.0.1:1: connection refused".into(),
        ));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(
            s.message().starts_with("RegistryUnavailable"),
            "{}",
            s.message()
        );
        let s = registry(&RegistryError::Protocol("too many redirects".into()));
        assert!(
            s.message().starts_with("RegistryUnavailable"),
            "{}",
            s.message()
        );
    }

    #[test]
    fn pull_codes() {
        let cases: Vec<(PullError, Code)> = vec![
            (RegistryError::NotFound("x".into()).into(), Code::NotFound),
            (
                RegistryError::Unauthorized("x".into()).into(),
                Code::Unauthenticated,
            ),
            (
                RegistryError::Forbidden("x".into()).into(),
                Code::PermissionDenied,
            ),
            (
                RegistryError::Unavailable("x".into()).into(),
                Code::Unavailable,
            ),
            (PullError::DigestMismatch("x".into()), Code::DataLoss),
            (
                ContainerdError::NoSpace("no space left on device".into()).into(),
                Code::ResourceExhausted,
            ),
            (
                crate::platform::PlatformError::NoMatch {
                    wanted: "linux/amd64".into(),
                    offered: "linux/arm64".into(),
                }
                .into(),
                Code::NotFound,
            ),
            (
                crate::manifest::ManifestError::Schema1("d".into()).into(),
                Code::FailedPrecondition,
            ),
            (PullError::Canceled, Code::Cancelled),
            (ReferenceError::Empty.into(), Code::InvalidArgument),
            (PullError::NoSpace("x".into()), Code::ResourceExhausted),
            (PullError::LayerLimit("x".into()), Code::ResourceExhausted),
            (PullError::BadLayer("x".into()), Code::InvalidArgument),
        ];
        for (e, code) in cases {
            let s = pull("busybox", &e);
            assert_eq!(s.code(), code, "{e}");
            assert!(!s.message().is_empty());
        }
        let s = pull("busybox", &RegistryError::Unavailable("down".into()).into());
        assert!(
            s.message().starts_with("RegistryUnavailable"),
            "{}",
            s.message()
        );
    }
}
