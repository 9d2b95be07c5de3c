#!/usr/bin/env python3
"""One short-lived client process of the soak test (`cargo xtask soak`, tests/tests/soak.rs).

    PYTHON soak_client.py --port PORT --cafile CA.pem --out CALLS.jsonl --calls N --seed S
                          [--sdk] [--hard-exit]

Makes N LLM API calls against the mock provider (tests/src/mock_provider.rs), one after the
other, then exits. The calls are drawn (with `--seed`) from a mix of streamed and JSON chat,
embeddings, Anthropic Messages, Gemini, HTTP errors (429, 500, 503, 529), in-band stream
errors and cut connections. Without `--sdk` the requests are written with the standard
library (`http.client` over the interpreter's `ssl`: the system OpenSSL, which the agent
hooks); with `--sdk` the real openai and anthropic SDKs make them (slower to start).

Every request carries `User-Agent: tokentap-soak/<pid>/<seq>/<nonce>`, which the mock records,
and a request model of the form `<base>-soak-<options>`, which the agent records: the soak
checker pairs the client's call, the mock's record of it (by User-Agent) and the agent's
exchange record (by pid, model and time: a process makes its calls one after the other).

Appends one JSON line per call to `--out` as soon as the call ends (a process that dies
mid-run still leaves its finished calls): pid, seq, ua, provider, api, request_model,
streaming, sdk, status (as the client saw it; null when no response arrived), outcome
(`ok`, `http_error`, `cut`: the body ended early, `failed`: no response), tokens (SDK calls
only: the usage the SDK parsed), t_start_unix_ns, t_end_unix_ns.

`--hard-exit` ends the process with os._exit, so its TLS connections are never shut down or
freed: the agent must release their state when the process exits.
"""

import argparse
import json
import os
import random
import socket
import sys
import time

API_KEY = "sk-tokentap-test-not-a-real-key"
OPENAI = "api.openai.com"
ANTHROPIC = "api.anthropic.com"
GEMINI = "generativelanguage.googleapis.com"

CHAT = [
    {"role": "system", "content": "You are a terse assistant used by the tokentap soak test."},
    {"role": "user", "content": "Say hello to the eBPF agent that is watching this call."},
]

# (name, provider, api, base model, options, streaming, weight)
RAW_SCENARIOS = [
    ("openai.chat.stream", OPENAI, "openai.chat_completions", "gpt-4o-mini", "chunks{c}-gap{g}", True, 6),
    ("openai.chat", OPENAI, "openai.chat_completions", "gpt-4o", "cached{k}", False, 5),
    ("openai.embeddings", OPENAI, "openai.embeddings", "text-embedding-3-small", "", False, 3),
    ("openai.responses.stream", OPENAI, "openai.responses", "gpt-4.1", "chunks{c}", True, 2),
    ("anthropic.stream", ANTHROPIC, "anthropic.messages", "claude-sonnet-4-5", "chunks{c}-gap{g}-cached{k}", True, 5),
    ("anthropic", ANTHROPIC, "anthropic.messages", "claude-haiku-4-5", "", False, 3),
    ("gemini", GEMINI, "gcp.gemini.generate_content", "gemini-2.0-flash", "", False, 3),
    ("gemini.stream", GEMINI, "gcp.gemini.generate_content", "gemini-2.5-flash", "chunks{c}-reason{r}", True, 3),
    ("openai.429", OPENAI, "openai.chat_completions", "gpt-4o-mini", "err429", False, 2),
    ("openai.stream.500", OPENAI, "openai.chat_completions", "gpt-4o-mini", "err500", True, 1),
    ("anthropic.stream.529", ANTHROPIC, "anthropic.messages", "claude-haiku-4-5", "err529", True, 1),
    ("gemini.503", GEMINI, "gcp.gemini.generate_content", "gemini-2.0-flash", "err503", False, 1),
    ("openai.stream.midstream", OPENAI, "openai.chat_completions", "gpt-4o-mini", "midstream-error-after2", True, 1),
    ("anthropic.stream.disconnect", ANTHROPIC, "anthropic.messages", "claude-sonnet-4-5", "disconnect-after2-gap{g}", True, 1),
    ("openai.disconnect", OPENAI, "openai.chat_completions", "gpt-4o", "disconnect", False, 1),
]

