//! Incremental newline-delimited JSON (`application/x-ndjson`) decoder.
//!
//! Receives: body bytes split anywhere, and gaps. Emits: each non-blank line (without its
//! line ending) as soon as it is complete. A line longer than `max_line` is dropped and
//! counted; after a gap, decoding resumes at the next line.

#[derive(Debug)]
pub(crate) struct LineDecoder {
    max_line: usize,
    line: Vec<u8>,
    overflow: bool,
    resync: bool,
    /// Lines dropped for their length.
    pub(crate) oversized: u64,
}

impl LineDecoder {
    pub(crate) fn new(max_line: usize) -> Self {
        Self {
            max_line,
            line: Vec::new(),
            overflow: false,
            resync: false,
            oversized: 0,
        }
    }

    pub(crate) fn feed(&mut self, mut bytes: &[u8], on_line: &mut dyn FnMut(&[u8])) {
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n') {
            self.push(&bytes[..pos]);
            self.end_line(on_line);
            bytes = &bytes[pos + 1..];
        }
        self.push(bytes);
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.overflow || self.resync {
            return;
        }
        if self.line.len() + bytes.len() > self.max_line {
            self.overflow = true;
            // Freed: an oversized line must not pin its buffer for the rest of the stream.
            self.line = Vec::new();
            return;
        }
        super::extend_within(&mut self.line, bytes, self.max_line);
    }

    fn end_line(&mut self, on_line: &mut dyn FnMut(&[u8])) {
        if self.resync {
            self.resync = false;
        } else if self.overflow {
            self.oversized += 1;
        } else {
            let line = self.line.trim_ascii();
            if !line.is_empty() {
                on_line(line);
            }
        }
        self.overflow = false;
        self.line.clear();
    }

    /// Bytes are missing: the line in progress is lost.
    pub(crate) fn gap(&mut self) {
        self.line.clear();
        self.overflow = false;
        self.resync = true;
    }

    /// The body ended cleanly: an unterminated last line counts.
    pub(crate) fn finish(&mut self, on_line: &mut dyn FnMut(&[u8])) {
        if !self.line.is_empty() || self.overflow {
            self.end_line(on_line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_anywhere() {
        let body = b"{\"a\":1}\r\n\n{\"b\":2}\n{\"c\":3}";
        for split in 0..=body.len() {
            let mut d = LineDecoder::new(64);
            let mut out = Vec::new();
            let (a, b) = body.split_at(split);
            d.feed(a, &mut |l| out.push(l.to_vec()));
            d.feed(b, &mut |l| out.push(l.to_vec()));
            d.finish(&mut |l| out.push(l.to_vec()));
            assert_eq!(
                out,
                vec![
                    b"{\"a\":1}".to_vec(),
                    b"{\"b\":2}".to_vec(),
                    b"{\"c\":3}".to_vec()
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn long_lines_and_gaps() {
        let mut d = LineDecoder::new(4);
        let mut out = Vec::new();
        d.feed(b"toolong\nok\npar", &mut |l| out.push(l.to_vec()));
        d.gap();
        d.feed(b"tial\nnext\n", &mut |l| out.push(l.to_vec()));
        assert_eq!(out, vec![b"ok".to_vec(), b"next".to_vec()]);
        assert_eq!(d.oversized, 1);
    }
}
