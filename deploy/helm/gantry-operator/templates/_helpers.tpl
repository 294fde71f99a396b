{{/* The chart's name, shortened to what a label allows. */}}
{{- define "gantry-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's resource name. */}}
{{- define "gantry-operator.fullname" -}}
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

{{- define "gantry-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gantry-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gantry-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "gantry-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "gantry-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gantry-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image, `registry/repository:tag`: the operator's, and the run pods' launcher image.
*/}}
{{- define "gantry-operator.image" -}}
{{- $reference := printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- if .Values.image.registry }}
{{- printf "%s/%s" (trimSuffix "/" .Values.image.registry) $reference }}
{{- else }}
{{- $reference }}
{{- end }}
{{- end }}

{{/* The namespace the operator serves with rbac.scope namespace. */}}
{{- define "gantry-operator.watchNamespace" -}}
{{- default .Release.Namespace .Values.watchNamespace }}
{{- end }}

{{/* Refuses values the operator could not work with. */}}
{{- define "gantry-operator.validate" -}}
{{- if not (has .Values.rbac.scope (list "namespace" "cluster")) }}
{{- fail (printf "rbac.scope must be namespace or cluster, not %q" .Values.rbac.scope) }}
{{- end }}
{{- if and (eq .Values.rbac.scope "cluster") .Values.watchNamespace }}
{{- fail "watchNamespace is for rbac.scope namespace: with cluster the operator watches every namespace" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.port) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.port" }}
{{- end }}
{{- end }}

{{/*
What the operator does, in the namespace it serves or in all of them: run pods, their
Secrets and disruption budgets, events on its resources, the resources themselves.
*/}}
{{- define "gantry-operator.rules" -}}
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Worker identities, registered pools' credentials, each run's assignment.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Events it records on WorkerPools, and those it reads to explain a pending run pod.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["workers.gantry.dev"]
  resources: ["workerpools", "workers"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["workers.gantry.dev"]
  resources: ["workerpools/status", "workers/status"]
  verbs: ["get", "update", "patch"]
- apiGroups: ["workers.gantry.dev"]
  resources: ["workerpools/finalizers", "workers/finalizers"]
  verbs: ["update"]
{{- end }}
