#!/usr/bin/env python3
"""ntblackhole.py -- a loopback TCP port where connect() hangs: a blackholed broker.

    ntblackhole.py --port PORT

Listens on 127.0.0.1:PORT with a backlog of 0 and never accepts; then fills the accept queue
with its own connections (kept open) until a further connect no longer completes within
0.5 s. From then on the kernel drops every SYN to the port, so a client's connect() waits
for its own timeout, as with a broker behind a firewall that drops packets. Prints "ready"
on stdout once the queue is full, then sleeps until killed.
"""
import argparse
import socket
import sys
import time


def main():
    p = argparse.ArgumentParser(description="a loopback port where connect() hangs")
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", a.port))
    ls.listen(0)
    fillers = []
    for _ in range(64):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", a.port))
        except (socket.timeout, OSError):
            s.close()
            break
        fillers.append(s)
    else:
        print("ntblackhole: the accept queue never filled", file=sys.stderr)
        sys.exit(1)
    print("ready", flush=True)
    print("ntblackhole: port %d blackholed (%d queued connections)" % (a.port, len(fillers)),
          file=sys.stderr, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
