#!/usr/bin/env bash
# critest's "Image Manager" conformance specs and a crictl walk-through against
# cri-imaged, on a private containerd and docker-registry (nothing else on the
# machine is touched). Needs root, `critest` and `crictl` on PATH (built from
# kubernetes-sigs/cri-tools, v1.29 or newer), docker-registry, skopeo,
# htpasswd; builds cri-imaged if CRI_IMAGED_BIN is not set.
#
#   scripts/critest.sh            # exits non-zero if a spec or a crictl step fails
#   CONTAINERD_VERSION=2.1 scripts/critest.sh   # on containerd 2.1 (or 1.7)
#
# critest pulls gcr.io/k8s-staging-cri-tools/*: those images are recreated
# here (same names, tags and users) in a local registry, and gcr.io is mapped
# onto it with a hosts.toml. The digest spec names an upstream manifest digest
# that cannot be recreated offline, so it is skipped; the crictl part pulls by
# digest instead (and tests/pull*.rs cover digests).
set -euo pipefail
for t in critest crictl; do
  command -v "$t" >/dev/null || { echo "critest.sh: skipped: $t is not on PATH (build it from kubernetes-sigs/cri-tools: GOPROXY=off make binaries)"; exit 0; }
done
WORK="$(mktemp -d /tmp/cri-imaged-critest.XXXXXX)"
source "$(dirname "${BASH_SOURCE[0]}")/lib/local-env.sh"
trap 'env_cleanup; rm -rf "$WORK" || true' EXIT
BIN="${CRI_IMAGED_BIN:-}"
if [ -z "$BIN" ]; then (cd "$REPO" && cargo build --locked --release -q); BIN="$REPO/target/release/cri-imaged"; fi

start_registry open
start_registry auth alice 'wonder-land'
start_cri_imaged "$BIN"
map_host "$CERTS_D" gcr.io "$REG_open"
P=k8s-staging-cri-tools
for img in test-image-latest:latest test-image-tag:test test-image-tag:all \
           test-image-1:latest test-image-2:latest test-image-3:latest; do
  push_image "$REG_open/$P/$img" --seed "$img" >/dev/null
done
for t in 1 2 3; do push_image "$REG_open/$P/test-image-tags:$t" --seed tags >/dev/null; done
push_image "$REG_open/$P/test-image-user-uid:latest" --user 1002 >/dev/null
push_image "$REG_open/$P/test-image-user-username:latest" --user www-data >/dev/null
push_image "$REG_open/$P/test-image-user-uid-group:latest" --user 1003:1004 >/dev/null
push_image "$REG_open/$P/test-image-user-username-group:latest" --user www-data:1004 >/dev/null

crictl --runtime-endpoint "unix://$CONTAINERD_SOCK" version | grep RuntimeVersion | sed 's/^/containerd /'
echo "== critest Image Manager (runtime: containerd $CONTAINERD_SOCK, images: cri-imaged $CRI_SOCK)"
critest --runtime-endpoint "unix://$CONTAINERD_SOCK" --image-endpoint "unix://$CRI_SOCK" \
  --ginkgo.focus='Image Manager' --ginkgo.skip='public image with digest' --ginkgo.no-color \
  2>&1 | tee "$WORK/critest.log" | grep -E "^(Ran |PASS|FAIL|SUCCESS|•|\[FAIL\])|Passed|Failed" || true
grep -qE "^SUCCESS!|0 Failed" "$WORK/critest.log" || { echo "critest failed:"; tail -60 "$WORK/critest.log"; exit 1; }

echo "== crictl walk-through"
A="$REG_auth"
map_host "$CERTS_D" "$A" "$A"
push_image "$A/demo/app:v1" --creds alice:wonder-land --user 1002 --seed app >/dev/null
DIGEST="$(push_image "$A/demo/other:v1" --creds alice:wonder-land --seed other)"
C=(crictl --timeout 60s --image-endpoint "unix://$CRI_SOCK")
run() { echo "\$ crictl $*"; "${C[@]}" "$@"; }
run pull --creds alice:wonder-land "$A/demo/app:v1"
run pull --auth "$(printf 'alice:wonder-land' | base64)" "$A/demo/other@$DIGEST"
if "${C[@]}" pull "$A/demo/app:v1" >"$WORK/noauth.log" 2>&1; then echo "pull without credentials should fail"; exit 1; fi
echo "\$ crictl pull $A/demo/app:v1   (no credentials)"; cat "$WORK/noauth.log"
run images
run images --digests
echo "\$ crictl inspecti $A/demo/app:v1   (fields of interest)"
"${C[@]}" inspecti "$A/demo/app:v1" | python3 -c 'import json,sys; s=json.load(sys.stdin)["status"]; print({k: s[k] for k in ("id","repoTags","repoDigests","size","uid")})'
run imagefsinfo
"${C[@]}" imagefsinfo | python3 -c 'import json,sys; u=json.load(sys.stdin)["status"]["imageFilesystems"][0]; assert int(u["usedBytes"]["value"]) > 0, u' 
run rmi "$A/demo/app:v1"
run rmi "$A/demo/other@$DIGEST"
run images
echo "critest.sh: all passed"
