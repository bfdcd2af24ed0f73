#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo-afl (AFL++ on stable Rust): builds the
# instrumented targets of fuzz/ and runs them one after another, each from its
# corpus fuzz/corpus/<target>/, then prints per target: executions, execs/s,
# edges found (AFL's edges_found/total_edges), crashes, hangs and time.
# Exits non-zero if any target crashed or hung (inputs under
# fuzz/out/<target>/default/{crashes,hangs}/).
#
#   scripts/fuzz.sh [--seconds N] [--execs N] [--cmin|--cmin-only] [--nice] [target...]
#
#   --seconds N  fuzz each target N seconds (default 60)
#   --execs N    stop a target after about N executions (AFL -E), whichever first
#   --cmin       afterwards, minimise corpus + queue into fuzz/corpus/<target>/
#                (afl-cmin.bash; new inputs are named <target>-<sha1 prefix>)
#   --cmin-only  no fuzzing: minimise corpus + the queue of the last run
#   --nice       run the fuzzers under nice -n 10
#   target       default: all of them (fuzz/src/lib.rs TARGETS)
#
# Needs cargo-afl (scripts/install-deps.sh --fuzz installs it and builds AFL++).
# Output: fuzz/out/<target>/, the build: fuzz/target/ (FUZZ_NO_BUILD=1: use
# the binaries there as they are).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ALL=(layer_writer reference digest platform manifest www_authenticate token_response hosts_toml cri_request)
SECONDS_EACH=60 EXECS="" CMIN=0 FUZZ=1 NICE=()
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_EACH="$2"; shift 2 ;;
    --execs) EXECS="$2"; shift 2 ;;
    --cmin) CMIN=1; shift ;;
    --cmin-only) CMIN=1 FUZZ=0; shift ;;
    --nice) NICE=(nice -n 10); shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${ALL[@]}")
cd "$REPO/fuzz"
export CARGO_TARGET_DIR="$REPO/fuzz/target" CARGO_TERM_COLOR=never
[ -n "${FUZZ_NO_BUILD:-}" ] || cargo afl build --release --locked --features afl --bins
BIN="$CARGO_TARGET_DIR/release"
# No UI; no CPU-frequency or core_pattern demands on a shared machine; no
# core binding (other work runs alongside).
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
  AFL_NO_AFFINITY=1 AFL_QUIET=1
stat() { sed -n "s/^$2 *: *//p" "$1" | head -1; }
# afl-cmin.bash of the AFL++ that cargo-afl built (its Python afl-cmin finds
# no coverage with these persistent-mode targets).
AFL_BIN="$(ls -d "${XDG_DATA_HOME:-$HOME/.local/share}"/afl.rs/rustc-"$(rustc -V | cut -d' ' -f2)"-*/afl.rs-*/afl/bin | tail -1)"
cmin() {  # target: corpus + queue, minimised, back into the corpus
  local t="$1" all min
  all="$(mktemp -d)" min="$(mktemp -d)"
  cp "$REPO/fuzz/corpus/$t"/* "$all"/
  cp "$REPO/fuzz/out/$t"/default/queue/id:* "$all"/ 2>/dev/null || true
  PATH="$AFL_BIN:$PATH" "$AFL_BIN/afl-cmin.bash" -i "$all" -o "$min" -t 5000 -- "$BIN/$t" \
    >"$REPO/fuzz/out/$t.cmin.log" 2>&1 || true
  if [ -z "$(ls -A "$min")" ]; then
    echo "fuzz.sh: cmin $t produced nothing (fuzz/out/$t.cmin.log); corpus kept" >&2
  else
    rm -f "$REPO/fuzz/corpus/$t"/*
    for f in "$min"/*; do  # seeds keep their names, AFL's queue entries get stable ones
      case "$(basename "$f")" in
        id:*) cp "$f" "$REPO/fuzz/corpus/$t/$t-$(sha1sum "$f" | cut -c1-12)" ;;
        *) cp "$f" "$REPO/fuzz/corpus/$t/" ;;
      esac
    done
    echo "cmin $t: $(ls "$all" | wc -l) -> $(ls "$min" | wc -l) inputs" >&2
  fi
  rm -rf "$all" "$min"
}
mkdir -p "$REPO/fuzz/out"
rows=() bad=0
for t in "${targets[@]}"; do
  out="$REPO/fuzz/out/$t"
  if [ "$FUZZ" = 1 ]; then
    rm -rf "$out"
    args=(-i "$REPO/fuzz/corpus/$t" -o "$out" -V "$SECONDS_EACH")
    [ -n "$EXECS" ] && args+=(-E "$EXECS")
    [ -f "$REPO/fuzz/dict/$t.dict" ] && args+=(-x "$REPO/fuzz/dict/$t.dict")
    # Generous timeouts: a hang must be a real one on a loaded 2-core machine.
    if [ "$t" = layer_writer ]; then args+=(-t 5000); else args+=(-t 1000); fi
    echo "== fuzz $t: ${SECONDS_EACH}s${EXECS:+ or $EXECS executions}" >&2
    "${NICE[@]}" cargo afl fuzz "${args[@]}" -- "$BIN/$t" >"$REPO/fuzz/out/$t.log" 2>&1 || {
      echo "fuzz.sh: afl-fuzz failed for $t:" >&2; tail -20 "$REPO/fuzz/out/$t.log" >&2; exit 1; }
  fi
  # The layer writer's directories (/dev/shm/cri-imaged-fuzz-<fork server pid>)
  # of fork servers that are gone.
  for d in "${CRI_IMAGED_FUZZ_DIR:-/dev/shm}"/cri-imaged-fuzz-*; do
    [ -d "$d" ] && ! kill -0 "${d##*-}" 2>/dev/null && rm -rf "$d"
  done
  s="$out/default/fuzzer_stats"
  [ -f "$s" ] || { echo "fuzz.sh: no $s" >&2; exit 1; }
  crashes="$(stat "$s" saved_crashes)" hangs="$(stat "$s" saved_hangs)"
  [ "$crashes" = 0 ] && [ "$hangs" = 0 ] || bad=1
  rows+=("$(printf '%-17s %12s %9s %8s/%-8s %7s %5s %6ss' "$t" "$(stat "$s" execs_done)" \
    "$(stat "$s" execs_per_sec)" "$(stat "$s" edges_found)" "$(stat "$s" total_edges)" \
    "$crashes" "$hangs" "$(stat "$s" run_time)")")
  [ "$CMIN" = 0 ] || cmin "$t"
done
printf '%-17s %12s %9s %17s %7s %5s %7s\n' target executions execs/s edges crashes hangs time
printf '%s\n' "${rows[@]}"
[ "$bad" = 0 ] || { echo "fuzz.sh: crashes or hangs: see fuzz/out/<target>/default/{crashes,hangs}/" >&2; exit 1; }
