#!/bin/bash
# deploy/postgres/initdb/10-needletrace.sh -- run once, as the postgres superuser, when the
# database volume is initialised (deploy/postgres/entrypoint.sh, or the official postgres image:
# both run /docker-entrypoint-initdb.d/*.sh). Creates, least privilege (README, Security model):
#   needletrace                  the owner of database needletrace (UTF-8): the login of
#                                `needletrace migrate` (database.admin_url), password from the
#                                secret db_owner_password;
#   needletrace_collector, needletrace_auditor, needletrace_staff, needletrace_registrar
#                                the login-less roles migrate grants to (it would create them
#                                itself, but the owner has no CREATEROLE: roles are the
#                                superuser's business);
#   needletrace_collector_login  the collector's login, a member of needletrace_collector only,
#                                password from the secret db_collector_password:
#       CREATE ROLE needletrace_collector_login LOGIN PASSWORD '...' IN ROLE needletrace_collector;
# Logins for auditors and staff are made the same way (IN ROLE needletrace_auditor, ...).
set -euo pipefail
secrets=${NEEDLETRACE_SECRETS_DIR:-/run/secrets}
owner_pw=$(head -n 1 "$secrets/db_owner_password")
collector_pw=$(head -n 1 "$secrets/db_collector_password")
[[ -n $owner_pw && -n $collector_pw ]] || {
    echo "10-needletrace.sh: empty db_owner_password or db_collector_password" >&2
    exit 1
}
psql -X -q -v ON_ERROR_STOP=1 -U "${POSTGRES_USER:-postgres}" -d postgres \
    -v owner_pw="$owner_pw" -v collector_pw="$collector_pw" <<'SQL'
CREATE ROLE needletrace LOGIN PASSWORD :'owner_pw';
CREATE DATABASE needletrace OWNER needletrace ENCODING 'UTF8' LOCALE 'C.UTF-8' TEMPLATE template0;
CREATE ROLE needletrace_collector NOLOGIN;
CREATE ROLE needletrace_auditor NOLOGIN;
CREATE ROLE needletrace_staff NOLOGIN;
CREATE ROLE needletrace_registrar NOLOGIN;
CREATE ROLE needletrace_collector_login LOGIN PASSWORD :'collector_pw' IN ROLE needletrace_collector;
SQL
echo "10-needletrace.sh: owner needletrace, database needletrace and login needletrace_collector_login created"
