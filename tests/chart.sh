#!/usr/bin/env bash
# Chart tests: for the default values and each charts/cri-imaged/ci/*.yaml,
# helm lint, helm template, validate every object against the Kubernetes 1.33
# schemas, and run `cri-imaged serve --config <rendered config> --check`.
# Also: manifests/cri-imaged.yaml is up to date, bad values are refused.
# Env: CRI_IMAGED_BIN (default target/debug/cri-imaged).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
CHART=charts/cri-imaged
MANIFEST=manifests/cri-imaged.yaml
K8S_VERSION=1.33.0
BIN="$REPO/.tools/bin"
CRI_IMAGED_BIN="${CRI_IMAGED_BIN:-target/debug/cri-imaged}"
# The chart refuses its placeholder image.repository; every rendering here sets one.
IMG=(--set image.repository=registry.local/cri-imaged)
REGEN="$BIN/helm template cri-imaged $CHART --namespace kube-system ${IMG[*]} > $MANIFEST"

if ! [ -x "$BIN/helm" ] || ! [ -x "$BIN/kubernetes-validate" ]; then
  bash "$REPO/scripts/install-tools.sh" >&2
fi
HELM="$BIN/helm"
KV="$BIN/kubernetes-validate"
PY="$REPO/.tools/venv/bin/python"
[ -x "$PY" ] || PY=python3   # has PyYAML: kubernetes-validate depends on it

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok   - $*"; }
fail() { failed=$((failed + 1)); echo "FAIL - $*"; }
# run NAME CMD...: run CMD, its output kept in $WORK/log and shown on failure.
run() {
  local name="$1"; shift
  if "$@" >"$WORK/log" 2>&1; then pass "$name"; else fail "$name"; sed 's/^/    /' "$WORK/log"; fi
}

# validate FILE: every object against the k8s schemas; only the Prometheus
# Operator kinds (CRDs) may lack a schema.
validate() {
  local out rc=0
  out="$("$KV" -k "$K8S_VERSION" --strict "$1" 2>&1)" || rc=$?
  echo "$out"
  [ "$rc" = 0 ] || return 1
  if echo "$out" | grep "Couldn't find schema" | grep -Ev "kind (ServiceMonitor|PodMonitor) with api version monitoring.coreos.com/v1 " ; then
    echo "objects above have no Kubernetes $K8S_VERSION schema"; return 1
  fi
  # The CRD kinds get a structural check instead.
  "$PY" - "$1" <<'PY'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if not d or d.get("kind") not in ("ServiceMonitor", "PodMonitor"):
        continue
    assert d["apiVersion"] == "monitoring.coreos.com/v1", d["apiVersion"]
    spec = d["spec"]
    assert spec["selector"]["matchLabels"], "empty selector"
    eps = spec.get("endpoints") if d["kind"] == "ServiceMonitor" else spec.get("podMetricsEndpoints")
    assert eps and all(e.get("port") == "metrics" or isinstance(e.get("targetPort"), int) for e in eps), eps
    print("structure ok:", d["kind"], d["metadata"]["name"])
PY
}

# extract FILE OUTDIR: write the ConfigMap's config.yaml (and any hosts.toml)
extract() {
  "$PY" - "$1" "$2" <<'PY'
import sys, os, yaml
out = sys.argv[2]
found = False
for d in yaml.safe_load_all(open(sys.argv[1])):
    if not d or d.get("kind") != "ConfigMap":
        continue
    data = d.get("data") or {}
    if "config.yaml" in data:
        open(os.path.join(out, "config.yaml"), "w").write(data["config.yaml"])
        found = True
    for k, v in data.items():
        if k.endswith(".hosts.toml"):
            open(os.path.join(out, k), "w").write(v)
sys.exit(0 if found else "no ConfigMap with config.yaml in the rendering")
PY
}

