//! The ring-buffer edge: waits for records and hands each one, as bytes, to a closure.
//!
//! Everything after this edge takes plain `&[u8]` records, so tests and replays can feed the
//! pipeline without a kernel.

use std::io;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

/// Most records handed over per [`RingBufSource::next_batch`].
pub const MAX_BATCH: usize = 4096;

pub struct RingBufSource {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl RingBufSource {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd and neither closes nor replaces it while the
        // AsyncFd holds it.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)? };
        Ok(Self { ring })
    }

    /// Waits until records are available, then hands up to [`MAX_BATCH`] of them to `each`.
    /// Returns how many were handed over. The cap keeps a ring that never empties (under
    /// sustained load) from starving the caller's timers.
    pub async fn next_batch(&mut self, each: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        let mut guard = self.ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut n = 0;
        while n < MAX_BATCH {
            let Some(item) = ring.next() else {
                // Drained: wait for the next wakeup. (Stopping at the cap keeps the readiness,
                // so the next call returns at once.)
                guard.clear_ready();
                break;
            };
            each(&item);
            n += 1;
        }
        Ok(n)
    }

    /// Hands over whatever is available now, without waiting (for a final drain).
    pub fn drain_now(&mut self, each: &mut dyn FnMut(&[u8])) -> usize {
        let ring = self.ring.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            each(&item);
            n += 1;
        }
        n
    }
}
