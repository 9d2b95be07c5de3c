//! The price table: parsing (the embedded `prices.toml` and `--pricing` files share one
//! schema, documented at the top of `prices.toml`), matching a record's provider and model
//! to an entry, and the cost of a call's tokens.

use std::collections::HashMap;

use serde::Deserialize;

use crate::llm::{Cost, Tokens};

/// The embedded table.
pub const EMBEDDED_PRICES: &str = include_str!("prices.toml");

/// Why a price file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    #[error("{0}")]
    Parse(String),
    #[error("{entry}: {problem}")]
    Invalid { entry: String, problem: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSchema {
    #[serde(default)]
    model: Vec<EntrySchema>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntrySchema {
    provider: String,
    model: String,
    input: Option<f64>,
    output: Option<f64>,
    cache_read: Option<f64>,
    cache_write: Option<f64>,
    reasoning: Option<f64>,
    gpu_hour_usd: Option<f64>,
    tokens_per_hour: Option<f64>,
    #[serde(default)]
    tier: Vec<TierSchema>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierSchema {
    above_input_tokens: u64,
    input: Option<f64>,
    output: Option<f64>,
    cache_read: Option<f64>,
    cache_write: Option<f64>,
    reasoning: Option<f64>,
}

/// USD per million tokens of each type. `None`: not priced separately (see [`Rates::cost`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub input: f64,
    pub output: f64,
    pub cache_read: Option<f64>,
    pub cache_write: Option<f64>,
    pub reasoning: Option<f64>,
}

/// One entry of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelPrice {
    /// `provider/model`, as written in the table.
    pub name: String,
    pub base: Rates,
    /// Long-context tiers, ascending by threshold: `(above_input_tokens, rates)`.
    pub tiers: Vec<(u64, Rates)>,
}

const PER_TOKEN: f64 = 1e-6;

impl Rates {
    /// The cost of `t`. OpenAI/Gemini-style input counts include cached tokens, so cached ones
    /// are taken out of the input and billed at their own rates (the input rate when a cache
    /// rate is missing); reasoning tokens are part of the output and split off only when
    /// priced separately. `None` when neither input nor output is known.
    pub fn cost(&self, t: &Tokens) -> Option<Cost> {
        if t.input.is_none() && t.output.is_none() {
            return None;
        }
        let Self {
            input,
            output,
            cache_read,
            cache_write,
            reasoning,
        } = *self;
        let (mut input_usd, mut cache_read_usd, mut cache_write_usd) = (0.0, 0.0, 0.0);
        if let Some(all_in) = t.input {
            let read = t.cache_read.unwrap_or(0).min(all_in);
            let write = t.cache_write.unwrap_or(0).min(all_in - read);
            input_usd = (all_in - read - write) as f64 * input * PER_TOKEN;
            cache_read_usd = read as f64 * cache_read.unwrap_or(input) * PER_TOKEN;
            cache_write_usd = write as f64 * cache_write.unwrap_or(input) * PER_TOKEN;
        }
        let (mut output_usd, mut reasoning_usd) = (0.0, 0.0);
        if let Some(out) = t.output {
            match (reasoning, t.reasoning) {
                (Some(rate), Some(r)) => {
                    let r = r.min(out);
                    output_usd = (out - r) as f64 * output * PER_TOKEN;
                    reasoning_usd = r as f64 * rate * PER_TOKEN;
                }
                _ => output_usd = out as f64 * output * PER_TOKEN,
            }
        }
        Some(Cost {
            total_usd: input_usd + output_usd + cache_read_usd + cache_write_usd + reasoning_usd,
            input_usd,
            output_usd,
            cache_read_usd,
            cache_write_usd,
            reasoning_usd,
            priced_as: String::new(),
            estimated: t.estimated,
        })
    }
}

impl ModelPrice {
    /// The rates that apply to a call with `input_tokens` (the highest tier exceeded).
    pub fn rates_for(&self, input_tokens: Option<u64>) -> &Rates {
        let n = input_tokens.unwrap_or(0);
        self.tiers
            .iter()
            .rev()
            .find(|(above, _)| n > *above)
            .map_or(&self.base, |(_, r)| r)
    }

    pub fn cost(&self, t: &Tokens) -> Option<Cost> {
        let mut cost = self.rates_for(t.input).cost(t)?;
        cost.priced_as.clone_from(&self.name);
        Some(cost)
    }
}

/// Prices by `(provider, model)`, both lowercase.
#[derive(Clone, Debug, Default)]
pub struct PriceTable {
    entries: HashMap<(String, String), ModelPrice>,
}

fn check(entry: &str, what: &str, v: Option<f64>) -> Result<Option<f64>, PricingError> {
    match v {
        Some(x) if !x.is_finite() || x < 0.0 => Err(PricingError::Invalid {
            entry: entry.to_owned(),
            problem: format!("{what} must be a non-negative number, not {x}"),
        }),
        _ => Ok(v),
    }
}

fn entry_price(e: EntrySchema) -> Result<ModelPrice, PricingError> {
    let EntrySchema {
        provider,
        model,
        input,
        output,
        cache_read,
        cache_write,
        reasoning,
        gpu_hour_usd,
        tokens_per_hour,
        tier,
    } = e;
    let name = format!("{provider}/{model}");
    let invalid = |problem: &str| PricingError::Invalid {
        entry: name.clone(),
        problem: problem.to_owned(),
    };
    if provider.trim().is_empty() || model.trim().is_empty() {
        return Err(invalid("provider and model must not be empty"));
    }
    // A GPU-hour price becomes one per-million rate for every token.
    let per_gpu_hour = match (check(&name, "gpu_hour_usd", gpu_hour_usd)?, tokens_per_hour) {
        (None, None) => None,
        (Some(usd), Some(tph)) if tph.is_finite() && tph > 0.0 => Some(usd / tph * 1e6),
        (Some(_), Some(_)) => return Err(invalid("tokens_per_hour must be above 0")),
        _ => return Err(invalid("gpu_hour_usd and tokens_per_hour go together")),
    };
    let input = check(&name, "input", input)?.or(per_gpu_hour);
    let output = check(&name, "output", output)?.or(per_gpu_hour);
    if input.is_none() && output.is_none() {
        return Err(invalid(
            "needs `input` and/or `output` (or `gpu_hour_usd` with `tokens_per_hour`)",
        ));
    }
    let base = Rates {
        input: input.unwrap_or(0.0),
        output: output.unwrap_or(0.0),
        cache_read: check(&name, "cache_read", cache_read)?,
        cache_write: check(&name, "cache_write", cache_write)?,
        reasoning: check(&name, "reasoning", reasoning)?,
    };
    let mut tiers = Vec::with_capacity(tier.len());
    for t in tier {
        let TierSchema {
            above_input_tokens,
            input,
            output,
            cache_read,
            cache_write,
            reasoning,
        } = t;
        // A price missing from a tier is the base price.
        let rates = Rates {
            input: check(&name, "tier input", input)?.unwrap_or(base.input),
            output: check(&name, "tier output", output)?.unwrap_or(base.output),
            cache_read: check(&name, "tier cache_read", cache_read)?.or(base.cache_read),
            cache_write: check(&name, "tier cache_write", cache_write)?.or(base.cache_write),
            reasoning: check(&name, "tier reasoning", reasoning)?.or(base.reasoning),
        };
        if tiers
            .last()
            .is_some_and(|(prev, _): &(u64, Rates)| *prev >= above_input_tokens)
        {
            return Err(invalid("tiers must be in ascending above_input_tokens"));
        }
        tiers.push((above_input_tokens, rates));
    }
    Ok(ModelPrice { name, base, tiers })
}

impl PriceTable {
    /// Parses a table; the error names the line or the entry.
    pub fn parse(text: &str) -> Result<Self, PricingError> {
        let file: FileSchema = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            PricingError::Parse(match line {
                Some(l) => format!("{} (line {l})", e.message()),
                None => e.message().to_owned(),
            })
        })?;
        let mut entries = HashMap::new();
        for e in file.model {
            let key = (
                e.provider.to_ascii_lowercase(),
                e.model.to_ascii_lowercase(),
            );
            let price = entry_price(e)?;
            let name = price.name.clone();
            if entries.insert(key, price).is_some() {
                return Err(PricingError::Invalid {
                    entry: name,
                    problem: "listed twice".into(),
                });
            }
        }
        Ok(Self { entries })
    }

    /// The embedded table.
    pub fn embedded() -> Self {
        Self::parse(EMBEDDED_PRICES).expect("the embedded price table is valid (unit-tested)")
    }

    /// This table with `overrides`' entries replacing or adding to its own.
    pub fn merged(&self, overrides: &Self) -> Self {
        let mut entries = self.entries.clone();
        entries.extend(
            overrides
                .entries
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        Self { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn get(&self, provider: &str, model: &str) -> Option<&ModelPrice> {
        self.entries.get(&(provider.to_owned(), model.to_owned()))
    }

    /// The entry for a call to `model` at `provider` (see [`lookup_keys`]).
    pub fn lookup(&self, provider: &str, model: &str) -> Option<&ModelPrice> {
        self.lookup_with(provider, model, true)
    }

    /// Like [`Self::lookup`], but only `provider`'s own entries: for endpoints nobody named
    /// (a self-hosted server serving `mistral-small` is not billed at Mistral's list price).
    pub fn lookup_own(&self, provider: &str, model: &str) -> Option<&ModelPrice> {
        self.lookup_with(provider, model, false)
    }

    fn lookup_with(&self, provider: &str, model: &str, aliases: bool) -> Option<&ModelPrice> {
        let provider = provider.to_ascii_lowercase();
        let model = model.trim().to_ascii_lowercase();
        let forms = model_forms(&model);
        let mut candidates = provider_candidates(&provider, &forms);
        if !aliases {
            candidates.truncate(1);
        }
        for p in candidates {
            for m in &forms {
                if let Some(price) = self.get(p, m) {
                    return Some(price);
                }
            }
        }
        None
    }
}

/// The provider whose list prices a model family has, by its name.
fn family_provider(model: &str) -> Option<&'static str> {
    let m = model;
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| m.starts_with(p));
    if starts(&["gpt-", "chatgpt-", "text-embedding-", "davinci", "babbage"])
        || (m.len() > 1
            && m.starts_with('o')
            && m.as_bytes()[1].is_ascii_digit()
            && !m.contains("llama"))
    {
        Some("openai")
    } else if m.starts_with("claude") {
        Some("anthropic")
    } else if starts(&["gemini", "text-embedding-00", "gemma"]) {
        Some("gcp.gemini")
    } else if starts(&[
        "mistral",
        "codestral",
        "ministral",
        "magistral",
        "devstral",
        "pixtral",
    ]) {
        Some("mistral_ai")
    } else if m.starts_with("deepseek") {
        Some("deepseek")
    } else if m.starts_with("grok") {
        Some("x_ai")
    } else {
        None
    }
}

