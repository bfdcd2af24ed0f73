# Sourced by scripts/host-mode-e2e.sh and scripts/host-mode-cluster-e2e.sh: a
# Debian bookworm machine with systemd as its PID 1, booted by systemd-nspawn
# from a root made by mmdebstrap (cached under target/host-mode/ by the hash
# of what makes it; each run extracts a copy into $TREE).
#   machine_root            extract the (cached) root into $TREE
#   machine_boot ARGS...    boot it in the background (extra nspawn ARGS);
#                           a reboot inside (nspawn exits 133) boots it again
#   boot_wait               wait for `running`; sets IN (nsenter into it)
#   in_sh CMD               run CMD with sh -c inside
#   reboot_wait N           after `systemctl reboot`: boot N+1 is up
#   machine_stop            clean poweroff (SIGTERM to nspawn), no reboot
# Expects: REPO, WORK, TREE, say, skip, die.
MACHINE_PID=""
IN=()
MMD_ARGS=(--variant=minbase --include=systemd-sysv,dbus,containerd,runc,ca-certificates,procps
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' bookworm)

machine_root() {
  local sources=/etc/apt/sources.list.d/debian.sources key cache
  [ -f "$sources" ] || sources=/etc/apt/sources.list
  key="$({ printf '%s\n' "${MMD_ARGS[@]}"; cat "$sources"; } | sha256sum | cut -c1-16)"
  cache="$REPO/target/host-mode/root-$key.tar"
  mkdir -p "$REPO/target/host-mode" "$TREE"
  if [ ! -s "$cache" ]; then
    say "mmdebstrap ${MMD_ARGS[*]} (about a minute)"
    mmdebstrap -q --format=tar "${MMD_ARGS[@]}" "$cache.tmp" "$sources"
    mv "$cache.tmp" "$cache"
  fi
  tar -C "$TREE" -xf "$cache"
  # containerd's CRI copies the node's /etc/hosts into each pod.
  printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n' >"$TREE/etc/hosts"
}

# --capability=all: a node's root has every capability (runc and privileged
# pods in host-mode-cluster-e2e.sh); the pulls alone need no more than
# nspawn's default set (host-mode-e2e.sh passed with it, overlayfs mounts and
# whiteout device nodes included); --register=no: no machined (and no system
# bus) on this host;
# --keep-unit: stay in the caller's cgroup. Exit code 133 is a reboot asked
# for inside: boot again, as systemd-nspawn@.service does.
machine_boot() {
  NSPAWN=(systemd-nspawn -D "$TREE" -b --register=no --keep-unit --capability=all "$@")
  say "boot: ${NSPAWN[*]}"
  (
    n=0
    while :; do
      n=$((n + 1))
      "${NSPAWN[@]}" >"$WORK/boot-$n.log" 2>&1 </dev/null && rc=0 || rc=$?
      echo "$rc" >"$WORK/exit-$n"
      [ "$rc" = 133 ] && [ ! -e "$WORK/no-reboot" ] || break
    done
  ) &
  MACHINE_PID=$!
}

pid1() { # the machine's PID 1 (its systemd), once started
  # (nspawn's first child is a helper that forks the machine's init and goes.)
  local ns c
  for _ in $(seq 150); do
    ns="$(pgrep -n -f -- "systemd-nspawn -D $TREE" || true)"
    for c in $(pgrep -P "${ns:-0}" || true); do
      [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ] && { echo "$c"; return 0; }
    done
    sleep 0.2
  done
  return 1
}

boot_wait() {
  local p state
  p="$(pid1)" || { cat "$WORK"/boot-*.log | tail -20; skip "systemd-nspawn did not start the machine"; }
  IN=(nsenter -t "$p" -a)
  for _ in $(seq 240); do
    state="$("${IN[@]}" systemctl is-system-running 2>/dev/null || true)"
    case "$state" in running | degraded) break ;; esac
    sleep 0.5
  done
  echo "   systemctl is-system-running: $state (PID 1 of the machine is host PID $p)"
  [ "$state" = running ] || { "${IN[@]}" systemctl --failed --no-pager || true; die "the machine is $state"; }
}

in_sh() { "${IN[@]}" sh -c "$1"; }

reboot_wait() { # reboot_wait N: boot N asked for a reboot; wait for boot N+1
  local old p
  old="$(pid1 || true)"
  # (up to 4 min: processes that ignore SIGTERM, as a container's PID 1 running
  # sleep does, hold the shutdown for DefaultTimeoutStopSec, 90 s)
  for _ in $(seq 1200); do [ -e "$WORK/exit-$1" ] && break; sleep 0.2; done
  [ "$(cat "$WORK/exit-$1" 2>/dev/null)" = 133 ] || die "the machine did not exit for a reboot (exit $(cat "$WORK/exit-$1" 2>/dev/null))"
  for _ in $(seq 150); do p="$(pid1 || true)"; [ -n "$p" ] && [ "$p" != "$old" ] && break; sleep 0.2; done
  boot_wait
}

machine_stop() {
  [ -n "$MACHINE_PID" ] && kill -0 "$MACHINE_PID" 2>/dev/null || return 0
  # SIGTERM: nspawn asks the machine's systemd for a clean poweroff.
  echo 0 >"$WORK/no-reboot"
  pkill -TERM -f -- "systemd-nspawn -D $TREE" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$MACHINE_PID" 2>/dev/null || break; sleep 0.2; done
  pkill -KILL -f -- "systemd-nspawn -D $TREE" 2>/dev/null || true
}
