#!/usr/bin/env bash
# The container image, proven runnable: scripts/build-image.sh builds it from
# Debian packages (mmdebstrap base, the release binary) and pushes it to a
# private docker-registry on loopback; cri-imaged (on its own managed
# containerd) pulls it for a grpc-go client (the client class of kubelet);
# containerd's runtime (ctr run, runc) then runs the pulled image as
# `cri-imaged --version` and as `cri-imaged serve --check` on the config the
# chart renders in pod mode and in host mode (mounted where the chart mounts it).
# Needs root. Env: CRI_IMAGED_BIN (the service; default target/debug/cri-imaged).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
WORK="$(mktemp -d /tmp/cri-imaged-image.XXXXXX)"
source "$REPO/scripts/lib/local-env.sh"
trap 'env_cleanup; rm -rf "$WORK" || true' EXIT
SERVICE_BIN="${CRI_IMAGED_BIN:-target/debug/cri-imaged}"
[ -x .tools/bin/helm ] || bash scripts/install-tools.sh >&2
bash scripts/build-test-clients.sh >&2
GO_CLIENT="$REPO/target/clients/cri-goclient"
PY="$REPO/.tools/venv/bin/python"; [ -x "$PY" ] || PY=python3

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok   - $*"; }
bad() { failed=$((failed + 1)); echo "FAIL - $*"; }
# expect NAME PATTERN CMD...: CMD succeeds and its output matches PATTERN.
expect() {
  local name="$1" pat="$2"; shift 2
  if "$@" >"$WORK/out" 2>&1 && grep -qE "$pat" "$WORK/out"; then ok "$name"; sed 's/^/    /' "$WORK/out" | head -5
  else bad "$name"; sed 's/^/    /' "$WORK/out" | tail -20; fi
}

start_registry img
start_cri_imaged "$SERVICE_BIN"
map_host "$CERTS_D" "$REG_img" "$REG_img"
REF="$REG_img/cri-imaged:test"

echo "== scripts/build-image.sh --push $REF"
bash scripts/build-image.sh --push "$REF" --tag test | tee "$WORK/build.out"
DIGEST="$(sed -n 's/^digest: *//p' "$WORK/build.out")"
PUSHED="$(sed -n 's/^pushed: .*@//p' "$WORK/build.out")"
[ -n "$DIGEST" ] && [ "$DIGEST" = "$PUSHED" ] && ok "the OCI layout and the registry hold one digest ($DIGEST)" ||
  bad "digest in the OCI layout ($DIGEST) and in the registry ($PUSHED)"
SIZE="$(sed -n 's/^size: *\([0-9]*\) bytes.*/\1/p' "$WORK/build.out")"
[ "${SIZE:-0}" -gt 0 ] && [ "$SIZE" -lt $((80 * 1024 * 1024)) ] && ok "compressed size $SIZE bytes (< 80 MiB)" ||
  bad "compressed size ${SIZE:-?} bytes"
# What the layers hold (read from the OCI layout, nothing run): no compiler,
# no apt lists, the binary stripped (no .debug_info section).
if python3 - "$REPO/target/image/oci" "$DIGEST" >"$WORK/out" 2>&1 <<'PY'
import gzip, io, json, subprocess, sys, tarfile, tempfile
root, digest = sys.argv[1], sys.argv[2]
blob = lambda d: open(f"{root}/blobs/{d.replace(':', '/')}", "rb").read()
m = json.loads(blob(digest))
bad, names = [], 0
for l in m["layers"]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(l["digest"])))) as t:
        for e in t:
            names += 1
            n = e.name.lstrip("./")
            if n.split("/")[-1] in ("cargo", "rustc", "gcc", "cc", "ld") and "bin/" in n:
                bad.append(n)
            if n.startswith("var/lib/apt/lists/") and e.isfile() and n.split("/")[-1] != "lock":
                bad.append(n)
            if n == "usr/local/bin/cri-imaged":
                with tempfile.NamedTemporaryFile() as f:
                    f.write(t.extractfile(e).read()); f.flush()
                    sections = subprocess.run(["readelf", "-SW", f.name], capture_output=True, text=True).stdout
                if " .debug_info " in sections or ".text" not in sections:
                    bad.append(n + " (not a stripped ELF binary)")
print(f"{names} entries in {len(m['layers'])} layers")
sys.exit("unwanted: " + ", ".join(bad[:10]) if bad else 0)
PY
then ok "no compiler, no apt lists, a stripped binary ($(cat "$WORK/out"))"
else bad "image contents"; sed 's/^/    /' "$WORK/out"; fi

echo "== PullImage through cri-imaged (grpc-go client)"
expect "cri-imaged pulled $REF (repo digest $DIGEST)" "repo-digest .*@$DIGEST" \
  "$GO_CLIENT" -endpoint "unix://$CRI_SOCK" -pull "$REF"

CTR=(ctr -a "$CONTAINERD_SOCK" -n k8s.io)
echo "== ctr run (containerd's runtime, runc) on the pulled image"
expect "ctr run $REF cri-imaged --version" "^cri-imaged [0-9]" \
  "${CTR[@]}" run --rm "$REF" version-check /usr/local/bin/cri-imaged --version
for mode in pod host; do
  mkdir -p "$WORK/chart-$mode"
  .tools/bin/helm template cri-imaged charts/cri-imaged -n kube-system --set mode=$mode \
    --set image.repository="$REG_img/cri-imaged" --set image.tag=test >"$WORK/chart-$mode/rendered.yaml"
  "$PY" - "$WORK/chart-$mode/rendered.yaml" "$WORK/chart-$mode/config.yaml" <<'PY'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d.get("kind") == "ConfigMap" and "config.yaml" in (d.get("data") or {}):
        open(sys.argv[2], "w").write(d["data"]["config.yaml"]); break
else:
    sys.exit("no ConfigMap with config.yaml")
PY
  expect "ctr run $REF serve --check on the chart's $mode-mode config" "configuration is valid" \
    "${CTR[@]}" run --rm --mount "type=bind,src=$WORK/chart-$mode,dst=/etc/cri-imaged,options=rbind:ro" \
    "$REF" "check-$mode" /usr/local/bin/cri-imaged serve --config /etc/cri-imaged/config.yaml --check
done
# The image's own entrypoint with a bad config must fail, or the checks prove nothing.
printf 'log_format: xml\n' >"$WORK/chart-pod/config.yaml"
if "${CTR[@]}" run --rm --mount "type=bind,src=$WORK/chart-pod,dst=/etc/cri-imaged,options=rbind:ro" \
    "$REF" check-bad /usr/local/bin/cri-imaged serve --config /etc/cri-imaged/config.yaml --check >"$WORK/out" 2>&1; then
  bad "serve --check in the image accepted a bad config"
else ok "serve --check in the image refuses a bad config"; fi

echo "image: $passed passed, $failed failed"
[ "$failed" = 0 ]
