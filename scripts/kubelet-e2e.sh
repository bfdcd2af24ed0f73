#!/usr/bin/env bash
# A standalone kubelet (no API server) with containerd as its runtime and
# cri-imaged as its image service: a static pod whose images cri-imaged pulls
# reaches Running, kubelet's imagefs stats come from cri-imaged's ImageFsInfo,
# and kubelet's image GC removes an unused image through cri-imaged.
#
#   scripts/kubelet-e2e.sh        # needs root, kubelet and crictl on PATH
#
# Skips (exit 0) when no kubelet binary is found (KUBELET=/path overrides).
# Everything runs on loopback under a temp dir: a private docker-registry, a
# managed containerd (CRI plugin on, cgroupfs, restrict_oom_score_adj) and
# cri-imaged. registry.k8s.io (the sandbox image) and the app images are
# served from the local registry; the images are a static busybox.
# kubelet changes three sysctls at start; they are restored on exit.
# Image GC runs every 5 minutes in kubelet, so the last step waits up to 6.
set -euo pipefail
KUBELET="${KUBELET:-$(command -v kubelet || true)}"
[ -x "${KUBELET:-}" ] || { echo "kubelet-e2e.sh: skipped: no kubelet binary (set KUBELET=/path or put kubelet on PATH)"; exit 0; }
command -v crictl >/dev/null || { echo "kubelet-e2e.sh: skipped: crictl is not on PATH"; exit 0; }
BUSYBOX="${BUSYBOX:-/bin/busybox}"
[ -x "$BUSYBOX" ] && file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' || {
  echo "kubelet-e2e.sh: needs a static busybox (Debian busybox-static) at \$BUSYBOX"; exit 1; }
WORK="$(mktemp -d /tmp/cri-imaged-kubelet.XXXXXX)"
source "$(dirname "${BASH_SOURCE[0]}")/lib/local-env.sh"
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)
declare -A SAVED
for s in "${SYSCTLS[@]}"; do SAVED[$s]="$(sysctl -n "$s")"; done
KEEP="${KEEP_WORK:-}"
cleanup() {
  env_cleanup
  for s in "${SYSCTLS[@]}"; do sysctl -qw "$s=${SAVED[$s]}" || true; done
  # containers kubelet started (runc state under the managed containerd)
  pkill -f "$WORK/containerd" 2>/dev/null || true
  grep -o " $WORK[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done || true
  [ -n "$KEEP" ] || rm -rf "$WORK" || true
  return 0
}
trap cleanup EXIT
BIN="${CRI_IMAGED_BIN:-}"
if [ -z "$BIN" ]; then (cd "$REPO" && cargo build --locked --release -q); BIN="$REPO/target/release/cri-imaged"; fi

start_registry e2e
start_cri_imaged "$BIN"
R="$REG_e2e"
map_host "$CERTS_D" registry.k8s.io "$R"
map_host "$CERTS_D" "$R" "$R"
push_image "$R/pause:3.6" --busybox "$BUSYBOX" --entrypoint /bin/sleep --cmd infinity --seed pause >/dev/null
push_image "$R/pause:3.9" --busybox "$BUSYBOX" --entrypoint /bin/sleep --cmd infinity --seed pause >/dev/null
push_image "$R/e2e/app:v1" --busybox "$BUSYBOX" --cmd /bin/sh,-c,'echo app up; exec sleep 3600' --seed app >/dev/null
push_image "$R/e2e/unused:v1" --busybox "$BUSYBOX" --seed unused >/dev/null
C=(crictl --timeout 60s --runtime-endpoint "unix://$CONTAINERD_SOCK" --image-endpoint "unix://$CRI_SOCK")
"${C[@]}" pull "$R/e2e/unused:v1" >/dev/null
echo "== pulled e2e/unused:v1 through cri-imaged (to be collected by kubelet's image GC)"

mkdir -p "$WORK/manifests" "$WORK/kubelet"
cat >"$WORK/manifests/app.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata: {name: e2e-app, namespace: default}
spec:
  hostNetwork: true
  containers:
  - name: app
    image: $R/e2e/app:v1
    imagePullPolicy: Always
YAML
cat >"$WORK/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: $WORK/manifests
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
imageServiceEndpoint: unix://$CRI_SOCK
cgroupDriver: cgroupfs
failSwapOn: false
oomScoreAdj: 0
readOnlyPort: 0
port: $(free_port)
healthzPort: $(free_port)
address: 127.0.0.1
healthzBindAddress: 127.0.0.1
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
imageMinimumGCAge: 1s
imageGCHighThresholdPercent: 1
imageGCLowThresholdPercent: 0
evictionHard: {memory.available: "1Mi"}
syncFrequency: 5s
fileCheckFrequency: 2s
resolvConf: ""
YAML
PORT="$(sed -n 's/^port: //p' "$WORK/kubelet.yaml")"
"$KUBELET" --config "$WORK/kubelet.yaml" --root-dir "$WORK/kubelet" --cert-dir "$WORK/kubelet/pki" \
  --hostname-override e2e-node --pod-infra-container-image registry.k8s.io/pause:3.6 --v=2 \
  >"$WORK/kubelet.log" 2>&1 &
