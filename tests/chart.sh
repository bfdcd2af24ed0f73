#!/usr/bin/env bash
# Chart tests: for the default values and each charts/cri-imaged/ci/*.yaml,
# helm lint, helm template, validate every object against the Kubernetes 1.33
# schemas, and run `cri-imaged serve --config <rendered config> --check`.
# Also: manifests/cri-imaged.yaml is up to date, bad values are refused, the
# Grafana dashboard and the PrometheusRule (dashboard.enabled,
# prometheusRule.enabled) render, use only metrics src/metrics.rs exports, and
# pass promtool (check rules, and the unit tests in tests/chart-alerts.test.yaml).
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
# promtool: Debian's prometheus package (scripts/install-deps.sh --test).
PROMTOOL="$(command -v promtool || true)"

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
# Operator kinds (CRDs: ServiceMonitor, PodMonitor, PrometheusRule) may lack a
# schema, and get a structural check instead.
validate() {
  local out rc=0
  out="$("$KV" -k "$K8S_VERSION" --strict "$1" 2>&1)" || rc=$?
  echo "$out"
  [ "$rc" = 0 ] || return 1
  if echo "$out" | grep "Couldn't find schema" | grep -Ev "kind (ServiceMonitor|PodMonitor|PrometheusRule) with api version monitoring.coreos.com/v1 " ; then
    echo "objects above have no Kubernetes $K8S_VERSION schema"; return 1
  fi
  # The CRD kinds get a structural check instead.
  "$PY" - "$1" <<'PY'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if not d or d.get("kind") not in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        continue
    assert d["apiVersion"] == "monitoring.coreos.com/v1", d["apiVersion"]
    spec = d["spec"]
    if d["kind"] == "PrometheusRule":
        assert spec["groups"], "no rule groups"
        for g in spec["groups"]:
            assert g["name"] and g["rules"], g
            for r in g["rules"]:
                assert r.get("expr") and ("alert" in r) != ("record" in r), r
        print("structure ok:", d["kind"], d["metadata"]["name"])
        continue
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

if [ -z "$PROMTOOL" ]; then
  echo "note: promtool not found (Debian package prometheus: bash scripts/install-deps.sh --test); the promtool tests fail"
fi

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
expect_refused "schema refuses a non-string dashboard label value" --set dashboard.labels.grafana_dashboard=1
expect_refused "schema refuses disabling an alert the chart does not have" --set prometheusRule.disabled.CriImagedNoSuchAlert=true

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

# Observability: the Grafana dashboard and the PrometheusRule, off by default.
# metricnames.py: the series names an expression may use (what src/metrics.rs
# registers, histograms also as _bucket/_sum/_count, the process collector's,
# and Prometheus's up), and a check that each one carries the selector.
DASHBOARD="$CHART/dashboards/cri-imaged.json"
cat >"$WORK/metricnames.py" <<'PY'
import re
# prometheus 0.14's ProcessCollector (process_collector.rs).
PROCESS = {"process_cpu_seconds_total", "process_open_fds", "process_max_fds",
           "process_virtual_memory_bytes", "process_resident_memory_bytes",
           "process_start_time_seconds", "process_threads"}
REF = re.compile(r'\b(cri_imaged_[a-z0-9_]+|process_[a-z0-9_]+|up)\b(\{[^}]*\})?')

def known(metrics_rs):
    text = open(metrics_rs).read()
    names = set(re.findall(r'"(cri_imaged_[a-z0-9_]+)"', text))
    # Histograms: a `const NAME: Def = ("cri_imaged_...", ...)` passed to
    # `histogram_vec(NAME, ...)`.
    consts = dict(re.findall(r'const ([A-Z0-9_]+): Def = \(\s*"(cri_imaged_[a-z0-9_]+)"', text))
    hist = {consts[c] for c in re.findall(r'histogram_vec\(\s*([A-Z0-9_]+)', text) if c in consts}
    assert len(names) >= 20 and hist, "no metric names found in " + metrics_rs
    return names | {h + s for h in hist for s in ("_bucket", "_sum", "_count")} | PROCESS | {"up"}

def check(expr, where, names, selector):
    """Problems of one expression: unknown series, series without the selector."""
    bad = []
    for m in REF.finditer(expr):
        name, labels = m.group(1), m.group(2) or ""
        if name not in names:
            bad.append(f"{where}: {name} is not a series cri-imaged exports (src/metrics.rs)")
        if selector not in labels:
            bad.append(f"{where}: {name} is not selected by {selector}")
    if not REF.search(expr):
        bad.append(f"{where}: uses no cri-imaged series: {expr}")
    return bad
PY
run "dashboard: JSON, schemaVersion >= 36, \${datasource}/\$job/\$instance variables; every panel has a title, the datasource, queries on src/metrics.rs series only" \
  "$PY" - "$DASHBOARD" src/metrics.rs "$WORK" <<'PY'
import json, re, sys
sys.path.insert(0, sys.argv[3])
import metricnames as mn
names = mn.known(sys.argv[2])
d = json.load(open(sys.argv[1]))
DS = {"type": "prometheus", "uid": "${datasource}"}
assert d["schemaVersion"] >= 36, d["schemaVersion"]
assert d["uid"] and d["title"] and d.get("id") is None
var = {v["name"]: v for v in d["templating"]["list"]}
assert var["datasource"]["type"] == "datasource" and var["datasource"]["query"] == "prometheus", var["datasource"]
bad = []
for n in ("job", "instance"):
    assert var[n]["type"] == "query" and var[n]["datasource"] == DS, var[n]
    bad += mn.check(var[n]["query"], "variable " + n, names, "")
panels = []
for p in d["panels"]:
    panels += p.get("panels", []) if p.get("type") == "row" else [p]
ids = [p["id"] for p in panels]
assert len(ids) == len(set(ids)), "panel ids repeat"
rules = []
for p in panels:
    where = f'panel {p["id"]} {p.get("title")!r}'
    if not p.get("title"):
        bad.append(f"{where}: no title")
    if p.get("datasource") != DS:
        bad.append(f"{where}: datasource {p.get('datasource')} is not {DS}")
    if not p.get("targets"):
        bad.append(f"{where}: no targets")
    for t in p.get("targets", []):
        if t.get("datasource", DS) != DS or not t.get("expr"):
            bad.append(f"{where} {t.get('refId')}: no expr, or another datasource")
            continue
        bad += mn.check(t["expr"], f"{where} {t['refId']}", names, 'job=~"$job", instance=~"$instance"')
        # Each query as a recording rule, so that promtool parses it.
        e = t["expr"].replace("$__rate_interval", "5m").replace("$__range", "1h")
        e = e.replace("$job", ".+").replace("$instance", ".+")
        assert "$" not in e, e
        rules.append({"record": f'dashboard:panel{p["id"]}:{t["refId"].lower()}', "expr": e})
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[3] + "/dashboard-rules.yaml", "w"), indent=1)
assert not bad, "\n".join(bad)
print(len(panels), "panels,", len(rules), "queries")
PY

