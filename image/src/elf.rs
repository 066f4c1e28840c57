//! Just enough ELF64 parsing to find what a binary needs at run time: its interpreter
//! (`PT_INTERP`), its `DT_NEEDED` libraries and its `DT_RUNPATH`/`DT_RPATH`.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("only 64-bit little-endian ELF files are supported")]
    Unsupported,
    #[error("truncated or malformed ELF: {0}")]
    Malformed(&'static str),
}

/// The run-time dependencies of one ELF file; all empty for a static binary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dynamic {
    pub interpreter: Option<String>,
    pub needed: Vec<String>,
    pub runpath: Vec<String>,
}

/// True when `bytes` start with the ELF magic.
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF")
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

struct Segment {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

pub fn parse(bytes: &[u8]) -> Result<Dynamic, ElfError> {
    if !is_elf(bytes) {
        return Err(ElfError::NotElf);
    }
    if bytes.len() < 64 {
        return Err(ElfError::Malformed("header"));
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err(ElfError::Unsupported);
    }
    let phoff = u64_at(bytes, 0x20)?;
    let phentsize = u64::from(u16_at(bytes, 0x36)?);
    let phnum = u64::from(u16_at(bytes, 0x38)?);
    let mut segments = Vec::new();
    for i in 0..phnum {
        let at = to_usize(phoff + i * phentsize)?;
        segments.push(Segment {
            kind: u32_at(bytes, at)?,
            offset: u64_at(bytes, at + 8)?,
            vaddr: u64_at(bytes, at + 16)?,
            filesz: u64_at(bytes, at + 32)?,
        });
    }
    let mut dynamic = Dynamic::default();
    if let Some(interp) = segments.iter().find(|s| s.kind == PT_INTERP) {
        dynamic.interpreter = Some(c_string(bytes, to_usize(interp.offset)?)?);
    }
    let Some(dyn_seg) = segments.iter().find(|s| s.kind == PT_DYNAMIC) else {
        return Ok(dynamic);
    };
    let mut entries = Vec::new();
    let start = to_usize(dyn_seg.offset)?;
    for i in 0..to_usize(dyn_seg.filesz / 16)? {
        let tag = u64_at(bytes, start + i * 16)?;
        if tag == DT_NULL {
            break;
        }
        entries.push((tag, u64_at(bytes, start + i * 16 + 8)?));
    }
    let strtab_vaddr = entries
        .iter()
        .find(|(t, _)| *t == DT_STRTAB)
        .map(|(_, v)| *v)
        .ok_or(ElfError::Malformed("dynamic section without DT_STRTAB"))?;
    let strtab = segments
        .iter()
        .filter(|s| s.kind == PT_LOAD)
        .find(|s| s.vaddr <= strtab_vaddr && strtab_vaddr < s.vaddr + s.filesz)
        .map(|s| strtab_vaddr - s.vaddr + s.offset)
        .ok_or(ElfError::Malformed("DT_STRTAB outside every loaded segment"))?;
    for (tag, value) in entries {
        let text = || c_string(bytes, to_usize(strtab + value)?);
        match tag {
            DT_NEEDED => dynamic.needed.push(text()?),
            DT_RPATH | DT_RUNPATH => {
                dynamic.runpath.extend(text()?.split(':').filter(|p| !p.is_empty()).map(str::to_owned))
            }
            _ => {}
        }
    }
    Ok(dynamic)
}

fn to_usize(v: u64) -> Result<usize, ElfError> {
    usize::try_from(v).map_err(|_| ElfError::Malformed("offset"))
}

fn slice(bytes: &[u8], at: usize, len: usize) -> Result<&[u8], ElfError> {
    bytes
        .get(at..at.checked_add(len).ok_or(ElfError::Malformed("offset"))?)
        .ok_or(ElfError::Malformed("offset past end"))
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, ElfError> {
    Ok(u16::from_le_bytes(slice(b, at, 2)?.try_into().expect("2 bytes")))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, ElfError> {
    Ok(u32::from_le_bytes(slice(b, at, 4)?.try_into().expect("4 bytes")))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, ElfError> {
    Ok(u64::from_le_bytes(slice(b, at, 8)?.try_into().expect("8 bytes")))
}

fn c_string(bytes: &[u8], at: usize) -> Result<String, ElfError> {
    let rest = bytes.get(at..).ok_or(ElfError::Malformed("string past end"))?;
    let end = rest.iter().position(|&c| c == 0).ok_or(ElfError::Malformed("unterminated string"))?;
    String::from_utf8(rest[..end].to_vec()).map_err(|_| ElfError::Malformed("string is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_binary_needs_libc_through_the_standard_interpreter() {
        let bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let d = parse(&bytes).unwrap();
        assert_eq!(d.interpreter.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
        assert!(d.needed.iter().any(|n| n == "libc.so.6"), "{:?}", d.needed);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert_eq!(parse(b"#!/bin/sh\n"), Err(ElfError::NotElf));
        assert_eq!(parse(b"\x7fELF"), Err(ElfError::Malformed("header")));
        let mut truncated = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        truncated.truncate(200);
        assert!(matches!(parse(&truncated), Err(ElfError::Malformed(_))));
        let mut elf32 = vec![0u8; 64];
        elf32[..4].copy_from_slice(b"\x7fELF");
        elf32[4] = 1;
        assert_eq!(parse(&elf32), Err(ElfError::Unsupported));
    }
}
