//! The guest driver's header (guest-image/include/pvpmu_if.h) against this
//! crate: a C file of `_Static_assert`s, one per value, generated from the
//! Rust constants and compiled with the header by the C compiler; and
//! every name the header defines (macros, enum members, state page
//! fields) must be one of those checked, so a field added on one side
//! only fails here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use pvpmu_abi::regs::{self, bank, cmd, feature, global, status};
use pvpmu_abi::state::{self, flags, guest, host};

/// A C expression from the header and the value Rust gives it.
struct Check {
    c: &'static str,
    rust: u64,
    /// The header name this covers (a macro, enum member or field).
    name: &'static str,
}

const fn def(name: &'static str, rust: u64) -> Check {
    Check {
        c: name,
        rust,
        name,
    }
}

fn field(name: &'static str, c: &'static str, rust: u64) -> Check {
    Check { c, rust, name }
}

fn checks() -> Vec<Check> {
    let mut v = vec![
        def("PVPMU_REGION_SIZE", regs::MMIO_SIZE),
        def("PVPMU_REG_MAGIC", global::MAGIC),
        def("PVPMU_REG_VERSION", global::VERSION),
        def("PVPMU_REG_FEATURES", global::FEATURES),
        def("PVPMU_REG_NR_VCPUS", global::NR_VCPUS),
        def("PVPMU_REG_MAX_FREQ", global::MAX_FREQ),
        def("PVPMU_REG_IRQ", global::IRQ),
        def("PVPMU_REG_SAMPLE_TYPES", global::SAMPLE_TYPES),
        def("PVPMU_REG_COUNTERS", global::ERR_COMMANDS),
        def("PVPMU_REG_ERR_COMMANDS", global::ERR_COMMANDS),
        def("PVPMU_REG_ERR_PAGES", global::ERR_PAGES),
        def("PVPMU_REG_ERR_TAILS", global::ERR_TAILS),
        def("PVPMU_REG_ERR_STATE", global::ERR_STATE),
        def("PVPMU_REG_SAMPLES", global::SAMPLES),
        def("PVPMU_REG_LOST", global::LOST),
        def("PVPMU_REG_AUX_BYTES", global::AUX_BYTES),
        def("PVPMU_REG_INTERRUPTS", global::INTERRUPTS),
        def("PVPMU_MAGIC", u64::from(regs::MAGIC_VALUE)),
        def("PVPMU_IF_VERSION", u64::from(regs::VERSION_VALUE)),
        def("PVPMU_F_SAMPLING", u64::from(feature::SAMPLING)),
        def("PVPMU_F_AUX", u64::from(feature::AUX)),
        def("PVPMU_F_HOST_TIMER", u64::from(feature::HOST_TIMER)),
        def("PVPMU_F_CALLCHAIN", u64::from(feature::CALLCHAIN)),
        def("PVPMU_F_FLUSH", u64::from(feature::FLUSH)),
        field("PVPMU_BANK", "PVPMU_BANK(0)", regs::BANK_BASE),
        field(
            "PVPMU_BANK",
            "PVPMU_BANK(1) - PVPMU_BANK(0)",
            regs::BANK_SIZE,
        ),
        def("PVPMU_MAX_BANKS", regs::MAX_BANKS as u64),
        def("PVPMU_B_CMD", bank::CMD),
        def("PVPMU_B_STATUS", bank::STATUS),
        def("PVPMU_B_ARG0", bank::ARG0),
        def("PVPMU_B_ARG1", bank::ARG1),
        def("PVPMU_B_ARG2", bank::ARG2),
        def("PVPMU_B_RET0", bank::RET0),
        def("PVPMU_CMD_SET_STATE", u64::from(cmd::SET_STATE)),
        def("PVPMU_CMD_SET_RING", u64::from(cmd::SET_RING)),
        def("PVPMU_CMD_START", u64::from(cmd::START)),
        def("PVPMU_CMD_STOP", u64::from(cmd::STOP)),
        def("PVPMU_CMD_RESET", u64::from(cmd::RESET)),
        def("PVPMU_CMD_AUX_SET", u64::from(cmd::AUX_SET)),
        def("PVPMU_CMD_AUX_CLEAR", u64::from(cmd::AUX_CLEAR)),
        def("PVPMU_CMD_FLUSH", u64::from(cmd::FLUSH)),
        def("PVPMU_ST_OK", u64::from(status::OK)),
        def("PVPMU_ST_EINVAL", u64::from(status::EINVAL)),
        def("PVPMU_ST_EBUSY", u64::from(status::EBUSY)),
        def("PVPMU_ST_ENOENT", u64::from(status::ENOENT)),
        def("PVPMU_ST_EFAULT", u64::from(status::EFAULT)),
        def("PVPMU_ST_ENOSYS", u64::from(status::ENOSYS)),
        def("PVPMU_MAX_RING_PAGES", regs::MAX_RING_PAGES),
        def("PVPMU_MAX_AUX_PAGES", regs::MAX_AUX_PAGES),
        def("PVPMU_SF_EXCLUDE_USER", u64::from(flags::EXCLUDE_USER)),
        def("PVPMU_SF_EXCLUDE_KERNEL", u64::from(flags::EXCLUDE_KERNEL)),
        def("PVPMU_SF_FREQ", u64::from(flags::FREQ)),
        def("PVPMU_SWITCH_LOG_LEN", guest::SWITCH_LOG_LEN),
        field("PAGE_SIZE", "PAGE_SIZE", regs::PAGE_SIZE),
        field(
            "pvpmu_state",
            "sizeof(struct pvpmu_state)",
            state::STATE_PAGE_SIZE,
        ),
        field(
            "pvpmu_switch",
            "sizeof(struct pvpmu_switch)",
            guest::SWITCH_ENTRY_LEN,
        ),
        field(
            "pvpmu_switch.time",
            "offsetof(struct pvpmu_switch, time)",
            guest::SWITCH_TIME,
        ),
        field(
            "pvpmu_switch.pid",
            "offsetof(struct pvpmu_switch, pid)",
            guest::SWITCH_PID,
        ),
        field(
            "pvpmu_switch.tid",
            "offsetof(struct pvpmu_switch, tid)",
            guest::SWITCH_TID,
        ),
    ];
    // The state page, field by field (the Rust name is the C name in
    // upper case).
    let state_fields: &[(&'static str, &'static str, u64)] = &[
        (
            "version",
            "offsetof(struct pvpmu_state, version)",
            guest::VERSION,
        ),
        (
            "active",
            "offsetof(struct pvpmu_state, active)",
            guest::ACTIVE,
        ),
        ("gen", "offsetof(struct pvpmu_state, gen)", guest::GEN),
        ("flags", "offsetof(struct pvpmu_state, flags)", guest::FLAGS),
        (
            "sample_type",
            "offsetof(struct pvpmu_state, sample_type)",
            guest::SAMPLE_TYPE,
        ),
        (
            "read_format",
            "offsetof(struct pvpmu_state, read_format)",
            guest::READ_FORMAT,
        ),
        (
            "sample_id_all",
            "offsetof(struct pvpmu_state, sample_id_all)",
            guest::SAMPLE_ID_ALL,
        ),
        (
            "period",
            "offsetof(struct pvpmu_state, period)",
            guest::PERIOD,
        ),
        ("id", "offsetof(struct pvpmu_state, id)", guest::ID),
        (
            "stream_id",
            "offsetof(struct pvpmu_state, stream_id)",
            guest::STREAM_ID,
        ),
        ("cpu", "offsetof(struct pvpmu_state, cpu)", guest::CPU),
        (
            "pid_filter",
            "offsetof(struct pvpmu_state, pid_filter)",
            guest::PID_FILTER,
        ),
        (
            "clock_offset",
            "offsetof(struct pvpmu_state, clock_offset)",
            guest::CLOCK_OFFSET,
        ),
        (
            "current_task_gpa",
            "offsetof(struct pvpmu_state, current_task_gpa)",
            guest::CURRENT_TASK_GPA,
        ),
        (
            "page_offset",
            "offsetof(struct pvpmu_state, page_offset)",
            guest::PAGE_OFFSET,
        ),
        (
            "task_pid_off",
            "offsetof(struct pvpmu_state, task_pid_off)",
            guest::TASK_PID_OFF,
        ),
        (
            "task_tgid_off",
            "offsetof(struct pvpmu_state, task_tgid_off)",
            guest::TASK_TGID_OFF,
        ),
        (
            "throttled",
            "offsetof(struct pvpmu_state, throttled)",
            guest::THROTTLED,
        ),
        (
            "kimage_virt",
            "offsetof(struct pvpmu_state, kimage_virt)",
            guest::KIMAGE_VIRT,
        ),
        (
            "kimage_phys",
            "offsetof(struct pvpmu_state, kimage_phys)",
            guest::KIMAGE_PHYS,
        ),
        (
            "active_since",
            "offsetof(struct pvpmu_state, active_since)",
            guest::ACTIVE_SINCE,
        ),
        (
            "aux_seq",
            "offsetof(struct pvpmu_state, aux_seq)",
            guest::AUX_SEQ,
        ),
        (
            "aux_buf",
            "offsetof(struct pvpmu_state, aux_buf)",
            guest::AUX_BUF,
        ),
        (
            "aux_head",
            "offsetof(struct pvpmu_state, aux_head)",
            guest::AUX_HEAD,
        ),
        (
            "aux_room",
            "offsetof(struct pvpmu_state, aux_room)",
            guest::AUX_ROOM,
        ),
        (
            "aux_wakeup",
            "offsetof(struct pvpmu_state, aux_wakeup)",
            guest::AUX_WAKEUP,
        ),
        (
            "switch_seq",
            "offsetof(struct pvpmu_state, switch_seq)",
            guest::SWITCH_SEQ,
        ),
        (
            "switch_log",
            "offsetof(struct pvpmu_state, switch_log)",
            guest::SWITCH_LOG,
        ),
        (
            "irq_seq",
            "offsetof(struct pvpmu_state, irq_seq)",
            host::IRQ_SEQ,
        ),
        (
            "samples",
            "offsetof(struct pvpmu_state, samples)",
            host::SAMPLES,
        ),
        ("lost", "offsetof(struct pvpmu_state, lost)", host::LOST),
        (
            "aux_done_seq",
            "offsetof(struct pvpmu_state, aux_done_seq)",
            host::AUX_DONE_SEQ,
        ),
        (
            "aux_written",
            "offsetof(struct pvpmu_state, aux_written)",
            host::AUX_WRITTEN,
        ),
        (
            "aux_flags",
            "offsetof(struct pvpmu_state, aux_flags)",
            host::AUX_FLAGS,
        ),
        (
            "aux_written_seq",
            "offsetof(struct pvpmu_state, aux_written_seq)",
            host::AUX_WRITTEN_SEQ,
        ),
    ];
    v.extend(state_fields.iter().map(|&(n, c, r)| field(n, c, r)));
    v
}