/// Providers to look in, in order: the record's own (a `--pricing` entry for it wins), then
/// the one whose prices it uses: Azure OpenAI → openai; Vertex AI → gcp.gemini, or anthropic
/// for Claude; Bedrock, and any provider the table does not know (gateways, `--provider`
/// names), → the model family's provider.
fn provider_candidates<'a>(provider: &'a str, forms: &[String]) -> Vec<&'a str> {
    let mut out = vec![provider];
    let family = forms.iter().find_map(|m| family_provider(m));
    let alias = match provider {
        "azure.ai.openai" => Some("openai"),
        "gcp.vertex_ai" => Some(family.unwrap_or("gcp.gemini")),
        "openai" | "anthropic" | "gcp.gemini" | "mistral_ai" | "deepseek" | "groq" | "x_ai" => None,
        _ => family,
    };
    out.extend(alias);
    out
}

/// A trailing qualifier that does not change the model family: a date, a revision, `latest`,
/// `preview`, `exp`, a Bedrock `-v1` or `:0`. Returns the name without it.
fn strip_qualifier(m: &str) -> Option<&str> {
    fn digits(s: &str, n: usize) -> bool {
        s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
    }
    if let Some((head, tail)) = m.rsplit_once(':')
        && digits(tail, tail.len())
        && !tail.is_empty()
    {
        return Some(head);
    }
    if let Some((head, tail)) = m.rsplit_once('@') {
        return Some(head).filter(|_| !tail.is_empty());
    }
    let (head, last) = m.rsplit_once('-')?;
    let month_day = |mm: &str, dd: &str| {
        digits(mm, 2)
            && digits(dd, 2)
            && (1..=12).contains(&mm.parse::<u8>().unwrap_or(0))
            && (1..=31).contains(&dd.parse::<u8>().unwrap_or(0))
    };
    // YYYY-MM-DD, MM-DD (after preview/exp), MM-YYYY
    if let Some((head2, mid)) = head.rsplit_once('-') {
        if let Some((head3, year)) = head2.rsplit_once('-')
            && digits(year, 4)
            && month_day(mid, last)
        {
            return Some(head3);
        }
        if month_day(mid, last) && (head2.ends_with("preview") || head2.ends_with("exp")) {
            return Some(head2);
        }
        if digits(last, 4) && digits(mid, 2) && (1..=12).contains(&mid.parse::<u8>().unwrap_or(0)) {
            return Some(head2);
        }
    }
    let plain = digits(last, 8)
        || digits(last, 4)
        || digits(last, 3)
        || matches!(last, "latest" | "preview" | "exp" | "experimental")
        || (last.len() >= 2
            && last.starts_with('v')
            && last[1..].bytes().all(|b| b.is_ascii_digit()));
    plain.then_some(head)
}

