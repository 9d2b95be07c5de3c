//! Prompt and completion text: what the LLM stage reads of it, and for how long.
//!
//! - The completion text is always seen while a response is read (streamed deltas or the
//!   whole message), kept bounded ([`CompletionText`]: the first and the last
//!   [`ANALYSIS_BYTES`]) and analysed for a repetition loop when the exchange finishes; it
//!   is dropped with the exchange unless content capture is on for the process.
//! - With content capture on ([`ContentPolicy`]), the prompt text is taken from the request
//!   body (`messages`, `system`, `input`, `prompt`, `contents`, `systemInstruction`) and both
//!   texts go into the record, cut to `max_bytes` and with secrets redacted
//!   ([`crate::redact::redact_secrets`]) before they are stored.

use serde_json::Value;

use crate::{http::SparseBody, llm::ProcessContext, redact::redact_secrets};

/// Bytes of completion text kept from each end for analysis.
pub const ANALYSIS_BYTES: usize = 32 << 10;
/// Default `--content-max-bytes`.
pub const DEFAULT_CONTENT_MAX_BYTES: usize = 16 << 10;
/// Extra bytes kept past the limit until redaction, so a secret cut at the limit is still
/// recognised.
const REDACT_SLACK: usize = 512;

/// Which processes' content is captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentPolicy {
    /// Every process (`--capture-content`).
    pub all: bool,
    /// These executable names (`[capture_content] services = [...]`). Kubernetes namespaces
    /// and workloads will be matched here too once the process context carries them.
    pub executables: Vec<String>,
    /// Bytes kept of each of prompt and completion.
    pub max_bytes: usize,
}

impl Default for ContentPolicy {
    fn default() -> Self {
        Self {
            all: false,
            executables: Vec::new(),
            max_bytes: DEFAULT_CONTENT_MAX_BYTES,
        }
    }
}

impl ContentPolicy {
    pub fn captures(&self, ctx: &ProcessContext) -> bool {
        self.all || self.executables.contains(&ctx.executable)
    }
}

/// A completion's text as it arrives: the first and the last [`ANALYSIS_BYTES`], and the
/// total length. Only choice/candidate 0 is kept.
#[derive(Debug, Default)]
pub(crate) struct CompletionText {
    head: String,
    tail: String,
    total: usize,
}

