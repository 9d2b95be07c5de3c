//! HPACK header decompression (RFC 7541), one decoder per connection direction.
//!
//! Receives: complete header blocks (a HEADERS or PUSH_PROMISE payload with its CONTINUATION
//! frames, padding and priority removed), in the order the encoder sent them. Emits: each
//! header field as a (name, value) pair. The dynamic table is state shared by every block of
//! the direction, so a lost or skipped block makes every later one unreadable: the caller
//! must stop using a decoder after an error or a gap.
//!
//! Credentials are not kept: a dynamic table entry whose name is a credential header keeps
//! its size (eviction depends on it) but not its value, so a later reference to it decodes
//! to an empty value, which the HTTP stage drops with the header anyway.

use std::collections::VecDeque;

use thiserror::Error;

use super::huffman::{self, HuffmanError};
use crate::http::types::is_credential_header;

/// Size a table entry counts for beyond its name and value (§4.1).
const ENTRY_OVERHEAD: usize = 32;
/// The dynamic table size every decoder starts with (SETTINGS_HEADER_TABLE_SIZE default).
pub(crate) const DEFAULT_TABLE_SIZE: usize = 4096;
/// Largest dynamic table accepted whatever the peer advertises: bounds memory per direction.
pub(crate) const MAX_TABLE_SIZE: usize = 1 << 20;

/// The static table (RFC 7541 Appendix A); index 1 is the first entry.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub(crate) enum HpackError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer does not fit in 32 bits")]
    IntegerOverflow,
    #[error("index {0} is not in the static or dynamic table")]
    BadIndex(u64),
    #[error("{0}")]
    Huffman(#[from] HuffmanError),
    #[error("dynamic table size update to {0} exceeds the allowed {1}")]
    TableSizeTooLarge(u64, usize),
}

#[derive(Debug)]
struct Entry {
    name: Box<[u8]>,
    /// Empty for a credential header: only its size is kept.
    value: Box<[u8]>,
    /// Name and value lengths as sent, plus the overhead.
    size: usize,
}

/// The dynamic table (§2.3.2): newest entry first.
#[derive(Debug, Default)]
struct DynamicTable {
    entries: VecDeque<Entry>,
    size: usize,
    max_size: usize,
}

impl DynamicTable {
    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            let Some(old) = self.entries.pop_back() else {
                break;
            };
            self.size -= old.size;
        }
    }

    fn set_max_size(&mut self, max: usize) {
        self.max_size = max;
        self.evict_to(max);
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        // An entry larger than the table empties it and is not added (§4.4).
        self.evict_to(self.max_size.saturating_sub(size));
        if size > self.max_size {
            return;
        }
        // Pseudo-headers (`:authority`) are never credentials.
        let keep_value = name.starts_with(b":")
            || std::str::from_utf8(name)
                .map(|n| !is_credential_header(&n.to_ascii_lowercase()))
                .unwrap_or(true);
        self.entries.push_front(Entry {
            name: name.into(),
            value: if keep_value {
                value.into()
            } else {
                Box::default()
            },
            size,
        });
        self.size += size;
    }
}

