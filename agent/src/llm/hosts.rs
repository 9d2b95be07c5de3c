//! Which provider a host belongs to: the built-in table and `--provider HOST[:PORT]=NAME`
//! overrides.
//!
//! Providers are named as `gen_ai.provider.name` names them. A host pattern is a name, or a
//! name with one `*` standing for any run of characters (`*.openai.azure.com`). Adding a
//! provider that speaks a known API shape is one line in `BUILTIN`.

/// Built-in providers and their API hosts.
const BUILTIN: &[(&str, &[&str])] = &[
    ("openai", &["api.openai.com"]),
    ("anthropic", &["api.anthropic.com"]),
    ("gcp.gemini", &["generativelanguage.googleapis.com"]),
    ("gcp.vertex_ai", &["*aiplatform.googleapis.com"]),
    (
        "azure.ai.openai",
        &["*.openai.azure.com", "*.cognitiveservices.azure.com"],
    ),
    (
        "azure.ai.inference",
        &["*.services.ai.azure.com", "*.models.ai.azure.com"],
    ),
    (
        "aws.bedrock",
        &[
            "bedrock-runtime.*.amazonaws.com",
            "bedrock-runtime-fips.*.amazonaws.com",
        ],
    ),
    ("mistral_ai", &["api.mistral.ai"]),
    ("groq", &["api.groq.com"]),
    ("deepseek", &["api.deepseek.com"]),
    ("x_ai", &["api.x.ai"]),
    ("perplexity", &["api.perplexity.ai"]),
    ("cohere", &["api.cohere.com", "api.cohere.ai"]),
    ("together", &["api.together.xyz", "api.together.ai"]),
    ("openrouter", &["openrouter.ai"]),
];

/// Whether `host` (lowercase) matches `pattern` (lowercase, at most one `*`).
fn matches(pattern: &str, host: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == host,
        Some((prefix, suffix)) => {
            host.len() >= prefix.len() + suffix.len()
                && host.starts_with(prefix)
                && host.ends_with(suffix)
        }
    }
}

/// The built-in provider of a host.
pub(crate) fn builtin_provider(host: &str) -> Option<&'static str> {
    BUILTIN
        .iter()
        .find(|(_, hosts)| hosts.iter().any(|p| matches(p, host)))
        .map(|(name, _)| *name)
}

/// Splits a `Host` header (or an override's host part) into a lowercase host without a
/// trailing dot or IPv6 brackets, and the port if one is given. `Err` for a bad port.
pub(crate) fn split_host_port(h: &str) -> Result<(String, Option<u16>), String> {
    let h = h.trim();
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in {h:?}"))?;
        match after.strip_prefix(':') {
            Some(p) => (inside, Some(p)),
            None if after.is_empty() => (inside, None),
            None => return Err(format!("unexpected {after:?} after ']' in {h:?}")),
        }
    } else {
        match h.split_once(':') {
            // A bare IPv6 address has several colons and no port.
            Some((host, port)) if !port.contains(':') => (host, Some(port)),
            _ => (h, None),
        }
    };
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("bad port {p:?} in {h:?}"))?,
        ),
        None => None,
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    Ok((host, port))
}

/// One `--provider` override.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Override {
    host: String,
    port: Option<u16>,
    name: String,
}

/// Host → provider name overrides, from `--provider HOST[:PORT]=NAME` (the host may hold
/// one `*`), consulted before the built-in table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderConfig {
    overrides: Vec<Override>,
}

impl ProviderConfig {
    /// Parses `HOST[:PORT]=NAME` into `(host, port, name)`; the host is lowercased.
    pub fn parse_override(s: &str) -> Result<(String, Option<u16>, String), String> {
        let (host, name) = s
            .split_once('=')
            .ok_or_else(|| format!("--provider {s:?}: expected HOST[:PORT]=NAME"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("--provider {s:?}: empty provider name"));
        }
        let (host, port) = split_host_port(host).map_err(|e| format!("--provider {s:?}: {e}"))?;
        if host.is_empty() {
            return Err(format!("--provider {s:?}: empty host"));
        }
        if host.matches('*').count() > 1 {
            return Err(format!("--provider {s:?}: at most one '*' in the host"));
        }
        Ok((host, port, name.to_owned()))
    }

