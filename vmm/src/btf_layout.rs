//! The guest kernel layout that task identification needs ([`KernelInfo`]),
//! derived from the kernel's own BTF (`CONFIG_DEBUG_INFO_BTF`, the `.BTF`
//! section of its vmlinux) instead of a build-time `guest-info.txt`: any
//! kernel that carries BTF (Debian's, Fedora's, Ubuntu's do) gets guest
//! pid, tid and comm.
//!
//! * `task_struct`'s `pid`, `tgid` and `comm`: member offsets, searched
//!   through anonymous structs and unions (a `CONFIG_RANDSTRUCT` kernel
//!   wraps its fields in one).
//! * The per-CPU offset of the current task: pahole encodes per-CPU
//!   variables in the `.data..percpu` DATASEC with their offset in that
//!   section, which on x86-64 (section address 0) is the per-CPU offset the
//!   GS base is added to. Kernels before 6.2 and from 6.15 have a
//!   `current_task` variable; 6.2 to 6.14 keep it in `pcpu_hot`.

use std::path::Path;

use btf_rs::{Btf, BtfType, Type};

use crate::introspect::KernelInfo;
use crate::kernel_image::{KernelImageError, Vmlinux};

/// How deep anonymous members nest before the search gives up.
const MAX_NESTING: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum BtfLayoutError {
    #[error(transparent)]
    Image(#[from] KernelImageError),
    #[error("{0} has no .BTF section (a kernel built without CONFIG_DEBUG_INFO_BTF): guest tasks cannot be named")]
    NoBtf(String),
    #[error("the kernel's BTF does not parse: {0}")]
    Parse(String),
    #[error("the kernel's BTF has no {0}: guest tasks cannot be named")]
    Missing(&'static str),
}

type Result<T> = std::result::Result<T, BtfLayoutError>;

/// The task layout of the kernel image at `path` (a bzImage or an ELF
/// vmlinux), from its BTF.
pub fn layout_from_image(path: &Path) -> Result<KernelInfo> {
    layout_from_vmlinux(&Vmlinux::open(path)?)
}

/// The task layout of an opened kernel image, from its BTF.
pub fn layout_from_vmlinux(vmlinux: &Vmlinux) -> Result<KernelInfo> {
    let btf = vmlinux
        .section(".BTF")?
        .ok_or_else(|| BtfLayoutError::NoBtf(vmlinux.path().display().to_string()))?;
    layout_from_btf(btf)
}

/// The task layout from raw BTF bytes (the `.BTF` section, or
/// /sys/kernel/btf/vmlinux).
pub fn layout_from_btf(bytes: &[u8]) -> Result<KernelInfo> {
    let btf = Btf::from_bytes(bytes).map_err(|e| BtfLayoutError::Parse(e.to_string()))?;
    let task =
        named_struct(&btf, "task_struct")?.ok_or(BtfLayoutError::Missing("struct task_struct"))?;
    let member = |name: &'static str| {
        member_offset(&btf, &task, name, 0)?.ok_or(BtfLayoutError::Missing(match name {
            "pid" => "task_struct.pid",
            "tgid" => "task_struct.tgid",
            _ => "task_struct.comm",
        }))
    };
    // Optional: where a process's code starts (PIE load addresses).
    let task_mm = member_offset(&btf, &task, "mm", 0)?;
    let mm_start_code = match named_struct(&btf, "mm_struct")? {
        Some(mm) => member_offset(&btf, &mm, "start_code", 0)?,
        None => None,
    };
    Ok(KernelInfo {
        current_task: current_task_offset(&btf)?,
        task_pid: member("pid")?,
        task_tgid: member("tgid")?,
        task_comm: member("comm")?,
        task_mm,
        mm_start_code,
    })
}

/// The struct named `name` (a definition, not a forward declaration).
fn named_struct(btf: &Btf, name: &str) -> Result<Option<btf_rs::Struct>> {
    let types = btf
        .resolve_types_by_name(name)
        .map_err(|e| BtfLayoutError::Parse(e.to_string()))?;
    Ok(types.into_iter().find_map(|t| match t {
        Type::Struct(s) => Some(s),
        _ => None,
    }))
}

fn name_of(btf: &Btf, t: &dyn BtfType) -> String {
    btf.resolve_name(t).unwrap_or_default()
}

/// The byte offset of member `name` in `s`, looking into anonymous struct
/// and union members.
fn member_offset(btf: &Btf, s: &btf_rs::Struct, name: &str, depth: usize) -> Result<Option<u64>> {
    if depth > MAX_NESTING {
        return Ok(None);
    }
    for m in &s.members {
        let bits = u64::from(m.bit_offset());
        let here = name_of(btf, m);
        if here == name {
            return Ok(Some(bits / 8));
        }
        if !here.is_empty() {
            continue;
        }
        let inner = match btf.resolve_chained_type(m) {
            Ok(Type::Struct(s)) | Ok(Type::Union(s)) => s,
            _ => continue,
        };
        if let Some(off) = member_offset(btf, &inner, name, depth + 1)? {
            return Ok(Some(bits / 8 + off));
        }
    }
    Ok(None)
}

/// The per-CPU offset of the current task pointer.
fn current_task_offset(btf: &Btf) -> Result<u64> {
    let percpu = btf
        .resolve_types_by_name(".data..percpu")
        .map_err(|e| BtfLayoutError::Parse(e.to_string()))?
        .into_iter()
        .find_map(|t| match t {
            Type::Datasec(d) => Some(d),
            _ => None,
        })
        .ok_or(BtfLayoutError::Missing(
            "per-CPU variables (.data..percpu; pahole ran with --skip_encoding_btf_vars?)",
        ))?;
    let mut hot = None;
    for v in &percpu.variables {
        let Ok(Type::Var(var)) = btf.resolve_chained_type(v) else {
            continue;
        };
        match name_of(btf, &var).as_str() {
            "current_task" => return Ok(u64::from(v.offset())),
            "pcpu_hot" => hot = Some((u64::from(v.offset()), var)),
            _ => {}
        }
    }
    let (base, var) = hot.ok_or(BtfLayoutError::Missing("per-CPU current_task"))?;
    let Ok(Type::Struct(s)) = btf.resolve_chained_type(&var) else {
        return Err(BtfLayoutError::Missing("struct pcpu_hot"));
    };
    let off = member_offset(btf, &s, "current_task", 0)?
        .ok_or(BtfLayoutError::Missing("pcpu_hot.current_task"))?;
    Ok(base + off)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob builder (include/uapi/linux/btf.h).
    #[derive(Default)]
    struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    const KIND_INT: u32 = 1;
    const KIND_PTR: u32 = 2;
    const KIND_ARRAY: u32 = 3;
    const KIND_STRUCT: u32 = 4;
    const KIND_UNION: u32 = 5;
    const KIND_VAR: u32 = 14;
    const KIND_DATASEC: u32 = 15;

    impl BtfBuilder {
        fn new() -> Self {
            BtfBuilder {
                strings: vec![0],
                next_id: 1,
                ..Default::default()
            }
        }
        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }
        fn u32s(&mut self, v: &[u32]) {
            for x in v {
                self.types.extend_from_slice(&x.to_le_bytes());
            }
        }
        fn head(&mut self, name: &str, kind: u32, vlen: u32, size_or_type: u32) -> u32 {
            let n = self.str(name);
            self.u32s(&[n, (kind << 24) | vlen, size_or_type]);
            let id = self.next_id;
            self.next_id += 1;
            id
        }
        fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.head(name, KIND_INT, 0, size);
            self.u32s(&[size * 8]);
            id
        }
        fn ptr(&mut self, to: u32) -> u32 {
            self.head("", KIND_PTR, 0, to)
        }
        fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
            let id = self.head("", KIND_ARRAY, 0, 0);
            self.u32s(&[elem, index, n]);
            id
        }
        fn record(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let id = self.head(name, kind, members.len() as u32, size);
            for (m, ty, byte_off) in members {
                let n = self.str(m);
                self.u32s(&[n, *ty, byte_off * 8]);
            }
            id
        }
        fn var(&mut self, name: &str, ty: u32) -> u32 {
            let id = self.head(name, KIND_VAR, 0, ty);
            self.u32s(&[1]);
            id
        }
        fn datasec(&mut self, name: &str, vars: &[(u32, u32, u32)]) -> u32 {
            let id = self.head(name, KIND_DATASEC, vars.len() as u32, 0x1000);
            for (ty, off, size) in vars {
                self.u32s(&[*ty, *off, *size]);
            }
            id
        }
        fn finish(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9fu16.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            let hdr_len = 24u32;
            let type_len = self.types.len() as u32;
            for v in [hdr_len, 0, type_len, type_len, self.strings.len() as u32] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// task_struct with pid and tgid inside an anonymous struct (as
    /// CONFIG_RANDSTRUCT's wrapper makes), comm directly.
    fn kernel_btf(hot: bool) -> Vec<u8> {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        let ch = b.int("char", 1);
        let comm = b.array(ch, int, 16);
        let anon = b.record(KIND_STRUCT, "", 8, &[("pid", int, 0), ("tgid", int, 4)]);
        let un = b.record(KIND_UNION, "", 8, &[("", anon, 0), ("pad", int, 0)]);
        let task = b.record(
            KIND_STRUCT,
            "task_struct",
            0x800,
            &[("state", int, 0), ("", un, 0x390), ("comm", comm, 0x578)],
        );
        let p = b.ptr(task);
        let other = b.var("runqueues", int);
        let var = if hot {
            let hs = b.record(
                KIND_STRUCT,
                "pcpu_hot",
                64,
                &[("preempt_count", int, 0), ("current_task", p, 8)],
            );
            b.var("pcpu_hot", hs)
        } else {
            b.var("current_task", p)
        };
        b.datasec(".data..percpu", &[(other, 0x100, 4), (var, 0x1ac00, 8)]);
        b.finish()
    }

    #[test]
    fn layout_through_anonymous_members() {
        let info = layout_from_btf(&kernel_btf(false)).unwrap();
        assert_eq!(
            (
                info.current_task,
                info.task_pid,
                info.task_tgid,
                info.task_comm
            ),
            (0x1ac00, 0x390, 0x394, 0x578)
        );
        // 6.2 to 6.14: current_task inside pcpu_hot.
        let info = layout_from_btf(&kernel_btf(true)).unwrap();
        assert_eq!(info.current_task, 0x1ac08);
    }

    #[test]
    fn missing_pieces_and_junk_are_errors() {
        let mut b = BtfBuilder::new();
        b.int("int", 4);
        let e = layout_from_btf(&b.finish()).unwrap_err().to_string();
        assert!(e.contains("task_struct"), "{e}");
        assert!(layout_from_btf(b"not btf at all, just bytes").is_err());
        // Truncated at every length: an error, never a panic.
        let full = kernel_btf(false);
        for n in 0..full.len() {
            let _ = layout_from_btf(&full[..n]);
        }
    }
}