/// Decodes one direction's header blocks.
#[derive(Debug)]
pub(crate) struct HpackDecoder {
    table: DynamicTable,
    /// Largest table size the encoder may switch to: what the decoding side advertised in
    /// SETTINGS_HEADER_TABLE_SIZE (the largest value seen, as the observer cannot tell which
    /// one was acknowledged), bounded by [`MAX_TABLE_SIZE`].
    allowed_size: usize,
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl Default for HpackDecoder {
    fn default() -> Self {
        Self {
            table: DynamicTable {
                max_size: DEFAULT_TABLE_SIZE,
                ..DynamicTable::default()
            },
            allowed_size: DEFAULT_TABLE_SIZE,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }
}

/// Where a field's name comes from.
enum Name {
    Indexed(u64),
    Literal,
}

impl HpackDecoder {
    /// The decoding side advertised SETTINGS_HEADER_TABLE_SIZE `size`.
    pub(crate) fn allow_table_size(&mut self, size: u32) {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        self.allowed_size = self.allowed_size.max(size).min(MAX_TABLE_SIZE);
    }

    /// Bytes held by the dynamic table as the protocol counts them.
    #[cfg(test)]
    pub(crate) fn table_size(&self) -> usize {
        self.table.size
    }

    #[cfg(test)]
    fn table_entries(&self) -> Vec<(String, String)> {
        self.table
            .entries
            .iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(&e.name).into_owned(),
                    String::from_utf8_lossy(&e.value).into_owned(),
                )
            })
            .collect()
    }

    /// Decodes a complete header block, handing each field to `field`.
    pub(crate) fn decode(
        &mut self,
        block: &[u8],
        field: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut rest = block;
        while let Some(&first) = rest.first() {
            if first & 0x80 != 0 {
                // Indexed header field (§6.1).
                let index = integer(&mut rest, 7)?;
                let (name, value) = self.lookup(index)?;
                field(name, value);
            } else if first & 0xc0 == 0x40 {
                // Literal with incremental indexing (§6.2.1).
                let index = integer(&mut rest, 6)?;
                let name = if index == 0 {
                    Name::Literal
                } else {
                    Name::Indexed(index)
                };
                self.literal(&mut rest, name, true, field)?;
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3).
                let size = integer(&mut rest, 5)?;
                let allowed = self.allowed_size;
                match usize::try_from(size) {
                    Ok(s) if s <= allowed => self.table.set_max_size(s),
                    _ => return Err(HpackError::TableSizeTooLarge(size, allowed)),
                }
            } else {
                // Literal without indexing (0000) or never indexed (0001) (§6.2.2, §6.2.3).
                let index = integer(&mut rest, 4)?;
                let name = if index == 0 {
                    Name::Literal
                } else {
                    Name::Indexed(index)
                };
                self.literal(&mut rest, name, false, field)?;
            }
        }
        Ok(())
    }

    fn lookup(&self, index: u64) -> Result<(&[u8], &[u8]), HpackError> {
        let i = usize::try_from(index).map_err(|_| HpackError::BadIndex(index))?;
        if let Some(&(name, value)) = i.checked_sub(1).and_then(|i| STATIC_TABLE.get(i)) {
            return Ok((name.as_bytes(), value.as_bytes()));
        }
        i.checked_sub(STATIC_TABLE.len() + 1)
            .and_then(|i| self.table.entries.get(i))
            .map(|e| (&e.name[..], &e.value[..]))
            .ok_or(HpackError::BadIndex(index))
    }

    fn literal(
        &mut self,
        rest: &mut &[u8],
        name: Name,
        index: bool,
        field: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut name_buf = std::mem::take(&mut self.name_buf);
        let mut value_buf = std::mem::take(&mut self.value_buf);
        name_buf.clear();
        value_buf.clear();
        let result = (|| {
            match name {
                Name::Indexed(i) => name_buf.extend_from_slice(self.lookup(i)?.0),
                Name::Literal => string(rest, &mut name_buf)?,
            }
            string(rest, &mut value_buf)?;
            field(&name_buf, &value_buf);
            if index {
                self.table.insert(&name_buf, &value_buf);
            }
            Ok(())
        })();
        // Values are not kept between blocks beyond what the table holds.
        value_buf.clear();
        self.name_buf = name_buf;
        self.value_buf = value_buf;
        result
    }
}

/// Decodes an integer with an `n`-bit prefix (§5.1), advancing `rest`.
fn integer(rest: &mut &[u8], n: u32) -> Result<u64, HpackError> {
    let (&first, mut tail) = rest.split_first().ok_or(HpackError::Truncated)?;
    let max_prefix = (1u64 << n) - 1;
    let mut value = u64::from(first) & max_prefix;
    if value == max_prefix {
        let mut shift = 0u32;
        loop {
            let (&b, t) = tail.split_first().ok_or(HpackError::Truncated)?;
            tail = t;
            value += u64::from(b & 0x7f) << shift;
            if value > u64::from(u32::MAX) {
                return Err(HpackError::IntegerOverflow);
            }
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 28 {
                return Err(HpackError::IntegerOverflow);
            }
        }
    }
    *rest = tail;
    Ok(value)
}

