//! Masking credentials in raw captured bytes, for anything that shows plaintext to people
//! (`tokentap capture`).
//!
//! Receives: one direction of one connection, in order, in pieces cut anywhere. Emits: the same
//! bytes with the values of credential headers (`Authorization`, `x-api-key`, ...) and of
//! credential query parameters (`?key=`, `api_key=`, ...) replaced by `*`. Lengths never change,
//! so stream offsets stay exact. State carries across pieces, so a header split between two
//! TLS records is still masked.

use crate::http::{CREDENTIAL_HEADERS, CREDENTIAL_QUERY_PARAMS};

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
    let name = name.trim_ascii();
    CREDENTIAL_HEADERS.iter().any(|h| h.as_bytes() == name)
}

fn is_credential_param(name: &[u8]) -> bool {
    CREDENTIAL_QUERY_PARAMS.iter().any(|p| p.as_bytes() == name)
}

impl Redactor {
    /// Masks credentials in `bytes` in place.
    pub fn redact(&mut self, bytes: &mut [u8]) {
        for b in bytes.iter_mut() {
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
}