fn header() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-image/include/pvpmu_if.h")
}

/// Stand-ins for the five kernel headers pvpmu_if.h includes, with the
/// kernel's meaning for what it uses from them.
const SHIMS: [(&str, &str); 5] = [
    ("linux/bits.h", "#define BIT(n) (1UL << (n))\n"),
    (
        "linux/build_bug.h",
        "#define static_assert(expr, ...) _Static_assert(expr, #expr)\n",
    ),
    ("linux/stddef.h", "#include <stddef.h>\n"),
    (
        "linux/types.h",
        "#include <stdint.h>\ntypedef uint8_t u8; typedef uint16_t u16;\n\
         typedef uint32_t u32; typedef uint64_t u64;\n",
    ),
    ("asm/page.h", "#define PAGE_SIZE 4096UL\n"),
];

#[test]
fn the_driver_header_agrees_with_the_rust_interface() {
    let dir = std::env::temp_dir().join(format!("pvpmu-abi-header-{}", std::process::id()));
    for (name, text) in SHIMS {
        let p = dir.join("shim").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }
    let mut c = String::from("#include \"pvpmu_if.h\"\n");
    for ch in checks() {
        c.push_str(&format!(
            "_Static_assert(({}) == {:#x}ULL, \"{} is {:#x} in the Rust interface\");\n",
            ch.c, ch.rust, ch.c, ch.rust
        ));
    }
    let src = dir.join("check.c");
    std::fs::write(&src, &c).unwrap();
    let include = header().parent().unwrap().to_path_buf();
    let out = Command::new("cc")
        .args(["-std=gnu11", "-fsyntax-only", "-Wall", "-Werror", "-I"])
        .arg(dir.join("shim"))
        .arg("-I")
        .arg(&include)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run cc ({e}): run scripts/setup.sh (build-essential)"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "pvpmu_if.h and pvpmu-abi disagree:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "pvpmu_if.h agrees with pvpmu-abi on {} values",
        checks().len()
    );
}

