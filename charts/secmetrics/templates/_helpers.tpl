{{- define "secmetrics.labels" -}}
app.kubernetes.io/name: secmetrics
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- define "secmetrics.selectorLabels" -}}
app.kubernetes.io/name: secmetrics
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "secmetrics.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{- /* The operator's scrape target in PromQL: the Service's job in the release namespace. */ -}}
{{- define "secmetrics.jobSelector" -}}
job="secmetrics", namespace="{{ .Release.Namespace }}"
{{- end }}
