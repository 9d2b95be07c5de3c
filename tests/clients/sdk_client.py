#!/usr/bin/env python3
"""Real, unmodified LLM SDKs (openai, anthropic, google-genai) against the mock provider.

    PYTHON sdk_client.py --port PORT --cafile CA.pem [--only NAME[,NAME...]] [--list]

Runs with the SDKs from the venv that `cargo xtask setup` builds (target/e2e-venv). The
provider host names stay the real ones (`api.openai.com`, `api.anthropic.com`,
`generativelanguage.googleapis.com`) in the URL, the TLS SNI and the Host header; only name
resolution inside this process is redirected: `socket.getaddrinfo` answers a marker address
(127.0.0.2) for them, and `socket.socket.connect` sends connections for that address to
127.0.0.1:PORT (the sync clients connect through `socket.create_connection`, the async ones
through asyncio's `sock_connect`; both end in `socket.socket.connect`). Every other name fails
to resolve, so nothing here can leave the machine.
The mock's CA is trusted through `SSL_CERT_FILE`, which every SDK's HTTP stack (httpx2)
reads when it builds its SSL context. Retries are off (`max_retries=0`, genai's default), so
each call is exactly one HTTP exchange.

The scenario is chosen in-band by the model name (see tests/src/mock_provider.rs). For each
call the output holds what the SDK itself parsed, in the agent's metric terms:

- provider, operation, api, server_address, request_model, response_model, streaming, async;
- status (HTTP status; 200 for a stream that failed in-band or was cut), error_type (the
  provider's error code, else its type, else the status; `stream_interrupted` for a cut
  stream; null on success);
- tokens: input (including cached: Anthropic input + cache read + cache write), output
  (including reasoning: Gemini candidates + thoughts), cache_read, cache_write, reasoning;
  null where the SDK saw no usage;
- chunks (content-bearing stream events: a non-empty text delta), ttfc_s (call start to the
  first content chunk), duration_s (call start to the end of the call), chunk_gaps_s (between
  consecutive content chunks), all from time.monotonic_ns (CLOCK_MONOTONIC); `timed` is false
  for the warm-up calls (see warm_up_first), whose times include the SDKs' first-use costs.

Prints one JSON document on stdout. Exits 1 (after printing it) when a call did not end as
its scenario says it must, which is a bug in the mock or here, not in the agent.
"""

import argparse
import asyncio
import json
import os
import socket
import sys
import time

HOSTS = ("api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com")
API_KEY = "sk-tokentap-test-not-a-real-key"


# ---------------------------------------------------------------------------------------------
# The process environment: name resolution and trust


# What the provider host names resolve to in this process. Never connected to: every connect
# to it goes to the mock instead (anyio, under the async clients, connects to the resolved
# address with the URL's port, 443, so resolution alone cannot carry the mock's port).
REDIRECT_IP = "127.0.0.2"


def redirect_hosts(port):
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port_, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, (bytes, bytearray)) else host
        if name in HOSTS:
            return real_getaddrinfo(REDIRECT_IP, port_, socket.AF_INET, type, proto, flags)
        if name in (None, "localhost", "127.0.0.1", "::1"):
            return real_getaddrinfo(host, port_, family, type, proto, flags)
        raise socket.gaierror(socket.EAI_NONAME, f"sdk_client: {name!r} is not redirected")

    def target(address):
        if isinstance(address, tuple) and address and address[0] == REDIRECT_IP:
            return ("127.0.0.1", port)
        return address

    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = lambda self, address: real_connect(self, target(address))
    socket.socket.connect_ex = lambda self, address: real_connect_ex(self, target(address))


