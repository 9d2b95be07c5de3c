//! Command line. Kept in the library so that deployment manifests can be checked against the
//! real parser.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::probes::ProbeConfig;

#[derive(Debug, Parser)]
#[command(
    name = "tokentap",
    version,
    about = "LLM API metrics from TLS plaintext captured with eBPF uprobes; no code changes in the observed services."
)]
pub struct Cli {
    #[command(flatten)]
    pub capture: CaptureOptions,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the probes and serve /metrics, /healthz and /readyz (the default).
    Agent(AgentOptions),
    /// Print one line per finished LLM call: process, provider, model, tokens, latency, status.
    Watch(WatchOptions),
    /// Print every captured TLS chunk as a JSON line on stdout (the debugging view).
    Capture(CaptureCommandOptions),
    /// Print, for each process with TCP connections, its TLS stacks and whether tokentap hooks
    /// them (no probes are loaded).
    Status(StatusOptions),
}

#[derive(Debug, Args, Clone)]
pub struct StatusOptions {
    /// One JSON object per process instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct WatchOptions {
    /// Print the full exchange record as a JSON line instead.
    #[arg(long)]
    pub json: bool,
    /// Only show these processes (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
}

/// How plaintext is captured; shared by every subcommand.
#[derive(Debug, Args, Clone)]
pub struct CaptureOptions {
    /// Bytes copied from the start of every TLS read or write call.
    #[arg(long, global = true, default_value_t = tokentap_common::DEFAULT_HEAD_BYTES, value_name = "BYTES")]
    pub head_bytes: u64,
    /// Bytes copied from the end of calls longer than head + tail; the middle is skipped and
    /// counted, so byte offsets stay exact.
    #[arg(long, global = true, default_value_t = tokentap_common::DEFAULT_TAIL_BYTES, value_name = "BYTES")]
    pub tail_bytes: u64,
    /// Size of the kernel-to-agent ring buffer (a power of two).
    #[arg(long, global = true, default_value_t = 16 * 1024 * 1024, value_name = "BYTES")]
    pub ring_buffer_bytes: u32,
    /// Also capture plaintext HTTP/1 on sockets (in-cluster model servers without TLS), through
    /// the `write`/`sendto`/`read`/`recvfrom` syscall tracepoints. These fire for every such
    /// call of every process on the node, HTTP or not: about 0.4 µs of CPU per call (3.5x for
    /// `dd`, within noise for SDK streams; README "Overhead"), hence off by default.
    #[arg(long, global = true)]
    pub plaintext_http: bool,
    /// Also hook this OpenSSL libssl file (repeatable).
    #[arg(long = "libssl", global = true, value_name = "PATH")]
    pub libssl: Vec<PathBuf>,
    /// Directories of separate debug files (`.build-id/ab/cdef….debug`): a stripped file with
    /// OpenSSL compiled in is hooked with the symbols of its own build's debug file
    /// (repeatable).
    #[arg(long = "debug-dir", global = true, default_value = crate::tls_stacks::elf_symbols::DEFAULT_DEBUG_DIR, value_name = "DIR")]
    pub debug_dirs: Vec<PathBuf>,
    /// Seconds between full rescans of /proc for newly loaded TLS libraries (a safety net:
    /// process starts and library loads trigger scans at once).
    #[arg(long, global = true, default_value_t = 30, value_name = "SECONDS")]
    pub rescan_interval: u64,
    /// Forget connections idle for this many seconds.
    #[arg(long, global = true, default_value_t = 900, value_name = "SECONDS")]
    pub idle_timeout: u64,
    /// Where the host's /proc is mounted.
    #[arg(long, global = true, default_value = "/proc", value_name = "PATH")]
    pub proc_root: PathBuf,
    /// Name the provider behind a host (gateways, self-hosted servers): HOST[:PORT]=NAME,
    /// e.g. `llm-gw.internal:8443=litellm` (repeatable).
    #[arg(long = "provider", global = true, value_name = "HOST[:PORT]=NAME")]
    pub providers: Vec<String>,
    /// Cap on distinct label sets in the GenAI metric families; beyond it, model, host and
    /// error labels of new sets fold into `_OTHER` (counted).
    #[arg(long, global = true, default_value_t = crate::metrics::genai::DEFAULT_MAX_LABEL_SETS, value_name = "N")]
    pub max_label_sets: usize,
    /// Settings file (TOML) with the same keys as these flags; flags win.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Prices (TOML, the schema of the embedded table) that override or extend the embedded
    /// ones: negotiated discounts, self-hosted models. Reloaded when the file changes.
    #[arg(long, global = true, value_name = "FILE")]
    pub pricing: Option<PathBuf>,
    /// Write one JSON line per LLM call (the full exchange record) to this file, rotated by
    /// size, or to stdout with `-`.
    #[arg(long, global = true, value_name = "PATH|-")]
    pub log_exchanges: Option<PathBuf>,
    /// Rotate the exchange log when it would grow past this size.
    #[arg(long, global = true, default_value_t = crate::exchange_log::DEFAULT_MAX_BYTES, value_name = "BYTES")]
    pub log_max_bytes: u64,
    /// Rotated exchange logs kept (PATH.1 … PATH.N).
    #[arg(long, global = true, default_value_t = crate::exchange_log::DEFAULT_FILES, value_name = "N")]
    pub log_files: usize,
    /// Keep prompt and completion text in exchange records (logs, watch --json), cut to
    /// --content-max-bytes with API keys and tokens redacted. Off: metadata only.
    #[arg(long, global = true)]
    pub capture_content: bool,
    /// Bytes of prompt and of completion text kept with --capture-content.
    #[arg(long, global = true, default_value_t = crate::llm::content::DEFAULT_CONTENT_MAX_BYTES, value_name = "BYTES")]
    pub content_max_bytes: usize,
    /// Executables whose content is captured without --capture-content (config file
    /// `[capture_content] services = [...]`).
    #[arg(skip)]
    pub capture_content_services: Vec<String>,
    /// Export one span per LLM call over OTLP/HTTP (protobuf) to this collector, e.g.
    /// `http://127.0.0.1:4318` or `https://otlp.example.com/v1/traces` (the `/v1/traces` path
    /// is added when absent).
    #[arg(long, global = true, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// CA certificates (PEM) to check an https collector's certificate with; default: the
    /// system's bundle.
    #[arg(
        long,
        global = true,
        env = "OTEL_EXPORTER_OTLP_CERTIFICATE",
        value_name = "PATH"
    )]
    pub otlp_ca_file: Option<PathBuf>,
    /// Headers sent with every span export, e.g. a vendor's API key: `name=value` per line or
    /// comma-separated, values %-encoded. Also read from OTEL_EXPORTER_OTLP_HEADERS and
    /// OTEL_EXPORTER_OTLP_TRACES_HEADERS (which win for the same name). Never logged.
    #[arg(long, global = true, value_name = "PATH")]
    pub otlp_headers_file: Option<PathBuf>,
    /// Label calls with their pod and workload from the Kubernetes API (this node's pods):
    /// `auto` when running in a cluster (KUBERNETES_SERVICE_HOST and a service account token).
    #[arg(long, global = true, value_enum, default_value_t = KubernetesMode::Auto, value_name = "MODE")]
    pub kubernetes: KubernetesMode,
    /// This node's name: only its pods are watched (a DaemonSet passes it from `spec.nodeName`).
    #[arg(long, global = true, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Seconds after a pod's deletion its metric series are removed.
    #[arg(long, global = true, default_value_t = 300, value_name = "SECONDS")]
    pub pod_series_ttl: u64,
    /// The Kubernetes API server, overriding the in-cluster address, e.g. a test server at
    /// `http://127.0.0.1:8001` (http sends no token; https uses the service account's).
    #[arg(long, global = true, value_name = "URL")]
    pub kubernetes_api: Option<String>,
}

