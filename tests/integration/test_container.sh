#!/usr/bin/env bash
# test_container.sh -- the container image of deploy/Dockerfile, built and run with podman
# against the test broker and database: it migrates, runs as uid 10001 on a read-only root
# with no capabilities, gets ready, commits exactly what a simulated fleet sent, passes its
# HEALTHCHECK, stops with exit code 0 on SIGTERM (podman stop), and a new container on the same
# journal volume carries on. The container and the volume are removed at exit, pass or fail.
#
# podman is made to work by deploy/podman-setup.sh (installs podman, runc, debootstrap; makes
# the debian base images from this machine's Debian mirror). Where podman cannot work here (not
# root, no network for the packages, containers cannot run) the test says why and is skipped
# (exit 77). The image is built with the layer cache; stale images of earlier builds are
# removed (by the label org.needletrace.image the Dockerfile sets), the current ones are kept.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
nt_setup "$@"

export CONTAINERS_CONF=/etc/containers/needletrace.conf
IMAGE=localhost/needletrace:test
BUILD_IMAGE=localhost/needletrace-build:test
CT_NAME=nt-it-collector-$$
CT_VOLUME=nt-it-journal-$$
CT_PID=""        # the collector's host pid while the container should be running
CT_MADE=0        # 1 once a container or volume may exist: the cleanup removes them
SUDO=()
if ((EUID != 0)); then
    SUDO=(sudo -n env CONTAINERS_CONF="$CONTAINERS_CONF")
fi

pm() {
    "${SUDO[@]}" podman --storage-driver vfs --runtime runc "$@"
}

# ---- cleanup: the container and the volume, then the harness's own ---------------------------
# shellcheck disable=SC2317 # invoked by the EXIT trap
ct__cleanup() {
    local rc=$?
    set +e
    if ((CT_MADE == 1)); then
        if ((rc != 0)) && [[ ${NT_LOGS_DUMPED:-0} != 1 ]]; then
            nt_dump_logs
            NT_LOGS_DUMPED=1
        fi
        pm rm -f -t 0 "$CT_NAME" >/dev/null 2>&1
        pm volume rm -f "$CT_VOLUME" >/dev/null 2>&1
    fi
    (exit "$rc")
    nt__cleanup
}
trap ct__cleanup EXIT

# The harness checks its collectors between the polls of every wait (nt_wait_for): here the
# collector is the container, so a wait fails at once when it has died.
# (/proc, not kill -0: without root, the collector's process is another user's.)
nt__check_collectors() {
    local state
    [[ $NT_WATCH_COLLECTORS == 1 && -n $CT_PID ]] || return 0
    state=$(awk '{ print $3 }' "/proc/$CT_PID/stat" 2>/dev/null) || state=""
    [[ -n $state && $state != Z && $state != X ]] && return 0
    nt_fail "the container $CT_NAME (collector pid $CT_PID) died while waiting for: $1;" \
        "state: $(pm inspect --format '{{.State.Status}} exit code {{.State.ExitCode}}' "$CT_NAME" 2>&1)"
}

skip() {
    nt_log "skipped: $*"
    exit 77
}

# ---- podman ----------------------------------------------------------------------------------
if ((EUID != 0)) && ! { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }; then
    skip "rootful podman needs root (or password-less sudo)"
fi
rc=0
bash "$ROOT/deploy/podman-setup.sh" >"$NT_TMP/podman-setup.out" 2>&1 || rc=$?
if ((rc == 77)); then
    skip "$(grep -h 'cannot use podman here' "$NT_TMP/podman-setup.out" | tail -n 1)"
elif ((rc != 0)); then
    cat "$NT_TMP/podman-setup.out" >&2
    nt_fail "deploy/podman-setup.sh failed (exit $rc)"
fi
nt_log "$(tail -n 1 "$NT_TMP/podman-setup.out"); $(pm --version)"

