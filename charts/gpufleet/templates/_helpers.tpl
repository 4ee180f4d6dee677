{{/* Names are cut to 63 characters: the limit of a DNS label and of a label value. */}}
{{- define "gpufleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or just the release name when it already contains the chart name. */}}
{{- define "gpufleet.fullname" -}}
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

{{/* A name derived from the full name: the suffix always survives the cut. */}}
{{- define "gpufleet.suffixed" -}}
{{- $ctx := index . 0 }}{{ $suffix := index . 1 }}
{{- printf "%s-%s" (include "gpufleet.fullname" $ctx | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{- define "gpufleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of the operator; the e2e process-pod runner selects the operator pod by them too. */}}
{{- define "gpufleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpufleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gpufleet.labels" -}}
helm.sh/chart: {{ include "gpufleet.chart" . }}
{{ include "gpufleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gpufleet
{{- end }}

{{- define "gpufleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gpufleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gpufleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "gpufleet.redis.secretName" -}}
{{- default (include "gpufleet.suffixed" (list . "redis")) .Values.redis.auth.existingSecret }}
{{- end }}

{{/* The subject every binding of the chart names: the operator's ServiceAccount. */}}
{{- define "gpufleet.subjects" -}}
- kind: ServiceAccount
  name: {{ include "gpufleet.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}

{{/*
Grants the rules of the named template to the operator: cluster-wide (ClusterRole + ClusterRoleBinding) when
rbac.namespaces is empty, else a Role + RoleBinding in each of rbac.namespaces. Arguments: (list $ name rules).
*/}}
{{- define "gpufleet.grant" -}}
{{- $ctx := index . 0 }}{{ $name := index . 1 }}{{ $rules := index . 2 }}
{{- range $ctx.Values.rbac.namespaces | default (list "") }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ if . }}Role{{ else }}ClusterRole{{ end }}
metadata:
  name: {{ $name }}
  {{- with . }}
  namespace: {{ . }}
  {{- end }}
  labels:
    {{- include "gpufleet.labels" $ctx | nindent 4 }}
    app.kubernetes.io/component: operator
rules:
  {{- include $rules $ctx | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ if . }}RoleBinding{{ else }}ClusterRoleBinding{{ end }}
metadata:
  name: {{ $name }}
  {{- with . }}
  namespace: {{ . }}
  {{- end }}
  labels:
    {{- include "gpufleet.labels" $ctx | nindent 4 }}
    app.kubernetes.io/component: operator
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: {{ if . }}Role{{ else }}ClusterRole{{ end }}
  name: {{ $name }}
subjects:
  {{- include "gpufleet.subjects" $ctx | nindent 2 }}
{{- end }}
{{- end }}

{{/* Where the operator pod runs; the `helm test` pod runs there too. */}}
{{- define "gpufleet.placement" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
