//! Masking credentials in raw captured bytes, for anything that shows plaintext to people
//! (`tokentap capture`).
//!
//! Receives: one direction of one connection, in order, in pieces cut anywhere. Emits: the same
//! bytes with the values of credential headers (`Authorization`, `x-api-key`, ...) and of
//! credential query parameters (`?key=`, `api_key=`, ...) replaced by `*`. Lengths never change,
//! so stream offsets stay exact. State carries across pieces, so a header split between two
//! TLS records is still masked.
//!
//! HTTP/2 (a direction that starts with the client preface): header blocks are HPACK-coded,
//! often Huffman, so a credential cannot be found by name in the bytes. Every HEADERS,
//! PUSH_PROMISE and CONTINUATION payload is masked whole, and after a gap (the frame
//! boundaries are lost) everything is.

use crate::http::CREDENTIAL_QUERY_PARAMS;

/// Longest header name or parameter name remembered while matching.
const MAX_NAME: usize = 32;

/// Redaction state of one direction of one connection.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// Lowercased start of the current line, until its first `:` (header names).
    line_start: Vec<u8>,
    /// The line is past its first `:` or too long to be a credential header's name.
    line_start_done: bool,
    /// Lowercased current query-parameter name (after `?` or `&`).
    param: Vec<u8>,
    in_param_name: bool,
    mask: Mask,
    /// Bytes of the direction seen so far, counted up to the preface's length.
    seen: usize,
    /// The direction is HTTP/2: frame-by-frame masking.
    h2: Option<H2Frames>,
}

/// The HTTP/2 client connection preface.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Where the walk through HTTP/2 frames is.
#[derive(Clone, Debug, Default)]
struct H2Frames {
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u32,
    mask_payload: bool,
    /// A gap hid frame boundaries: everything from here on is masked.
    lost: bool,
}

