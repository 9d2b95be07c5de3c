//! Message bodies on their way through the HTTP/1 and HTTP/2 trackers: content decoding, the
//! bounded copy a request keeps, and the accounting of what could not be decoded or was lost.
//!
//! The two protocols differ only in how they frame a body (chunks and lengths, or DATA
//! frames); everything after the framing is here, once.

use super::{
    body_decoder::{BodyDecoder, Coding, DecodeError},
    sparse::SparseBuilder,
    tracker::{Ctx, HttpStats},
    types::{HttpEvent, ResponseEnd, SparseBody},
};

/// The decoder for a body with this content coding, and whether it has already failed (an
/// unsupported coding, counted when a body may follow).
fn decoder_for(
    coding: Result<Coding, DecodeError>,
    may_have_body: bool,
    ctx: &mut Ctx<'_>,
) -> (BodyDecoder, bool) {
    let decoder = BodyDecoder::new(coding, ctx.config.max_decoded_body);
    let failed = match decoder.failure() {
        Some(e) if may_have_body => {
            count_undecodable(ctx.stats, e);
            true
        }
        _ => false,
    };
    (decoder, failed)
}

/// Counts a body that could not be decoded (and whether a decompression cap stopped it).
pub(super) fn count_undecodable(stats: &mut HttpStats, error: &DecodeError) {
    stats.bodies_undecodable += 1;
    if matches!(error, DecodeError::Capped(_)) {
        stats.decompression_capped += 1;
    }
}

/// A request body: decoded into a bounded head-and-tail copy for the record.
#[derive(Debug)]
pub(super) struct RequestBody {
    sparse: SparseBuilder,
    decoder: BodyDecoder,
    /// Decoding failed (or framing was lost): the copy stops and is marked incomplete.
    undecodable: bool,
    /// Body bytes as sent (content-coded, after de-chunking), gaps included.
    encoded_len: u64,
    /// The declared length, when there was one.
    content_length: Option<u64>,
}

impl RequestBody {
    pub(super) fn new(
        coding: Result<Coding, DecodeError>,
        may_have_body: bool,
        content_length: Option<u64>,
        ctx: &mut Ctx<'_>,
    ) -> Self {
        let (decoder, undecodable) = decoder_for(coding, may_have_body, ctx);
        Self {
            sparse: SparseBuilder::new(ctx.config.body_head_limit, ctx.config.body_tail_limit),
            decoder,
            undecodable,
            encoded_len: 0,
            content_length,
        }
    }

    /// Body bytes. `keep`: the request is not emitted yet, so they still go into its copy;
    /// after that they are only counted.
    pub(super) fn push(&mut self, data: &[u8], keep: bool, ctx: &mut Ctx<'_>) {
        self.encoded_len = self.encoded_len.saturating_add(data.len() as u64);
        if !keep || self.undecodable {
            return;
        }
        let Ctx { stats, scratch, .. } = ctx;
        let before = self.decoder.produced();
        let sparse = &mut self.sparse;
        let result = self.decoder.push(data, scratch, &mut |d| sparse.push(d));
        stats.decoded_bytes += self.decoder.produced() - before;
        if let Err(e) = result {
            count_undecodable(stats, &e);
            self.undecodable = true;
        }
    }

    /// `len` body bytes that were not captured.
    pub(super) fn gap(&mut self, len: u64, keep: bool, stats: &mut HttpStats) {
        self.encoded_len = self.encoded_len.saturating_add(len);
        if !keep || self.undecodable {
            return;
        }
        match self.decoder.gap() {
            Ok(()) => self.sparse.gap(len),
            Err(e) => {
                count_undecodable(stats, &e);
                self.undecodable = true;
            }
        }
    }

    /// The framing was lost `gap` bytes into the rest of the body: the copy ends there.
    /// `keep`: the request is not emitted yet (its failure is counted if new).
    pub(super) fn lose(&mut self, gap: u64, keep: bool, stats: &mut HttpStats) {
        if keep && !self.undecodable {
            stats.bodies_undecodable += 1;
        }
        self.undecodable = true;
        self.sparse.gap(gap);
        self.encoded_len = self.encoded_len.saturating_add(gap);
    }

    /// The request's bounded copy; `complete` when the body was fully framed.
    pub(super) fn finish(&mut self, complete: bool, ctx: &mut Ctx<'_>) -> SparseBody {
        let Ctx { stats, scratch, .. } = ctx;
        if complete && !self.undecodable {
            let before = self.decoder.produced();
            let sparse = &mut self.sparse;
            let result = self.decoder.finish(scratch, &mut |d| sparse.push(d));
            stats.decoded_bytes += self.decoder.produced() - before;
            if let Err(e) = result {
                count_undecodable(stats, &e);
                self.undecodable = true;
            }
        }
        let sparse = std::mem::replace(&mut self.sparse, SparseBuilder::new(0, 0));
        let identity = self.decoder.is_identity();
        let total = if self.undecodable {
            // Decoded length unknown: the coded length is what can be told.
            Some(self.encoded_len.max(self.content_length.unwrap_or(0)))
        } else if !complete && identity {
            // Cut short: Content-Length still says how much there was to be.
            self.content_length
        } else {
            None
        };
        // A body cut short whose full size cannot be told (chunked, or content-coded) must
        // not pass for complete.
        let unknown_rest = !complete && (self.content_length.is_none() || !identity);
        sparse.finish(total, self.undecodable || unknown_rest)
    }
}

