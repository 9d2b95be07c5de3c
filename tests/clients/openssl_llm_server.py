#!/usr/bin/env python3
"""An OpenAI-shaped chat completions server on Python's ssl module (the system OpenSSL).

Used by the end-to-end test of the server role: with the agent watching, this process terminates
TLS for an LLM call, so its side of the exchange must be reported as gen_ai_server_* metrics, and
the client's side (another process on the same node) as gen_ai_client_* metrics, never both.

Usage: openssl_llm_server.py --cert CERT --key KEY. Prints {"port": N} and serves until killed.
"""
import argparse
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RESPONSE = {
    "id": "chatcmpl-selfhosted-1",
    "object": "chat.completion",
    "created": 1795800000,
    "model": "llama-3.1-8b-instruct",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "pong"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        body = json.dumps(RESPONSE).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    a = p.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
