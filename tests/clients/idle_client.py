#!/usr/bin/env python3
"""Many TLS connections at once, for the connection-state bounds test (tests/tests/pressure.rs).

    python3 idle_client.py --port PORT --cafile CA.pem --idle N --hanging M

Standard library only (blocking sockets and `ssl` in `--parallel` threads: the system libssl
the agent hooks; asyncio's SSL transport would hold a 256 KiB buffer per connection). Raises
its open-file limit, then:

1. opens N + M TLS connections to the mock provider (SNI and Host `api.openai.com`), with no
   traffic yet (a handshake alone is invisible to the agent);
2. on each of the N idle ones, one complete non-streamed chat completion, then nothing;
   on each of the M hanging ones, a streamed request whose answer never finishes (the mock
   waits a minute before its first content chunk), read up to the response head;
3. prints `{"event": "ready", "idle": N, "hanging": M}` and holds every
   connection open until a line arrives on stdin (or stdin closes), then exits without
   closing them one by one.

Progress lines are JSON on stdout; failures print one line on stderr and exit 1.
"""

import argparse
import json
import os
import resource
import sys
import time

HOST = "api.openai.com"
API_KEY = "sk-tokentap-test-not-a-real-key"


def say(**event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def request(model, stream):
    body = {"model": model, "messages": [{"role": "user", "content": "Hello, idle agent."}]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    data = json.dumps(body).encode()
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
        f"Accept-Encoding: identity\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data


def read_head(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(4096)
        if not data:
            raise EOFError("connection closed before the response head")
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    length = None
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, length, rest


def run(args):
    import socket
    import ssl
    import threading

    ctx = ssl.create_default_context(cafile=args.cafile)
    total = args.idle + args.hanging
    socks = [None] * total
    errors = []
    started = time.monotonic()

    def connect(part):
        try:
            for i in range(part, total, args.parallel):
                raw = socket.create_connection(("127.0.0.1", args.port), timeout=120)
                socks[i] = ctx.wrap_socket(raw, server_hostname=HOST)
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(f"connect: {type(e).__name__}: {e}")

    def call(part):
        try:
            for i in range(part, total, args.parallel):
                s = socks[i]
                if i < args.idle:
                    s.sendall(request(args.model_prefix + "-idle-chunks1", False))
                    status, length, rest = read_head(s)
                    while len(rest) < (length or 0):
                        rest += s.recv(65536)
                else:
                    s.sendall(request(args.model_prefix + "-hang-chunks5-delay60000", True))
                    status, _, _ = read_head(s)
                if status != 200:
                    raise RuntimeError(f"connection {i} answered {status}")
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(f"call: {type(e).__name__}: {e}")

    for phase in (connect, call):
        threads = [threading.Thread(target=phase, args=(p,)) for p in range(args.parallel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(errors[0])
        say(event=phase.__name__, n=total, seconds=time.monotonic() - started)
        started = time.monotonic()
    say(event="ready", idle=args.idle, hanging=args.hanging)
    sys.stdin.readline()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cafile", required=True)
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--hanging", type=int, default=1000)
    ap.add_argument("--parallel", type=int, default=8, help="threads")
    ap.add_argument("--model-prefix", default="gpt-4o-mini")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.idle + args.hanging + 256
    if hard != resource.RLIM_INFINITY and hard < want:
        print(f"idle_client: needs {want} open files, the hard limit is {hard}", file=sys.stderr)
        return 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    try:
        run(args)
    except Exception as e:  # noqa: BLE001 - one line, exit 1
        print(f"idle_client: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
