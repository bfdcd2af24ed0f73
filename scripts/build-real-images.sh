#!/usr/bin/env bash
# Build a corpus of real container images, made by real tools (mmdebstrap and
# buildah, from Debian packages; no registry needed), as OCI image layouts:
#
#   scripts/build-real-images.sh [--out DIR] [--keep-images]
#
#   minbase      a bookworm `mmdebstrap --variant=minbase` root imported as a
#                one-layer image (gzip)
#   python       minbase + three `buildah bud --layers` RUN layers: an apt-get
#                install of python3 (and libcap2-bin), a layer with a file
#                capability (setcap cap_net_bind_service=+ep, a
#                security.capability xattr) and hardlinks, and a cleanup layer
#                that deletes lower-layer content (whiteouts) and empties and
#                recreates a directory (an opaque directory)
#   python-zstd  the python image pushed with zstd-compressed layers
#   smallfiles   minbase + one `buildah add` layer of 20,000 small files in 200
#                directories (node_modules-like; sizes 200 B to 16 KiB,
#                deterministic content) with 300 symlinks and 300 hardlinks
#
# Each image is an OCI layout OUT/<name>-<key>/ (tag <name>); OUT defaults to
# target/real-images. <key> hashes this script, the host's apt sources and
# SOURCE_DATE_EPOCH (default fixed below), so a layout whose index.json exists
# is reused ("cached"); the minbase root tar is cached under OUT/base/. Prints
# one line per image (layout, manifest digest, layers, compressed size, entries
# per layer) and writes OUT/corpus.json (per image: name, layout, tag, digest,
# layers with digest, mediaType, size, entries and entry-type counts).
# Needs root, buildah, mmdebstrap, skopeo, zstd, python3
# (scripts/install-deps.sh --image); BUILDAH_ISOLATION=chroot is used and RUN
# steps use the host network (apt-get). The local buildah images it makes are
# removed at the end unless --keep-images is given.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$REPO/scripts/$(basename "${BASH_SOURCE[0]}")"
OUT="$REPO/target/real-images"
KEEP_IMAGES=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --keep-images) KEEP_IMAGES=1; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "build-real-images: unknown argument $1" >&2; exit 2 ;;
  esac
