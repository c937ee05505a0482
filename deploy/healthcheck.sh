#!/bin/bash
# deploy/healthcheck.sh -- installed in the image as /usr/local/bin/needletrace-healthcheck: the
# container's HEALTHCHECK. GET /healthz from the collector's http.listen address with bash's
# /dev/tcp alone (the image has no curl or wget); healthy when the answer is HTTP 200.
#
# The address is $1, else NEEDLETRACE_HTTP_LISTEN (the image sets 0.0.0.0:9464), else the
# collector's default 127.0.0.1:9464; pass it when http.listen is set in a configuration file.
# A wildcard address (0.0.0.0, *, [::]) is probed on loopback.
# Exit codes: 0 healthy; 1 unhealthy or unreachable (the status line or reason on stdout).
set -u
listen=${1:-${NEEDLETRACE_HTTP_LISTEN:-127.0.0.1:9464}}
if [[ $listen == off ]]; then
    echo "unhealthy: http.listen is off, nothing to probe"
    exit 1
fi
port=${listen##*:}
host=${listen%:*}
case $host in
'' | '*' | 0.0.0.0) host=127.0.0.1 ;;
'[::]') host=::1 ;;
\[*\])
    host=${host#[}
    host=${host%]}
    ;;
esac
if ! exec 3<>"/dev/tcp/$host/$port"; then
    echo "unhealthy: cannot connect to $host port $port"
    exit 1
fi 2>/dev/null
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
status=""
IFS= read -r -t 5 status <&3
exec 3<&-
status=${status%$'\r'}
case $status in
"HTTP/1."?" 200 "*)
    echo "$status"
    exit 0
    ;;
esac
echo "unhealthy: ${status:-no answer from $host port $port}"
exit 1
