//! Tables crafted byte by byte in each layout (the real-binary check, against `.symtab`, is in
//! `go_binary`'s tests), then cut and corrupted: errors, never panics.

use super::*;

const TEXT: u64 = 0x40_1000;

/// Functions laid out as a linker would: (name, entry offset from `TEXT`), sorted, and the end
/// of the last one.
const FUNCS: [(&str, u64); 4] = [
    ("runtime.text", 0),
    ("crypto/tls.(*Conn).Write", 0x120),
    ("crypto/tls.(*Conn).Read", 0x400),
    ("main.main", 0x7a0),
];
const END: u64 = 0x900;

/// A `.gopclntab` in the layout `magic`, with pointers of `ptr_size` bytes.
fn build(magic: u32, ptr_size: usize, big_endian: bool) -> Vec<u8> {
    let text_relative = magic != MAGIC_GO116;
    let uint = |v: u64, size: usize| -> Vec<u8> {
        let bytes = if big_endian {
            v.to_be_bytes()[8 - size..].to_vec()
        } else {
            v.to_le_bytes()[..size].to_vec()
        };
        assert_eq!(bytes.len(), size);
        bytes
    };
    let words = if text_relative { 8 } else { 7 };
    let header_len = 8 + words * ptr_size;

    // Name table: a leading unrelated string, then each name NUL-terminated.
    let mut names = b"go:buildid\0".to_vec();
    let mut nameoffs = Vec::new();
    for (name, _) in FUNCS {
        nameoffs.push(names.len() as u64);
        names.extend_from_slice(name.as_bytes());
        names.push(0);
    }
    let funcnametab = header_len as u64;
    let functab = funcnametab + names.len() as u64;

    // Function table, then the `_func` records right after it.
    let field = if text_relative { 4 } else { ptr_size };
    let entry = |off: u64| if text_relative { off } else { TEXT + off };
    let table_len = (2 * FUNCS.len() + 1) * field;
    let record_len = field + 4 + 28;
    let mut table = Vec::new();
    let mut records = Vec::new();
    for (i, (_, off)) in FUNCS.iter().enumerate() {
        table.extend(uint(entry(*off), field));
        table.extend(uint((table_len + i * record_len) as u64, field));
        records.extend(uint(entry(*off), field));
        records.extend(uint(nameoffs[i], 4));
        records.extend(vec![0xab; 28]); // args, deferreturn, pcsp, … (not read)
    }
    table.extend(uint(entry(END), field));

    let mut out = uint(u64::from(magic), 4);
    out.extend([0, 0, 1, ptr_size as u8]);
    out.extend(uint(FUNCS.len() as u64, ptr_size)); // nfunc
    out.extend(uint(3, ptr_size)); // nfiles
    if text_relative {
        out.extend(uint(TEXT, ptr_size)); // textStart
    }
    out.extend(uint(funcnametab, ptr_size));
    for _ in 0..3 {
        out.extend(uint(functab, ptr_size)); // cu, file and pc tables (not read)
    }
    out.extend(uint(functab, ptr_size));
    assert_eq!(out.len(), header_len);
    out.extend(names);
    out.extend(table);
    out.extend(records);
    out
}

/// A Go 1.20 table (64-bit, little endian) naming `Write` and `Read`, for other modules' tests.
pub(crate) fn crafted_go120() -> Vec<u8> {
    build(MAGIC_GO120, 8, false)
}

fn range(start: u64, end: u64) -> Option<FuncRange> {
    Some(FuncRange {
        entry: TEXT + start,
        end: TEXT + end,
    })
}

const WANTED: [&str; 3] = [
    "crypto/tls.(*Conn).Write",
    "crypto/tls.(*Conn).Read",
    "crypto/tls.(*Conn).Close",
];

#[test]
fn finds_functions_in_each_layout() {
    for (magic, format) in [
        (MAGIC_GO116, PclntabFormat::Go116),
        (MAGIC_GO118, PclntabFormat::Go118),
        (MAGIC_GO120, PclntabFormat::Go120),
    ] {
        for ptr_size in [4, 8] {
            for big_endian in [false, true] {
                let bytes = build(magic, ptr_size, big_endian);
                let what = format!("{magic:#x}, {ptr_size}-byte pointers, big endian {big_endian}");
                let table = Pclntab::parse(&bytes).expect(&what);
                assert_eq!(table.format(), format, "{what}");
                assert_eq!(table.len(), FUNCS.len(), "{what}");
                // 1.16 ignores the text address: its entries are absolute.
                let text = if format == PclntabFormat::Go116 {
                    0
                } else {
                    TEXT
                };
                assert_eq!(
                    table.find(&WANTED, text),
                    Ok(vec![range(0x120, 0x400), range(0x400, 0x7a0), None]),
                    "{what}"
                );
                // The last function ends at the table's closing entry.
                assert_eq!(
                    table.find(&["main.main"], text),
                    Ok(vec![range(0x7a0, END)]),
                    "{what}"
                );
                assert_eq!(table.contains("crypto/tls.(*Conn).Read"), Ok(true));
                assert_eq!(table.contains("crypto/tls.(*Conn).Rea"), Ok(false));
                assert_eq!(table.contains("crypto/tls"), Ok(false));
                let header_text = (format != PclntabFormat::Go116).then_some(TEXT);
                assert_eq!(table.header_text_start(), header_text, "{what}");
            }
        }
    }
}

#[test]
fn relative_entries_move_with_the_text_address() {
    let bytes = build(MAGIC_GO120, 8, false);
    let table = Pclntab::parse(&bytes).expect("parses");
    assert_eq!(
        table.find(&["crypto/tls.(*Conn).Read"], 0x1000),
        Ok(vec![Some(FuncRange {
            entry: 0x1400,
            end: 0x17a0
        })])
    );
}

