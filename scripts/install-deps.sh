#!/usr/bin/env bash
# Install the Debian 12 packages cri-imaged needs, only when something is
# missing. Safe to run again.
#
#   scripts/install-deps.sh          what running needs: containerd, protoc (build)
#   scripts/install-deps.sh --image  also what scripts/build-image.sh needs:
#                                    buildah, mmdebstrap, binutils (objcopy)
#   scripts/install-deps.sh --test   also what the tests need: docker-registry,
#                                    skopeo, promtool, htpasswd, the Go and Python
#                                    gRPC client toolchains, busybox-static, and
#                                    everything --image installs
#   scripts/install-deps.sh --fuzz   what scripts/fuzz.sh needs: cargo-afl and
#                                    the AFL++ it builds (make, cc)
#
# Packages are installed without starting their services (a temporary
# policy-rc.d denies every start), so nothing on the machine is started,
# stopped or killed by this script.
set -euo pipefail
TEST=0 IMAGE=0 FUZZ=0
case "${1:-}" in --test) TEST=1 IMAGE=1 ;; --image) IMAGE=1 ;; --fuzz) FUZZ=1 ;; esac
need=()
have() { command -v "$1" >/dev/null 2>&1; }
pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
have protoc     || need+=(protobuf-compiler)
have containerd || need+=(containerd)
have openssl    || need+=(openssl)
have mount      || need+=(mount)
if [ "$IMAGE" = 1 ]; then
  # scripts/build-image.sh and tests/image.sh (ctr run needs runc)
  have buildah    || need+=(buildah)
  have mmdebstrap || need+=(mmdebstrap)
  have objcopy    || need+=(binutils)
  have runc       || need+=(runc)
fi
if [ "$FUZZ" = 1 ]; then
  # cargo-afl builds AFL++ from its bundled sources with make and cc.
  have make || need+=(make)
fi
if [ "$TEST" = 1 ]; then
  # scripts/build-real-images.sh (the real-image corpus of the differential test)
  have zstd || need+=(zstd)
fi
if [ "$TEST" = 1 ]; then
  have docker-registry || need+=(docker-registry)
  have skopeo          || need+=(skopeo)
  have promtool        || need+=(prometheus)
  have htpasswd        || need+=(apache2-utils)
  have unzip           || need+=(unzip)
  have curl            || need+=(curl)
  have file            || need+=(file)
  # tests/real_clients.rs: grpc-go client from Debian's Go packages, grpcio in a venv
  have go                 || need+=(golang-go)
  have protoc-gen-go      || need+=(protoc-gen-go)
  have protoc-gen-go-grpc || need+=(protoc-gen-go-grpc)
  # grpc-go 1.33 over golang/protobuf 1.5 (the APIv2 shim), so that its codec
  # decodes the APIv2 messages protoc-gen-go 1.28 generates, as kubelet's does.
  pkg golang-google-grpc-dev                || need+=(golang-google-grpc-dev)
  pkg golang-github-golang-protobuf-1-5-dev || need+=(golang-github-golang-protobuf-1-5-dev)
  pkg golang-google-protobuf-dev            || need+=(golang-google-protobuf-dev)
  python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
  [ -x /bin/busybox ] && pkg busybox-static || need+=(busybox-static)
  # tests/host_service.rs: systemd-analyze verify, systemd-socket-activate
  have systemd-socket-activate || need+=(systemd)
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "install-deps: installing ${need[*]}" >&2
  # Deny service starts during the install (invoke-rc.d honours policy-rc.d);
  # an existing policy-rc.d is kept and restored.
  POLICY=/usr/sbin/policy-rc.d; BACKUP=""
  if [ -e "$POLICY" ]; then BACKUP="$(mktemp)"; $SUDO cp -p "$POLICY" "$BACKUP"; fi
  restore() { if [ -n "$BACKUP" ]; then $SUDO mv "$BACKUP" "$POLICY"; else $SUDO rm -f "$POLICY"; fi; }
  trap restore EXIT
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null; $SUDO chmod 0755 "$POLICY"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
have cargo || { echo "install-deps: cargo is missing: install Rust with rustup first" >&2; exit 1; }
# scripts/fuzz.sh: cargo-afl (coverage-guided fuzzing on stable Rust) and the
# AFL++ it builds once per rustc version (under ~/.local/share/afl.rs).
if [ "$FUZZ" = 1 ]; then
  have cargo-afl || cargo install --locked cargo-afl@0.18.2
  out="$(cargo afl config --build 2>&1)" || grep -q "already built" <<<"$out" ||
    { echo "$out" >&2; echo "install-deps: building AFL++ failed" >&2; exit 1; }
fi
