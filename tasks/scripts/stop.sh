# fab stop-celery: the programs ("$@") get TERM and finish their running tasks first; after lib.sh.

if ! supervisord_running; then section down true; else
  section before ctl status "$@"
  section stop each stop "$@"
  section after ctl status "$@"
fi
