//! The server side of containerd's snapshots API, for the fake remote
//! snapshotter the tests serve as a containerd proxy plugin (containerd-client
//! builds only clients). The messages are containerd-client's own.
fn main() {
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(".containerd.types", "::containerd_client::types")
        .extern_path(
            ".containerd.services.snapshots.v1",
            "::containerd_client::services::v1::snapshots",
        )
        .compile_protos(
            &["proto/github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto"],
            &["proto"],
        )
        .expect("generate the snapshots service (needs protoc: Debian protobuf-compiler)");
}
