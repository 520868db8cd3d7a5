"""A local TCP proxy that delays each direction by DELAY seconds: a round trip of 2 x DELAY, as
a deployer sees servers across a WAN (bench/rtt.py). Bytes keep their order; each chunk read
is written DELAY after it was read.

    .venv/bin/python bench/delay_proxy.py LISTEN_PORT TARGET_PORT [--delay 0.025]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import socket
import threading
import time

TRACES: list[list[str]] = []
"""Per connection served, the direction of each chunk read, in order ("up": client to server)."""


def round_trips(trace: list[str]) -> int:
    """The times the talk turned from the server back to the client's side: the waits for an
    answer that a connection paid (each one RTT at least)."""
    return sum(1 for before, after in zip(trace, trace[1:], strict=False) if before == "down" and after == "up") + 1


def _pump(source: socket.socket, sink: socket.socket, delay: float, trace: list[str] | None = None,
          direction: str = "") -> None:
    """Read from source; write each chunk to sink `delay` after it was read (a writer thread)."""
    pending: list[tuple[float, int, bytes]] = []
    order = itertools.count()
    ready = threading.Condition()
    closed = []

    def writer() -> None:
        while True:
            with ready:
                while not pending and not closed:
                    ready.wait()
                if not pending:
                    break
                due, _, data = pending[0]
                wait = due - time.monotonic()
                if wait > 0:
                    ready.wait(wait)
                    continue
                heapq.heappop(pending)
            try:
                sink.sendall(data)
            except OSError:
                break
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    while True:
        try:
            data = source.recv(65536)
        except OSError:
            data = b""
        with ready:
            if data and trace is not None:
                trace.append(direction)
            if data:
                heapq.heappush(pending, (time.monotonic() + delay, next(order), data))
            else:
                closed.append(True)
            ready.notify()
        if not data:
            break
    thread.join()


def _serve_one(client: socket.socket, target_port: int, delay: float) -> None:
    try:
        server = socket.create_connection(("127.0.0.1", target_port))
    except OSError:
        client.close()
        return
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    trace: list[str] = []
    TRACES.append(trace)
    up = threading.Thread(target=_pump, args=(client, server, delay, trace, "up"), daemon=True)
    up.start()
    _pump(server, client, delay, trace, "down")
    up.join()
    client.close()
    server.close()


def serve(listen: socket.socket, target_port: int, delay: float) -> None:
    while True:
        client, _ = listen.accept()
        threading.Thread(target=_serve_one, args=(client, target_port, delay), daemon=True).start()


def start(target_port: int, delay: float) -> int:
    """A proxy in a daemon thread of this process; returns the port it listens on (127.0.0.1)."""
    listen = socket.socket()
    listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listen.bind(("127.0.0.1", 0))
    listen.listen(64)
    threading.Thread(target=serve, args=(listen, target_port, delay), daemon=True).start()
    return listen.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("listen_port", type=int)
    parser.add_argument("target_port", type=int)
    parser.add_argument("--delay", type=float, default=0.025)
    options = parser.parse_args()
    listen = socket.socket()
    listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listen.bind(("127.0.0.1", options.listen_port))
    listen.listen(64)
    serve(listen, options.target_port, options.delay)


if __name__ == "__main__":
    main()
