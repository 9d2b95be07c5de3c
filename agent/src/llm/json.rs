//! JSON helpers: top-level fields of a body without materialising the rest of it, from a
//! whole body or from only its head and tail.
//!
//! A body known only by its first and last bytes (a 40 MB prompt with the middle not kept)
//! still has its top-level fields found exactly:
//! - the head is scanned forward from byte 0, so the nesting depth of every key is known;
//! - the tail is scanned backward from the body's last byte: a `"` is a string delimiter
//!   exactly when an even number of backslashes precede it, so strings and depth are known
//!   from the end too.
//!
//! Where the tail cannot be anchored at the body's end (an undecodable body, a backslash run
//! reaching the tail's first byte), keys are still recognised: the bytes `{"key":` or
//! `,"key":` (whitespace allowed) cannot occur inside a JSON string, because a quote there is
//! always escaped. Only their depth is unknown; such values are *loose* candidates, and the
//! caller decides (a single distinct candidate is taken, several are ambiguous).

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

/// Parses a whole JSON body. For an object, only the members whose key `keep` accepts are
/// materialised; the others are skipped. Any other top-level value is parsed whole.
pub(crate) fn pick_top_level(
    bytes: &[u8],
    keep: &dyn Fn(&str) -> bool,
) -> Result<Value, serde_json::Error> {
    let first = bytes.iter().copied().find(|b| !is_ws(*b));
    if first != Some(b'{') {
        return serde_json::from_slice(bytes);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Pick { keep }.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

struct Pick<'k> {
    keep: &'k dyn Fn(&str) -> bool,
}

impl<'de> DeserializeSeed<'de> for Pick<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Pick<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if (self.keep)(&key) {
                let v: Value = map.next_value()?;
                out.insert(key, v);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Value::Object(out))
    }
}

/// What a head/tail scan found.
#[derive(Debug, Default)]
pub(crate) struct TopLevel {
    /// Members of the top-level object, depth certain.
    pub(crate) exact: Vec<(String, Value)>,
    /// Members at an unknown depth (see the module doc).
    pub(crate) loose: Vec<(String, Value)>,
}

/// The value of one top-level key.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Resolved {
    /// Not seen (in a partial body: perhaps in the part not kept).
    Absent,
    Value(Value),
    /// Several different values could be it.
    Ambiguous,
}

impl TopLevel {
    /// From a whole, parsed body.
    pub(crate) fn from_value(v: Value) -> Self {
        let exact = match v {
            Value::Object(map) => map.into_iter().collect(),
            _ => Vec::new(),
        };
        Self {
            exact,
            loose: Vec::new(),
        }
    }

    /// The value of `key`: exact occurrences decide; without them, loose candidates that
    /// `plausible` accepts, when they all agree.
    pub(crate) fn resolve(&self, key: &str, plausible: fn(&Value) -> bool) -> Resolved {
        let agree = |it: &mut dyn Iterator<Item = &Value>| {
            let mut found: Option<&Value> = None;
            for v in it {
                match found {
                    None => found = Some(v),
                    Some(f) if f == v => {}
                    Some(_) => return Resolved::Ambiguous,
                }
            }
            found.map_or(Resolved::Absent, |v| Resolved::Value(v.clone()))
        };
        let exact = agree(&mut self.exact.iter().filter(|(k, _)| k == key).map(|(_, v)| v));
        if exact != Resolved::Absent {
            return exact;
        }
        agree(
            &mut self
                .loose
                .iter()
                .filter(|(k, v)| k == key && plausible(v))
                .map(|(_, v)| v),
        )
    }

    /// The exact members as an object (what a whole body would have given, minus what was
    /// not kept).
    pub(crate) fn exact_object(&self) -> Value {
        Value::Object(self.exact.iter().cloned().collect())
    }
}

/// Scans a partial body: `head` starts at byte 0; `tail` ends at the body's last byte when
/// `tail_at_end`. Keys `keep` rejects are not materialised.
pub(crate) fn scan_top_level(
    head: &[u8],
    tail: &[u8],
    tail_at_end: bool,
    keep: &dyn Fn(&str) -> bool,
) -> TopLevel {
    let mut out = TopLevel::default();
    scan_forward(head, keep, &mut out.exact);
    let unresolved = if tail_at_end {
        scan_backward(tail, keep, &mut out.exact)
    } else {
        tail.len()
    };
    scan_loose(tail, unresolved, keep, &mut out.loose);
    out
}

