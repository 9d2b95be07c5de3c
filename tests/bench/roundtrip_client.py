#!/usr/bin/env python3
"""Benchmark client: small request/response round trips over one TLS connection (system OpenSSL),
or with `--plain` over plain TCP (plain_server.py http, no TLS).

Prints `timed` when the timed loop starts, then one JSON object: round trips, wall seconds, CPU
seconds (user+sys of this process) for the timed loop only, and the bytes moved. A bulk mode downloads large bodies instead, to measure the
agent's CPU per captured byte.
"""
import argparse
import json
import resource
import socket
import ssl
import time


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def read_exact(sock, n):
    chunks = []
    while n > 0:
        b = sock.recv(min(n, 1 << 20))
        if not b:
            raise RuntimeError("server closed the connection")
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def read_response(sock):
    """Reads one HTTP response with Content-Length; returns (head_len, body_len)."""
    head = b""
    while b"\r\n\r\n" not in head:
        b = sock.recv(4096)
        if not b:
            raise RuntimeError("server closed the connection")
        head += b
    head, rest = head.split(b"\r\n\r\n", 1)
    length = next(int(l.split(b":", 1)[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
    if len(rest) < length:
        read_exact(sock, length - len(rest))
    return len(head) + 4, length


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", help="the server's CA (TLS; not with --plain)")
    p.add_argument("--plain", action="store_true", help="plain HTTP over TCP, no TLS")
    p.add_argument("--round-trips", type=int, default=20000)
    p.add_argument("--bulk-mb", type=int, default=0, help="download this many MiB in 8 MiB bodies instead")
    a = p.parse_args()
    sock = socket.create_connection(("127.0.0.1", a.port))
    if not a.plain:
        ctx = ssl.create_default_context(cafile=a.cafile)
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if a.bulk_mb:
        req = b"GET /bytes/8388608 HTTP/1.1\r\nHost: localhost\r\n\r\n"
        n = max(1, a.bulk_mb // 8)
        print("timed", flush=True)
        t0, c0 = time.perf_counter(), cpu_seconds()
        moved = 0
        for _ in range(n):
            sock.sendall(req)
            h, body = read_response(sock)
            moved += h + body + len(req)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        print(json.dumps({"mode": "bulk", "requests": n, "wall_s": wall, "cpu_s": cpu, "bytes": moved}))
        return
    req = b"GET /bytes/64 HTTP/1.1\r\nHost: localhost\r\n\r\n"
    # Learn the exact response size once, then read exactly that much per round trip.
    sock.sendall(req)
    h, body = read_response(sock)
    size = h + body
    print("timed", flush=True)
    t0, c0 = time.perf_counter(), cpu_seconds()
    for _ in range(a.round_trips):
        sock.sendall(req)
        read_exact(sock, size)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    sock.close()
    print(json.dumps({"mode": "roundtrip", "round_trips": a.round_trips, "wall_s": wall, "cpu_s": cpu,
                      "bytes": a.round_trips * (size + len(req))}))


if __name__ == "__main__":
    main()
