#!/usr/bin/env python3
"""Many TLS connections at once, for the connection-state bounds test (tests/tests/pressure.rs).

    python3 idle_client.py --port PORT --cafile CA.pem --idle N --hanging M

Standard library only (asyncio over the interpreter's `ssl`: OpenSSL on memory BIOs, the
system libssl the agent hooks). Raises its open-file limit to the hard limit, then:

1. opens N + M TLS connections to the mock provider (SNI and Host `api.openai.com`), with no
   traffic yet (a handshake alone is invisible to the agent);
2. on each of the N idle ones, one complete non-streamed chat completion, then nothing;
   on each of the M hanging ones, a streamed request whose answer never finishes (the mock
   waits a minute before its first content chunk), read up to the response head;
3. prints `{"event": "ready", "idle": N, "hanging": M, "seconds": ...}` and holds every
   connection open until a line arrives on stdin (or stdin closes), then exits without
   closing them one by one.

Progress lines are JSON on stdout; failures print one line on stderr and exit 1.
"""

import argparse
import asyncio
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


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = None
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, length


async def main_async(args):
    import ssl

    ctx = ssl.create_default_context(cafile=args.cafile)
    gate = asyncio.Semaphore(args.parallel)
    conns = []
    started = time.monotonic()

    async def connect():
        async with gate:
            r, w = await asyncio.open_connection("127.0.0.1", args.port, ssl=ctx, server_hostname=HOST)
            conns.append((r, w))
            if len(conns) % 1000 == 0:
                say(event="connected", n=len(conns))

    await asyncio.gather(*(connect() for _ in range(args.idle + args.hanging)))
    say(event="connected", n=len(conns), seconds=time.monotonic() - started)
    t_requests = time.monotonic()

    async def idle(r, w):
        async with gate:
            w.write(request(args.model_prefix + "-idle-chunks1", False))
            await w.drain()
            status, length = await read_head(r)
            await r.readexactly(length or 0)
            if status != 200:
                raise RuntimeError(f"idle call answered {status}")

    async def hanging(r, w):
        async with gate:
            w.write(request(args.model_prefix + "-hang-chunks5-delay60000", True))
            await w.drain()
            status, _ = await read_head(r)
            if status != 200:
                raise RuntimeError(f"hanging call answered {status}")

    jobs = [idle(r, w) for r, w in conns[: args.idle]] + [hanging(r, w) for r, w in conns[args.idle:]]
    await asyncio.gather(*jobs)
    say(event="ready", idle=args.idle, hanging=args.hanging, seconds=time.monotonic() - t_requests)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cafile", required=True)
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--hanging", type=int, default=1000)
    ap.add_argument("--parallel", type=int, default=256)
    ap.add_argument("--model-prefix", default="gpt-4o-mini")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.idle + args.hanging + 256
    if hard != resource.RLIM_INFINITY and hard < want:
        print(f"idle_client: needs {want} open files, the hard limit is {hard}", file=sys.stderr)
        return 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    try:
        asyncio.run(main_async(args))
    except Exception as e:  # noqa: BLE001 - one line, exit 1
        print(f"idle_client: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
