//! The optional configuration file (`--config FILE`, TOML): the same settings as the flags.
//! A flag given on the command line wins over the file; the file wins over the defaults.
//!
//! ```toml
//! listen = "0.0.0.0:9464"
//! tls_cert = "/etc/tokentap/tls/tls.crt"      # like --tls-cert (with tls_key)
//! tls_key = "/etc/tokentap/tls/tls.key"
//! auth_token_file = "/etc/tokentap/token"     # like --auth-token-file
//! head_bytes = 65536
//! tail_bytes = 65536
//! ring_buffer_bytes = 16777216
//! libssl = ["/opt/app/lib/libssl.so.3"]
//! rescan_interval = 30
//! idle_timeout = 900
//! max_label_sets = 2000
//! pricing = "/etc/tokentap/prices.toml"   # like --pricing FILE
//! otlp_endpoint = "http://127.0.0.1:4318"
//! otlp_ca_file = "/etc/tokentap/otlp-ca.pem"   # like --otlp-ca-file (https collectors)
//! otlp_headers_file = "/etc/tokentap/otlp-headers"  # like --otlp-headers-file
//! kubernetes = "auto"                      # auto, on or off
//! node_name = "node-1"                     # usually the NODE_NAME environment variable
//! pod_series_ttl = 300
//! kubernetes_api = "https://10.96.0.1:443" # overrides the in-cluster address
//!
//! log_exchanges = "/var/log/tokentap/exchanges.jsonl"   # or "-" for stdout
//! log_max_bytes = 67108864
//! log_files = 5
//! capture_content = false
//! content_max_bytes = 16384
//!
//! [capture_content]      # content of these executables only (without capture_content)
//! services = ["python3.11"]
//!
//! [providers]            # like --provider HOST[:PORT]=NAME
//! "llm-gateway.internal:8443" = "litellm"
//! "10.0.0.7:8000" = "vllm"
//! ```

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use clap::{ArgMatches, parser::ValueSource};
use serde::Deserialize;

use crate::cli::{AgentOptions, Cli, Command};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub auth_token_file: Option<PathBuf>,
    pub head_bytes: Option<u64>,
    pub tail_bytes: Option<u64>,
    pub ring_buffer_bytes: Option<u32>,
    pub libssl: Option<Vec<PathBuf>>,
    pub rescan_interval: Option<u64>,
    pub idle_timeout: Option<u64>,
    pub proc_root: Option<PathBuf>,
    pub max_label_sets: Option<usize>,
    pub pricing: Option<PathBuf>,
    pub otlp_endpoint: Option<String>,
    pub otlp_ca_file: Option<PathBuf>,
    pub otlp_headers_file: Option<PathBuf>,
    pub log_exchanges: Option<PathBuf>,
    pub log_max_bytes: Option<u64>,
    pub log_files: Option<usize>,
    /// `capture_content = true`, or a `[capture_content]` table.
    pub capture_content: Option<CaptureContent>,
    pub content_max_bytes: Option<usize>,
    pub kubernetes: Option<crate::cli::KubernetesMode>,
    pub node_name: Option<String>,
    pub pod_series_ttl: Option<u64>,
    pub kubernetes_api: Option<String>,
    #[serde(default)]
    pub providers: BTreeMap<String, String>,
}

/// `capture_content`: on for every process, or per service.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum CaptureContent {
    All(bool),
    Only(CaptureContentScope),
}

/// `[capture_content]`: whose content is captured. Kubernetes namespaces will join
/// `services` here once the process context carries them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureContentScope {
    /// Executable names.
    #[serde(default)]
    pub services: Vec<String>,
}

impl FileConfig {
    /// Parses a config file's text; the error names the offending setting.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned() + &location(&e, text))
    }

    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("--config {}: {e}", path.display()))
    }
}

fn location(e: &toml::de::Error, text: &str) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

/// Whether `id` was left at its default on the command line.
fn defaulted(matches: &ArgMatches, id: &str) -> bool {
    let from_sub = matches
        .subcommand()
        .and_then(|(_, m)| m.value_source(id).map(|s| (m, s)));
    let source = matches.value_source(id).or(from_sub.map(|(_, s)| s));
    !matches!(
        source,
        Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable)
    )
}

