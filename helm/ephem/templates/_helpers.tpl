{{/*
The chart's name, truncated to the 63 characters Kubernetes allows in a name.
*/}}
{{- define "ephem.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name of the release's resources. If the release name already contains the chart
name, the release name alone is used.
*/}}
{{- define "ephem.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "ephem.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Labels that select the pods; they never change over the release's life.
*/}}
{{- define "ephem.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ephem.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Labels on every resource.
*/}}
{{- define "ephem.labels" -}}
helm.sh/chart: {{ include "ephem.chart" . }}
{{ include "ephem.selectorLabels" . }}
app.kubernetes.io/version: {{ include "ephem.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The image tag: image.tag, else the chart's appVersion.
*/}}
{{- define "ephem.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{- define "ephem.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "ephem.imageTag" .) -}}
{{- end -}}

{{/*
The service account the pods run as.
*/}}
{{- define "ephem.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ephem.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The Secret holding the secret settings: existingSecret, else the one the chart creates.
*/}}
{{- define "ephem.secretName" -}}
{{- default (include "ephem.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{/*
Where the blueprint is mounted; EPHEM_CONFIG points at configDir/ephem.yaml.
*/}}
{{- define "ephem.configDir" -}}
/etc/ephem
{{- end -}}

{{/*
Environment of the migration initContainer: the database and the blueprint, no Slack secrets.
*/}}
{{- define "ephem.env.base" -}}
- name: EPHEM_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "ephem.secretName" . }}
      key: EPHEM_DATABASE_URL
- name: EPHEM_CONFIG
  value: {{ printf "%s/ephem.yaml" (include "ephem.configDir" .) | quote }}
- name: EPHEM_LOG_LEVEL
  value: {{ .Values.settings.logLevel | quote }}
{{- /* The root filesystem is read-only; tools that write under $HOME (tofu, terraform) get /tmp. */}}
- name: HOME
  value: /tmp
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Environment of the Ephem container. Secret keys are named like the variables they become.
*/}}
{{- define "ephem.env" -}}
{{- $secret := include "ephem.secretName" . -}}
- name: SLACK_BOT_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: SLACK_BOT_TOKEN
{{- /* Optional: Socket Mode does without it. */}}
- name: SLACK_SIGNING_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: SLACK_SIGNING_SECRET
      optional: true
{{- /* Optional: present means Socket Mode, absent means HTTP mode. */}}
- name: SLACK_APP_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: SLACK_APP_TOKEN
      optional: true
- name: EPHEM_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: EPHEM_SECRET_KEY
- name: SLACK_API_URL
  value: {{ .Values.settings.slackApiUrl | quote }}
- name: EPHEM_HTTP_PORT
  value: {{ .Values.settings.httpPort | quote }}
- name: EPHEM_WORKERS
  value: {{ .Values.settings.workers | quote }}
{{ include "ephem.env.base" . }}
{{- end -}}

{{/*
Volume mounts shared by the Ephem container and the migration initContainer.
*/}}
{{- define "ephem.volumeMounts" -}}
- name: config
  mountPath: {{ include "ephem.configDir" . }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Cluster-scoped names carry the namespace, so releases of the same name in two namespaces
do not collide.
*/}}
{{- define "ephem.clusterRoleName" -}}
{{- printf "%s-%s" .Release.Namespace (include "ephem.fullname" .) -}}
{{- end -}}
