"""Writes the HTTP/2 golden byte streams of agent/src/http/h2/fixtures.

Both ends are the `h2` package (the HTTP/2 stack httpx uses), talking to each other in
memory: every `data_to_send()` of the client is one record written by the observed process
(`W`), every one of the server one record it read (`R`). The expected exchanges are what the
two ends themselves sent and received. Run with a Python that has h2 installed:

    python3 tests/clients/h2_fixtures.py agent/src/http/h2/fixtures
"""

import gzip
import json
import sys
from pathlib import Path

import h2.config
import h2.connection
import h2.events


class Pair:
    def __init__(self):
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.server = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        # A server sends its SETTINGS first (RFC 9113 §3.4).
        self.server.initiate_connection()
        self.records = []
        self.requests = {}
        self.responses = {}

    def client_flush(self):
        data = self.client.data_to_send()
        if data:
            self.records.append(("W", data))
            for ev in self.server.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    self.requests[ev.stream_id] = {"headers": ev.headers, "body": b""}
                elif isinstance(ev, h2.events.DataReceived):
                    self.requests[ev.stream_id]["body"] += ev.data
                    self.server.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)

    def server_flush(self):
        data = self.server.data_to_send()
        if data:
            self.records.append(("R", data))
            for ev in self.client.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    self.responses[ev.stream_id] = {"headers": ev.headers, "body": b""}
                elif isinstance(ev, h2.events.DataReceived):
                    self.responses[ev.stream_id]["body"] += ev.data
                    self.client.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)

    def request(self, path, body, extra=()):
        sid = self.client.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":authority", "api.openai.com"),
            (":scheme", "https"),
            (":path", path),
            ("authorization", "Bearer sk-test-secret"),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            *extra,
        ]
        self.client.send_headers(sid, headers)
        self.client.send_data(sid, body, end_stream=True)
        return sid

    def write(self, path):
        lines = [f"{d} {data.hex()}" for d, data in self.records]
        path.write_text("\n".join(lines) + "\n")


def chat(model, stream, n=0):
    return json.dumps(
        {"model": model, "stream": stream, "messages": [{"role": "user", "content": f"hi {n}"}]}
    ).encode()


def completion(model, prompt, completion_tokens):
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                      "total_tokens": prompt + completion_tokens},
        }
    ).encode()


def sse_events(model, prompt, completion_tokens):
    chunks = []
    for word in ["Hel", "lo"]:
        chunks.append({"id": "c", "object": "chat.completion.chunk", "model": model,
                       "choices": [{"index": 0, "delta": {"content": word}}]})
    chunks.append({"id": "c", "object": "chat.completion.chunk", "model": model, "choices": [],
                   "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                             "total_tokens": prompt + completion_tokens}})
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]


def multiplexed(out):
    """Three concurrent requests: JSON, SSE and gzip JSON, responses interleaved."""
    p = Pair()
    p.client.initiate_connection()
    p.client_flush()
    p.server_flush()
    p.client_flush()  # SETTINGS ACK
    a = p.request("/v1/chat/completions", chat("gpt-4o", False, 1))
    p.client_flush()
    b = p.request("/v1/chat/completions", chat("gpt-4o-mini", True, 2))
    c = p.request("/v1/chat/completions", chat("gpt-4.1", False, 3))
    p.client_flush()
    p.server_flush()
    p.server.send_headers(b, [(":status", "200"), ("content-type", "text/event-stream")])
    events = sse_events("gpt-4o-mini", 12, 5)
    p.server.send_data(b, events[0])
    p.server_flush()
    p.server.send_headers(a, [(":status", "200"), ("content-type", "application/json")])
    p.server.send_data(a, completion("gpt-4o", 10, 7), end_stream=True)
    p.server.send_data(b, events[1])
    p.server_flush()
    zipped = gzip.compress(completion("gpt-4.1", 20, 9), mtime=0)
    p.server.send_headers(c, [(":status", "200"), ("content-type", "application/json"),
                              ("content-encoding", "gzip")])
    p.server.send_data(c, zipped[:20], pad_length=4)
    p.server_flush()
    p.server.send_data(c, zipped[20:], end_stream=True)
    for e in events[2:]:
        p.server.send_data(b, e)
    p.server.end_stream(b)
    p.server_flush()
    p.write(out / "multiplexed.h2")


def many(out):
    """40 requests in turn on one connection, with distinct headers: the HPACK dynamic
    tables fill and evict."""
    p = Pair()
    p.client.initiate_connection()
    p.client_flush()
    p.server_flush()
    for n in range(40):
        sid = p.request("/v1/chat/completions", chat("gpt-4o", False, n),
                        extra=[("x-request-id", f"req-{n:04d}-" + "x" * (n % 7) * 20)])
        p.client_flush()
        p.server_flush()
        p.server.send_headers(sid, [(":status", "200"), ("content-type", "application/json"),
                                    ("x-trace", f"trace-{n}-" + "y" * (n % 5) * 30)])
        p.server.send_data(sid, completion("gpt-4o", 10 + n, n), end_stream=True)
        p.server_flush()
        p.client_flush()
    expected = []
    for sid in sorted(p.requests):
        expected.append({
            "path": dict(p.requests[sid]["headers"])[b":path"].decode(),
            "request_id": dict(p.requests[sid]["headers"])[b"x-request-id"].decode(),
            "request_body": p.requests[sid]["body"].decode(),
            "trace": dict(p.responses[sid]["headers"])[b"x-trace"].decode(),
            "response_body": p.responses[sid]["body"].decode(),
        })
    (out / "many.expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    p.write(out / "many.h2")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    multiplexed(out)
    many(out)
