#!/usr/bin/env bash
# Host mode under a real systemd: a Debian bookworm machine booted with
# systemd-nspawn (systemd as its PID 1, containerd from Debian inside), and in
# it, step by step, each checked:
#   1. the machine boots to `running` with containerd active;
#   2. `target/release/cri-imaged install --root / --systemctl systemctl` (the
#      README's command); the socket is active; with the service stopped, the
#      first crictl call starts it through the socket;
#   3. pulls of the real images (scripts/build-real-images.sh: a Debian minbase,
#      python with whiteouts, an opaque dir and a file capability, its zstd
#      twin, 20,803 small files) under the unit's full hardening: unpacked
#      natively, whiteouts and the capability on disk;
#   4. `systemctl restart cri-imaged.service` while a crictl loop runs: 0 failed;
#   5. `cri-imaged install` of a newer build: binary replaced, one restart,
#      the loop still 0 failed;
#   6. a reboot (`systemctl reboot` inside; nspawn exits 133 and is started
#      again): cri-imaged.socket listens before a stand-in for kubelet
#      (After=cri-imaged.socket, one `crictl images`, no retry) runs, that call
#      succeeds, and the images pulled before are listed;
#   7. `cri-imaged uninstall --root / --systemctl systemctl`: nothing left.
#
#   scripts/host-mode-e2e.sh        # exits non-zero when a step fails
#
# Needs root, systemd-nspawn (systemd-container), mmdebstrap, docker-registry,
# skopeo, buildah (for the corpus) and crictl on PATH; skips with a message
# when one is missing or the machine cannot boot. The machine shares the
# host's network (the registry is on 127.0.0.1) and uses port 9110 for
# cri-imaged's metrics, as the packaged config does. Its root is made once by
# mmdebstrap and cached under target/host-mode/; each run boots a copy.
# KEEP=1 keeps the work dir.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "== $*"; }
skip() { echo "host-mode-e2e.sh: skipped: $*"; exit 0; }
die() { echo "host-mode-e2e.sh: FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || skip "needs root"
for t in systemd-nspawn mmdebstrap docker-registry skopeo crictl objcopy; do
  command -v "$t" >/dev/null || skip "$t is missing (scripts/install-deps.sh --image; crictl from cri-tools)"
done
python3 -c 'import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 9110))' 2>/dev/null ||
  skip "127.0.0.1:9110 (the packaged config's metrics address) is in use on this host"

WORK="$(mktemp -d /var/tmp/cri-imaged-host.XXXXXX)"
TREE="$WORK/machine"
# shellcheck source=lib/local-env.sh
source "$REPO/scripts/lib/local-env.sh"
# shellcheck source=lib/machine.sh
source "$REPO/scripts/lib/machine.sh"
cleanup() {
  local rc=$?
  machine_stop
  env_cleanup
  if [ "${KEEP:-}" = 1 ] || [ $rc != 0 ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# --- what goes in: the release binary, the corpus, the machine's root --------
say "cargo build --release --locked --bin cri-imaged"
(cd "$REPO" && cargo build --release --locked --bin cri-imaged 2>&1 | tail -1)
BIN="$REPO/target/release/cri-imaged"
say "the real-image corpus (scripts/build-real-images.sh, cached)"
bash "$REPO/scripts/build-real-images.sh" >"$WORK/corpus.log" 2>&1 || { tail -20 "$WORK/corpus.log"; die "build-real-images.sh"; }
CORPUS="$REPO/target/real-images"

machine_root
mkdir -p "$WORK/share"
echo host-mode-node >"$TREE/etc/hostname"
cp "$(command -v crictl)" "$TREE/usr/local/bin/crictl"
cat >"$TREE/etc/crictl.yaml" <<'EOF'
runtime-endpoint: unix:///run/containerd/containerd.sock
image-endpoint: unix:///run/cri-imaged/cri-imaged.sock
timeout: 120
EOF
# A crictl loop run inside the machine: every call a fresh process.
cat >"$TREE/usr/local/bin/crictl-loop" <<'EOF'
#!/bin/bash
# crictl-loop STOPFILE REF: calls until STOPFILE exists; prints "calls N failed M"
n=0; f=0
while [ ! -e "$1" ]; do
  n=$((n+1))
  case $((n % 3)) in
    0) crictl images >/dev/null 2>>/root/loop.err || f=$((f+1)) ;;
    1) crictl inspecti "$2" >/dev/null 2>>/root/loop.err || f=$((f+1)) ;;
    2) crictl imagefsinfo >/dev/null 2>>/root/loop.err || f=$((f+1)) ;;
  esac
done
echo "calls $n failed $f"
EOF
chmod 0755 "$TREE/usr/local/bin/crictl-loop"
# The stand-in for kubelet: ordered after the socket only, one call, no retry.
cat >"$TREE/etc/systemd/system/kubelet-standin.service" <<'EOF'
[Unit]
Description=Stand-in for kubelet: one crictl call at start, no retry
After=cri-imaged.socket
Wants=cri-imaged.socket

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/bin/crictl images

