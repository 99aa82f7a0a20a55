//! A hostile guest cannot hurt the host: the test module pvpmu_evil.ko
//! (guest-image/pvpmu-evil, docs/pvpmu-hostile.md) attacks the pvpmu
//! device's registers and shared memory from the guest kernel, then checks
//! that nothing outside the pages it declared changed and that the device
//! still produces samples. The host must survive all of it: perfvisor exits
//! normally, counts the rejections, and the guest lives on.
//! Runs on a capable KVM: this host's, or the L1 sandbox (see harness).

mod harness;

use std::collections::HashMap;

use harness::{boot, boot_test, kv, Run};

fn num(r: &Run, m: &HashMap<String, String>, k: &str) -> u64 {
    let v = m.get(k).and_then(|v| v.parse().ok());
    r.check(v.is_some(), &format!("a numeric {k} in {m:?}"));
    v.unwrap_or(0)
}

/// The guest side: take the real driver out, load the hostile module with
/// the device's address and interrupt from the kernel command line (all of
/// it runs in module init, which prints the verdict and returns 0 with the
/// device banks reset), unload it, show its lines, then prove the guest
/// works and the device still serves the real driver.
const GUEST: &str = "\
rmmod pvpmu || echo rmmod-failed; \
base=$(sed -n 's/.*pvpmu\\.base=\\([^ ]*\\).*/\\1/p' /proc/cmdline); \
irq=$(sed -n 's/.*pvpmu\\.irq=\\([^ ]*\\).*/\\1/p' /proc/cmdline); \
echo evil-args base=$base irq=$irq; \
insmod /lib/perfvisor-test/pvpmu_evil.ko base=$base irq=$irq; \
echo evil-insmod-status=$?; \
rmmod pvpmu_evil; echo evil-rmmod-status=$?; \
dmesg | grep 'pvpmu-evil' | sed 's/^/dmesg: /'; \
insmod /lib/modules/perfvisor/pvpmu.ko base=$base irq=$irq && \
pvpmu-tool --no-aux --freq 500 --duration 1 -- pv-workload --seconds 1 >/tmp/tool.txt 2>&1; \
echo tool-status=$?; grep 'pvpmu-tool:' /tmp/tool.txt; \
echo guest-alive";

#[test]
fn hostile_guest_cannot_hurt_the_host() {
    boot_test("hostile_guest_cannot_hurt_the_host", || {
        // Both samplers: the kick backend follows the guest's (hostile)
        // period, the host timer samples at --pmu-freq whatever it says.
        // Both boots first, so that a failure shows what both did.
        let runs: Vec<(&str, Run)> = ["kick", "host-timer"]
            .into_iter()
            .map(|b| (b, boot(&["--cpus", "2", "--pmu-backend", b, "--", GUEST])))
            .collect();
        for (backend, r) in &runs {
            summary(backend, r);
        }
        for (backend, r) in &runs {
            check(backend, r);
        }
    });
}

/// The last line holding `marker`, from `marker` on.
fn line_from<'a>(text: &'a str, marker: &str) -> &'a str {
    text.lines()
        .rev()
        .find_map(|l| l.find(marker).map(|i| &l[i..]))
        .unwrap_or("")
}

/// The module's verdict and numbers and the host's counters.
fn summary(backend: &str, r: &Run) {
    println!(
        "[{backend}] guest: {}",
        line_from(&r.stdout, "pvpmu-evil: result=")
    );
    println!(
        "[{backend}] guest: {}",
        line_from(&r.stdout, "pvpmu-evil: detail")
    );
    println!(
        "[{backend}] host: {}",
        line_from(&r.stderr, "perfvisor: pvpmu: ")
    );
}

/// The checks of one boot with the hostile module, sampled with `backend`.
fn check(backend: &str, r: &Run) {
    r.check(
        r.status == 0,
        "perfvisor exits with the guest command's status 0",
    );
    r.check(
        r.stdout.contains("guest-alive"),
        "the guest is alive after the attack",
    );
    r.check(
        !r.stdout.contains("rmmod-failed"),
        "the real driver could be removed",
    );
    for bad in [
        "Oops",
        "BUG:",
        "Kernel panic",
        "general protection",
        "WARNING:",
    ] {
        r.check(!r.stdout.contains(bad), &format!("no guest '{bad}'"));
    }
    r.check(!r.stderr.contains("panicked"), "no panic in perfvisor");
    r.check(
        r.stdout.contains("evil-insmod-status=0") && r.stdout.contains("evil-rmmod-status=0"),
        "the module loaded (its init ran every attack) and unloaded",
    );
    let evil = kv(&r.stdout, "pvpmu-evil: result=");
    r.check(!evil.is_empty(), "the module printed its result line");
    let host = kv(&r.stderr, "perfvisor: pvpmu: ");
    r.check(!host.is_empty(), "perfvisor printed the device counters");
    r.check(
        host.get("backend").map(String::as_str) == Some(backend),
        &format!("perfvisor sampled with the {backend} backend"),
    );
    r.check(
        line_from(&r.stdout, "pvpmu-evil: result=").starts_with("pvpmu-evil: result=PASS"),
        "the hostile module's checks passed (its FAIL lines say which did not)",
    );
    r.check(
        num(r, &evil, "canaries_changed") == 0,
        "no canary page changed",
    );
    r.check(
        num(r, &evil, "samples_after") > 0,
        "samples after the attack",
    );
    r.check(
        num(r, &evil, "rejected") > 0 && num(r, &evil, "commands") > num(r, &evil, "rejected"),
        "commands were issued and rejected",
    );
    // The host's own counters saw at least what the guest read from the
    // error registers (the module's last commands were not errors, so they
    // match unless the host counts more).
    for k in ["err_commands", "err_pages", "err_tails", "err_state"] {
        let (h, g) = (num(r, &host, k), num(r, &evil, k));
        r.check(h > 0, &format!("the host counted {k}"));
        r.check(
            h >= g,
            &format!("host {k}={h} covers the guest's reading {g}"),
        );
    }
    // The real driver works on the device afterwards.
    r.check(r.stdout.contains("tool-status=0"), "pvpmu-tool ran cleanly");
    let tool = kv(&r.stdout, "pvpmu-tool: ");
    r.check(
        num(r, &tool, "samples") > 0,
        "the real driver gets samples after the attack",
    );
}

