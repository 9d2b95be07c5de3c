//! Go's function table (`.gopclntab`): function names and address ranges of a Go executable
//! linked without a symbol table (`-ldflags=-s -w`), which still carries this table because
//! the Go runtime needs it for stack traces.
//!
//! Receives: the bytes of the `.gopclntab` section. Emits: [`Pclntab`], which answers where a
//! named function starts and ends ([`FuncRange`]), or a [`PclntabError`].
//!
//! Layout (from Go's `src/runtime/symtab.go` `pcHeader` and `src/debug/gosym/pclntab.go`):
//! an 8-byte head — a 4-byte magic, two zero bytes, the instruction-size quantum (1, 2 or 4)
//! and the pointer size (4 or 8) — then pointer-sized words:
//!
//! | magic        | Go          | words after the head                                           |
//! |--------------|-------------|----------------------------------------------------------------|
//! | `0xfffffffb` | 1.2 – 1.15  | one table for everything (not read: these predate the register ABI) |
//! | `0xfffffffa` | 1.16 – 1.17 | nfunc, nfiles, funcname, cu, filetab, pctab, pcln offsets       |
//! | `0xfffffff0` | 1.18 – 1.19 | nfunc, nfiles, textStart, funcname, cu, filetab, pctab, pcln    |
//! | `0xfffffff1` | 1.20 –      | as 1.18                                                        |
//!
//! The offsets count from the start of the table. At the `pcln` offset is the function table:
//! `nfunc` pairs (entry, offset of the function's `_func` record from the function table)
//! and one more entry, the end of the last function. Each function ends where the next one
//! starts. Entries are absolute addresses (pointer-sized) up to Go 1.17 and 32-bit offsets
//! from the start of the module's text (`runtime.text`) from Go 1.18 on. A `_func` record
//! starts with the same entry field and then the 32-bit offset of the function's name in the
//! name table (NUL-terminated strings).
//!
//! Every read is bounds-checked; a hostile table yields an error, never a panic, and the work
//! is bounded by the table's size (one pass over at most [`MAX_FUNCTIONS`] entries).

/// The table's ELF section: `.gopclntab`, or, in a position-independent executable, inside the
/// relocation-read-only data under this longer name.
pub const SECTION_NAMES: [&str; 2] = [".gopclntab", ".data.rel.ro.gopclntab"];

/// The largest `.gopclntab` read (a large Go program's is a few tens of MiB).
pub const MAX_PCLNTAB_BYTES: u64 = 256 << 20;
/// More functions than any real program has; a larger count is a corrupt header.
pub const MAX_FUNCTIONS: u64 = 4 << 20;
/// Longest function name compared (Go's longest generic instantiations stay far below).
const MAX_NAME_BYTES: usize = 4096;

const MAGIC_GO12: u32 = 0xffff_fffb;
const MAGIC_GO116: u32 = 0xffff_fffa;
const MAGIC_GO118: u32 = 0xffff_fff0;
const MAGIC_GO120: u32 = 0xffff_fff1;

/// The table's layout generation, named by the first Go release that wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PclntabFormat {
    /// Go 1.16 and 1.17: absolute entry addresses.
    Go116,
    /// Go 1.18 and 1.19: entries relative to `runtime.text`.
    Go118,
    /// Go 1.20 and later: as 1.18 (the magic changed with the funcID encoding).
    Go120,
}

impl PclntabFormat {
    /// Whether function entries are offsets from `runtime.text` (else absolute addresses).
    pub fn text_relative(self) -> bool {
        self != PclntabFormat::Go116
    }
}

/// Why the table cannot be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PclntabError {
    /// The Go 1.2–1.15 layout: those releases predate the register ABI the probes read.
    #[error(".gopclntab of Go 1.2–1.15, which predate the register ABI of Go 1.17")]
    TooOld,
    #[error(".gopclntab: unknown magic {0:#010x}")]
    UnknownMagic(u32),
    #[error(".gopclntab: {0}")]
    Malformed(&'static str),
    #[error(".gopclntab names two functions {0}")]
    Duplicate(String),
}

/// A function's code: `[entry, end)` in virtual addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuncRange {
    pub entry: u64,
    pub end: u64,
}