/// Applies `file` to `cli` wherever the command line left a setting at its default.
pub fn apply(cli: &mut Cli, matches: &ArgMatches, file: FileConfig) {
    let c = &mut cli.capture;
    macro_rules! take {
        ($field:ident, $id:literal) => {
            if let Some(v) = file.$field
                && defaulted(matches, $id)
            {
                c.$field = v;
            }
        };
    }
    take!(head_bytes, "head_bytes");
    take!(tail_bytes, "tail_bytes");
    take!(ring_buffer_bytes, "ring_buffer_bytes");
    take!(rescan_interval, "rescan_interval");
    take!(idle_timeout, "idle_timeout");
    take!(proc_root, "proc_root");
    take!(max_label_sets, "max_label_sets");
    if let Some(path) = file.pricing
        && defaulted(matches, "pricing")
    {
        c.pricing = Some(path);
    }
    take!(log_max_bytes, "log_max_bytes");
    take!(log_files, "log_files");
    take!(content_max_bytes, "content_max_bytes");
    take!(kubernetes, "kubernetes");
    take!(pod_series_ttl, "pod_series_ttl");
    if let Some(node) = file.node_name
        && defaulted(matches, "node_name")
    {
        c.node_name = Some(node);
    }
    if let Some(url) = file.kubernetes_api
        && defaulted(matches, "kubernetes_api")
    {
        c.kubernetes_api = Some(url);
    }
    if let Some(path) = file.log_exchanges
        && defaulted(matches, "log_exchanges")
    {
        c.log_exchanges = Some(path);
    }
    match file.capture_content {
        Some(CaptureContent::All(on)) if defaulted(matches, "capture_content") => {
            c.capture_content = on;
        }
        Some(CaptureContent::Only(scope)) => c.capture_content_services = scope.services,
        _ => {}
    }
    if let Some(url) = file.otlp_endpoint
        && defaulted(matches, "otlp_endpoint")
    {
        c.otlp_endpoint = Some(url);
    }
    if let Some(path) = file.otlp_ca_file
        && defaulted(matches, "otlp_ca_file")
    {
        c.otlp_ca_file = Some(path);
    }
    if let Some(path) = file.otlp_headers_file
        && defaulted(matches, "otlp_headers_file")
    {
        c.otlp_headers_file = Some(path);
    }
    if let Some(libs) = file.libssl {
        // Libraries add up: the file's and the command line's.
        c.libssl.extend(libs);
    }
    // Command-line overrides come last, so they win over the file's for the same host.
    let mut providers: Vec<String> = file
        .providers
        .into_iter()
        .map(|(host, name)| format!("{host}={name}"))
        .collect();
    providers.append(&mut c.providers);
    c.providers = providers;
    apply_agent(
        cli,
        matches,
        file.listen,
        file.tls_cert,
        file.tls_key,
        file.auth_token_file,
    );
}

