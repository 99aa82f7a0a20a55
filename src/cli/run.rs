//! `perfvisor run`: boot a guest, on this host's KVM or in the L1 sandbox,
//! and end with its exit status.

use std::process::ExitCode;

use vmm::Vm;

use crate::error::{exit_code, CliError};
use crate::forward::GivenArgs;
use crate::launch::{
    guest_orc, resolve, sandbox_for, sandbox_job, ship_guest_orc, use_sandbox, vm_config,
    with_includes, without_kaslr, PmuBackend, RunArgs,
};

/// Run the guest `args` describe.
pub(crate) fn run(args: RunArgs, given: &GivenArgs) -> Result<ExitCode, CliError> {
    if args.cpus == 0 {
        return Err(CliError::NoCpus);
    }
    if use_sandbox(&args)? {
        // The ORC tables are read here, where the kernel file is, and go in
        // as the inner perfvisor's --guest-orc.
        let private = sandbox::TempDir::new()?;
        let mut extra = Vec::new();
        let orc = pvpmu_callchains(&args)
            .then(|| ship_guest_orc(pvpmu_orc(&args).as_deref(), private.path(), &mut extra))
            .transpose()?;
        let mut job = sandbox_job(&args, "run", given, &[], &extra, private.path())?;
        if let Some((file, in_l1)) = &orc {
            job = job.file(file, in_l1);
        }
        // SIGINT or SIGTERM stops the guest inside the L1 the way it stops a
        // direct run (a second one kills the L1); the status is this
        // process's signal, whatever the inner one got.
        let stops = vmm::end::interrupt_counter().map_err(CliError::Signals)?;
        job = job.stoppable(stops.clone());
        let outcome = sandbox_for(&args)?.run(&job, &mut |line: &str| println!("{line}"))?;
        if stops.load(std::sync::atomic::Ordering::Acquire) > 0 {
            eprintln!("perfvisor: interrupted; stopped the guest");
            return Ok(exit_code(vmm::end::interrupt_exit_status()));
        }
        Ok(exit_code(outcome.status))
    } else {
        run_host(&args)
    }
}

/// A forced host timer gives IPs only; auto and kick sample callchain
/// events with kicks, and walk their frames.
fn pvpmu_callchains(args: &RunArgs) -> bool {
    args.pmu_freq > 0 && args.pmu_backend != PmuBackend::HostTimer
}

/// The guest kernel's ORC tables for pvpmu's callchains, when it walks
/// any and the kernel has them.
fn pvpmu_orc(args: &RunArgs) -> Option<std::sync::Arc<vmm::orc::OrcTable>> {
    pvpmu_callchains(args)
        .then(|| guest_orc(args, "run"))
        .flatten()
}

fn run_host(args: &RunArgs) -> Result<ExitCode, CliError> {
    let private = sandbox::TempDir::new()?;
    let mut boot = with_includes(args, resolve(args)?, private.path())?;
    let backend = args.pmu_backend.resolve(false);
    let orc = pvpmu_orc(args);
    if orc.is_some() {
        // The tables have link-time addresses.
        boot.cmdline = without_kaslr(boot.cmdline);
    }
    let config = vm_config(args, boot, backend, true, pvpmu_callchains(args), orc);
    let vm = Vm::new(config, Box::new(std::io::stdout()))?;
    // SIGINT and SIGTERM stop the guest; the terminal is restored.
    vm.stop_on_signals()?;
    let report = vm.run()?;
    let outcome = report.outcome;
    if let Some(c) = report.pvpmu {
        let errors = c.err_commands + c.err_pages + c.err_tails + c.err_state;
        if c.samples + c.lost + c.aux_bytes + errors > 0 {
            eprintln!(
                "perfvisor: pvpmu: backend={} {} budget={} budget_skipped={}",
                backend,
                pvpmu_summary(&c),
                args.pmu_budget(),
                report.budget_skipped
            );
        }
    }
    if report.guest_events_rejected > 0 {
        eprintln!(
            "perfvisor: guest-event port: rejected={} (bytes no guest-kernel notifier sends; each logged)",
            report.guest_events_rejected
        );
    }
    if let Some(msg) = outcome.describe() {
        eprintln!("perfvisor: {msg}");
    }
    Ok(exit_code(outcome.exit_code()))
}

/// The device counters as `key=value` pairs (tests parse this line).
fn pvpmu_summary(c: &devices::pvpmu::CounterSnapshot) -> String {
    let exits: Vec<String> = devices::pvpmu::trace::ExitReason::ALL
        .iter()
        .zip(c.aux_exits)
        .map(|(r, n)| format!("exits_{}={n}", r.name()))
        .collect();
    format!(
        "samples={} lost={} interrupts={} aux_bytes={} aux_records={} aux_dropped={} exits_total={} {} err_commands={} err_pages={} err_tails={} err_state={} declared_pages={}",
        c.samples,
        c.lost,
        c.interrupts,
        c.aux_bytes,
        c.aux_records,
        c.aux_dropped,
        c.aux_exits.iter().sum::<u64>(),
        exits.join(" "),
        c.err_commands,
        c.err_pages,
        c.err_tails,
        c.err_state,
        c.declared_pages
    )
}
