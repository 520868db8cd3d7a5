"""Each queue's ready messages and consumers, asked of a RabbitMQ node over AMQP 0-9-1.

`fab status` on a node of a RabbitMQ cluster (tasks/scripts/status-cluster.sh) runs this with
the system's Python, as root, beside the node's one `rabbitmqctl cluster_status`: a CLI call
starts an Erlang VM (seconds on a loaded host), an AMQP connection on loopback costs
milliseconds. One connection as the project's own account, one channel per queue, a passive
`queue.declare` on each (it creates nothing: an absent queue closes its channel with 404), all
sent at once; Queue.DeclareOk carries the queue's ready messages and its consumers.

    amqp_queues.py HOST PORT USER VHOST PASSWORD_FILE QUEUE...

The password is read from PASSWORD_FILE (never a command line). Prints one JSON list, as
`rabbitmqctl list_queues name messages_ready consumers --formatter json` would, of the queues
that exist (an absent queue holds nothing and has no consumer); exit status 1 with the reason
on stderr when the node cannot be asked (down, refused, the account's access refused).
Standard library only: it runs on nodes that have no virtualenv.
"""

from __future__ import annotations

import json
import socket
import struct
import sys

FRAME_METHOD, FRAME_HEARTBEAT, FRAME_END = 1, 8, 0xCE
CONNECTION_START, CONNECTION_START_OK = (10, 10), (10, 11)
CONNECTION_TUNE, CONNECTION_TUNE_OK = (10, 30), (10, 31)
CONNECTION_OPEN, CONNECTION_OPEN_OK = (10, 40), (10, 41)
CONNECTION_CLOSE, CONNECTION_CLOSE_OK = (10, 50), (10, 51)
CHANNEL_OPEN, CHANNEL_OPEN_OK = (20, 10), (20, 11)
CHANNEL_CLOSE, CHANNEL_CLOSE_OK = (20, 40), (20, 41)
QUEUE_DECLARE, QUEUE_DECLARE_OK = (50, 10), (50, 11)
PASSIVE = 0x01
NOT_FOUND = 404


class AmqpError(Exception):
    pass


def shortstr(value: str) -> bytes:
    data = value.encode()
    if len(data) > 255:
        raise AmqpError(f"name too long for AMQP: {value[:40]}...")
    return bytes([len(data)]) + data


def longstr(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def method(channel: int, which: tuple[int, int], args: bytes = b"") -> bytes:
    payload = struct.pack(">HH", *which) + args
    return struct.pack(">BHI", FRAME_METHOD, channel, len(payload)) + payload + bytes([FRAME_END])


def start_ok(user: str, password: str) -> bytes:
    # client properties: an empty table; PLAIN: \0user\0password
    return (struct.pack(">I", 0) + shortstr("PLAIN")
            + longstr(b"\0" + user.encode() + b"\0" + password.encode()) + shortstr("en_US"))


def declare_passive(queue: str) -> bytes:
    return struct.pack(">H", 0) + shortstr(queue) + bytes([PASSIVE]) + struct.pack(">I", 0)


def read_shortstr(data: bytes, at: int) -> tuple[str, int]:
    size = data[at]
    return data[at + 1:at + 1 + size].decode(errors="replace"), at + 1 + size


def parse_close(args: bytes) -> tuple[int, str]:
    """Connection.Close / Channel.Close: (reply code, reply text)."""
    code = struct.unpack_from(">H", args)[0]
    text, _ = read_shortstr(args, 2)
    return code, text


def parse_declare_ok(args: bytes) -> tuple[str, int, int]:
    name, at = read_shortstr(args, 0)
    ready, consumers = struct.unpack_from(">II", args, at)
    return name, ready, consumers


class Frames:
    """Method frames read from a socket (heartbeats skipped; no content frames are asked for)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AmqpError("the node closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def next(self) -> tuple[int, tuple[int, int], bytes]:
        while True:
            kind, channel, size = struct.unpack(">BHI", self._take(7))
            payload = self._take(size + 1)[:-1]
            if kind == FRAME_HEARTBEAT:
                continue
            if kind != FRAME_METHOD:
                raise AmqpError(f"unexpected frame type {kind}")
            which = struct.unpack_from(">HH", payload)
            return channel, which, payload[4:]


def expect(frames: Frames, which: tuple[int, int]) -> bytes:
    channel, got, args = frames.next()
    if got == CONNECTION_CLOSE:
        code, text = parse_close(args)
        raise AmqpError(f"{code} {text}")
    if got != which:
        raise AmqpError(f"unexpected method {got} (waited for {which})")
    return args


def ask(host: str, port: int, user: str, vhost: str, password: str, queues: list[str],
        timeout: float = 5.0) -> list[dict]:
    """The queues that exist, with their ready messages and consumers, in the order given."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        frames = Frames(sock)
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        try:
            expect(frames, CONNECTION_START)
        except AmqpError as e:
            raise AmqpError(f"no AMQP 0-9-1 answer: {e}") from None
        sock.sendall(method(0, CONNECTION_START_OK, start_ok(user, password)))
        try:
            tune = expect(frames, CONNECTION_TUNE)
        except AmqpError as e:
            raise AmqpError(f"login refused for {user}: {e}") from None
        channel_max = struct.unpack_from(">H", tune)[0] or 65535
        if len(queues) > channel_max:
            raise AmqpError(f"{len(queues)} queues, and the node allows {channel_max} channels")
        frame_max = struct.unpack_from(">I", tune, 2)[0]
        out = [method(0, CONNECTION_TUNE_OK, struct.pack(">HIH", channel_max, frame_max, 0)),
               method(0, CONNECTION_OPEN, shortstr(vhost) + shortstr("") + b"\0")]
        for number, queue in enumerate(queues, 1):
            out += [method(number, CHANNEL_OPEN, shortstr("")), method(number, QUEUE_DECLARE, declare_passive(queue))]
        sock.sendall(b"".join(out))
        expect(frames, CONNECTION_OPEN_OK)
        found: dict[int, dict | None] = {}
        while len(found) < len(queues):
            channel, which, args = frames.next()
            if which == CONNECTION_CLOSE:
                code, text = parse_close(args)
                raise AmqpError(f"{code} {text}")
            if which == QUEUE_DECLARE_OK:
                _, ready, consumers = parse_declare_ok(args)
                found[channel] = {"name": queues[channel - 1], "messages_ready": ready, "consumers": consumers}
            elif which == CHANNEL_CLOSE:
                code, text = parse_close(args)
                sock.sendall(method(channel, CHANNEL_CLOSE_OK))
                if code != NOT_FOUND:
                    raise AmqpError(f"{queues[channel - 1]}: {code} {text}")
                found[channel] = None        # not declared yet: nothing waits, nobody consumes
        sock.sendall(method(0, CONNECTION_CLOSE, struct.pack(">H", 200) + shortstr("") + struct.pack(">HH", 0, 0)))
        return [found[n] for n in sorted(found) if found[n] is not None]


def main(argv: list[str]) -> int:
    if len(argv) < 5:
        print("usage: amqp_queues.py HOST PORT USER VHOST PASSWORD_FILE QUEUE...", file=sys.stderr)
        return 2
    host, port, user, vhost, password_file, *queues = argv
    try:
        with open(password_file) as f:
            password = f.read().removesuffix("\n")
        print(json.dumps(ask(host, int(port), user, vhost, password, queues)))
    except (OSError, AmqpError, struct.error) as e:
        print(f"cannot ask {host}:{port}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
