#!/usr/bin/env bash
# cri-imaged deployed the way users deploy it, on a one-node cluster on this
# machine: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a
# kubelet (v1.28.7) on loopback, containerd as the runtime, the container
# image built by scripts/build-image.sh, and the Helm chart in pod mode.
#
#   scripts/cluster-e2e.sh     # needs root; KUBE_BIN=DIR holding the four
#                              # kube binaries (default: PATH), crictl on PATH
#
# Skips (exit 0) when a binary is missing. The steps, each checked:
#   1. kubelet on containerd (runtime and image service); the node is Ready
#   2. helm install (pod mode, image from the test registry); the pod is Ready
#   3. kubelet restarted with --image-service-endpoint on the pod's socket;
#      the node is Ready again and the cri-imaged pod keeps running
#   4. a Deployment (3 replicas, imagePullPolicy Always) rolls out; its pulls
#      went through cri-imaged, containerd's own CRI pulled nothing
#   5. helm upgrade to a second build of the image while a crictl loop
#      (images, inspecti, pull) and a second Deployment's rollout run: the
#      new pod's image is pulled through the old pod, the socket is handed
#      over, 0 failed calls
#   6. Prometheus scrapes the pod (up == 1) and loads the chart's rules
#   7. kubelet back to containerd, helm uninstall: no socket, no file, no
#      process of cri-imaged left
# Every pod is hostNetwork; no CNI network is set up and nothing listens
# beyond 127.0.0.1 but cri-imaged's metrics if so configured (here 127.0.0.1).
# KEEP_WORK=1 keeps the work dir (logs of every component).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KB="${KUBE_BIN:-}"
bin() { if [ -n "$KB" ]; then echo "$KB/$1"; else command -v "$1" || true; fi; }
for t in kubelet kube-apiserver kube-controller-manager kube-scheduler; do
  [ -x "$(bin $t)" ] || { echo "cluster-e2e.sh: skipped: no $t (set KUBE_BIN=DIR or put it on PATH)"; exit 0; }
done
for t in crictl etcd; do
  command -v $t >/dev/null || { echo "cluster-e2e.sh: skipped: $t is not on PATH"; exit 0; }
done
[ "$(id -u)" = 0 ] || { echo "cluster-e2e.sh: needs root"; exit 1; }
bash "$REPO/scripts/install-deps.sh" --test >&2
command -v prometheus >/dev/null || { echo "cluster-e2e.sh: needs prometheus (Debian prometheus)"; exit 1; }
[ -x /usr/lib/cni/loopback ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containernetworking-plugins >/dev/null
[ -x "$REPO/.tools/bin/helm" ] && [ -x "$REPO/.tools/venv/bin/python" ] || bash "$REPO/scripts/install-tools.sh" >&2
HELM="$REPO/.tools/bin/helm"; KUBECTL="$REPO/.tools/bin/kubectl"
BUSYBOX=/bin/busybox
WORK="$(mktemp -d /tmp/cri-imaged-cluster.XXXXXX)"
# containerd refuses a HostToContainer mount (the chart's, of containerd's
# directories) whose source is on a private mount, as / is on this machine
# (no systemd); systemd nodes have / shared. The work dir is made a shared
# mount of its own, the host's / is left as it is.
mount --bind "$WORK" "$WORK" && mount --make-rshared "$WORK"
PY="$REPO/.tools/venv/bin/python"
source "$REPO/scripts/lib/local-env.sh"
NODE=e2e-node
SOCK=/run/cri-imaged/cri-imaged.sock
METRICS=127.0.0.1:9110
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)
declare -A SAVED
for s in "${SYSCTLS[@]}"; do SAVED[$s]="$(sysctl -n "$s")"; done
KPID=""
cleanup() {
  set +e
  [ -n "${LOOP_PID:-}" ] && kill "$LOOP_PID" 2>/dev/null
  [ -n "$KPID" ] && kill "$KPID" 2>/dev/null && wait "$KPID" 2>/dev/null
  # the pods' containers: stop them through containerd before it goes
  if [ -S "${CSOCK:-/nonexistent}" ]; then
    crictl --timeout 10s -r "unix://$CSOCK" rmp -fa >/dev/null 2>&1
  fi
  env_cleanup
  pkill -f "$WORK/containerd" 2>/dev/null
  # a pod killed with containerd leaves its socket; the directory goes if empty
  pgrep -f /usr/local/bin/cri-imaged >/dev/null || rm -f "$SOCK"
  rmdir /run/cri-imaged 2>/dev/null
  for s in "${SYSCTLS[@]}"; do sysctl -qw "$s=${SAVED[$s]}"; done
  grep -o " $WORK[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  [ -n "${KEEP_WORK:-}" ] && echo "work dir kept: $WORK" || rm -rf "$WORK"
  return 0
}
trap cleanup EXIT
trap "exit 1" INT TERM
step() { echo; echo "=== $*"; }
die() { echo "cluster-e2e.sh: FAILED: $*" >&2; exit 1; }
wait_for() { # wait_for SECONDS WHAT CMD...: retry CMD each second
  local n="$1" what="$2"; shift 2
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  die "$what (waited ${n}s)"
}