obs=(--set dashboard.enabled=true --set prometheusRule.enabled=true)
"$HELM" template cri-imaged "$CHART" --namespace kube-system "${IMG[@]}" "${obs[@]}" >"$WORK/obs-on.yaml"
"$HELM" template cri-imaged "$CHART" --namespace kube-system "${IMG[@]}" >"$WORK/obs-off.yaml"
"$HELM" template cri-imaged "$CHART" --namespace kube-system "${IMG[@]}" -f "$CHART/ci/monitor-values.yaml" >"$WORK/obs-monitor.yaml"
run "dashboard ConfigMap and PrometheusRule: absent by default; with ${obs[*]}: the dashboard file, every alert with for/severity/summary/description on src/metrics.rs series" \
  "$PY" - "$WORK" "$DASHBOARD" src/metrics.rs tests/chart-alerts.test.yaml <<'PY'
import copy, json, re, sys, yaml
work, dashboard, metrics_rs, unit_tests = sys.argv[1:5]
sys.path.insert(0, work)
import metricnames as mn
names = mn.known(metrics_rs)
def objs(name, kind):
    return [d for d in yaml.safe_load_all(open(f"{work}/{name}.yaml")) if d and d["kind"] == kind]
def dashboards(name):
    return [c for c in objs(name, "ConfigMap") if "cri-imaged.json" in (c.get("data") or {})]
assert not dashboards("obs-off") and not objs("obs-off", "PrometheusRule"), "rendered by default"

cm, = dashboards("obs-on")
assert cm["metadata"]["labels"]["grafana_dashboard"] == "1", cm["metadata"]["labels"]
assert cm["metadata"]["namespace"] == "kube-system"
assert cm["data"]["cri-imaged.json"] == open(dashboard).read().strip(), "ConfigMap differs from " + dashboard

pr, = objs("obs-on", "PrometheusRule")
assert pr["apiVersion"] == "monitoring.coreos.com/v1" and pr["metadata"]["namespace"] == "kube-system"
rules = [r for g in pr["spec"]["groups"] for r in g["rules"]]
alerts = {r["alert"]: r for r in rules}
expected = {"CriImagedDown", "CriImagedContainerdUnreachable", "CriImagedPullFailureRatioHigh",
            "CriImagedPullsFailingNoSpace", "CriImagedPullsSlow", "CriImagedPullsStuckInFlight",
            "CriImagedRegistryRetriesFrequent", "CriImagedRegistryHostFallthroughsFrequent"}
