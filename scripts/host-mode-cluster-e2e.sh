#!/usr/bin/env bash
# The chart's host mode on a real node with a real systemd: the node (kubelet
# v1.28.7 and containerd, each a systemd unit) is a Debian bookworm machine
# booted by systemd-nspawn (scripts/lib/machine.sh); the control plane (etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler) runs on this host's
# loopback (scripts/lib/control-plane.sh). Steps, each checked:
#   1. the node is Ready with containerd as runtime and image service;
#   2. helm install (mode=host, the image built by scripts/build-image.sh): the
#      pod's init container installs the host service through the node's
#      systemd (nsenter -t 1 ... systemctl); the units are active, the pod Ready;
#   3. kubelet switched to the host socket (imageServiceEndpoint, restart):
#      the node is Ready, a Deployment's pulls go through cri-imaged;
#   4. a node reboot (`systemctl reboot` inside; nobody touches anything after
#      it): the node is Ready again, its pods run again (new sandboxes), and
#      kubelet's image calls after the boot were answered by the host service,
#      which systemd started from its socket before kubelet;
#   5. helm uninstall.
#
#   scripts/host-mode-cluster-e2e.sh   # root; KUBE_BIN=DIR or the kube binaries
#                                      # on PATH; crictl on PATH
#
# Skips (exit 0) when a binary is missing or nspawn cannot boot. The machine
# shares the host's network: pods are hostNetwork, kubelet's node address is
# the host's, nothing listens beyond 127.0.0.1 but cri-imaged's metrics
# (the chart's 0.0.0.0:9110). KEEP=1 keeps the work dir.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KB="${KUBE_BIN:-}"
bin() { if [ -n "$KB" ]; then echo "$KB/$1"; else command -v "$1" || true; fi; }
say() { echo; echo "=== $*"; }
step() { say "$@"; }
skip() { echo "host-mode-cluster-e2e.sh: skipped: $*"; exit 0; }
die() { echo "host-mode-cluster-e2e.sh: FAILED: $*" >&2; diagnose >&2; [ -z "${HOLD:-}" ] || sleep "$HOLD"; exit 1; }
diagnose() { # what to look at when a step fails
  set +e
  if [ -n "${K[*]:-}" ]; then
    echo "--- pods"; "${K[@]}" get pods -A -o wide
    echo "--- kube-system pod descriptions (events)"; "${K[@]}" -n kube-system describe pods | tail -40
  fi
  if [ -n "${IN[*]:-}" ]; then
    echo "--- the node's journal (kubelet errors, cri-imaged), pod logs"
    in_sh 'tail -n 5 /var/log/pods/*/*/*.log'
    in_sh 'journalctl -b --no-pager -u kubelet' | grep -E ' E[0-9]{4} ' | tail -15 | cut -c1-300
    in_sh 'journalctl -b --no-pager -u cri-imaged.service -u cri-imaged.socket' | tail -15 | cut -c1-300
  fi
}
wait_for() { # wait_for SECONDS WHAT CMD...: retry CMD each second
  local n="$1" what="$2"; shift 2
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  die "$what (waited ${n}s)"
}
[ "$(id -u)" = 0 ] || skip "needs root"
for t in kubelet kube-apiserver kube-controller-manager kube-scheduler; do
  [ -x "$(bin $t)" ] || skip "no $t (set KUBE_BIN=DIR or put it on PATH)"
done
for t in crictl etcd systemd-nspawn mmdebstrap buildah docker-registry; do
  command -v $t >/dev/null || skip "$t is not on PATH"
done
[ -x /usr/lib/cni/loopback ] || skip "no /usr/lib/cni/loopback (containernetworking-plugins)"
python3 -c 'import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 9110))' 2>/dev/null ||
  skip "port 9110 (the chart's metrics address) is in use on this host"
