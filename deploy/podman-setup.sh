#!/usr/bin/env bash
# deploy/podman-setup.sh -- make container builds and runs work on a Debian 12 machine without
# a Docker engine or a container registry: Debian's podman (vfs storage, runc, cgroupfs) and
# local debian:bookworm-slim / debian:bookworm base images made with debootstrap from the Debian
# mirror this machine's apt already uses.
#
# Used by tests/integration/test_container.sh; by hand:
#   sudo deploy/podman-setup.sh
#   export CONTAINERS_CONF=/etc/containers/needletrace.conf
#   podman --storage-driver vfs --runtime runc build --format docker --network host \
#       -t needletrace:dev -f deploy/Dockerfile .
#
# `FROM debian:bookworm-slim` and `FROM debian:bookworm` then resolve to the local image (a
# minimal bookworm root, also tagged debian:bookworm: deploy/Dockerfile installs its build tools
# with apt-get). Idempotent: a second run only checks. About a minute the first time.
#
# Needs root (re-runs itself with sudo -n when it can). Installs podman, runc and debootstrap
# when missing (apt-get update first). NT_DEBIAN_MIRROR overrides the mirror found in apt's
# sources. Finally runs a container to prove that podman works here.
#
# Exit codes: 0 ready; 77 podman cannot work on this machine (not root, packages or base image
# cannot be fetched, containers cannot run) -- the reason is printed; 1 any other failure.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

CONF=/etc/containers/needletrace.conf
# Short names: they find a pulled image as well as the local one this script makes.
IMAGE=debian:bookworm-slim
IMAGE_FULL=debian:bookworm

say() {
    printf 'podman-setup: %s\n' "$*"
}

cannot() {
    say "cannot use podman here: $*" >&2
    exit 77
}

if ((EUID != 0)); then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo -n env ${NT_DEBIAN_MIRROR:+NT_DEBIAN_MIRROR="$NT_DEBIAN_MIRROR"} \
            bash "${BASH_SOURCE[0]}" "$@"
    fi
    cannot "not root and no password-less sudo (rootful podman is what this setup makes work)"
fi

# ---- packages --------------------------------------------------------------------------------
need=()
for p in podman runc debootstrap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if ((${#need[@]} > 0)); then
    say "installing ${need[*]}"
    apt-get update -qq >/dev/null 2>&1 || cannot "apt-get update failed (no network to the Debian mirror?)"
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
        apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 ||
        cannot "apt-get install ${need[*]} failed"
fi

# ---- podman's configuration ------------------------------------------------------------------
# No default ulimits (the host's are used as they are) and cgroupfs: there may be no systemd.
mkdir -p /etc/containers
cat >"$CONF" <<'CONF'
# written by needletrace deploy/podman-setup.sh
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF=$CONF
pm() { podman --storage-driver vfs --runtime runc "$@"; }

# ---- base images -----------------------------------------------------------------------------
# Prints the Debian mirror of this machine's apt sources (deb822 or one-line format).
debian_mirror() {
    local m=""
    if [[ -n ${NT_DEBIAN_MIRROR:-} ]]; then
        printf '%s\n' "$NT_DEBIAN_MIRROR"
        return 0
    fi
    m=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [[ -n $m ]] || m=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ { print $2; exit }' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    [[ -n $m ]] || return 1
    printf '%s\n' "$m"
}

# make_base: debootstraps a minimal bookworm root, trims it as the official slim image is
# trimmed, and imports it as localhost/$IMAGE.
make_base() {
    local mirror root
    mirror=$(debian_mirror) || cannot "no Debian mirror in apt's sources (set NT_DEBIAN_MIRROR)"
    root=$(mktemp -d /var/tmp/nt-rootfs.XXXXXX)
    # shellcheck disable=SC2064 # the path is fixed now
    trap "rm -rf '$root' '$root.log'" EXIT
    say "making $IMAGE with debootstrap (minbase) from the machine's Debian mirror"
    debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
        tail -n 5 "$root.log" >&2
        cannot "debootstrap bookworm failed (no network to the Debian mirror?)"
    }
    # Slim as the official image is: no documentation, manual pages or translations, now and
    # for the packages installed later; no package lists or caches.
    cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/groff/* "$root"/usr/share/info/* \
        "$root"/usr/share/lintian/* "$root"/usr/share/linda/*
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
        -exec rm -rf {} +
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
        "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log
    # the image's / is this directory: 0755, not mktemp's 0700 (a non-root user could reach
    # nothing in the container)
    chmod 0755 "$root"
    tar -C "$root" -c . | pm import -q --change 'CMD ["bash"]' - "localhost/$IMAGE" >/dev/null
    rm -rf "$root" "$root.log"
    trap - EXIT
    say "made $IMAGE"
}

# root_mode IMAGE: prints the mode of / in the image (and proves that a container runs).
root_mode() {
    pm run --rm --network host "$1" stat -c %a / 2>&1
}

if pm image exists "$IMAGE"; then
    say "$IMAGE present"
    if ! out=$(root_mode "$IMAGE"); then
        printf '%s\n' "$out" | tail -n 5 >&2
        cannot "podman cannot run a container (no user namespaces, cgroups or runc?)"
    fi
    if [[ $out != 755 ]]; then
        # made by an earlier version of this setup from a mode-0700 directory
        say "remaking $IMAGE: its root directory has mode $out"
        pm rmi "$IMAGE" >/dev/null
        if pm image exists "$IMAGE_FULL" && [[ $(root_mode "$IMAGE_FULL") != 755 ]]; then
            pm rmi "$IMAGE_FULL" >/dev/null
        fi
        make_base
    fi
else
    make_base
fi
if ! pm image exists "$IMAGE_FULL"; then
    pm tag "$IMAGE" "localhost/$IMAGE_FULL"
    say "tagged $IMAGE as $IMAGE_FULL"
fi

# ---- does a container run (as a user other than root)? ---------------------------------------
if ! out=$(pm run --rm --network host --user 65534:65534 "$IMAGE" ls / 2>&1); then
    printf '%s\n' "$out" | tail -n 5 >&2
    cannot "podman cannot run a container (no user namespaces, cgroups or runc?)"
fi
say "ready (export CONTAINERS_CONF=$CONF)"
