//! cri-imaged: a Kubernetes CRI ImageService that pulls straight into containerd.

pub mod config;
pub mod containerd;
pub mod cri;
pub mod imagefs;
pub mod managed;
pub mod manifest;
pub mod metrics;
pub mod platform;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod select;
pub mod server;
pub mod store;
