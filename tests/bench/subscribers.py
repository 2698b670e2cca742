"""Holds N revocation event-stream subscribers open against the appliance (for `make bench`).

usage: subscribers.py URL_PORT CAFILE N
Opens N TLS connections to /v1/revocations/events, reads each one's hello, prints
"ready N" and keeps reading (heartbeats, events) in one thread with a selector until it is
killed. Exits 1 if a subscriber is refused.
"""
import selectors
import socket
import ssl
import sys


def main():
    port, cafile, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    ctx = ssl.create_default_context(cafile=cafile)
    sel = selectors.DefaultSelector()
    for _ in range(n):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30),
                            server_hostname="localhost")
        s.sendall(b"GET /v1/revocations/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = b""
        while b"event: hello" not in head:
            chunk = s.recv(4096)
            if not chunk:
                sys.exit("subscribers: the stream closed before its hello")
            head += chunk
        if not head.startswith(b"HTTP/1.1 200"):
            sys.exit("subscribers: refused: " + head.split(b"\r\n")[0].decode())
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    print("ready %d" % n, flush=True)
    while True:
        for key, _ in sel.select():
            try:
                if not key.fileobj.recv(65536):
                    sel.unregister(key.fileobj)
            except ssl.SSLWantReadError:
                pass


if __name__ == "__main__":
    main()
