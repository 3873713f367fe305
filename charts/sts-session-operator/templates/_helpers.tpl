{{/* Chart name, possibly overridden. */}}
{{- define "sts-session-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: fullnameOverride, else the release name if it contains the chart name, else
"<release>-<chart>". Cut to 52 characters so that suffixes ("-leader-election") stay within 63.
*/}}
{{- define "sts-session-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sts-session-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sts-session-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sts-session-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sts-session-operator.labels" -}}
helm.sh/chart: {{ include "sts-session-operator.chart" . }}
{{ include "sts-session-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: sts-session-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sts-session-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sts-session-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sts-session-operator.leaseName" -}}
{{- default (include "sts-session-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "sts-session-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The operator's rights on SessionTokens, AssumedRoles, Secrets and Events (as tests/fixtures/operator-rbac.yaml). */}}
{{- define "sts-session-operator.workRules" -}}
- apiGroups: ["stssession.dev"]
  resources: ["sessiontokens"]
  verbs: ["get", "list", "watch", "patch"]  # patch: claiming a token code (removing the annotations)
- apiGroups: ["stssession.dev"]
  resources: ["sessiontokens/status"]
  verbs: ["patch"]
- apiGroups: ["stssession.dev"]
  resources: ["assumedroles"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["stssession.dev"]
  resources: ["assumedroles/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Restarting workloads after a rotation (spec.rolloutRestartTargets): opt-in per namespace. */}}
{{- define "sts-session-operator.restartRules" -}}
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "patch"]  # spec.rolloutRestartTargets: restarting workloads after a rotation
{{- end }}

{{/* Refuses combinations that would break at run time. */}}
{{- define "sts-session-operator.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicas > 1 needs leaderElection.enabled=true: without a Lease every replica would reconcile, and two replicas could race for the same MFA code" }}
{{- end }}
{{- if and (not .Values.leaderElection.enabled) (ne (toString (dig "type" "RollingUpdate" .Values.strategy)) "Recreate") }}
{{- fail "leaderElection.enabled=false needs strategy.type=Recreate: with a RollingUpdate the new pod starts before the old one stops, and without a Lease both would reconcile (and could race for the same MFA code) during every rollout" }}
{{- end }}
{{- if and .Values.approvalPolicy.enabled (has "Deny" .Values.approvalPolicy.validationActions) (has "Warn" .Values.approvalPolicy.validationActions) }}
{{- fail "approvalPolicy.validationActions: use Deny or Warn, not both (Kubernetes refuses the combination)" }}
{{- end }}
{{- end }}

{{/* Whole seconds in a duration such as "2h", "90s" or "1h30m" (milliseconds are dropped). */}}
{{- define "sts-session-operator.seconds" -}}
{{- $total := 0 }}
{{- range regexFindAll "[0-9]+(ms|s|m|h)" . -1 }}
{{- $n := int (regexFind "^[0-9]+" .) }}
{{- $unit := regexFind "(ms|s|m|h)$" . }}
{{- if eq $unit "h" }}{{ $total = add $total (mul $n 3600) }}
{{- else if eq $unit "m" }}{{ $total = add $total (mul $n 60) }}
{{- else if eq $unit "s" }}{{ $total = add $total $n }}
{{- end }}
{{- end }}
{{- $total }}
{{- end }}

{{/* Whether to render the PrometheusRule: alerts.enabled true, or "auto" and the cluster serves
the prometheus-operator's PrometheusRule. */}}
{{- define "sts-session-operator.alertsEnabled" -}}
{{- if eq (toString .Values.alerts.enabled) "auto" }}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PrometheusRule" }}true{{ end }}
{{- else if .Values.alerts.enabled }}true
{{- end }}
{{- end }}

{{/* The `job` label of the operator's scrape target (a ServiceMonitor's: the Service's name). */}}
{{- define "sts-session-operator.job" -}}
{{- default (printf "%s-metrics" (include "sts-session-operator.fullname" .)) .Values.alerts.job }}
{{- end }}

{{/* CEL: the field at this path (below object/oldObject) is the same before and after an
update: both absent, or both present and equal. */}}
{{- define "sts-session-operator.same" -}}
(has(object.{{ . }}) == has(oldObject.{{ . }}) && (!has(object.{{ . }}) || object.{{ . }} == oldObject.{{ . }}))
{{- end }}
