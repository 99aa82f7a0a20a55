//! System.map and /proc/kallsyms text: `ADDR TYPE NAME [\t[MODULE]]`.

use crate::table::{Binding, Entry, SymbolTable};

/// A line that is not `ADDR TYPE NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// 1-based.
    pub line: usize,
    /// Its first 80 characters.
    pub text: String,
}

/// What a kallsyms text gave.
#[derive(Debug, Clone)]
pub struct Kallsyms {
    pub table: SymbolTable,
    /// Lines that were not symbols, and the first of them. A file the user
    /// named is refused for one; a live /proc/kallsyms is read anyway.
    pub malformed: usize,
    pub first_malformed: Option<Malformed>,
}

/// Parses kallsyms text. Text symbols (t, T, w, W) become entries, every
/// other non-absolute symbol only ends the one before it (perf reads data
/// symbols too, so a text symbol never runs over one). Absolute symbols and
/// address 0 (kptr_restrict) are skipped, so a restricted file gives an
/// empty table. A module symbol keeps its `[module]` after the name.
pub fn parse_kallsyms(text: &str) -> Kallsyms {
    let mut entries = Vec::new();
    let mut boundaries = Vec::new();
    let mut malformed = 0;
    let mut first_malformed = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut it = line.split_ascii_whitespace();
        let parsed = match (it.next(), it.next(), it.next()) {
            (Some(addr), Some(ty), Some(name)) => {
                match (u64::from_str_radix(addr, 16), ty.as_bytes()) {
                    (Ok(addr), [ty]) => Some((addr, *ty, name)),
                    _ => None,
                }
            }
            _ => None,
        };
        let Some((addr, ty, name)) = parsed else {
            malformed += 1;
            first_malformed.get_or_insert_with(|| Malformed {
                line: i + 1,
                text: line.chars().take(80).collect(),
            });
            continue;
        };
        if matches!(ty, b'a' | b'A') || addr == 0 {
            continue;
        }
        // kallsyms2elf_binding(): 'W' is weak, other capitals global, the
        // rest (including 'w') local.
        let binding = match ty {
            b'W' => Binding::Weak,
            c if c.is_ascii_uppercase() => Binding::Global,
            _ => Binding::Local,
        };
        match ty {
            b'T' | b't' | b'W' | b'w' => {
                let name = match it.next() {
                    Some(m) if m.starts_with('[') => format!("{name} {m}"),
                    _ => name.to_string(),
                };
                entries.push(Entry {
                    start: addr,
                    size: 0,
                    binding,
                    name,
                });
            }
            _ => boundaries.push(addr),
        }
    }
    Kallsyms {
        table: SymbolTable::new(entries, boundaries),
        malformed,
        first_malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
0000000000000000 D __per_cpu_start
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81000100 t secondary_startup_64
ffffffff81001000 D some_data
ffffffff81002000 T do_idle
ffffffff81003000 W weak_fn
ffffffffa0000000 t pvpmu_irq\t[pvpmu]
ffffffffa0000100 T pvpmu_drain\t[pvpmu]
garbage line
zzzz T bad_addr
";

    #[test]
    fn kallsyms() {
        let k = parse_kallsyms(MAP);
        let t = &k.table;
        assert_eq!(k.malformed, 2);
        assert_eq!(k.first_malformed.as_ref().map(|m| m.line), Some(10));
        assert_eq!(t.len(), 6, "data, aliases and junk are not entries");
        let name = |a: u64| t.lookup(a).map(|s| s.name.to_string());
        assert_eq!(name(0xffffffff81000000).as_deref(), Some("startup_64"));
        assert_eq!(t.text_start(), Some(0xffffffff81000000));
        assert_eq!(
            name(0xffffffff81000100).as_deref(),
            Some("secondary_startup_64")
        );
        assert_eq!(name(0xffffffff81001800), None, "a data symbol ends text");
        assert_eq!(name(0xffffffff81002abc).as_deref(), Some("do_idle"));
        assert_eq!(name(0xffffffff81003000).as_deref(), Some("weak_fn"));
        assert_eq!(
            name(0xffffffffa0000050).as_deref(),
            Some("pvpmu_irq [pvpmu]")
        );
        assert_eq!(
            name(0xffffffffa0000150).as_deref(),
            Some("pvpmu_drain [pvpmu]")
        );
        assert_eq!(name(0xffffffffa0002000), None, "past the last page");
        assert_eq!(name(0x1000), None);
    }

    #[test]
    fn restricted_kallsyms_is_empty() {
        let k = parse_kallsyms("0000000000000000 T _stext\n0000000000000000 T do_idle\n");
        assert!(k.table.is_empty());
        assert_eq!(k.malformed, 0);
        assert_eq!(k.table.lookup(0xffffffff81000000), None);
    }
}