/// Whether workload identity uses the Kubernetes API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KubernetesMode {
    Auto,
    On,
    Off,
}

impl CaptureOptions {
    pub fn probe_config(&self) -> ProbeConfig {
        ProbeConfig {
            head_bytes: self.head_bytes,
            tail_bytes: self.tail_bytes,
            ring_buffer_bytes: self.ring_buffer_bytes,
            plaintext_http: self.plaintext_http,
        }
    }

    /// Whose prompt and completion text is captured.
    pub fn content_policy(&self) -> crate::llm::ContentPolicy {
        crate::llm::ContentPolicy {
            all: self.capture_content,
            executables: self.capture_content_services.clone(),
            max_bytes: self.content_max_bytes,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.probe_config().validate()?;
        if self.rescan_interval == 0 {
            return Err("--rescan-interval must be at least 1 second".into());
        }
        if self.idle_timeout == 0 {
            return Err("--idle-timeout must be at least 1 second".into());
        }
        if self.max_label_sets == 0 {
            return Err("--max-label-sets must be at least 1".into());
        }
        if let Some(node) = &self.node_name
            && !crate::workload::api::valid_node_name(node)
        {
            return Err(format!(
                "--node-name {node:?} is not a Kubernetes node name (lowercase letters, digits, '-' and '.')"
            ));
        }
        if let Some(url) = &self.kubernetes_api {
            crate::workload::api::ApiUrl::parse(url)
                .map_err(|e| format!("--kubernetes-api {url}: {e}"))?;
        }
        Ok(())
    }
}

#[derive(Debug, Args, Clone)]
pub struct AgentOptions {
    /// Address for /metrics, /v1/stats, /healthz and /readyz. In a DaemonSet, Prometheus
    /// scrapes the pod IP, so the default listens on every address; protect it with
    /// --auth-token-file (and --tls-cert/--tls-key) or a NetworkPolicy, or bind 127.0.0.1.
    #[arg(long, default_value = "0.0.0.0:9464", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key; re-read when it changes).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Require `Authorization: Bearer <token>` on /metrics and /v1/*, the token being this
    /// file's content (re-read when it changes); /healthz and /readyz stay open.
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
}

impl AgentOptions {
    /// The files behind the endpoints' TLS and token.
    pub fn security_files(&self) -> crate::endpoint_security::SecurityFiles {
        crate::endpoint_security::SecurityFiles {
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            auth_token_file: self.auth_token_file.clone(),
        }
    }
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9464)),
            tls_cert: None,
            tls_key: None,
            auth_token_file: None,
        }
    }
}

#[derive(Debug, Args, Clone)]
pub struct CaptureCommandOptions {
    /// Only show these processes (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn agent_is_the_default_and_options_are_global() {
        let cli = Cli::try_parse_from(["tokentap", "--head-bytes", "4096"]).expect("parses");
        assert!(cli.command.is_none());
        assert_eq!(cli.capture.head_bytes, 4096);
        let cli = Cli::try_parse_from(["tokentap", "capture", "--pid", "7", "--tail-bytes", "0"])
            .expect("parses");
        assert!(matches!(cli.command, Some(Command::Capture(ref c)) if c.pids == [7]));
        assert_eq!(cli.capture.tail_bytes, 0);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cli = Cli::try_parse_from(["tokentap", "--head-bytes", "0"]).expect("parses");
        let err = cli.capture.validate().expect_err("0 is invalid");
        assert!(err.contains("--head-bytes"), "{err}");
        let cli = Cli::try_parse_from(["tokentap", "--ring-buffer-bytes", "1000"]).expect("parses");
        assert!(
            cli.capture
                .validate()
                .expect_err("invalid")
                .contains("--ring-buffer-bytes")
        );
        assert!(Cli::try_parse_from(["tokentap", "agent", "--listen", "nope"]).is_err());
    }
}