# ---- the image -------------------------------------------------------------------------------
# ct_build ARGS...: podman build of deploy/Dockerfile (log in image-build.log). A build that
# cannot fetch its packages skips the test; any other failure fails it.
ct_build() {
    local rc=0
    pm build --format docker --network host --build-arg BUILD_JOBS=2 -f "$ROOT/deploy/Dockerfile" \
        "$@" "$ROOT" >>"$NT_TMP/image-build.log" 2>&1 || rc=$?
    ((rc == 0)) && return 0
    if grep -qE 'Temporary failure resolving|Could not resolve|Failed to fetch|Unable to fetch' \
        "$NT_TMP/image-build.log"; then
        skip "the image build cannot fetch Debian packages (no network to the mirror?):" \
            "$(grep -hE 'Failed to fetch|Could not resolve|Temporary failure' \
                "$NT_TMP/image-build.log" | tail -n 1)"
    fi
    nt_fail "podman build $* failed (exit $rc)"
}

# Removes the images of earlier builds of deploy/Dockerfile that nothing uses any more: untagged
# ones without children, repeated as each removal may free its parent. Images made otherwise
# (without the label) are left alone.
ct_prune_stale() {
    local i out
    for ((i = 0; i < 20; i++)); do
        out=$(pm image prune -f --filter label=org.needletrace.image 2>/dev/null) || return 0
        [[ -n $out ]] || return 0
    done
}

t_build=$(nt_now_ms)
nt_log "building $IMAGE from deploy/Dockerfile"
# the build stage tagged too, so that its cached layers are not stale for ct_prune_stale
ct_build --target build -t "$BUILD_IMAGE"
ct_build -t "$IMAGE"
ct_prune_stale
size=$(pm image inspect --format '{{.Size}}' "$IMAGE")
nt_log "image $IMAGE built in $((($(nt_now_ms) - t_build) / 1000)) s;" \
    "size $(awk -v b="$size" 'BEGIN { printf "%.1f", b / 1048576 }') MiB ($size bytes)"

nt_expect_eq "image user" 10001:10001 "$(pm image inspect --format '{{.Config.User}}' "$IMAGE")"
nt_expect_eq "image entrypoint and command" '["/usr/local/bin/needletrace"] ["run"]' \
    "$(pm image inspect --format '{{json .Config.Entrypoint}} {{json .Config.Cmd}}' "$IMAGE")"
nt_expect_eq "image volume and port" 'map[/var/lib/needletrace:{}] map[9464/tcp:{}]' \
    "$(pm image inspect --format '{{.Config.Volumes}} {{.Config.ExposedPorts}}' "$IMAGE")"
