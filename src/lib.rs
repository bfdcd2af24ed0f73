//! cri-imaged: a Kubernetes CRI ImageService that pulls straight into containerd.
//!
//! Public modules are the ones the binary, the integration tests and the
//! benchmark use; everything else is private so the compiler finds dead code.

pub mod config;
pub mod containerd;
mod cri;
pub mod health;
mod imagefs;
pub mod install;
pub mod layer;
pub mod managed;
pub mod manifest;
mod metrics;
mod platform;
mod pull;
pub mod reference;
pub mod registry;
pub mod select;
pub mod server;
mod store;
mod systemd;

/// Entry points for the fuzz targets (fuzz/) into otherwise private modules.
#[doc(hidden)]
pub mod fuzz_hooks {
    pub use crate::cri::fuzz_request as cri_request;
    pub use crate::platform::{select as platform_select, Matcher, Platform};
}
