//! HPACK's Huffman code (RFC 7541 §5.2, Appendix B), decoding only.
//!
//! The code is canonical: codes are assigned in order of (length, symbol), so the table is
//! kept as each symbol's code length alone and the codes follow from it. Decoding walks the
//! input bit by bit against the first code and the symbol count of each length; header
//! strings are short, so this is cheap enough and needs no large tables.

use std::sync::OnceLock;

/// The end-of-string symbol; it must never appear in decoded input (§5.2).
const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// Code length in bits of symbols 0..=255 and EOS (RFC 7541 Appendix B).
#[rustfmt::skip]
const CODE_LENGTHS: [u8; 257] = [
    // 0..=31: control characters
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    // ' ' ! " # $ % & ' ( ) * + , - . /
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    // 0..9 : ; < = > ?
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    // @ A..O
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    // P..Z [ \ ] ^ _
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    // ` a..o
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    // p..z { | } ~ DEL
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    // 128..=255
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
    // EOS
    30,
];

/// Canonical decoding tables: per code length, the first code, how many symbols have that
/// length, and where they start in `symbols` (sorted by length, then value).
struct Tables {
    first_code: [u32; MAX_LEN + 1],
    count: [u32; MAX_LEN + 1],
    start: [u16; MAX_LEN + 1],
    symbols: [u16; 257],
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut count = [0u32; MAX_LEN + 1];
        for &len in &CODE_LENGTHS {
            count[usize::from(len)] += 1;
        }
        let mut first_code = [0u32; MAX_LEN + 1];
        let mut start = [0u16; MAX_LEN + 1];
        let (mut code, mut index) = (0u32, 0u16);
        for len in 1..=MAX_LEN {
            code = (code + count[len - 1]) << 1;
            first_code[len] = code;
            start[len] = index;
            index += count[len] as u16;
        }
        let mut symbols = [0u16; 257];
        let mut next = start;
        for (symbol, &len) in (0u16..).zip(CODE_LENGTHS.iter()) {
            let slot = &mut next[usize::from(len)];
            symbols[usize::from(*slot)] = symbol;
            *slot += 1;
        }
        Tables {
            first_code,
            count,
            start,
            symbols,
        }
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HuffmanError {
    #[error("Huffman string holds the EOS symbol")]
    Eos,
    #[error("Huffman padding longer than 7 bits or not all ones")]
    BadPadding,
}

/// Appends the decoding of `input` to `out`.
pub(crate) fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let t = tables();
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let offset = code.wrapping_sub(t.first_code[len]);
            if offset < t.count[len] {
                let symbol = t.symbols[usize::from(t.start[len]) + offset as usize];
                if symbol == EOS {
                    return Err(HuffmanError::Eos);
                }
                out.push(symbol as u8);
                code = 0;
                len = 0;
            } else if len == MAX_LEN {
                // Every 30-bit pattern is a code or longer than EOS's prefix: unreachable
                // with this table, but input must never index past it.
                return Err(HuffmanError::Eos);
            }
        }
    }
    // What is left must be a prefix of EOS (all ones), shorter than a byte.
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HuffmanError::BadPadding);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The code of `symbol`, derived from the canonical tables.
    fn code_of(symbol: u16) -> (u32, u8) {
        let t = tables();
        let len = CODE_LENGTHS[usize::from(symbol)];
        let l = usize::from(len);
        let rank = (t.start[l]..t.start[l] + t.count[l] as u16)
            .position(|i| t.symbols[usize::from(i)] == symbol)
            .expect("symbol has a code");
        (t.first_code[l] + rank as u32, len)
    }

    #[test]
    fn codes_match_rfc_appendix_b() {
        // A sample of rows of the RFC's table, (symbol, code as hex, length).
        for (symbol, code, len) in [
            (0u16, 0x1ff8, 13),
            (1, 0x7f_ffd8, 23),
            (10, 0x3fff_fffc, 30),
            (b' '.into(), 0x14, 6),
            (b'0'.into(), 0x0, 5),
            (b'X'.into(), 0xfc, 8),
            (b'\\'.into(), 0x7fff0, 19),
            (b'~'.into(), 0x1ffd, 13),
            (127, 0xfff_fffc, 28),
            (128, 0xfffe6, 20),
            (199, 0x1ff_ffec, 25),
            (220, 0xfff_fffd, 28),
            (255, 0x3ff_ffee, 26),
            (EOS, 0x3fff_ffff, 30),
        ] {
            assert_eq!(code_of(symbol), (code, len), "symbol {symbol}");
        }
    }

    #[test]
    fn code_is_complete() {
        // Kraft's sum of a complete prefix code is exactly 1.
        let sum: u64 = CODE_LENGTHS.iter().map(|&l| 1u64 << (30 - l)).sum();
        assert_eq!(sum, 1 << 30);
    }

    #[test]
    fn decodes_rfc_examples_and_rejects_bad_padding() {
        let mut out = Vec::new();
        // RFC 7541 C.4.1: "www.example.com".
        decode(
            &[
                0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
            ],
            &mut out,
        )
        .expect("valid test input");
        assert_eq!(out, b"www.example.com");
        // Every symbol round-trips through an encoding built from the derived codes.
        let mut bits: Vec<bool> = Vec::new();
        for s in 0u16..256 {
            let (code, len) = code_of(s);
            bits.extend((0..len).rev().map(|i| (code >> i) & 1 == 1));
        }
        while !bits.len().is_multiple_of(8) {
            bits.push(true);
        }
        let bytes: Vec<u8> = bits
            .chunks(8)
            .map(|c| c.iter().fold(0u8, |b, &bit| (b << 1) | u8::from(bit)))
            .collect();
        out.clear();
        decode(&bytes, &mut out).expect("valid test input");
        assert_eq!(out, (0u8..=255).collect::<Vec<_>>());
        // Padding of zeros, and padding of 8 ones, are errors.
        assert_eq!(decode(&[0x00], &mut out), Err(HuffmanError::BadPadding)); // '0' + 000
        assert_eq!(
            decode(&[0x07, 0xff], &mut out),
            Err(HuffmanError::BadPadding)
        );
        // EOS itself is an error.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut out),
            Err(HuffmanError::Eos)
        );
    }
}
