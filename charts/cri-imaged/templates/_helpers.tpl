{{/* Chart name, truncated to 63 characters. */}}
{{- define "cri-imaged.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name. */}}
{{- define "cri-imaged.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cri-imaged.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cri-imaged.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cri-imaged.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cri-imaged.labels" -}}
helm.sh/chart: {{ include "cri-imaged.chart" . }}
{{ include "cri-imaged.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: image-service
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "cri-imaged.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cri-imaged.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cri-imaged.image" -}}
{{- if eq .Values.image.repository "registry.example.com/cri-imaged" }}
{{- fail "image.repository is still the placeholder registry.example.com/cri-imaged: there is no published image; build it from the Containerfile, push it, and set image.repository (and image.tag or image.digest)" }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The config file as the daemon reads it: .Values.config, with
registry_config_path pointing at the mirrors ConfigMap when registryMirrors is set.
*/}}
{{- define "cri-imaged.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- if and .Values.registryMirrors (eq .Values.mode "host") }}
{{- fail "registryMirrors is rendered into a ConfigMap that only a pod can mount: set mode: pod, or (host mode) configure mirrors in the node's certs.d (config.registry_config_path)" }}
{{- end }}
{{- if .Values.registryMirrors }}
{{- $_ := set $cfg "registry_config_path" .Values.registryMirrorsPath }}
{{- end }}
{{- if eq .Values.mode "pod" }}
{{- /* The pod mounts the snapshotter root read-only: containerd writes every
layer, and downloads stream straight into its content store (no spool in the
pod's small in-memory /tmp). */}}
{{- $_ := set $cfg "unpacker" "containerd" }}
{{- $_ := set $cfg "spool_dir" "" }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* Port of config.metrics_address (an IP:port socket address). */}}
{{- define "cri-imaged.metricsPort" -}}
{{- $port := regexFind "[0-9]+$" (toString .Values.config.metrics_address) }}
{{- if not $port }}
{{- fail "config.metrics_address must be an IP:port address such as 0.0.0.0:9110 (the probes and the Service use it)" }}
{{- end }}
{{- $port }}
{{- end }}

{{/*
Snapshotter roots to mount read-only (ImageFsInfo statvfs/du): the default
snapshotter's root and those of runtime_handler_snapshotters, one per line.
*/}}
{{- define "cri-imaged.snapshotterRoots" -}}
{{- $c := .Values.config }}
{{- $roots := list }}
{{- if $c.snapshotter_root }}
{{- $roots = append $roots $c.snapshotter_root }}
{{- else }}
{{- $roots = append $roots (printf "%s/io.containerd.snapshotter.v1.%s" (trimSuffix "/" $c.containerd_root) $c.snapshotter) }}
{{- end }}
{{- range $handler, $snap := $c.runtime_handler_snapshotters }}
{{- $roots = append $roots (printf "%s/io.containerd.snapshotter.v1.%s" (trimSuffix "/" $c.containerd_root) $snap) }}
{{- end }}
{{- join "\n" ($roots | uniq) }}
{{- end }}

{{/* Key of a registry's hosts.toml in the mirrors ConfigMap (no ':' allowed). */}}
{{- define "cri-imaged.mirrorKey" -}}
{{- printf "%s.hosts.toml" (. | replace ":" "_") }}
{{- end }}

{{/* hosts.toml for one registry: args (list registry entry). */}}
{{- define "cri-imaged.hostsToml" -}}
{{- $registry := index . 0 }}
{{- $e := index . 1 }}
{{- if $e.hostsToml }}
{{- $e.hostsToml }}
{{- else }}
{{- $server := $e.server }}
{{- if not $server }}
{{- if eq $registry "docker.io" }}
{{- $server = "https://registry-1.docker.io" }}
{{- else if ne $registry "_default" }}
{{- $server = printf "https://%s" $registry }}
{{- end }}
{{- end }}
{{- if $server }}
server = {{ $server | quote }}
{{- end }}
{{- range $m := $e.mirrors }}

[host.{{ $m.host | quote }}]
  capabilities = [{{ range $i, $c := (default (list "pull" "resolve") $m.capabilities) }}{{ if $i }}, {{ end }}{{ $c | quote }}{{ end }}]
{{- if $m.skipVerify }}
  skip_verify = true
{{- end }}
{{- if $m.overridePath }}
  override_path = true
{{- end }}
{{- if $m.ca }}
  ca = {{ $m.ca | quote }}
{{- end }}
{{- with $m.header }}
  [host.{{ $m.host | quote }}.header]
{{- range $k, $v := . }}
    {{ $k | quote }} = [{{ range $i, $x := $v }}{{ if $i }}, {{ end }}{{ $x | quote }}{{ end }}]
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Exec probe: does the CRI socket answer ImageFsInfo in time? */}}
{{- define "cri-imaged.healthProbe" -}}
exec:
  command:
    - /usr/local/bin/cri-imaged
    - health
    - --socket
    - {{ .Values.config.listen }}
    - --timeout
    - {{ .Values.hostService.healthTimeout }}
{{- end }}

{{/*
PromQL label matchers selecting cri-imaged's series in the PrometheusRule:
prometheusRule.selector, or the job label Prometheus Operator gives this
release's targets (ServiceMonitor: the Service's name; PodMonitor:
<namespace>/<PodMonitor name>).
*/}}
{{- define "cri-imaged.ruleSelector" -}}
{{- if .Values.prometheusRule.selector }}
{{- .Values.prometheusRule.selector }}
{{- else }}
{{- $name := include "cri-imaged.fullname" . }}
{{- printf "job=~\"%s|%s\"" (regexQuoteMeta $name) (regexQuoteMeta (printf "%s/%s" .Release.Namespace $name)) }}
{{- end }}
{{- end }}

{{/*
An alert's labels, (dict "root" $ "severity" "warning"): its severity and
prometheusRule.additionalRuleLabels (which may replace the severity).
*/}}
{{- define "cri-imaged.alertLabels" -}}
{{- $extra := .root.Values.prometheusRule.additionalRuleLabels | default dict }}
{{- toYaml (merge (deepCopy $extra) (dict "severity" .severity)) }}
{{- end }}
