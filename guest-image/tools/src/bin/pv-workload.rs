//! `pv-workload [--seconds S] [--threads N] [--mode hot|syscall|fp-loop|split]
//! [--split PCT] [--cpu N]`: a CPU burner with a known call structure, for
//! profiling tests.
//!
//! Every thread runs `workload_a()` -> `workload_b()` -> `workload_hot()`.
//! The three are `#[no_mangle]` and `#[inline(never)]`, so their symbols
//! are stable and each is a real frame (the guest image builds with frame
//! pointers forced). In the default `hot` mode `workload_hot` is a dependent
//! integer loop and `workload_b` only checks the clock between calls of
//! about a millisecond each, so nearly every user-mode sample lands in
//! `workload_hot` and callchains read `...;workload_a;workload_b;workload_hot`.
//! In `syscall` mode `workload_hot` makes cheap system calls instead, so
//! most samples land in the kernel under it.
//!
//! `split` mode is ground truth for profiles: each thread alternates
//! `workload_alpha()` and `workload_beta()`, giving alpha `--split` percent
//! (default 70) of its CPU time, and measures what each really got with
//! `CLOCK_THREAD_CPUTIME_ID` around every call. It prints that measurement
//! (`alpha_ns`, `beta_ns`, `alpha_share`) with its pid, so a test can compare
//! a profile's alpha:beta split with the workload's own, whatever else ran on
//! the CPU meanwhile. `--cpu N` pins the process to guest CPU N (to put a
//! competitor on the same vCPU).
//!
//! `fp-loop` mode is hostile on purpose: `hostile_frames` spins with RBP
//! pointing at frames that loop (A -> B -> A), at a non-canonical address,
//! at an unmapped one, and at a misaligned one, in turn, so a host-side
//! frame-pointer walker (`perfvisor record --call-graph fp`) meets all of
//! them.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Hot,
    Syscall,
    FpLoop,
    Split,
}

/// This thread's CPU time, ns (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Iterations between two clock reads in split mode (tens of microseconds).
const SPLIT_CHUNK: u64 = 1 << 15;

/// Spin for `budget_ns` of this thread's CPU time; returns (CPU ns it
/// really took, checksum). `workload_alpha` and `workload_beta` are the
/// same loop under two names, so a sample in either says which share of
/// time it belongs to, and neither is cheaper per unit of time.
#[no_mangle]
#[inline(never)]
pub fn workload_alpha(budget_ns: u64, seed: u64) -> [u64; 2] {
    let start = thread_cpu_ns();
    let mut x = seed | 1;
    loop {
        for i in 0..SPLIT_CHUNK {
            x = x.wrapping_mul(0x5851_f42d_4c95_7f2d).wrapping_add(i);
            x ^= x >> 29;
            x = black_box(x);
        }
        let took = thread_cpu_ns().saturating_sub(start);
        if took >= budget_ns {
            return [took, x];
        }
    }
}

/// The other share of split mode; see [`workload_alpha`].
#[no_mangle]
#[inline(never)]
pub fn workload_beta(budget_ns: u64, seed: u64) -> [u64; 2] {
    let start = thread_cpu_ns();
    let mut x = seed | 1;
    loop {
        for i in 0..SPLIT_CHUNK {
            x = x.wrapping_mul(0x2545_f491_4f6c_dd1d).wrapping_add(i);
            x ^= x >> 31;
            x = black_box(x);
        }
        let took = thread_cpu_ns().saturating_sub(start);
        if took >= budget_ns {
            return [took, x];
        }
    }
}

/// One split-mode thread until `deadline_ns` of wall time: alpha gets
/// `pct` percent of every 10 ms of CPU time. Returns (alpha ns, beta ns,
/// checksum) as the thread's own CPU clock measured them.
fn split_thread(deadline_ns: u64, pct: u64) -> [u64; 3] {
    let start = Instant::now();
    let (mut alpha, mut beta, mut sum) = (0u64, 0u64, 0u64);
    let round = 10_000_000u64;
    while (start.elapsed().as_nanos() as u64) < deadline_ns {
        let [a, x] = workload_alpha(round * pct / 100, sum);
        let [b, y] = workload_beta(round * (100 - pct) / 100, x);
        alpha += a;
        beta += b;
        sum = y;
    }
    [alpha, beta, sum]
}