/// Decodes a string literal (§5.2) into `out`, advancing `rest`.
fn string(rest: &mut &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let huffman = rest.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(rest, 7)?;
    let len = usize::try_from(len).map_err(|_| HpackError::Truncated)?;
    if len > rest.len() {
        return Err(HpackError::Truncated);
    }
    let (bytes, tail) = rest.split_at(len);
    if huffman {
        huffman::decode(bytes, out)?;
    } else {
        out.extend_from_slice(bytes);
    }
    *rest = tail;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| {
                u8::from_str_radix(std::str::from_utf8(p).expect("valid test input"), 16)
                    .expect("valid test input")
            })
            .collect()
    }

    fn decode(d: &mut HpackDecoder, block: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        d.decode(&hex(block), &mut |n, v| {
            out.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ));
        })
        .expect("valid test input");
        out
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn integers_rfc_c1() {
        // C.1.1: 10 with a 5-bit prefix; C.1.2: 1337 with a 5-bit prefix; C.1.3: 42 at an
        // octet boundary.
        for (bytes, n, value) in [
            (vec![0x0a], 5, 10),
            (vec![0x1f, 0x9a, 0x0a], 5, 1337),
            (vec![0x2a], 8, 42),
        ] {
            let mut rest = &bytes[..];
            assert_eq!(integer(&mut rest, n).expect("valid test input"), value);
            assert!(rest.is_empty());
        }
        let mut rest = &[0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..];
        assert_eq!(integer(&mut rest, 5), Err(HpackError::IntegerOverflow));
        let mut rest = &[0x1f, 0x9a][..];
        assert_eq!(integer(&mut rest, 5), Err(HpackError::Truncated));
    }

    #[test]
    fn literal_fields_rfc_c2() {
        // C.2.1: literal with indexing.
        let mut d = HpackDecoder::default();
        assert_eq!(
            decode(
                &mut d,
                "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"
            ),
            pairs(&[("custom-key", "custom-header")])
        );
        assert_eq!(d.table_size(), 55);
        // C.2.2: literal without indexing.
        let mut d = HpackDecoder::default();
        assert_eq!(
            decode(&mut d, "040c 2f73 616d 706c 652f 7061 7468"),
            pairs(&[(":path", "/sample/path")])
        );
        assert_eq!(d.table_size(), 0);
        // C.2.3: never indexed.
        let mut d = HpackDecoder::default();
        assert_eq!(
            decode(&mut d, "1008 7061 7373 776f 7264 0673 6563 7265 74"),
            pairs(&[("password", "secret")])
        );
        assert_eq!(d.table_size(), 0);
        // C.2.4: indexed.
        let mut d = HpackDecoder::default();
        assert_eq!(decode(&mut d, "82"), pairs(&[(":method", "GET")]));
    }

    /// C.3 (plain strings) and C.4 (Huffman): three requests on one connection.
    fn requests(blocks: [&str; 3]) {
        let mut d = HpackDecoder::default();
        assert_eq!(
            decode(&mut d, blocks[0]),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ])
        );
        assert_eq!(d.table_size(), 57);
        assert_eq!(
            decode(&mut d, blocks[1]),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ])
        );
        assert_eq!(d.table_size(), 110);
        assert_eq!(
            decode(&mut d, blocks[2]),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(d.table_size(), 164);
        // `custom-key` is shaped like a credential header: its value is not kept.
        assert_eq!(
            d.table_entries(),
            pairs(&[
                ("custom-key", ""),
                ("cache-control", "no-cache"),
                (":authority", "www.example.com"),
            ])
        );
    }

    #[test]
    fn requests_rfc_c3() {
        requests([
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ]);
    }

    #[test]
    fn requests_huffman_rfc_c4() {
        requests([
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ]);
    }

    /// C.5 (plain) and C.6 (Huffman): three responses with a 256-byte table, with evictions.
    fn responses(blocks: [&str; 3]) {
        let mut d = HpackDecoder::default();
        d.table.set_max_size(256);
        let first = pairs(&[
            (":status", "302"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("location", "https://www.example.com"),
        ]);
        assert_eq!(decode(&mut d, blocks[0]), first);
        assert_eq!(d.table_size(), 222);
        let mut second = first.clone();
        second[0].1 = "307".to_owned();
        assert_eq!(decode(&mut d, blocks[1]), second);
        // ":status: 302" was evicted to make room for ":status: 307".
        assert_eq!(d.table_size(), 222);
        assert_eq!(d.table_entries()[0], (":status".into(), "307".into()));
        assert_eq!(
            decode(&mut d, blocks[2]),
            pairs(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ("location", "https://www.example.com"),
                ("content-encoding", "gzip"),
                (
                    "set-cookie",
                    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
                ),
            ])
        );
        assert_eq!(d.table_size(), 215);
        let names: Vec<String> = d.table_entries().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["set-cookie", "content-encoding", "date"]);
        // The cookie's value was not kept, though the entry counts its full size.
        assert_eq!(d.table_entries()[0].1, "");
    }

    #[test]
    fn responses_with_eviction_rfc_c5() {
        responses([
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 \
             6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d \
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 \
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e \
             3d31",
        ]);
    }

    #[test]
    fn responses_huffman_with_eviction_rfc_c6() {
        responses([
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab \
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ]);
    }

    #[test]
    fn size_updates_evict_and_are_bounded() {
        let mut d = HpackDecoder::default();
        decode(
            &mut d,
            "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
        );
        assert_eq!(d.table_size(), 55);
        // Size update to 0 empties the table; back to 4096 keeps it empty.
        decode(&mut d, "20 3fe1 1f");
        assert_eq!(d.table_size(), 0);
        assert_eq!(
            d.decode(&hex("be"), &mut |_, _| {}),
            Err(HpackError::BadIndex(62))
        );
        // Above what the decoding side advertised.
        assert_eq!(
            d.decode(&hex("3fe2 1f"), &mut |_, _| {}),
            Err(HpackError::TableSizeTooLarge(4097, 4096))
        );
        d.allow_table_size(8192);
        decode(&mut d, "3fe1 3f");
        assert_eq!(d.table.max_size, 8192);
    }

    #[test]
    fn credential_values_are_not_kept() {
        let mut d = HpackDecoder::default();
        // authorization (static name 23) with incremental indexing, value "Bearer sk".
        let out = decode(&mut d, "57 09 4265 6172 6572 2073 6b be");
        assert_eq!(
            out,
            pairs(&[("authorization", "Bearer sk"), ("authorization", "")])
        );
        assert_eq!(d.table_size(), 13 + 9 + 32);
    }
}
