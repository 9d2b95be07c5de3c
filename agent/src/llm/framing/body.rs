//! A non-streamed response body, kept within bounds.
//!
//! Up to a limit the whole body is kept (and parsed whole at the end). Past it, or after a
//! gap, only the first and last bytes are kept, like the HTTP stage's `SparseBody`, and the
//! top-level fields are found by [`crate::llm::json::scan_top_level`].

#[derive(Debug)]
pub(crate) struct BoundedBody {
    /// Bytes kept from each end once the body is partial.
    keep: usize,
    head: Vec<u8>,
    /// Bytes contiguous up to the last byte seen, when partial.
    tail: Vec<u8>,
    partial: bool,
}

/// What is known of the body at its end.
#[derive(Debug)]
pub(crate) enum BodyView<'a> {
    Whole(&'a [u8]),
    Partial { head: &'a [u8], tail: &'a [u8] },
}

impl BoundedBody {
    pub(crate) fn new(keep: usize) -> Self {
        Self {
            keep,
            head: Vec::new(),
            tail: Vec::new(),
            partial: false,
        }
    }

    /// Bytes held.
    pub(crate) fn held(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Appends body bytes; the whole body is kept while it stays within `limit` bytes.
    pub(crate) fn push(&mut self, mut data: &[u8], limit: usize) {
        if !self.partial {
            if self.head.len() + data.len() <= limit {
                super::extend_within(&mut self.head, data, limit);
                return;
            }
            self.partial = true;
            if self.head.len() >= self.keep {
                // Only what the tail can keep is copied: splitting the whole head off would
                // hold the body twice for a moment (16 MiB for an 8 MiB body).
                let from = self.keep.max(self.head.len().saturating_sub(2 * self.keep));
                self.tail = self.head[from..].to_vec();
                self.head.truncate(self.keep);
                self.head.shrink_to_fit();
            } else {
                // The head keeps the body's first bytes even when it goes partial at once.
                let take = (self.keep - self.head.len()).min(data.len());
                self.head.extend_from_slice(&data[..take]);
                data = &data[take..];
            }
        }
        self.tail.extend_from_slice(data);
        if self.tail.len() > 2 * self.keep {
            let excess = self.tail.len() - self.keep;
            self.tail.drain(..excess);
        }
    }

    /// Body bytes are missing here: what follows starts a new tail.
    pub(crate) fn gap(&mut self) {
        self.partial = true;
        self.tail.clear();
    }

    /// The body as far as it is known. `clean_end`: the body ended where the framing said.
    pub(crate) fn view(&self, clean_end: bool) -> BodyView<'_> {
        if !self.partial && clean_end {
            BodyView::Whole(&self.head)
        } else {
            let tail = &self.tail[self.tail.len().saturating_sub(self.keep)..];
            BodyView::Partial {
                head: &self.head,
                tail,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_then_head_and_tail() {
        let mut b = BoundedBody::new(4);
        b.push(b"0123", 10);
        b.push(b"4567", 10);
        assert!(matches!(b.view(true), BodyView::Whole(w) if w == b"01234567"));
        b.push(b"89abcdef", 10);
        b.push(b"ghij", 10);
        match b.view(true) {
            BodyView::Partial { head, tail } => {
                assert_eq!(head, b"0123");
                assert_eq!(tail, b"ghij");
            }
            BodyView::Whole(_) => panic!("should be partial"),
        }
        assert!(b.held() <= 4 + 8);
    }

    #[test]
    fn partial_from_the_first_bytes() {
        let mut b = BoundedBody::new(4);
        b.push(b"0123456789", 0);
        match b.view(true) {
            BodyView::Partial { head, tail } => {
                assert_eq!(head, b"0123");
                assert_eq!(tail, b"6789");
            }
            BodyView::Whole(_) => panic!("should be partial"),
        }
    }

    #[test]
    fn gap_restarts_the_tail() {
        let mut b = BoundedBody::new(4);
        b.push(b"{\"a\":", 100);
        b.gap();
        b.push(b"1}", 100);
        match b.view(true) {
            BodyView::Partial { head, tail } => {
                assert_eq!(head, b"{\"a\":");
                assert_eq!(tail, b"1}");
            }
            BodyView::Whole(_) => panic!("should be partial"),
        }
    }
}
