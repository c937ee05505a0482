#!/usr/bin/env python3
"""http_hog.py -- clients that hold an HTTP listener's connections without asking anything.

Opens --idle TCP connections that send nothing and --loris connections that trickle a request
head that never ends (one byte every --trickle-s seconds). A connection the server closes is
opened again after --reopen-s seconds, so the listener stays under pressure for as long as this
runs. Every --status-s seconds (and at exit) it writes a JSON line to --status:

  {"open": n, "opened": n, "closed_by_server": n, "loris_closed": n,
   "loris_max_life_s": x, "loris_bytes_max": n}

loris_max_life_s is the longest time a trickling connection lived before the server closed it
(the header deadline); loris_bytes_max the most bytes one of them got to send. Standard library
only. Stops on SIGTERM or SIGINT.
"""
import argparse
import errno
import json
import os
import selectors
import signal
import socket
import time

LORIS_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "


class Conn:
    def __init__(self, kind):
        self.kind = kind
        self.sock = None
        self.opened_at = 0.0
        self.next_byte_at = 0.0
        self.sent = 0
        self.reopen_at = 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--idle", type=int, default=200)
    ap.add_argument("--loris", type=int, default=4)
    ap.add_argument("--trickle-s", type=float, default=0.5)
    ap.add_argument("--reopen-s", type=float, default=0.5)
    ap.add_argument("--status", required=True)
    ap.add_argument("--status-s", type=float, default=0.5)
    args = ap.parse_args()

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    sel = selectors.DefaultSelector()
    conns = [Conn("idle") for _ in range(args.idle)] + [Conn("loris") for _ in range(args.loris)]
    stats = {"open": 0, "opened": 0, "closed_by_server": 0, "loris_closed": 0,
             "loris_max_life_s": 0.0, "loris_bytes_max": 0}

    def open_conn(c, now):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect((args.host, args.port))
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            c.reopen_at = now + args.reopen_s
            return
        c.sock = s
        c.opened_at = now
        c.next_byte_at = now
        c.sent = 0
        sel.register(s, selectors.EVENT_READ, c)
        stats["open"] += 1
        stats["opened"] += 1

    def close_conn(c, now, by_server):
        sel.unregister(c.sock)
        c.sock.close()
        c.sock = None
        c.reopen_at = now + args.reopen_s
        stats["open"] -= 1
        if by_server:
            stats["closed_by_server"] += 1
            if c.kind == "loris":
                stats["loris_closed"] += 1
                stats["loris_max_life_s"] = max(stats["loris_max_life_s"],
                                                round(now - c.opened_at, 3))
                stats["loris_bytes_max"] = max(stats["loris_bytes_max"], c.sent)

    def write_status():
        # written aside, then renamed: a reader never sees half a line
        with open(args.status + ".tmp", "w") as f:
            f.write(json.dumps(stats) + "\n")
        os.replace(args.status + ".tmp", args.status)

    next_status = 0.0
    while not stop:
        now = time.monotonic()
        for c in conns:
            if c.sock is None and now >= c.reopen_at:
                open_conn(c, now)
            elif c.sock is not None and c.kind == "loris" and now >= c.next_byte_at:
                data = (LORIS_HEAD + b"a" * 100000)[c.sent:c.sent + 1]
                try:
                    c.sent += c.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    close_conn(c, now, True)
                    continue
                c.next_byte_at = now + args.trickle_s
        for key, _ in sel.select(timeout=0.05):
            c = key.data
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                if e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNREFUSED):
                    data = b""
                else:
                    raise
            if not data:
                close_conn(c, time.monotonic(), True)
        if now >= next_status:
            write_status()
            next_status = now + args.status_s
    write_status()


if __name__ == "__main__":
    main()
