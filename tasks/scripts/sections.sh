# The output protocol of every fabcelery script, the deploy's probe and each day-two program
# (tasks/runner.py reads it): one line per finding, `@@NAME RC BASE64`, so that nothing a
# command prints (a log, an error) can pass for the script's own structure. The runner ends
# every program with `end`: its line proves the script ran to its end.

# section NAME COMMAND...: run COMMAND; its output (stdout and stderr) and exit status, one line
section() {
  _name=$1
  shift
  _out=$("$@" 2>&1)
  _rc=$?
  printf '@@%s %s %s\n' "$_name" "$_rc" "$(printf '%s' "$_out" | base64 -w0)"
}

# kv NAME BASE64 [RC]: a finding encoded by the caller (the probe streams whole files through b64)
kv() { printf '@@%s %s %s\n' "$1" "${3:-0}" "$2"; }

b64() { base64 -w0 2>/dev/null; }

end() {
  printf '@@end 0 \n'
  exit 0
}
