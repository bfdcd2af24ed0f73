#!/usr/bin/env bash
# One command from a fresh Debian 12 machine with Rust: install what is
# missing, build, and run cri-imaged on an embedded (managed) containerd.
# Then: crictl --image-endpoint unix:///run/cri-imaged/cri-imaged.sock images
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash scripts/install-deps.sh
cargo build --locked --release
DIR="${CRI_IMAGED_STATE:-/var/lib/cri-imaged/containerd}"
mkdir -p "$DIR/certs.d"
exec "$REPO/target/release/cri-imaged" serve \
  --managed-containerd "$DIR" \
  --registry-config-path "${CRI_IMAGED_CERTS_D:-/etc/containerd/certs.d}" \
  --listen "${CRI_IMAGED_SOCKET:-/run/cri-imaged/cri-imaged.sock}" "$@"