assert set(alerts) == expected and len(rules) == len(expected), sorted(alerts)
bad = []
for name, r in alerts.items():
    if not re.fullmatch(r"[0-9]+[smh]", r.get("for", "")):
        bad.append(f"{name}: for {r.get('for')!r}")
    if r["labels"].get("severity") not in ("critical", "warning", "info"):
        bad.append(f"{name}: severity {r['labels'].get('severity')!r}")
    a = r.get("annotations") or {}
    if not a.get("summary") or "{{ $labels.instance }}" not in a.get("description", ""):
        bad.append(f"{name}: summary, or a description naming the instance, missing")
    bad += mn.check(r["expr"], name, names, 'job=~"cri-imaged|kube-system/cri-imaged"')
# Every alert has a unit test that sees it fire.
tested = {t["alertname"] for g in yaml.safe_load(open(unit_tests))["tests"]
          for t in g["alert_rule_test"] if t.get("exp_alerts")}
bad += [f"{n}: no unit test in {unit_tests} fires it" for n in sorted(expected - tested)]
assert not bad, "\n".join(bad)
yaml.safe_dump(pr["spec"], open(f"{work}/rules.yaml", "w"))
# promtool test rules compares annotations too: the unit tests check labels.
unit = copy.deepcopy(pr["spec"])
for r in (r for g in unit["groups"] for r in g["rules"]):
    r.pop("annotations", None)
yaml.safe_dump(unit, open(f"{work}/rules-unit.yaml", "w"))

# ci/monitor-values.yaml: every override.
cm, = dashboards("obs-monitor")
m = cm["metadata"]
assert m["namespace"] == "monitoring" and m["labels"]["grafana-dashboard"] == "cri-imaged", m
assert "grafana_dashboard" not in m["labels"] and m["annotations"] == {"grafana_folder": "Kubernetes"}, m
pr, = objs("obs-monitor", "PrometheusRule")
assert pr["metadata"]["labels"]["release"] == "kube-prometheus-stack" and pr["metadata"]["annotations"] == {"owner": "nodes"}
rules = [r for g in pr["spec"]["groups"] for r in g["rules"]]
alerts = {r["alert"]: r for r in rules if "alert" in r}
assert set(alerts) == expected - {"CriImagedRegistryHostFallthroughsFrequent"} | {"CriImagedNoImages"}, sorted(alerts)
assert rules[-2]["record"] == "job:cri_imaged_pulls:rate5m" and rules[-1]["alert"] == "CriImagedNoImages"
for name in expected & set(alerts):
    assert alerts[name]["labels"]["team"] == "nodes", alerts[name]["labels"]
    assert not mn.check(alerts[name]["expr"], name, names, 'job="cri-imaged"'), alerts[name]["expr"]
yaml.safe_dump(pr["spec"], open(f"{work}/rules-monitor.yaml", "w"))
print(len(expected), "alerts; overrides ok")
PY
if [ -n "$PROMTOOL" ]; then
  run "PrometheusRule: promtool check rules (defaults and ci/monitor-values.yaml)" "$PROMTOOL" check rules "$WORK/rules.yaml" "$WORK/rules-monitor.yaml"
  run "dashboard: every query is valid PromQL (promtool check rules)" "$PROMTOOL" check rules "$WORK/dashboard-rules.yaml"
  cp tests/chart-alerts.test.yaml "$WORK/"
  run "PrometheusRule: promtool test rules tests/chart-alerts.test.yaml" "$PROMTOOL" test rules "$WORK/chart-alerts.test.yaml"
else
  fail "PrometheusRule: promtool check rules (no promtool)"
  fail "dashboard: every query is valid PromQL (no promtool)"
  fail "PrometheusRule: promtool test rules (no promtool)"
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

# Where downloads wait: the host service spools in its StateDirectory; the
# pod (read-only snapshotter root, a 16Mi in-memory /tmp) leaves every layer
# to containerd and spools nothing.
run "config: host mode spools in /var/lib/cri-imaged/spool; pod mode renders unpacker: containerd" "$PY" - "$MANIFEST" manifests/cri-imaged-pod-mode.yaml packaging/systemd/cri-imaged.service <<'PY'
import sys, yaml
def cfg(path):
    for d in yaml.safe_load_all(open(path)):
        if d and d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {}):
            return yaml.safe_load(d["data"]["config.yaml"])
    sys.exit(f"{path}: no config.yaml")
host, pod = cfg(sys.argv[1]), cfg(sys.argv[2])
assert host["unpacker"] == "auto", host
assert host["spool_dir"] == "/var/lib/cri-imaged/spool", host
assert "StateDirectory=cri-imaged" in open(sys.argv[3]).read(), "the unit must create /var/lib/cri-imaged"
assert pod["unpacker"] == "containerd" and pod["spool_dir"] == "", pod
print("host:", host["unpacker"], host["spool_dir"], "| pod:", pod["unpacker"], repr(pod["spool_dir"]))
PY

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
