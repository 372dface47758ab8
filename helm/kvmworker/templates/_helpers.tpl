{{/* Names and labels shared by every object of the chart. */}}

{{- define "kvmworker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvmworker.fullname" -}}
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

{{- define "kvmworker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kvmworker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: pass (dict "root" $ "component" "worker"). */}}
{{- define "kvmworker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvmworker.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "kvmworker.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "kvmworker.secretName" -}}
{{- default (include "kvmworker.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{/* Restart the pods when the chart's own Secret changes; a Secret managed elsewhere is not ours to hash. */}}
{{- define "kvmworker.secretChecksum" -}}
{{- if not .Values.secret.existingSecret -}}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end }}

{{/* Environment both roles share: the broker, logging, and the signing keys when enabled. */}}
{{- define "kvmworker.commonEnv" -}}
- name: KVMWORKER_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "kvmworker.secretName" . }}
      key: broker-url
- name: KVMWORKER_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: KVMWORKER_LOG_JSON
  value: {{ .Values.logJson | quote }}
{{- if .Values.signing.enabled }}
- name: KVMWORKER_TRUSTED_KEYS_FILE
  value: /etc/kvmworker/secret/trusted-keys.json
{{- end }}
{{- end }}

{{/* Values that render but must not be deployed: refused with the reason. */}}
{{- define "kvmworker.checks" -}}
{{- if and .Values.signing.enabled .Values.bridge.enabled (not .Values.bridge.auth.enabled) }}
{{- fail "signing.enabled needs bridge.auth.enabled: a bridge without logins would sign any command anyone in the cluster sends it (set bridge.auth.enabled=true, or bridge.enabled=false)" }}
{{- end }}
{{- end }}
