#!/usr/bin/env python3
"""What observing LLM traffic costs the processes observed: tokentap next to the alternatives.

Run by `cargo xtask bench` (as root). Workloads:
  - micro:     a Python client (system OpenSSL) doing small TLS request/response round trips
               over loopback against the rustls test server (roundtrip_client.py);
  - realistic: the real `openai` SDK (AsyncOpenAI) doing 64 concurrent streamed chat
               completions of 30 chunks each against the mock provider (llm_client.py);
  - long:      non-streamed chat completions with 4 MB and 40 MB prompts (llm_client.py);
  - plaintext: what `--plaintext-http` (syscall tracepoints on every read/write of the node)
               costs: small HTTP/1.1 round trips over plain TCP (roundtrip_client.py --plain
               against plain_server.py), the openai SDK streaming from the mock provider over
               http://, the TLS round trips of micro, and two processes that do not speak HTTP:
               `dd` between /dev/zero and /dev/null, and a binary TCP echo (syscall_client.py).
Modes:
  - none:      no probes;
  - floor:     the uprobes and uretprobes tokentap attaches, as no-op bpftrace programs;
  - floor-entry-writes (micro only): the same without the write return probes;
  - naive:     a bpftrace script that copies the payload of every SSL_write/SSL_read(_ex)
               call out through its perf buffer (NAIVE_CHUNKS pieces of BPFTRACE_STRLEN=200
               bytes, the most bpftrace 0.17 lets one buf() hold), drained by this script;
  - otel:      the OpenTelemetry project's openai instrumentation in the client, exporting
               spans (batched, OTLP/HTTP protobuf) to a sink on loopback (otlp_sink.py);
  - litellm:   the client talks plain HTTP to a LiteLLM proxy on loopback, which calls the mock
               over TLS; the proxy's CPU is reported as the observer's;
  - tokentap:  the agent, default configuration;
  - floor-tracepoints (plaintext only): the 17 syscall tracepoints --plaintext-http attaches, as
               no-op bpftrace programs: the cost of the tracepoints alone;
  - tokentap-plaintext (plaintext only): the agent with --plaintext-http;
  - tokentap-plaintext-compared (plaintext, with --compare-tokentap BUILD): another build of
               the agent (e.g. before a change to its kernel programs) with --plaintext-http.
otel and litellm need LLM calls, so the micro workload has no such columns.

Runs are interleaved (the mode order rotates every run) and medians are reported: the client's
wall time and CPU time (user+sys; uprobe traps are charged to the client) per call of the timed
loop (after the client's warm-up), the observer's CPU (agent, bpftrace or gateway) over the same
loop and its peak RSS. In tokentap mode the agent's token
counters must equal the tokens the SDK saw, in otel mode the sink must have received one span
per call; a run that fails these checks fails the benchmark. Writes a Markdown report.
"""
import argparse
import fcntl
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
# The end-to-end tests' lock: an agent sees every process's TLS traffic, so the benchmark and
# the tests must not overlap.
E2E_LOCK = "/tmp/tokentap-e2e.lock"
NAIVE_CHUNKS = 20
STRLEN = 200
MODEL = "gpt-4o-mini-chunks30"
API_KEY = "sk-tokentap-test-not-a-real-key"

MODES = {
    "micro": ["none", "floor", "floor-entry-writes", "naive", "tokentap"],
    "realistic": ["none", "floor", "naive", "otel", "litellm", "tokentap"],
    "long": ["none", "floor", "naive", "otel", "litellm", "tokentap"],
    "plaintext": ["none", "tokentap", "floor-tracepoints", "tokentap-plaintext"],
}


def fail(msg):
    sys.exit(f"overhead.py: {msg}")


def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def python_libssl(python):
    out = subprocess.run(
        [python, "-c", "import ssl\nfor l in open('/proc/self/maps'):\n if 'libssl.so' in l: print(l.split()[-1]); break"],
        capture_output=True, text=True, check=True).stdout.strip()
    if not out:
        fail(f"{python} maps no libssl.so")
    return out


