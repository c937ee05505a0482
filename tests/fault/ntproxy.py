#!/usr/bin/env python3
"""ntproxy.py -- a TCP proxy on loopback that the fault suite cuts and restores: the network
between the collector and the broker or the database, from outside the process.

    ntproxy.py --listen PORT --target PORT --control FILE [--mode blackhole|refuse]

Forwards every connection accepted on 127.0.0.1:PORT to 127.0.0.1:TARGET. While FILE exists
the link is cut: every open connection is dropped (both sockets closed) and new ones are
either held open and never answered (blackhole: connect() succeeds, nothing ever comes back)
or refused (refuse: the listening socket is closed, connect() fails). When FILE is removed,
the held connections are dropped and forwarding resumes. The control file is polled every
50 ms. Prints "ready" on stdout once listening; one line per cut and restore on stderr.
"""
import argparse
import os
import selectors
import socket
import sys

BUF = 65536


class Proxy:
    def __init__(self, listen_port, target_port, control, mode):
        self.listen_port = listen_port
        self.target = ("127.0.0.1", target_port)
        self.control = control
        self.mode = mode
        self.sel = selectors.DefaultSelector()
        self.peer = {}  # socket -> the socket it forwards to
        self.held = []  # blackholed connections, never read
        self.lsock = None
        self.cut = False

    def listen(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.listen_port))
        s.listen(128)
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ, "accept")
        self.lsock = s

    def unlisten(self):
        if self.lsock is not None:
            self.sel.unregister(self.lsock)
            self.lsock.close()
            self.lsock = None

    def close_pair(self, s):
        other = self.peer.pop(s, None)
        for x in (s, other):
            if x is None:
                continue
            self.peer.pop(x, None)
            try:
                self.sel.unregister(x)
            except (KeyError, ValueError):
                pass
            x.close()

    def drop_all(self):
        for s in list(self.peer):
            self.close_pair(s)
        for s in self.held:
            s.close()
        self.held = []

    def accept(self):
        try:
            c, _ = self.lsock.accept()
        except OSError:
            return
        if self.cut:
            self.held.append(c)  # blackhole: accepted, never answered
            return
        try:
            t = socket.create_connection(self.target, timeout=5)
        except OSError:
            c.close()
            return
        for x in (c, t):
            x.setblocking(False)
            x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.peer[c], self.peer[t] = t, c
        self.sel.register(c, selectors.EVENT_READ, "data")
        self.sel.register(t, selectors.EVENT_READ, "data")

    def forward(self, s):
        try:
            data = s.recv(BUF)
        except OSError:
            data = b""
        if not data:
            self.close_pair(s)
            return
        other = self.peer.get(s)
        try:
            other.setblocking(True)
            other.sendall(data)
            other.setblocking(False)
        except OSError:
            self.close_pair(s)

    def poll_control(self):
        want = os.path.exists(self.control)
        if want == self.cut:
            return
        self.cut = want
        self.drop_all()
        if want:
            if self.mode == "refuse":
                self.unlisten()
            print("ntproxy: cut (%s), connections dropped" % self.mode, file=sys.stderr, flush=True)
        else:
            if self.lsock is None:
                self.listen()
            print("ntproxy: restored", file=sys.stderr, flush=True)

    def run(self):
        self.listen()
        print("ready", flush=True)
        while True:
            for key, _ in self.sel.select(timeout=0.05):
                if key.data == "accept":
                    self.accept()
                elif key.fileobj in self.peer:
                    self.forward(key.fileobj)
            self.poll_control()


def main():
    p = argparse.ArgumentParser(description="a TCP proxy on loopback that can be cut")
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--target", type=int, required=True)
    p.add_argument("--control", required=True)
    p.add_argument("--mode", choices=("blackhole", "refuse"), default="blackhole")
    a = p.parse_args()
    try:
        Proxy(a.listen, a.target, a.control, a.mode).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
