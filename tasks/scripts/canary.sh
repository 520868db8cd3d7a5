# fab check, after lib.sh: the canaries through the queues ("$@"), sent and watched by
# tasks/scripts/canary.py (given as --canarypy) as the project user, by the virtualenv's
# Python, isolated and from /, so that nothing of the project's code is imported. Its values:
# --settings (settings_local.py), --begin and --end (the block's markers), --timeout and
# --expected (how many worker nodes the inventory places).

canary_check() {
  _home="$(getent passwd "$user" | cut -d: -f6)"
  cd / && runuser -u "$user" -- env -i HOME="$_home" USER="$user" PATH=/usr/bin:/bin LC_ALL=C.UTF-8 \
    "$venv/bin/python" -I -c "$canarypy" "$settings" "$begin" "$end" "$timeout" "$expected" "$@"
}

section canary canary_check "$@"
