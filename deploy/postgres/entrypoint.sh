#!/bin/bash
# deploy/postgres/entrypoint.sh -- the entry point of deploy/postgres/Containerfile: as root,
# gives $PGDATA to the postgres user and starts again as that user; on an empty $PGDATA,
# initialises the cluster and runs /docker-entrypoint-initdb.d/*.sh|*.sql once; then runs
# postgres (arguments are passed on: e.g. -c shared_buffers=256MB).
set -euo pipefail
PGDATA=${PGDATA:-/var/lib/postgresql/data}

if (($(id -u) == 0)); then
    install -d -m 0700 "$PGDATA"
    chown postgres:postgres "$PGDATA"
    install -d -o postgres -g postgres -m 2775 /var/run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [[ ! -s $PGDATA/PG_VERSION ]]; then
    echo "postgres-entrypoint: initialising $PGDATA"
    initdb -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 --auth-local=peer \
        --auth-host=scram-sha-256 --no-instructions
    {
        echo "# deploy/postgres/entrypoint.sh"
        echo "listen_addresses = '*'"
        echo "password_encryption = scram-sha-256"
    } >>"$PGDATA/postgresql.conf"
    {
        echo "# deploy/postgres/entrypoint.sh: every TCP client with a password"
        echo "host all all 0.0.0.0/0 scram-sha-256"
        echo "host all all ::/0 scram-sha-256"
    } >>"$PGDATA/pg_hba.conf"
    # the init scripts run against a server that no TCP client can reach yet
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w -s start
    for f in /docker-entrypoint-initdb.d/*; do
        case $f in
        *.sh)
            echo "postgres-entrypoint: running $f"
            bash "$f"
            ;;
        *.sql)
            echo "postgres-entrypoint: running $f"
            psql -X -v ON_ERROR_STOP=1 -U postgres -d postgres -f "$f"
            ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w -s stop
    echo "postgres-entrypoint: $PGDATA initialised"
fi
exec postgres -D "$PGDATA" "$@"
