{{/* The release's full name, at most 63 characters. */}}
{{- define "ciwatch.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ciwatch.serviceAccountName" -}}
{{- default (include "ciwatch.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "ciwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ciwatch.labels" -}}
{{ include "ciwatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
