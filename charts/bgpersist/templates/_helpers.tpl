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

{{/*
The labels of one object: the chart's own, then the object's extra labels
(`extra`), then commonLabels; on a clash the earlier wins, so selectors and
the chart's labels never change. Call with (dict "ctx" $ "extra" <map or nil>).
*/}}
{{- define "bgpersist.objectLabels" -}}
{{- $own := include "bgpersist.labels" .ctx | fromYaml }}
{{- toYaml (merge $own (deepCopy (.extra | default dict)) (deepCopy (.ctx.Values.commonLabels | default dict))) }}
{{- end }}

{{/*
An `annotations:` block (nothing when empty): the object's own annotations
(`extra`), then commonAnnotations; the object's own win on a clash.
Call with (dict "ctx" $ "extra" <map or nil>).
*/}}
{{- define "bgpersist.objectAnnotations" -}}
{{- $all := merge (deepCopy (.extra | default dict)) (deepCopy (.ctx.Values.commonAnnotations | default dict)) }}
{{- with $all }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "bgpersist.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bgpersist.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator's image reference, also handed to it as BGP_WRITER_IMAGE. */}}
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
