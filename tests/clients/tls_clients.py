#!/usr/bin/env python3
"""TLS test clients for the tokentap end-to-end tests.

Standard library only: every mode talks TLS through the interpreter's own `ssl` module, i.e. the
system OpenSSL (libssl.so), which is what the agent's uprobes hook.

Usage: tls_clients.py MODE --port P [--host H] [--cafile F] [mode options]

Modes: keepalive, asyncio, threads, large, late-start (see tests/clients/README.md).

Each run prints exactly one JSON object on stdout:
    {"mode": ..., "pid": ..., "connections": [{"id", "requests", "response_bytes", "thread_id"}, ...], ...}
Every request target carries the connection's marker as `m=<id>` in its query string. On any
failure the script prints one line to stderr and exits with status 1.

Nothing that loads libssl (ssl, http.client, asyncio, hashlib, ...) is imported at module level:
the `late-start` mode needs to control exactly when libssl gets mapped, and the other modes keep
the same discipline.
"""

import json
import os
import sys
import time

MODES = ("keepalive", "asyncio", "threads", "large", "late-start")


class ClientError(Exception):
    pass


def parse_args(argv):
    import argparse

    parser = argparse.ArgumentParser(description="TLS clients for the tokentap end-to-end tests")
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--host", default="localhost",
                        help="TLS server name for SNI and certificate verification (default: localhost)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cafile", default=None, help="CA certificate (PEM) to trust")
    parser.add_argument("--threads", type=int, default=8, help="threads mode: number of threads")
    parser.add_argument("--body-mb", type=float, default=40.0, help="large mode: upload size in MiB")
    parser.add_argument("--delay-ms", type=float, default=100.0,
                        help="late-start mode: sleep between loading ssl and the request")
    return parser.parse_args(argv)


def make_context(args):
    import ssl

    return ssl.create_default_context(cafile=args.cafile)


def new_connection(args, timeout):
    import http.client

    return http.client.HTTPSConnection(args.host, args.port, context=make_context(args), timeout=timeout)


def connection_entry(marker, requests, response_bytes):
    import threading

    return {
        "id": marker,
        "requests": requests,
        "response_bytes": response_bytes,
        "thread_id": threading.get_native_id(),
    }


def do_request(conn, method, path, body=None, expect_len=None, content_type=None):
    """One request/response on an http.client connection; returns the response body."""
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise ClientError(f"{method} {path}: status {resp.status}")
    if expect_len is not None and len(data) != expect_len:
        raise ClientError(f"{method} {path}: got {len(data)} body bytes, expected {expect_len}")
    return data


def check_echo(data, method, path, body_len):
    """Checks the server's JSON description of a request."""
    try:
        echo = json.loads(data)
    except ValueError as e:
        raise ClientError(f"{method} {path}: response is not JSON: {e}") from None
    want = {"method": method, "path": path, "body_len": body_len}
    if echo != want:
        raise ClientError(f"{method} {path}: server saw {echo}, expected {want}")


