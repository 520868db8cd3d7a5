"""`supervisorctl status`, without supervisorctl: run as root by /usr/bin/python3 -I -S.

The same XML-RPC call (supervisor.getAllProcessInfo) over supervisord's control socket,
printed as supervisorctl prints it; exit status 4 when supervisord does not answer.
Only built-in modules: root never runs code from the project's virtualenv, and this
costs a server 0.02 s of CPU where supervisorctl costs 0.2 s (bench/RESULTS.md).
The socket lives in a directory of the project user's: a link there is not followed.
"""
import _socket
import posix
import sys

path = sys.argv[1]
call = (b"<?xml version='1.0'?><methodCall><methodName>supervisor.getAllProcessInfo</methodName>"
        b"<params></params></methodCall>")
try:
    if posix.lstat(path).st_mode & 0o170000 != 0o140000:
        print(f"unix://{path} is not a socket (refused: a link or a file in its place)")
        sys.exit(4)
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    s.sendall(b"POST /RPC2 HTTP/1.0\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n" % len(call) + call)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except FileNotFoundError:
    print(f"unix://{path} no such file")
    sys.exit(4)
except ConnectionRefusedError:
    print(f"unix://{path} refused connection")
    sys.exit(4)
except OSError as exc:
    print(f"error: {exc}")
    sys.exit(4)
head, _, body = data.decode("utf-8", "replace").partition("\r\n\r\n")
status_line = head.split("\r\n")[0]
if " 200 " not in status_line or "<fault>" in body or "<struct>" not in body + "<struct>":
    print(f"error: supervisord answered {(status_line + body)[:300]!r}")
    sys.exit(4)


def text(value):
    if value.startswith("<") and not value.startswith("</"):
        value = value[value.index(">") + 1:value.rindex("</")] if "</" in value else ""
    for entity, char in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&apos;", "'"), ("&amp;", "&")):
        value = value.replace(entity, char)
    return value


for struct in body.split("<struct>")[1:]:
    info = {}
    for member in struct.split("</struct>")[0].split("<member>")[1:]:
        name = member.split("<name>", 1)[1].split("</name>", 1)[0]
        info[name] = text(member.split("<value>", 1)[1].rsplit("</value>", 1)[0])
    name = info["name"] if info["group"] == info["name"] else f"{info['group']}:{info['name']}"
    print(f"{name:<32} {info['statename']:<9} {info['description']}")
