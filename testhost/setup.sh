#!/usr/bin/env bash
# Prepare this machine to run fabcelery's test hosts (podman containers that boot
# systemd and run sshd). Idempotent, and quick when everything is already in place.
#
#   testhost/setup.sh [--check] [SUITE...]     (default suites: bookworm trixie)
#
# --check changes nothing: it exits 0 when the tools, the podman configuration,
# every requested image and the package caches are ready, and 1 otherwise
# (testhost.harness.images_ready).
#
# Base images are built from Debian's packages with mmdebstrap (no container
# registry is reachable here); mmdebstrap uses its default mirror, so none is named.
#
# Package caches for the test hosts, so that a machine fetches each Debian package and
# each Python wheel once, not once per test host (testhost.harness points every host's
# apt and pip at them when it starts the host; the deploy code knows nothing of them):
#   apt: Debian's apt-cacher-ng, own configuration, port 3143, cache in
#        /var/cache/fabcelery-testhost/apt; it forwards each request to the address
#        the host's apt asked for (the host's own sources), with no remapping.
#   pip: proxpi (a caching PyPI proxy) in its own virtualenv, port 3144, files in
#        /var/cache/fabcelery-testhost/pip; its upstream is the index of this
#        machine's pip configuration (index-url, cert), or proxpi's default.
# Both are started here when they do not answer, and keep running in the background;
# their logs and pid files are in /var/lib/fabcelery-testhost.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONTAINERFILE="$HERE/Containerfile"
CONTAINERS_CONF=/etc/containers/containers.conf
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
INPUTS_LABEL=fabcelery.testhost.inputs-sha256
APT_PACKAGES=(podman runc mmdebstrap uidmap openssh-client apt-cacher-ng python3-venv)

# The package caches (see the top); testhost/harness.py has the same ports.
APT_CACHE_PORT=3143
PIP_CACHE_PORT=3144
CACHE_ROOT=/var/cache/fabcelery-testhost
STATE_ROOT=/var/lib/fabcelery-testhost
PROXPI_REQUIREMENTS=(proxpi==1.3.1 gunicorn==27.0.1)
LOCK_FILE=/run/fabcelery-testhost-setup.lock

check_only=false
suites=()
for arg in "$@"; do
    case "$arg" in
        --check) check_only=true ;;
        -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
        -*) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
        *) suites+=("$arg") ;;
    esac