[Install]
WantedBy=multi-user.target
EOF

# --- the registry, on the host's loopback ------------------------------------
start_registry main
REG="$REG_main"
mkdir -p "$TREE/etc/containerd/certs.d"
map_host "$TREE/etc/containerd/certs.d" "$REG" "$REG"
IMAGES=(minbase python python-zstd smallfiles)
for n in "${IMAGES[@]}"; do
  layout="$(python3 -c 'import json,sys; print(next(i["layout"] for i in json.load(open(sys.argv[1]))["images"] if i["name"]==sys.argv[2]))' "$CORPUS/corpus.json" "$n")"
  skopeo copy -q --dest-tls-verify=false "oci:$layout" "docker://$REG/real/$n:v1"
done

# --- the machine ---------------------------------------------------------------
machine_boot --bind-ro="$REPO:/src" --bind="$WORK/share:/share"
boot_wait
in_sh 'systemctl is-active containerd.service' | sed 's/^/   containerd.service: /'

# --- 2. install, as the README shows it -----------------------------------------
say "cd /src && target/release/cri-imaged install --root / --systemctl systemctl"
in_sh 'cd /src && target/release/cri-imaged install --root / --systemctl systemctl' 2>&1 | sed 's/^/   /'
[ "$(in_sh 'systemctl is-active cri-imaged.socket')" = active ] || die "cri-imaged.socket is not active"
in_sh 'systemctl stop cri-imaged.service'
echo "   service stopped: $(in_sh 'systemctl is-active cri-imaged.service || true'), socket: $(in_sh 'systemctl is-active cri-imaged.socket')"
say "the first crictl call starts the service through the socket"
in_sh 'crictl images' | sed 's/^/   /' || die "crictl images through the socket"
[ "$(in_sh 'systemctl is-active cri-imaged.service')" = active ] || die "the service was not started by the socket"
in_sh 'journalctl -u cri-imaged.service -u cri-imaged.socket --no-pager -o cat | tail -6' | cut -c1-200 | sed 's/^/   /'

# --- 3. pulls under the unit's hardening ------------------------------------------
say "pulls of the real images under the unit's hardening"
for n in "${IMAGES[@]}"; do
  t0=$(date +%s.%N)
  in_sh "crictl pull $REG/real/$n:v1" >/dev/null || { in_sh 'journalctl -u cri-imaged --no-pager | tail -20'; die "pull of $n"; }
  printf '   %-12s pulled in %.2f s (on the machine'"'"'s disk)\n' "$n" "$(awk "BEGIN { print $(date +%s.%N) - $t0 }")"
done
MAIN="$(in_sh 'systemctl show -p MainPID --value cri-imaged.service')"
echo "   the service's process (PID $MAIN in the machine): $(in_sh "grep -E '^(Seccomp|NoNewPrivs):' /proc/$MAIN/status | tr '\n\t' '  '")"
echo "   / as it sees it: $(in_sh "awk '\$5 == \"/\" {print \$6}' /proc/$MAIN/mountinfo | head -1")"
METRICS="$(curl -s http://127.0.0.1:9110/metrics)"
grep -E '^cri_imaged_layers_unpacked_total' <<<"$METRICS" | sed 's/^/   /'
grep -qE '^cri_imaged_layers_unpacked_total\{unpacker="native"\} [1-9]' <<<"$METRICS" || die "no layer was unpacked natively"
grep -qE '^cri_imaged_layers_unpacked_total\{unpacker="containerd"\} 0' <<<"$METRICS" || die "a layer fell back to containerd's unpack"
python3 - "$TREE/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots" <<'PY' || die "the snapshots lack what the layers hold"
import os, stat, sys
wh = caps = opaque = 0
for root, dirs, files in os.walk(sys.argv[1]):
    for n in dirs + files:
        p = os.path.join(root, n)
        st = os.lstat(p)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            wh += 1
        xs = os.listxattr(p, follow_symlinks=False)
        caps += "security.capability" in xs
        opaque += "trusted.overlay.opaque" in xs
print(f"   in the snapshots: {wh} whiteouts (0/0 devices), {caps} files with a capability, {opaque} opaque dirs")
sys.exit(0 if wh and caps and opaque else 1)
PY
in_sh 'crictl images' | sed 's/^/   /'
in_sh 'systemctl status cri-imaged.socket cri-imaged.service --no-pager -n 3' | cut -c1-200 | sed 's/^/   /'

