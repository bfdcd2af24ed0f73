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
# Integration tests run containerd instances; two at a time suits 2 cores.
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
cargo test --locked -- --test-threads="${TEST_THREADS:-2}" 2>&1 | tee "$LOG"
CRI_IMAGED_BIN=target/debug/cri-imaged bash tests/chart.sh
# Smoke-sized side-by-side benchmark (debug build), so the harness cannot rot.
CRI_IMAGED_BIN=target/debug/cri-imaged cargo test --locked --bench compare -- --smoke --out target/bench-smoke.md
# One closing line for the whole run.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$LOG"