# --- control plane (scripts/lib/control-plane.sh) --------------------------------
source "$REPO/scripts/lib/control-plane.sh"
control_plane_up

# --- registry, images ----------------------------------------------------------
step "test registry and images"
start_registry e2e
R="$REG_e2e"
CERTS_D="$WORK/certs.d"
map_host "$CERTS_D" registry.k8s.io "$R"
map_host "$CERTS_D" "$R" "$R"
push_image "$R/pause:3.9" --busybox "$BUSYBOX" --entrypoint /bin/sleep --cmd infinity --seed pause >/dev/null
push_image "$R/e2e/app:v1" --busybox "$BUSYBOX" --cmd /bin/sh,-c,'echo app up; exec sleep 3600' --seed app >/dev/null
push_image "$R/e2e/web:v1" --busybox "$BUSYBOX" --cmd /bin/sh,-c,'echo web up; exec sleep 3600' --seed web >/dev/null
push_image "$R/e2e/loop:v1" --seed loop >/dev/null
bash "$REPO/scripts/build-image.sh" --push "$R/cri-imaged:e2e-1" --tag e2e-1 | tee "$WORK/image-1.out"
bash "$REPO/scripts/build-image.sh" --push "$R/cri-imaged:e2e-2" --tag e2e-2 --version e2e-2 \
  --binary "$REPO/target/release/cri-imaged" | tee "$WORK/image-2.out"
D1="$(sed -n 's/^pushed: .*@//p' "$WORK/image-1.out")"; D2="$(sed -n 's/^pushed: .*@//p' "$WORK/image-2.out")"
[ -n "$D1" ] && [ -n "$D2" ] && [ "$D1" != "$D2" ] || die "two builds with two digests ($D1, $D2)"

# --- containerd ----------------------------------------------------------------
CD="$WORK/containerd"; CSOCK="$CD/containerd.sock"
mkdir -p "$CD" "$WORK/cni"
cat >"$WORK/cni/10-lo.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "e2e-hostnetwork-only", "plugins": [{"type": "loopback"}]}
EOF
cat >"$CD/config.toml" <<EOF
version = 2
root = "$CD/root"
state = "$CD/state"
[grpc]
  address = "$CSOCK"
[ttrpc]
  address = "$CSOCK.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  disable_apparmor = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$WORK/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$CERTS_D"
EOF
containerd --config "$CD/config.toml" >"$CD/containerd.log" 2>&1 &
PIDS+=($!)
wait_for 30 "containerd" test -S "$CSOCK"
RT=(crictl --timeout 60s -r "unix://$CSOCK")

