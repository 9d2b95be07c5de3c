//! Searching large parts of an ELF file a window at a time.
//!
//! A binary's string and symbol tables can be hundreds of MB (debug builds, browsers, language
//! runtimes). Read whole, one scan would hold them all and the agent's memory would follow the
//! largest binary on the node. Here a table is read through a window of [`WINDOW`] bytes that
//! moves along it, so a scan holds about one window whatever the file.

use std::{fs::File, io, os::unix::fs::FileExt};

/// Bytes read at a time.
pub const WINDOW: usize = 1 << 20;

/// Positioned reads: a file, or bytes in memory (tests).
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for &[u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let bytes = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// Calls `visit(position, bytes)` for consecutive windows of `[offset, offset + len)`, at most
/// `window` bytes each, each starting `overlap` bytes before the previous one ended (so that a
/// needle of up to `overlap + 1` bytes is seen whole in some window). `position` is relative to
/// `offset`. Stops when `visit` returns false.
pub fn visit_windows(
    src: &dyn ReadAt,
    offset: u64,
    len: u64,
    window: usize,
    overlap: usize,
    visit: &mut dyn FnMut(u64, &[u8]) -> bool,
) -> io::Result<()> {
    let window = window.max(overlap + 1);
    let mut buf = vec![0u8; window.min(usize::try_from(len).unwrap_or(usize::MAX))];
    let mut at = 0u64;
    loop {
        let n = usize::try_from((len - at).min(window as u64)).unwrap_or(window);
        let chunk = &mut buf[..n];
        src.read_exact_at(chunk, offset + at)?;
        let end = at + n as u64;
        if !visit(at, chunk) || end >= len {
            return Ok(());
        }
        at = end - overlap as u64;
    }
}

/// Which of `needles` occur in `[offset, offset + len)`, read `window` bytes at a time.
pub fn find_needles(
    src: &dyn ReadAt,
    offset: u64,
    len: u64,
    needles: &[&[u8]],
    window: usize,
) -> io::Result<Vec<bool>> {
    let longest = needles.iter().map(|n| n.len()).max().unwrap_or(1).max(1);
    let mut found = vec![false; needles.len()];
    visit_windows(src, offset, len, window, longest - 1, &mut |_, bytes| {
        for (hit, needle) in found.iter_mut().zip(needles) {
            *hit = *hit || (!needle.is_empty() && memmem(bytes, needle).is_some());
        }
        !found.iter().all(|&f| f)
    })?;
    Ok(found)
}

/// Offsets (relative to `offset`) at which a string table holds `name` NUL-terminated, for
/// each of `names`: the `st_name` values that name it (a name may also end a longer string,
/// which the linker shares). At most `limit` offsets in all; read `window` bytes at a time.
pub fn name_offsets(
    src: &dyn ReadAt,
    offset: u64,
    len: u64,
    names: &[&str],
    limit: usize,
    window: usize,
) -> io::Result<Vec<(usize, u64)>> {
    let terminated: Vec<Vec<u8>> = names
        .iter()
        .map(|n| [n.as_bytes(), b"\0"].concat())
        .collect();
    let longest = terminated.iter().map(Vec::len).max().unwrap_or(1);
    let mut found: Vec<(usize, u64)> = Vec::new();
    visit_windows(
        src,
        offset,
        len,
        window,
        longest - 1,
        &mut |position, bytes| {
            for (which, needle) in terminated.iter().enumerate() {
                let mut from = 0;
                while let Some(at) = memmem(&bytes[from..], needle) {
                    let hit = (which, position + (from + at) as u64);
                    // Overlapping windows see a hit twice.
                    if !found.contains(&hit) {
                        found.push(hit);
                    }
                    from += at + 1;
                }
            }
            found.len() < limit
        },
    )?;
    found.truncate(limit);
    Ok(found)
}

fn memmem(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needles_across_window_edges_are_found_once() {
        let mut bytes = vec![b'x'; 3 * 1000 + 7];
        // Straddling the first edge (window 1000), and at the very end.
        bytes[995..1004].copy_from_slice(b"SSL_read\0");
        let n = bytes.len();
        bytes[n - 9..].copy_from_slice(b"SSL_free\0");
        let data: &[u8] = &bytes;
        let mut windows = 0;
        visit_windows(&data, 0, n as u64, 1000, 8, &mut |_, _| {
            windows += 1;
            true
        })
        .expect("in range");
        assert_eq!(windows, 4);
        let names = ["SSL_read", "SSL_write", "SSL_free"];
        let found = name_offsets(&data, 0, n as u64, &names, 16, 1000).expect("in range");
        assert_eq!(found, vec![(0, 995), (2, n as u64 - 9)]);
        let hits = find_needles(&data, 0, n as u64, &[b"d\0xx", b"nope"], 1000).expect("in range");
        assert_eq!(hits, vec![true, false]);
    }

    #[test]
    fn offsets_are_relative_and_ranges_checked() {
        let bytes: &[u8] = b"\0ossl_SSL_read\0SSL_read\0";
        let found =
            name_offsets(&bytes, 1, bytes.len() as u64 - 1, &["SSL_read"], 16, 8).expect("ok");
        assert_eq!(found, vec![(0, 5), (0, 14)], "a shared suffix names it too");
        assert!(find_needles(&bytes, 10, 100, &[b"x"], WINDOW).is_err());
        assert_eq!(
            name_offsets(&bytes, 0, bytes.len() as u64, &["SSL_read"], 1, WINDOW)
                .expect("ok")
                .len(),
            1,
            "the limit holds"
        );
    }
}
