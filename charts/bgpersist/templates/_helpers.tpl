{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "bgpersist.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name: the release name alone when it already holds the chart name. */}}
{{- define "bgpersist.fullname" -}}
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

{{- define "bgpersist.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The immutable pod selector of the operator Deployment. */}}
{{- define "bgpersist.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bgpersist.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "bgpersist.labels" -}}
helm.sh/chart: {{ include "bgpersist.chart" . }}
{{ include "bgpersist.selectorLabels" . }}
app.kubernetes.io/part-of: bgpersist
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "bgpersist.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bgpersist.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bgpersist.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Namespace the operator's Events land in. kube-runtime's event Recorder writes
the events of a cluster-scoped object (every BackgroundPersistence) into
"default"; the events Role lives there.
*/}}
{{- define "bgpersist.eventsNamespace" -}}
default
{{- end }}