# --- kubelet -------------------------------------------------------------------
KPORT="$(free_port)"
# start_kubelet [IMAGE_ENDPOINT]: (re)start kubelet; empty = containerd's own image service
start_kubelet() {
  if [ -n "$KPID" ]; then kill "$KPID"; wait "$KPID" 2>/dev/null || true; fi
  local ise="${1:-}"
  kubelet_yaml "$WORK/kubelet.yaml" "$CSOCK" "$PKI/ca.crt" "$KPORT" "$ise"
  "$(bin kubelet)" --config "$WORK/kubelet.yaml" --kubeconfig "$WORK/node.kubeconfig" \
    --root-dir "$WORK/kubelet" --cert-dir "$WORK/kubelet/pki" --hostname-override "$NODE" \
    --pod-infra-container-image registry.k8s.io/pause:3.9 --v=2 >>"$WORK/kubelet.log" 2>&1 &
  KPID=$!
  echo "kubelet (pid $KPID) image service: ${ise:-containerd CRI, the runtime}"
}
node_ready() {
  [ "$("${K[@]}" get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
show() { echo "\$ kubectl get nodes,ds,deploy,pods -A -o wide"; "${K[@]}" get nodes,ds,deploy,pods -A -o wide; }

step "1. kubelet $("$(bin kubelet)" --version) on containerd $(containerd --version | cut -d' ' -f3) (runtime and image service)"
start_kubelet ""
wait_for 120 "node $NODE Ready" node_ready
"${K[@]}" get nodes -o wide

# --- 2. helm install (pod mode) ------------------------------------------------
step "2. helm install charts/cri-imaged (pod mode, $R/cri-imaged:e2e-1)"
VALUES=(--set mode=pod --set image.repository="$R/cri-imaged"
  --set config.containerd_address="$CSOCK" --set config.containerd_root="$CD/root"
  --set config.registry_config_path="$CERTS_D" --set config.metrics_address="$METRICS"
  --set config.log_level=info)
"$HELM" install cri-imaged "$REPO/charts/cri-imaged" -n kube-system "${VALUES[@]}" --set image.tag=e2e-1 --wait --timeout 5m
"${K[@]}" -n kube-system rollout status ds/cri-imaged --timeout 5m
show
POD1="$("${K[@]}" -n kube-system get pods -l app.kubernetes.io/name=cri-imaged -o jsonpath='{.items[0].metadata.name}')"
[ -S "$SOCK" ] || die "no socket at $SOCK"
echo "pod $POD1 Ready; socket $SOCK served: $(crictl --image-endpoint "unix://$SOCK" imagefsinfo | grep -c mountpoint) image filesystem"

# --- 3. kubelet switched over --------------------------------------------------
step "3. kubelet restarted with --image-service-endpoint unix://$SOCK"
start_kubelet "unix://$SOCK"
sleep 5
wait_for 120 "node $NODE Ready again" node_ready
RESTARTS0="$("${K[@]}" -n kube-system get pod "$POD1" -o jsonpath='{.status.containerStatuses[0].restartCount}')"
sleep 15
[ "$("${K[@]}" -n kube-system get pod "$POD1" -o jsonpath='{.status.containerStatuses[0].ready}')" = true ] ||
  die "the cri-imaged pod is not Ready after the switch"
[ "$("${K[@]}" -n kube-system get pod "$POD1" -o jsonpath='{.status.containerStatuses[0].restartCount}')" = "$RESTARTS0" ] ||
  die "the cri-imaged pod restarted after the switch"
grep -q "imageServiceEndpoint: unix://$SOCK" "$WORK/kubelet.yaml"
show
echo "kubelet's calls to cri-imaged so far:"
curl -s "http://$METRICS/metrics" | grep -E '^cri_imaged_grpc_requests_total' | sed 's/^/   /'
grep -qE '^cri_imaged_grpc_requests_total\{code="OK",method="ImageFsInfo"\} [1-9]' <<<"$(curl -s "http://$METRICS/metrics")" ||
  die "kubelet did not call cri-imaged's ImageFsInfo"

# --- 4. a Deployment through cri-imaged ----------------------------------------
deployment() { # deployment NAME IMAGE
  cat <<EOF | "${K[@]}" apply -f -
apiVersion: apps/v1
kind: Deployment
metadata: {name: $1, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: $1}}
  template:
    metadata: {labels: {app: $1}}
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 1
      containers:
      - name: $1
        image: $2
        imagePullPolicy: Always
EOF
}
step "4. Deployment app (3 replicas, $R/e2e/app:v1, imagePullPolicy Always)"
PULLS0="$(curl -s "http://$METRICS/metrics" | awk '/^cri_imaged_pulls_total/ { s += $2 } END { print s + 0 }')"
deployment app "$R/e2e/app:v1"
"${K[@]}" rollout status deploy/app --timeout 5m
show
PULLS1="$(curl -s "http://$METRICS/metrics" | awk '/^cri_imaged_pulls_total/ { s += $2 } END { print s + 0 }')"
echo "cri_imaged_pulls_total: $PULLS0 -> $PULLS1"
[ "$PULLS1" -ge $((PULLS0 + 3)) ] || die "kubelet's 3 pulls (imagePullPolicy Always) did not reach cri-imaged"
if grep -E 'PullImage \\?"[^"]*e2e/app' "$CD/containerd.log"; then die "containerd's own CRI pulled e2e/app"; fi
echo "containerd's log has no CRI PullImage of e2e/app (its own pulls: $(grep -cE 'PullImage \\?"' "$CD/containerd.log" || true), all before the switch)"

# --- 5. rolling upgrade under load ----------------------------------------------
step "5. helm upgrade to $R/cri-imaged:e2e-2 while a crictl loop and Deployment web roll"
OLD_LOG="$(ls /var/log/pods/kube-system_"$POD1"_*/cri-imaged/*.log | head -1)"
tail -n 0 -F "$OLD_LOG" >"$WORK/old-pod.log" 2>/dev/null &
PIDS+=($!)
# The loop: images, inspecti and pull, in turn, each a fresh crictl process.
cat >"$WORK/loop.sh" <<EOF
#!/bin/bash
C=(crictl --timeout 30s --image-endpoint unix://$SOCK)
n=0; f=0
while [ ! -e "$WORK/loop.stop" ]; do
  for a in "images" "inspecti $R/e2e/app:v1" "pull $R/e2e/loop:v1"; do
    n=\$((n + 1))
    if ! out=\$("\${C[@]}" \$a 2>&1 >/dev/null); then f=\$((f + 1)); echo "\$(date +%T.%N) FAILED: crictl \$a: \$out" >>"$WORK/loop.failures"; fi
  done
  echo "\$n \$f" >"$WORK/loop.count"
done
EOF
chmod +x "$WORK/loop.sh"
"$WORK/loop.sh" & LOOP_PID=$!
sleep 3
"$HELM" upgrade cri-imaged "$REPO/charts/cri-imaged" -n kube-system "${VALUES[@]}" --set image.tag=e2e-2 &
UP=$!
deployment web "$R/e2e/web:v1"
wait "$UP" || die "helm upgrade failed"
"${K[@]}" -n kube-system rollout status ds/cri-imaged --timeout 5m
"${K[@]}" rollout status deploy/web --timeout 5m
sleep 5
touch "$WORK/loop.stop"; wait "$LOOP_PID"; LOOP_PID=""
read -r CALLS FAILED <"$WORK/loop.count"
show
POD2="$("${K[@]}" -n kube-system get pods -l app.kubernetes.io/name=cri-imaged -o jsonpath='{.items[0].metadata.name}')"
IMG2="$("${K[@]}" -n kube-system get pod "$POD2" -o jsonpath='{.status.containerStatuses[0].imageID}')"
echo "new pod $POD2 runs $IMG2"
[ "$POD2" != "$POD1" ] && [[ "$IMG2" == *"$D2"* || "$("${K[@]}" -n kube-system get pod "$POD2" -o jsonpath='{.spec.containers[0].image}')" == *e2e-2 ]] ||
  die "the DaemonSet did not roll to e2e-2"
echo "the old pod's log on the new pod's image:"
grep -E 'cri-imaged:e2e-2' "$WORK/old-pod.log" | cut -c1-300 | head -5
grep -qE 'PullImage.*cri-imaged:e2e-2|cri-imaged:e2e-2.*(pull|success)' "$WORK/old-pod.log" ||
  die "the old pod did not pull the new pod's image"
NEW_LOG="$(ls /var/log/pods/kube-system_"$POD2"_*/cri-imaged/*.log | head -1)"
echo "the new pod's log on the socket:"
grep -E 'socket_takeover|taking it over|taken over' "$NEW_LOG" | cut -c1-300 | head -5
grep -q 'socket taken over' "$NEW_LOG" || die "the new pod did not take the socket over"
echo "crictl loop during the upgrade: $CALLS calls, $FAILED failed"
[ -f "$WORK/loop.failures" ] && cat "$WORK/loop.failures"
[ "$CALLS" -gt 0 ] && [ "$FAILED" = 0 ] || die "calls failed during the upgrade"
"${K[@]}" get deploy app web

# --- 6. Prometheus -------------------------------------------------------------
step "6. Prometheus scrapes cri-imaged and loads the chart's rules"
"$HELM" template cri-imaged "$REPO/charts/cri-imaged" -n kube-system "${VALUES[@]}" --set image.tag=e2e-2 \
  --set prometheusRule.enabled=true --show-only templates/prometheusrule.yaml >"$WORK/prometheusrule.yaml"
"$PY" - "$WORK/prometheusrule.yaml" "$WORK/rules.yaml" <<'PY'
import sys, json, yaml
d = yaml.safe_load(open(sys.argv[1]))
json.dump(d["spec"], open(sys.argv[2], "w"))
PY
PPORT="$(free_port)"
cat >"$WORK/prometheus.yml" <<EOF
global: {scrape_interval: 2s, evaluation_interval: 2s}
rule_files: ["$WORK/rules.yaml"]
scrape_configs:
- job_name: cri-imaged
  static_configs: [{targets: ["$METRICS"]}]
EOF
promtool check config "$WORK/prometheus.yml"
prometheus --config.file "$WORK/prometheus.yml" --storage.tsdb.path "$WORK/prometheus" \
  --web.listen-address "127.0.0.1:$PPORT" >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
up_is_1() { grep -q '"value":\[[0-9.]*,"1"\]' <<<"$(curl -sf "http://127.0.0.1:$PPORT/api/v1/query?query=up%7Bjob%3D%22cri-imaged%22%7D")"; }
wait_for 60 "Prometheus up{job=cri-imaged} == 1" up_is_1
curl -s "http://127.0.0.1:$PPORT/api/v1/query?query=up%7Bjob%3D%22cri-imaged%22%7D"; echo
curl -s "http://127.0.0.1:$PPORT/api/v1/rules" | python3 -c '
import json, sys
g = json.load(sys.stdin)["data"]["groups"]
assert g, "no rule group loaded"
for x in g:
    print("rule group", x["name"], "loaded:", len(x["rules"]), "rules, health:", sorted({r["health"] for r in x["rules"]}))
    assert all(r["health"] != "err" for r in x["rules"]), [r for r in x["rules"] if r["health"] == "err"]'
curl -s "http://127.0.0.1:$PPORT/api/v1/query?query=cri_imaged_pulls_total" | head -c 400; echo

# --- 7. back to containerd, uninstall ------------------------------------------
step "7. kubelet back to containerd's image service, helm uninstall"
start_kubelet ""
sleep 5
wait_for 120 "node $NODE Ready on containerd's image service" node_ready
"$HELM" uninstall cri-imaged -n kube-system --wait --timeout 3m
wait_for 120 "the cri-imaged pod gone" bash -c "! '${K[0]}' --kubeconfig '$KUBECONFIG' -n kube-system get pods -l app.kubernetes.io/name=cri-imaged -o name | grep -q ."
sleep 3
show
left="$(pgrep -af '/usr/local/bin/cri-imaged' || true)"
[ -z "$left" ] || die "cri-imaged processes left: $left"
[ ! -e "$SOCK" ] || die "socket $SOCK left"
files="$(find /run/cri-imaged -mindepth 1 2>/dev/null || true)"
[ -z "$files" ] || die "files left in /run/cri-imaged: $files"
echo "no cri-imaged process, no socket, /run/cri-imaged empty"
# New pods pull through containerd's own CRI again (imagePullPolicy Always).
N0="$(grep -cE 'PullImage \\?"[^"]*e2e/app' "$CD/containerd.log" || true)"
"${K[@]}" scale deploy/app --replicas 4 && "${K[@]}" rollout status deploy/app --timeout 2m
N1="$(grep -cE 'PullImage \\?"[^"]*e2e/app' "$CD/containerd.log" || true)"
echo "containerd's CRI PullImage of e2e/app after the switch back: $N0 -> $N1"
[ "$N1" -gt "$N0" ] || die "the new replica was not pulled by containerd's own CRI"
"${K[@]}" get deploy app web
echo "cluster-e2e.sh: all passed"