KPID=$!; PIDS+=($KPID)
echo "== kubelet $("$KUBELET" --version) started (pid $KPID); log $WORK/kubelet.log"

running=""
for _ in $(seq 120); do
  kill -0 "$KPID" 2>/dev/null || { echo "kubelet exited:"; tail -30 "$WORK/kubelet.log"; exit 1; }
  if "${C[@]}" ps --name app --state running -q 2>/dev/null | grep -q .; then running=yes; break; fi
  sleep 1
done
[ -n "$running" ] || { echo "static pod did not reach Running"; grep -iE "error|fail" "$WORK/kubelet.log" | tail -30; exit 1; }
echo "== static pod e2e-app Running:"
"${C[@]}" pods
"${C[@]}" ps
echo "== who wrote its layers (cri-imaged's metrics):"
# One scrape, read twice: `curl | grep -q` fails under pipefail when grep
# stops reading early and curl gets SIGPIPE.
metrics=$(curl -s "http://$METRICS_ADDR/metrics")
grep -E '^cri_imaged_(layers_unpacked|layer_blobs_stored)_total' <<<"$metrics" || true
grep -qE '^cri_imaged_layers_unpacked_total\{unpacker="native"\} [1-9]' <<<"$metrics" ||
  { echo "no layer was unpacked natively: the pod did not run from cri-imaged's own unpack"; exit 1; }
echo "== the container sees both of its image's layers (the top layer's /etc/motd over the base's):"
CID="$("${C[@]}" ps --name app --state running -q | head -1)"
MOTD="$("${C[@]}" exec "$CID" cat /etc/motd)"
echo "   /etc/motd in the container: $MOTD"
[ "$MOTD" = "image app" ] || { echo "the container's /etc/motd is '$MOTD', not its top layer's"; exit 1; }
for m in 'cri_imaged_layers_staged_total [1-9]' 'cri_imaged_layer_blobs_stored_total\{via="blob_file"\} [1-9]'; do
  grep -qE "^$m" <<<"$metrics" ||
    { echo "expected metric $m (a layer staged ahead of its parent, a blob put in place as a blob file)"; exit 1; }
done
echo "   a layer was staged ahead of its parent's snapshot, and blobs went into the content store as blob files"
echo "== its image, as cri-imaged reports it:"
"${C[@]}" images | grep -E "IMAGE|e2e/app|pause"
grep -E "result=\"?success" "$WORK/cri-imaged.log" | grep -E "e2e/app|pause" | sed "s/^/   cri-imaged: /" | cut -c1-220 || true

echo "== kubelet's imageFs stats (summary API) vs cri-imaged's ImageFsInfo:"
for _ in $(seq 60); do
  S="$(curl -sk "https://127.0.0.1:$PORT/stats/summary" || true)"
  echo "$S" | python3 -c 'import json,sys; d=json.load(sys.stdin); f=d["node"]["runtime"]["imageFs"]; assert f.get("usedBytes",0)>0; print("   kubelet summary node.runtime.imageFs:", {k:f.get(k) for k in ("usedBytes","inodesUsed","capacityBytes","availableBytes")})' 2>/dev/null && break
  sleep 2
done
"${C[@]}" imagefsinfo | python3 -c 'import json,sys; s=json.load(sys.stdin)["status"]["imageFilesystems"][0]; print("   cri-imaged ImageFsInfo:", s["fsId"]["mountpoint"], "usedBytes", s["usedBytes"]["value"], "inodesUsed", s["inodesUsed"]["value"])'

echo "== waiting for kubelet's image GC to remove e2e/unused:v1 (GC period 5 min)"
gone=""
for _ in $(seq 400); do
  if ! "${C[@]}" images -q "$R/e2e/unused:v1" 2>/dev/null | grep -q .; then gone=yes; break; fi
  sleep 1
done
[ -n "$gone" ] || { echo "image GC did not remove the unused image"; grep -i "image_gc\|garbage" "$WORK/kubelet.log" | tail -20; exit 1; }
grep -iE "image_gc_manager|Removing image" "$WORK/kubelet.log" | tail -5 | sed 's/^/   /'
grep -E 'RemoveImage|image removed' "$WORK/cri-imaged.log" | tail -3 | sed 's/^/   /'
"${C[@]}" ps --name app --state running -q | grep -q . || { echo "app stopped running"; exit 1; }
echo "== images left:"; "${C[@]}" images
echo "kubelet-e2e.sh: all passed"