health=$(pm image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")
mapfile -t health_cmd < <(jq -r '.Test[1:][]' <<<"$health" 2>/dev/null || true)
nt_expect_eq "image HEALTHCHECK" '["CMD","/usr/local/bin/needletrace-healthcheck"]' \
    "$(jq -c '.Test' <<<"$health" 2>/dev/null)"

# ---- broker, database, migrate (from the image) ----------------------------------------------
nt_start_pg
nt_start_broker
# as the owner (database.admin_url), as deploy/compose.yaml's migrate service; then the test's
# collector login (NEEDLETRACE_DATABASE_URL, not privileged) gets its role
pm run --rm --network host --no-healthcheck \
    -e "NEEDLETRACE_DATABASE_ADMIN_URL=$NEEDLETRACE_DATABASE_ADMIN_URL" \
    -e NEEDLETRACE_LOG_FORMAT=text "$IMAGE" migrate >>"$NT_TMP/migrate.log" 2>&1 ||
    nt_fail "needletrace migrate in the container failed"
nt_grant_logins
nt_expect_true "schema created by the image's migrate" \
    test "$(nt_sql 'SELECT count(*) FROM needletrace.schema_migrations')" -gt 0

# ---- the collector container -----------------------------------------------------------------
HTTP_PORT=$(nt_free_port)
NT_CHTTP[ctr]=$HTTP_PORT
printf 'not-checked-by-the-test-broker\n' >"$NT_TMP/mqtt_password"
chmod 0644 "$NT_TMP/mqtt_password"
CT_MADE=1
pm volume create "$CT_VOLUME" >/dev/null

# podman schedules a container's HEALTHCHECK with a systemd timer; without systemd (a CI
# container, this machine) there is no timer to make: the test runs the check itself.
CT_HEALTH_TIMER=()
if [[ ! -S /run/systemd/private ]]; then
    CT_HEALTH_TIMER=(--health-interval=disable)
fi

# ct_start: the collector container as a clinic server runs it (read-only root, no
# capabilities, no privilege escalation, the journal on the named volume, the broker password
# as a mounted secret file); waits for its process and sets CT_PID.
ct_start() {
    local t
    printf '===== %s starting container %s =====\n' "$(date -u +%FT%TZ)" "$CT_NAME" \
        >>"$NT_TMP/podman.out"
    pm run -d --name "$CT_NAME" --network host "${CT_HEALTH_TIMER[@]}" \
        --read-only --cap-drop ALL --security-opt no-new-privileges \
        --log-driver k8s-file --log-opt "path=$NT_TMP/collector-ctr.log" \
        -v "$CT_VOLUME:/var/lib/needletrace" \
        -v "$NT_TMP/mqtt_password:/run/secrets/mqtt_password:ro" \
        -e "NEEDLETRACE_MQTT_URL=$NEEDLETRACE_MQTT_URL" \
        -e "NEEDLETRACE_DATABASE_URL=$NEEDLETRACE_DATABASE_URL" \
        -e NEEDLETRACE_COLLECTOR_ID=it-ctr \
        -e "NEEDLETRACE_MQTT_CLIENT_ID=$(nt_client_id ctr)" \
        -e NEEDLETRACE_MQTT_USERNAME=needletrace-collector \
        -e NEEDLETRACE_MQTT_PASSWORD_FILE=/run/secrets/mqtt_password \
        -e "NEEDLETRACE_HTTP_LISTEN=127.0.0.1:$HTTP_PORT" \
        -e NEEDLETRACE_LOG_FORMAT=text \
        -e "NEEDLETRACE_LOG_LEVEL=${NT_LOG_LEVEL:-info}" \
        "$IMAGE" >>"$NT_TMP/podman.out" 2>&1 || nt_fail "podman run failed: $(tail -n 3 "$NT_TMP/podman.out")"
    nt_wait_for "container $CT_NAME running" 30 \
        pm inspect --format '{{if .State.Running}}{{.State.Pid}}{{else}}{{.State.Status}}{{end}}' \
        "$CT_NAME"
    t=$NT_LAST
    [[ $t =~ ^[0-9]+$ && $t != 0 ]] || nt_fail "container $CT_NAME is not running: $t," \
        "exit code $(pm inspect --format '{{.State.ExitCode}}' "$CT_NAME" 2>&1)"
    CT_PID=$t
    nt_log "container $CT_NAME started (collector pid $CT_PID on the host, http 127.0.0.1:$HTTP_PORT)"
}

# shellcheck disable=SC2317 # invoked by nt_wait_for
ct__ready() {
    nt_http ctr /readyz || return 1
    nt__collector_subscribed ctr || {
        echo "readyz ok but no subscription from $(nt_client_id ctr) in the broker log"
        return 1
    }
}

# ct_stop: podman stop (SIGTERM, SIGKILL after 30 s); sets NT_EXIT_CODE and NT_EXIT_MS.
ct_stop() {
    local t0
    t0=$(nt_now_ms)
    CT_PID=""
    pm stop -t 30 "$CT_NAME" >>"$NT_TMP/podman.out" 2>&1 || nt_fail "podman stop failed"
    NT_EXIT_MS=$(($(nt_now_ms) - t0))
    NT_EXIT_CODE=$(pm inspect --format '{{.State.ExitCode}}' "$CT_NAME")
    nt_log "container $CT_NAME stopped: exit code $NT_EXIT_CODE, ${NT_EXIT_MS} ms after podman stop"
}

ct_start
nt_wait_for "container collector ready (readyz and subscribed)" 60 ct__ready

uids=$(awk '$1 == "Uid:" || $1 == "Gid:" { printf "%s %s %s %s %s ", $1, $2, $3, $4, $5 }' \
    "/proc/$CT_PID/status")
nt_expect_eq "collector process uid and gid (real, effective, saved, fs)" \
    "Uid: 10001 10001 10001 10001 Gid: 10001 10001 10001 10001 " "$uids"
nt_expect_eq "the collector is the container's process 1" needletrace \
    "$(pm exec "$CT_NAME" cat /proc/1/comm)"

# ---- a simulated fleet -----------------------------------------------------------------------
nt_simulate "$NT_TMP/sim.json" --clinics 2 --devices 5 --events 5000 --events-per-message 5 \
    --seed 1010 --malformed-rate 0.02 --duplicate-rate 0.05 --spoof-rate 0.01 --too-deep-rate 0.05
nt_log "expecting $(jq -c '.expected | {raw_messages, events, quarantine}' "$NT_TMP/sim.json")"
nt_wait_counts "$NT_TMP/sim.json" -- 120
nt_check_no_duplicate_keys
metrics=$(nt_http ctr /metrics || true)
nt_expect_true "metrics served from the container" grep -q '^needletrace_' <<<"$metrics"

# ---- the HEALTHCHECK -------------------------------------------------------------------------
# `podman healthcheck run` runs the image's HEALTHCHECK in the container (no systemd needed for
# a run by hand); the same command by podman exec, and against a port nobody listens on.
out=$(pm healthcheck run "$CT_NAME" 2>&1) && rc=0 || rc=$?
nt_log "podman healthcheck run: exit $rc${out:+ ($out)}"
nt_expect_eq "podman healthcheck run" "0 healthy" "$rc $(pm inspect --format '{{.State.Health.Status}}' "$CT_NAME" 2>&1)"
out=$(pm exec "$CT_NAME" "${health_cmd[@]}" 2>&1) && rc=0 || rc=$?
nt_expect_eq "HEALTHCHECK command by podman exec" "0 HTTP/1.1 200 OK" "$rc $out"
out=$(pm exec "$CT_NAME" "${health_cmd[@]}" "127.0.0.1:$(nt_free_port)" 2>&1) && rc=0 || rc=$?
nt_expect_eq "HEALTHCHECK command against a closed port fails" 1 "$rc"

# ---- SIGTERM, the journal volume, a new container on it --------------------------------------
ct_stop
nt_expect_eq "container exit code after SIGTERM (podman stop)" 0 "$NT_EXIT_CODE"
nt_expect_true "stopped within 10 s (${NT_EXIT_MS} ms)" test "$NT_EXIT_MS" -le 10000
mp=$(pm volume inspect --format '{{.Mountpoint}}' "$CT_VOLUME")
nt_expect_eq "journal directory owner and mode on the volume" "10001:10001 700" \
    "$("${SUDO[@]}" stat -c '%u:%g %a' "$mp/journal")"
nt_expect_true "journal segments on the volume" \
    eval "\"\${SUDO[@]}\" find \"$mp/journal\" -name '*.ntj' | grep -q ."

pm rm "$CT_NAME" >/dev/null
ct_start
nt_wait_for "new container on the same journal ready (checkpoint fits the journal)" 60 ct__ready
nt_simulate "$NT_TMP/sim2.json" --clinics 1 --devices 3 --events 600 --events-per-message 3 \
    --seed 1011 --clinic-prefix second
nt_wait_counts "$NT_TMP/sim.json" "$NT_TMP/sim2.json" -- 120
ct_stop
nt_expect_eq "second container exit code after SIGTERM" 0 "$NT_EXIT_CODE"
nt_finish