/// Everything the header names: `#define PVPMU_*`, the `PVPMU_CMD_*` enum
/// members, and the non-padding fields of `struct pvpmu_state` and
/// `struct pvpmu_switch`.
fn header_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_struct: Option<&str> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("#define ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.starts_with("PVPMU_") {
                names.insert(name);
            }
        } else if let Some(rest) = t.strip_prefix("struct ").and_then(|r| r.strip_suffix(" {")) {
            in_struct = Some(if rest == "pvpmu_state" {
                ""
            } else {
                "pvpmu_switch."
            });
        } else if t.starts_with("};") {
            in_struct = None;
        } else if t.starts_with("PVPMU_CMD_") {
            names.insert(t.split([' ', '\t', '=']).next().unwrap().to_string());
        } else if let Some(prefix) = in_struct {
            let Some(decl) = t.split(';').next().filter(|_| t.contains(';')) else {
                continue;
            };
            // `type name` or `type name[len]`: the word before any `[`.
            let name = decl
                .split('[')
                .next()
                .and_then(|d| d.split_whitespace().last())
                .unwrap_or_default();
            if !name.starts_with("__") {
                names.insert(format!("{prefix}{name}"));
            }
        }
    }
    names
}

#[test]
fn every_name_in_the_driver_header_is_checked() {
    let text = std::fs::read_to_string(header()).unwrap();
    let named = header_names(&text);
    assert!(named.len() > 80, "the header parser found only {named:?}");
    let checked: BTreeSet<String> = checks().iter().map(|c| c.name.to_string()).collect();
    let unchecked: Vec<&String> = named.difference(&checked).collect();
    assert!(
        unchecked.is_empty(),
        "pvpmu_if.h names {unchecked:?}, which pvpmu-abi does not define or \
         tests/header.rs does not check: add them to both"
    );
}
