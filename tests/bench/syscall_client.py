#!/usr/bin/env python3
"""Benchmark clients that do not speak HTTP, for what syscall tracepoints cost everyone else.

    python3 syscall_client.py dd --blocks N [--bs 512]
        `dd if=/dev/zero of=/dev/null`: N reads and N writes of BS bytes, in C, on files;
        the cheapest read/write calls there are, so the largest relative cost of a probe on them.
        Its CPU is dd's (this process's children's user+sys).
    python3 syscall_client.py echo --port PORT --round-trips N
        Binary messages of 64 bytes (not HTTP) echoed by plain_server.py over TCP loopback.

Prints `timed` when the timed part starts, then one JSON object: calls, wall seconds, CPU
seconds, and the bytes written (the agent must capture none of them).
"""
import argparse
import json
import resource
import socket
import subprocess
import time


def cpu_seconds(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def run_dd(a):
    print("timed", flush=True)
    t0, c0 = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
    subprocess.run(["dd", "if=/dev/zero", "of=/dev/null", f"bs={a.bs}", f"count={a.blocks}", "status=none"],
                   check=True)
    wall, cpu = time.perf_counter() - t0, cpu_seconds(resource.RUSAGE_CHILDREN) - c0
    return {"calls": a.blocks, "wall_s": wall, "cpu_s": cpu, "bytes": a.blocks * a.bs}


def read_exact(sock, n):
    while n > 0:
        b = sock.recv(n)
        if not b:
            raise RuntimeError("the echo server closed the connection")
        n -= len(b)


def run_echo(a):
    msg = bytes(range(64))  # starts with 0x00: nothing like an HTTP method
    sock = socket.create_connection(("127.0.0.1", a.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(msg)
    read_exact(sock, len(msg))
    print("timed", flush=True)
    t0, c0 = time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF)
    for _ in range(a.round_trips):
        sock.sendall(msg)
        read_exact(sock, len(msg))
    wall, cpu = time.perf_counter() - t0, cpu_seconds(resource.RUSAGE_SELF) - c0
    sock.close()
    return {"calls": a.round_trips, "wall_s": wall, "cpu_s": cpu, "bytes": (a.round_trips + 1) * len(msg)}


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="kind", required=True)
    d = sub.add_parser("dd")
    d.add_argument("--blocks", type=int, required=True)
    d.add_argument("--bs", type=int, default=512)
    e = sub.add_parser("echo")
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--round-trips", type=int, required=True)
    a = p.parse_args()
    print(json.dumps(run_dd(a) if a.kind == "dd" else run_echo(a)))


if __name__ == "__main__":
    main()
