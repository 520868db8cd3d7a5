# fab restart-celery: TERM (warm shutdown, up to stopwaitsecs), start, then wait until the
# programs ("$@") run and the workers answer; after lib.sh and workers.sh.

if ! supervisord_running; then section down true; else
  section before ctl status "$@"
  section restart each restart "$@"
  section ready wait_ready "$@"
  tail_if_failed
fi
