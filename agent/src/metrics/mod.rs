//! Metric families fed by exchange records: the GenAI contract ([`genai`]) and the guard that
//! keeps untrusted label values bounded ([`cardinality`]).

pub mod cardinality;
pub mod genai;
