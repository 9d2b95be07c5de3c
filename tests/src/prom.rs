//! A small parser for the Prometheus text exposition format, so tests compare series by name
//! and label values instead of matching strings (label order, escaping and number formats are
//! the encoder's business).

use std::collections::BTreeMap;

use anyhow::{Context as _, anyhow, bail};

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }

    /// `name{a="1",b="2"}`, labels sorted, for messages.
    pub fn series(&self) -> String {
        series_string(&self.name, &self.labels)
    }
}

/// `name{a="1",b="2"}` with the labels in map order.
pub fn series_string(name: &str, labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// Parses every sample line; comments and blank lines are skipped.
pub fn parse(text: &str) -> anyhow::Result<Vec<Sample>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| parse_line(l).with_context(|| format!("line {}: {l:?}", i + 1)))
        .collect()
}

fn parse_line(line: &str) -> anyhow::Result<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or_else(|| anyhow!("no value"))?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end = loop {
            // Label name up to '=', or the closing brace.
            let Some(&(start, c)) = chars.peek() else {
                bail!("unterminated label set");
            };
            if c == '}' {
                break start + 1;
            }
            if c == ',' || c.is_whitespace() {
                chars.next();
                continue;
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                bail!("label {key} has no quoted value");
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(other) => value.push(other),
                        None => bail!("dangling escape"),
                    },
                    other => value.push(other),
                }
            }
            if !closed {
                bail!("unterminated value of label {key}");
            }
            labels.insert(key.trim().to_owned(), value);
        };
        rest = &after[end..];
    }
    let mut fields = rest.split_whitespace();
    let raw = fields.next().ok_or_else(|| anyhow!("no value"))?;
    let value = match raw {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().with_context(|| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_and_values() {
        let text = "# HELP x help\n# TYPE x counter\n\
            x 3\n\
            y_bucket{b=\"2\",a=\"q\\\"uote\\\\ \\n,}\",le=\"+Inf\"} 1e3\n\
            z{} NaN\n\
            w{a=\"\"} -Inf 1700000000\n";
        let samples = parse(text).expect("parses");
        assert_eq!(samples.len(), 4);
        assert_eq!(samples[0].name, "x");
        assert!(samples[0].labels.is_empty());
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[1].label("a"), "q\"uote\\ \n,}");
        assert_eq!(samples[1].label("b"), "2");
        assert_eq!(samples[1].label("le"), "+Inf");
        assert_eq!(samples[1].value, 1000.0);
        assert!(samples[2].value.is_nan());
        assert_eq!(samples[3].value, f64::NEG_INFINITY);
        assert_eq!(samples[3].label("a"), "");
        assert_eq!(samples[3].label("missing"), "");
        assert_eq!(
            samples[1].series(),
            "y_bucket{a=\"q\\\"uote\\\\ \\n,}\",b=\"2\",le=\"+Inf\"}"
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("x{a=\"1\" 2").is_err());
        assert!(parse("x{a=1} 2").is_err());
        assert!(parse("x").is_err());
        assert!(parse("x abc").is_err());
    }
}