check_toml() {
  local f n=0
  for f in "$1"/*.hosts.toml; do
    [ -e "$f" ] || continue
    "$PY" -c 'import sys,tomllib; tomllib.load(open(sys.argv[1],"rb"))' "$f" || { echo "bad TOML: $f"; cat "$f"; return 1; }
    n=$((n + 1))
  done
  echo "$n hosts.toml files parse"
}

have_bin=1
if ! [ -x "$CRI_IMAGED_BIN" ]; then
  have_bin=0
  echo "note: $CRI_IMAGED_BIN not found (build it with cargo build, or set CRI_IMAGED_BIN); the --check tests fail"
fi

# install-tools.sh checks what it unpacks: the real helm passes, a changed one is refused.
cp "$HELM" "$WORK/helm-tampered"; printf x >>"$WORK/helm-tampered"
if bash "$REPO/scripts/install-tools.sh" --verify helm "$HELM" >"$WORK/log" 2>&1 \
   && ! bash "$REPO/scripts/install-tools.sh" --verify helm "$WORK/helm-tampered" >>"$WORK/log" 2>&1; then
  pass "install-tools.sh verifies helm's sha256 and version"
else
  fail "install-tools.sh verification"; sed 's/^/    /' "$WORK/log"
fi

# The binary must refuse a bad config, or its --check proves nothing.
printf 'log_format: xml\nno_such_key: 1\n' > "$WORK/bad-config.yaml"
if [ "$have_bin" = 1 ] && ! "$CRI_IMAGED_BIN" serve --config "$WORK/bad-config.yaml" --check >"$WORK/log" 2>&1; then
  pass "cri-imaged --check refuses a bad config"
else
  fail "cri-imaged --check refuses a bad config ($CRI_IMAGED_BIN exited 0 or is missing)"
fi

for values in default "$CHART"/ci/*.yaml; do
  if [ "$values" = default ]; then name=default; args=(); else name="$(basename "$values" .yaml)"; args=(-f "$values"); fi
  dir="$WORK/$name"; mkdir -p "$dir"
  run "$name: helm lint" "$HELM" lint --strict "$CHART" "${IMG[@]}" "${args[@]}"
  if "$HELM" template cri-imaged "$CHART" --namespace kube-system "${IMG[@]}" "${args[@]}" >"$dir/rendered.yaml" 2>"$WORK/log"; then
    pass "$name: helm template"
  else
    fail "$name: helm template"; sed 's/^/    /' "$WORK/log"; continue
  fi
  run "$name: kubernetes-validate $K8S_VERSION --strict" validate "$dir/rendered.yaml"
  if extract "$dir/rendered.yaml" "$dir" >"$WORK/log" 2>&1; then
    if [ "$have_bin" = 1 ]; then
      run "$name: cri-imaged serve --check" "$CRI_IMAGED_BIN" serve --config "$dir/config.yaml" --check
    else
      fail "$name: cri-imaged serve --check (no binary)"
    fi
    if ls "$dir"/*.hosts.toml >/dev/null 2>&1; then
      run "$name: hosts.toml files are TOML" check_toml "$dir"
    fi
  else
    fail "$name: extract config.yaml"; sed 's/^/    /' "$WORK/log"
  fi
done

# Schema: bad values are refused.
expect_refused() {
  local name="$1"; shift
  if "$HELM" template cri-imaged "$CHART" --namespace kube-system "${IMG[@]}" "$@" >"$WORK/log" 2>&1; then
    fail "$name (helm template succeeded)"
  elif grep -qi "schema" "$WORK/log"; then
    pass "$name"
  else
    fail "$name (failed, but not by schema validation)"; sed 's/^/    /' "$WORK/log"
  fi
}
expect_refused "schema refuses config.log_format=xml" --set config.log_format=xml
expect_refused "schema refuses an unknown config key" --set config.listen_adress=/x.sock
expect_refused "schema refuses image.pullPolicy=Sometimes" --set image.pullPolicy=Sometimes
expect_refused "schema refuses a hostname metrics_address" --set config.metrics_address=localhost:9110

# The placeholder image is refused with a message saying what to set.
if "$HELM" template cri-imaged "$CHART" --namespace kube-system >"$WORK/log" 2>&1; then
  fail "the placeholder image.repository is refused (rendered)"
elif grep -q "set image.repository" "$WORK/log"; then
  pass "the placeholder image.repository is refused, saying what to set"
else
  fail "the placeholder image.repository is refused (other error)"; sed 's/^/    /' "$WORK/log"
fi

# The conventional node-agent values take effect.
"$HELM" template cri-imaged "$CHART" --namespace kube-system "${IMG[@]}" --set mode=pod \
  --set 'extraArgs={--log-level,debug}' --set revisionHistoryLimit=3 \
  --set daemonsetAnnotations.team=images --set podSecurityContext.runAsNonRoot=false \
  --set securityContext.readOnlyRootFilesystem=false >"$WORK/values.yaml"
run "extraArgs, revisionHistoryLimit, daemonsetAnnotations, security contexts, startupProbe" "$PY" - "$WORK/values.yaml" <<'PY'
import sys, yaml
ds = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "DaemonSet"][0]
assert ds["metadata"]["annotations"]["team"] == "images"
assert ds["spec"]["revisionHistoryLimit"] == 3
pod = ds["spec"]["template"]["spec"]
assert pod["securityContext"] == {"runAsNonRoot": False, "seccompProfile": {"type": "RuntimeDefault"}}, pod["securityContext"]
c = pod["containers"][0]
assert c["args"][-2:] == ["--log-level", "debug"], c["args"]
assert c["securityContext"]["readOnlyRootFilesystem"] is False and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
assert c["startupProbe"]["exec"]["command"][1] == "health" and c["startupProbe"]["failureThreshold"] == 90
print("ok")
PY

# Host mode cannot mount a mirrors ConfigMap: refused with a message.
if "$HELM" template cri-imaged "$CHART" --namespace kube-system "${IMG[@]}" --set registryMirrors.docker\\.io.server=https://m.example.com >"$WORK/log" 2>&1; then
  fail "host mode refuses registryMirrors (rendered)"
elif grep -q "set mode: pod" "$WORK/log"; then
  pass "host mode refuses registryMirrors, saying what to set"
else
  fail "host mode refuses registryMirrors (other error)"; sed 's/^/    /' "$WORK/log"
fi

# The committed manifests are what the chart renders: the default values
# (host mode) and the in-pod mode.
check_manifest() {
  local file="$1"; shift
  if [ -f "$file" ] && "$HELM" template cri-imaged "$CHART" --namespace kube-system "${IMG[@]}" "$@" >"$WORK/manifest.yaml" 2>"$WORK/log" \
     && diff -u "$file" "$WORK/manifest.yaml" >"$WORK/diff"; then
    pass "$file is up to date"
  else
    fail "$file is stale or missing; regenerate it with: $BIN/helm template cri-imaged $CHART --namespace kube-system ${IMG[*]} $* > $file"
    head -n 60 "$WORK/diff" 2>/dev/null | sed 's/^/    /' || true
  fi
}
check_manifest "$MANIFEST"
check_manifest manifests/cri-imaged-pod-mode.yaml --set mode=pod

# Host mode: the pod installs and watches the host service; pod mode runs it.
"$HELM" template cri-imaged "$CHART" --namespace kube-system "${IMG[@]}" >"$WORK/host.yaml"
"$HELM" template cri-imaged "$CHART" --namespace kube-system "${IMG[@]}" --set mode=pod >"$WORK/pod.yaml"
run "host mode: install init container, hostPID, probes call cri-imaged health" "$PY" - "$WORK/host.yaml" "$WORK/pod.yaml" <<'PY'
import sys, yaml
def ds(path):
    return [d for d in yaml.safe_load_all(open(path)) if d and d["kind"] == "DaemonSet"]
host, = ds(sys.argv[1]); pod, = ds(sys.argv[2])
hs = host["spec"]["template"]["spec"]
assert hs["hostPID"] is True
init = hs["initContainers"][0]
assert init["command"][:4] == ["/usr/local/bin/cri-imaged", "install", "--root", "/host"], init["command"]
assert "--systemctl" in init["command"]
c = hs["containers"][0]
for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
    assert c[probe]["exec"]["command"][1] == "health", probe
ps = pod["spec"]["template"]["spec"]
assert ps["hostPID"] is False and "initContainers" not in ps
assert ps["containers"][0]["args"] == ["--config", "/etc/cri-imaged/config.yaml"]
assert ps["containers"][0]["livenessProbe"]["exec"]["command"][1] == "health"
print("ok")
PY

echo "chart: $passed passed, $failed failed"
[ "$failed" = 0 ]
