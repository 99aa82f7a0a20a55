//! The sorted symbol table and its one lookup rule.

use std::cmp::Reverse;
use std::sync::Arc;

/// A symbol's binding, in perf's order of preference among aliases:
/// non-weak over weak, then global over local (choose_best_symbol()).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Binding {
    Global,
    Local,
    Weak,
}

/// One symbol before the table is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub start: u64,
    /// 0: unknown, the symbol ends at the next boundary.
    pub size: u64,
    pub binding: Binding,
    pub name: String,
}

impl Entry {
    /// Lower is better among aliases at one address, as perf's
    /// choose_best_symbol() decides: sized, non-weak, global, fewer leading
    /// underscores, longer name.
    fn rank(&self) -> (bool, Binding, usize, Reverse<usize>) {
        let underscores = self.name.bytes().take_while(|b| *b == b'_').count();
        (
            self.size == 0,
            self.binding,
            underscores,
            Reverse(self.name.len()),
        )
    }
}

/// A resolved address: the symbol's name and the address's offset into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbol<'a> {
    pub name: &'a str,
    pub offset: u64,
}

/// Where an unsized last symbol ends: the page after the one it starts
/// in, as perf's symbols__fixup_end() sets it (`roundup(start, 4096) +
/// 4096`).
fn last_symbol_end(start: u64) -> u64 {
    const PAGE: u64 = 4096;
    start
        .checked_next_multiple_of(PAGE)
        .and_then(|p| p.checked_add(PAGE))
        .unwrap_or(u64::MAX)
}

/// A sorted symbol table.
#[derive(Debug, Default, Clone)]
pub struct SymbolTable {
    text_start: Option<u64>,
    starts: Vec<u64>,
    ends: Vec<u64>,
    names: Vec<Arc<str>>,
}

impl SymbolTable {
    /// Builds a table from the named text symbols `entries` and the
    /// `boundaries` where an unsized symbol must end besides the next
    /// symbol (data symbols, the ends of text sections).
    pub fn new(mut entries: Vec<Entry>, mut boundaries: Vec<u64>) -> SymbolTable {
        let text_start = ["_text", "_stext"]
            .iter()
            .find_map(|n| entries.iter().find(|e| e.name == *n).map(|e| e.start));
        // A stable sort: among equal ranks the first seen stays first.
        entries.sort_by_key(|e| (e.start, e.rank()));
        entries.dedup_by_key(|e| e.start);
        boundaries.extend(entries.iter().map(|e| e.start));
        boundaries.sort_unstable();
        boundaries.dedup();
        let mut t = SymbolTable {
            text_start,
            ..SymbolTable::default()
        };
        for e in entries {
            let end = if e.size != 0 {
                e.start.saturating_add(e.size)
            } else {
                let i = boundaries.partition_point(|b| *b <= e.start);
                boundaries
                    .get(i)
                    .copied()
                    .unwrap_or_else(|| last_symbol_end(e.start))
            };
            t.starts.push(e.start);
            t.ends.push(end);
            t.names.push(Arc::from(e.name));
        }
        t
    }

    /// Number of symbols (aliases count once).
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// No symbols.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The address of `_text` (else `_stext`): a kernel's reference
    /// relocation symbol for perf.
    pub fn text_start(&self) -> Option<u64> {
        self.text_start
    }

    /// The lowest symbol address.
    pub fn first_start(&self) -> Option<u64> {
        self.starts.first().copied()
    }

    fn index_of(&self, addr: u64) -> Option<usize> {
        let i = self.starts.partition_point(|s| *s <= addr).checked_sub(1)?;
        (addr < *self.ends.get(i)?).then_some(i)
    }