/// A parsed `.gopclntab` header over the section's bytes.
#[derive(Clone, Debug)]
pub struct Pclntab<'a> {
    data: &'a [u8],
    format: PclntabFormat,
    big_endian: bool,
    ptr_size: usize,
    nfunc: usize,
    /// The header's `textStart` word (Go 1.18+); 0 when the linker left it unset.
    header_text_start: u64,
    funcnametab: usize,
    functab: usize,
}

impl<'a> Pclntab<'a> {
    /// Reads the header and checks that the name and function tables lie inside `data`.
    pub fn parse(data: &'a [u8]) -> Result<Self, PclntabError> {
        let malformed = PclntabError::Malformed;
        let head = data.get(..8).ok_or(malformed("shorter than its header"))?;
        let magic_bytes = [head[0], head[1], head[2], head[3]];
        let (magic, big_endian) = match (
            u32::from_le_bytes(magic_bytes),
            u32::from_be_bytes(magic_bytes),
        ) {
            (m, _) if is_magic(m) => (m, false),
            (_, m) if is_magic(m) => (m, true),
            (m, _) => return Err(PclntabError::UnknownMagic(m)),
        };
        let format = match magic {
            MAGIC_GO12 => return Err(PclntabError::TooOld),
            MAGIC_GO116 => PclntabFormat::Go116,
            MAGIC_GO118 => PclntabFormat::Go118,
            _ => PclntabFormat::Go120,
        };
        if head[4] != 0 || head[5] != 0 || !matches!(head[6], 1 | 2 | 4) {
            return Err(malformed("bad header padding or instruction quantum"));
        }
        let ptr_size = usize::from(head[7]);
        if ptr_size != 4 && ptr_size != 8 {
            return Err(malformed("pointer size is neither 4 nor 8"));
        }
        let word = |i: usize| read_uint(data, 8 + i * ptr_size, ptr_size, big_endian);
        let offset = |i: usize| -> Result<usize, PclntabError> {
            word(i)
                .and_then(|w| usize::try_from(w).ok())
                .filter(|&o| o < data.len())
                .ok_or(malformed("a table offset points outside the section"))
        };
        let nfunc = word(0).ok_or(malformed("truncated header"))?;
        if nfunc > MAX_FUNCTIONS {
            return Err(malformed("implausible function count"));
        }
        let nfunc = nfunc as usize;
        // Go 1.18 inserted `textStart` after `nfiles`, moving the offsets one word on.
        let (header_text_start, first_offset) = match format {
            PclntabFormat::Go116 => (0, 2),
            _ => (word(2).ok_or(malformed("truncated header"))?, 3),
        };
        let funcnametab = offset(first_offset)?;
        let functab = offset(first_offset + 4)?;
        let table = Pclntab {
            data,
            format,
            big_endian,
            ptr_size,
            nfunc,
            header_text_start,
            funcnametab,
            functab,
        };
        // The function table: 2 × nfunc fields and the end of the last function.
        let table_bytes = (2 * nfunc + 1) * table.field_size();
        if functab
            .checked_add(table_bytes)
            .is_none_or(|end| end > data.len())
        {
            return Err(malformed("the function table runs past the section"));
        }
        Ok(table)
    }

    pub fn format(&self) -> PclntabFormat {
        self.format
    }

    /// Number of functions in the table.
    pub fn len(&self) -> usize {
        self.nfunc
    }

    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    /// The header's `textStart` (Go 1.18+), if the linker filled it in. Go's own reader does
    /// not trust it (it may be unrelocated in position-independent executables).
    pub fn header_text_start(&self) -> Option<u64> {
        (self.header_text_start != 0).then_some(self.header_text_start)
    }

    /// Offset of the function name table from the start of the section.
    pub fn name_table_offset(&self) -> usize {
        self.funcnametab
    }

    /// The first function's entry as stored: an offset from `runtime.text` (Go 1.18+), or an
    /// address (1.16). `None` for an empty table.
    pub fn first_entry_field(&self) -> Option<u64> {
        if self.nfunc == 0 {
            return None;
        }
        self.functab_field(0).ok()
    }

    /// Where each of `names` is: `text_start` is the address of `runtime.text`, the base of
    /// entries from Go 1.18 on (ignored by the 1.16 layout). A name not in the table is
    /// `None`; a name given to two functions (an assembly function and its Go declaration
    /// can share one) is an error rather than a guess.
    pub fn find(
        &self,
        names: &[&str],
        text_start: u64,
    ) -> Result<Vec<Option<FuncRange>>, PclntabError> {
        let mut found = vec![None; names.len()];
        for function in self.functions(text_start) {
            let (name, range) = function?;
            let Some(i) = names.iter().position(|n| n.as_bytes() == name) else {
                continue;
            };
            if found[i].replace(range).is_some() {
                return Err(PclntabError::Duplicate(names[i].to_owned()));
            }
        }
        Ok(found)
    }

