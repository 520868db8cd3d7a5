# fab shutdown: supervisord and its programs stopped cleanly, by its systemd unit (--unit) or
# by supervisord itself, waiting up to --limit seconds; after lib.sh.

if ! supervisord_running; then section down true; else
  section before ctl status
  if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && systemctl is-active --quiet "$unit"; then
    section systemd systemctl stop "$unit"
  fi
  if supervisord_running; then
    # started outside systemd (or it did not stop): ask supervisord itself, and wait
    section ctl ctl shutdown
    i=0
    while supervisord_running && [ $i -lt $((limit * 2)) ]; do
      i=$((i + 1))
      sleep 0.5
    done
  fi
  if supervisord_running; then section gone false; else section gone true; fi
  section enabled systemctl is-enabled --quiet "$unit"
fi
