#!/bin/bash
# deploy/mosquitto/entrypoint.sh -- the entry point of deploy/mosquitto/Containerfile: copies
# the TLS files and the ACL from $MOSQUITTO_SECRETS_DIR (default /run/secrets) into
# /mosquitto/certs, readable by the user mosquitto only (mounted secrets keep the owner and
# mode they have on the host), gives it /mosquitto/data, then runs the command (mosquitto).
set -euo pipefail
src=${MOSQUITTO_SECRETS_DIR:-/run/secrets}
for f in ca.crt broker.crt broker.key acl; do
    if [[ -f $src/$f ]]; then
        install -o mosquitto -g mosquitto -m 0600 "$src/$f" "/mosquitto/certs/$f"
    elif [[ ! -f /mosquitto/certs/$f ]]; then
        echo "mosquitto-entrypoint: $src/$f is missing (deploy/certs.sh OUTDIR makes it)" >&2
        exit 1
    fi
done
chown mosquitto:mosquitto /mosquitto/data
exec "$@"
