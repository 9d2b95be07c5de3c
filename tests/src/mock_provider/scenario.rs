//! The scenario grammar: what a request's model name asks the mock to do.
//!
//! The model name is split at `-`. Tokens that match the grammar are options; every other
//! token stays in the base model name, in order. See the module documentation of
//! [`super`] for the list.

use std::time::Duration;

/// Content chunks (output tokens) when the model name does not say.
pub const DEFAULT_CHUNKS: u32 = 5;
/// Content chunks sent before a mid-stream error or a disconnect when the name does not say.
pub const DEFAULT_AFTER: u32 = 2;
/// Upper bounds, so that a stray model name cannot make the mock sleep or send for long.
const MAX_CHUNKS: u32 = 10_000;
const MAX_DELAY_MS: u64 = 60_000;

/// What one request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// The model name without the option tokens (`gpt-4o-mini-chunks3` → `gpt-4o-mini`).
    pub base_model: String,
    /// `err{STATUS}`: answer with this HTTP status and the provider's error body.
    pub status: Option<u16>,
    /// `midstream-error` (or `midstream`): a stream sends the provider's in-band error after
    /// [`Self::after`] content chunks.
    pub midstream_error: bool,
    /// `errevent`: an OpenAI Responses stream sends a top-level `error` event (instead of
    /// `response.failed`) after [`Self::after`] content chunks.
    pub error_event: bool,
    /// `disconnect`: the TCP connection is cut (no TLS `close_notify`, no terminal chunk)
    /// after [`Self::after`] content chunks (a non-streamed body: after half of it).
    pub disconnect: bool,
    /// `after{N}`.
    pub after: u32,
    /// `chunks{N}`: content chunks of a stream, and output tokens of any answer.
    pub chunks: u32,
    /// `delay{MS}`: before the first content chunk (a non-streamed answer: before the answer).
    pub delay: Duration,
    /// `gap{MS}`: between content chunks.
    pub gap: Duration,
    /// `cached{N}`: cache-read input tokens.
    pub cached: u64,
    /// `cachewrite{N}`: cache-creation input tokens (Anthropic).
    pub cache_write: u64,
    /// `reason{N}`: reasoning (thinking) output tokens.
    pub reasoning: u64,
    /// `nogzip`: never compress, whatever the client accepts.
    pub no_gzip: bool,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            base_model: String::new(),
            status: None,
            midstream_error: false,
            error_event: false,
            disconnect: false,
            after: DEFAULT_AFTER,
            chunks: DEFAULT_CHUNKS,
            delay: Duration::ZERO,
            gap: Duration::ZERO,
            cached: 0,
            cache_write: 0,
            reasoning: 0,
            no_gzip: false,
        }
    }
}

fn number<T: std::str::FromStr>(token: &str, prefix: &str) -> Option<T> {
    let digits = token.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Scenario {
    /// Parses a model name. Never fails: unknown tokens are part of the base model.
    pub fn parse(model: &str) -> Self {
        let mut sc = Self::default();
        let mut base: Vec<&str> = Vec::new();
        let mut tokens = model.split('-').peekable();
        while let Some(token) = tokens.next() {
            if token == "midstream" {
                sc.midstream_error = true;
                if tokens.peek() == Some(&"error") {
                    tokens.next();
                }
            } else if token == "errevent" {
                sc.error_event = true;
            } else if token == "disconnect" {
                sc.disconnect = true;
            } else if token == "nogzip" {
                sc.no_gzip = true;
            } else if let Some(status) =
                number::<u16>(token, "err").filter(|s| (100..=599).contains(s))
            {
                sc.status = Some(status);
            } else if let Some(v) = number::<u32>(token, "chunks") {
                sc.chunks = v.min(MAX_CHUNKS);
            } else if let Some(v) = number::<u32>(token, "after") {
                sc.after = v;
            } else if let Some(v) = number::<u64>(token, "delay") {
                sc.delay = Duration::from_millis(v.min(MAX_DELAY_MS));
            } else if let Some(v) = number::<u64>(token, "gap") {
                sc.gap = Duration::from_millis(v.min(MAX_DELAY_MS));
            } else if let Some(v) = number::<u64>(token, "cachewrite") {
                sc.cache_write = v;
            } else if let Some(v) = number::<u64>(token, "cached") {
                sc.cached = v;
            } else if let Some(v) = number::<u64>(token, "reason") {
                sc.reasoning = v;
            } else {
                base.push(token);
            }
        }
        sc.base_model = base.join("-");
        sc
    }

    /// The stream ends early (in-band error or disconnect) after this many content chunks.
    pub fn cut_after(&self) -> Option<u32> {
        (self.midstream_error || self.error_event || self.disconnect)
            .then_some(self.after.min(self.chunks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_model_names_are_untouched() {
        for name in [
            "gpt-4o-mini",
            "claude-3-5-haiku-20241022",
            "gemini-2.0-flash",
            "o1",
            "gpt-3.5-turbo-instruct",
        ] {
            let sc = Scenario::parse(name);
            assert_eq!(
                sc,
                Scenario {
                    base_model: name.to_owned(),
                    ..Scenario::default()
                }
            );
        }
    }

    #[test]
    fn options_anywhere() {
        let sc = Scenario::parse(
            "gpt-4o-mini-chunks7-delay150-gap20-cached64-reason3-midstream-error-after4-nogzip",
        );
        assert_eq!(sc.base_model, "gpt-4o-mini");
        assert_eq!(sc.chunks, 7);
        assert_eq!(sc.delay, Duration::from_millis(150));
        assert_eq!(sc.gap, Duration::from_millis(20));
        assert_eq!(sc.cached, 64);
        assert_eq!(sc.reasoning, 3);
        assert!(sc.midstream_error && sc.no_gzip && !sc.disconnect);
        assert_eq!(sc.cut_after(), Some(4));

        let sc = Scenario::parse("claude-sonnet-4-5-err529-cachewrite10-conc3");
        assert_eq!(sc.base_model, "claude-sonnet-4-5-conc3");
        assert_eq!(sc.status, Some(529));
        assert_eq!(sc.cache_write, 10);

        let sc = Scenario::parse("m-disconnect-chunks1");
        assert_eq!(
            sc.cut_after(),
            Some(1),
            "never after more chunks than there are"
        );
        // Not options: no digits, letters after digits, out-of-range status.
        assert_eq!(
            Scenario::parse("m-chunks-delay1x-err999").base_model,
            "m-chunks-delay1x-err999"
        );
    }
}