#[test]
fn old_and_unknown_magics_are_refused() {
    let mut bytes = build(MAGIC_GO120, 8, false);
    bytes[..4].copy_from_slice(&MAGIC_GO12.to_le_bytes());
    assert_eq!(Pclntab::parse(&bytes).err(), Some(PclntabError::TooOld));
    bytes[..4].copy_from_slice(&0xffff_fff2u32.to_le_bytes());
    assert_eq!(
        Pclntab::parse(&bytes).err(),
        Some(PclntabError::UnknownMagic(0xffff_fff2))
    );
    assert!(Pclntab::parse(&[]).is_err());
}

#[test]
fn bad_header_fields_are_malformed() {
    let good = build(MAGIC_GO118, 8, false);
    for (at, value) in [(4, 1), (6, 3), (7, 2), (7, 16)] {
        let mut bytes = good.clone();
        bytes[at] = value;
        assert!(
            matches!(Pclntab::parse(&bytes), Err(PclntabError::Malformed(_))),
            "byte {at} = {value}"
        );
    }
    // A function count whose table would not fit, and an absurd one.
    for nfunc in [good.len() as u64 / 4, MAX_FUNCTIONS + 1, u64::MAX] {
        let mut bytes = good.clone();
        bytes[8..16].copy_from_slice(&nfunc.to_le_bytes());
        assert!(
            matches!(Pclntab::parse(&bytes), Err(PclntabError::Malformed(_))),
            "nfunc {nfunc}"
        );
    }
    // The function-table offset (word 7) past the end.
    let mut bytes = good.clone();
    bytes[8 + 7 * 8..8 + 8 * 8].copy_from_slice(&(good.len() as u64).to_le_bytes());
    assert!(Pclntab::parse(&bytes).is_err());
}

#[test]
fn unsorted_table_is_malformed() {
    let mut bytes = build(MAGIC_GO120, 8, false);
    let table = Pclntab::parse(&bytes).expect("parses");
    // Give `Read`'s successor (`main.main`, function 3) an entry before `Read`'s.
    let at = table.functab + 2 * 3 * 4;
    bytes[at..at + 4].copy_from_slice(&0x100u32.to_le_bytes());
    let table = Pclntab::parse(&bytes).expect("parses");
    assert!(matches!(
        table.find(&["crypto/tls.(*Conn).Read"], TEXT),
        Err(PclntabError::Malformed(_))
    ));
}

#[test]
fn name_without_terminator_is_malformed() {
    let mut bytes = build(MAGIC_GO120, 8, false);
    let table = Pclntab::parse(&bytes).expect("parses");
    // Overwrite from the first name to the end of the name table with non-NUL bytes.
    let (start, end) = (table.funcnametab, table.functab);
    bytes[start..end].fill(b'x');
    bytes.truncate(end); // and cut the section right there: no NUL anywhere after
    // (the function table is gone too, so parse itself must already refuse)
    assert!(Pclntab::parse(&bytes).is_err());
    // A name pointing at the last byte of a section that is otherwise whole.
    let mut bytes = build(MAGIC_GO120, 8, false);
    let last = bytes.len() - 1;
    bytes[last] = b'x';
    let table = Pclntab::parse(&bytes).expect("parses");
    let record = table.functab + table.functab_field(1).expect("field") as usize;
    let off = (last - table.funcnametab) as u32;
    bytes[record + 4..record + 8].copy_from_slice(&off.to_le_bytes());
    let table = Pclntab::parse(&bytes).expect("parses");
    assert_eq!(
        table.contains("x"),
        Err(PclntabError::Malformed("a function name has no end"))
    );
}

/// Every prefix of every layout, and every single-byte corruption of one: a result, never a
/// panic, and an answer only from bytes that were really there.
#[test]
fn truncated_and_corrupted_tables_never_panic() {
    for magic in [MAGIC_GO116, MAGIC_GO118, MAGIC_GO120] {
        for ptr_size in [4, 8] {
            let bytes = build(magic, ptr_size, false);
            for len in 0..bytes.len() {
                if let Ok(table) = Pclntab::parse(&bytes[..len]) {
                    let _ = table.find(&WANTED, TEXT);
                    let _ = table.contains("main.main");
                }
            }
        }
    }
    let good = build(MAGIC_GO118, 8, false);
    for at in 0..good.len() {
        for value in [0x00, 0x7f, 0x80, 0xff] {
            let mut bytes = good.clone();
            bytes[at] = value;
            if let Ok(table) = Pclntab::parse(&bytes) {
                let _ = table.find(&WANTED, u64::MAX - 1);
                let _ = table.find(&WANTED, TEXT);
                let _ = table.contains("crypto/tls.(*Conn).Read");
            }
        }
    }
}

#[test]
fn a_name_given_twice_is_an_error_not_a_guess() {
    let mut bytes = build(MAGIC_GO120, 8, false);
    let table = Pclntab::parse(&bytes).expect("parses");
    // Point `main.main`'s record (function 3) at `Read`'s name (function 2).
    let record = |i: usize| table.functab + table.functab_field(2 * i + 1).expect("field") as usize;
    let (read, main) = (record(2), record(3));
    let read_name = bytes[read + 4..read + 8].to_vec();
    bytes[main + 4..main + 8].copy_from_slice(&read_name);
    let table = Pclntab::parse(&bytes).expect("parses");
    assert_eq!(
        table.find(&WANTED, TEXT),
        Err(PclntabError::Duplicate("crypto/tls.(*Conn).Read".into()))
    );
    // A name nobody asked for may repeat.
    assert!(table.find(&["crypto/tls.(*Conn).Write"], TEXT).is_ok());
}