def prepare_environment(cafile):
    for var in (
        "OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID",
        "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN",
        "GOOGLE_GEMINI_BASE_URL", "GOOGLE_VERTEX_BASE_URL", "GOOGLE_GENAI_USE_VERTEXAI",
        "GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_CLOUD_PROJECT",
        "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
        "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    ):
        os.environ.pop(var, None)
    os.environ["NO_PROXY"] = "*"
    os.environ["SSL_CERT_FILE"] = cafile


def libssl_mapped():
    paths = set()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and "libssl" in parts[5]:
                paths.add(parts[5])
    return sorted(paths)


# ---------------------------------------------------------------------------------------------
# Ground truth of one call


class Call:
    def __init__(self, scenario, provider, operation, api, model, streaming, is_async):
        self.scenario = scenario
        self.provider = provider
        self.operation = operation
        self.api = api
        self.server_address = {
            "openai": "api.openai.com",
            "anthropic": "api.anthropic.com",
            "gcp.gemini": "generativelanguage.googleapis.com",
        }[provider]
        self.request_model = model
        self.response_model = None
        self.streaming = streaming
        self.is_async = is_async
        self.status = None
        self.error_type = None
        self.error = None
        self.tokens = None
        self.chunk_times = []
        self.t0 = None
        self.t_end = None
        self.timed = True

    def start(self):
        self.t0 = time.monotonic_ns()

    def chunk(self):
        self.chunk_times.append(time.monotonic_ns())

    def end(self):
        self.t_end = time.monotonic_ns()

    def set_tokens(self, input, output, cache_read=None, cache_write=None, reasoning=None):
        self.tokens = {
            "input": input,
            "output": output,
            "cache_read": cache_read,
            "cache_write": cache_write,
            "reasoning": reasoning,
        }

    def to_json(self):
        ns = 1e-9
        times = self.chunk_times
        return {
            "scenario": self.scenario,
            "timed": self.timed,
            "provider": self.provider,
            "operation": self.operation,
            "api": self.api,
            "server_address": self.server_address,
            "request_model": self.request_model,
            "response_model": self.response_model,
            "streaming": self.streaming,
            "async": self.is_async,
            "status": self.status,
            "error_type": self.error_type,
            "error": self.error,
            "tokens": self.tokens,
            "chunks": len(times),
            "ttfc_s": (times[0] - self.t0) * ns if times else None,
            "duration_s": (self.t_end - self.t0) * ns,
            "chunk_gaps_s": [(b - a) * ns for a, b in zip(times, times[1:])],
            "t_start_mono_ns": self.t0,
            "t_end_mono_ns": self.t_end,
        }


def record_error(call, exc):
    """Turns what the SDK raised into (status, error_type), as the agent must see it."""
    import anthropic
    import httpx2
    import openai
    from google.genai import errors as genai_errors

    call.error = f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:300]}"
    if isinstance(exc, (openai.APIConnectionError, anthropic.APIConnectionError, httpx2.TransportError)):
        # The answer had started (a 200 head) and the connection was cut.
        call.status = 200
        call.error_type = "stream_interrupted"
    elif isinstance(exc, openai.APIStatusError):
        call.status = exc.status_code
        call.error_type = exc.code or exc.type or str(exc.status_code)
    elif isinstance(exc, openai.APIError):
        # `data: {"error": ...}` inside a 200 stream.
        call.status = 200
        call.error_type = exc.code or exc.type or "200"
    elif isinstance(exc, anthropic.APIStatusError):
        # Also `event: error` inside a 200 stream (status_code is then 200).
        call.status = exc.status_code
        call.error_type = exc.type or str(exc.status_code)
    elif isinstance(exc, genai_errors.APIError):
        # A mid-stream `{"error": ...}` event carries its own code; the HTTP status was 200.
        response = getattr(exc, "response", None)
        call.status = getattr(response, "status_code", None) or exc.code
        call.error_type = exc.status or str(exc.code)
    else:
        raise exc


# ---------------------------------------------------------------------------------------------
# Usage in the metrics' terms


def openai_chat_usage(call, usage):
    if usage is None:
        return
    details = usage.prompt_tokens_details
    out_details = getattr(usage, "completion_tokens_details", None)
    call.set_tokens(
        usage.prompt_tokens,
        usage.completion_tokens,
        cache_read=(details.cached_tokens or 0) if details else None,
        reasoning=(out_details.reasoning_tokens or 0) if out_details else None,
    )


