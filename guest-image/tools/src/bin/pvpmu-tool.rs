//! `pvpmu-tool`: the guest consumer of the pvpmu PMU through a standard
//! perf mmap. See docs/pvpmu-tool.md and `pvpmu-tool --help`.

use std::process::ExitCode;

use guest_tools::args::{self, Parsed, USAGE};
use guest_tools::session;

fn main() -> ExitCode {
    let opts = match args::parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("pvpmu-tool: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match session::run(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pvpmu-tool: {e}");
            return ExitCode::from(3);
        }
    };
    print!("{}", report.render(opts.top));
    let failures = report.failures();
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        for f in failures {
            eprintln!("pvpmu-tool: FAILED: {f}");
        }
        ExitCode::from(1)
    }
}
