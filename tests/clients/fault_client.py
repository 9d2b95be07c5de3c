#!/usr/bin/env python3
"""Clients for the fault-injection end-to-end tests (tests/tests/faults.rs), standard library
only (the interpreter's `ssl`: the system OpenSSL, or whichever libssl LD_LIBRARY_PATH
selects).

    python3 fault_client.py MODE --port PORT --cafile CA.pem [--model M ...] [--n N]

Requests go to the mock provider (tests/src/mock_provider.rs) with `Host` and SNI
`api.openai.com` (OpenAI chat completions; a stream asks for usage). Progress lines go to
stdout, flushed, one JSON object each, so the test can act at the right moment:
`{"event": "head", "model"}` when a response head arrived, `{"event": "chunk", "model", "n"}`
per stream line read, `{"event": "done", "model", "status", "complete"}` at a response's end,
`{"event": "ready"}` when waiting for a line on stdin.

Modes:
- `calls`: one keep-alive connection, the `--model`s one after the other (a stream when the
  model has a `chunks` option). With `--reconnect`, a new connection for each.
- `hold`: the first `--model` on a connection, then `{"event": "ready"}` and wait for a line on
  stdin, then the other models on the same connection, then the last model with `-again`
  appended on a new connection.
- `exit-open`: the `--model`s on one connection, then os._exit(0): the connection is never
  shut down and its `SSL*` never freed.
- `reuse`: `--n` times: connect, one call with model `<--model>-r<i>`, close (SSL_free). With
  `--abandon`, every other connection is closed after the first stream line, without reading
  the rest: the next connection (often at the same `SSL*` address) must not inherit it.
"""

import argparse
import json
import os
import socket
import sys

HOST = "api.openai.com"
API_KEY = "sk-tokentap-test-not-a-real-key"


def say(**event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Client:
    def __init__(self, args):
        import ssl

        self.args = args
        self.ctx = ssl.create_default_context(cafile=args.cafile)
        self.sock = None
        self.buf = b""

    def connect(self):
        raw = socket.create_connection(("127.0.0.1", self.args.port), timeout=30)
        self.sock = self.ctx.wrap_socket(raw, server_hostname=HOST)
        self.buf = b""

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = None

    def read_more(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    def read_line(self):
        while b"\r\n" not in self.buf:
            self.read_more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_exact(self, n):
        while len(self.buf) < n:
            self.read_more()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def call(self, model, stop_after_lines=None):
        """One chat completion; returns True when the response was read to its end."""
        if self.sock is None:
            self.connect()
        stream = "-chunks" in model
        body = {"model": model, "messages": [{"role": "user", "content": "Say hello to the eBPF agent."}]}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        data = json.dumps(body).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
            f"Accept-Encoding: identity\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode()
        self.sock.sendall(head + data)
        status = int(self.read_line().split(b" ")[1])
        headers = {}
        while True:
            line = self.read_line()
            if not line:
                break
            k, v = line.decode().split(":", 1)
            headers[k.strip().lower()] = v.strip()
        say(event="head", model=model, status=status)
        lines = 0
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.read_line().split(b";")[0], 16)
                if size == 0:
                    while self.read_line():
                        pass
                    break
                chunk = self.read_exact(size)
                self.read_exact(2)
                for _ in chunk.split(b"\n\n")[:-1] or [chunk]:
                    lines += 1
                    say(event="chunk", model=model, n=lines)
                if stop_after_lines is not None and lines >= stop_after_lines:
                    say(event="done", model=model, status=status, complete=False)
                    return False
        else:
            self.read_exact(int(headers.get("content-length", "0")))
        say(event="done", model=model, status=status, complete=True)
        return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=("calls", "hold", "exit-open", "reuse"))
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cafile", required=True)
    ap.add_argument("--model", action="append", default=[])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--reconnect", action="store_true")
    ap.add_argument("--abandon", action="store_true")
    ap.add_argument("--settle-ms", type=int, default=0,
                    help="wait this long after loading ssl (so the agent can hook a libssl just mapped)")
    args = ap.parse_args()
    say(event="pid", pid=os.getpid())
    c = Client(args)
    if args.settle_ms:
        import time

        time.sleep(args.settle_ms / 1000)
    if args.mode == "calls":
        for m in args.model:
            c.call(m)
            if args.reconnect:
                c.close()
    elif args.mode == "hold":
        c.call(args.model[0])
        say(event="ready")
        sys.stdin.readline()
        for m in args.model[1:]:
            c.call(m)
        c.close()
        c.call(args.model[-1] + "-again")
    elif args.mode == "exit-open":
        for m in args.model:
            c.call(m)
        os._exit(0)
    elif args.mode == "reuse":
        for i in range(args.n):
            model = f"{args.model[0]}-r{i}"
            abandon = args.abandon and i % 2 == 0
            c.call(model, stop_after_lines=1 if abandon else None)
            c.close()
    c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