pub(crate) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(buf: &[u8], mut i: usize) -> usize {
    while i < buf.len() && is_ws(buf[i]) {
        i += 1;
    }
    i
}

/// The index just past the string starting with the quote at `start`.
fn string_end(buf: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < buf.len() {
        match buf[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The index just past the JSON value starting at `start`, if it ends inside `buf`.
fn value_end(buf: &[u8], start: usize) -> Option<usize> {
    match *buf.get(start)? {
        b'"' => string_end(buf, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while i < buf.len() {
                match buf[i] {
                    b'"' => {
                        i = string_end(buf, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            // A number or literal ends at a delimiter; at the buffer's end it may go on.
            let rel = buf[start..]
                .iter()
                .position(|&b| matches!(b, b',' | b'}' | b']') || is_ws(b))?;
            Some(start + rel)
        }
    }
}

/// If the string `buf[start..end]` is a key (a `:` follows), parses the key and, when wanted
/// and complete, its value.
fn member_at(
    buf: &[u8],
    start: usize,
    end: usize,
    keep: &dyn Fn(&str) -> bool,
) -> Option<(String, Value)> {
    let colon = skip_ws(buf, end);
    if buf.get(colon) != Some(&b':') {
        return None;
    }
    let key: String = serde_json::from_slice(&buf[start..end]).ok()?;
    if !keep(&key) {
        return None;
    }
    let vstart = skip_ws(buf, colon + 1);
    let vend = value_end(buf, vstart)?;
    let value: Value = serde_json::from_slice(&buf[vstart..vend]).ok()?;
    Some((key, value))
}

/// Depth-1 members of the object that starts `buf`.
fn scan_forward(buf: &[u8], keep: &dyn Fn(&str) -> bool, out: &mut Vec<(String, Value)>) {
    let start = skip_ws(buf, 0);
    if buf.get(start) != Some(&b'{') {
        return;
    }
    let mut depth = 0usize;
    let mut i = start;
    while i < buf.len() {
        match buf[i] {
            b'"' => {
                let Some(end) = string_end(buf, i) else {
                    return;
                };
                if depth == 1
                    && let Some(m) = member_at(buf, i, end, keep)
                {
                    out.push(m);
                }
                i = end;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return;
                }
            }
            _ => {}
        }
        i += 1;
    }
}

/// Whether the quote at `q` is preceded by an odd number of backslashes (escaped); `None`
/// when the backslash run (possibly empty) reaches the buffer's start: a byte before the
/// buffer could be one more backslash.
fn escaped(buf: &[u8], q: usize) -> Option<bool> {
    let run = buf[..q].iter().rev().take_while(|&&b| b == b'\\').count();
    if run == q {
        return None;
    }
    Some(run % 2 == 1)
}

/// Depth-1 members found scanning back from the end of `buf` (the body's last byte).
/// Returns the index before which nothing could be resolved (0 when all of it was).
fn scan_backward(buf: &[u8], keep: &dyn Fn(&str) -> bool, out: &mut Vec<(String, Value)>) -> usize {
    let Some(last) = buf.iter().rposition(|&b| !is_ws(b)) else {
        return 0;
    };
    if buf[last] != b'}' {
        return buf.len();
    }
    let mut depth = 0usize;
    let mut i = last + 1;
    while i > 0 {
        i -= 1;
        match buf[i] {
            b'}' | b']' => depth += 1,
            b'{' | b'[' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return 0;
                }
            }
            b'"' => {
                // The closing quote of a string: find its opening quote.
                let close = i;
                let open = loop {
                    let Some(q) = buf[..i].iter().rposition(|&b| b == b'"') else {
                        return close + 1;
                    };
                    match escaped(buf, q) {
                        None => return close + 1,
                        Some(true) => i = q,
                        Some(false) => break q,
                    }
                };
                if depth == 1
                    && let Some(m) = member_at(buf, open, close + 1, keep)
                {
                    out.push(m);
                }
                i = open;
            }
            _ => {}
        }
    }
    0
}

/// Members recognised by the `{"key":` / `,"key":` pattern whose key starts before `limit`.
fn scan_loose(
    buf: &[u8],
    limit: usize,
    keep: &dyn Fn(&str) -> bool,
    out: &mut Vec<(String, Value)>,
) {
    let mut i = 0;
    while i < limit.min(buf.len()) {
        if matches!(buf[i], b'{' | b',') {
            let q = skip_ws(buf, i + 1);
            if buf.get(q) == Some(&b'"')
                && let Some(end) = string_end(buf, q)
            {
                if let Some(m) = member_at(buf, q, end, keep) {
                    out.push(m);
                }
                i = q + 1;
                continue;
            }
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn all(_: &str) -> bool {
        true
    }

    fn is_str(v: &Value) -> bool {
        v.is_string()
    }

    #[test]
    fn pick_keeps_only_wanted_members() {
        let body =
            br#"{"messages":[{"role":"user","content":"hi"}],"model":"gpt-4o","stream":true}"#;
        let v = pick_top_level(body, &|k| k == "model" || k == "stream").expect("parse");
        assert_eq!(v, json!({"model":"gpt-4o","stream":true}));
        assert!(pick_top_level(b"{\"a\":1} x", &all).is_err());
        assert_eq!(
            pick_top_level(b"[1,2]", &all).expect("array"),
            json!([1, 2])
        );
    }

    #[test]
    fn head_is_scanned_with_exact_depth() {
        let head = br#"{"tools":[{"properties":{"model":"nested"}}],"model":"gpt-4o","messages":[{"content":"cut"#;
        let t = scan_top_level(head, b"", false, &all);
        assert_eq!(t.resolve("model", is_str), Resolved::Value(json!("gpt-4o")));
        assert_eq!(t.resolve("messages", |_| true), Resolved::Absent);
    }

    #[test]
    fn tail_is_scanned_backward_from_the_end() {
        // The tail starts inside a string holding escaped quotes and a fake key.
        let tail = br#"ssage \",\"model\":\"fake\" end"}],"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"tools":[{"function":{"parameters":{"properties":{"model":{"type":"string"}}}}}]}"#;
        let t = scan_top_level(b"{\"messages\":[{\"content\":\"a", tail, true, &all);
        assert_eq!(t.resolve("model", is_str), Resolved::Value(json!("gpt-4o")));
        assert_eq!(t.resolve("stream", |_| true), Resolved::Value(json!(true)));
        assert_eq!(
            t.resolve("stream_options", |_| true),
            Resolved::Value(json!({"include_usage":true}))
        );
        assert!(t.loose.is_empty(), "{:?}", t.loose);
    }

    #[test]
    fn escaped_backslashes_before_a_quote() {
        // `"a\\"` ends after the two backslashes.
        let tail = br#"x","k":"a\\","model":"m"}"#;
        let t = scan_top_level(b"", tail, true, &all);
        assert_eq!(t.resolve("k", is_str), Resolved::Value(json!("a\\")));
        assert_eq!(t.resolve("model", is_str), Resolved::Value(json!("m")));
    }

    #[test]
    fn unanchored_tail_gives_loose_candidates() {
        let tail = br#"x","properties":{"model":"a"}},"model":"b","n":1, "trunc"#;
        let t = scan_top_level(b"", tail, false, &all);
        assert!(t.exact.is_empty());
        assert_eq!(t.resolve("model", is_str), Resolved::Ambiguous);
        let tail = br#"x","properties":{"model":{"type":"string"}}},"model":"b","n":1"#;
        let t = scan_top_level(b"", tail, false, &all);
        assert_eq!(t.resolve("model", is_str), Resolved::Value(json!("b")));
    }

    #[test]
    fn quote_at_the_tail_start_stops_the_backward_scan() {
        // The first quote may be escaped by a backslash just before the tail.
        let tail = br#""model":"inner","model":"outer"}"#;
        let t = scan_top_level(b"", tail, true, &all);
        assert_eq!(t.exact, vec![("model".to_owned(), json!("outer"))]);
    }

    #[test]
    fn backslash_run_at_the_tail_start_stops_the_backward_scan() {
        let tail = br#"\\"model":"inner","model":"outer"}"#;
        let t = scan_top_level(b"", tail, true, &all);
        assert_eq!(t.exact, vec![("model".to_owned(), json!("outer"))]);
    }
}