[ -x "$REPO/.tools/bin/helm" ] || bash "$REPO/scripts/install-tools.sh" >&2
HELM="$REPO/.tools/bin/helm"; KUBECTL="$REPO/.tools/bin/kubectl"

WORK="$(mktemp -d /var/tmp/cri-imaged-hmc.XXXXXX)"
TREE="$WORK/machine"
NODE=hm-node
SOCK=/run/cri-imaged/cri-imaged.sock
# shellcheck source=lib/local-env.sh
source "$REPO/scripts/lib/local-env.sh"
# shellcheck source=lib/machine.sh
source "$REPO/scripts/lib/machine.sh"
# shellcheck source=lib/control-plane.sh
source "$REPO/scripts/lib/control-plane.sh"
# kubelet sets these; the machine's /proc/sys is the host's.
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)
declare -A SAVED
for s in "${SYSCTLS[@]}"; do SAVED[$s]="$(sysctl -n "$s")"; done
cleanup() {
  local rc=$?
  set +e
  [ -n "${IN[*]}" ] && in_sh 'systemctl stop kubelet; crictl rmp -fa' >/dev/null 2>&1
  machine_stop
  env_cleanup
  for s in "${SYSCTLS[@]}"; do sysctl -qw "$s=${SAVED[$s]}"; done
  if [ "${KEEP:-}" = 1 ] || [ $rc != 0 ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap "exit 1" INT TERM

control_plane_up

step "registry, images (busybox apps, the cri-imaged image from scripts/build-image.sh)"
start_registry e2e
R="$REG_e2e"
push_image "$R/pause:3.9" --busybox /bin/busybox --entrypoint /bin/sleep --cmd infinity --seed pause >/dev/null
push_image "$R/e2e/app:v1" --busybox /bin/busybox --cmd /bin/sh,-c,'echo app up; exec sleep 3600' --seed app >/dev/null
bash "$REPO/scripts/build-image.sh" --push "$R/cri-imaged:hm-1" --tag hm-1 | tail -4

step "the node's root: kubelet, containerd, crictl, certificates, units"
machine_root
echo "$NODE" >"$TREE/etc/hostname"
install -m 0755 "$(bin kubelet)" "$TREE/usr/local/bin/kubelet"
install -m 0755 "$(command -v crictl)" "$TREE/usr/local/bin/crictl"
install -D -m 0755 /usr/lib/cni/loopback "$TREE/opt/cni/bin/loopback"
mkdir -p "$TREE/etc/cni/net.d" "$TREE/etc/kubernetes/pki" "$TREE/etc/containerd/certs.d"
echo '{"cniVersion": "0.4.0", "name": "hostnetwork-only", "plugins": [{"type": "loopback"}]}' \
  >"$TREE/etc/cni/net.d/10-lo.conflist"
map_host "$TREE/etc/containerd/certs.d" registry.k8s.io "$R"
map_host "$TREE/etc/containerd/certs.d" "$R" "$R"
# restrict_oom_score_adj: this host's processes lack CAP_SYS_RESOURCE (no
# oom_score_adj below 0), so neither does the machine.
cat >"$TREE/etc/containerd/config.toml" <<'EOF'
version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  disable_apparmor = true
  restrict_oom_score_adj = true
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
EOF
cat >"$TREE/etc/crictl.yaml" <<'EOF'
runtime-endpoint: unix:///run/containerd/containerd.sock
image-endpoint: unix:///run/containerd/containerd.sock
timeout: 60
EOF
cp "$PKI/ca.crt" "$PKI/node.crt" "$PKI/node.key" "$TREE/etc/kubernetes/pki/"
cat >"$TREE/etc/kubernetes/node.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "https://127.0.0.1:$APORT", certificate-authority: /etc/kubernetes/pki/ca.crt}}]
users: [{name: node, user: {client-certificate: /etc/kubernetes/pki/node.crt, client-key: /etc/kubernetes/pki/node.key}}]
contexts: [{name: e2e, context: {cluster: e2e, user: node}}]
current-context: e2e
EOF
KPORT="$(free_port)"
kubelet_config() { # kubelet_config [IMAGE_ENDPOINT]
  kubelet_yaml "$TREE/etc/kubernetes/kubelet.yaml" /run/containerd/containerd.sock \
    /etc/kubernetes/pki/ca.crt "$KPORT" "${1:-}"
}
kubelet_config ""
# What a node in a container needs and a real node has: /dev/kmsg (kubelet's
# OOM watcher), writable cgroup controllers (nspawn mounts them read-only on a
# cgroup v1 host) and /proc/sys (kubelet's sysctls). Before containerd.
cat >"$TREE/etc/systemd/system/node-prep.service" <<'EOF'
[Unit]
Description=Make this nspawn machine look like a node to kubelet
DefaultDependencies=no
Before=containerd.service kubelet.service
After=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'ln -sf /dev/console /dev/kmsg; for m in /sys/fs/cgroup/*/ /proc/sys; do mount -o remount,bind,rw "$m"; done'

[Install]
WantedBy=multi-user.target
EOF
cat >"$TREE/etc/systemd/system/kubelet.service" <<EOF
[Unit]
Description=kubelet
Wants=containerd.service
Requires=node-prep.service
After=containerd.service node-prep.service

[Service]
ExecStart=/usr/local/bin/kubelet --config /etc/kubernetes/kubelet.yaml --kubeconfig /etc/kubernetes/node.kubeconfig --root-dir /var/lib/kubelet --cert-dir /var/lib/kubelet/pki --hostname-override $NODE --pod-infra-container-image registry.k8s.io/pause:3.9 --v=2
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
EOF
ln -s /etc/systemd/system/node-prep.service "$TREE/etc/systemd/system/multi-user.target.wants/node-prep.service"
ln -s /etc/systemd/system/kubelet.service "$TREE/etc/systemd/system/multi-user.target.wants/kubelet.service"

node_ready() {
  [ "$("${K[@]}" get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
show() { echo "\$ kubectl get nodes,ds,deploy,pods -A -o wide"; "${K[@]}" get nodes,ds,deploy,pods -A -o wide; }

step "1. the node: kubelet $("$(bin kubelet)" --version) and containerd as systemd units in the machine"
# @keyring: runc gives every container its own session keyring (keyctl),
# which nspawn's default system call filter refuses.
machine_boot --system-call-filter=@keyring
boot_wait
wait_for 180 "node $NODE Ready" node_ready
"${K[@]}" get nodes -o wide

step "2. helm install charts/cri-imaged (mode=host, $R/cri-imaged:hm-1)"
"$HELM" install cri-imaged "$REPO/charts/cri-imaged" -n kube-system --set mode=host \
  --set image.repository="$R/cri-imaged" --set image.tag=hm-1 --set config.log_level=info --wait --timeout "${HELM_TIMEOUT:-5m}" || die "helm install (mode=host)"
POD="$("${K[@]}" -n kube-system get pods -l app.kubernetes.io/name=cri-imaged -o jsonpath='{.items[0].metadata.name}')"
# (its log from the node's /var/log/pods: the API server would reach kubelet
# by the node's name or address, which are not loopback)
in_sh "cat /var/log/pods/kube-system_${POD}_*/install-host-service/0.log" | cut -d' ' -f4- | sed 's/^/   install-host-service: /'
for u in cri-imaged.socket cri-imaged.service; do
  [ "$(in_sh "systemctl is-active $u")" = active ] || die "$u is not active in the node"
done
in_sh 'systemctl status cri-imaged.socket cri-imaged.service --no-pager -n 2' | cut -c1-180 | sed 's/^/   /'
show

step "3. kubelet switched to the host service (imageServiceEndpoint unix://$SOCK)"
kubelet_config "unix://$SOCK"
in_sh 'systemctl restart kubelet'
sleep 3
wait_for 120 "node $NODE Ready after the switch" node_ready
pulls() { curl -s http://127.0.0.1:9110/metrics | awk '/^cri_imaged_pulls_total\{.*result="success"/ {s += $2} END {print s + 0}'; }
p0="$(pulls)"
"${K[@]}" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: app, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      hostNetwork: true
      containers:
      - {name: app, image: "$R/e2e/app:v1", imagePullPolicy: Always}
EOF
wait_for 120 "deployment app 2/2" "${K[@]}" rollout status deployment/app --timeout=5s
p1="$(pulls)"
echo "   cri_imaged_pulls_total{result=\"success\"}: $p0 -> $p1"
[ "$p1" -gt "$p0" ] || die "the Deployment's pulls did not go through cri-imaged"
wait_for 120 "the cri-imaged pod Ready" "${K[@]}" -n kube-system rollout status ds/cri-imaged --timeout=5s
show

step "4. a node reboot (systemctl reboot inside the machine), then nobody touches it"
old_sandboxes="$(in_sh 'crictl pods -q | sort | tr "\n" " "')"
in_sh 'systemctl reboot' || true
reboot_wait 1
new_ready() { # the pods' sandboxes made after the reboot, ready (2 app + cri-imaged)
  local n=0 s
  for s in $(in_sh 'crictl pods --state ready -q' 2>/dev/null); do
    case " $old_sandboxes " in *" $s "*) ;; *) n=$((n + 1)) ;; esac
  done
  [ "$n" -ge 3 ]
}
wait_for 300 "the node's three pods running again in new sandboxes" new_ready
wait_for 120 "node $NODE Ready after the reboot" node_ready
wait_for 120 "deployment app 2/2 after the reboot" "${K[@]}" rollout status deployment/app --timeout=5s
wait_for 120 "the cri-imaged pod Ready after the reboot" "${K[@]}" -n kube-system rollout status ds/cri-imaged --timeout=5s
new_sandboxes="$(in_sh 'crictl pods --state ready -q | sort | tr "\n" " "')"
echo "   sandboxes before: $old_sandboxes"
echo "   ready sandboxes after: $new_sandboxes"
for s in $new_sandboxes; do case " $old_sandboxes " in *" $s "*) die "sandbox $s survived a reboot?" ;; esac; done
echo "   boot order (journal of boot 2, monotonic):"
in_sh 'journalctl -b -o short-monotonic --no-pager -u node-prep -u containerd -u cri-imaged.socket -u cri-imaged.service -u kubelet' |
  grep -E 'systemd\[1\]: (Start|Listening|Finished)|cri_imaged::(server|store)' | cut -c1-190 | sed 's/^/   /'
sock_ts="$(in_sh 'systemctl show -p ActiveEnterTimestampMonotonic --value cri-imaged.socket')"
kube_ts="$(in_sh 'systemctl show -p InactiveExitTimestampMonotonic --value kubelet.service')"
[ "$sock_ts" -le "$kube_ts" ] || die "kubelet started before cri-imaged.socket listened"
errs="$(in_sh 'journalctl -b -u kubelet --no-pager' | grep -cE 'ImageService|remote_image.go.*(failed|error)' || true)"
echo "   kubelet's image-service errors since the boot: $errs"
[ "$errs" = 0 ] || { in_sh 'journalctl -b -u kubelet --no-pager' | grep -E 'remote_image' | tail -5; die "kubelet's image calls failed after the reboot"; }
calls="$(curl -s http://127.0.0.1:9110/metrics | awk '/^cri_imaged_grpc_requests_total\{code="OK"/ {s += $2} END {print s + 0}')"
echo "   calls answered OK by the host service since its start at boot: $calls"
[ "$calls" -gt 0 ] || die "no call reached the host service after the reboot"
show

step "5. helm uninstall"
"$HELM" uninstall cri-imaged -n kube-system --wait --timeout 2m || die "helm uninstall"
echo "host-mode-cluster-e2e.sh: all passed"
