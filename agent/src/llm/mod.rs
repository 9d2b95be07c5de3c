//! LLM semantics: from HTTP exchanges to [`ExchangeRecord`]s.
//!
//! Receives: [`crate::http::HttpEvent`]s. Emits: one [`ExchangeRecord`] per finished exchange
//! with an LLM API. Provider knowledge lives in one file per provider under `providers/`:
//! host matching, request fields, response and stream usage, error shapes.

pub mod record;

pub use record::*;