def jsonish_body(n, tag):
    """A JSON document of exactly n bytes (n >= 64)."""
    prefix = '{"marker":"%s","data":"' % tag
    suffix = '"}'
    fill = n - len(prefix) - len(suffix)
    if fill < 0:
        raise ClientError(f"body of {n} bytes is too small")
    data = "".join(chr(0x61 + (i * 7 + i // 26) % 26) for i in range(fill))
    return (prefix + data + suffix).encode("ascii")


def pattern_body(n, tag):
    """n printable bytes starting with the tag, varying along the body."""
    out = bytearray(tag.encode("ascii") + b":")
    i = 0
    while len(out) < n:
        out += b"%06d;" % i
        i += 1
    return bytes(out[:n])


# --------------------------------------------------------------------------------------------
# Modes


def mode_keepalive(args):
    marker = "ka"
    conn = new_connection(args, timeout=30)
    total = 0
    try:
        path = f"/bytes/1000?seed=1&m={marker}"
        total += len(do_request(conn, "GET", path, expect_len=1000))

        path = f"/echo?m={marker}"
        body = jsonish_body(5000, marker)
        data = do_request(conn, "POST", path, body=body, content_type="application/json")
        check_echo(data, "POST", path, len(body))
        total += len(data)

        path = f"/bytes/70000?seed=2&m={marker}"
        total += len(do_request(conn, "GET", path, expect_len=70000))
    finally:
        conn.close()
    return {"connections": [connection_entry(marker, 3, total)]}


def mode_asyncio(args):
    import asyncio

    marker = "aio"
    requests = [(f"/bytes/3000?seed=4&m={marker}", 3000), (f"/bytes/50000?seed=5&m={marker}", 50000)]

    async def run():
        ctx = make_context(args)
        reader, writer = await asyncio.open_connection(args.host, args.port, ssl=ctx,
                                                       server_hostname=args.host)
        total = 0
        try:
            for path, want in requests:
                writer.write((f"GET {path} HTTP/1.1\r\n"
                              f"Host: {args.host}:{args.port}\r\n"
                              "User-Agent: tokentap-tls-clients\r\n"
                              "Accept: */*\r\n"
                              "\r\n").encode("ascii"))
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("iso-8859-1").split("\r\n")
                status = lines[0].split(" ", 2)
                if len(status) < 2 or status[1] != "200":
                    raise ClientError(f"GET {path}: bad status line {lines[0]!r}")
                length = None
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                if length is None:
                    raise ClientError(f"GET {path}: no Content-Length")
                body = await reader.readexactly(length)
                if len(body) != want:
                    raise ClientError(f"GET {path}: got {len(body)} body bytes, expected {want}")
                total += len(body)
        finally:
            writer.close()
            await writer.wait_closed()
        return total

    total = asyncio.run(asyncio.wait_for(run(), timeout=30))
    return {"connections": [connection_entry(marker, len(requests), total)]}


def mode_threads(args):
    import threading

    n = args.threads
    if n < 1:
        raise ClientError("--threads must be at least 1")
    barrier = threading.Barrier(n)
    entries = [None] * n
    errors = []

    def worker(i):
        marker = f"th-{i}"
        conn = new_connection(args, timeout=30)
        try:
            conn.connect()  # handshake before the barrier, so all connections are open together
            barrier.wait(timeout=30)
            total = 0
            path = f"/bytes/{1000 + i}?seed={10 + i}&m={marker}"
            total += len(do_request(conn, "GET", path, expect_len=1000 + i))
            path = f"/echo?m={marker}"
            body = pattern_body(2000 + i, marker)
            data = do_request(conn, "POST", path, body=body, content_type="application/octet-stream")
            check_echo(data, "POST", path, len(body))
            total += len(data)
            barrier.wait(timeout=30)  # keep every connection open until all are done
            entries[i] = connection_entry(marker, 2, total)
        except BaseException as e:  # noqa: BLE001 - reported below
            barrier.abort()
            errors.append(f"thread {i}: {type(e).__name__}: {e}")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), name=f"tls-client-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        # A failing thread breaks the barrier for the others; report the root cause first.
        real = [e for e in errors if "BrokenBarrierError" not in e]
        raise ClientError((real or errors)[0])
    return {"connections": entries}


def mode_large(args):
    import hashlib

    marker = "large"
    body_len = int(args.body_mb * 1024 * 1024)
    if body_len < 0:
        raise ClientError("--body-mb must not be negative")
    # 64-byte lines with a running counter: deterministic, fast to build, head and tail differ.
    filler = b"-tokentap-large-upload-0123456789abcdefghijklmnopqrstuvw\n"
    lines = (body_len + 63) // 64
    body = b"".join([b"%07d" % i + filler for i in range(lines)])[:body_len]

    conn = new_connection(args, timeout=60)
    total = 0
    try:
        path = f"/upload?m={marker}"
        data = do_request(conn, "POST", path, body=body, content_type="application/octet-stream")
        check_echo(data, "POST", path, len(body))
        total += len(data)

        path = f"/bytes/1048576?seed=7&m={marker}"
        response = do_request(conn, "GET", path, expect_len=1048576)
        total += len(response)
    finally:
        conn.close()
    return {
        "connections": [connection_entry(marker, 2, total)],
        "body_len": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "response_sha256": hashlib.sha256(response).hexdigest(),
    }


def libssl_mapped():
    """Whether libssl is mapped into this process (None if /proc is unavailable)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return any("libssl" in line for line in f)
    except OSError:
        return None


def mode_late_start(args):
    marker = "late"
    t_start = time.monotonic()
    mapped_before = libssl_mapped()
    import http.client  # noqa: F401 - loads ssl, and with it libssl
    import ssl  # noqa: F401

    t_ssl_loaded = time.monotonic()
    mapped_after = libssl_mapped()
    time.sleep(args.delay_ms / 1000.0)

    t_request = time.monotonic()
    request_start_unix = time.time()
    conn = new_connection(args, timeout=30)
    try:
        data = do_request(conn, "GET", f"/bytes/500?seed=9&m={marker}", expect_len=500)
    finally:
        conn.close()
    return {
        "connections": [connection_entry(marker, 1, len(data))],
        "ssl_load_s": t_ssl_loaded - t_start,
        "request_start_s": t_request - t_start,
        "request_start_unix": request_start_unix,
        "libssl_mapped_before_import": mapped_before,
        "libssl_mapped_after_import": mapped_after,
    }


MODE_FUNCS = {
    "keepalive": mode_keepalive,
    "asyncio": mode_asyncio,
    "threads": mode_threads,
    "large": mode_large,
    "late-start": mode_late_start,
}


def main(argv):
    args = parse_args(argv)
    try:
        result = MODE_FUNCS[args.mode](args)
    except Exception as e:  # noqa: BLE001 - one-line report, non-zero exit
        msg = f"{type(e).__name__}: {e}" if not isinstance(e, ClientError) else str(e)
        print(f"tls_clients.py {args.mode}: {msg}".replace("\n", " "), file=sys.stderr)
        return 1
    out = {"mode": args.mode, "pid": os.getpid()}
    out.update(result)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
