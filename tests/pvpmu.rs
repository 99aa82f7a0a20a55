//! pvpmu end to end: host-produced samples and a host-written AUX trace
//! reaching guest user space through a standard perf mmap, the guest's own
//! `perf record`/`perf script`, a slow consumer, and both sampling backends.
//! They run on a capable KVM: this host's, or the L1 sandbox (see harness).

mod harness;

use std::collections::HashMap;

use harness::{boot, boot_test, kv, Run};

fn num(m: &HashMap<String, String>, k: &str) -> u64 {
    m.get(k)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {k} in {m:?}"))
}

/// The tool's summary and the host device's counters from one run.
fn tool_and_host(r: &Run) -> (HashMap<String, String>, HashMap<String, String>) {
    let tool = kv(&r.stdout, "pvpmu-tool: ");
    let host = kv(&r.stderr, "perfvisor: pvpmu: ");
    r.check(!tool.is_empty(), "pvpmu-tool printed its machine line");
    r.check(!host.is_empty(), "perfvisor printed the device counters");
    (tool, host)
}

/// Share of the expected samples (freq x the workload's CPU time as the
/// event counted it) that must arrive on a capable host.
const MIN_DELIVERY: f64 = 0.9;
/// The same for the host timer inside the L1 sandbox. There every exit of
/// the nested guest is emulated by TCG and takes hundreds of microseconds;
/// host ticks that land in the VMM during an exit are placed at the exit's
/// RIP, but those in the L1 kernel's part of it (about 6% of the vCPU
/// thread's time) have no known guest RIP and are dropped. Measured 92-96%
/// (docs/platform.md); the bar leaves room for a loaded CI machine.
const MIN_DELIVERY_NESTED_HOST_TIMER: f64 = 0.85;
/// No more than this share: the host keeps the guest event's rate.
const MAX_DELIVERY: f64 = 1.1;

fn min_delivery(backend: &str) -> f64 {
    let nested = std::env::var_os("PERFVISOR_TESTS_INSIDE_SANDBOX").is_some();
    // "auto" is the host timer wherever perf_event_open works, as here.
    if nested && backend != "kick" {
        MIN_DELIVERY_NESTED_HOST_TIMER
    } else {
        MIN_DELIVERY
    }
}

fn end_to_end(backend: &str) {
    end_to_end_at(backend, 1000);
}

fn end_to_end_at(backend: &str, freq: u32) {
    let cmd = format!("pvpmu-tool --freq {freq} --duration 4 -- pv-workload --seconds 3");
    let r = boot(&["--pmu-backend", backend, "--", &cmd]);
    r.check(
        r.status == 0,
        "the tool found no checker violation or trace decode error",
    );
    let (tool, host) = tool_and_host(&r);
    // Expected: the workload's CPU time as the event counted it (the
    // pvpmu cpu-clock count), times the frequency.
    let samples = num(&tool, "samples");
    let expected = num(&tool, "expected") as f64;
    r.check(
        expected > 2.0 * f64::from(freq),
        "the workload ran for most of its 3 s",
    );
    let delivery = samples as f64 / expected;
    println!(
        "[{backend}, {freq} Hz] samples {samples} of {expected} expected ({:.0}%), top {:?}",
        delivery * 100.0,
        tool.get("top")
    );
    r.check(
        num(&tool, "checker_violations") == 0,
        "no checker violations",
    );
    r.check(
        num(&tool, "trace_decode_errors") == 0,
        "the AUX trace decodes",
    );
    r.check(
        tool.get("top").map(String::as_str) == Some("workload_hot"),
        "the hot function is on top",
    );
    r.check(
        num(&tool, "aux_bytes") > 0 && num(&tool, "exits_total") > 0,
        "AUX trace bytes arrived",
    );
    // Every EXIT record the host wrote reached the tool, reason by reason.
    for reason in [
        "io_in",
        "io_out",
        "mmio_read",
        "mmio_write",
        "kick",
        "other",
    ] {
        let k = format!("exits_{reason}");
        r.check(
            num(&tool, &k) == num(&host, &k),
            &format!("{k}: tool and host counters agree"),
        );
    }
    r.check(num(&host, "err_state") == 0, "no state page errors");
    let min = min_delivery(backend);
    r.check(
        delivery >= min,
        &format!(
            "at least {:.0}% of the expected samples arrive",
            min * 100.0
        ),
    );
    r.check(
        delivery <= MAX_DELIVERY,
        &format!(
            "at most {:.0}% of the expected samples arrive (the guest's rate is kept)",
            MAX_DELIVERY * 100.0
        ),
    );
}

/// The host timer ticks at --pmu-freq (1 kHz); a guest event asking for
/// 250 Hz gets 250 samples a second, not 1000.
#[test]
fn host_timer_keeps_a_lower_guest_rate() {
    boot_test("host_timer_keeps_a_lower_guest_rate", || {
        end_to_end_at("host-timer", 250)
    });
}

