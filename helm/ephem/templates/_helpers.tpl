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

{{/*
The image reference: repository@digest when image.digest is set, else repository:tag.
*/}}
{{- define "ephem.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (include "ephem.imageTag" .) -}}
{{- end -}}
{{- end -}}

{{/*
Secret keys Ephem cannot start without, checked at template time. With existingSecret the
chart cannot see the keys (the Secret is yours); without it, an empty value fails the install
with the Secret key it would leave empty, instead of a pod that crash-loops.
*/}}
{{- define "ephem.requireSecrets" -}}
{{- if not .Values.existingSecret -}}
{{- $s := .Values.secrets -}}
{{- $_ := required "secrets.slackBotToken is required: the Secret key SLACK_BOT_TOKEN (the bot token, xoxb-…) would be empty. Set it, or set existingSecret to a Secret of yours that has it." $s.slackBotToken -}}
{{- $_ := required "secrets.databaseUrl is required: the Secret key EPHEM_DATABASE_URL (Ephem's own PostgreSQL, postgresql://…) would be empty. Set it, or set existingSecret to a Secret of yours that has it." $s.databaseUrl -}}
{{- $_ := required "secrets.secretKey is required: the Secret key EPHEM_SECRET_KEY (environments' credentials are derived from it; e.g. openssl rand -hex 32) would be empty. Set it, or set existingSecret to a Secret of yours that has it." $s.secretKey -}}
{{- if not $s.slackAppToken -}}
{{- $_ := required "secrets.slackSigningSecret is required: the Secret key SLACK_SIGNING_SECRET (verifies Slack's requests in HTTP mode) would be empty. Set it, or secrets.slackAppToken for Socket Mode, or set existingSecret to a Secret of yours." $s.slackSigningSecret -}}
{{- end -}}
{{- end -}}
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
Volume mounts of the Ephem containers (serve, the migration Job, the helm test).
*/}}
{{- define "ephem.volumeMounts" -}}
- name: config
  mountPath: {{ include "ephem.configDir" . }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if include "ephem.blueprintImage" . }}
- name: project
  mountPath: /srv/ephem/project
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Volumes of the Ephem pods: the blueprint and its files projected into one directory, /tmp,
and the blueprint image's copy.
*/}}
{{- define "ephem.volumes" -}}
- name: config
  projected:
    sources:
      - configMap:
          name: {{ include "ephem.fullname" . }}
      {{- $files := include "ephem.blueprintFiles" . }}
      {{- if $files }}
      - configMap:
          name: {{ include "ephem.fullname" . }}-files
          items:
            {{- range $i, $path := splitList "\n" $files }}
            - key: {{ printf "f%03d" $i }}
              path: {{ trimPrefix (printf "%s/" $.Values.blueprintFiles.root) $path | quote }}
            {{- end }}
      {{- end }}
- name: tmp
  emptyDir: {}
{{- if include "ephem.blueprintImage" . }}
- name: project
  emptyDir: {}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The initContainer that copies the blueprint image's files (blueprintImage) into the pod.
*/}}
{{- define "ephem.blueprintImageInit" -}}
{{- with include "ephem.blueprintImage" . }}
- name: blueprint-files
  image: {{ . }}
  imagePullPolicy: {{ $.Values.image.pullPolicy }}
  command: [cp, -R, {{ printf "%s/." $.Values.blueprintImage.path | quote }}, /srv/ephem/project]
  volumeMounts:
    - name: project
      mountPath: /srv/ephem/project
  securityContext:
    {{- toYaml $.Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml $.Values.resources | nindent 4 }}
{{- end }}
{{- end -}}

{{/*
The pod-level settings shared by the Deployment, the migration Job and the helm test pod.
*/}}
{{- define "ephem.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Cluster-scoped names carry the namespace, so releases of the same name in two namespaces
do not collide.
*/}}
{{- define "ephem.clusterRoleName" -}}
{{- printf "%s-%s" .Release.Namespace (include "ephem.fullname" .) -}}
{{- end -}}


