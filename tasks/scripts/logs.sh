# fab logs: the last --lines lines of each log ("$@"), read as the project user, whose files
# they are (root follows no link there); after lib.sh.

_i=0
for _log in "$@"; do
  if [ -f "$_log" ]; then
    section "log$_i" runuser -u "$user" -- tail -n "$lines" "$_log"
  else
    section "log$_i" false
  fi
  _i=$((_i + 1))
done