/// CPU hotplug and unload (issue 12, finding 8): a CPU that goes offline
/// while it is sampled has its bank RESET on the way down, comes back with
/// a fresh ring, and the driver's unload with that CPU offline leaves the
/// host holding none of the guest's pages. Before the driver had hotplug
/// callbacks, unload skipped the offline CPU's RESET and freed pages the
/// host still held: a reloaded driver then could not set that bank up
/// again, and the host still held those (freed) pages at exit.
const HOTPLUG: &str = "\
base=$(sed -n 's/.*pvpmu\\.base=\\([^ ]*\\).*/\\1/p' /proc/cmdline); \
irq=$(sed -n 's/.*pvpmu\\.irq=\\([^ ]*\\).*/\\1/p' /proc/cmdline); \
c1=/sys/devices/system/cpu/cpu1/online; \
rec() { pv-workload --cpu 1 --seconds 2 >/dev/null 2>&1 & w=$!; \
  perf record -q -e pvpmu/cpu-clock/ -C 1 -o /tmp/$1.data -- sleep 1 >/dev/null 2>&1; \
  echo hp-$1-samples=$(perf script -i /tmp/$1.data 2>/dev/null | grep -c pvpmu); wait $w; }; \
rec before; \
pv-workload --cpu 1 --seconds 3 >/dev/null 2>&1 & \
perf record -q -e pvpmu/cpu-clock/ -C 1 -o /tmp/during.data -- sleep 2 >/dev/null 2>&1 & p=$!; \
sleep 1; echo 0 > $c1; echo hp-offline-status=$?; wait $p; echo hp-perf-across-offline=$?; wait; \
echo 1 > $c1; echo hp-online-status=$?; rec reonline; \
echo 0 > $c1; rmmod pvpmu; echo hp-rmmod-status=$?; \
insmod /lib/modules/perfvisor/pvpmu.ko base=$base irq=$irq; echo hp-insmod-status=$?; \
echo 1 > $c1; rec reload; \
echo 0 > $c1; rmmod pvpmu; echo hp-final-rmmod-status=$?; echo 1 > $c1; \
dmesg | grep -E 'pvpmu: (CPU|.*pages stay)' | sed 's/^/dmesg: /'; \
echo guest-alive";

#[test]
fn cpu_hotplug_and_unload_leave_the_host_no_guest_pages() {
    boot_test(
        "cpu_hotplug_and_unload_leave_the_host_no_guest_pages",
        || {
            let r = boot(&["--cpus", "2", "--", HOTPLUG]);
            // Every `hp-KEY=VALUE` line of the guest script.
            let g: HashMap<String, String> = r
                .stdout
                .lines()
                .filter_map(|l| l.find("hp-").map(|i| &l[i + 3..]))
                .filter_map(|w| w.trim().split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let host = kv(&r.stderr, "perfvisor: pvpmu: ");
            println!("guest: {g:?}");
            println!("host: {}", line_from(&r.stderr, "perfvisor: pvpmu: "));
            let n = |k: &str| -> u64 { g.get(k).and_then(|v| v.parse().ok()).unwrap_or(0) };
            r.check(r.stdout.contains("guest-alive"), "the guest lives on");
            r.check(!r.stderr.contains("panicked"), "no panic in perfvisor");
            for bad in ["Oops", "BUG:", "Kernel panic", "WARNING:"] {
                r.check(!r.stdout.contains(bad), &format!("no guest '{bad}'"));
            }
            for k in [
                "offline-status",
                "online-status",
                "rmmod-status",
                "insmod-status",
                "final-rmmod-status",
            ] {
                r.check(
                    g.get(k).map(String::as_str) == Some("0"),
                    &format!("{k} is 0"),
                );
            }
            r.check(
                n("before-samples") > 100,
                "CPU 1 is sampled before the hotplug",
            );
            r.check(
                n("reonline-samples") > 100,
                "CPU 1 is sampled again after it came back online",
            );
            r.check(
            n("reload-samples") > 100,
            "a driver loaded while CPU 1 was offline sets CPU 1 up when it comes online (its bank was RESET at the last unload)",
        );
            r.check(
                !r.stdout.contains("RESET failed") && !r.stdout.contains("pages stay allocated"),
                "every RESET worked and nothing was left to the host",
            );
            r.check(
            num(&r, &host, "declared_pages") == 0,
            "the host holds no guest page at exit: the unload released every bank, the offline CPU's included",
        );
        },
    );
}
