# Shared by scripts/critest.sh and scripts/kubelet-e2e.sh (source it): a
# private docker-registry on loopback, and cri-imaged on its own managed
# containerd, all under one work dir, all stopped by `env_cleanup`. Nothing
# here touches processes it did not start.
set -euo pipefail
: "${WORK:?set WORK to a scratch directory}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PIDS=()

env_cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  # overlay mounts the managed containerd left under WORK
  grep -o " $WORK[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done || true
  return 0
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_registry NAME [USER PASS] -> sets REG_<NAME>=127.0.0.1:PORT
start_registry() {
  local name="$1" dir="$WORK/registry-$1" port auth=""
  port="$(free_port)"
  mkdir -p "$dir"
  if [ $# -ge 3 ]; then
    htpasswd -Bbn "$2" "$3" >"$dir/htpasswd"
    auth=$'auth:\n  htpasswd:\n    realm: local\n    path: '"$dir/htpasswd"
  fi
  cat >"$dir/config.yml" <<CFG
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
  secret: local-secret
$auth
CFG
  docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/v2/" && break
    sleep 0.1
  done
  printf -v "REG_$name" '%s' "127.0.0.1:$port"
}

# map_host CERTS_D HOST REGISTRY_ADDR: send HOST to the local registry (plain http)
map_host() {
  mkdir -p "$1/$2"
  cat >"$1/$2/hosts.toml" <<TOML
server = "http://$3"
[host."http://$3"]
  capabilities = ["pull", "resolve"]
TOML
}

# push_image DEST [make-image.py args...]: prints the manifest digest
push_image() {
  python3 "$REPO/scripts/lib/make-image.py" --dest "$@"
}

# start_cri_imaged BIN -> CRI_SOCK, CONTAINERD_SOCK (managed containerd under WORK;
# ready when `BIN health` gets an ImageFsInfo answer, so crictl is not needed;
# CONTAINERD_VERSION=1.7|2.1 picks one of scripts/containerd-versions.sh)
start_cri_imaged() {
  local bin="$1"; shift
  CERTS_D="$WORK/certs.d"
  CRI_SOCK="$WORK/cri-imaged.sock"
  CONTAINERD_SOCK="$WORK/containerd/containerd.sock"
  mkdir -p "$CERTS_D"
  METRICS_ADDR="127.0.0.1:$(free_port)"
  local cbin=containerd
  if [ -n "${CONTAINERD_VERSION:-}" ]; then cbin="$(bash "$REPO/scripts/containerd-versions.sh" path "$CONTAINERD_VERSION")"; fi
  "$bin" serve --managed-containerd "$WORK/containerd" --containerd-binary "$cbin" --registry-config-path "$CERTS_D" \
    --listen "$CRI_SOCK" --metrics-address "$METRICS_ADDR" "$@" >"$WORK/cri-imaged.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 300); do
    [ -S "$CRI_SOCK" ] && [ -S "$CONTAINERD_SOCK" ] && "$bin" health --socket "$CRI_SOCK" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "cri-imaged did not start; log:" >&2; tail -30 "$WORK/cri-imaged.log" >&2; return 1
}
