#!/usr/bin/env python3
"""Benchmark server on plain TCP loopback (no TLS): prints `{"port": PORT}`, then serves until killed.

    python3 plain_server.py http   # HTTP/1.1 keep-alive: every request gets a 64-byte body
    python3 plain_server.py echo   # not HTTP: echoes every byte back

One thread per connection. The http kind answers each request head (up to the blank line) with
the same response, whatever its path: the plaintext round-trip client asks for `GET /bytes/64`.
"""
import json
import socket
import sys
import threading

BODY = bytes(range(64))
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % len(BODY)) + BODY


def serve_http(conn):
    pending = b""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        pending += data
        while b"\r\n\r\n" in pending:
            _, pending = pending.split(b"\r\n\r\n", 1)
            conn.sendall(RESPONSE)


def serve_echo(conn):
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def main():
    kinds = {"http": serve_http, "echo": serve_echo}
    if len(sys.argv) != 2 or sys.argv[1] not in kinds:
        sys.exit("usage: plain_server.py http|echo")
    serve = kinds[sys.argv[1]]
    listener = socket.create_server(("127.0.0.1", 0))
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)

    def handle(conn):
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                serve(conn)
            except OSError:
                pass

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