done
log() { echo "build-real-images: $*" >&2; }
die() { log "$*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (buildah and mmdebstrap run as root)"
missing=()
for t in buildah mmdebstrap skopeo python3 tar gzip sha256sum; do
  command -v "$t" >/dev/null || missing+=("$t")
done
[ ${#missing[@]} = 0 ] || die "missing: ${missing[*]} (scripts/install-deps.sh --image)"
if ! command -v zstd >/dev/null; then
  log "zstd is missing: apt-get install -y zstd"
  apt-get install -y -q zstd >&2 || die "could not install zstd"
fi
export BUILDAH_ISOLATION=chroot
mkdir -p "$OUT/base"
OUT="$(cd "$OUT" && pwd)"

SOURCES=/etc/apt/sources.list.d/debian.sources
[ -f "$SOURCES" ] || SOURCES=/etc/apt/sources.list
[ -f "$SOURCES" ] || die "no apt sources file ($SOURCES)"
# Fixed by default (the date of the apt snapshot the sources name) so that the
# corpus does not change with every commit; override to taste.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1747699200}"

SELF_SHA="$(sha256sum "$SELF" | cut -d' ' -f1)"
SOURCES_SHA="$(sha256sum "$SOURCES" | cut -d' ' -f1)"
key_of() { printf '%s\n' "$SELF_SHA" "$SOURCES_SHA" "$SOURCE_DATE_EPOCH" "$1" | sha256sum | cut -c1-16; }
layout_of() { echo "$OUT/$1-$(key_of "$1")"; }
local_image_of() { echo "localhost/real-images/$1:$(key_of "$1")"; }

TMP="$(mktemp -d "$OUT/.tmp.XXXXXX")"
CONTAINERS=() IMAGES=()
cleanup() {
  local c i
  for c in "${CONTAINERS[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
  if [ "$KEEP_IMAGES" = 0 ]; then
    # Newest first: removing an image also removes its untagged parents (the
    # intermediate images of `buildah bud --layers`), up to the tagged base.
    for ((i = ${#IMAGES[@]} - 1; i >= 0; i--)); do
      buildah rmi "${IMAGES[$i]}" >/dev/null 2>&1 || true
    done
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }
# Push a local image to a fresh layout OUT/<name>-<key> (tag <name>), replacing
# the layouts of that name with other keys. Extra arguments go to buildah push.
push_layout() {
  local img="$1" name="$2" dir tmp d rest
  shift 2
  dir="$(layout_of "$name")"
  tmp="$TMP/layout-$name"
  rm -rf "$tmp"
  buildah push --quiet "$@" "$img" "oci:$tmp:$name" >/dev/null
  for d in "$OUT/$name"-*; do
    rest="${d##*/}"; rest="${rest#"$name"-}"
    if [[ "$rest" =~ ^[0-9a-f]{16}$ ]]; then rm -rf "$d"; fi
  done
  mv "$tmp" "$dir"
}
is_cached() { [ -s "$(layout_of "$1")/index.json" ]; }
STATUS=()

# --- minbase: a bookworm minbase root, imported as a one-layer image ---------------
MMD_ARGS=(--variant=minbase bookworm)
BASE_KEY="$({ printf '%s\n' "${MMD_ARGS[@]}" "$SOURCE_DATE_EPOCH"; cat "$SOURCES"; } | sha256sum | cut -c1-16)"
BASE_TAR="$OUT/base/bookworm-minbase-$BASE_KEY.tar"
BASE_IMG="$(local_image_of minbase)"
# The base as a local buildah image (for the images built on it): from the
# root tar when building minbase, else from minbase's OCI layout.
ensure_base_image() {
  have_image "$BASE_IMG" && return 0
  if is_cached minbase; then
    log "loading $BASE_IMG from $(layout_of minbase)"
    # By its ID: the pull names it after the layout's path.
    BASE_IMG="$(buildah pull --quiet "oci:$(layout_of minbase):minbase")"
    IMAGES=("$BASE_IMG" "${IMAGES[@]}")
    return 0
  fi
  if [ ! -f "$BASE_TAR" ] || [ ! -s "$BASE_TAR" ]; then
    log "mmdebstrap ${MMD_ARGS[*]} (about 2 minutes)"
    # The temporary name must end in .tar too: mmdebstrap picks its output
    # format from the target's name and makes a directory for "x.tar.tmp".
    rm -rf "$OUT/base/.tmp-${BASE_TAR##*/}"
    mmdebstrap -q --format=tar "${MMD_ARGS[@]}" "$OUT/base/.tmp-${BASE_TAR##*/}" "$SOURCES" >&2
    mv "$OUT/base/.tmp-${BASE_TAR##*/}" "$BASE_TAR"
  else
    log "minbase root: cached $BASE_TAR"
  fi
  log "importing $BASE_TAR as $BASE_IMG"
  local ctr
  ctr="$(buildah from scratch)"
  CONTAINERS+=("$ctr")
  buildah add --quiet "$ctr" "$BASE_TAR" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash --created-by "mmdebstrap ${MMD_ARGS[*]}" "$ctr"
  buildah commit --quiet --rm "$ctr" "$BASE_IMG" >/dev/null
  IMAGES=("$BASE_IMG" "${IMAGES[@]}")
}

if is_cached minbase; then
  STATUS+=("minbase cached"); log "minbase: cached $(layout_of minbase)"
else
  ensure_base_image
  push_layout "$BASE_IMG" minbase
  STATUS+=("minbase built"); log "minbase: built $(layout_of minbase)"
fi

# --- python: package install, capability + hardlinks, cleanup (whiteouts) ------
PY_IMG="$(local_image_of python)"
if is_cached python; then
  STATUS+=("python cached"); log "python: cached $(layout_of python)"
else
  ensure_base_image
  mkdir -p "$TMP/python"
  cat >"$TMP/python/Containerfile" <<EOF
FROM $BASE_IMG
RUN apt-get update && apt-get install -y --no-install-recommends python3 libcap2-bin
RUN cp /usr/bin/python3.11 /usr/local/bin/py-net \\
 && setcap cap_net_bind_service=+ep /usr/local/bin/py-net \\
 && ln /usr/local/bin/py-net /usr/local/bin/py-net-hardlink \\
 && mkdir -p /usr/local/share/corpus \\
 && cp /etc/os-release /usr/local/share/corpus/os-release \\
 && ln /usr/local/share/corpus/os-release /usr/local/share/corpus/os-release.hardlink
RUN rm -rf /var/lib/apt/lists/* /usr/share/doc/* /var/cache/apt/* /var/log/apt/* \\
 && rm -rf /usr/share/lintian/overrides \\
 && mkdir /usr/share/lintian/overrides \\
 && echo recreated >/usr/share/lintian/overrides/new
EOF
  log "python: buildah bud --layers (apt-get install python3, about 1-2 minutes)"
  # --layers makes one layer per RUN (without it buildah squashes the stage's
  # instructions into one layer); --no-cache so that every layer is built now.
  buildah bud --quiet --isolation chroot --network host --pull-never --layers --no-cache \
    --force-rm -f "$TMP/python/Containerfile" -t "$PY_IMG" "$TMP/python" >/dev/null
  IMAGES+=("$PY_IMG")
  push_layout "$PY_IMG" python --format oci
  STATUS+=("python built"); log "python: built $(layout_of python)"
fi

# --- python-zstd: the same image, zstd layers -----------------------------------
if is_cached python-zstd; then
  STATUS+=("python-zstd cached"); log "python-zstd: cached $(layout_of python-zstd)"
else
  if have_image "$PY_IMG"; then
    push_layout "$PY_IMG" python-zstd --format oci --compression-format zstd
  else
    # python was cached (its local image is gone): recompress its layout.
    dir="$(layout_of python-zstd)"; rm -rf "$TMP/layout-python-zstd"
    skopeo copy --quiet --dest-compress-format zstd \
      "oci:$(layout_of python):python" "oci:$TMP/layout-python-zstd:python-zstd"
    rm -rf "$OUT"/python-zstd-*; mv "$TMP/layout-python-zstd" "$dir"
  fi
  STATUS+=("python-zstd built"); log "python-zstd: built $(layout_of python-zstd)"
fi

# --- smallfiles: minbase + one layer of 20,000 small files ----------------------
SF_IMG="$(local_image_of smallfiles)"
if is_cached smallfiles; then
  STATUS+=("smallfiles cached"); log "smallfiles: cached $(layout_of smallfiles)"
else
  ensure_base_image
  log "smallfiles: generating 20,000 files"
  python3 - "$TMP/smallfiles/node_modules" "$SOURCE_DATE_EPOCH" <<'PY'
import math, os, random, sys
root, epoch = sys.argv[1], int(sys.argv[2])
rng = random.Random(20250520)
syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "ex", "on", "ar"]
words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(2000)]
kw = ["const", "function", "return", "if", "else", "export", "import", "require", "=>", "{", "}", ";", "=", "(", ")", "."]
# A 1 MiB pool of JS-like text; each file is a header plus a slice of it.
lines, n = [], 0
while n < 1 << 20:
    ln = "  " * rng.randint(0, 3) + " ".join(rng.choice(words if rng.random() < 0.7 else kw) for _ in range(rng.randint(2, 12))) + "\n"
    lines.append(ln); n += len(ln)
pool = "".join(lines).encode()
npkg, per_dir = 100, 100
files = []
os.makedirs(root)
for p in range(npkg):
    for sub in ("", "lib"):
        d = os.path.join(root, f"pkg-{p:03d}", sub)
        os.makedirs(d, exist_ok=True)
        for f in range(per_dir):
            name = ("index" if f == 0 and not sub else f"{rng.choice(words)}-{f:03d}") + rng.choice([".js", ".js", ".js", ".json", ".d.ts", ".map"])
            path = os.path.join(d, name)
            size = int(math.exp(rng.uniform(math.log(200), math.log(16384))))
            head = f"// {os.path.relpath(path, root)}\n".encode()
            off = rng.randrange(0, len(pool) - size)
            with open(path, "wb") as fh:
                fh.write((head + pool[off:off + size])[:size])
            os.chmod(path, 0o755 if f % 97 == 1 else 0o644)
            files.append(path)
bindir = os.path.join(root, ".bin")
os.makedirs(bindir)
links = []
for i in range(100):  # node_modules/.bin/<cmd> -> ../pkg-NNN/lib/<file>
    t = files[rng.randrange(len(files))]
    l = os.path.join(bindir, f"cmd-{i:03d}")
    os.symlink(os.path.relpath(t, bindir), l); links.append(l)
for i in range(200):  # pkg-NNN/alias-K.js -> a file in the same package
    p = rng.randrange(npkg)
    t = files[p * 2 * per_dir + rng.randrange(2 * per_dir)]
    l = os.path.join(root, f"pkg-{p:03d}", f"alias-{i:03d}.js")
    os.symlink(os.path.relpath(t, os.path.dirname(l)), l); links.append(l)
for i in range(300):  # hardlinks across packages (deduplicated installs)
    t = files[rng.randrange(len(files))]
    l = os.path.join(root, f"pkg-{rng.randrange(npkg):03d}", "lib", f"shared-{i:03d}.js")
    os.link(t, l)
for dirpath, dirnames, filenames in os.walk(root, topdown=False):
    for f in filenames:
        os.utime(os.path.join(dirpath, f), (epoch, epoch), follow_symlinks=False)
    os.utime(dirpath, (epoch, epoch))
PY
  ctr="$(buildah from --pull=never "$BASE_IMG")"
  CONTAINERS+=("$ctr")
  buildah add --quiet "$ctr" "$TMP/smallfiles/node_modules" /app/node_modules >/dev/null
  buildah config --workingdir /app --created-by "buildah add node_modules /app/node_modules" "$ctr"
  buildah commit --quiet --rm "$ctr" "$SF_IMG" >/dev/null
  IMAGES+=("$SF_IMG")
  push_layout "$SF_IMG" smallfiles --format oci
  STATUS+=("smallfiles built"); log "smallfiles: built $(layout_of smallfiles)"
fi

# --- report: per image and layer, and OUT/corpus.json ---------------------------
args=()
for s in "${STATUS[@]}"; do
  name="${s%% *}"
  args+=("$name" "$(layout_of "$name")" "${s#* }")
done
python3 - "$OUT/corpus.json" "${args[@]}" <<'PY'
import json, os, subprocess, sys, tarfile

out, rest = sys.argv[1], sys.argv[2:]
images = [rest[i:i + 3] for i in range(0, len(rest), 3)]
stats_cache = {}

def decompress_cmd(media_type, blob):
    if media_type.endswith("+zstd") or media_type.endswith(".zstd"):
        return ["zstd", "-dc", "--", blob]
    if media_type.endswith("+gzip") or media_type.endswith(".gzip"):
        return ["gzip", "-dc", "--", blob]
    return ["cat", "--", blob]

def layer_stats(layout, layer):
    d = layer["digest"]
    if d in stats_cache:
        return stats_cache[d]
    blob = os.path.join(layout, "blobs", *d.split(":", 1))
    cmd = decompress_cmd(layer["mediaType"], blob)
    # Entry count as `tar -t` sees it ...
    dec = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    tar_t = subprocess.run(["tar", "-t"], stdin=dec.stdout, capture_output=True, check=True)
    dec.stdout.close()
    if dec.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed")
    s = {"entries": len(tar_t.stdout.splitlines()), "files": 0, "dirs": 0, "symlinks": 0,
         "hardlinks": 0, "whiteouts": 0, "opaque_dirs": 0, "xattr_entries": 0,
         "capability_xattrs": 0, "reg_with_linkname": 0, "uncompressed_file_bytes": 0}
    # ... and the details from the PAX/ustar headers.
    dec = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    n = 0
    with tarfile.open(fileobj=dec.stdout, mode="r|") as t:
        for e in t:
            n += 1
            base = e.name.rstrip("/").rsplit("/", 1)[-1]
            if base == ".wh..wh..opq":
                s["opaque_dirs"] += 1
            elif base.startswith(".wh."):
                s["whiteouts"] += 1
            if e.isdir(): s["dirs"] += 1
            elif e.issym(): s["symlinks"] += 1
            elif e.islnk(): s["hardlinks"] += 1
            elif e.isreg():
                s["files"] += 1
                s["uncompressed_file_bytes"] += e.size
                if e.linkname: s["reg_with_linkname"] += 1
            xk = [k for k in e.pax_headers if k.startswith("SCHILY.xattr.")]
            if xk: s["xattr_entries"] += 1
            if "SCHILY.xattr.security.capability" in e.pax_headers: s["capability_xattrs"] += 1
    dec.stdout.close()
    dec.wait()
    if n != s["entries"]:
        print(f"warning: {d}: tar -t lists {s['entries']} entries, python tarfile {n}", file=sys.stderr)
    stats_cache[d] = s
    return s

corpus, problems = [], []
for name, layout, status in images:
    index = json.load(open(os.path.join(layout, "index.json")))
    mdesc = next((m for m in index["manifests"]
                  if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == name),
                 index["manifests"][0])
    manifest = json.load(open(os.path.join(layout, "blobs", *mdesc["digest"].split(":", 1))))
    layers = []
    for l in manifest["layers"]:
        layers.append({"digest": l["digest"], "mediaType": l["mediaType"], "size": l["size"],
                       **layer_stats(layout, l)})
    size = manifest["config"]["size"] + sum(l["size"] for l in manifest["layers"])
    corpus.append({"name": name, "layout": layout, "tag": name, "status": status,
                   "manifest_digest": mdesc["digest"], "manifest_media_type": mdesc.get("mediaType"),
                   "compressed_size": size, "layers": layers})
    tot = lambda k: sum(l[k] for l in layers)
    if name.startswith("python"):
        if not any(l["capability_xattrs"] for l in layers): problems.append(f"{name}: no security.capability xattr")
        if not tot("hardlinks"): problems.append(f"{name}: no hardlink entry")
        if not any(l["whiteouts"] for l in layers): problems.append(f"{name}: no whiteout entries")
        if not any(l["opaque_dirs"] for l in layers): problems.append(f"{name}: no opaque directory")
        if name == "python-zstd" and not all(l["mediaType"].endswith("zstd") for l in layers):
            problems.append(f"{name}: not all layers are zstd: {[l['mediaType'] for l in layers]}")
    if name == "smallfiles":
        top = layers[-1]
        if top["files"] < 20000 or top["symlinks"] < 300 or top["hardlinks"] < 300:
            problems.append(f"smallfiles: top layer has {top['files']} files, {top['symlinks']} symlinks, {top['hardlinks']} hardlinks")

with open(out + ".tmp", "w") as fh:
    json.dump({"images": corpus}, fh, indent=2)
    fh.write("\n")
os.replace(out + ".tmp", out)

print(f"{'image':<12} {'status':<7} {'layers':>6} {'compressed':>12}  {'manifest digest':<71}  layout")
for c in corpus:
    print(f"{c['name']:<12} {c['status']:<7} {len(c['layers']):>6} {c['compressed_size']:>12}  "
          f"{c['manifest_digest']:<71}  {c['layout']}:{c['tag']}")
    print(f"{'':<12} entries per layer: {' + '.join(str(l['entries']) for l in c['layers'])}")
print()
print("per layer (entries: files/dirs/symlinks/hardlinks; whiteouts, opaque dirs, xattr entries, security.capability):")
for c in corpus:
    for i, l in enumerate(c["layers"]):
        kind = l["mediaType"].rsplit(".", 1)[-1]
        print(f"  {c['name']:<12} L{i} {l['digest'][7:19]} {kind:<9} {l['size']:>10} B  "
              f"entries {l['entries']:>6} ({l['files']}/{l['dirs']}/{l['symlinks']}/{l['hardlinks']})  "
              f"wh {l['whiteouts']} opq {l['opaque_dirs']} xattr {l['xattr_entries']} cap {l['capability_xattrs']}")
print(f"\ncorpus: {out}")
if problems:
    print("\n".join("PROBLEM: " + p for p in problems), file=sys.stderr)
    raise SystemExit(1)
PY
