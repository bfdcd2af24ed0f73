#!/usr/bin/env bash
# Build the non-Rust CRI clients the integration tests drive (tests/real_clients.rs):
#   target/clients/venv            Python venv with grpcio (gRPC C-core) + stubs
#   target/clients/python-stubs    api_pb2*.py generated from proto/api.proto
#   target/clients/cri-goclient    grpc-go client built from Debian's Go packages
# Both are in the client class of kubelet and crictl: they put the socket path
# in :authority. Idempotent: rebuilds only what is missing or older than its
# sources. Needs: python3 (venv), protoc, golang-go, golang-google-grpc-dev,
# golang-github-golang-protobuf-1-5-dev, protoc-gen-go, protoc-gen-go-grpc
# (scripts/install-deps.sh --test).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$REPO/target/clients"
GRPCIO_VERSION=1.85.1   # grpcio and grpcio-tools, pinned together
mkdir -p "$OUT"

newer() { # newer TARGET SRC...: true when TARGET is missing or older than a SRC
  local t="$1"; shift
  [ -e "$t" ] || return 0
  for s in "$@"; do [ "$s" -nt "$t" ] && return 0; done
  return 1
}

# Python: venv + grpcio, stubs from the proto.
if [ ! -x "$OUT/venv/bin/python" ] || ! "$OUT/venv/bin/python" -c "import grpc, grpc_tools; assert grpc.__version__ == '$GRPCIO_VERSION'" 2>/dev/null; then
  rm -rf "$OUT/venv"
  python3 -m venv "$OUT/venv"
  "$OUT/venv/bin/pip" install -q --disable-pip-version-check "grpcio==$GRPCIO_VERSION" "grpcio-tools==$GRPCIO_VERSION"
fi
if newer "$OUT/python-stubs/api_pb2_grpc.py" "$REPO/proto/api.proto"; then
  rm -rf "$OUT/python-stubs"; mkdir -p "$OUT/python-stubs"
  "$OUT/venv/bin/python" -m grpc_tools.protoc -I "$REPO/proto" \
    --python_out="$OUT/python-stubs" --grpc_python_out="$OUT/python-stubs" api.proto
fi

# Go: GOPATH mode over Debian's /usr/share/gocode; no module download.
GOPATH_DIR="$OUT/gopath"
API_DIR="$GOPATH_DIR/src/k8s.io/cri-api/pkg/apis/runtime/v1"
if newer "$OUT/cri-goclient" "$REPO/proto/api.proto" "$REPO/tests/clients/go/main.go"; then
  rm -rf "$GOPATH_DIR"; mkdir -p "$API_DIR" "$GOPATH_DIR/src/criimaged.test/goclient"
  # api.proto's go_package is k8s.io/cri-api/pkg/apis/runtime/v1: kubelet's own import path.
  protoc -I "$REPO/proto" --go_out="$GOPATH_DIR/src" --go-grpc_out="$GOPATH_DIR/src" api.proto
  cp "$REPO/tests/clients/go/main.go" "$GOPATH_DIR/src/criimaged.test/goclient/"
  (cd "$GOPATH_DIR/src/criimaged.test/goclient" &&
    GO111MODULE=off GOPATH="$GOPATH_DIR:/usr/share/gocode" GOPROXY=off GOFLAGS= \
      go build -o "$OUT/cri-goclient" .)
fi
echo "build-test-clients: $OUT/venv (grpcio $GRPCIO_VERSION), $OUT/cri-goclient ($(go version | cut -d' ' -f3))"