/// The agent's endpoint settings from the file, where the command line left them unset.
fn apply_agent(
    cli: &mut Cli,
    matches: &ArgMatches,
    listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    auth_token_file: Option<PathBuf>,
) {
    // No subcommand runs the agent with default options.
    let Command::Agent(opts) = cli
        .command
        .get_or_insert_with(|| Command::Agent(AgentOptions::default()))
    else {
        return;
    };
    if let Some(listen) = listen
        && defaulted(matches, "listen")
    {
        opts.listen = listen;
    }
    for (value, field) in [
        (tls_cert, &mut opts.tls_cert),
        (tls_key, &mut opts.tls_key),
        (auth_token_file, &mut opts.auth_token_file),
    ] {
        if field.is_none() {
            *field = value;
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    fn parse(args: &[&str], file: &str) -> Cli {
        let matches = Cli::command()
            .try_get_matches_from(args)
            .expect("args parse");
        let mut cli = Cli::from_arg_matches(&matches).expect("cli");
        apply(
            &mut cli,
            &matches,
            FileConfig::parse(file).expect("file parses"),
        );
        cli
    }

    #[test]
    fn file_fills_defaults_and_flags_win() {
        let file = "head_bytes = 4096\ntail_bytes = 1024\n[providers]\n\"gw:8443\" = \"litellm\"\n";
        let cli = parse(&["tokentap", "--tail-bytes", "2048"], file);
        assert_eq!(cli.capture.head_bytes, 4096);
        assert_eq!(cli.capture.tail_bytes, 2048);
        assert_eq!(cli.capture.providers, ["gw:8443=litellm"]);
        let cli = parse(&["tokentap", "watch", "--head-bytes", "100"], file);
        assert_eq!(
            cli.capture.head_bytes, 100,
            "a global flag after the subcommand wins too"
        );
    }

    #[test]
    fn logs_and_content_from_the_file() {
        let file = "log_exchanges = \"/tmp/x.jsonl\"\nlog_files = 2\n[capture_content]\nservices = [\"python3.11\"]\n";
        let cli = parse(&["tokentap", "--log-max-bytes", "1000"], file);
        assert_eq!(
            cli.capture.log_exchanges,
            Some(PathBuf::from("/tmp/x.jsonl"))
        );
        assert_eq!(
            (cli.capture.log_max_bytes, cli.capture.log_files),
            (1000, 2)
        );
        let policy = cli.capture.content_policy();
        assert!(!policy.all);
        assert_eq!(policy.executables, ["python3.11"]);
        let cli = parse(
            &["tokentap"],
            "capture_content = true\ncontent_max_bytes = 100\n",
        );
        assert!(cli.capture.capture_content);
        assert_eq!(cli.capture.content_max_bytes, 100);
        assert!(FileConfig::parse("[capture_content]\nnamespaces = [\"a\"]\n").is_err());
    }

    #[test]
    fn pricing_from_the_file_and_the_flag_wins() {
        let cli = parse(&["tokentap", "watch"], "pricing = \"/etc/p.toml\"\n");
        assert_eq!(cli.capture.pricing, Some(PathBuf::from("/etc/p.toml")));
        let cli = parse(
            &["tokentap", "--pricing", "/p.toml"],
            "pricing = \"/etc/p.toml\"\n",
        );
        assert_eq!(cli.capture.pricing, Some(PathBuf::from("/p.toml")));
    }

    #[test]
    fn kubernetes_settings_from_the_file() {
        let file = "kubernetes = \"on\"\nnode_name = \"node-1\"\npod_series_ttl = 5\nkubernetes_api = \"http://127.0.0.1:1\"\n";
        let cli = parse(&["tokentap", "--pod-series-ttl", "9"], file);
        assert_eq!(cli.capture.kubernetes, crate::cli::KubernetesMode::On);
        assert_eq!(cli.capture.node_name.as_deref(), Some("node-1"));
        assert_eq!(cli.capture.pod_series_ttl, 9);
        assert_eq!(
            cli.capture.kubernetes_api.as_deref(),
            Some("http://127.0.0.1:1")
        );
        assert!(FileConfig::parse("kubernetes = \"maybe\"\n").is_err());
    }

    #[test]
    fn endpoint_security_from_the_file_and_flags_win() {
        let file = "tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\nauth_token_file = \"/t\"\n";
        let cli = parse(&["tokentap"], file);
        let Some(Command::Agent(opts)) = &cli.command else {
            panic!("the agent runs by default: {:?}", cli.command);
        };
        assert_eq!(opts.tls_cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(opts.tls_key, Some(PathBuf::from("/k.pem")));
        assert_eq!(opts.auth_token_file, Some(PathBuf::from("/t")));
        let cli = parse(&["tokentap", "agent", "--auth-token-file", "/flag"], file);
        let Some(Command::Agent(opts)) = &cli.command else {
            panic!("agent");
        };
        assert_eq!(opts.auth_token_file, Some(PathBuf::from("/flag")));
        assert_eq!(opts.tls_cert, Some(PathBuf::from("/c.pem")));
        let cli = parse(&["tokentap", "watch"], file);
        assert!(matches!(cli.command, Some(Command::Watch(_))));
    }

    #[test]
    fn bad_files_name_the_setting() {
        let err = FileConfig::parse("head_bytes = \"lots\"\n").expect_err("bad type");
        assert!(
            err.contains("head_bytes") || err.contains("line 1"),
            "{err}"
        );
        let err = FileConfig::parse("heads = 1\n").expect_err("unknown key");
        assert!(err.contains("heads"), "{err}");
        let err = FileConfig::parse("listen = \"nowhere\"\n").expect_err("bad address");
        assert!(err.contains("line 1"), "{err}");
    }
}
