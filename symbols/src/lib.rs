//! One guest symbolizer for perfvisor: the host's `record` crate and the
//! static guest tools (`pvpmu-tool`) both resolve guest addresses through
//! this crate, so a profile names the same function whichever side made it.
//!
//! - [`SymbolTable`]: a sorted table with one lookup rule. A sized symbol
//!   covers `[start, start + size)`. An unsized one ends at the next
//!   boundary (the next symbol, a data symbol, the end of a text section);
//!   the last one ends at the page after the one it starts in, as perf's
//!   `symbols__fixup_end()` does.
//! - Aliases (several names at one address) keep the name perf's
//!   `choose_best_symbol()` keeps (tools/perf/util/symbol.c, Linux 6.1): a
//!   sized symbol over an unsized one, then non-weak over weak, global over
//!   local, fewer leading underscores, the longer name, then the first
//!   seen.
//! - [`parse_kallsyms`]: System.map and /proc/kallsyms text.
//! - [`ElfSymbols`]: an ELF file's function symbols and executable segments.
//! - [`is_kernel_address`]: the one rule for which half an address is in.

mod elf;
mod kallsyms;
mod table;

pub use elf::{ElfKind, ElfSymbols, ExecSegment};
pub use kallsyms::{parse_kallsyms, Kallsyms, Malformed};
pub use table::{Binding, Entry, Symbol, SymbolTable};

/// Why an ELF file gave no symbols.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not an ELF file the reader understands.
    #[error("not an ELF file ({0}); pass the binary itself, not a script or a wrapper")]
    NotElf(String),
}

/// x86-64 kernel addresses are the canonical upper half of the address
/// space (4-level paging; a 5-level kernel's text and modules are there
/// too).
pub const KERNEL_SPACE_START: u64 = 0xffff_8000_0000_0000;

/// Whether `ip` is a kernel address: in the canonical upper half. A
/// non-canonical address is neither kernel nor a valid user address; it is
/// not kernel, and no user table resolves it.
pub fn is_kernel_address(ip: u64) -> bool {
    ip >= KERNEL_SPACE_START
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_half() {
        assert!(is_kernel_address(0xffff_ffff_8100_0000));
        assert!(is_kernel_address(KERNEL_SPACE_START));
        assert!(!is_kernel_address(KERNEL_SPACE_START - 1), "non-canonical");
        assert!(!is_kernel_address(0x8000_0000_0000_0000), "non-canonical");
        assert!(!is_kernel_address(0x40_1000));
    }
}