def openai_responses_usage(call, usage):
    if usage is None:
        return
    call.set_tokens(
        usage.input_tokens,
        usage.output_tokens,
        cache_read=usage.input_tokens_details.cached_tokens,
        reasoning=usage.output_tokens_details.reasoning_tokens,
    )


def anthropic_usage(call, usage, output_known=True):
    read = usage.cache_read_input_tokens or 0
    write = usage.cache_creation_input_tokens or 0
    call.set_tokens(
        usage.input_tokens + read + write,
        usage.output_tokens if output_known else None,
        cache_read=read,
        cache_write=write,
    )


def gemini_usage(call, meta):
    if meta is None:
        return
    thoughts = meta.thoughts_token_count or 0
    call.set_tokens(
        meta.prompt_token_count,
        (meta.candidates_token_count or 0) + thoughts,
        cache_read=meta.cached_content_token_count or 0,
        reasoning=thoughts,
    )


# ---------------------------------------------------------------------------------------------
# One call per provider and shape


MESSAGES = [
    {"role": "system", "content": "You are a terse assistant used by the tokentap tests."},
    {"role": "user", "content": "Say hello to the eBPF agent that is watching this call."},
]
ANTHROPIC_MESSAGES = [
    {"role": "user", "content": "Say hello to the eBPF agent that is watching this call, please."},
]
ANTHROPIC_SYSTEM = "You are a terse assistant used by the tokentap tests."
GEMINI_PROMPT = "Say hello to the eBPF agent that is watching this Gemini call."


def openai_chat(client, call, stream, include_usage=True):
    kwargs = {"model": call.request_model, "messages": MESSAGES}
    call.start()
    if not stream:
        r = client.chat.completions.create(**kwargs)
        call.end()
        call.status = 200
        call.response_model = r.model
        openai_chat_usage(call, r.usage)
        return
    if include_usage:
        kwargs["stream_options"] = {"include_usage": True}
    s = client.chat.completions.create(stream=True, **kwargs)
    call.status = s.response.status_code
    for chunk in s:
        call.response_model = chunk.model
        if chunk.choices and chunk.choices[0].delta.content:
            call.chunk()
        if chunk.usage is not None:
            openai_chat_usage(call, chunk.usage)
    call.end()