    /// The symbol containing `addr`, with the offset into it.
    pub fn lookup(&self, addr: u64) -> Option<Symbol<'_>> {
        let i = self.index_of(addr)?;
        Some(Symbol {
            name: self.names.get(i)?,
            offset: addr - self.starts.get(i)?,
        })
    }

    /// The name of the symbol containing `addr`, shared (no copy per
    /// sample).
    pub fn lookup_name(&self, addr: u64) -> Option<&Arc<str>> {
        self.names.get(self.index_of(addr)?)
    }

    /// kallsyms text ("ADDR t NAME" lines, ascending, `_text` first), which
    /// perf reads for a guest kernel.
    pub fn to_kallsyms(&self) -> String {
        let mut s = String::with_capacity(self.len() * 40);
        if let Some(t) = self.text_start {
            s.push_str(&format!("{t:016x} T _text\n"));
        }
        for (start, name) in self.starts.iter().zip(&self.names) {
            s.push_str(&format!("{start:016x} t {name}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(start: u64, size: u64, binding: Binding, name: &str) -> Entry {
        Entry {
            start,
            size,
            binding,
            name: name.into(),
        }
    }

    #[test]
    fn aliases_follow_perfs_choice() {
        use Binding::*;
        let pick = |v: Vec<Entry>| {
            SymbolTable::new(v, vec![])
                .lookup(0x1000)
                .map(|s| s.name.to_string())
        };
        // Sized over unsized, whatever else.
        assert_eq!(
            pick(vec![e(0x1000, 0, Global, "a"), e(0x1000, 8, Weak, "__b")]),
            Some("__b".into())
        );
        // Non-weak over weak, local included.
        assert_eq!(
            pick(vec![e(0x1000, 8, Weak, "w"), e(0x1000, 8, Local, "l")]),
            Some("l".into())
        );
        // Global over local.
        assert_eq!(
            pick(vec![e(0x1000, 8, Local, "l"), e(0x1000, 8, Global, "g")]),
            Some("g".into())
        );
        // Fewer leading underscores, then the longer name.
        assert_eq!(
            pick(vec![
                e(0x1000, 0, Global, "__getppid"),
                e(0x1000, 0, Global, "getppid")
            ]),
            Some("getppid".into())
        );
        assert_eq!(
            pick(vec![
                e(0x1000, 0, Global, "_text"),
                e(0x1000, 0, Global, "_stext")
            ]),
            Some("_stext".into())
        );
        // A full tie: the first seen.
        assert_eq!(
            pick(vec![e(0x1000, 0, Global, "ab"), e(0x1000, 0, Global, "cd")]),
            Some("ab".into())
        );
    }

    #[test]
    fn ends() {
        use Binding::*;
        let t = SymbolTable::new(
            vec![
                e(0x1000, 0x10, Global, "sized"),
                e(0x1040, 0, Global, "to_data"),
                e(0x2000, 0, Global, "to_next"),
                e(0x2100, 0, Global, "last"),
            ],
            vec![0x1080],
        );
        assert_eq!(t.lookup(0x100f).map(|s| s.offset), Some(0xf));
        assert_eq!(t.lookup(0x1010), None, "past the size");
        assert_eq!(t.lookup(0x107f).map(|s| s.name), Some("to_data"));
        assert_eq!(t.lookup(0x1080), None, "the boundary ends it");
        assert_eq!(t.lookup(0x20ff).map(|s| s.name), Some("to_next"));
        assert_eq!(t.lookup(0x3fff).map(|s| s.name), Some("last"));
        assert_eq!(t.lookup(0x4000), None, "the page after the last one's");
        assert_eq!(t.lookup(0xfff), None);
        assert_eq!(t.first_start(), Some(0x1000));
        assert_eq!(last_symbol_end(u64::MAX - 5), u64::MAX);
    }

    proptest! {
        /// Whatever the entries, a lookup never panics and what it finds
        /// starts at or below the address and is one of the names given.
        #[test]
        fn lookup_finds_a_covering_symbol(
            raw in proptest::collection::vec((any::<u64>(), 0u64..0x1000, 0u8..3), 0..40),
            bounds in proptest::collection::vec(any::<u64>(), 0..10),
            probes in proptest::collection::vec(any::<u64>(), 1..40),
        ) {
            let entries: Vec<Entry> = raw
                .iter()
                .enumerate()
                .map(|(i, (s, z, b))| {
                    let binding = [Binding::Global, Binding::Local, Binding::Weak][*b as usize];
                    e(*s, *z, binding, &format!("s{i}"))
                })
                .collect();
            let t = SymbolTable::new(entries.clone(), bounds);
            for p in probes.iter().copied().chain(raw.iter().map(|r| r.0)) {
                if let Some(s) = t.lookup(p) {
                    prop_assert!(s.offset <= p);
                    prop_assert!(entries.iter().any(|e| e.name == s.name && e.start == p - s.offset));
                }
            }
        }
    }
}
