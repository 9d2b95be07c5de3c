#!/usr/bin/env python3
"""Benchmark client: the real `openai` SDK (AsyncOpenAI) against the mock provider.

    PYTHON llm_client.py --port PORT --cafile CA.pem realistic --rounds 10
    PYTHON llm_client.py --port PORT --cafile CA.pem long --prompt-mb 40 --calls 2

realistic: ROUNDS rounds of CONCURRENCY concurrent streamed chat completions (model
`gpt-4o-mini-chunks30`: 30 content chunks each, usage in a last chunk). long: CALLS
non-streamed chat completions, one at a time, each with a prompt of PROMPT_MB megabytes.

Direct to the mock (default): name resolution of api.openai.com is redirected inside this
process, as in tests/clients/sdk_client.py, so the URL, SNI and Host stay the real ones.
`--base-url` sends the calls there instead (the LiteLLM proxy, plain HTTP on loopback).
`--otel-endpoint` turns on the OpenTelemetry project's instrumentation of the openai SDK
(opentelemetry-instrumentation-openai-v2) with a batch span processor exporting OTLP/HTTP
to that endpoint; the export thread runs in this process and its flush is inside the timed
region, so its cost is counted.

Prints `timed` when the timed loop starts (the benchmark then samples the observer's CPU), then
one JSON object: calls, wall seconds and CPU seconds
(user+sys of this process, from getrusage) of the timed loop only, and the tokens the SDK
saw in the usage of every call this process made (warm-up included), which is what the
agent must have counted.
"""
import argparse
import asyncio
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients"))
from sdk_client import API_KEY, prepare_environment, redirect_hosts  # noqa: E402

STREAM_MODEL = "gpt-4o-mini-chunks30"
LONG_MODEL = "gpt-4o-mini-chunks30"


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Seen:
    """Tokens the SDK parsed, over every call of this process."""

    def __init__(self):
        self.calls = 0
        self.input = 0
        self.output = 0
        self.chunks = 0

    def usage(self, usage):
        if usage is None:
            raise RuntimeError("llm_client: a call ended without usage")
        self.calls += 1
        self.input += usage.prompt_tokens
        self.output += usage.completion_tokens


async def stream_one(client, seen, expect_chunks):
    s = await client.chat.completions.create(
        model=STREAM_MODEL,
        messages=[{"role": "user", "content": "Say hello in thirty words."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks, usage = 0, None
    async for chunk in s:
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
    if chunks != expect_chunks:
        raise RuntimeError(f"llm_client: {chunks} content chunks, expected {expect_chunks}")
    seen.chunks += chunks
    seen.usage(usage)


async def long_one(client, seen, prompt):
    r = await client.chat.completions.create(
        model=LONG_MODEL, messages=[{"role": "user", "content": prompt}])
    seen.usage(r.usage)


def setup_otel(endpoint):
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "tokentap-bench"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    return provider


async def main_async(a, seen, flush):
    import openai

    kwargs = {"api_key": API_KEY, "max_retries": 0, "timeout": 120}
    if a.base_url:
        kwargs["base_url"] = a.base_url
    client = openai.AsyncOpenAI(**kwargs)
    try:
        if a.workload == "realistic":
            # Warm-up: open CONCURRENCY keep-alive connections and load the SDK's lazy parts.
            await asyncio.gather(*(stream_one(client, seen, 30) for _ in range(a.concurrency)))
            print("timed", flush=True)
            t0, c0 = time.perf_counter(), cpu_seconds()
            for _ in range(a.rounds):
                await asyncio.gather(*(stream_one(client, seen, 30) for _ in range(a.concurrency)))
            flush()
            wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
            return {"calls": a.rounds * a.concurrency, "wall_s": wall, "cpu_s": cpu}
        await long_one(client, seen, "warm up")
        prompt = "a" * (a.prompt_mb * 1_000_000)
        print("timed", flush=True)
        t0, c0 = time.perf_counter(), cpu_seconds()
        for _ in range(a.calls):
            await long_one(client, seen, prompt)
        flush()
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        return {"calls": a.calls, "wall_s": wall, "cpu_s": cpu}
    finally:
        await client.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--base-url", help="send the calls here (a gateway) instead of to the mock")
    p.add_argument("--otel-endpoint", help="OTLP/HTTP traces endpoint: turns on the SDK instrumentation")
    sub = p.add_subparsers(dest="workload", required=True)
    r = sub.add_parser("realistic")
    r.add_argument("--rounds", type=int, default=10)
    r.add_argument("--concurrency", type=int, default=64)
    lc = sub.add_parser("long")
    lc.add_argument("--prompt-mb", type=int, default=4)
    lc.add_argument("--calls", type=int, default=3)
    a = p.parse_args()

    prepare_environment(a.cafile)
    redirect_hosts(a.port)
    flush = lambda: None  # noqa: E731
    if a.otel_endpoint:
        provider = setup_otel(a.otel_endpoint)
        flush = lambda: provider.force_flush(30_000)  # noqa: E731
    seen = Seen()
    result = asyncio.run(main_async(a, seen, flush))
    result["seen"] = vars(seen)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
