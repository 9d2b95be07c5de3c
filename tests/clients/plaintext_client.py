"""The real openai SDK, and an Ollama-shaped NDJSON exchange, against the plaintext mock.

Talks plain HTTP to http://127.0.0.1:PORT (as clients of in-cluster model servers do): the
openai SDK with base_url http://127.0.0.1:PORT/v1 (chat, non-streamed and streamed with usage,
several calls on one keep-alive connection), and Ollama's native POST /api/chat, streamed as
NDJSON and not, with the standard library's http.client; then two non-streamed Ollama calls on
raw sockets through the vectored syscalls: sendmsg/recvmsg, and os.writev/os.readv with the
request and the answer split over several buffers; and one more over plain write/read on a
descriptor number whose last read was not HTTP (a file's, replaced by the socket with dup2, which
closes nothing the agent sees): its request write must make it followed again.

Prints one JSON document on stdout: this process's pid and, per call, the model asked for,
whether it streamed, the HTTP status and the token counts the client itself parsed.
"""

import argparse
import http.client
import json
import os
import sys

API_KEY = "sk-tokentap-test-not-a-real-key"
MESSAGES = [{"role": "user", "content": "Say hello from a plaintext model server, please."}]


def openai_calls(port, calls):
    import openai

    client = openai.OpenAI(
        api_key=API_KEY, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=30
    )
    for model in ("gpt-4o-mini", "gpt-4o-mini-chunks3", "gpt-4o-mini-chunks7"):
        r = client.chat.completions.create(model=model, messages=MESSAGES)
        calls.append(call(model, False, 200, r.usage.prompt_tokens, r.usage.completion_tokens))
    for model in ("gpt-4o-mini-chunks4", "gpt-4o-mini-chunks9"):
        s = client.chat.completions.create(
            model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        status = s.response.status_code
        usage = None
        for chunk in s:
            if chunk.usage is not None:
                usage = chunk.usage
        calls.append(call(model, True, status, usage.prompt_tokens, usage.completion_tokens))
    client.close()


def ollama_calls(port, calls):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for model, stream in (("llama3.2-chunks5", None), ("llama3.2-chunks2", False)):
        body = {"model": model, "messages": MESSAGES}
        if stream is not None:
            body["stream"] = stream
        conn.request("POST", "/api/chat", body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        raw = r.read().decode()
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        last = lines[-1]
        assert last["done"] is True, last
        calls.append(call(model, stream is not False, r.status,
                          last["prompt_eval_count"], last["eval_count"]))
    conn.close()


def vectored_calls(port, calls):
    import socket

    for model, use_msg in (("llama3.2-chunks6", True), ("llama3.2-chunks8", False)):
        body = json.dumps({"model": model, "messages": MESSAGES, "stream": False}).encode()
        head = (
            f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        # os.readv bypasses the socket object's timeout: it needs a blocking descriptor.
        sock.setblocking(True)
        raw = b""
        if use_msg:
            sent = sock.sendmsg([head, body])
            assert sent == len(head) + len(body), sent
            while True:
                data, _, _, _ = sock.recvmsg(65536)
                if not data:
                    break
                raw += data
        else:
            sent = os.writev(sock.fileno(), [head[:10], head[10:], body])
            assert sent == len(head) + len(body), sent
            while True:
                small, large = bytearray(7), bytearray(65536)
                n = os.readv(sock.fileno(), [small, large])
                if n == 0:
                    break
                raw += (bytes(small) + bytes(large))[:n]
        sock.close()
        status_line, _, rest = raw.partition(b"\r\n")
        answer = json.loads(rest.partition(b"\r\n\r\n")[2])
        calls.append(call(model, False, int(status_line.split()[1]),
                          answer["prompt_eval_count"], answer["eval_count"]))


def stale_fd_call(port, calls):
    import socket

    model = "llama3.2-chunks4"
    body = json.dumps({"model": model, "messages": MESSAGES, "stream": False}).encode()
    head = (
        f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    fd = os.open("/proc/self/stat", os.O_RDONLY)
    assert not os.read(fd, 64).startswith(b"HTTP")  # this fd's last read: not HTTP
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setblocking(True)
    os.dup2(sock.fileno(), fd)
    sock.close()
    request = head + body
    while request:
        request = request[os.write(fd, request):]
    raw = b""
    while True:
        data = os.read(fd, 65536)
        if not data:
            break
        raw += data
    os.close(fd)
    status_line, _, rest = raw.partition(b"\r\n")
    answer = json.loads(rest.partition(b"\r\n\r\n")[2])
    calls.append(call(model, False, int(status_line.split()[1]),
                      answer["prompt_eval_count"], answer["eval_count"]))


def call(model, streaming, status, input_tokens, output_tokens):
    return {"model": model, "streaming": streaming, "status": status,
            "input": input_tokens, "output": output_tokens}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    for var in ("OPENAI_BASE_URL", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        os.environ.pop(var, None)
    os.environ["NO_PROXY"] = "*"
    calls = []
    openai_calls(args.port, calls)
    ollama_calls(args.port, calls)
    vectored_calls(args.port, calls)
    stale_fd_call(args.port, calls)
    json.dump({"pid": os.getpid(), "calls": calls}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