SDK_SCENARIOS = [
    ("sdk.openai.chat.stream", OPENAI, "openai.chat_completions", "gpt-4o-mini", "chunks{c}", True, 3),
    ("sdk.openai.chat", OPENAI, "openai.chat_completions", "gpt-4o", "", False, 2),
    ("sdk.openai.embeddings", OPENAI, "openai.embeddings", "text-embedding-3-small", "", False, 1),
    ("sdk.anthropic.stream", ANTHROPIC, "anthropic.messages", "claude-sonnet-4-5", "chunks{c}-cachewrite{k}", True, 3),
]


def model_name(rng, base, options):
    """`<base>-soak-<options>`: the `soak` token marks the soak's calls; few distinct names, so
    the agent's label sets are all made in the first minute and its memory can settle."""
    opts = options.format(c=rng.choice([1, 3, 7, 12]), g=rng.choice([0, 2]), k=rng.choice([0, 32]),
                          r=rng.choice([0, 4]))
    parts = [base, "soak"] + [p for p in opts.split("-") if p and p not in ("cached0", "cachewrite0", "gap0", "reason0")]
    return "-".join(parts)


class Recorder:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)

    def write(self, entry):
        self.f.write(json.dumps(entry) + "\n")
        self.f.flush()


# ---------------------------------------------------------------------------------------------
# Standard-library client


class Conn:
    """A keep-alive HTTPS connection to the mock, with the provider's host name in SNI and Host."""

    def __init__(self, host, port, ctx):
        import http.client

        self.host = host
        self.port = port
        self.ctx = ctx
        self.http = None
        self.http_client = http.client

    def connect(self):
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        conn = self.http_client.HTTPConnection(self.host, self.port, timeout=30)
        conn.sock = self.ctx.wrap_socket(raw, server_hostname=self.host)
        self.http = conn

    def request(self, method, path, body, headers):
        if self.http is None:
            self.connect()
        self.http.request(method, path, body=body, headers=headers)
        return self.http.getresponse()

    def drop(self):
        if self.http is not None:
            try:
                self.http.close()
            except OSError:
                pass
        self.http = None


def raw_request(provider, api, model, stream, accept_gzip):
    """(path, headers, body) for one call."""
    headers = {"Host": provider, "Content-Type": "application/json"}
    if accept_gzip:
        headers["Accept-Encoding"] = "gzip"
    else:
        headers["Accept-Encoding"] = "identity"
    if provider == OPENAI:
        headers["Authorization"] = f"Bearer {API_KEY}"
        if api == "openai.embeddings":
            body = {"model": model, "input": ["tokentap watches TLS plaintext", "and counts tokens"]}
            path = "/v1/embeddings"
        elif api == "openai.responses":
            body = {"model": model, "input": "Say hello to the eBPF agent.", "stream": stream}
            path = "/v1/responses"
        else:
            body = {"model": model, "messages": CHAT}
            if stream:
                body["stream"] = True
                body["stream_options"] = {"include_usage": True}
            path = "/v1/chat/completions"
    elif provider == ANTHROPIC:
        headers["x-api-key"] = API_KEY
        headers["anthropic-version"] = "2023-06-01"
        body = {"model": model, "max_tokens": 256, "system": CHAT[0]["content"],
                "messages": [CHAT[1]], "stream": stream}
        path = "/v1/messages"
    else:
        headers["x-goog-api-key"] = API_KEY
        body = {"contents": [{"role": "user", "parts": [{"text": CHAT[1]["content"]}]}]}
        path = f"/v1beta/models/{model}:" + ("streamGenerateContent?alt=sse" if stream else "generateContent")
    data = json.dumps(body).encode()
    headers["Content-Length"] = str(len(data))
    return path, headers, data


