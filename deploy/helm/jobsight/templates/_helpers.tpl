{{/* Names and labels shared by every object. */}}
{{- define "jobsight.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "jobsight.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "jobsight.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "jobsight.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "jobsight.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "jobsight.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "agent") */}}
{{- define "jobsight.selector" -}}
app.kubernetes.io/name: {{ include "jobsight.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "jobsight.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The API's in-cluster URL, for the watcher and the Alertmanager webhook. */}}
{{- define "jobsight.apiUrl" -}}
{{- printf "http://%s-api.%s.svc:%d" (include "jobsight.fullname" .) .Release.Namespace (int .Values.api.port) -}}
{{- end -}}

{{/* A container securityContext with every capability dropped but `add`. */}}
{{- define "jobsight.dropAll" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* The exporter web config (TLS, basic auth) mount, when enabled: (dict "root" $ "cfg" .Values.agent.webConfig) */}}
{{- define "jobsight.webConfigArgs" -}}
{{- if .cfg.enabled }}
- --web.config.file=/etc/jobsight/web/web-config.yml
{{- end }}
{{- end -}}