{{/*
What the blueprint asks of the Kubernetes API. Each helper prints "true" or nothing.
- infra: phases.infra.kubernetes is present (namespaces per environment);
- deployer: phases.code deploys with kubernetes (`deployer: kubernetes`, or a lone
  `kubernetes` section);
- the namespaces read: `phases.code.kubernetes.source_namespace` (what the deployer copies
  from), and the namespace of every `references.<env>.source` of kind cluster.
*/}}
{{- define "ephem.k8s.infra" -}}
{{- $phases := .Values.blueprint.phases | default dict -}}
{{- $infra := $phases.infra | default dict -}}
{{- if $infra.kubernetes }}true{{ end -}}
{{- end -}}

{{- define "ephem.k8s.deployer" -}}
{{- $phases := .Values.blueprint.phases | default dict -}}
{{- $code := $phases.code | default dict -}}
{{- if $code.deployer -}}
{{- if eq (toString $code.deployer) "kubernetes" }}true{{ end -}}
{{- else if and $code.kubernetes (not $code.local) -}}
true
{{- end -}}
{{- end -}}

{{/* The deployer's settings (a dict, empty when none). */}}
{{- define "ephem.k8s.deployerConfig" -}}
{{- $phases := .Values.blueprint.phases | default dict -}}
{{- $code := $phases.code | default dict -}}
{{- toYaml ($code.kubernetes | default dict) -}}
{{- end -}}

{{/* Namespaces of the references whose release source is the cluster, one per line, sorted. */}}
{{- define "ephem.k8s.releaseNamespaces" -}}
{{- $out := list -}}
{{- range $name, $ref := (.Values.blueprint.references | default dict) -}}
{{- $source := $ref.source | default dict -}}
{{- if and (eq (toString $source.kind) "cluster") $source.namespace -}}
{{- $out = append $out $source.namespace -}}
{{- end -}}
{{- end -}}
{{- $out | uniq | sortAlpha | join "\n" -}}
{{- end -}}

{{/*
The environments' namespace pattern as an anchored regular expression: the blueprint's
phases.infra.kubernetes.namespace (default ephem-{name}) with {name} a DNS label.
*/}}
{{- define "ephem.k8s.namespaceRegex" -}}
{{- $phases := .Values.blueprint.phases | default dict -}}
{{- $infra := $phases.infra | default dict -}}
{{- $kube := $infra.kubernetes | default dict -}}
{{- $pattern := $kube.namespace | default "ephem-{name}" -}}
{{- $quoted := regexQuoteMeta $pattern -}}
{{- printf "^%s$" ($quoted | replace "\\{name\\}" "[a-z0-9]([-a-z0-9]*[a-z0-9])?") -}}
{{- end -}}

{{/* "true" when the chart grants anything on the Kubernetes API. */}}
{{- define "ephem.k8s.any" -}}
{{- if and .Values.rbac.create (or (include "ephem.k8s.infra" .) (include "ephem.k8s.deployer" .) (include "ephem.k8s.releaseNamespaces" .) .Values.rbac.extraRules) }}true{{ end -}}
{{- end -}}

{{/* The service account's user name, as the API server sees it in admission requests. */}}
{{- define "ephem.serviceAccountUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "ephem.serviceAccountName" .) -}}
{{- end -}}

{{/* The image of the blueprint's files (blueprintImage), empty when none. */}}
{{- define "ephem.blueprintImage" -}}
{{- with .Values.blueprintImage -}}
{{- if .repository -}}
{{- if .digest -}}{{ printf "%s@%s" .repository .digest }}{{- else -}}{{ printf "%s:%s" .repository (required "blueprintImage.tag (or blueprintImage.digest) is required with blueprintImage.repository" .tag) }}{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Paths of the chart's blueprint files (blueprintFiles.glob), sorted. */}}
{{- define "ephem.blueprintFiles" -}}
{{- $paths := list -}}
{{- range $path, $_ := .Files.Glob .Values.blueprintFiles.glob -}}
{{- $paths = append $paths $path -}}
{{- end -}}
{{- $paths | sortAlpha | join "\n" -}}
{{- end -}}

{{/*
Labels of one-off pods (the migration Job, the helm test): not the selector labels, so the
Service, the PodDisruptionBudget and the topology spread never count them as Ephem replicas.
*/}}
{{- define "ephem.oneOffLabels" -}}
helm.sh/chart: {{ include "ephem.chart" . }}
app.kubernetes.io/part-of: {{ include "ephem.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
