//! The cost stage: what each LLM call cost in USD, by token type.
//!
//! Receives: [`ExchangeRecord`](crate::llm::ExchangeRecord)s (as a
//! [`RecordEnricher`](crate::exchanges::RecordEnricher)). Emits: the same records with `cost`
//! set when the model has a price ([`Pricer`]), and the cost metric families
//! ([`CostMetrics`]). Prices come from the embedded table (`prices.toml`, with its source and
//! date) merged with an optional `--pricing FILE` of the same schema, reloaded when it changes.

mod metrics;
mod pricer;
mod table;

pub use metrics::{CostMetrics, TOKEN_TYPES};
pub use pricer::{Pricer, RELOAD_CHECK_INTERVAL};
pub use table::{EMBEDDED_PRICES, ModelPrice, PriceTable, PricingError, Rates, model_forms};

#[cfg(test)]
mod tests;
