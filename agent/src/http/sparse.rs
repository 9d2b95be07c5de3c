//! Bounded request bodies.
//!
//! Receives: the decoded bytes of one body in order, and gaps (bytes known to exist but not
//! captured). Emits: a [`SparseBody`]: the first `head_limit` bytes while they are contiguous
//! from the start, the last `tail_limit` contiguous bytes after that, the exact total and how
//! many bytes in between are not kept. Memory stays within `head_limit + 2 * tail_limit`
//! whatever the body's size.

use super::types::SparseBody;

#[derive(Debug)]
pub(crate) struct SparseBuilder {
    head_limit: usize,
    tail_limit: usize,
    head: Vec<u8>,
    /// `head` can still grow: nothing has been skipped or dropped since the body's start.
    head_open: bool,
    /// The latest bytes after `head`, contiguous; trimmed to `tail_limit` lazily.
    tail: Vec<u8>,
    total: u64,
}

impl SparseBuilder {
    pub(crate) fn new(head_limit: usize, tail_limit: usize) -> Self {
        Self {
            head_limit,
            tail_limit,
            head: Vec::new(),
            head_open: true,
            tail: Vec::new(),
            total: 0,
        }
    }

    pub(crate) fn push(&mut self, mut data: &[u8]) {
        self.total = self.total.saturating_add(data.len() as u64);
        if self.head_open {
            let room = self.head_limit.saturating_sub(self.head.len());
            let (to_head, rest) = data.split_at(room.min(data.len()));
            self.head.extend_from_slice(to_head);
            data = rest;
        }
        if data.is_empty() {
            return;
        }
        self.head_open = false;
        if data.len() >= self.tail_limit {
            self.tail.clear();
            let (_, last) = data.split_at(data.len() - self.tail_limit);
            self.tail.extend_from_slice(last);
            return;
        }
        // Trim before appending so the buffer never exceeds twice the limit; trimming only
        // when it would keeps the copying amortised.
        if self.tail.len() + data.len() > 2 * self.tail_limit {
            let keep = self.tail_limit - data.len();
            self.tail.drain(..self.tail.len() - keep);
        }
        self.tail.extend_from_slice(data);
    }

    /// `len` bytes of the body are missing.
    pub(crate) fn gap(&mut self, len: u64) {
        if len == 0 {
            return;
        }
        self.total = self.total.saturating_add(len);
        self.head_open = false;
        // The tail must be the contiguous end of the body: what came before the gap is not.
        self.tail.clear();
    }

    /// The body. `total_len` replaces the counted total when the caller knows better (a
    /// Content-Length not reached yet, or the encoded length of an undecodable body).
    pub(crate) fn finish(self, total_len: Option<u64>, undecodable: bool) -> SparseBody {
        let Self {
            head_limit: _,
            tail_limit,
            head,
            head_open: _,
            mut tail,
            total,
        } = self;
        if tail.len() > tail_limit {
            tail.drain(..tail.len() - tail_limit);
        }
        let total_len = total_len.unwrap_or(total);
        let kept = (head.len() as u64).saturating_add(tail.len() as u64);
        SparseBody {
            head,
            tail,
            total_len,
            missing: total_len.saturating_sub(kept),
            undecodable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Piece<'a> {
        Data(&'a [u8]),
        Gap(u64),
    }

    fn build(limits: (usize, usize), pieces: &[Piece<'_>]) -> SparseBody {
        let mut b = SparseBuilder::new(limits.0, limits.1);
        for p in pieces {
            match p {
                Piece::Data(d) => b.push(d),
                Piece::Gap(n) => b.gap(*n),
            }
        }
        b.finish(None, false)
    }

    #[test]
    fn small_body_is_complete() {
        let body = build((8, 4), &[Piece::Data(b"abc"), Piece::Data(b"de")]);
        assert_eq!(body.complete(), Some(&b"abcde"[..]));
        assert_eq!(body.total_len, 5);
    }

    #[test]
    fn big_body_keeps_head_and_tail_at_every_split() {
        let data: Vec<u8> = (0..100u8).collect();
        for split in 0..=data.len() {
            for piece in [1, 3, 7, 100] {
                let mut b = SparseBuilder::new(10, 6);
                let (x, y) = data.split_at(split);
                for part in x.chunks(piece).chain(y.chunks(piece)) {
                    b.push(part);
                }
                let body = b.finish(None, false);
                assert_eq!(body.head, &data[..10]);
                assert_eq!(body.tail, &data[94..]);
                assert_eq!(body.total_len, 100);
                assert_eq!(body.missing, 84);
                assert_eq!(body.complete(), None);
            }
        }
    }

    #[test]
    fn gap_stops_head_and_resets_tail() {
        let body = build(
            (10, 4),
            &[
                Piece::Data(b"abc"),
                Piece::Gap(1000),
                Piece::Data(b"wxyz12"),
                Piece::Gap(5),
                Piece::Data(b"end"),
            ],
        );
        assert_eq!(body.head, b"abc");
        assert_eq!(body.tail, b"end");
        assert_eq!(body.total_len, 3 + 1000 + 6 + 5 + 3);
        assert_eq!(body.missing, 1000 + 6 + 5);
    }

    #[test]
    fn forty_megabytes_as_head_gap_tail() {
        let body = build(
            (256 << 10, 64 << 10),
            &[
                Piece::Data(&[b'a'; 65536]),
                Piece::Gap(40_000_000 - 2 * 65536),
                Piece::Data(&[b'z'; 65536]),
            ],
        );
        assert_eq!(body.head.len(), 65536);
        assert_eq!(body.tail.len(), 65536);
        assert_eq!(body.total_len, 40_000_000);
        assert_eq!(body.missing, 40_000_000 - 2 * 65536);
    }

    #[test]
    fn zero_limits_and_override() {
        let body = build((0, 0), &[Piece::Data(b"abc")]);
        assert!(body.head.is_empty() && body.tail.is_empty());
        assert_eq!(body.missing, 3);
        let mut b = SparseBuilder::new(4, 4);
        b.push(b"ab");
        let body = b.finish(Some(10), true);
        assert_eq!(
            (body.total_len, body.missing, body.undecodable),
            (10, 8, true)
        );
    }
}
