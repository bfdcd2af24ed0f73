#!/usr/bin/env bash
# Install the system packages cri-imaged builds and tests with (Debian 12),
# only when something is missing. Safe to run again.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have protoc          || need+=(protobuf-compiler)
have containerd      || need+=(containerd)
have docker-registry || need+=(docker-registry)
have skopeo          || need+=(skopeo)
have promtool        || need+=(prometheus)
have htpasswd        || need+=(apache2-utils)
have unzip           || need+=(unzip)
have openssl         || need+=(openssl)
have mount           || need+=(mount)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "install-deps: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The prometheus package starts a server on install; we only want promtool.
if have systemctl && systemctl is-active --quiet prometheus 2>/dev/null; then systemctl stop prometheus || true; fi
pkill -x prometheus 2>/dev/null || true
pkill -f "docker-registry serve /etc/docker/registry" 2>/dev/null || true
have cargo || { echo "install-deps: cargo is missing: install Rust with rustup first" >&2; exit 1; }
