#!/usr/bin/env bash
# Build the cri-imaged container image from Debian packages only (no Docker
# Hub): a bookworm minbase root made by mmdebstrap (with ca-certificates) is
# imported as the base image, and the repository's Containerfile puts the
# host's stripped release binary on it (BASE=<that image>, BINARY=prebuilt).
#
#   scripts/build-image.sh [--push REGISTRY/REPO:TAG] [--tag TAG] [--version V]
#                          [--binary PATH]
#
# Writes an OCI layout to target/image/oci (tag TAG, default the crate's
# version) and prints the image's manifest digest, compressed size and layer
# count. --push also pushes it (plain HTTP allowed: --tls-verify=false) and
# prints the digest the registry holds. Needs root, buildah and mmdebstrap
# (scripts/install-deps.sh --image); BUILDAH_ISOLATION=chroot is used, so no
# container runtime or user namespaces are needed. The base root is cached
# under target/image/base/ by the hash of what makes it (suite, packages,
# options, the host's apt sources); delete it to refresh.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$REPO/target/image"
PUSH="" TAG="" VERSION="" BIN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --push) PUSH="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --binary) BIN="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
  esac
done
log() { echo "build-image: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "needs root (buildah and mmdebstrap as root)"; exit 1; }
for t in buildah mmdebstrap objcopy; do
  command -v "$t" >/dev/null || { log "$t is missing: scripts/install-deps.sh --image"; exit 1; }
done
export BUILDAH_ISOLATION=chroot
CRATE_VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -1)"
TAG="${TAG:-$CRATE_VERSION}"
VERSION="${VERSION:-$TAG}"
REVISION="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
mkdir -p "$OUT/base" "$OUT/context"

# --- the binary: the host's release build, debug info split off ---------------
if [ -z "$BIN" ]; then
  log "cargo build --release --locked --bin cri-imaged"
  (cd "$REPO" && CRI_IMAGED_REVISION="$REVISION" cargo build --release --locked --bin cri-imaged -q)
  BIN="$REPO/target/release/cri-imaged"
fi
objcopy --only-keep-debug "$BIN" "$OUT/cri-imaged.debug"
objcopy --strip-debug --add-gnu-debuglink="$OUT/cri-imaged.debug" "$BIN" "$OUT/context/cri-imaged"
chmod 0755 "$OUT/context/cri-imaged"

# --- the base: a bookworm minbase root, imported as an image -------------------
SOURCES=/etc/apt/sources.list.d/debian.sources
[ -f "$SOURCES" ] || SOURCES=/etc/apt/sources.list
# No documentation, manual pages or translations (copyright files stay); apt's
# lists are removed by mmdebstrap's own cleanup.
MMD_ARGS=(--variant=minbase --include=ca-certificates
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*' bookworm)
KEY="$({ printf '%s\n' "${MMD_ARGS[@]}"; cat "$SOURCES"; } | sha256sum | cut -c1-16)"
BASE_TAR="$OUT/base/bookworm-minbase-$KEY.tar"
BASE_IMG="localhost/cri-imaged-base:bookworm-$KEY"
if [ ! -s "$BASE_TAR" ]; then
  log "mmdebstrap ${MMD_ARGS[*]} (about 2 minutes)"
  # --format=tar: mmdebstrap picks the format from the name otherwise, and
  # the temporary name does not end in .tar.
  SOURCE_DATE_EPOCH="$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)" \
    mmdebstrap -q --format=tar "${MMD_ARGS[@]}" "$BASE_TAR.tmp" "$SOURCES" >&2
  [ -f "$BASE_TAR.tmp" ] || { log "mmdebstrap wrote no tar at $BASE_TAR.tmp"; exit 1; }
  mv "$BASE_TAR.tmp" "$BASE_TAR"
fi
if ! buildah inspect --type image "$BASE_IMG" >/dev/null 2>&1; then
  log "importing $BASE_TAR as $BASE_IMG"
  ctr="$(buildah from scratch)"
  buildah add --quiet "$ctr" "$BASE_TAR" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --created-by "mmdebstrap ${MMD_ARGS[*]}" "$ctr"
  buildah commit --quiet --rm "$ctr" "$BASE_IMG" >/dev/null
fi

# --- the image: the repository's Containerfile on that base --------------------
IMG="localhost/cri-imaged:$TAG"
log "buildah bud -f Containerfile (BASE=$BASE_IMG, BINARY=prebuilt) -t $IMG"
buildah bud --quiet --isolation chroot --network host --pull-never --layers=false \
  --build-arg BASE="$BASE_IMG" --build-arg BINARY=prebuilt \
  --build-arg REVISION="$REVISION" --build-arg VERSION="$VERSION" \
  -f "$REPO/Containerfile" -t "$IMG" "$OUT/context" >/dev/null

rm -rf "$OUT/digest"
buildah push --quiet --digestfile "$OUT/digest" "$IMG" "oci:$OUT/oci:$TAG" >/dev/null
DIGEST="$(cat "$OUT/digest")"
read -r SIZE LAYERS < <(python3 - "$OUT/oci" "$DIGEST" <<'PY'
import json, sys
root, digest = sys.argv[1], sys.argv[2]
m = json.load(open(f"{root}/blobs/{digest.replace(':', '/')}"))
print(m["config"]["size"] + sum(l["size"] for l in m["layers"]), len(m["layers"]))
PY
)
echo "image:      $IMG"
echo "oci layout: $OUT/oci:$TAG"
echo "digest:     $DIGEST"
echo "size:       $SIZE bytes compressed ($((SIZE / 1024 / 1024)) MiB), $LAYERS layers"
if [ -n "$PUSH" ]; then
  buildah push --quiet --tls-verify=false --digestfile "$OUT/pushed-digest" "$IMG" "docker://$PUSH" >/dev/null
  echo "pushed:     $PUSH@$(cat "$OUT/pushed-digest")"
fi
