#!/usr/bin/env python3
"""The real openai SDK over HTTP/2 against the HTTP/2 mock provider.

    PYTHON h2_sdk_client.py --port PORT --cafile CA.pem

One `openai.OpenAI` client with `http_client=httpx2.Client(http2=True)` (needs the `h2`
package, pinned in requirements.txt): a warm-up call opens the one HTTP/2 connection, then a
streamed call, then JSON and streamed calls at once from threads, multiplexed as concurrent
streams on that connection. Name resolution, trust and the ground truth of each call are
those of sdk_client.py (imported from beside this file); the report has the same shape.
"""

import argparse
import json
import os
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sdk_client  # noqa: E402
from sdk_client import OAI_CHAT, Call, check, libssl_mapped, openai_chat  # noqa: E402

# (scenario, model, stream). Each call has its own model, so each label set is one call.
WARM_UP = ("h2.chat.warmup", "gpt-4o-mini-h2warm-chunks3", False)
SEQUENTIAL = [("h2.chat.stream", "gpt-4o-mini-h2seq-chunks4-delay60-gap10", True)]
CONCURRENT = [
    ("h2.chat.concurrent.json1", "gpt-4o-h2json1-chunks3-delay120", False),
    ("h2.chat.concurrent.json2", "gpt-4o-h2json2-chunks7-delay40", False),
    ("h2.chat.concurrent.stream1", "gpt-4o-mini-h2stream1-chunks5-delay80-gap20", True),
    ("h2.chat.concurrent.stream2", "gpt-4o-mini-h2stream2-chunks6-delay30-gap25", True),
    ("h2.chat.concurrent.stream3", "gpt-4o-mini-h2stream3-chunks4-delay100-gap15", True),
]


def run(client, scenario, model, stream, timed=True):
    call = Call(scenario, *OAI_CHAT, model, stream, False)
    call.timed = timed
    openai_chat(client, call, stream=stream)
    return call


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cafile", required=True)
    args = ap.parse_args()
    t_begin = time.monotonic()
    sdk_client.prepare_environment(args.cafile)
    sdk_client.redirect_hosts(args.port)
    import h2
    import httpx2
    import openai

    http = httpx2.Client(http2=True, timeout=30)
    client = openai.OpenAI(api_key=sdk_client.API_KEY, max_retries=0, http_client=http)
    assert client.chat.completions is not None
    t_ready = time.monotonic()
    calls = [run(client, *WARM_UP, timed=False)]
    calls += [run(client, *c) for c in SEQUENTIAL]
    with ThreadPoolExecutor(len(CONCURRENT)) as pool:
        calls += list(pool.map(lambda c: run(client, *c), CONCURRENT))
    client.close()
    t_done = time.monotonic()
    problems = [p for call in calls for p in check(call, None)]
    report = {
        "pid": os.getpid(),
        "executable": os.path.realpath(sys.executable),
        "comm": open("/proc/self/comm").read().strip(),
        "python": sys.version.split()[0],
        "openssl": ssl.OPENSSL_VERSION,
        "libssl_mapped": libssl_mapped(),
        "sdk_versions": {
            "openai": openai.__version__,
            "httpx2": httpx2.__version__,
            "h2": h2.__version__,
        },
        "setup_s": t_ready - t_begin,
        "calls_s": t_done - t_ready,
        "calls": [c.to_json() for c in calls],
        "problems": problems,
    }
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    for p in problems:
        print(f"h2_sdk_client: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