impl CompletionText {
    pub(crate) fn push(&mut self, s: &str) {
        self.total += s.len();
        let room = ANALYSIS_BYTES.saturating_sub(self.head.len());
        if room > 0 && self.tail.is_empty() {
            let cut = floor_char(s, room);
            self.head.push_str(&s[..cut]);
            if cut == s.len() {
                return;
            }
            self.tail.push_str(&s[cut..]);
        } else {
            self.tail.push_str(s);
        }
        // Trimmed in batches, so memory stays under 1.25 × ANALYSIS_BYTES for the tail.
        if self.tail.len() > ANALYSIS_BYTES + ANALYSIS_BYTES / 4 {
            let from = ceil_char(&self.tail, self.tail.len() - ANALYSIS_BYTES);
            self.tail.drain(..from);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Whether the completion loops (judged on head and tail separately).
    pub(crate) fn repetition_loop(&self) -> bool {
        repetition_loop(&self.head) || (!self.tail.is_empty() && repetition_loop(self.tail()))
    }

    fn tail(&self) -> &str {
        let from = ceil_char(&self.tail, self.tail.len().saturating_sub(ANALYSIS_BYTES));
        &self.tail[from..]
    }

    /// The first `max` bytes, redacted; and whether it was cut.
    pub(crate) fn captured(&self, max: usize) -> (String, bool) {
        bounded_redacted(&self.head, max, self.total > max)
    }
}

/// `text` cut to `max` bytes after redaction (`cut` also when the source was longer).
fn bounded_redacted(text: &str, max: usize, cut: bool) -> (String, bool) {
    let pre = &text[..floor_char(text, max.saturating_add(REDACT_SLACK))];
    let mut out = redact_secrets(pre);
    let truncated = cut || out.len() > max || pre.len() < text.len();
    out.truncate(floor_char(&out, max));
    (out, truncated)
}

fn floor_char(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0)
}

fn ceil_char(s: &str, at: usize) -> usize {
    (at..=s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len())
}

// ---- Repetition loop ----

/// Completions shorter than this are not judged.
pub const LOOP_MIN_CHARS: usize = 400;
/// Word n-gram length.
pub const LOOP_NGRAM_WORDS: usize = 8;
/// Byte substring length.
pub const LOOP_SUBSTRING_BYTES: usize = 32;
/// The most frequent n-gram or substring occurs at least this many times...
pub const LOOP_MIN_REPEATS: usize = 8;
/// ...and at least this share of all n-gram (substring) positions repeat an earlier one.
pub const LOOP_MIN_COVERAGE: f64 = 0.5;

/// Whether `text` repeats itself far more than natural text does, judged twice: on 8-word
/// n-grams, and on 32-byte substrings (catches loops without spaces). It loops when, for
/// either, the most frequent one occurs at least [`LOOP_MIN_REPEATS`] times and at least
/// [`LOOP_MIN_COVERAGE`] of all positions hold one seen before (in a loop, everything after
/// the first period is a repeat; natural prose, even a templated list, is under 20%). Texts
/// under [`LOOP_MIN_CHARS`] bytes are not judged.
pub fn repetition_loop(text: &str) -> bool {
    if text.len() < LOOP_MIN_CHARS {
        return false;
    }
    // Structured output (JSON objects or arrays) repeats its keys by design.
    if text.trim_start().starts_with(['{', '[']) {
        return false;
    }
    let word_hashes = text.split_whitespace().map(|w| fx(w.as_bytes()));
    let words: Vec<u64> = word_hashes.collect();
    let ngrams = words
        .windows(LOOP_NGRAM_WORDS)
        .map(|w| w.iter().fold(0u64, |h, &x| mix(h, x)));
    loops(ngrams) || loops(rolling_windows(text.as_bytes(), LOOP_SUBSTRING_BYTES))
}

/// A fast non-cryptographic hash step (the keys come from text a process produced; a
/// collision can only make a loop look slightly longer).
fn mix(h: u64, x: u64) -> u64 {
    (h.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95)
}

fn fx(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |h, &b| mix(h, u64::from(b)))
}

/// Hashes of every `n`-byte window, in O(1) per window (a polynomial rolling hash).
fn rolling_windows(bytes: &[u8], n: usize) -> impl Iterator<Item = u64> + '_ {
    const BASE: u64 = 0x100_0000_01b3;
    let top = (1..n).fold(1u64, |p, _| p.wrapping_mul(BASE));
    let mut h = 0u64;
    bytes.iter().enumerate().filter_map(move |(i, &b)| {
        if i >= n {
            h = h.wrapping_sub(u64::from(bytes[i - n]).wrapping_mul(top));
        }
        h = h.wrapping_mul(BASE).wrapping_add(u64::from(b));
        (i + 1 >= n).then_some(h)
    })
}

/// Keys are hashes already: no second hash.
#[derive(Default)]
struct Identity(u64);

impl std::hash::Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fx(bytes);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

fn loops(items: impl Iterator<Item = u64>) -> bool {
    let mut counts: std::collections::HashMap<u64, u32, std::hash::BuildHasherDefault<Identity>> =
        std::collections::HashMap::default();
    let (mut total, mut repeats, mut max) = (0usize, 0usize, 0u32);
    for key in items {
        total += 1;
        let n = counts.entry(key).or_default();
        if *n > 0 {
            repeats += 1;
        }
        *n += 1;
        max = max.max(*n);
    }
    total > 0
        && max as usize >= LOOP_MIN_REPEATS
        && repeats as f64 / total as f64 >= LOOP_MIN_COVERAGE
}

// ---- Prompt text ----

/// The prompt text of a request body, role-prefixed, cut to `max` bytes and redacted, and
/// whether it was cut (or the body was only partly known).
pub(crate) fn prompt_text(body: &SparseBody, max: usize) -> Option<(String, bool)> {
    let mut out = String::new();
    let limit = max.saturating_add(REDACT_SLACK);
    let partial = match body.complete() {
        Some(whole) => {
            let v: Value = serde_json::from_slice(whole).ok()?;
            collect_prompt(&v, &mut out, limit);
            false
        }
        None => {
            for part in [&body.head[..], &body.tail[..]] {
                if !out.is_empty() && out.len() < limit {
                    out.push_str("\n[…]\n");
                }
                scan_texts(part, &mut out, limit);
            }
            true
        }
    };
    if out.is_empty() {
        return None;
    }
    let (text, cut) = bounded_redacted(&out, max, false);
    Some((text, cut || partial || out.len() >= limit))
}