done
[ ${#suites[@]} -gt 0 ] || suites=(bookworm trixie)

# One setup at a time (every pytest-xdist worker runs it when its session starts).
if ! $check_only; then
    exec 9>"$LOCK_FILE"
    flock 9
fi

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

# --- package caches for the test hosts ---------------------------------------------

# answers URL: whether an HTTP GET of URL succeeds within 5 s.
answers() {
    python3 - "$1" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=5).close()
PY
}

# detached LOG COMMAND...: run COMMAND in a session of its own, output appended to LOG,
# holding no descriptor of this script's (the lock, a caller's pipes) beyond them.
detached() {
    local logfile="$1"
    shift
    python3 -c 'import os, sys; os.setsid(); os.closerange(3, 65536); os.execvp(sys.argv[1], sys.argv[1:])' \
        "$@" </dev/null >>"$logfile" 2>&1
}

APT_CACHE_URL="http://127.0.0.1:$APT_CACHE_PORT/acng-report.html"
PIP_CACHE_URL="http://127.0.0.1:$PIP_CACHE_PORT/health"

# wait_until_answers NAME URL LOG: wait up to 20 s for a cache that was just started.
wait_until_answers() {
    local name="$1" url="$2" logfile="$3"
    for _ in $(seq 100); do
        answers "$url" && return
        sleep 0.2
    done
    tail -n 20 "$logfile" >&2 || true
    say "$name did not answer on $url (log: $logfile)"
    exit 1
}

ensure_apt_cache() {
    local conf_dir="$STATE_ROOT/apt-cacher-ng"
    answers "$APT_CACHE_URL" && return
    $check_only && not_ready "the apt cache does not answer on port $APT_CACHE_PORT"
    say "starting apt-cacher-ng on port $APT_CACHE_PORT (cache: $CACHE_ROOT/apt)"
    install -d -m 0755 "$conf_dir"
    install -d -m 0755 -o apt-cacher-ng -g apt-cacher-ng "$CACHE_ROOT/apt" "$STATE_ROOT/apt-log"
    # No Remap rules: a request goes to the address that the host's apt asked for.
    printf '%s\n' \
        "# Written by testhost/setup.sh: the apt cache of fabcelery's test hosts." \
        "CacheDir: $CACHE_ROOT/apt" \
        "LogDir: $STATE_ROOT/apt-log" \
        "SupportDir: /usr/lib/apt-cacher-ng" \
        "Port: $APT_CACHE_PORT" \
        "ExThreshold: 4" \
        "ReportPage: acng-report.html" \
        >"$conf_dir/acng.conf"
    # It forks into the background itself (ForeGround=0).
    detached "$STATE_ROOT/apt-cacher-ng.log" \
        runuser -u apt-cacher-ng -- /usr/sbin/apt-cacher-ng -c "$conf_dir" ForeGround=0 \
        "PidFile=$STATE_ROOT/apt-log/apt-cacher-ng.pid" \
        "SocketPath=$STATE_ROOT/apt-log/apt-cacher-ng.socket"
    wait_until_answers apt-cacher-ng "$APT_CACHE_URL" "$STATE_ROOT/apt-cacher-ng.log"
}

# pip_setting KEY ENV_VALUE: this machine's pip setting (PIP_* variable first, then
# pip's configuration files), or nothing.
pip_setting() {
    if [ -n "$2" ]; then echo "$2"; return; fi
    "$STATE_ROOT/proxpi/bin/pip" config get "global.$1" 2>/dev/null || true
}

ensure_pip_cache() {
    local venv="$STATE_ROOT/proxpi" index cert extra url extras=()
    answers "$PIP_CACHE_URL" && return
    $check_only && not_ready "the pip cache does not answer on port $PIP_CACHE_PORT"
    if [ "$(cat "$venv/.installed" 2>/dev/null)" != "${PROXPI_REQUIREMENTS[*]}" ]; then
        say "installing ${PROXPI_REQUIREMENTS[*]} into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "${PROXPI_REQUIREMENTS[@]}"
        echo "${PROXPI_REQUIREMENTS[*]}" >"$venv/.installed"
    fi
    say "starting proxpi on port $PIP_CACHE_PORT (cache: $CACHE_ROOT/pip)"
    install -d -m 0755 "$CACHE_ROOT/pip"
    # Upstream: this machine's own pip index and CA bundle, where its pip names them.
    index="$(pip_setting index-url "${PIP_INDEX_URL:-}")"
    cert="$(pip_setting cert "${PIP_CERT:-}")"
    # proxpi serves indexes over HTTP(S) only: a file:// extra index stays this machine's.
    for url in $(pip_setting extra-index-url "${PIP_EXTRA_INDEX_URL:-}"); do
        case "$url" in http://* | https://*) extras+=("$url") ;; esac
    done
    extra="$(IFS=,; echo "${extras[*]}")"
    # proxpi keeps index pages in memory: one worker process, threads for the hosts.
    # Files wait up to 60 s for proxpi's own download, so that each is fetched once.
    detached "$STATE_ROOT/proxpi.log" \
        env ${index:+PROXPI_INDEX_URL="$index"} ${extra:+PROXPI_EXTRA_INDEX_URLS="$extra"} \
        REQUESTS_CA_BUNDLE="${cert:-$CA_BUNDLE}" \
        PROXPI_CACHE_DIR="$CACHE_ROOT/pip" PROXPI_DOWNLOAD_TIMEOUT=60 \
        "$venv/bin/gunicorn" --daemon --bind "0.0.0.0:$PIP_CACHE_PORT" \
        --workers 1 --threads 16 --timeout 300 --no-control-socket \
        --pid "$STATE_ROOT/proxpi.pid" --error-logfile "$STATE_ROOT/proxpi.log" \
        proxpi.server:app
    wait_until_answers proxpi "$PIP_CACHE_URL" "$STATE_ROOT/proxpi.log"
}

ensure_caches() {
    $check_only || install -d -m 0755 "$CACHE_ROOT" "$STATE_ROOT"
    ensure_apt_cache
    ensure_pip_cache
}

ensure_packages
ensure_containers_conf
for suite in "${suites[@]}"; do
    ensure_base_image "$suite"
    ensure_testhost_image "$suite"
done
ensure_caches
$check_only || say "ready: ${suites[*]}"
