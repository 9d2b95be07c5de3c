//! Bounding the label sets that untrusted traffic can create.
//!
//! Model names and hosts come from request and response bodies: a client (or an attacker)
//! can send a million distinct ones. Each distinct label set is a new series in every family,
//! so the number of distinct sets is capped; once the cap is reached, new sets have their
//! traffic-controlled values folded into `_OTHER`, and the fold is counted.

use std::collections::HashSet;

/// Longest label value kept; longer values are cut (and marked with `…`).
pub const MAX_LABEL_VALUE_LEN: usize = 128;
/// What overflowing values become.
pub const OTHER: &str = "_OTHER";

/// Makes a value from traffic safe for a label: printable, bounded.
pub fn sanitize_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_LABEL_VALUE_LEN + 3));
    for (count, ch) in value.chars().enumerate() {
        if count == MAX_LABEL_VALUE_LEN {
            out.push('…');
            break;
        }
        out.push(if ch.is_control() { '\u{fffd}' } else { ch });
    }
    out
}

/// Admits label sets up to a cap.
#[derive(Debug)]
pub struct CardinalityGuard {
    max_sets: usize,
    seen: HashSet<Vec<String>>,
    overflowed: u64,
}

impl CardinalityGuard {
    pub fn new(max_sets: usize) -> Self {
        Self {
            max_sets,
            seen: HashSet::new(),
            overflowed: 0,
        }
    }

    /// Returns the label values to use. `untrusted` marks the positions whose values come from
    /// traffic; those are folded into `_OTHER` when the set is new and the cap is reached.
    pub fn admit(&mut self, mut values: Vec<String>, untrusted: &[usize]) -> Vec<String> {
        if self.seen.contains(&values) {
            return values;
        }
        if self.seen.len() < self.max_sets {
            self.seen.insert(values.clone());
            return values;
        }
        self.overflowed += 1;
        for &i in untrusted {
            if let Some(v) = values.get_mut(i) {
                OTHER.clone_into(v);
            }
        }
        // The folded set itself is admitted even past the cap, so folding always converges on
        // a bounded number of sets (at most one per combination of trusted values).
        self.seen.insert(values.clone());
        values
    }

    /// Forgets the admitted sets `matches` selects (their series are being removed), freeing
    /// their place under the cap; returns them.
    pub fn forget(&mut self, matches: impl Fn(&[String]) -> bool) -> Vec<Vec<String>> {
        let gone: Vec<Vec<String>> = self.seen.iter().filter(|s| matches(s)).cloned().collect();
        for set in &gone {
            self.seen.remove(set);
        }
        gone
    }

    /// Label sets folded into `_OTHER` so far.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    pub fn distinct(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(model: &str, host: &str) -> Vec<String> {
        vec!["openai".into(), model.into(), host.into()]
    }

    #[test]
    fn a_million_models_stay_bounded() {
        let mut guard = CardinalityGuard::new(100);
        for i in 0..1_000_000 {
            let got = guard.admit(set(&format!("m{i}"), "h"), &[1, 2]);
            if i >= 100 {
                assert_eq!(got, set(OTHER, OTHER));
            }
        }
        assert_eq!(guard.distinct(), 101);
        assert_eq!(guard.overflowed(), 1_000_000 - 100);
    }

    #[test]
    fn known_sets_pass_after_the_cap() {
        let mut guard = CardinalityGuard::new(1);
        assert_eq!(guard.admit(set("a", "h"), &[1]), set("a", "h"));
        assert_eq!(guard.admit(set("b", "h"), &[1]), set(OTHER, "h"));
        assert_eq!(guard.admit(set("a", "h"), &[1]), set("a", "h"));
    }

    #[test]
    fn forgotten_sets_free_the_budget() {
        let mut guard = CardinalityGuard::new(1);
        assert_eq!(guard.admit(set("a", "h"), &[1]), set("a", "h"));
        assert_eq!(guard.forget(|s| s[1] == "a"), [set("a", "h")]);
        assert_eq!(guard.distinct(), 0);
        assert_eq!(guard.admit(set("b", "h"), &[1]), set("b", "h"));
    }

    #[test]
    fn hostile_values_are_cut_and_made_printable() {
        let long = "x".repeat(1 << 20);
        let v = sanitize_label_value(&long);
        assert_eq!(v.chars().count(), MAX_LABEL_VALUE_LEN + 1);
        assert_eq!(sanitize_label_value("gpt\n4\u{0}"), "gpt\u{fffd}4\u{fffd}");
    }
}
