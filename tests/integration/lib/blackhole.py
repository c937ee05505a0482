"""blackhole.py PORT -- a loopback TCP listener that never accepts: its accept queue is filled
at once, so every further SYN to 127.0.0.1:PORT is dropped and connect() hangs, as towards a
broker behind a firewall that drops packets. Runs until killed; prints "ready" when full."""
import socket
import sys
import time

port = int(sys.argv[1])
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(0)
fillers = []
# With backlog 0 the queue holds one connection; a few more make sure it is full. A connect that
# does not complete within 0.5 s shows that the queue is full.
for _ in range(4):
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.setblocking(False)
    c.connect_ex(("127.0.0.1", port))
    fillers.append(c)
    time.sleep(0.1)
print("ready", flush=True)
while True:
    time.sleep(60)
