//! HTTP/1.1 reconstruction from connection byte streams.
//!
//! Receives: [`crate::stream::StreamItem`]s of one connection (data at exact offsets, gaps,
//! close), both directions. Emits: [`HttpEvent`]s in order per connection: a complete request
//! (head and a bounded [`SparseBody`]), then its response head, decoded response body chunks
//! with their capture times, and the response end.
//!
//! Contract of each sub-stage (after Pixie's protocol parsers): find the frame boundary, parse
//! one frame into a state (invalid, needs more data, ignored, end of stream, success), stitch
//! request and response frames into exchanges. Nothing here knows about LLM APIs.
//!
//! Credentials never leave this module: [`Headers`] drops `authorization`,
//! `proxy-authorization`, `x-api-key`, `api-key`, `x-goog-api-key`, `cookie`, `set-cookie` when
//! a head is parsed, and [`redact_query`] removes key-like query parameters from targets.

mod body;
mod body_decoder;
mod chunked;
mod h2;
mod parser;
mod sparse;
mod tracker;
pub mod types;

pub use tracker::{HttpConfig, HttpStats, HttpTracker};
pub use types::*;
