#!/bin/sh
# Distribution takes its upstream password from its config file or REGISTRY_PROXY_PASSWORD
# only; read the generated secret from its file into the variable, then run the command
# (`registry serve /etc/docker/registry/config.yml`).
set -eu
REGISTRY_PROXY_PASSWORD="$(cat "${CACHE_PASSWORD_FILE:-/demo-secrets/cache-password}")"
export REGISTRY_PROXY_PASSWORD
exec "$@"
