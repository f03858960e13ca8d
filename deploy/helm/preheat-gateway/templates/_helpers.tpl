{{/* Names, labels and the pieces several templates share. */}}

{{- define "preheat-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "preheat-gateway.fullname" -}}
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

{{- define "preheat-gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "preheat-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: preheat-gateway
{{- end -}}

{{/* The gateway pods' selector; the node DaemonSet's pods carry component node-hosts instead. */}}
{{- define "preheat-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "preheat-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "preheat-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "preheat-gateway.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "preheat-gateway.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "preheat-gateway.stateDir" -}}/var/lib/preheat-gateway{{- end -}}
{{- define "preheat-gateway.configDir" -}}/etc/preheat-gateway{{- end -}}
{{- define "preheat-gateway.secretsDir" -}}/var/run/secrets/preheat-gateway{{- end -}}
{{- define "preheat-gateway.tlsDir" -}}/var/run/secrets/preheat-gateway-tls{{- end -}}

{{- define "preheat-gateway.claimName" -}}
{{- default (printf "%s-state" (include "preheat-gateway.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* "true" when the state directory is on a claim: SQLite with persistence on. */}}
{{- define "preheat-gateway.persistent" -}}
{{- if and (eq .Values.store.type "sqlite") .Values.persistence.enabled -}}true{{- end -}}
{{- end -}}

{{/*
Environment variables the chart itself gives the gateway container, as a dict NAME -> source
("chart" or "secret"): what a `*_env` key of the config may name besides `env` and `secretEnv`.
*/}}
{{- define "preheat-gateway.chartEnvNames" -}}
{{- $names := list "PREHEAT_GATEWAY_STATE_DIR" -}}
{{- if .Values.store.secretKey.secretName -}}{{- $names = append $names "PREHEAT_GATEWAY_SECRET_KEY" -}}{{- end -}}
{{- if eq .Values.store.type "postgresql" -}}{{- $names = concat $names (keys .Values.store.postgresql.secretKeys) -}}{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/*
The gateway config, as YAML: the values' `config` with what the chart owns filled in.
*/}}
{{- define "preheat-gateway.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $server := deepCopy (default dict $config.server) -}}
{{- $_ := set $server "listen" (printf "0.0.0.0:%d" (int .Values.service.port)) -}}
{{- $_ := set $server "state_dir" (include "preheat-gateway.stateDir" .) -}}
{{- if .Values.mirror.separatePort -}}
{{- $_ := set $server "mirror_listen" (printf "0.0.0.0:%d" (int .Values.mirror.port)) -}}
{{- end -}}
{{- if .Values.tls.secretName -}}
{{- $_ := set $server "tls" (dict "cert" (printf "%s/tls.crt" (include "preheat-gateway.tlsDir" .)) "key" (printf "%s/tls.key" (include "preheat-gateway.tlsDir" .))) -}}
{{- end -}}
{{- $_ := set $config "server" $server -}}
{{- $store := dict -}}
{{- if eq .Values.store.type "postgresql" -}}
{{- $_ := set $store "url" .Values.store.postgresql.url -}}
{{- end -}}
{{- if .Values.store.secretKey.secretName -}}
{{- $_ := set $store "secret_key_env" "PREHEAT_GATEWAY_SECRET_KEY" -}}
{{- end -}}
{{- $_ := set $config "store" $store -}}
{{- toYaml $config -}}
{{- end -}}

{{/*
Walk a value of `config` (dict: path, value, errors, envs, files): collect inline secrets,
`*_env` names and `*_file` paths.
*/}}
{{- define "preheat-gateway.walk" -}}
{{- $path := .path -}}
{{- $ctx := . -}}
{{- if kindIs "map" .value -}}
{{- range $key, $value := .value -}}
{{- $here := ternary $key (printf "%s.%s" $path $key) (eq $path "") -}}
{{- if regexMatch "^(?i)(password|passwd|pass|token|secret|secret_key|api_key|apikey|credential|bearer)$" $key -}}
{{- $_ := set $ctx "errors" (append $ctx.errors (printf "config.%s: inline secrets are refused: name an environment variable (%s_env) filled from an existing Secret by secretEnv, or a file (%s_file) from secretMounts" $here $key $key)) -}}
{{- else if and (hasSuffix "_env" $key) (kindIs "string" $value) -}}
{{- $_ := set $ctx "envs" (append $ctx.envs (list $here $value)) -}}
{{- else if and (hasSuffix "_file" $key) (kindIs "string" $value) -}}
{{- $_ := set $ctx "files" (append $ctx.files (list $here $value)) -}}
{{- end -}}
{{- $_ := set $ctx "path" $here -}}
{{- $_ := set $ctx "value" $value -}}
{{- include "preheat-gateway.walk" $ctx -}}
{{- end -}}
{{- else if kindIs "slice" .value -}}
{{- range $index, $value := .value -}}
{{- $_ := set $ctx "path" (printf "%s[%d]" $path $index) -}}
{{- $_ := set $ctx "value" $value -}}
{{- include "preheat-gateway.walk" $ctx -}}
{{- end -}}
{{- else if kindIs "string" .value -}}
{{- if regexMatch "://[^/@:]*:[^/@]+@" .value -}}
{{- $_ := set $ctx "errors" (append $ctx.errors (printf "config.%s: a URL with a password is refused: give the password by a *_env or *_file key" $path)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
What the schema cannot say: rules across values. Each failure names the value and what to do.
*/}}
{{- define "preheat-gateway.validate" -}}
{{- $v := .Values -}}
{{- if and (eq $v.store.type "sqlite") (gt (int $v.replicas) 1) -}}
{{- fail (printf "replicas: %d with store.type sqlite is refused: SQLite allows one gateway process per database (a second one refuses to start). Run one replica, or set store.type: postgresql with store.postgresql and store.secretKey for several." (int $v.replicas)) -}}
{{- end -}}
{{- if eq $v.store.type "postgresql" -}}
{{- if not $v.store.secretKey.secretName -}}
{{- fail "store.secretKey.secretName: with store.type postgresql every replica seals and opens the same credentials: name an existing Secret holding the sealing key (openssl rand -base64 32 | tr '+/' '-_')." -}}
{{- end -}}
{{- if not (hasPrefix "postgresql://" $v.store.postgresql.url) -}}
{{- fail (printf "store.postgresql.url: %q is not a postgresql:// URL; with store.type postgresql give postgresql://USER@HOST:PORT/DATABASE, or just postgresql:// when store.postgresql.secretKeys supplies the rest." $v.store.postgresql.url) -}}
{{- end -}}
{{- if regexMatch "^postgresql://[^/@]*:[^/@]*@" $v.store.postgresql.url -}}
{{- fail "store.postgresql.url: a password in the URL would sit in a ConfigMap: leave it out and give it by store.postgresql.secretKeys (PGPASSWORD)." -}}
{{- end -}}
{{- if not $v.store.postgresql.secretName -}}
{{- fail "store.postgresql.secretName: with store.type postgresql name the existing Secret holding the database password (store.postgresql.secretKeys maps its keys to PGPASSWORD and the other libpq variables)." -}}
{{- end -}}
{{- end -}}
{{- $delay := int (dig "shutdown_delay_seconds" 5 (default dict $v.config.server)) -}}
{{- $needed := add (int $v.preStopSleepSeconds) $delay 15 | int -}}
{{- if lt (int $v.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "terminationGracePeriodSeconds: %d cuts the gateway's drain short: after the %d s preStop pause it answers /readyz 503 for %d s (config.server.shutdown_delay_seconds), drains requests for up to 10 s and hands unfinished tasks back; give at least %d." (int $v.terminationGracePeriodSeconds) (int $v.preStopSleepSeconds) $delay $needed) -}}
{{- end -}}
{{- if and $v.mirror.separatePort (eq (int $v.mirror.port) (int $v.service.port)) -}}
{{- fail (printf "mirror.port: %d is the API's port too; a separate mirror needs a port of its own." (int $v.mirror.port)) -}}
{{- end -}}
{{- $owned := dict "listen" "service.port" "mirror_listen" "mirror.separatePort and mirror.port" "state_dir" "the chart (/var/lib/preheat-gateway, the state volume)" "tls" "tls.secretName" -}}
{{- range $key, $by := $owned -}}
{{- if hasKey (default dict $v.config.server) $key -}}
{{- fail (printf "config.server.%s: set by the chart from %s; remove it from config.server." $key $by) -}}
{{- end -}}
{{- end -}}
{{- $walk := dict "path" "" "value" $v.config "errors" list "envs" list "files" list -}}
{{- include "preheat-gateway.walk" $walk -}}
{{- if $walk.errors -}}
{{- fail (join "\n" $walk.errors) -}}
{{- end -}}
{{- $given := concat (fromJsonArray (include "preheat-gateway.chartEnvNames" .)) (keys $v.env) (keys $v.secretEnv) -}}
{{- range $walk.envs -}}
{{- if not (has (index . 1) $given) -}}
{{- fail (printf "config.%s: %s is not set in the pod: add it to secretEnv ({secretName: S, key: K}) or env." (index . 0) (index . 1)) -}}
{{- end -}}
{{- end -}}
{{- $secretsDir := include "preheat-gateway.secretsDir" . -}}
{{- $mounted := list -}}
{{- range $v.secretMounts -}}{{- $mounted = append $mounted (printf "%s/%s/" $secretsDir .name) -}}{{- end -}}
{{- range $walk.files -}}
{{- $file := index . 1 -}}
{{- $found := false -}}
{{- range $mounted -}}{{- if hasPrefix . $file -}}{{- $found = true -}}{{- end -}}{{- end -}}
{{- if not $found -}}
{{- fail (printf "config.%s: %s is not in a mounted Secret: add the Secret to secretMounts ({name: N, secretName: S}) and use %s/N/KEY." (index . 0) $file $secretsDir) -}}
{{- end -}}
{{- end -}}
{{- $names := list -}}
{{- range $v.secretMounts -}}
{{- if has .name $names -}}{{- fail (printf "secretMounts: the name %q is used twice." .name) -}}{{- end -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- if $v.nodeDaemonSet.enabled -}}
{{- if not $v.nodeDaemonSet.registries -}}
{{- fail "nodeDaemonSet.registries: name the origin registries the nodes pull through mirrors ({host: harbor.example.com}, {host: docker.io, clusters: [...]})." -}}
{{- end -}}
{{- $hosts := list -}}
{{- range $v.nodeDaemonSet.registries -}}
{{- if has .host $hosts -}}{{- fail (printf "nodeDaemonSet.registries: %s is listed twice." .host) -}}{{- end -}}
{{- $hosts = append $hosts .host -}}
{{- $_ := include "preheat-gateway.nodeMirrors" (dict "root" $ "registry" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The mirrors the node DaemonSet writes into one registry's hosts.toml (dict: root, registry), as
JSON [{url, path_prefix}]: the registry's explicit mirrors, else the endpoints of its clusters
(default: every adapter: mirror cluster).
*/}}
{{- define "preheat-gateway.nodeMirrors" -}}
{{- $registry := .registry -}}
{{- $mirrors := list -}}
{{- if $registry.mirrors -}}
{{- range $registry.mirrors -}}{{- $mirrors = append $mirrors (dict "url" .url "path_prefix" (default "" .path_prefix)) -}}{{- end -}}
{{- else -}}
{{- $known := list -}}
{{- range .root.Values.config.clusters -}}
{{- if eq .adapter "mirror" -}}
{{- $known = append $known .name -}}
{{- if or (not $registry.clusters) (has .name $registry.clusters) -}}
{{- range .endpoints -}}{{- $mirrors = append $mirrors (dict "url" .url "path_prefix" (default "" .path_prefix)) -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $registry.clusters -}}
{{- if not (has . $known) -}}
{{- fail (printf "nodeDaemonSet.registries (%s): cluster %q is not an adapter: mirror cluster of config.clusters (those are: %s)." $registry.host . (join ", " $known)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not $mirrors -}}
{{- fail (printf "nodeDaemonSet.registries (%s): no mirror to write: give it mirrors, or add an adapter: mirror cluster to config.clusters." $registry.host) -}}
{{- end -}}
{{- toJson $mirrors -}}
{{- end -}}

{{/* containerd hosts.toml for one origin registry (dict: host, mirrors, skipVerify). */}}
{{- define "preheat-gateway.hostsToml" -}}
{{- $server := printf "https://%s" .host -}}
{{- if eq .host "docker.io" -}}{{- $server = "https://registry-1.docker.io" -}}{{- end -}}
# Written by the preheat-gateway chart's node DaemonSet: pull {{ .host }} through its mirrors,
# falling back to {{ $server }} on a miss.
server = {{ $server | quote }}
{{- range .mirrors }}
{{- $url := trimSuffix "/" .url }}
{{- if .path_prefix }}
{{- /* A cache under a path (a Harbor proxy-cache project): the API root is in the URL. */}}

[host.{{ printf "%s/v2/%s" $url (trimSuffix "/" .path_prefix) | quote }}]
  capabilities = ["pull", "resolve"]
  override_path = true
{{- else }}

[host.{{ $url | quote }}]
  capabilities = ["pull", "resolve"]
{{- end }}
{{- if $.skipVerify }}
  skip_verify = true
{{- end }}
{{- end }}
{{ end -}}