def run_raw(args, rng, rec, nonce):
    import http.client
    import ssl

    ctx = ssl.create_default_context(cafile=args.cafile)
    conns = {}
    weights = [s[6] for s in RAW_SCENARIOS]
    for seq in range(args.calls):
        name, provider, api, base, options, stream, _ = rng.choices(RAW_SCENARIOS, weights)[0]
        model = model_name(rng, base, options)
        ua = f"tokentap-soak/{os.getpid()}/{seq}/{nonce}"
        path, headers, body = raw_request(provider, api, model, stream, accept_gzip=not stream or rng.random() < 0.3)
        headers["User-Agent"] = ua
        conn = conns.setdefault(provider, Conn(provider, args.port, ctx))
        entry = {"pid": os.getpid(), "seq": seq, "ua": ua, "scenario": name, "provider": provider, "api": api,
                 "request_model": model, "streaming": stream, "sdk": False, "status": None,
                 "outcome": "failed", "tokens": None, "t_start_unix_ns": time.time_ns()}
        try:
            resp = conn.request("POST", path, body, headers)
            entry["status"] = resp.status
            try:
                resp.read()
                entry["outcome"] = "ok" if resp.status < 400 else "http_error"
            except (http.client.IncompleteRead, OSError, ssl.SSLError):
                entry["outcome"] = "cut"
                conn.drop()
            if resp.will_close:
                conn.drop()
        except (OSError, http.client.HTTPException, ssl.SSLError) as e:
            entry["error"] = f"{type(e).__name__}: {e}"
            conn.drop()
        entry["t_end_unix_ns"] = time.time_ns()
        rec.write(entry)
    return conns


# ---------------------------------------------------------------------------------------------
# Real SDKs (through sdk_client.py's helpers)


def run_sdk(args, rng, rec, nonce):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import sdk_client

    sdk_client.prepare_environment(args.cafile)
    sdk_client.redirect_hosts(args.port)
    import anthropic
    import openai

    oai = openai.OpenAI(api_key=API_KEY, max_retries=0, timeout=30)
    ant = anthropic.Anthropic(api_key=API_KEY, max_retries=0, timeout=30)
    weights = [s[6] for s in SDK_SCENARIOS]
    for seq in range(args.calls):
        name, provider, api, base, options, stream, _ = rng.choices(SDK_SCENARIOS, weights)[0]
        model = model_name(rng, base, options)
        ua = f"tokentap-soak/{os.getpid()}/{seq}/{nonce}"
        operation = "embeddings" if api == "openai.embeddings" else "chat"
        call = sdk_client.Call(name, "openai" if provider == OPENAI else "anthropic", operation, api, model,
                               stream, False)
        t0 = time.time_ns()
        try:
            if provider == OPENAI:
                client = oai.with_options(default_headers={"User-Agent": ua})
                if api == "openai.embeddings":
                    sdk_client.openai_embeddings(client, call)
                else:
                    sdk_client.openai_chat(client, call, stream)
            else:
                client = ant.with_options(default_headers={"User-Agent": ua})
                sdk_client.anthropic_messages(client, call, stream)
            outcome = "ok"
        except Exception as e:  # noqa: BLE001 - recorded as the call's outcome
            call.error = f"{type(e).__name__}: {e}"
            outcome = "failed"
        entry = {"pid": os.getpid(), "seq": seq, "ua": ua, "scenario": name, "provider": provider, "api": api,
                 "request_model": model, "streaming": stream, "sdk": True, "status": call.status,
                 "outcome": outcome, "tokens": call.tokens, "t_start_unix_ns": t0,
                 "t_end_unix_ns": time.time_ns()}
        if call.error:
            entry["error"] = call.error
        rec.write(entry)
    return (oai, ant)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cafile", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sdk", action="store_true")
    ap.add_argument("--hard-exit", action="store_true")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    nonce = os.urandom(4).hex()
    rec = Recorder(args.out)
    keep = run_sdk(args, rng, rec, nonce) if args.sdk else run_raw(args, rng, rec, nonce)
    if args.hard_exit:
        # Connections still open, never shut down or freed.
        os._exit(0)
    del keep
    return 0


if __name__ == "__main__":
    sys.exit(main())