async def openai_chat_async(client, call, stream=True):
    call.start()
    if not stream:
        r = await client.chat.completions.create(model=call.request_model, messages=MESSAGES)
        call.end()
        call.status = 200
        call.response_model = r.model
        openai_chat_usage(call, r.usage)
        return
    s = await client.chat.completions.create(
        model=call.request_model,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    call.status = s.response.status_code
    async for chunk in s:
        call.response_model = chunk.model
        if chunk.choices and chunk.choices[0].delta.content:
            call.chunk()
        if chunk.usage is not None:
            openai_chat_usage(call, chunk.usage)
    call.end()


def openai_completions(client, call):
    call.start()
    r = client.completions.create(model=call.request_model, prompt="Say hello to tokentap.")
    call.end()
    call.status = 200
    call.response_model = r.model
    u = r.usage
    call.set_tokens(u.prompt_tokens, u.completion_tokens)


def openai_embeddings(client, call):
    call.start()
    r = client.embeddings.create(
        model=call.request_model,
        input=["tokentap watches TLS plaintext", "and counts the tokens of every call"],
    )
    call.end()
    call.status = 200
    call.response_model = r.model
    assert len(r.data) == 2 and len(r.data[0].embedding) > 0
    call.set_tokens(r.usage.prompt_tokens, None)


def openai_responses(client, call, stream):
    kwargs = {
        "model": call.request_model,
        "instructions": "You are a terse assistant used by the tokentap tests.",
        "input": "Say hello to the eBPF agent that is watching this Responses call.",
    }
    call.start()
    if not stream:
        r = client.responses.create(**kwargs)
        call.end()
        call.status = 200
        call.response_model = r.model
        openai_responses_usage(call, r.usage)
        return
    s = client.responses.create(stream=True, **kwargs)
    call.status = s.response.status_code
    for event in s:
        if event.type == "response.created":
            call.response_model = event.response.model
        elif event.type == "response.output_text.delta":
            if event.delta:
                call.chunk()
        elif event.type == "response.completed":
            call.response_model = event.response.model
            openai_responses_usage(call, event.response.usage)
        elif event.type == "response.failed":
            call.response_model = event.response.model
            call.error_type = event.response.error.code
            call.error = f"response.failed: {event.response.error.message[:200]}"
            openai_responses_usage(call, event.response.usage)
        elif event.type == "error":
            call.error_type = event.code or "error"
            call.error = f"error event: {event.message[:200]}"
    call.end()


def anthropic_messages(client, call, stream):
    kwargs = {
        "model": call.request_model,
        "max_tokens": 256,
        "system": ANTHROPIC_SYSTEM,
        "messages": ANTHROPIC_MESSAGES,
    }
    call.start()
    if not stream:
        r = client.messages.create(**kwargs)
        call.end()
        call.status = 200
        call.response_model = r.model
        anthropic_usage(call, r.usage)
        return
    # The SDK's stream helper, as most applications use it.
    with client.messages.stream(**kwargs) as s:
        call.status = s.response.status_code
        complete = False
        try:
            for event in s:
                if event.type == "message_start":
                    call.response_model = event.message.model
                    anthropic_usage(call, event.message.usage, output_known=False)
                elif event.type == "content_block_delta" and getattr(event.delta, "text", ""):
                    call.chunk()
                elif event.type == "message_stop":
                    complete = True
        finally:
            call.end()
        if complete:
            anthropic_usage(call, s.get_final_message().usage)


async def anthropic_messages_async(client, call, stream=True):
    kwargs = {
        "model": call.request_model,
        "max_tokens": 256,
        "system": ANTHROPIC_SYSTEM,
        "messages": ANTHROPIC_MESSAGES,
    }
    call.start()
    if not stream:
        r = await client.messages.create(**kwargs)
        call.end()
        call.status = 200
        call.response_model = r.model
        anthropic_usage(call, r.usage)
        return
    s = await client.messages.create(stream=True, **kwargs)
    call.status = s.response.status_code
    usage = None
    async for event in s:
        if event.type == "message_start":
            call.response_model = event.message.model
            usage = event.message.usage
            anthropic_usage(call, usage, output_known=False)
        elif event.type == "content_block_delta" and getattr(event.delta, "text", ""):
            call.chunk()
        elif event.type == "message_delta":
            # Cumulative: the last one is the answer's output count.
            usage.output_tokens = event.usage.output_tokens
        elif event.type == "message_stop":
            anthropic_usage(call, usage)
    call.end()


def gemini_generate(client, call, stream):
    call.start()
    if not stream:
        r = client.models.generate_content(model=call.request_model, contents=GEMINI_PROMPT)
        call.end()
        call.status = 200
        call.response_model = r.model_version
        gemini_usage(call, r.usage_metadata)
        return
    meta = None
    try:
        for r in client.models.generate_content_stream(model=call.request_model, contents=GEMINI_PROMPT):
            call.status = 200
            call.response_model = r.model_version
            if r.text:
                call.chunk()
            if r.usage_metadata is not None:
                meta = r.usage_metadata
            if r.candidates and r.candidates[0].finish_reason is not None:
                gemini_usage(call, meta)
    finally:
        call.end()


async def gemini_generate_async(client, call, stream=True):
    call.start()
    if not stream:
        r = await client.aio.models.generate_content(model=call.request_model, contents=GEMINI_PROMPT)
        call.end()
        call.status = 200
        call.response_model = r.model_version
        gemini_usage(call, r.usage_metadata)
        return
    meta = None
    async for r in await client.aio.models.generate_content_stream(
        model=call.request_model, contents=GEMINI_PROMPT
    ):
        call.status = 200
        call.response_model = r.model_version
        if r.text:
            call.chunk()
        if r.usage_metadata is not None:
            meta = r.usage_metadata
        if r.candidates and r.candidates[0].finish_reason is not None:
            gemini_usage(call, meta)
    call.end()


# ---------------------------------------------------------------------------------------------
# Scenarios
#
# Every scenario's model name is unique, so that each metric label set holds the calls of one
# scenario and its histogram sums can be compared with the client's own measurements.
# Streams wait 60-150 ms before the first content chunk while their head and preamble arrive
# at once, so time to first *content* chunk is well apart from time to first byte.

# (name, provider, operation, api, model, streaming, async, expected error_type, runner)
SCENARIOS = []


def scenario(name, provider, operation, api, model, streaming, expect=None, is_async=False, repeat=1):
    def register(fn):
        SCENARIOS.append({
            "name": name, "provider": provider, "operation": operation, "api": api,
            "model": model, "streaming": streaming, "expect": expect, "async": is_async,
            "repeat": repeat, "run": fn, "timed": True,
        })
        return fn
    return register


def warm_up_first():
    """Puts one untimed call of every (SDK path, outcome) kind in front of the timed ones.

    The SDKs build parts of themselves on first use (lazy imports, pydantic models: the first
    Responses call spends ~60 ms parsing after the last byte arrived, genai's first request
    ~25 ms before the first byte leaves). The agent cannot see that time, so the first call of
    each kind is a warm-up with its own model name (`…-warmup`): its counts and tokens are
    ground truth like any other call, its timing is not compared.
    """
    seen, warmups = set(), []
    for sc in SCENARIOS:
        kind = (sc["api"], sc["streaming"], sc["async"], sc["expect"] is None)
        if kind in seen:
            continue
        seen.add(kind)
        # The same scenario without its waits; `warmup` joins the base model name.
        tokens = [t for t in sc["model"].split("-") if not t.startswith(("delay", "gap"))]
        model = "-".join(tokens + ["warmup"])
        warmups.append(dict(sc, name=sc["name"] + ".warmup", model=model, repeat=1, timed=False))
    SCENARIOS[:0] = warmups


OAI_CHAT = ("openai", "chat", "openai.chat_completions")
OAI_RESP = ("openai", "chat", "openai.responses")
ANT = ("anthropic", "chat", "anthropic.messages")
GEM = ("gcp.gemini", "generate_content", "gcp.gemini.generate_content")

scenario("openai.chat", *OAI_CHAT, "gpt-4o-mini-delay40", False)(
    lambda c, call: openai_chat(c.openai, call, stream=False))
scenario("openai.chat.keepalive", *OAI_CHAT, "gpt-4o-mini-ka-chunks2-delay20", False, repeat=3)(
    lambda c, call: openai_chat(c.openai, call, stream=False))
scenario("openai.chat.stream", *OAI_CHAT, "gpt-4o-mini-chunks6-delay150-gap15", True)(
    lambda c, call: openai_chat(c.openai, call, stream=True))
scenario("openai.chat.stream.no_usage", *OAI_CHAT, "gpt-4o-mini-nousage-chunks4-delay100-gap10", True)(
    lambda c, call: openai_chat(c.openai, call, stream=True, include_usage=False))
scenario("openai.embeddings", "openai", "embeddings", "openai.embeddings", "text-embedding-3-small", False)(
    lambda c, call: openai_embeddings(c.openai, call))
scenario("openai.completions", "openai", "text_completion", "openai.completions",
         "gpt-3.5-turbo-instruct-chunks7", False)(
    lambda c, call: openai_completions(c.openai, call))
scenario("openai.responses", *OAI_RESP, "o3-mini-cached32-reason8-delay30", False)(
    lambda c, call: openai_responses(c.openai, call, stream=False))
scenario("openai.responses.stream", *OAI_RESP, "gpt-4.1-chunks5-delay120-gap15", True)(
    lambda c, call: openai_responses(c.openai, call, stream=True))
scenario("openai.responses.failed", *OAI_RESP, "gpt-4.1-midstream-error-after2-delay60-gap10", True,
         expect="server_error")(
    lambda c, call: openai_responses(c.openai, call, stream=True))
scenario("openai.responses.error_event", *OAI_RESP, "gpt-4.1-errevent-after1-delay60-gap10", True,
         expect="server_error")(
    lambda c, call: openai_responses(c.openai, call, stream=True))
scenario("openai.chat.429", *OAI_CHAT, "gpt-4o-mini-err429", False, expect="rate_limit_exceeded")(
    lambda c, call: openai_chat(c.openai, call, stream=False))
# A client error (the caller asked for a model it cannot use): not the provider failing, so
# the availability SLO leaves it out (deploy/prometheus/rules.yaml).
scenario("openai.chat.404", *OAI_CHAT, "gpt-4o-mini-err404", False, expect="model_not_found")(
    lambda c, call: openai_chat(c.openai, call, stream=False))
scenario("openai.chat.stream.500", *OAI_CHAT, "gpt-4o-mini-err500-delay30", True, expect="server_error")(
    lambda c, call: openai_chat(c.openai, call, stream=True))
scenario("openai.chat.stream.midstream_error", *OAI_CHAT, "gpt-4o-mini-midstream-error-after2-delay60-gap10",
         True, expect="server_error")(
    lambda c, call: openai_chat(c.openai, call, stream=True))
scenario("openai.chat.stream.disconnect", *OAI_CHAT, "gpt-4o-mini-disconnect-after3-delay60-gap10", True,
         expect="stream_interrupted")(
    lambda c, call: openai_chat(c.openai, call, stream=True))
scenario("openai.chat.stream.async", *OAI_CHAT, "gpt-4o-chunks5-delay130-gap12", True, is_async=True)(
    lambda c, call: openai_chat_async(c.openai_async, call))

scenario("anthropic.messages", *ANT, "claude-sonnet-4-5-delay40", False)(
    lambda c, call: anthropic_messages(c.anthropic, call, stream=False))
scenario("anthropic.messages.stream", *ANT, "claude-sonnet-4-5-chunks6-delay150-gap15-cached100-cachewrite20",
         True)(
    lambda c, call: anthropic_messages(c.anthropic, call, stream=True))
scenario("anthropic.messages.429", *ANT, "claude-haiku-4-5-err429", False, expect="rate_limit_error")(
    lambda c, call: anthropic_messages(c.anthropic, call, stream=False))
scenario("anthropic.messages.500", *ANT, "claude-haiku-4-5-err500", False, expect="api_error")(
    lambda c, call: anthropic_messages(c.anthropic, call, stream=False))
scenario("anthropic.messages.stream.529", *ANT, "claude-haiku-4-5-err529-delay20", True,
         expect="overloaded_error")(
    lambda c, call: anthropic_messages(c.anthropic, call, stream=True))
scenario("anthropic.messages.stream.midstream_error", *ANT,
         "claude-sonnet-4-5-midstream-error-after2-delay60-gap10", True, expect="overloaded_error")(
    lambda c, call: anthropic_messages(c.anthropic, call, stream=True))
scenario("anthropic.messages.stream.disconnect", *ANT, "claude-sonnet-4-5-disconnect-after2-delay60-gap10",
         True, expect="stream_interrupted")(
    lambda c, call: anthropic_messages(c.anthropic, call, stream=True))
scenario("anthropic.messages.stream.async", *ANT, "claude-haiku-4-5-chunks5-delay120-gap12", True,
         is_async=True)(
    lambda c, call: anthropic_messages_async(c.anthropic_async, call))

scenario("gemini.generate", *GEM, "gemini-2.0-flash-delay40", False)(
    lambda c, call: gemini_generate(c.genai, call, stream=False))
scenario("gemini.generate.stream", *GEM, "gemini-2.5-flash-chunks5-delay140-gap15-reason12-cached8", True)(
    lambda c, call: gemini_generate(c.genai, call, stream=True))
scenario("gemini.generate.429", *GEM, "gemini-2.0-flash-err429", False, expect="RESOURCE_EXHAUSTED")(
    lambda c, call: gemini_generate(c.genai, call, stream=False))
scenario("gemini.generate.stream.503", *GEM, "gemini-2.0-flash-err503", True, expect="UNAVAILABLE")(
    lambda c, call: gemini_generate(c.genai, call, stream=True))
scenario("gemini.generate.stream.midstream_error", *GEM, "gemini-2.0-flash-midstream-error-after2-delay60-gap10",
         True, expect="INTERNAL")(
    lambda c, call: gemini_generate(c.genai, call, stream=True))
scenario("gemini.generate.stream.async", *GEM, "gemini-2.0-flash-lite-chunks4-delay110-gap12", True,
         is_async=True)(
    lambda c, call: gemini_generate_async(c.genai, call))

warm_up_first()

# Eight streams at once over the async clients (eight connections, one event loop, OpenSSL on
# memory BIOs).
CONCURRENT = (
    [(OAI_CHAT, f"gpt-4o-mini-conc{i}-chunks{4 + i}-delay{100 + 10 * i}-gap10", openai_chat_async,
      "openai_async") for i in range(3)]
    + [(ANT, f"claude-haiku-4-5-conc{i}-chunks{4 + i}-delay{100 + 10 * i}-gap10", anthropic_messages_async,
        "anthropic_async") for i in range(3, 6)]
    + [(GEM, f"gemini-2.0-flash-conc{i}-chunks{4 + i}-delay{100 + 10 * i}-gap10", gemini_generate_async,
        "genai") for i in range(6, 8)]
)


class Clients:
    def __init__(self):
        import anthropic
        import openai
        from google import genai
        from google.genai import types

        self.openai = openai.OpenAI(api_key=API_KEY, max_retries=0, timeout=30)
        self.openai_async = openai.AsyncOpenAI(api_key=API_KEY, max_retries=0, timeout=30)
        self.anthropic = anthropic.Anthropic(api_key=API_KEY, max_retries=0, timeout=30)
        self.anthropic_async = anthropic.AsyncAnthropic(api_key=API_KEY, max_retries=0, timeout=30)
        self.genai = genai.Client(api_key=API_KEY, http_options=types.HttpOptions(timeout=30_000))
        # Resources are imported lazily on first use: do it now, outside the timed calls.
        for resource in (
            self.openai.chat.completions, self.openai.completions, self.openai.embeddings,
            self.openai.responses, self.openai_async.chat.completions,
            self.anthropic.messages, self.anthropic_async.messages,
            self.genai.models, self.genai.aio.models,
        ):
            assert resource is not None

    async def aclose(self):
        await self.openai_async.close()
        await self.anthropic_async.close()
        await self.genai.aio.aclose()

    def close(self):
        self.openai.close()
        self.anthropic.close()
        self.genai.close()


def run_one(clients, sc, loop):
    provider, operation, api = sc["provider"], sc["operation"], sc["api"]
    call = Call(sc["name"], provider, operation, api, sc["model"], sc["streaming"], sc["async"])
    call.timed = sc["timed"]
    try:
        result = sc["run"](clients, call)
        if asyncio.iscoroutine(result):
            loop.run_until_complete(result)
    except Exception as exc:  # noqa: BLE001 - every SDK error is ground truth
        if call.t_end is None:
            call.end()
        record_error(call, exc)
    return call


async def gather_calls(clients, specs):
    """Runs (Call, coroutine function, client attribute, stream) specs at once."""
    results = await asyncio.gather(
        *(fn(getattr(clients, attr), call, stream) for call, fn, attr, stream in specs),
        return_exceptions=True,
    )
    for (call, *_), result in zip(specs, results):
        if isinstance(result, BaseException):
            if call.t_end is None:
                call.end()
            record_error(call, result)
    return [call for call, *_ in specs]


async def run_concurrent(clients):
    # First the connections: eight overlapping, untimed, non-streamed calls leave each async
    # client's pool with as many idle keep-alive connections as it will need, so the timed
    # streams below do not include TCP and TLS handshakes (eight at once, under the GIL),
    # which happen before the request's first byte and are invisible to the agent.
    warmups = []
    for i, ((provider, operation, api), model, fn, attr) in enumerate(CONCURRENT):
        base = "-".join(t for t in model.split("-") if not t.startswith(("delay", "gap", "chunks")))
        call = Call(f"concurrent.{i}.warmup", provider, operation, api, base + "-warmup-delay80", False, True)
        call.timed = False
        warmups.append((call, fn, attr, False))
    calls = await gather_calls(clients, warmups)
    timed = []
    for i, ((provider, operation, api), model, fn, attr) in enumerate(CONCURRENT):
        timed.append((Call(f"concurrent.{i}", provider, operation, api, model, True, True), fn, attr, True))
    return calls + await gather_calls(clients, timed)


def check(call, expect):
    """What the scenario demands of the SDK's view; a failure is a mock or client bug."""
    problems = []
    if call.error_type != expect:
        problems.append(f"error_type {call.error_type!r}, expected {expect!r} ({call.error})")
    if expect is None:
        if call.status != 200:
            problems.append(f"status {call.status}")
        if not call.response_model:
            problems.append("no response model")
        if call.streaming and not call.chunk_times:
            problems.append("no content chunk")
    return [f"{call.scenario}: {p}" for p in problems]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int)
    ap.add_argument("--cafile")
    ap.add_argument("--only", default="", help="comma-separated scenario names (and/or 'concurrent')")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        for sc in SCENARIOS:
            print(sc["name"], sc["model"], "" if sc["timed"] else "(untimed)")
        print("concurrent", len(CONCURRENT), "streams")
        return 0
    if args.port is None or args.cafile is None:
        ap.error("--port and --cafile are required")
    only = {n for n in args.only.split(",") if n}

    t_begin = time.monotonic()
    prepare_environment(args.cafile)
    redirect_hosts(args.port)
    import ssl

    import anthropic
    import google.genai
    import httpx2
    import openai

    clients = Clients()
    t_ready = time.monotonic()
    loop = asyncio.new_event_loop()
    calls, problems = [], []
    for sc in SCENARIOS:
        if only and sc["name"] not in only:
            continue
        for _ in range(sc["repeat"]):
            call = run_one(clients, sc, loop)
            calls.append(call)
            problems += check(call, sc["expect"])
    if not only or "concurrent" in only:
        for call in loop.run_until_complete(run_concurrent(clients)):
            calls.append(call)
            problems += check(call, None)
    loop.run_until_complete(clients.aclose())
    loop.close()
    clients.close()
    t_done = time.monotonic()

    report = {
        "pid": os.getpid(),
        "executable": os.path.realpath(sys.executable),
        "comm": open("/proc/self/comm").read().strip(),
        "python": sys.version.split()[0],
        "openssl": ssl.OPENSSL_VERSION,
        "libssl_mapped": libssl_mapped(),
        "sdk_versions": {
            "openai": openai.__version__,
            "anthropic": anthropic.__version__,
            "google-genai": google.genai.__version__,
            "httpx2": httpx2.__version__,
        },
        "setup_s": t_ready - t_begin,
        "calls_s": t_done - t_ready,
        "calls": [c.to_json() for c in calls],
        "problems": problems,
    }
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    if problems:
        for p in problems:
            print(f"sdk_client: {p}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