/// Pin the whole process to guest CPU `cpu`.
fn pin_to(cpu: usize) -> Result<(), String> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write into it
    // (the index is checked against its size first), and
    // sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(format!("--cpu {cpu} is out of range"));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!(
                "cannot pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

struct Args {
    secs: f64,
    threads: usize,
    mode: Mode,
    split: u64,
    cpu: Option<usize>,
}

/// Spin `iters` times with RBP set to a hostile frame pointer (`pattern`
/// picks which), then restore RBP.
#[no_mangle]
#[inline(never)]
pub fn hostile_frames(iters: u64, pattern: u64) {
    let mut frames = [0u64; 4];
    let base = frames.as_mut_ptr() as u64;
    // Two frames that point at each other: base -> base+16 -> base.
    frames[0] = base + 16;
    frames[1] = 0x40_1000;
    frames[2] = base;
    frames[3] = 0x40_2000;
    let rbp = match pattern % 4 {
        0 => base,
        1 => 0x8000_0000_0000, // non-canonical
        2 => 0x7fff_f000_0000, // canonical, unmapped
        _ => base + 4,         // misaligned
    };
    // SAFETY: RBP is saved on the stack and restored before the block
    // ends; the loop touches no memory, so the hostile RBP is never used
    // by this code, only seen by a host sampling it.
    unsafe {
        std::arch::asm!(
            "push rbp",
            "mov rbp, {v}",
            "2:",
            "dec {n}",
            "jnz 2b",
            "pop rbp",
            v = in(reg) rbp,
            n = inout(reg) iters.max(1) => _,
        );
    }
    black_box(&frames);
}

/// Iterations of one `workload_hot` call (about 1 ms of work).
const HOT_ITERS: u64 = 1 << 20;
/// System calls of one `workload_hot` call in syscall mode.
const SYSCALL_ITERS: u64 = 1 << 10;

/// The hot function: `iters` steps of a dependent multiply-xorshift chain
/// (or `iters` getppid() calls in syscall mode). Returns a checksum.
#[no_mangle]
#[inline(never)]
pub fn workload_hot(iters: u64, seed: u64, syscalls: bool) -> u64 {
    let mut x = seed | 1;
    if syscalls {
        for _ in 0..iters {
            // SAFETY: getppid has no memory effects.
            x = x.wrapping_add(unsafe { libc::getppid() } as u64);
            x = black_box(x);
        }
        return x;
    }
    for i in 0..iters {
        x = x.wrapping_mul(0x5851_f42d_4c95_7f2d).wrapping_add(i);
        x ^= x >> 29;
        x = black_box(x);
    }
    x
}

/// Calls `workload_hot` until `deadline`; returns (calls, checksum).
#[no_mangle]
#[inline(never)]
pub fn workload_b(deadline_ns: u64, start: &Instant, syscalls: bool) -> [u64; 2] {
    let iters = if syscalls { SYSCALL_ITERS } else { HOT_ITERS };
    let mut calls = 0u64;
    let mut sum = 0u64;
    loop {
        sum = sum.wrapping_add(workload_hot(iters, sum ^ calls, syscalls));
        calls += 1;
        if start.elapsed().as_nanos() as u64 >= deadline_ns {
            return [calls, sum];
        }
    }
}

/// One thread's work.
#[no_mangle]
#[inline(never)]
pub fn workload_a(deadline_ns: u64, syscalls: bool) -> [u64; 2] {
    let start = Instant::now();
    black_box(workload_b(deadline_ns, &start, syscalls))
}

fn parse() -> Result<Args, String> {
    let mut secs = 5.0f64;
    let mut threads = 1usize;
    let mut mode = Mode::Hot;
    let mut split = 70u64;
    let mut cpu = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut val = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--seconds" => {
                let v = val()?;
                secs = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0 && *s < 1e6)
                    .ok_or_else(|| format!("--seconds wants a positive number, got {v:?}"))?;
            }
            "--threads" => {
                let v = val()?;
                threads = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| format!("--threads wants 1..1024, got {v:?}"))?;
            }
            "--mode" => {
                mode = match val()?.as_str() {
                    "hot" => Mode::Hot,
                    "syscall" => Mode::Syscall,
                    "fp-loop" => Mode::FpLoop,
                    "split" => Mode::Split,
                    m => {
                        return Err(format!(
                            "--mode wants hot, syscall, fp-loop or split, got {m:?}"
                        ))
                    }
                };
            }
            "--split" => {
                let v = val()?;
                split = v
                    .parse()
                    .ok()
                    .filter(|p| (1..=99).contains(p))
                    .ok_or_else(|| format!("--split wants a percentage 1..99, got {v:?}"))?;
            }
            "--cpu" => {
                let v = val()?;
                cpu = Some(
                    v.parse()
                        .map_err(|_| format!("--cpu wants a CPU number, got {v:?}"))?,
                );
            }
            "-h" | "--help" => {
                return Err(String::new());
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    Ok(Args {
        secs,
        threads,
        mode,
        split,
        cpu,
    })
}