impl H2Frames {
    fn step(&mut self, b: &mut u8) {
        if self.lost {
            *b = b'*';
            return;
        }
        if self.payload_left > 0 {
            if self.mask_payload {
                *b = b'*';
            }
            self.payload_left -= 1;
            return;
        }
        self.header[self.header_len] = *b;
        self.header_len += 1;
        if self.header_len == self.header.len() {
            self.header_len = 0;
            let h = self.header;
            self.payload_left = u32::from_be_bytes([0, h[0], h[1], h[2]]);
            // HEADERS, PUSH_PROMISE, CONTINUATION: HPACK header blocks.
            self.mask_payload = matches!(h[3], 0x1 | 0x5 | 0x9);
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Mask {
    #[default]
    Off,
    /// Until the end of the line.
    HeaderValue,
    /// Until `&`, space, `#` or the end of the line.
    ParamValue,
}

fn is_credential_header(name: &[u8]) -> bool {
    std::str::from_utf8(name.trim_ascii()).is_ok_and(crate::http::is_credential_header)
}

fn is_credential_param(name: &[u8]) -> bool {
    CREDENTIAL_QUERY_PARAMS.iter().any(|p| p.as_bytes() == name)
}

impl Redactor {
    /// Masks credentials in `bytes` in place.
    pub fn redact(&mut self, bytes: &mut [u8]) {
        for b in bytes.iter_mut() {
            if let Some(h2) = &mut self.h2 {
                h2.step(b);
                continue;
            }
            if self.seen < H2_PREFACE.len() {
                if H2_PREFACE[self.seen] != *b {
                    self.seen = H2_PREFACE.len() + 1;
                } else {
                    self.seen += 1;
                    if self.seen == H2_PREFACE.len() {
                        self.h2 = Some(H2Frames::default());
                        continue;
                    }
                }
            }
            let c = *b;
            if c == b'\n' {
                self.end_line();
                continue;
            }
            match self.mask {
                Mask::HeaderValue => {
                    if c != b'\r' {
                        *b = b'*';
                    }
                    continue;
                }
                Mask::ParamValue => {
                    if matches!(c, b'&' | b' ' | b'#' | b'\r') {
                        self.mask = Mask::Off;
                    } else {
                        *b = b'*';
                        continue;
                    }
                }
                Mask::Off => {}
            }
            self.track_header_name(c);
            self.track_param(c);
        }
    }

    /// Bytes of this direction were not captured: in HTTP/2 the frame boundaries are lost.
    pub fn gap(&mut self) {
        if let Some(h2) = &mut self.h2 {
            h2.lost = true;
        }
        // A direction that was not seen from its start cannot be told to be HTTP/2 later.
        self.seen = self.seen.max(H2_PREFACE.len() + 1);
    }

    fn end_line(&mut self) {
        self.line_start.clear();
        self.line_start_done = false;
        self.param.clear();
        self.in_param_name = false;
        self.mask = Mask::Off;
    }

    fn track_header_name(&mut self, c: u8) {
        if self.line_start_done {
            return;
        }
        if c == b':' {
            self.line_start_done = true;
            if is_credential_header(&self.line_start) {
                self.mask = Mask::HeaderValue;
            }
        } else if self.line_start.len() < MAX_NAME {
            self.line_start.push(c.to_ascii_lowercase());
        } else {
            self.line_start_done = true;
        }
    }

    fn track_param(&mut self, c: u8) {
        match c {
            b'?' | b'&' => {
                self.param.clear();
                self.in_param_name = true;
            }
            b'=' if self.in_param_name => {
                self.in_param_name = false;
                if is_credential_param(&self.param) {
                    self.mask = Mask::ParamValue;
                }
            }
            b' ' | b'#' | b'\r' => self.in_param_name = false,
            _ if self.in_param_name => {
                if self.param.len() < MAX_NAME {
                    self.param.push(c.to_ascii_lowercase());
                } else {
                    self.in_param_name = false;
                }
            }
            _ => {}
        }
    }
}

/// What a secret becomes.
pub const REDACTED: &str = "[REDACTED]";

/// A secret format: a literal prefix, the bytes its body may hold, and the body's least length.
struct SecretPattern {
    prefix: &'static str,
    body: fn(u8) -> bool,
    min_body: usize,
    /// Keep the prefix (`Bearer `) and replace only the body.
    keep_prefix: bool,
}

fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn upper_alnum(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}

fn slack_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

fn jwt_byte(b: u8) -> bool {
    token_byte(b) || b == b'.'
}

fn bearer_byte(b: u8) -> bool {
    token_byte(b) || matches!(b, b'.' | b'~' | b'+' | b'/' | b'=')
}

/// Known key and token formats. `sk-` covers OpenAI (`sk-`, `sk-proj-`), Anthropic
/// (`sk-ant-`) and the many providers that copied the form (DeepSeek, OpenRouter `sk-or-`);
/// also Stripe, Hugging Face, Google OAuth, GitHub, Slack tokens and HTTP Basic credentials.
/// Keys with no recognisable shape (Azure, Mistral, Cohere) are not caught here; they are
/// dropped with their headers before any text is kept.
const SECRET_PATTERNS: &[SecretPattern] = &[
    SecretPattern {
        prefix: "sk-",
        body: token_byte,
        min_body: 16,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "AIza",
        body: token_byte,
        min_body: 30,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "AKIA",
        body: upper_alnum,
        min_body: 16,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "ASIA",
        body: upper_alnum,
        min_body: 16,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "ghp_",
        body: token_byte,
        min_body: 20,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "gho_",
        body: token_byte,
        min_body: 20,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "ghs_",
        body: token_byte,
        min_body: 20,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "github_pat_",
        body: token_byte,
        min_body: 20,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "xoxb-",
        body: slack_byte,
        min_body: 10,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "xoxp-",
        body: slack_byte,
        min_body: 10,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "gsk_",
        body: token_byte,
        min_body: 20,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "xai-",
        body: token_byte,
        min_body: 20,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "eyJ",
        body: jwt_byte,
        min_body: 20,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "sk_live_",
        body: token_byte,
        min_body: 16,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "rk_live_",
        body: token_byte,
        min_body: 16,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "sk_test_",
        body: token_byte,
        min_body: 16,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "hf_",
        body: token_byte,
        min_body: 20,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "ya29.",
        body: jwt_byte,
        min_body: 20,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "ghu_",
        body: token_byte,
        min_body: 20,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "ghr_",
        body: token_byte,
        min_body: 20,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "xapp-",
        body: slack_byte,
        min_body: 10,
        keep_prefix: false,
    },
    SecretPattern {
        prefix: "Basic ",
        body: bearer_byte,
        min_body: 8,
        keep_prefix: true,
    },
    SecretPattern {
        prefix: "basic ",
        body: bearer_byte,
        min_body: 8,
        keep_prefix: true,
    },
    SecretPattern {
        prefix: "Bearer ",
        body: bearer_byte,
        min_body: 8,
        keep_prefix: true,
    },
    SecretPattern {
        prefix: "bearer ",
        body: bearer_byte,
        min_body: 8,
        keep_prefix: true,
    },
];

/// `text` with API keys and tokens replaced by `[REDACTED]`. A secret must start at a word
/// boundary (so `task-…` is not `sk-…`) and have its format's least length.
pub fn redact_secrets(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let found = boundary
            .then(|| {
                SECRET_PATTERNS.iter().find_map(|p| {
                    let rest = bytes[i..].strip_prefix(p.prefix.as_bytes())?;
                    let n = rest.iter().take_while(|b| (p.body)(**b)).count();
                    (n >= p.min_body).then_some((p, p.prefix.len() + n))
                })
            })
            .flatten();
        match found {
            Some((p, len)) => {
                out.push_str(&text[copied..i]);
                if p.keep_prefix {
                    out.push_str(p.prefix);
                }
                out.push_str(REDACTED);
                i += len;
                copied = i;
            }
            None => i += 1,
        }
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod h2_tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).expect("small").to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, 0x4, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn http2_header_blocks_are_masked_whole_and_data_is_kept() {
        let mut stream = H2_PREFACE.to_vec();
        stream.extend(frame(0x4, &[]));
        // A literal (not Huffman) authorization header, as an HPACK encoder may write it.
        stream.extend(frame(
            0x1,
            b"\x40\x0dauthorization\x12Bearer sk-abcdef123456",
        ));
        stream.extend(frame(0x9, b"x-api-key: sk-ant-0123456789"));
        stream.extend(frame(0x0, b"{\"model\":\"gpt-4o\"}"));
        for cut in 0..stream.len() {
            let mut r = Redactor::default();
            let (mut a, mut b) = (stream[..cut].to_vec(), stream[cut..].to_vec());
            r.redact(&mut a);
            r.redact(&mut b);
            a.extend(b);
            assert_eq!(a.len(), stream.len());
            let text = String::from_utf8_lossy(&a);
            assert!(!text.contains("sk-"), "cut {cut}: {text}");
            assert!(text.contains("{\"model\":\"gpt-4o\"}"), "cut {cut}: {text}");
            assert!(text.starts_with("PRI * HTTP/2.0"));
        }
    }

    #[test]
    fn after_a_gap_an_http2_direction_is_masked_entirely() {
        let mut r = Redactor::default();
        let mut start = H2_PREFACE.to_vec();
        r.redact(&mut start);
        r.gap();
        let mut rest = b"authorization: Bearer sk-abcdef".to_vec();
        r.redact(&mut rest);
        assert!(rest.iter().all(|&b| b == b'*'));
    }

    #[test]
    fn http1_is_unchanged_by_the_preface_check() {
        let mut r = Redactor::default();
        let mut req = b"POST /v1 HTTP/1.1\r\nAuthorization: Bearer sk-abc\r\n\r\n".to_vec();
        r.redact(&mut req);
        let text = String::from_utf8_lossy(&req);
        assert!(
            !text.contains("sk-abc") && text.starts_with("POST /v1"),
            "{text}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &[u8] = b"POST /v1beta/models/gemini:generateContent?alt=sse&key=AIzaSECRET HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-SECRET\r\nX-Api-Key: sk-ant-SECRET\r\nx-goog-api-key:AIzaSECRET2\r\nContent-Type: application/json\r\n\r\n{\"a\":\"Authorization: not a header\"}";

    fn redact_whole(input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        Redactor::default().redact(&mut out);
        out
    }

    #[test]
    fn masks_credential_headers_and_params_keeping_length() {
        let out = redact_whole(REQUEST);
        assert_eq!(out.len(), REQUEST.len());
        let text = String::from_utf8(out).expect("utf8");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("?alt=sse&key=**********"), "{text}");
        assert!(
            text.contains("Authorization:*****************\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Type: application/json"), "{text}");
        assert!(text.contains("Host: x"), "{text}");
    }

    #[test]
    fn every_split_gives_the_same_result() {
        let whole = redact_whole(REQUEST);
        for split in 0..=REQUEST.len() {
            let mut r = Redactor::default();
            let mut a = REQUEST[..split].to_vec();
            let mut b = REQUEST[split..].to_vec();
            r.redact(&mut a);
            r.redact(&mut b);
            a.extend_from_slice(&b);
            assert_eq!(a, whole, "split at {split}");
        }
    }

    #[test]
    fn secrets_in_text_are_redacted() {
        let cases = [
            (
                "key sk-tokentap-test-not-a-real-key here",
                "key [REDACTED] here",
            ),
            ("sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv_wx", "[REDACTED]"),
            ("\"sk-proj-abcdefghijklmnop1234\"", "\"[REDACTED]\""),
            ("g=AIzaSyA1234567890abcdefghijklmnopqrstu", "g=[REDACTED]"),
            ("aws AKIAIOSFODNN7EXAMPLE.", "aws [REDACTED]."),
            ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "[REDACTED]"),
            ("hf_abcdefghijklmnopqrstuvwxyz0123", "[REDACTED]"),
            ("k=sk_live_abcdefghijklmnop1234", "k=[REDACTED]"),
            (
                "Authorization: Basic dXNlcjpwYXNzd29yZA==",
                "Authorization: Basic [REDACTED]",
            ),
            ("slack xoxb-1234567890-abcdefghij", "slack [REDACTED]"),
            ("xoxp-1234-5678-abcdefgh", "[REDACTED]"),
            (
                "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U ok",
                "jwt [REDACTED] ok",
            ),
            (
                "Authorization: Bearer abc.def-ghi_jkl",
                "Authorization: Bearer [REDACTED]",
            ),
            // Not secrets: too short, or not at a word boundary, or plain words.
            (
                "task-force-management-group-one",
                "task-force-management-group-one",
            ),
            ("sk-learn is a library", "sk-learn is a library"),
            ("Bearer token", "Bearer token"),
            ("naïve café — AKIA", "naïve café — AKIA"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_secrets(input), want, "{input}");
        }
    }
}