    /// A configuration with these overrides (hosts as [`Self::parse_override`] returns them).
    pub fn with_overrides(
        overrides: impl IntoIterator<Item = (String, Option<u16>, String)>,
    ) -> Self {
        Self {
            overrides: overrides
                .into_iter()
                .map(|(host, port, name)| Override {
                    host: host.to_ascii_lowercase(),
                    port,
                    name,
                })
                .collect(),
        }
    }

    /// Parses every `HOST[:PORT]=NAME` spec.
    pub fn from_specs<S: AsRef<str>>(specs: &[S]) -> Result<Self, String> {
        let parsed = specs
            .iter()
            .map(|s| Self::parse_override(s.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::with_overrides(parsed))
    }

    /// The configured name for `host` (lowercase) on `port`: an override naming the port
    /// first, then one for the host on any port (exact names before patterns; among equals,
    /// the last given); `None` when no override applies.
    pub fn override_for(&self, host: &str, port: u16) -> Option<&str> {
        let rank = |o: &Override| -> Option<u8> {
            if !matches(&o.host, host) {
                return None;
            }
            let port_rank = match o.port {
                Some(p) if p == port => 0,
                Some(_) => return None,
                None => 2,
            };
            Some(port_rank + u8::from(o.host.contains('*')))
        };
        self.overrides
            .iter()
            .enumerate()
            .filter_map(|(i, o)| rank(o).map(|r| (r, std::cmp::Reverse(i), o)))
            .min_by_key(|(r, i, _)| (*r, *i))
            .map(|(_, _, o)| o.name.as_str())
    }

    /// The provider of `host` on `port`: an override, else the built-in table.
    pub fn provider_for(&self, host: &str, port: u16) -> Option<&str> {
        self.override_for(host, port)
            .or_else(|| builtin_provider(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_hosts() {
        for (host, want) in [
            ("api.openai.com", Some("openai")),
            (
                "us-central1-aiplatform.googleapis.com",
                Some("gcp.vertex_ai"),
            ),
            ("aiplatform.googleapis.com", Some("gcp.vertex_ai")),
            ("myres.openai.azure.com", Some("azure.ai.openai")),
            ("openai.azure.com", None),
            ("myres.cognitiveservices.azure.com", Some("azure.ai.openai")),
            ("proj.services.ai.azure.com", Some("azure.ai.inference")),
            (
                "bedrock-runtime.eu-west-1.amazonaws.com",
                Some("aws.bedrock"),
            ),
            ("bedrock.eu-west-1.amazonaws.com", None),
            ("api.cohere.ai", Some("cohere")),
            ("openrouter.ai", Some("openrouter")),
            ("example.com", None),
        ] {
            assert_eq!(builtin_provider(host), want, "{host}");
        }
    }

    #[test]
    fn host_ports() {
        assert_eq!(
            split_host_port("API.OpenAI.com."),
            Ok(("api.openai.com".into(), None))
        );
        assert_eq!(split_host_port("gw:8443"), Ok(("gw".into(), Some(8443))));
        assert_eq!(
            split_host_port("[::1]:8000"),
            Ok(("::1".into(), Some(8000)))
        );
        assert_eq!(split_host_port("[::1]"), Ok(("::1".into(), None)));
        assert_eq!(split_host_port("fe80::1"), Ok(("fe80::1".into(), None)));
        assert!(split_host_port("gw:x").is_err());
    }

    #[test]
    fn overrides_parse_and_rank() {
        assert_eq!(
            ProviderConfig::parse_override("LLM-GW.internal:8443=litellm"),
            Ok(("llm-gw.internal".into(), Some(8443), "litellm".into()))
        );
        assert!(ProviderConfig::parse_override("gw").is_err());
        assert!(ProviderConfig::parse_override("gw=").is_err());
        assert!(ProviderConfig::parse_override("=x").is_err());
        assert!(ProviderConfig::parse_override("gw:99999=x").is_err());
        let c = ProviderConfig::from_specs(&[
            "gw=any-port",
            "gw:8443=tls-port",
            "*.internal=pattern",
            "api.openai.com=corp-openai",
        ])
        .expect("valid");
        assert_eq!(c.provider_for("gw", 8443), Some("tls-port"));
        assert_eq!(c.provider_for("gw", 80), Some("any-port"));
        assert_eq!(c.provider_for("a.internal", 443), Some("pattern"));
        assert_eq!(c.provider_for("api.openai.com", 443), Some("corp-openai"));
        assert_eq!(c.provider_for("api.anthropic.com", 443), Some("anthropic"));
        assert_eq!(c.provider_for("other", 443), None);
    }
}
