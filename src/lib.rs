//! cri-imaged: a Kubernetes CRI ImageService that pulls straight into containerd.

pub mod config;
pub mod containerd;
pub mod imagefs;
pub mod manifest;
pub mod metrics;
pub mod platform;
pub mod reference;
pub mod store;
pub mod cri;
pub mod managed;
pub mod pull;
pub mod registry;
pub mod server;
