#!/usr/bin/env python3
"""An OTLP/HTTP traces sink on loopback for the benchmark's SDK-instrumentation mode.

Accepts POST /v1/traces (protobuf), counts the spans and discards them; GET /count answers
{"spans": N}. Prints {"port": PORT} on stdout, then serves until killed. Runs in its own
process, so its CPU is not charged to the client being measured.
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

SPANS = 0
LOCK = threading.Lock()
EMPTY = ExportTraceServiceResponse().SerializeToString()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        global SPANS
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        req = ExportTraceServiceRequest.FromString(body)
        n = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
        with LOCK:
            SPANS += n
        self._answer(EMPTY, "application/x-protobuf")

    def do_GET(self):
        with LOCK:
            n = SPANS
        self._answer(json.dumps({"spans": n}).encode(), "application/json")

    def _answer(self, body, content_type):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sys.stdout.write(json.dumps({"port": server.server_address[1]}) + "\n")
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
