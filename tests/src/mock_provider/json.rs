//! Ordered JSON with the whitespace the real services use.
//!
//! `serde_json::Value` sorts object keys (the workspace does not enable `preserve_order`, and
//! turning it on here would change the agent's build through feature unification), so the mock
//! builds its bodies with this small tree instead: keys stay in the order the real APIs send
//! them, and each provider's body is rendered in its own style.

use std::fmt::Write as _;

/// A JSON value whose objects keep their key order.
#[derive(Clone, Debug)]
pub(crate) enum J {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(&'static str, J)>),
}

/// How a body is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    /// `{"a":1,"b":[2,3]}` (OpenAI and Anthropic stream events, Anthropic bodies).
    Compact,
    /// `{"a": 1, "b": [2, 3]}` (Python's `json.dumps` default; Anthropic's `ping`).
    Spaced,
    /// `{"a": 1,"b": [2,3]}` (Google's one-line SSE events).
    Google,
    /// Multi-line with this many spaces per level (OpenAI bodies: 2, OpenAI errors: 4,
    /// Google bodies: 2).
    Pretty(usize),
}

pub(crate) fn s(v: impl Into<String>) -> J {
    J::Str(v.into())
}

pub(crate) fn n(v: u64) -> J {
    J::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

pub(crate) fn obj(fields: Vec<(&'static str, J)>) -> J {
    J::Obj(fields)
}

pub(crate) fn arr(items: Vec<J>) -> J {
    J::Arr(items)
}

/// `Some(v)` as `v`, `None` as `null`.
pub(crate) fn opt_s(v: Option<&str>) -> J {
    v.map_or(J::Null, s)
}

impl J {
    pub(crate) fn render(&self, style: Style) -> String {
        let mut out = String::new();
        self.write(style, 0, &mut out);
        out
    }

    fn write(&self, style: Style, depth: usize, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Int(i) => {
                let _ = write!(out, "{i}");
            }
            // `{:?}` keeps a fractional part on whole numbers (`1.0`), as the services do.
            J::Float(f) => {
                let _ = write!(out, "{f:?}");
            }
            J::Str(v) => out.push_str(&serde_json::to_string(v).unwrap_or_default()),
            J::Arr(items) => {
                if items.is_empty() {
                    out.push_str("[]");
                    return;
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    separator(style, depth + 1, i == 0, out);
                    item.write(style, depth + 1, out);
                }
                close(style, depth, out);
                out.push(']');
            }
            J::Obj(fields) => {
                if fields.is_empty() {
                    out.push_str("{}");
                    return;
                }
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    separator(style, depth + 1, i == 0, out);
                    out.push_str(&serde_json::to_string(key).unwrap_or_default());
                    out.push_str(if style == Style::Compact { ":" } else { ": " });
                    value.write(style, depth + 1, out);
                }
                close(style, depth, out);
                out.push('}');
            }
        }
    }
}

/// What goes before an element of an array or object.
fn separator(style: Style, depth: usize, first: bool, out: &mut String) {
    match style {
        Style::Compact | Style::Google => {
            if !first {
                out.push(',');
            }
        }
        Style::Spaced => {
            if !first {
                out.push_str(", ");
            }
        }
        Style::Pretty(indent) => {
            if !first {
                out.push(',');
            }
            out.push('\n');
            out.push_str(&" ".repeat(indent * depth));
        }
    }
}

/// What goes before the closing bracket of a non-empty array or object.
fn close(style: Style, depth: usize, out: &mut String) {
    if let Style::Pretty(indent) = style {
        out.push('\n');
        out.push_str(&" ".repeat(indent * depth));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> J {
        obj(vec![
            ("z", s("a\"b")),
            ("a", arr(vec![n(1), J::Float(1.0), J::Null])),
            ("e", arr(vec![])),
            ("o", obj(vec![("t", J::Bool(true))])),
        ])
    }

    #[test]
    fn styles() {
        let v = sample();
        assert_eq!(
            v.render(Style::Compact),
            r#"{"z":"a\"b","a":[1,1.0,null],"e":[],"o":{"t":true}}"#
        );
        assert_eq!(
            v.render(Style::Spaced),
            r#"{"z": "a\"b", "a": [1, 1.0, null], "e": [], "o": {"t": true}}"#
        );
        assert_eq!(
            v.render(Style::Google),
            r#"{"z": "a\"b","a": [1,1.0,null],"e": [],"o": {"t": true}}"#
        );
        assert_eq!(
            v.render(Style::Pretty(2)),
            "{\n  \"z\": \"a\\\"b\",\n  \"a\": [\n    1,\n    1.0,\n    null\n  ],\n  \"e\": [],\n  \"o\": {\n    \"t\": true\n  }\n}"
        );
        // Every style is valid JSON with the same content.
        for style in [
            Style::Compact,
            Style::Spaced,
            Style::Google,
            Style::Pretty(4),
        ] {
            let parsed: serde_json::Value =
                serde_json::from_str(&v.render(style)).expect("valid JSON");
            assert_eq!(parsed["o"]["t"], true);
        }
    }
}