/// The names to try for a model, most specific first: as given; without a path prefix
/// (`models/`, `publishers/anthropic/models/`, a gateway's `openai/`); without a Bedrock
/// region (`us.`, `eu.`, `apac.`, `global.`, ...) and vendor prefix (`anthropic.`); then
/// with trailing date/revision qualifiers cut one at a time (`gpt-4o-2024-08-06` → `gpt-4o`,
/// `claude-sonnet-4-5@20250929`, `anthropic.claude-sonnet-4-5-20250929-v1:0`,
/// `gemini-2.0-flash-001`, `mistral-large-latest`). This is the only prefix matching: what is
/// cut must be a qualifier, never a name token, so `gpt-4o-mini` can never become `gpt-4o`
/// and `claude-opus-4-6` never `claude-opus-4`.
pub fn model_forms(model: &str) -> Vec<String> {
    let mut forms = vec![model.to_owned()];
    let mut m = model;
    if let Some((_, tail)) = m.rsplit_once('/') {
        m = tail;
        forms.push(m.to_owned());
    }
    // Bedrock: `[region.]vendor.model-vN:M`.
    if let Some((region, rest)) = m.split_once('.')
        && matches!(
            region,
            "us" | "eu" | "apac" | "global" | "jp" | "au" | "ca" | "us-gov"
        )
    {
        m = rest;
    }
    if let Some((vendor, rest)) = m.split_once('.')
        && matches!(
            vendor,
            "anthropic"
                | "openai"
                | "mistral"
                | "deepseek"
                | "meta"
                | "amazon"
                | "cohere"
                | "google"
        )
    {
        m = rest;
    }
    forms.push(m.to_owned());
    while let Some(shorter) = strip_qualifier(m) {
        if shorter.is_empty() {
            break;
        }
        m = shorter;
        forms.push(m.to_owned());
    }
    forms.dedup();
    forms
}
