{{/* The chart's name, shortened to what a label allows. */}}
{{- define "gantry-server.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's resource name. */}}
{{- define "gantry-server.fullname" -}}
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

{{- define "gantry-server.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gantry-server.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gantry-server.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gantry-server.labels" -}}
helm.sh/chart: {{ include "gantry-server.chart" . }}
{{ include "gantry-server.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: control-plane
{{- end }}

{{- define "gantry-server.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gantry-server.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gantry-server.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Refuses values that would deploy replicas that cannot work together, or a secret in a
ConfigMap. Included by the Deployment, so `helm install` fails before anything is created.
*/}}
{{- define "gantry-server.validate" -}}
{{- if not .Values.server.publicUrl }}
{{- fail "server.publicUrl is required: the https:// address launchers reach (the load balancer in front of the replicas); it is written into pool tokens" }}
{{- end }}
{{- if not (hasPrefix "https://" .Values.server.publicUrl) }}
{{- fail "server.publicUrl must be an https:// address, like https://gantry.example.com:8443" }}
{{- end }}
{{- if and .Values.database.url .Values.database.urlSecret.name }}
{{- fail "set one of database.url and database.urlSecret.name, not both" }}
{{- end }}
{{- if not (or .Values.database.url .Values.database.urlSecret.name) }}
{{- fail "database.url (or database.urlSecret.name) is required: every replica uses one PostgreSQL database, postgres://user@host:port/database" }}
{{- end }}
{{- if regexMatch "^[a-z]+://[^/@]*:[^/@]*@" .Values.database.url }}
{{- fail "database.url holds a password: it would be stored in a ConfigMap; put the password in a Secret (database.passwordSecret) or the whole URL in one (database.urlSecret)" }}
{{- end }}
{{- if not .Values.masterKey.existingSecret }}
{{- fail "masterKey.existingSecret is required: a Secret with the master key (32 random bytes, base64) that seals the server's secrets in the database, the same for every replica" }}
{{- end }}
{{- if not .Values.blobStore.url }}
{{- fail "blobStore.url is required: every replica stores blobs in one place, s3://bucket/prefix or a directory on a volume all replicas mount" }}
{{- end }}
{{- if hasPrefix "s3://" .Values.blobStore.url }}
{{- $keysFromExtraEnv := false }}
{{- range .Values.extraEnv }}
{{- if eq .name "AWS_ACCESS_KEY_ID" }}{{ $keysFromExtraEnv = true }}{{ end }}
{{- end }}
{{- if not (or .Values.blobStore.s3.credentialsSecret.name $keysFromExtraEnv) }}
{{- fail "blobStore.s3.credentialsSecret.name is required for a bucket: the server takes its S3 keys from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY only" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Names the generated certificate carries besides the public URL's host. */}}
{{- define "gantry-server.tlsHostnames" -}}
{{- $fullname := include "gantry-server.fullname" . }}
{{- $names := list $fullname (printf "%s.%s.svc" $fullname .Release.Namespace) (printf "%s.%s.svc.cluster.local" $fullname .Release.Namespace) }}
{{- join "," (concat $names .Values.tls.hostnames) }}
{{- end }}
