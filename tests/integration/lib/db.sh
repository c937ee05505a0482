# shellcheck shell=bash
# db.sh -- PostgreSQL: a private cluster in $NT_PG_DIR on a free loopback port (run as an
# unprivileged user when root), started, stopped and queried with psql.
# Part of tests/integration/lib.sh.

NT_PG_PORT=${NT_PG_PORT:-}
NT_PG_BIN=""
NT_PG_DIR=${NT_PG_DIR:-}                  # default $NT_TMP/pg
NT_PG_USER=${NT_PG_USER:-}
NT_PG_STOP_MODE=${NT_PG_STOP_MODE:-immediate} # at cleanup; the demo uses fast

nt__find_pg_bin() {
    local d
    if [[ -n $NT_PG_BIN ]]; then
        return 0
    fi
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        NT_PG_BIN=$(dirname "$(readlink -f "$(command -v initdb)")")
    else
        # Debian keeps the server binaries out of PATH: take the newest version.
        d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null |
            sort -V | tail -n 1)
        [[ -n $d && -x $d/initdb ]] ||
            nt_fail "PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql"
        NT_PG_BIN=$d
    fi
    command -v psql >/dev/null 2>&1 || nt_fail "psql not found; install postgresql-client"
}

# The user PostgreSQL runs as: the current user, or when root an unprivileged system user.
nt__pg_user() {
    if [[ -n $NT_PG_USER ]]; then
        printf '%s\n' "$NT_PG_USER"
    elif ((EUID == 0)); then
        printf 'postgres\n'
    else
        id -un
    fi
}

# Runs a PostgreSQL server command as the PostgreSQL user, from a directory it can read.
nt__as_pg() {
    local user
    user=$(nt__pg_user)
    if [[ $user == "$(id -un)" ]]; then
        (cd "$NT_PG_DIR" && "$@")
    else
        (cd "$NT_PG_DIR" && runuser -u "$user" -- "$@")
    fi
}

nt__pg_ready() {
    "$NT_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$NT_PG_PORT" -U postgres -d postgres -t 2
}

nt__pg_not_running() {
    ! [[ -f $NT_PG_DIR/data/postmaster.pid ]]
}

# nt_start_pg: creates (first call) and starts a cluster in $NT_PG_DIR on a free port,
# creates database needletrace; exports NT_PG_PORT and NEEDLETRACE_DATABASE_URL.
# Later calls start the same cluster on the same port again.
nt_start_pg() {
    local user dir="$NT_PG_DIR" attempt
    nt__find_pg_bin
    user=$(nt__pg_user)
    if [[ ! -f $dir/data/PG_VERSION ]]; then
        id "$user" >/dev/null 2>&1 ||
            nt_fail "user $user does not exist (needed to run PostgreSQL unprivileged as root)"
        mkdir -p "$dir/sock"
        if ((EUID == 0)) && [[ $user != root ]]; then
            chown -R "$user:" "$dir"
            nt__user_can_traverse "$user" "$dir" ||
                nt_fail "user $user cannot reach $dir; use a TMPDIR every user can traverse"
        fi
        chmod 700 "$dir"
        nt__as_pg "$NT_PG_BIN/initdb" --auth=trust -U postgres -E UTF8 --locale=C \
            --no-sync --no-instructions -D "$dir/data" >"$NT_TMP/initdb.out" 2>&1 ||
            {
                cat "$NT_TMP/initdb.out" >&2
                nt_fail "initdb failed"
            }
    fi
    for attempt in 1 2 3; do
        if [[ -z $NT_PG_PORT || ${NT_PG_FRESH_PORT:-0} == 1 ]]; then
            NT_PG_PORT=$(nt_free_port)
        fi
        # The settings that matter for the tests; the last occurrence in the file wins.
        nt__as_pg tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF
# ---- needletrace test harness ----
listen_addresses = '127.0.0.1'
port = $NT_PG_PORT
unix_socket_directories = '$dir/sock'
fsync = on
synchronous_commit = on
full_page_writes = on
shared_buffers = 32MB
max_connections = 50
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
EOF
        nt__as_pg "$NT_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -W -s start ||
            nt_fail "pg_ctl start failed"
        if nt__wait_quiet 60 nt__pg_ready; then
            break
        fi
        # the port may have been taken between the check and the bind: try another one
        nt_log "PostgreSQL did not come up on port $NT_PG_PORT (attempt $attempt)"
        nt__as_pg "$NT_PG_BIN/pg_ctl" -D "$dir/data" -m immediate -s stop >/dev/null 2>&1 || true
        NT_PG_FRESH_PORT=1
        ((attempt < 3)) || nt_fail "PostgreSQL did not start"
    done
    NT_PG_FRESH_PORT=0
    export NT_PG_PORT
    # Least privilege as in production (README, Security model): migrate as the owner
    # (postgres here), the collector and the CLI as logins of the needletrace_* roles
    # (nt_migrate grants them after the roles exist).
    export NEEDLETRACE_DATABASE_ADMIN_URL
    NEEDLETRACE_DATABASE_ADMIN_URL=$(nt_db_url postgres)
    export NEEDLETRACE_DATABASE_URL
    NEEDLETRACE_DATABASE_URL=$(nt_db_url nt_collector)
    if [[ -z $(nt_psql postgres "SELECT 1 FROM pg_database WHERE datname = 'needletrace'") ]]; then
        nt_psql postgres "CREATE DATABASE needletrace" >/dev/null || nt_fail "createdb failed"
    fi
    nt_psql postgres "DO \$\$ BEGIN
        $(for r in "${!NT_PG_LOGINS[@]}"; do
            printf "IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '%s') THEN CREATE ROLE %s LOGIN; END IF;\n" "$r" "$r"
        done) END \$\$" >/dev/null || nt_fail "could not create the test logins"
    nt_log "PostgreSQL $(nt_psql postgres 'SHOW server_version') up on 127.0.0.1:$NT_PG_PORT as $user"
}