fn push_bounded(out: &mut String, s: &str, limit: usize) {
    let room = limit.saturating_sub(out.len());
    out.push_str(&s[..floor_char(s, room)]);
}

fn line(out: &mut String, role: &str, text: &str, limit: usize) {
    if text.is_empty() || out.len() >= limit {
        return;
    }
    if !out.is_empty() {
        push_bounded(out, "\n", limit);
    }
    push_bounded(out, role, limit);
    push_bounded(out, ": ", limit);
    push_bounded(out, text, limit);
}

/// Text of a string, a list of strings, or content parts/blocks with `text` (OpenAI,
/// Anthropic, Gemini `parts`, Responses `input_text`).
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(text_of)
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Object(o) => o
            .get("text")
            .or_else(|| o.get("content"))
            .or_else(|| o.get("parts"))
            .map(text_of)
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn collect_prompt(v: &Value, out: &mut String, limit: usize) {
    // Anthropic `system`, Gemini `systemInstruction`, Responses `instructions`.
    for key in [
        "system",
        "systemInstruction",
        "system_instruction",
        "instructions",
    ] {
        if let Some(s) = v.get(key) {
            line(out, "system", &text_of(s), limit);
        }
    }
    // Chat messages (OpenAI, Anthropic, Ollama, Mistral, ...), Gemini `contents`, Responses
    // `input` items.
    for key in ["messages", "contents", "input"] {
        match v.get(key) {
            Some(Value::Array(items)) => {
                for m in items {
                    let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
                    let text = match m {
                        Value::Object(o) => o
                            .get("content")
                            .or_else(|| o.get("parts"))
                            .or_else(|| o.get("text"))
                            .map(text_of)
                            .unwrap_or_default(),
                        other => text_of(other),
                    };
                    line(out, role, &text, limit);
                }
            }
            Some(other @ Value::String(_)) => line(out, "user", &text_of(other), limit),
            _ => {}
        }
    }
    // Legacy completions and Ollama generate.
    if let Some(p) = v.get("prompt") {
        line(out, "user", &text_of(p), limit);
    }
}