# --- 4. restart, 5. upgrade, each under a crictl loop ------------------------------
loop_around() { # loop_around NAME CMD: the loop runs before, during and after CMD
  local stop="/share/stop-$1"
  "${IN[@]}" crictl-loop "$stop" "$REG/real/python:v1" >"$WORK/loop-$1.out" 2>&1 &
  local lp=$!
  sleep 2
  in_sh "$2" 2>&1 | sed 's/^/   /'
  sleep 2
  touch "$WORK/share/stop-$1"
  wait "$lp" || true
  echo "   crictl loop across $1: $(cat "$WORK/loop-$1.out")"
  grep -q ' failed 0$' "$WORK/loop-$1.out" || { in_sh 'tail -5 /root/loop.err'; die "crictl calls failed across $1"; }
}
starts() { in_sh 'journalctl -u cri-imaged.service --no-pager -o cat | grep -c "^Started cri-imaged.service"'; }
say "systemctl restart cri-imaged.service under a crictl loop"
loop_around restart 'systemctl restart cri-imaged.service'

say "an upgrade: cri-imaged install of a newer build under a crictl loop"
# The newer build: the same program with a build note added, so the file
# differs as a rebuild's would (install compares bytes).
echo "cri-imaged upgrade build $(date -u +%FT%TZ)" >"$WORK/note"
objcopy --add-section .note.cri-imaged-build="$WORK/note" "$BIN" "$WORK/share/cri-imaged-new"
before_sha="$(in_sh 'sha256sum /usr/local/bin/cri-imaged' | cut -c1-16)"
before_starts="$(starts)"
before_pid="$(in_sh 'systemctl show -p MainPID --value cri-imaged.service')"
loop_around upgrade '/share/cri-imaged-new install --root / --systemctl systemctl'
after_sha="$(in_sh 'sha256sum /usr/local/bin/cri-imaged' | cut -c1-16)"
after_starts="$(starts)"
after_pid="$(in_sh 'systemctl show -p MainPID --value cri-imaged.service')"
echo "   binary $before_sha… -> $after_sha…, service started $((after_starts - before_starts)) time(s), MainPID $before_pid -> $after_pid"
[ "$before_sha" != "$after_sha" ] || die "the binary was not replaced"
[ $((after_starts - before_starts)) = 1 ] || die "the upgrade restarted the service $((after_starts - before_starts)) times"

# --- 6. a reboot ---------------------------------------------------------------------
say "systemctl enable kubelet-standin.service; systemctl reboot"
in_sh 'systemctl enable kubelet-standin.service' 2>&1 | sed 's/^/   /'
in_sh 'systemctl reboot' || true
reboot_wait 1
echo "   booted again (boot 2)"
in_sh 'journalctl -b -o short-monotonic --no-pager -u cri-imaged.socket -u cri-imaged.service -u kubelet-standin.service -u containerd.service' |
  grep -vE 'containerd\[[0-9]+\]: time=' | cut -c1-200 | sed 's/^/   /'
[ "$(in_sh 'systemctl show -p Result --value kubelet-standin.service')" = success ] || die "the stand-in for kubelet failed its first call"
[ "$(in_sh 'systemctl show -p NRestarts --value kubelet-standin.service')" = 0 ] || die "the stand-in was restarted"
listen_ts="$(in_sh 'systemctl show -p ActiveEnterTimestampMonotonic --value cri-imaged.socket')"
standin_ts="$(in_sh 'systemctl show -p InactiveExitTimestampMonotonic --value kubelet-standin.service')"
echo "   socket listening at ${listen_ts} µs, the stand-in started at ${standin_ts} µs (monotonic)"
[ "$listen_ts" -le "$standin_ts" ] || die "the stand-in started before the socket listened"
listed="$(in_sh 'crictl images' | grep -c "$REG/real/" || true)"
echo "   images listed after the reboot: $listed of ${#IMAGES[@]}"
[ "$listed" = "${#IMAGES[@]}" ] || die "images were lost across the reboot"

# --- 7. uninstall ----------------------------------------------------------------------
say "cri-imaged uninstall --root / --systemctl systemctl"
in_sh 'systemctl disable --now kubelet-standin.service && rm /etc/systemd/system/kubelet-standin.service && systemctl daemon-reload' 2>&1 | sed 's/^/   /'
in_sh '/share/cri-imaged-new uninstall --root / --systemctl systemctl' 2>&1 | sed 's/^/   /'
left="$(in_sh 'ls -d /usr/local/bin/cri-imaged /etc/cri-imaged /run/cri-imaged /var/lib/cri-imaged 2>/dev/null; find /etc/systemd -name "cri-imaged*"; systemctl list-units --all --no-legend "cri-imaged*"; pgrep -a cri-imaged' || true)"
[ -z "$left" ] || { echo "$left"; die "uninstall left something"; }
echo "   nothing left (binary, units, enable links, config, socket, state dir, process); images stay in containerd: $(in_sh 'ctr -n k8s.io images ls -q | grep -c real/')"
echo "host-mode-e2e.sh: all passed"