# The test logins and the role each is a member of (granted by nt_migrate).
declare -gA NT_PG_LOGINS=([nt_collector]=needletrace_collector [nt_staff]=needletrace_staff
    [nt_auditor]=needletrace_auditor [nt_registrar]=needletrace_registrar)

# nt_db_url ROLE [DB]: the libpq connection string of the test cluster as ROLE (trust auth).
nt_db_url() {
    printf 'host=127.0.0.1 port=%s user=%s dbname=%s' "$NT_PG_PORT" "$1" "${2:-needletrace}"
}

# nt_grant_logins: makes each test login a member of its needletrace_* role (after migrate).
nt_grant_logins() {
    local r sql=""
    for r in "${!NT_PG_LOGINS[@]}"; do
        sql+="GRANT ${NT_PG_LOGINS[$r]} TO $r; "
    done
    nt_sql "$sql" >/dev/null || nt_fail "could not grant the needletrace roles to the test logins"
}

# nt_stop_pg [MODE]: stops PostgreSQL (fast by default: a clean shutdown; immediate = crash).
nt_stop_pg() {
    local mode=${1:-fast} pid
    [[ -f $NT_PG_DIR/data/postmaster.pid ]] || return 0
    pid=$(head -n 1 "$NT_PG_DIR/data/postmaster.pid" 2>/dev/null)
    nt__as_pg "$NT_PG_BIN/pg_ctl" -D "$NT_PG_DIR/data" -m "$mode" -s -t 60 stop >/dev/null 2>&1 ||
        true
    if [[ -n $pid ]] && nt_pid_alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    nt__wait_quiet 30 nt__pg_not_running || rm -f "$NT_PG_DIR/data/postmaster.pid"
}

nt_restart_pg() {
    nt_stop_pg "${1:-fast}"
    nt_start_pg
}

# nt_psql DB SQL: runs SQL against database DB, prints rows unaligned (fields | separated).
nt_psql() {
    psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$NT_PG_PORT" -U postgres -d "$1" -c "$2"
}

# nt_sql SQL: against database needletrace.
nt_sql() {
    nt_psql needletrace "$1"
}

# nt_sql_eq EXPECTED SQL: prints the value; succeeds when it equals EXPECTED (for nt_wait_for).
nt_sql_eq() {
    local v
    v=$(nt_sql "$2") || return 1
    printf '%s\n' "$v"
    [[ $v == "$1" ]]
}

# nt_sql_ge MIN SQL: prints the (integer) value; succeeds when it is >= MIN.
nt_sql_ge() {
    local v
    v=$(nt_sql "$2") || return 1
    printf '%s\n' "$v"
    [[ $v =~ ^[0-9]+$ ]] && ((v >= $1))
}

# nt_sql_gt MIN SQL: succeeds when the integer value is > MIN.
nt_sql_gt() {
    nt_sql_ge "$(($1 + 1))" "$2"
}

nt_count() {
    nt_sql "SELECT count(*) FROM needletrace.$1"
}
