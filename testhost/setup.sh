#!/usr/bin/env bash
# Prepare this machine to run fabcelery's test hosts (podman containers that boot
# systemd and run sshd). Idempotent, and quick when everything is already in place.
#
#   testhost/setup.sh [--check] [SUITE...]     (default suites: bookworm trixie)
#
# --check changes nothing: it exits 0 when the tools, the podman configuration and
# every requested image are ready, and 1 otherwise (testhost.harness.images_ready).
#
# Base images are built from Debian's packages with mmdebstrap (no container
# registry is reachable here); mmdebstrap uses its default mirror, so none is named.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONTAINERFILE="$HERE/Containerfile"
CONTAINERS_CONF=/etc/containers/containers.conf
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
INPUTS_LABEL=fabcelery.testhost.inputs-sha256
APT_PACKAGES=(podman runc mmdebstrap uidmap openssh-client)

check_only=false
suites=()
for arg in "$@"; do
    case "$arg" in
        --check) check_only=true ;;
        -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
        -*) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
        *) suites+=("$arg") ;;
    esac
done
[ ${#suites[@]} -gt 0 ] || suites=(bookworm trixie)

# Throw-away build contexts, removed however the script ends.
build_contexts=()
trap 'rm -rf "${build_contexts[@]}"' EXIT

say() { echo "testhost: $*" >&2; }
not_ready() { say "not ready: $*"; exit 1; }

if [ "$(id -u)" -ne 0 ] && ! $check_only; then
    echo "setup.sh must run as root (rootful podman)" >&2
    exit 1
fi

# --- packages ---------------------------------------------------------------------

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

ensure_packages() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return
    $check_only && not_ready "packages missing: ${missing[*]}"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
}

# --- /etc/containers/containers.conf ------------------------------------------------
# Without these two settings a container fails to start on these machines
# ("setrlimit ... Operation not permitted", or crun's "cgroups in hybrid mode").

ULIMITS_LINE='default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]'
RUNTIME_LINE='runtime = "runc"'

# ensure_toml_setting TABLE KEY LINE: make LINE the value of KEY in [TABLE].
# Both keys exist only in their own table in containers.conf, so a key match
# anywhere in the file is the one to change.
ensure_toml_setting() {
    local table="$1" key="$2" line="$3" key_re
    key_re="^[[:space:]]*${key}[[:space:]]*="
    if grep -qxF "$line" "$CONTAINERS_CONF"; then
        return
    fi
    $check_only && not_ready "$CONTAINERS_CONF lacks: $line"
    [ -e "$CONTAINERS_CONF.fabcelery-backup" ] ||
        cp -p "$CONTAINERS_CONF" "$CONTAINERS_CONF.fabcelery-backup"
    if grep -qE "$key_re" "$CONTAINERS_CONF"; then
        # A value spanning several lines cannot be replaced safely with sed.
        if grep -E "$key_re" "$CONTAINERS_CONF" | grep -qvE '\]|"[^"]*"[[:space:]]*(#.*)?$'; then
            echo "$CONTAINERS_CONF: set '$line' under [$table] by hand" >&2
            exit 1
        fi
        say "$CONTAINERS_CONF: replacing $key"
        sed -i -E "s|${key_re}.*|${line}|" "$CONTAINERS_CONF"
    elif grep -qE "^[[:space:]]*\[${table}\][[:space:]]*(#.*)?$" "$CONTAINERS_CONF"; then
        say "$CONTAINERS_CONF: adding $key to [$table]"
        sed -i -E "/^[[:space:]]*\[${table}\][[:space:]]*(#.*)?$/a ${line}" "$CONTAINERS_CONF"
    else
        say "$CONTAINERS_CONF: adding [$table] $key"
        printf '\n[%s]\n%s\n' "$table" "$line" >>"$CONTAINERS_CONF"
    fi
}

ensure_containers_conf() {
    if [ ! -e "$CONTAINERS_CONF" ]; then
        $check_only && not_ready "$CONTAINERS_CONF is missing"
        say "writing $CONTAINERS_CONF"
        mkdir -p "$(dirname "$CONTAINERS_CONF")"
        printf '[containers]\n%s\n\n[engine]\n%s\n' "$ULIMITS_LINE" "$RUNTIME_LINE" \
            >"$CONTAINERS_CONF"
        return
    fi
    ensure_toml_setting containers default_ulimits "$ULIMITS_LINE"
    ensure_toml_setting engine runtime "$RUNTIME_LINE"
}

# --- images -------------------------------------------------------------------------

image_exists() { podman image exists "$1"; }

ensure_base_image() {
    local suite="$1" image="localhost/debian:$1" started
    image_exists "$image" && return
    $check_only && not_ready "$image is missing"
    say "building $image with mmdebstrap"
    started=$SECONDS
    # pipefail makes a failed mmdebstrap fail the step even though import ran.
    mmdebstrap --quiet --variant=minbase "$suite" - </dev/null |
        podman import --quiet - "$image" >/dev/null
    say "built $image in $((SECONDS - started)) s"
}

# Everything the test-host image is built from: a change to any of them rebuilds it.
build_inputs_hash() {
    local suite="$1" base_id
    base_id="$(podman image inspect --format '{{.Id}}' "localhost/debian:$suite")"
    { sha256sum "$CONTAINERFILE" "$CA_BUNDLE" | cut -d' ' -f1; echo "$base_id"; } |
        sha256sum | cut -d' ' -f1
}

ensure_testhost_image() {
    local suite="$1" image="localhost/fabcelery-testhost:$1" wanted current old_id context started
    wanted="$(build_inputs_hash "$suite")"
    current="" old_id=""
    if image_exists "$image"; then
        current="$(podman image inspect --format "{{index .Labels \"$INPUTS_LABEL\"}}" "$image")"
        old_id="$(podman image inspect --format '{{.Id}}' "$image")"
    fi
    [ "$current" = "$wanted" ] && return
    $check_only && not_ready "$image is missing or out of date"
    say "building $image"
    started=$SECONDS
    # The CA bundle goes into a throw-away build context: the repo never holds a copy.
    context="$(mktemp -d)"
    build_contexts+=("$context")
    cp "$CONTAINERFILE" "$context/Containerfile"
    cp "$CA_BUNDLE" "$context/ca-certificates.crt"
    if ! podman build --pull=never \
        --build-arg "BASE=localhost/debian:$suite" \
        --label "$INPUTS_LABEL=$wanted" \
        --tag "$image" "$context" >"$context/build.log" 2>&1; then
        tail -n 40 "$context/build.log" >&2
        say "building $image failed"
        exit 1
    fi
    # Drop the image this one replaces, unless a container still uses it.
    [ -z "$old_id" ] || podman image rm "$old_id" >/dev/null 2>&1 || true
    say "built $image in $((SECONDS - started)) s"
}

ensure_packages
ensure_containers_conf
for suite in "${suites[@]}"; do
    ensure_base_image "$suite"
    ensure_testhost_image "$suite"
done
$check_only || say "ready: ${suites[*]}"