    /// Every function, in table order: its name and its code's range (`text_start` as in
    /// [`Pclntab::find`]). Stops after the first error.
    pub fn functions(
        &self,
        text_start: u64,
    ) -> impl Iterator<Item = Result<(&'a [u8], FuncRange), PclntabError>> + '_ {
        let mut failed = false;
        (0..self.nfunc).map_while(move |i| {
            if failed {
                return None;
            }
            let function = self.function(i, text_start);
            failed = function.is_err();
            Some(function)
        })
    }

    fn function(&self, i: usize, text_start: u64) -> Result<(&'a [u8], FuncRange), PclntabError> {
        let name = self.name(i)?;
        let (entry, end) = (self.entry(i, text_start)?, self.entry(i + 1, text_start)?);
        if end <= entry {
            return Err(PclntabError::Malformed(
                "a function ends before it starts (the table is not sorted)",
            ));
        }
        Ok((name, FuncRange { entry, end }))
    }

    /// Whether any function is named `name` (needs no text address).
    pub fn contains(&self, name: &str) -> Result<bool, PclntabError> {
        for i in 0..self.nfunc {
            if self.name(i)? == name.as_bytes() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Size of one function-table field: 32-bit offsets from Go 1.18, pointers before.
    fn field_size(&self) -> usize {
        if self.format.text_relative() {
            4
        } else {
            self.ptr_size
        }
    }

    /// The `n`th field of the function table (checked in `parse` for n ≤ 2 × nfunc).
    fn functab_field(&self, n: usize) -> Result<u64, PclntabError> {
        let size = self.field_size();
        read_uint(self.data, self.functab + n * size, size, self.big_endian)
            .ok_or(PclntabError::Malformed("function table truncated"))
    }

    /// Entry address of function `i` (`i == nfunc`: the end of the last function).
    fn entry(&self, i: usize, text_start: u64) -> Result<u64, PclntabError> {
        let field = self.functab_field(2 * i)?;
        if self.format.text_relative() {
            text_start
                .checked_add(field)
                .ok_or(PclntabError::Malformed("entry address overflows"))
        } else {
            Ok(field)
        }
    }

    /// The name of function `i`, without its NUL.
    fn name(&self, i: usize) -> Result<&'a [u8], PclntabError> {
        let malformed = PclntabError::Malformed;
        let record = usize::try_from(self.functab_field(2 * i + 1)?)
            .ok()
            .and_then(|o| self.functab.checked_add(o))
            .ok_or(malformed("a function record is outside the section"))?;
        // `_func`: the entry field (4 bytes from Go 1.18, a pointer before), then `nameoff`.
        let nameoff = record
            .checked_add(self.field_size())
            .and_then(|at| read_uint(self.data, at, 4, self.big_endian))
            .ok_or(malformed("a function record is outside the section"))?;
        let start = self
            .funcnametab
            .checked_add(nameoff as usize)
            .ok_or(malformed("a function name is outside the section"))?;
        let rest = self
            .data
            .get(start..)
            .ok_or(malformed("a function name is outside the section"))?;
        let rest = &rest[..rest.len().min(MAX_NAME_BYTES + 1)];
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(malformed("a function name has no end"))?;
        Ok(&rest[..len])
    }
}

fn is_magic(m: u32) -> bool {
    matches!(m, MAGIC_GO12 | MAGIC_GO116 | MAGIC_GO118 | MAGIC_GO120)
}

/// A `size`-byte (4 or 8) unsigned integer at `at`, or `None` past the end.
fn read_uint(data: &[u8], at: usize, size: usize, big_endian: bool) -> Option<u64> {
    let bytes = data.get(at..at.checked_add(size)?)?;
    let mut v = 0u64;
    for i in 0..size {
        let b = if big_endian {
            bytes[i]
        } else {
            bytes[size - 1 - i]
        };
        v = (v << 8) | u64::from(b);
    }
    Some(v)
}

#[cfg(test)]
#[path = "go_pclntab_tests.rs"]
pub(crate) mod tests;
