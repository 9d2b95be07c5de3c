#!/usr/bin/env python3
"""What tokentap costs the processes it observes, next to the unavoidable cost of the hooks.

Run by `cargo xtask bench` (as root). A Python client (system OpenSSL) does small TLS
request/response round trips over loopback against the rustls test server, with:
  - none:            no probes;
  - floor:           the same uprobes and uretprobes tokentap attaches, as no-op bpftrace
                     programs;
  - floor-entry-writes: the same without the write return probes (what capturing writes at
                     entry would cost; tokentap captures them at return, which is exact under
                     WANT_WRITE retries and partial writes);
  - tokentap:        the agent, default configuration.
Runs are interleaved and the median of each configuration is reported, for wall time and for
the client's CPU time (uprobe traps are charged to the client). A bulk download then measures the
agent's CPU time per GB captured. Writes a Markdown report.
"""
import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def python_libssl(python):
    out = subprocess.run(
        [python, "-c", "import ssl\nfor l in open('/proc/self/maps'):\n if 'libssl.so' in l: print(l.split()[-1]); break"],
        capture_output=True, text=True, check=True).stdout.strip()
    if not out:
        sys.exit("overhead.py: the Python under test maps no libssl.so")
    return out


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Probe:
    """A probe configuration running for the duration of one client run."""

    def __init__(self, name, tokentap, libssl):
        self.name, self.tokentap, self.libssl = name, tokentap, libssl
        self.proc = None
        self.metrics_addr = None

    def start(self):
        if self.name == "none":
            return
        if self.name.startswith("floor"):
            lib = self.libssl
            hooks = [f"uprobe:{lib}:{f}" for f in ("SSL_write", "SSL_write_ex", "SSL_read", "SSL_read_ex", "SSL_free")]
            returns = ("SSL_read", "SSL_read_ex")
            if self.name == "floor":
                returns += ("SSL_write", "SSL_write_ex")
            hooks += [f"uretprobe:{lib}:{f}" for f in returns]
            prog = " ".join(h + " {}" for h in hooks)
            self.proc = subprocess.Popen(["bpftrace", "-e", prog], stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)
            self._wait_for(self.proc.stdout, "Attaching")
            time.sleep(1.0)
            return
        self.proc = subprocess.Popen([self.tokentap, "agent", "--listen", "127.0.0.1:0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, RUST_LOG="info"))
        while True:
            line = self.proc.stderr.readline()
            if not line:
                sys.exit(f"overhead.py: tokentap exited early (status {self.proc.wait()})")
            m = re.search(r"http://(\S+)", line)
            if m:
                self.metrics_addr = m.group(1)
            if "ready:" in line:
                break

    @staticmethod
    def _wait_for(stream, text):
        deadline = time.time() + 30
        while time.time() < deadline:
            line = stream.readline()
            if not line:
                break
            if text in line:
                return
        sys.exit(f"overhead.py: bpftrace did not start ({text!r} not seen)")

    def metrics(self):
        with urllib.request.urlopen(f"http://{self.metrics_addr}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self):
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def metric(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def run_client(python, port, cafile, extra):
    out = subprocess.run([python, os.path.join(HERE, "roundtrip_client.py"), "--port", str(port),
                          "--cafile", cafile] + extra, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"overhead.py: client failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokentap", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--python", default="python3")
    p.add_argument("--round-trips", type=int, default=20000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--bulk-mb", type=int, default=512)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    mounted_tracefs = False
    if not os.path.exists("/sys/kernel/tracing/uprobe_events"):
        # bpftrace 0.17 detaches uprobes through tracefs.
        mounted_tracefs = subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"]).returncode == 0

    libssl = python_libssl(a.python)
    server = subprocess.Popen([a.server], stdout=subprocess.PIPE, text=True)
    info = json.loads(server.stdout.readline())
    port, cafile = info["port"], info["ca_file"]
    configs = ["none", "floor", "floor-entry-writes", "tokentap"]
    results = {c: [] for c in configs}
    agent_cpu = []
    agent_rss = []
    try:
        run_client(a.python, port, cafile, ["--round-trips", "500"])  # warm-up
        for run in range(a.runs):
            order = configs[run % len(configs):] + configs[:run % len(configs)]
            for name in order:
                probe = Probe(name, a.tokentap, libssl)
                probe.start()
                t0 = cpu_ticks(probe.proc.pid) if name == "tokentap" else 0
                r = run_client(a.python, port, cafile, ["--round-trips", str(a.round_trips)])
                if name == "tokentap":
                    time.sleep(0.3)
                    agent_cpu.append((cpu_ticks(probe.proc.pid) - t0) / os.sysconf("SC_CLK_TCK"))
                    agent_rss.append(peak_rss_kib(probe.proc.pid))
                probe.stop()
                results[name].append(r)
                print(f"run {run + 1}/{a.runs} {name:18s} wall {r['wall_s']:.3f}s cpu {r['cpu_s']:.3f}s", file=sys.stderr)

        # Agent CPU per GB captured: a bulk download with every byte captured.
        probe = Probe("tokentap", a.tokentap, libssl)
        probe.start()
        before = metric(probe.metrics(), 'tokentap_captured_bytes_total{direction="read"}') or 0
        t0 = cpu_ticks(probe.proc.pid)
        bulk = run_client(a.python, port, cafile, ["--bulk-mb", str(a.bulk_mb)])
        time.sleep(0.5)
        bulk_cpu = (cpu_ticks(probe.proc.pid) - t0) / os.sysconf("SC_CLK_TCK")
        text = probe.metrics()
        captured = (metric(text, 'tokentap_captured_bytes_total{direction="read"}') or 0) - before
        lost = metric(text, 'tokentap_events_lost_total{reason="ringbuf_full"}')
        bulk_rss = peak_rss_kib(probe.proc.pid)
        probe.stop()
    finally:
        server.kill()
        server.wait()
        if mounted_tracefs:
            subprocess.run(["umount", "/sys/kernel/tracing"])

    def med(name, key):
        return statistics.median(r[key] for r in results[name]) / a.round_trips * 1e6

    base_w, base_c = med("none", "wall_s"), med("none", "cpu_s")
    floor_w, floor_c = med("floor", "wall_s"), med("floor", "cpu_s")
    rows = []
    for name in configs:
        w, c = med(name, "wall_s"), med(name, "cpu_s")
        rows.append(f"| {name} | {w:.1f} | {c:.1f} | {w / base_w:.3f} | {c / base_c:.3f} | {w / floor_w:.3f} | {c / floor_c:.3f} |")
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    ssl_version = subprocess.run([a.python, "-c", "import ssl;print(ssl.OPENSSL_VERSION)"], capture_output=True, text=True).stdout.strip()
    report = f"""# tokentap overhead

Machine: {os.cpu_count()} vCPU ({cpu_model}), kernel {platform.release()}, {sh(a.python + ' --version')}, {ssl_version}.
Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Command: `cargo xtask bench --round-trips {a.round_trips} --runs {a.runs}`.

## Small TLS round trips (Python client, loopback, {a.round_trips} per run, median of {a.runs} runs)

Per round trip: one `SSL_write_ex`, one or more `SSL_read_ex`. CPU is the client's own (user+sys),
where uprobe traps are charged.

| probes | wall µs/rt | client CPU µs/rt | wall vs none | CPU vs none | wall vs floor | CPU vs floor |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

- floor: the hooks tokentap attaches (entry of SSL_write, SSL_write_ex, SSL_read, SSL_read_ex,
  SSL_free; return of SSL_write, SSL_write_ex, SSL_read, SSL_read_ex) as empty bpftrace programs.
- floor-entry-writes: the same without the write return probes.
- tokentap agent CPU during a run: median {statistics.median(agent_cpu):.2f} s
  ({statistics.median(agent_cpu) / a.round_trips * 1e6:.1f} µs per round trip); peak RSS {max(agent_rss) / 1024:.1f} MiB.

## Agent CPU per GB captured

A {a.bulk_mb} MiB download in 8 MiB bodies, every byte captured: {captured / 1e6:.0f} MB captured,
agent CPU {bulk_cpu:.2f} s, i.e. **{bulk_cpu / (captured / 1e9):.2f} CPU-seconds per GB**
(ring-buffer losses: {lost:.0f}; peak RSS {bulk_rss / 1024:.1f} MiB; client wall {bulk['wall_s']:.2f} s).
"""
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(report)
    print(report)


if __name__ == "__main__":
    main()