#[test]
fn pvpmu_tool_end_to_end_default_backend() {
    boot_test("pvpmu_tool_end_to_end_default_backend", || {
        end_to_end("auto")
    });
}

#[test]
fn pvpmu_tool_end_to_end_kick() {
    boot_test("pvpmu_tool_end_to_end_kick", || end_to_end("kick"));
}

#[test]
fn pvpmu_tool_end_to_end_host_timer() {
    boot_test("pvpmu_tool_end_to_end_host_timer", || {
        end_to_end("host-timer")
    });
}

#[test]
fn slow_consumer_counts_every_loss() {
    boot_test("slow_consumer_counts_every_loss", || {
        // A one-page perf buffer read every 200 ms loses records in the perf
        // core; the device ring (16 pages, drained by the driver) does not.
        let r = boot(&[
            "--",
            "pvpmu-tool --no-aux --data-pages 1 --slow-consumer 200 --duration 3 -- pv-workload --seconds 2; echo guest-still-alive",
        ]);
        r.check(
            r.stdout.contains("guest-still-alive"),
            "the guest stays healthy",
        );
        let (tool, host) = tool_and_host(&r);
        // `lost` sums the PERF_RECORD_LOST records; `lost_counted` is the
        // events' own drop count (PERF_FORMAT_LOST), which also has the drops
        // after the last record that fitted (the kernel reports those only
        // in front of a later record, and none came).
        let (read, lost, counted) = (
            num(&tool, "samples"),
            num(&tool, "lost"),
            num(&tool, "lost_counted"),
        );
        println!("host produced {}, tool read {read}, lost {lost} in LOST records, {counted} counted by the kernel", num(&host, "samples"));
        r.check(lost > 0, "the slow consumer lost records");
        r.check(
            num(&tool, "checker_violations") == 0,
            "no checker violations",
        );
        r.check(
            num(&host, "lost") == 0,
            "the device ring itself lost nothing",
        );
        r.check(
            lost <= counted,
            "LOST records never claim more than was dropped",
        );
        r.check(
            read + counted == num(&host, "samples"),
            "produced = read + lost, exactly",
        );
    });
}

#[test]
fn guest_perf_record_and_script_show_pvpmu_samples() {
    boot_test("guest_perf_record_and_script_show_pvpmu_samples", || {
        let r = boot(&[
            "--",
            "perf record -q -F 500 -e pvpmu/cpu-clock/ -e cpu-clock -a -o /tmp/p.data -- pv-workload --seconds 2 >/dev/null 2>&1; \
             perf script -i /tmp/p.data -F comm,tid,time,event,ip,sym 2>/dev/null > /tmp/s.txt; \
             echo pvpmu-lines=$(grep -c pvpmu /tmp/s.txt) hot=$(grep pvpmu /tmp/s.txt | grep -c workload_hot); \
             grep -E 'pvpmu|cpu-clock' /tmp/s.txt | awk '{t=$3; sub(\":\",\"\",t); print \"T\", ($4 ~ /pvpmu/ ? \"p\" : \"s\"), t}' | head -4000",
        ]);
        r.check(r.status == 0, "perf record and perf script ran");
        let m = kv(&r.stdout, "pvpmu-lines=");
        let lines: u64 = r
            .stdout
            .lines()
            .find_map(|l| {
                l.strip_prefix("pvpmu-lines=")
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0);
        let hot = num(&m, "hot");
        println!("perf script: {lines} pvpmu samples, {hot} in workload_hot");
        r.check(lines > 100, "perf script shows pvpmu samples");
        r.check(
            hot * 4 > lines,
            "a good part of them in the workload's hot function",
        );
        // Host-stamped samples interleave in time with the guest's own
        // software cpu-clock samples: each pvpmu sample has a cpu-clock
        // sample within 20 ms of it.
        let mut soft = Vec::new();
        let mut pv = Vec::new();
        for l in r.stdout.lines().filter_map(|l| l.strip_prefix("T ")) {
            let mut it = l.split_whitespace();
            let (kind, t) = (it.next(), it.next().and_then(|t| t.parse::<f64>().ok()));
            match (kind, t) {
                (Some("s"), Some(t)) => soft.push(t),
                (Some("p"), Some(t)) => pv.push(t),
                _ => {}
            }
        }
        soft.sort_by(f64::total_cmp);
        r.check(
            !soft.is_empty() && !pv.is_empty(),
            "both events have samples",
        );
        let far = pv
            .iter()
            .filter(|&&t| {
                let i = soft.partition_point(|&s| s < t);
                let near = [i.checked_sub(1), Some(i)]
                    .into_iter()
                    .flatten()
                    .filter_map(|j| soft.get(j))
                    .map(|s| (s - t).abs())
                    .fold(f64::MAX, f64::min);
                near > 0.020
            })
            .count();
        println!(
            "{far} of {} pvpmu samples have no cpu-clock sample within 20 ms",
            pv.len()
        );
        r.check(
            far * 20 <= pv.len(),
            "pvpmu samples interleave in time with the guest's own events",
        );
    });
}
