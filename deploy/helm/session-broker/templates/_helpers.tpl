{{/* The release's name for its objects: the release name, with the chart's name added unless
it is already part of it; at most 63 characters (a label value's limit). */}}
{{- define "session-broker.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The bundled Redis' name: its StatefulSet and Service (the headless one adds "-headless"). */}}
{{- define "session-broker.redis" -}}
{{- printf "%s-redis" (include "session-broker.fullname" .) | trunc 54 | trimSuffix "-" -}}
{{- end -}}

{{- define "session-broker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: session-broker
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The proxy pods' selector: the kustomize base's labels plus the release. */}}
{{- define "session-broker.proxySelector" -}}
app.kubernetes.io/name: session-broker
app.kubernetes.io/component: proxy
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "session-broker.redisSelector" -}}
app.kubernetes.io/name: redis
app.kubernetes.io/component: store
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The pod and container security context of every workload: non-root, RuntimeDefault
seccomp, read-only root filesystem, no privilege escalation, no capabilities. */}}
{{- define "session-broker.podSecurity" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "session-broker.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "session-broker.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "session-broker.redisImage" -}}
{{- printf "%s:%s" .Values.redis.image.repository .Values.redis.image.tag -}}
{{- end -}}
