"""Make the system's supervisord drop programs of ours: run as root by /usr/bin/python3 -I -S.

Debian's `supervisor` package runs a supervisord as root that includes
/etc/supervisor/conf.d/*.conf, where fabcelery before 2026-12 kept its program files: that
supervisord may have loaded them (at its start, after a reboot) and run a second worker
and beat. Once the files are gone from conf.d, this asks it over its own control socket
to read its config again (supervisor.reloadConfig, what `supervisorctl reread` does) and,
for each group that it runs and that is no longer in its config and bears one of NAMES,
to stop it (a warm shutdown, up to the program's stopwaitsecs) and remove it (what
`supervisorctl update NAME` does for a removed group). Nothing else of that supervisord
is touched: neither its own programs nor changes to its config it has not applied.

Arguments: CONFIG NAME...: that supervisord's config ([unix_http_server] file= names its
socket) and our program names. Prints `dropped NAME` for each program dropped. Exit 0 as
well when that supervisord does not run (no socket); 1 when it cannot be asked.
Only the standard library: root never runs code from the project's virtualenv.
"""
import configparser
import http.client
import os
import socket
import stat
import sys
import xmlrpc.client

config_path, names = sys.argv[1], set(sys.argv[2:])


def fail(message):
    print(f"the system's supervisord ({config_path}): {message}; our programs {', '.join(sorted(names))} may "
          "still run there: run `supervisorctl reread` and `supervisorctl update` as root", file=sys.stderr)
    sys.exit(1)


parser = configparser.RawConfigParser(strict=False, inline_comment_prefixes=(";", "#"))
try:
    parser.read(config_path)
except configparser.Error as exc:
    fail(f"its config cannot be read ({exc})")
if not parser.has_option("unix_http_server", "file"):
    fail("its config has no [unix_http_server] file= (its control socket)")
here = os.path.dirname(os.path.abspath(config_path))
path = parser.get("unix_http_server", "file").replace("%(here)s", here)
try:
    mode = os.lstat(path).st_mode
except FileNotFoundError:
    sys.exit(0)                      # it does not run: at its next start it reads conf.d without our files
if not stat.S_ISSOCK(mode):
    fail(f"{path} is not a socket")


class UnixConnection(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)      # no timeout: a warm shutdown may take stopwaitsecs (the action's bound)


class UnixTransport(xmlrpc.client.Transport):
    def make_connection(self, host):
        return UnixConnection("localhost")


auth = ""
if parser.has_option("unix_http_server", "username"):
    user = parser.get("unix_http_server", "username")
    password = parser.get("unix_http_server", "password", fallback="")
    auth = f"{user}:{password}@"
server = xmlrpc.client.ServerProxy(f"http://{auth}localhost/RPC2", transport=UnixTransport()).supervisor
try:
    [[_added, _changed, removed]] = server.reloadConfig()
except ConnectionRefusedError:
    sys.exit(0)                      # a socket left by a supervisord that is gone
except (OSError, xmlrpc.client.Error) as exc:
    fail(f"it could not read its config again ({exc})")
for name in sorted(set(removed) & names):
    try:
        server.stopProcessGroup(name)
        server.removeProcessGroup(name)
    except (OSError, xmlrpc.client.Error) as exc:
        fail(f"{name} could not be stopped and removed ({exc})")
    print(f"dropped {name}")