def proc_tree(pid):
    """pid and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid):
    """CPU time (user+sys) of pid and its live descendants, from each process's CPU-time clock
    (Linux's clock id for a process: ((~pid) << 3) | CPUCLOCK_SCHED): nanosecond resolution and,
    unlike per-thread figures, including threads that have exited."""
    total = 0.0
    for p in proc_tree(pid):
        try:
            total += time.clock_gettime(((~p) << 3) | 2)
        except OSError:
            pass
    return total


def peak_rss_mib(pid):
    """Peak RSS (VmHWM) of pid and its live descendants, summed."""
    total = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(l.split()[1]) for l in f if l.startswith("VmHWM:")), 0)
        except OSError:
            pass
    return total / 1024


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def sum_series(text, name, label):
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and label in line)


# ---------------------------------------------------------------------------------------------
# Observers: what runs beside the client in each mode


# The syscall tracepoints tokentap attaches with --plaintext-http (agent/src/probes.rs).
PLAINTEXT_SYSCALLS = ("write", "sendto", "writev", "sendmsg", "read", "recvfrom", "readv", "recvmsg")


def bpftrace_program(mode, lib):
    if mode == "floor-tracepoints":
        probes = [f"tracepoint:syscalls:sys_{e}_{c}" for c in PLAINTEXT_SYSCALLS for e in ("enter", "exit")]
        return "\n".join(p + " {}" for p in probes + ["tracepoint:syscalls:sys_enter_close"])
    if mode == "naive":
        def copy(ptr, n, d):
            # NAIVE_CHUNKS pieces of at most STRLEN bytes: buf() is capped at BPFTRACE_STRLEN.
            return (f"$p = (uint64){ptr}; $n = (uint64){n}; $o = (uint64)0; "
                    f"unroll({NAIVE_CHUNKS}) {{ if ($o < $n) {{ "
                    f"printf(\"{d} %d %r\\n\", pid, buf($p + $o, $n - $o)); }} $o += {STRLEN}; }}")
        return "\n".join([
            f"uprobe:{lib}:SSL_write {{ {copy('arg1', 'arg2', 'w')} }}",
            f"uprobe:{lib}:SSL_write_ex {{ {copy('arg1', 'arg2', 'w')} }}",
            f"uprobe:{lib}:SSL_read {{ @rb[tid] = arg1; }}",
            f"uretprobe:{lib}:SSL_read /@rb[tid]/ {{ if ((int64)retval > 0) {{ {copy('@rb[tid]', 'retval', 'r')} }} delete(@rb[tid]); }}",
            f"uprobe:{lib}:SSL_read_ex {{ @rxb[tid] = arg1; @rxn[tid] = arg3; }}",
            f"uretprobe:{lib}:SSL_read_ex /@rxb[tid]/ {{ if (retval == 1) {{ {copy('@rxb[tid]', '*(uint64 *)@rxn[tid]', 'r')} }} delete(@rxb[tid]); delete(@rxn[tid]); }}",
        ])
    hooks = [f"uprobe:{lib}:{f}" for f in ("SSL_write", "SSL_write_ex", "SSL_read", "SSL_read_ex", "SSL_free")]
    returns = ("SSL_read", "SSL_read_ex")
    if mode == "floor":
        returns += ("SSL_write", "SSL_write_ex")
    hooks += [f"uretprobe:{lib}:{f}" for f in returns]
    return "\n".join(h + " {}" for h in hooks)


class Bpftrace:
    """floor, floor-entry-writes, naive: bpftrace, its output drained and counted."""

    def __init__(self, mode, libssl):
        self.proc = subprocess.Popen(["bpftrace", "-e", bpftrace_program(mode, libssl)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, BPFTRACE_STRLEN=str(STRLEN)))
        self.pid = self.proc.pid
        deadline = time.time() + 60
        while True:
            line = self.proc.stdout.readline()
            if not line or time.time() > deadline:
                fail(f"bpftrace did not start: {line!r}")
            if line.startswith(b"Attaching"):
                break
        self.bytes_out, self.lost = 0, 0
        self.drain = threading.Thread(target=self._drain, daemon=True)
        self.drain.start()
        time.sleep(1.0)

    def _drain(self):
        for line in self.proc.stdout:
            self.bytes_out += len(line)
            if line.startswith(b"Lost "):
                self.lost += int(line.split()[1])

    def check(self, result, expect):
        return "lost %d events" % self.lost if self.lost else "ok"

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.drain.join(timeout=5)


class Tokentap:
    def __init__(self, binary, plaintext_http=False):
        flags = ["--plaintext-http"] if plaintext_http else []
        self.proc = subprocess.Popen([binary, "agent", "--listen", "127.0.0.1:0"] + flags,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, RUST_LOG="info"))
        self.pid = self.proc.pid
        self.addr = None
        while True:
            line = self.proc.stderr.readline()
            if not line:
                fail(f"tokentap exited early (status {self.proc.wait()})")
            m = re.search(r"http://(\S+)", line)
            if m:
                self.addr = m.group(1)
            if "ready:" in line:
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        self.captured_before = self.captured()

    def metrics(self):
        return http_get(f"http://{self.addr}/metrics")

    def captured(self):
        return sum_series(self.metrics(), "tokentap_captured_bytes_total", "direction=")

    def check(self, result, expect):
        """expect None: the agent's token counters equal what the SDK saw (waits up to 10 s for
        them). The plaintext workload says what the agent must have captured of the client's
        `bytes`: "all" (both ends of plaintext HTTP: at least all of them), "once" (TLS: the
        plaintext once, from the client's TLS hooks; never the ciphertext on the socket too), or
        "none" (not HTTP, or plaintext without --plaintext-http: less than them, and no tokens)."""
        if expect is not None:
            return self.check_captured(result, expect)
        seen = result.get("seen")
        if seen is None:
            return "ok"
        deadline = time.time() + 10
        while True:
            text = self.metrics()
            got = (sum_series(text, "tokentap_tokens_total", 'gen_ai_token_type="input"'),
                   sum_series(text, "tokentap_tokens_total", 'gen_ai_token_type="output"'))
            want = (seen["input"], seen["output"])
            if got == want:
                return "ok"
            if time.time() > deadline:
                return f"MISMATCH tokens in/out agent {got[0]:.0f}/{got[1]:.0f}, SDK {want[0]}/{want[1]}"
            time.sleep(0.2)

    def check_captured(self, result, expect):
        time.sleep(0.5)  # the last records
        # The SDK client does not count its bytes: for it "none" means no tokens.
        got, sent = self.captured() - self.captured_before, result.get("bytes", float("inf"))
        tokens = sum_series(self.metrics(), "tokentap_tokens_total", "gen_ai_token_type=")
        ok = {"all": got >= sent, "once": sent <= got < 2 * sent, "none": got < sent and tokens == 0}[expect]
        return "ok" if ok else f"MISMATCH captured {got:.0f} B, tokens {tokens:.0f}, client sent+received {sent} B, expected {expect}"

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class OtlpSink:
    """The OTLP/HTTP receiver of the otel mode (lives for the whole benchmark)."""

    def __init__(self, python):
        self.proc = subprocess.Popen([python, os.path.join(HERE, "otlp_sink.py")],
                                     stdout=subprocess.PIPE, text=True)
        self.port = json.loads(self.proc.stdout.readline())["port"]
        self.endpoint = f"http://127.0.0.1:{self.port}/v1/traces"

    def spans(self):
        return json.loads(http_get(f"http://127.0.0.1:{self.port}/count"))["spans"]

    def close(self):
        self.proc.kill()
        self.proc.wait()


class OtelMode:
    """otel: the observer is inside the client; the sink checks one span per call."""
    pid = None

    def __init__(self, sink):
        self.sink = sink
        self.before = sink.spans()

    def check(self, result, expect):
        want = result["seen"]["calls"]
        got = self.sink.spans() - self.before
        return "ok" if got == want else f"MISMATCH spans {got}, calls {want}"

    def stop(self):
        pass


class Gateway:
    """A LiteLLM proxy on loopback (plain HTTP) in front of the mock (lives for the benchmark)."""

    def __init__(self, venv, mock_port, cafile, workdir):
        config = os.path.join(workdir, "litellm.yaml")
        with open(config, "w") as f:
            f.write(f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: https://localhost:{mock_port}/v1
      api_key: {API_KEY}
litellm_settings:
  telemetry: false
""")
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        # The master key is the one the client sends (the proxy refuses to start without one).
        env = dict(os.environ, LITELLM_MASTER_KEY=API_KEY, SSL_CERT_FILE=cafile, SSL_VERIFY=cafile, LITELLM_LOG="ERROR",
                   LITELLM_LOCAL_MODEL_COST_MAP="True", NO_PROXY="*", DISABLE_ADMIN_UI="True")
        self.log = open(os.path.join(workdir, "litellm.log"), "w")
        self.proc = subprocess.Popen(
            [os.path.join(venv, "bin", "litellm"), "--config", config, "--host", "127.0.0.1",
             "--port", str(self.port), "--num_workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.pid = self.proc.pid
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        deadline = time.time() + 180
        while True:
            if self.proc.poll() is not None:
                fail(f"the LiteLLM proxy exited (status {self.proc.returncode}); see {self.log.name}")
            try:
                http_get(f"http://127.0.0.1:{self.port}/health/liveliness", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    fail(f"the LiteLLM proxy did not answer within 180 s; see {self.log.name}")
                time.sleep(0.5)

    def check(self, result, expect):
        return "ok"

    def stop(self):
        pass

    def close(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class NoObserver:
    pid = None

    def check(self, result, expect):
        return "ok"

    def stop(self):
        pass


# ---------------------------------------------------------------------------------------------
# Clients


def run_client(cmd, on_timed=None):
    """Runs a benchmark client; calls on_timed() when it prints `timed` (its timed loop starts).
    Returns the JSON object it prints last."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = []
    drain = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    drain.start()
    last = None
    for line in proc.stdout:
        if line.strip() == "timed":
            if on_timed:
                on_timed()
        elif line.strip():
            last = line
    proc.wait()
    drain.join()
    if proc.returncode != 0 or last is None:
        fail(f"client failed: {' '.join(cmd)}\n{''.join(err).strip()[-3000:]}")
    return json.loads(last)


class Workload:
    """One measured workload: how to run its client in a mode; `expect(mode)`: what the agent
    must have captured (see Tokentap.check), None for the token check."""

    def __init__(self, name, title, unit, modes, client, expect=lambda mode: None):
        self.name, self.title, self.unit, self.modes, self.client = name, title, unit, modes, client
        self.expect = expect


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokentap", required=True)
    p.add_argument("--server", required=True, help="tls-test-server (micro)")
    p.add_argument("--mock", required=True, help="mock-provider (realistic, long)")
    p.add_argument("--python", default="python3", help="Python of the micro client")
    p.add_argument("--venv", required=True, help="bench venv: openai SDK + OpenTelemetry")
    p.add_argument("--gateway-venv", help="LiteLLM proxy venv")
    p.add_argument("--gateway-unavailable", help="why there is no LiteLLM venv (the litellm mode is skipped)")
    p.add_argument("--workload", default="all", choices=["micro", "realistic", "long", "plaintext", "all"])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--round-trips", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5, help="realistic: rounds of 64 streams per run")
    p.add_argument("--long-calls", type=int, default=2, help="long: calls per prompt size per run")
    p.add_argument("--prompt-mb", default="4,40")
    p.add_argument("--bulk-mb", type=int, default=512, help="micro: agent CPU per GB over a download this big")
    p.add_argument("--compare-tokentap", help="plaintext: also run this agent build with --plaintext-http")
    p.add_argument("--dd-blocks", type=int, default=2_000_000, help="plaintext: dd's 512-byte blocks per run")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    lock = open(E2E_LOCK, "a")
    print(f"overhead.py: waiting for {E2E_LOCK}", file=sys.stderr)
    fcntl.flock(lock, fcntl.LOCK_EX)

    mounted_tracefs = False
    if not os.path.exists("/sys/kernel/tracing/uprobe_events"):
        # bpftrace 0.17 detaches uprobes through tracefs.
        mounted_tracefs = subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"]).returncode == 0

    venv_python = os.path.join(a.venv, "bin", "python")
    if a.compare_tokentap:
        MODES["plaintext"].append("tokentap-plaintext-compared")
    if not a.gateway_venv:
        reason = a.gateway_unavailable or "no --gateway-venv"
        for modes in MODES.values():
            if "litellm" in modes:
                modes.remove("litellm")
    workloads_wanted = ["micro", "realistic", "long", "plaintext"] if a.workload == "all" else [a.workload]
    started = {"time": time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), "load": os.getloadavg()}
    workdir = tempfile.mkdtemp(prefix="tokentap-bench-")
    owned = []  # long-lived helpers to close at the end
    sections = []
    stats = {}
    failures = []
    try:
        server = subprocess.Popen([a.server], stdout=subprocess.PIPE, text=True)
        owned.append(server)
        info = json.loads(server.stdout.readline())
        mock = subprocess.Popen([a.mock], stdout=subprocess.PIPE, text=True)
        owned.append(mock)
        minfo = json.loads(mock.stdout.readline())
        if "plaintext" in workloads_wanted:
            plain = {}
            for name, cmd in (("mock", [a.mock, "--plaintext"]),
                              ("http", [a.python, os.path.join(HERE, "plain_server.py"), "http"]),
                              ("echo", [a.python, os.path.join(HERE, "plain_server.py"), "echo"])):
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
                owned.append(proc)
                plain[name] = json.loads(proc.stdout.readline())
        sink = gateway = None

        workloads = []
        def micro(extra, on_timed=None):
            r = run_client([a.python, os.path.join(HERE, "roundtrip_client.py"), "--port", str(info["port"]),
                            "--cafile", info["ca_file"], "--round-trips", str(a.round_trips)], on_timed)
            return {"calls": r["round_trips"], "wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "bytes": r["bytes"]}
        if "micro" in workloads_wanted:
            workloads.append(Workload("micro", f"Small TLS round trips (Python client, system OpenSSL, loopback, {a.round_trips} per run)",
                                      "µs", MODES["micro"], micro))

        def llm(args):
            def client(extra, on_timed=None):
                return run_client([venv_python, os.path.join(HERE, "llm_client.py"), "--port", str(minfo["port"]),
                                   "--cafile", minfo["ca_file"]] + extra + args, on_timed)
            return client

        if "realistic" in workloads_wanted:
            workloads.append(Workload(
                "realistic", f"Streamed chat completions (openai SDK, AsyncOpenAI, 64 concurrent streams of 30 chunks, {a.rounds * 64} calls per run)",
                "ms", MODES["realistic"], llm(["realistic", "--rounds", str(a.rounds)])))
        if "long" in workloads_wanted:
            for mb in [int(x) for x in a.prompt_mb.split(",")]:
                workloads.append(Workload(
                    f"long-{mb}MB", f"Long context: non-streamed chat completions with a {mb} MB prompt ({a.long_calls} calls per run)",
                    "ms", MODES["long"], llm(["long", "--prompt-mb", str(mb), "--calls", str(a.long_calls)])))
        if "plaintext" in workloads_wanted:
            workloads.extend(plaintext_workloads(a, plain, micro, venv_python))

        for w in workloads:
            if "otel" in w.modes and sink is None:
                sink = OtlpSink(venv_python)
                owned.append(sink.proc)
            if "litellm" in w.modes and gateway is None:
                print("overhead.py: starting the LiteLLM proxy", file=sys.stderr)
                gateway = Gateway(a.gateway_venv, minfo["port"], minfo["ca_file"], workdir)
            libssl = python_libssl(a.python if w.name == "micro" else venv_python) if "floor" in w.modes else None
            samples = {m: [] for m in w.modes}
            w.client([])  # warm-up: page cache, the mock's first connections
            for run in range(a.runs):
                k = run % len(w.modes)
                for mode in w.modes[k:] + w.modes[:k]:
                    extra = []
                    if mode == "none":
                        obs = NoObserver()
                    elif mode.startswith("floor") or mode == "naive":
                        obs = Bpftrace(mode, libssl)
                    elif mode == "tokentap":
                        obs = Tokentap(a.tokentap)
                    elif mode == "tokentap-plaintext":
                        obs = Tokentap(a.tokentap, plaintext_http=True)
                    elif mode == "tokentap-plaintext-compared":
                        obs = Tokentap(a.compare_tokentap, plaintext_http=True)
                    elif mode == "otel":
                        obs = OtelMode(sink)
                        extra = ["--otel-endpoint", sink.endpoint]
                    elif mode == "litellm":
                        obs = gateway
                        extra = ["--base-url", gateway.base_url]
                    c0 = []
                    r = w.client(extra, lambda: c0.append(cpu_seconds(obs.pid) if obs.pid else 0))
                    if obs.pid:
                        time.sleep(0.3)  # the observer's last events
                        r["observer_cpu_s"] = cpu_seconds(obs.pid) - c0[0]
                        r["observer_rss_mib"] = peak_rss_mib(obs.pid)
                    r["check"] = obs.check(r, w.expect(mode))
                    if r["check"] != "ok":
                        failures.append(f"{w.name} {mode} run {run + 1}: {r['check']}")
                    obs.stop()
                    samples[mode].append(r)
                    print(f"{w.name} run {run + 1}/{a.runs} {mode:18s} wall {r['wall_s']:.3f}s cpu {r['cpu_s']:.3f}s"
                          f" observer {r.get('observer_cpu_s', 0):.2f}s {r['check']}", file=sys.stderr)
            text, stats[w.name] = section(w, samples)
            sections.append(text)
            if w.name == "micro" and a.bulk_mb:
                sections.append(bulk_capture(a, info))
    finally:
        if gateway is not None:
            gateway.close()
        for proc in owned:
            proc.kill()
            proc.wait()
        if mounted_tracefs:
            subprocess.run(["umount", "/sys/kernel/tracing"])

    ended_load = os.getloadavg()
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    ssl_version = subprocess.run([a.python, "-c", "import ssl;print(ssl.OPENSSL_VERSION)"], capture_output=True, text=True).stdout.strip()
    versions = sh(f"{venv_python} -c \"import importlib.metadata as m;print(', '.join(p + ' ' + m.version(p) for p in ('openai', 'opentelemetry-sdk', 'opentelemetry-instrumentation-openai-v2')))\"")
    if a.gateway_venv:
        litellm_version = "litellm " + sh(f"{os.path.join(a.gateway_venv, 'bin', 'python')} -c \"import importlib.metadata as m;print(m.version('litellm'))\"")
    else:
        litellm_version = f"litellm: n/a ({reason})"
    command = (f"cargo xtask bench --workload {a.workload} --runs {a.runs} --round-trips {a.round_trips} "
               f"--rounds {a.rounds} --long-calls {a.long_calls} --prompt-mb {a.prompt_mb} --bulk-mb {a.bulk_mb}"
               f" --dd-blocks {a.dd_blocks}" + (f" --compare-tokentap {a.compare_tokentap}" if a.compare_tokentap else ""))
    load = lambda l: " ".join(f"{x:.2f}" for x in l)  # noqa: E731
    report = f"""# tokentap overhead

Machine: {os.cpu_count()} vCPU ({cpu_model}), kernel {platform.release()}, {sh(a.python + ' --version')}, {ssl_version},
bpftrace {sh('bpftrace --version').split()[-1]}; {versions}; {litellm_version}.
Load average (1/5/15 min) at start {load(started['load'])}, at end {load(ended_load)}.
Date: {started['time']}. Command: `{command}`.

Medians over {a.runs} interleaved runs per mode. Client CPU is the client process's user+sys time
(uprobe traps are charged to it; in otel mode it includes the span export thread). Observer: the
process doing the observing (tokentap agent, bpftrace, LiteLLM proxy), its CPU during the timed
loop (plus 0.3 s for its last events) and its peak RSS. Total CPU = client + observer. The check column: tokentap's token counters
equal what the SDK saw; otel's sink received one span per call; bpftrace lost no events. In the
plaintext sections (tokentap-plaintext: the agent with `--plaintext-http`): plain HTTP is captured
whole with the option and not at all without it, TLS is captured once (its plaintext, never its
ciphertext on the socket), and the processes that do not speak HTTP are not captured.

{chr(10).join(sections)}
{goals(stats)}"""
    if failures:
        report += "\n**Failed checks:**\n\n" + "\n".join(f"- {f}" for f in failures) + "\n"
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(report)
    print(report)
    if failures:
        fail(f"{len(failures)} runs failed their checks (see {a.out})")


def plaintext_workloads(a, plain, tls_micro, venv_python):
    """What --plaintext-http costs: plaintext HTTP itself, TLS, and processes that are not HTTP."""
    modes = MODES["plaintext"]
    tracked = {"none": None, "floor-tracepoints": None, "tokentap": "none", "tokentap-plaintext": "all",
               "tokentap-plaintext-compared": "all"}

    def http(extra, on_timed=None):
        r = run_client([a.python, os.path.join(HERE, "roundtrip_client.py"), "--plain", "--port",
                        str(plain["http"]["port"]), "--round-trips", str(a.round_trips)], on_timed)
        return {"calls": r["round_trips"], "wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "bytes": r["bytes"]}

    def sdk(extra, on_timed=None):
        port = plain["mock"]["port"]
        return run_client([venv_python, os.path.join(HERE, "llm_client.py"), "--port", str(port),
                           "--cafile", plain["mock"]["ca_file"], "--base-url", f"http://127.0.0.1:{port}/v1",
                           "realistic", "--rounds", str(a.rounds)], on_timed)

    def syscalls(args):
        return lambda extra, on_timed=None: run_client(
            [a.python, os.path.join(HERE, "syscall_client.py")] + args, on_timed)

    return [
        Workload("plaintext-http", f"Plaintext: small HTTP/1.1 round trips over plain TCP (Python client, loopback, {a.round_trips} per run)",
                 "µs", modes, http, lambda m: tracked[m]),
        Workload("plaintext-sdk", f"Plaintext: streamed chat completions over http:// (openai SDK, AsyncOpenAI, 64 concurrent streams of 30 chunks, {a.rounds * 64} calls per run)",
                 "ms", modes, sdk, lambda m: "none" if m == "tokentap" else None),
        Workload("plaintext-tls", f"Plaintext option on TLS: the micro round trips (Python client, system OpenSSL, {a.round_trips} per run)",
                 "µs", modes, tls_micro, lambda m: "once" if m.startswith("tokentap") else None),
        Workload("plaintext-dd", f"Plaintext option on a process that is not HTTP: dd, 512-byte blocks /dev/zero to /dev/null ({a.dd_blocks} per run; per call = one read + one write)",
                 "ns", modes, syscalls(["dd", "--blocks", str(a.dd_blocks)]), lambda m: "none" if m.startswith("tokentap") else None),
        Workload("plaintext-echo", f"Plaintext option on a process that is not HTTP: binary 64-byte TCP echo over loopback (Python client, {a.round_trips} per run)",
                 "µs", modes, syscalls(["echo", "--port", str(plain["echo"]["port"]), "--round-trips", str(a.round_trips)]),
                 lambda m: "none" if m.startswith("tokentap") else None),
    ]


def bulk_capture(a, info):
    """The agent's CPU per GB captured: a bulk download with every byte captured."""
    agent = Tokentap(a.tokentap)
    series = 'tokentap_captured_bytes_total{direction="read"}'
    value = lambda text: next((float(l.split()[-1]) for l in text.splitlines() if l.startswith(series + " ")), 0.0)  # noqa: E731
    before = value(agent.metrics())
    c0 = cpu_seconds(agent.pid)
    bulk = run_client([a.python, os.path.join(HERE, "roundtrip_client.py"), "--port", str(info["port"]),
                     "--cafile", info["ca_file"], "--bulk-mb", str(a.bulk_mb)])
    time.sleep(0.5)
    cpu = cpu_seconds(agent.pid) - c0
    text = agent.metrics()
    captured = value(text) - before
    lost = next((float(l.split()[-1]) for l in text.splitlines()
                 if l.startswith('tokentap_events_lost_total{reason="ringbuf_full"} ')), 0.0)
    rss = peak_rss_mib(agent.pid)
    agent.stop()
    return f"""Agent CPU per GB captured: a {a.bulk_mb} MiB download in 8 MiB bodies, every byte captured:
{captured / 1e6:.0f} MB captured, agent CPU {cpu:.2f} s, i.e. **{cpu / max(captured / 1e9, 1e-9):.2f} CPU-seconds per
GB** (ring-buffer losses: {lost:.0f}; peak RSS {rss:.1f} MiB; client wall {bulk['wall_s']:.2f} s).
"""


def section(w, samples):
    scale = {"ns": 1e9, "µs": 1e6, "ms": 1e3}[w.unit]

    def med(mode, f):
        return statistics.median(f(r) for r in samples[mode])

    per_call = lambda key: lambda r: r[key] / r["calls"] * scale  # noqa: E731
    base_w, base_c = med("none", per_call("wall_s")), med("none", per_call("cpu_s"))
    rows = []
    stats = {}
    for mode in w.modes:
        wall, cpu = med(mode, per_call("wall_s")), med(mode, per_call("cpu_s"))
        has_obs = "observer_cpu_s" in samples[mode][0]
        obs = med(mode, per_call("observer_cpu_s")) if has_obs else 0.0
        total = med(mode, lambda r: (r["cpu_s"] + r.get("observer_cpu_s", 0)) / r["calls"] * scale)
        rss = max(r["observer_rss_mib"] for r in samples[mode]) if has_obs else None
        checks = {r["check"] for r in samples[mode]}
        check = "ok" if checks == {"ok"} else "; ".join(sorted(checks - {"ok"}))
        obs_s = f"{obs:.1f}" if has_obs else "—"
        rss_s = f"{rss:.0f}" if rss is not None else "—"
        stats[mode] = {"wall": wall / base_w, "cpu": cpu / base_c, "total": total / base_c, "rss": rss}
        rows.append(f"| {mode} | {wall:.1f} | {cpu:.1f} | {wall / base_w:.3f} | {cpu / base_c:.3f} | "
                    f"{obs_s} | {total / base_c:.3f} | {rss_s} | {check} |")
    u = w.unit
    return f"""## {w.title}

| mode | wall {u}/call | client CPU {u}/call | wall vs none | client CPU vs none | observer CPU {u}/call | total CPU vs none | observer peak RSS MiB | check |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
""", stats


def goals(stats):
    """The project's overhead goals, judged on this run's medians."""
    out = []

    def verdict(ok):
        return "met" if ok else "**missed**"

    micro = stats.get("micro")
    if micro:
        r = micro["tokentap"]["cpu"] / micro["floor"]["cpu"]
        out.append(f"- micro: tokentap client CPU within 1.1x of the no-op floor: {r:.3f}x, {verdict(r <= 1.1)}.")
    real = stats.get("realistic")
    if real:
        c, w = real["tokentap"]["cpu"], real["tokentap"]["wall"]
        out.append(f"- realistic: client slowdown under 2 %: CPU {100 * (c - 1):+.1f} %, wall {100 * (w - 1):+.1f} %, "
                   f"{verdict(c < 1.02 and w < 1.02)}.")
    for name in ("micro", "realistic"):
        st = stats.get(name)
        if not st:
            continue
        others = [m for m in ("naive", "otel", "litellm") if m in st]
        behind = [m for m in others if st[m]["total"] <= st["tokentap"]["total"]]
        out.append(f"- {name}: total CPU below {', '.join(others)}: tokentap {st['tokentap']['total']:.3f}x vs "
                   + ", ".join(f"{m} {st[m]['total']:.3f}x" for m in others)
                   + f", {verdict(not behind)}.")
    rss = [st["tokentap"]["rss"] for st in stats.values() if st["tokentap"]["rss"] is not None]
    if rss:
        out.append(f"- agent peak RSS under 64 MiB in every workload: at most {max(rss):.0f} MiB, {verdict(max(rss) < 64)}.")
    return "## Goals\n\n" + "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
