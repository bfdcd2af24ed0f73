#!/usr/bin/env bash
# Run every test: unit tests, integration tests against a real containerd and
# docker-registry, the chart checks and a smoke-sized benchmark.
# Needs root (containerd, overlay mounts). Usage: scripts/test.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash scripts/install-deps.sh --test
export CARGO_TERM_COLOR=never
cargo build --locked --all-targets
# Real images made by real tools (mmdebstrap, apt, buildah), cached under
# target/real-images: tests/unpack_differential.rs compares the native unpack
# of each with containerd's applier, on every containerd version below.
bash scripts/build-real-images.sh
export CRI_IMAGED_REQUIRE_REAL_IMAGES=1
# Integration tests run containerd instances; two at a time suits 2 cores.
LOG="$(mktemp)"; MATRIX="$(mktemp -d)"
trap 'rm -rf "$LOG" "$MATRIX"' EXIT
# Every test on containerd 1.6 (Debian bookworm's, the machine's own).
cargo test --locked -- --test-threads="${TEST_THREADS:-2}" 2>&1 | tee "$LOG" "$MATRIX/1.6"
# The containerd matrix: the tests that exercise containerd (pull, records and
# labels, interop with its own CRI, events and resync, restart, GC labels,
# leases, crash and resume, ImageFsInfo, remove races, hostile layers and the
# space they give back) also on 1.7 and 2.1,
# fetched by scripts/containerd-versions.sh. The rest (parsers, registry
# client, config, metrics) does not depend on containerd's version.
CORE=(--test pull --test pull_basic --test pull_options --test rpc --test faults
      --test resolver --test interop_records --test platform_e2e --test real_clients
      --test unpack_differential --test remote_snapshotter --test hostile_layers)
for v in ${CONTAINERD_MATRIX:-1.7 2.1}; do
  echo "== containerd $v: the containerd-facing tests"
  bash scripts/containerd-versions.sh path "$v" >/dev/null
  # (The million-entry layer once, on 1.6: it is the writer's limit, not containerd's.)
  CRI_IMAGED_CONTAINERD="$v" cargo test --locked "${CORE[@]}" -- --test-threads="${TEST_THREADS:-2}" --skip a_million 2>&1 |
    tee -a "$LOG" "$MATRIX/$v"
done
echo "== containerd matrix (passed per test file)"
for f in "$MATRIX"/*; do
  awk -v v="$(basename "$f")" '/Running tests\// { split($2, a, "/"); t = a[2]; sub(/\.rs$/, "", t) }
       /^test result:/ && t != "" { for (i = 1; i <= NF; i++) if ($(i) ~ /^passed/) n = $(i-1); line = line sprintf(" %s=%s", t, n); t = "" }
       END { printf "containerd %s:%s\n", v, line }' "$f"
done
CRI_IMAGED_BIN=target/debug/cri-imaged bash tests/chart.sh
# The container image: built from Debian packages, pushed, pulled by cri-imaged, run by containerd.
CRI_IMAGED_BIN=target/debug/cri-imaged bash tests/image.sh
# Smoke-sized side-by-side benchmark (debug build), so the harness cannot rot.
CRI_IMAGED_BIN=target/debug/cri-imaged cargo test --locked --bench compare -- --smoke --out target/bench-smoke.md
# Coverage-guided fuzzing (cargo-afl), opt-in: installing and building the
# instrumented targets takes ~9 min; cargo test above replays every corpus file.
[ -z "${CRI_IMAGED_FUZZ_SECONDS:-}" ] ||
  { bash scripts/install-deps.sh --fuzz && bash scripts/fuzz.sh --seconds "$CRI_IMAGED_FUZZ_SECONDS"; }
# One closing line for the whole run.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$LOG"
