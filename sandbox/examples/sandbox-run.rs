//! Runs a shell command in the L1 sandbox and reports timings:
//!
//!   cargo run -p sandbox --example sandbox-run -- [--cpus N] [--mem MIB] [--kernel-args ARGS] [--console] [--print-command CPIO] 'CMD'
//!
//! --print-command writes the L1 initramfs to CPIO and prints the QEMU command line.
//!
//! With --console the L1 kernel's own lines (normally dropped) are shown too
//! (they are in Outcome::console).
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut sb = match sandbox::Sandbox::locate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sandbox-run: {e}");
            std::process::exit(2);
        }
    };
    let mut cmd = None;
    let mut show_console = false;
    let mut print_cmd = None;
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--cpus" => sb = sb.cpus(val().parse().expect("--cpus N")),
            "--mem" => sb = sb.memory_mib(val().parse().expect("--mem MIB")),
            "--timeout" => {
                sb = sb.timeout(Duration::from_secs(val().parse().expect("--timeout SECS")))
            }
            "--kernel-args" => sb = sb.kernel_args(&val()),
            "--console" => show_console = true,
            "--print-command" => print_cmd = Some(std::path::PathBuf::from(val())),
            _ => cmd = Some(a),
        }
    }
    let job = sandbox::Job::shell(&cmd.unwrap_or_else(|| "uname -a".into()));
    if let Some(cpio) = print_cmd {
        let cmd = sb.prepare(&job, &cpio).unwrap_or_else(|e| panic!("{e}"));
        let q = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
        println!(
            "{} {}",
            q(cmd.get_program()),
            cmd.get_args().map(q).collect::<Vec<_>>().join(" ")
        );
        return;
    }
    match sb.run(&job, &mut |l| println!("{l}")) {
        Ok(out) => {
            if show_console {
                eprintln!("----- L1 console -----\n{}", out.console);
            }
            eprintln!(
                "status {} | L1 boot to job {:.2?} | total {:.2?}",
                out.status, out.l1_boot, out.total
            );
            std::process::exit(out.status);
        }
        Err(e) => {
            eprintln!("sandbox-run: {e}");
            std::process::exit(2);
        }
    }
}