fn main() -> ExitCode {
    let Args {
        secs,
        threads,
        mode,
        split,
        cpu,
    } = match parse() {
        Ok(v) => v,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("pv-workload: {e}");
            }
            eprintln!("usage: pv-workload [--seconds S (default 5)] [--threads N (default 1)] [--mode hot|syscall|fp-loop|split] [--split PCT (default 70)] [--cpu N]");
            return ExitCode::from(if e.is_empty() { 0 } else { 2 });
        }
    };
    if let Some(c) = cpu {
        if let Err(e) = pin_to(c) {
            eprintln!("pv-workload: {e}");
            return ExitCode::from(1);
        }
    }
    let deadline_ns = Duration::from_secs_f64(secs).as_nanos() as u64;
    if mode == Mode::Split {
        let t0 = Instant::now();
        let helpers: Vec<_> = (1..threads)
            .map(|_| std::thread::spawn(move || split_thread(deadline_ns, split)))
            .collect();
        let mut results = vec![split_thread(deadline_ns, split)];
        for h in helpers {
            results.push(h.join().unwrap_or([0, 0, 0]));
        }
        let alpha: u64 = results.iter().map(|r| r[0]).sum();
        let beta: u64 = results.iter().map(|r| r[1]).sum();
        let sum = results.iter().fold(0u64, |acc, r| acc ^ r[2]);
        println!(
            "pv-workload: split pid={} threads={threads} seconds={:.2} asked={split} alpha_ns={alpha} beta_ns={beta} alpha_share={:.4} checksum={sum:#018x}",
            std::process::id(),
            t0.elapsed().as_secs_f64(),
            alpha as f64 / (alpha + beta).max(1) as f64,
        );
        return ExitCode::SUCCESS;
    }
    if mode == Mode::FpLoop {
        let t0 = Instant::now();
        let mut pattern = 0u64;
        while (t0.elapsed().as_nanos() as u64) < deadline_ns {
            hostile_frames(HOT_ITERS * 8, pattern);
            pattern += 1;
        }
        println!(
            "pv-workload: mode fp-loop seconds {:.2}: {pattern} hostile frame patterns",
            t0.elapsed().as_secs_f64()
        );
        return ExitCode::SUCCESS;
    }
    let syscalls = mode == Mode::Syscall;
    let t0 = Instant::now();
    // threads - 1 helpers; the main thread is the last worker, so with one
    // thread the chain is main -> workload_a -> workload_b -> workload_hot.
    let helpers: Vec<_> = (1..threads)
        .map(|_| std::thread::spawn(move || workload_a(deadline_ns, syscalls)))
        .collect();
    let mut results = vec![workload_a(deadline_ns, syscalls)];
    for h in helpers {
        results.push(h.join().unwrap_or([0, 0]));
    }
    let calls: u64 = results.iter().map(|r| r[0]).sum();
    let sum = results.iter().fold(0u64, |acc, r| acc ^ r[1]);
    let elapsed = t0.elapsed().as_secs_f64();
    let per_call = if syscalls { SYSCALL_ITERS } else { HOT_ITERS };
    let iters = calls * per_call;
    println!(
        "pv-workload: mode {} threads {threads} seconds {elapsed:.2}: workload_a -> workload_b -> workload_hot, {calls} calls, {iters} {} ({:.1} M/s), checksum {sum:#018x}",
        if syscalls { "syscall" } else { "hot" },
        if syscalls { "getppid calls" } else { "iterations" },
        iters as f64 / elapsed / 1e6
    );
    ExitCode::SUCCESS
}