/// A response body: decoded and emitted as [`HttpEvent::ResponseBody`] chunks as it comes.
#[derive(Debug)]
pub(super) struct ResponseBody {
    decoder: BodyDecoder,
    /// Decoding failed: the rest of the body is reported as one gap before its end.
    undecodable: bool,
    /// Body bytes as sent (content-coded, after de-chunking), gaps included.
    encoded_len: u64,
    /// Bytes lost with the framing (reported as a gap before the end).
    lost: u64,
}

impl ResponseBody {
    pub(super) fn new(
        coding: Result<Coding, DecodeError>,
        may_have_body: bool,
        ctx: &mut Ctx<'_>,
    ) -> Self {
        let (decoder, undecodable) = decoder_for(coding, may_have_body, ctx);
        Self {
            decoder,
            undecodable,
            encoded_len: 0,
            lost: 0,
        }
    }

    /// A body that is consumed without events (an interim or orphan response).
    pub(super) fn silent() -> Self {
        Self {
            decoder: BodyDecoder::new(Ok(Coding::Identity), 0),
            undecodable: false,
            encoded_len: 0,
            lost: 0,
        }
    }

    /// Body bytes of `exchange` (`None`: only counted).
    pub(super) fn push(
        &mut self,
        data: &[u8],
        exchange: Option<u64>,
        ktime: u64,
        ctx: &mut Ctx<'_>,
    ) {
        self.encoded_len = self.encoded_len.saturating_add(data.len() as u64);
        let Some(exchange) = exchange else {
            return;
        };
        if !self.undecodable && !self.decode(Some(data), exchange, ktime, ctx) {
            self.undecodable = true;
        }
    }

    /// Decodes `data` (`None`: the decoder's last bytes) into body events of `exchange`;
    /// false, and counted, when decoding failed.
    fn decode(
        &mut self,
        data: Option<&[u8]>,
        exchange: u64,
        ktime: u64,
        ctx: &mut Ctx<'_>,
    ) -> bool {
        let Ctx {
            key,
            stats,
            scratch,
            emit,
            ..
        } = ctx;
        let conn = *key;
        let mut out = |data: &[u8]| {
            emit(HttpEvent::ResponseBody {
                conn,
                exchange,
                data,
                ktime_ns: ktime,
            });
        };
        let before = self.decoder.produced();
        let result = match data {
            Some(data) => self.decoder.push(data, scratch, &mut out),
            None => self.decoder.finish(scratch, &mut out),
        };
        stats.decoded_bytes += self.decoder.produced() - before;
        match result {
            Ok(()) => true,
            Err(e) => {
                count_undecodable(stats, &e);
                false
            }
        }
    }

    /// `len` body bytes of `exchange` that were not captured.
    pub(super) fn gap(&mut self, len: u64, exchange: Option<u64>, ctx: &mut Ctx<'_>) {
        self.encoded_len = self.encoded_len.saturating_add(len);
        let Some(exchange) = exchange else {
            return;
        };
        if self.undecodable {
            return;
        }
        match self.decoder.gap() {
            Ok(()) => (ctx.emit)(HttpEvent::ResponseGap {
                conn: ctx.key,
                exchange,
                len,
            }),
            Err(e) => {
                count_undecodable(ctx.stats, &e);
                self.undecodable = true;
            }
        }
    }

    /// The framing was lost `gap` bytes into the rest of the body. An identity body reports
    /// the bytes as a gap; a coded one cannot be decoded past them.
    pub(super) fn lose(&mut self, gap: u64, counted: bool, stats: &mut HttpStats) {
        if counted && !self.undecodable {
            stats.bodies_undecodable += 1;
        }
        self.encoded_len = self.encoded_len.saturating_add(gap);
        if self.decoder.is_identity() {
            self.lost = gap;
        } else {
            self.undecodable = true;
        }
    }

    /// Ends the response of `exchange`: flushes the decoder (unless decoding failed or the
    /// response was cut), reports the body bytes that cannot be shown as one gap, and emits
    /// the end.
    pub(super) fn end(&mut self, exchange: u64, end: ResponseEnd, ktime: u64, ctx: &mut Ctx<'_>) {
        // Where decoding stopped depends on how the body was cut into records; its coded size
        // does not, so that is what the gap reports (the decoded size is unknowable).
        let gap = if self.undecodable {
            self.encoded_len
        } else {
            self.lost
        };
        if !self.undecodable && end != ResponseEnd::Interrupted {
            // A failure here (a truncated gzip trailer) is counted; what was decoded stands.
            self.decode(None, exchange, ktime, ctx);
        }
        let Ctx {
            key, stats, emit, ..
        } = ctx;
        let conn = *key;
        if gap > 0 {
            emit(HttpEvent::ResponseGap {
                conn,
                exchange,
                len: gap,
            });
        }
        if end == ResponseEnd::Interrupted {
            stats.interrupted += 1;
        }
        emit(HttpEvent::ResponseEnd {
            conn,
            exchange,
            end,
            ktime_ns: ktime,
        });
    }
}
