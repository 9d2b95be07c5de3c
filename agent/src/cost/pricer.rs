//! [`Pricer`]: sets `record.cost` from the price table, and reloads a `--pricing` file when
//! it changes.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use prometheus::{IntCounter, Registry};

use super::table::{PriceTable, PricingError};
use crate::{exchanges::RecordEnricher, llm::ExchangeRecord};

/// How often `enrich` looks at the `--pricing` file's modification time, at most.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(3);

/// What identifies a version of the file: modification time and size.
type Stamp = (Option<SystemTime>, u64);

struct Overrides {
    path: PathBuf,
    stamp: Stamp,
    last_check: Instant,
    check_interval: Duration,
}

pub struct Pricer {
    embedded: PriceTable,
    table: PriceTable,
    overrides: Option<Overrides>,
    reload_errors: IntCounter,
}

fn stamp(path: &Path) -> Result<Stamp, std::io::Error> {
    let meta = fs::metadata(path)?;
    Ok((meta.modified().ok(), meta.len()))
}

fn load(path: &Path) -> Result<PriceTable, PricingError> {
    PriceTable::parse(&fs::read_to_string(path)?)
}

impl Pricer {
    /// The embedded table, overridden by `pricing` when given; registers
    /// `tokentap_pricing_reload_errors_total` in `registry`. Fails on an unreadable or
    /// invalid file.
    pub fn new(pricing: Option<&Path>, registry: &Registry) -> Result<Self, PricingError> {
        let reload_errors = IntCounter::new(
            "tokentap_pricing_reload_errors_total",
            "Changed --pricing files that were refused (the previous prices stayed in force).",
        )
        .expect("valid counter");
        registry
            .register(Box::new(reload_errors.clone()))
            .expect("registered once");
        let embedded = PriceTable::embedded();
        let (table, overrides) = match pricing {
            None => (embedded.clone(), None),
            Some(path) => {
                let stamp = stamp(path)?;
                let table = embedded.merged(&load(path)?);
                let overrides = Overrides {
                    path: path.to_owned(),
                    stamp,
                    last_check: Instant::now(),
                    check_interval: RELOAD_CHECK_INTERVAL,
                };
                (table, Some(overrides))
            }
        };
        Ok(Self {
            embedded,
            table,
            overrides,
            reload_errors,
        })
    }

    /// Looks at the file every `interval` instead (tests).
    pub fn with_check_interval(mut self, interval: Duration) -> Self {
        if let Some(o) = &mut self.overrides {
            o.check_interval = interval;
        }
        self
    }

    pub fn table(&self) -> &PriceTable {
        &self.table
    }

    /// Reloads the file if it changed since it was last read (at most every check interval).
    /// A bad file keeps the previous table, logs why once and counts it; it is read again only
    /// when it changes again.
    pub fn reload_if_changed(&mut self) {
        let Some(o) = &mut self.overrides else {
            return;
        };
        if o.last_check.elapsed() < o.check_interval {
            return;
        }
        o.last_check = Instant::now();
        let now = match stamp(&o.path) {
            Ok(s) => s,
            Err(e) => (None, e.raw_os_error().unwrap_or(-1) as u64),
        };
        if now == o.stamp {
            return;
        }
        o.stamp = now;
        match load(&o.path) {
            Ok(t) => {
                self.table = self.embedded.merged(&t);
                log::info!(
                    "--pricing {}: reloaded ({} prices in force)",
                    o.path.display(),
                    self.table.len()
                );
            }
            Err(e) => {
                self.reload_errors.inc();
                log::warn!(
                    "--pricing {}: keeping the previous prices: {e}",
                    o.path.display()
                );
            }
        }
    }

    /// Prices a record by its response model, else its request model. A call to a host no one
    /// named (its provider is the host itself: a self-hosted server) is priced only by a
    /// `--pricing` entry for that host, never by a model family's list price.
    pub fn price(&self, r: &ExchangeRecord) -> Option<crate::llm::Cost> {
        let model = r.response_model.as_deref().or(r.request_model.as_deref())?;
        let unnamed = !r.server_address.is_empty() && r.provider == r.server_address;
        let lookup = |m: &str| {
            if unnamed {
                self.table.lookup_own(&r.provider, m)
            } else {
                self.table.lookup(&r.provider, m)
            }
        };
        let price = lookup(model).or_else(|| {
            // A response model the table lacks, while the request's has a price (an alias the
            // provider resolved to a snapshot we cannot normalise).
            r.request_model
                .as_deref()
                .filter(|m| Some(*m) != r.response_model.as_deref())
                .and_then(lookup)
        })?;
        price.cost(&r.tokens)
    }
}

impl RecordEnricher for Pricer {
    fn enrich(&mut self, record: &mut ExchangeRecord) {
        self.reload_if_changed();
        record.cost = self.price(record);
    }
}

#[cfg(test)]
mod unnamed_host_tests {
    use super::*;
    use crate::llm::{ExchangeRecord, Tokens};

    #[test]
    fn a_self_hosted_model_is_not_billed_at_list_price() {
        let pricer = Pricer::new(None, &Registry::new()).expect("embedded table");
        let mut r = ExchangeRecord {
            provider: "vllm.internal".into(),
            server_address: "vllm.internal".into(),
            request_model: Some("mistral-small".into()),
            tokens: Tokens {
                input: Some(1000),
                output: Some(100),
                ..Tokens::default()
            },
            ..ExchangeRecord::default()
        };
        assert!(
            pricer.price(&r).is_none(),
            "an unnamed host is not priced by family"
        );
        // Named by --provider (a gateway), the family's price applies.
        r.provider = "litellm".into();
        assert!(pricer.price(&r).is_some());
    }
}
