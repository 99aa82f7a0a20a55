//! An ELF file's function symbols and executable segments.

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::{Object, ObjectKind, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};

use crate::table::{Binding, Entry, SymbolTable};
use crate::Error;

/// An executable PT_LOAD segment: where it is in memory and in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecSegment {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
}

/// What kind of ELF file: a fixed-address executable, a position-
/// independent one (ET_DYN: PIE or shared library), or anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfKind {
    Executable,
    Dynamic,
    Other,
}

/// What an ELF file gives a symbolizer.
#[derive(Debug, Clone)]
pub struct ElfSymbols {
    pub table: SymbolTable,
    pub exec_segments: Vec<ExecSegment>,
    pub kind: ElfKind,
    /// Lowest PT_LOAD address: a PIE's load bias reference.
    pub min_vaddr: u64,
}

fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(d) => format!("{d:#}"),
        Err(_) => name.to_string(),
    }
}

impl ElfSymbols {
    /// Reads the symbol table (the dynamic one when it has no functions):
    /// functions, and labels in text sections (asm entry points such as
    /// entry_SYSCALL_64), like perf's elf_sym__is_function() and
    /// elf_sym__is_label(). Data symbols and text section ends bound
    /// unsized functions. Rust names are demangled without their hash.
    pub fn parse(data: &[u8]) -> Result<ElfSymbols, Error> {
        let file = object::File::parse(data).map_err(|e| Error::NotElf(e.to_string()))?;
        let kind = match file.kind() {
            ObjectKind::Executable => ElfKind::Executable,
            ObjectKind::Dynamic => ElfKind::Dynamic,
            _ => ElfKind::Other,
        };
        let mut exec_segments = Vec::new();
        let mut min_vaddr: Option<u64> = None;
        if let Ok(hdr) = elf::FileHeader64::<object::Endianness>::parse(data) {
            if let Ok(endian) = hdr.endian() {
                if let Ok(phdrs) = hdr.program_headers(endian, data) {
                    for ph in phdrs.iter().filter(|p| p.p_type(endian) == elf::PT_LOAD) {
                        let vaddr = ph.p_vaddr(endian);
                        min_vaddr = Some(min_vaddr.map_or(vaddr, |m| m.min(vaddr)));
                        if ph.p_flags(endian) & elf::PF_X != 0 {
                            exec_segments.push(ExecSegment {
                                vaddr,
                                memsz: ph.p_memsz(endian),
                                offset: ph.p_offset(endian),
                            });
                        }
                    }
                }
            }
        }
        let mut boundaries: Vec<u64> = file
            .sections()
            .filter(|s| s.kind() == SectionKind::Text && s.size() > 0)
            .map(|s| s.address().saturating_add(s.size()))
            .collect();
        let mut entries = Vec::new();
        let collect = |syms: &mut dyn Iterator<Item = object::Symbol<'_, '_>>,
                       entries: &mut Vec<Entry>,
                       boundaries: &mut Vec<u64>| {
            for sym in syms {
                if !sym.is_definition() || sym.address() == 0 {
                    continue;
                }
                let Ok(name) = sym.name() else { continue };
                if name.is_empty() {
                    continue;
                }
                let label_in_text = sym.kind() == SymbolKind::Label
                    && sym
                        .section_index()
                        .and_then(|i| file.section_by_index(i).ok())
                        .is_some_and(|s| s.kind() == SectionKind::Text);
                if sym.kind() == SymbolKind::Text || label_in_text {
                    let binding = if sym.is_weak() {
                        Binding::Weak
                    } else if sym.is_global() {
                        Binding::Global
                    } else {
                        Binding::Local
                    };
                    entries.push(Entry {
                        start: sym.address(),
                        size: sym.size(),
                        binding,
                        name: demangle(name),
                    });
                } else if matches!(sym.kind(), SymbolKind::Data | SymbolKind::Unknown) {
                    boundaries.push(sym.address());
                }
            }
        };
        collect(&mut file.symbols(), &mut entries, &mut boundaries);
        if entries.is_empty() {
            collect(&mut file.dynamic_symbols(), &mut entries, &mut boundaries);
        }
        Ok(ElfSymbols {
            table: SymbolTable::new(entries, boundaries),
            exec_segments,
            kind,
            min_vaddr: min_vaddr.unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker_function() -> u64 {
        std::hint::black_box(7)
    }

    /// The test binary is an ELF with a symbol table: a function of ours
    /// resolves to its own name (PIE or not: the bias comes from the
    /// function's own address against the lowest segment).
    #[test]
    fn own_executable() {
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        let e = ElfSymbols::parse(&data).unwrap();
        assert!(e.table.len() > 100);
        assert!(!e.exec_segments.is_empty());
        let f = marker_function as *const () as u64;
        let found = if e.kind == ElfKind::Dynamic {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            let base = maps
                .lines()
                .find(|l| l.ends_with(&*exe.to_string_lossy()))
                .and_then(|l| u64::from_str_radix(l.split('-').next()?, 16).ok())
                .unwrap();
            e.table.lookup(f - (base - (e.min_vaddr & !0xfff)))
        } else {
            e.table.lookup(f)
        };
        let name = found.map(|s| s.name.to_string());
        assert!(
            name.as_deref()
                .is_some_and(|n| n.ends_with("marker_function")),
            "{name:?}"
        );
        assert!(ElfSymbols::parse(b"not an elf").is_err());
    }
}