/// Strings after `"content":` or `"text":` in a fragment of JSON (a gapped body's head or
/// tail); a string cut by the fragment's end is taken as far as it goes.
fn scan_texts(bytes: &[u8], out: &mut String, limit: usize) {
    let text = String::from_utf8_lossy(bytes);
    let mut rest: &str = &text;
    while out.len() < limit {
        let next = ["\"content\"", "\"text\""]
            .iter()
            .filter_map(|k| rest.find(k).map(|i| (i, k.len())))
            .min();
        let Some((at, klen)) = next else {
            break;
        };
        rest = &rest[at + klen..];
        let after = rest.trim_start();
        let Some(after) = after.strip_prefix(':') else {
            continue;
        };
        let Some(s) = after.trim_start().strip_prefix('"') else {
            continue;
        };
        let mut end = None;
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let raw = &s[..end.unwrap_or(s.len())];
        let raw = raw.strip_suffix('\\').unwrap_or(raw);
        let decoded: String =
            serde_json::from_str(&format!("\"{raw}\"")).unwrap_or_else(|_| raw.to_owned());
        if !decoded.is_empty() {
            if !out.is_empty() {
                push_bounded(out, "\n", limit);
            }
            push_bounded(out, &decoded, limit);
        }
        rest = &s[end.map_or(s.len(), |e| e + 1)..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NATURAL: &str = "The capital of France is Paris. It sits on the Seine in the north of the country and has been the seat of government for most of the last thousand years. Its museums, among them the Louvre and the Musée d'Orsay, draw millions of visitors every year, and its cafés, parks and bridges are known around the world. The city is divided into twenty arrondissements that spiral outwards from the centre, and each has its own character, markets and history. Paris is also a major centre of finance, fashion and science.";

    #[test]
    fn natural_text_does_not_loop() {
        assert!(NATURAL.len() >= LOOP_MIN_CHARS);
        assert!(!repetition_loop(NATURAL));
        // A list whose items share a short prefix is not a loop either.
        let list: String = [
            "preheat the oven",
            "weigh the flour",
            "sift it twice",
            "whisk the eggs",
            "melt the butter",
            "fold everything together",
            "grease the tin",
            "pour the batter",
            "bake for forty minutes",
            "let it cool on a rack",
            "dust with sugar",
            "slice and serve",
        ]
        .iter()
        .enumerate()
        .map(|(i, s)| format!("Step {}: {s}, then check the recipe card.\n", i + 1))
        .collect();
        assert!(!repetition_loop(&list), "{list}");
    }

    #[test]
    fn structured_output_is_not_a_loop() {
        let records: Vec<String> = (0..20)
            .map(|i| format!(r#"{{"id":{i},"name":"user{i}","department":"engineering","country":"United States","is_active":true}}"#))
            .collect();
        let json = format!("[{}]", records.join(","));
        assert!(json.len() >= LOOP_MIN_CHARS);
        assert!(!repetition_loop(&json));
    }

    #[test]
    fn looping_text_is_flagged() {
        let looping = format!(
            "{}{}",
            &NATURAL[..200],
            "I will now repeat the answer for clarity. ".repeat(30)
        );
        assert!(repetition_loop(&looping));
        // A loop without spaces.
        assert!(repetition_loop(&format!(
            "{}{}",
            &NATURAL[..100],
            "ab1".repeat(400)
        )));
        // Too short to judge.
        assert!(!repetition_loop(&"la ".repeat(50)));
    }

    #[test]
    fn completion_text_keeps_head_and_tail_bounded() {
        let mut c = CompletionText::default();
        c.push(&NATURAL.repeat(10));
        for _ in 0..5_000 {
            c.push("and again and again and again and again ");
        }
        assert!(c.head.len() <= ANALYSIS_BYTES);
        assert!(c.tail.len() <= ANALYSIS_BYTES + ANALYSIS_BYTES / 4);
        assert!(c.repetition_loop());
        let (text, cut) = c.captured(100);
        assert!(cut && text.len() <= 100);
    }

    #[test]
    fn prompt_of_each_shape() {
        let body = |s: &str| SparseBody {
            head: s.as_bytes().to_vec(),
            total_len: s.len() as u64,
            ..SparseBody::default()
        };
        let (p, cut) = prompt_text(&body(r#"{"model":"m","messages":[{"role":"system","content":"Be terse."},{"role":"user","content":[{"type":"text","text":"Hi, key sk-proj-abcdefghijklmnopqrstuvwxyz123456"}]}]}"#), 1000).expect("prompt");
        assert_eq!(p, "system: Be terse.\nuser: Hi, key [REDACTED]");
        assert!(!cut);
        let (p, _) = prompt_text(
            &body(r#"{"system":"S","messages":[{"role":"user","content":"Q"}]}"#),
            1000,
        )
        .expect("prompt");
        assert_eq!(p, "system: S\nuser: Q");
        let (p, _) = prompt_text(&body(r#"{"contents":[{"role":"user","parts":[{"text":"G"}]}],"systemInstruction":{"parts":[{"text":"S"}]}}"#), 1000).expect("prompt");
        assert_eq!(p, "system: S\nuser: G");
        let (p, _) =
            prompt_text(&body(r#"{"input":"R","instructions":"I"}"#), 1000).expect("prompt");
        assert_eq!(p, "system: I\nuser: R");
        let (p, cut) = prompt_text(&body(r#"{"prompt":"0123456789"}"#), 8).expect("prompt");
        assert_eq!((p.as_str(), cut), ("user: 01", true));
        // A gapped body: what is there, marked truncated.
        let gapped = SparseBody {
            head: br#"{"messages":[{"role":"user","content":"start of a long te"#.to_vec(),
            tail: br#"nd"},{"role":"user","content":"Summarise \"it\"."}],"model":"m"}"#.to_vec(),
            total_len: 1_000_000,
            missing: 1_000_000 - 100,
            undecodable: false,
        };
        let (p, cut) = prompt_text(&gapped, 1000).expect("prompt");
        assert!(cut);
        assert!(
            p.contains("start of a long te") && p.contains("Summarise \"it\"."),
            "{p}"
        );
    }
}
