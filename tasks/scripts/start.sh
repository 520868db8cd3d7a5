# fab start-celery: the programs ("$@"), and supervisord first if it is down (its systemd unit,
# --unit and --unitfile, or without systemd --startdirect); after lib.sh and workers.sh.

if ! supervisord_running; then
  if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && [ -f "$unitfile" ]; then
    section supervisord systemctl start "$unit"
  else
    section supervisord sh -c "$startdirect"
  fi
  i=0
  until ctl pid 2>/dev/null | grep -qx '[0-9][0-9]*' || [ $i -ge 60 ]; do
    i=$((i + 1))
    sleep 0.5
  done
fi
section before ctl status "$@"
section start each start "$@"
section ready wait_ready "$@"
tail_if_failed
