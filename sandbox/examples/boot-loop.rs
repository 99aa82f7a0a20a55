//! Boots the guest image N times in one L1 sandbox and tallies how each boot
//! ended: the tool behind the flake rates in docs/platform.md.
//!
//!   cargo build --release && cargo run --release -p sandbox --example boot-loop -- \
//!       [--qemu] [--boots N] [-- PERFVISOR RUN OPTIONS]
//!
//! Each boot runs `seq 1 6000 | tr '\n' ' ' | fold -w 100; echo` in the guest
//! (long lines written in large chunks, the output that once lost its tail)
//! under `perfvisor run --kvm host --cpus 2 OPTIONS`, or with `--qemu` under
//! `qemu-system-x86_64 -accel kvm -cpu host -smp 2` as the L2 VMM, for a
//! baseline on the same nested KVM. A boot is "ok" when it exits 0 and the
//! output holds every number; otherwise its status and the last output line
//! are printed.
use std::path::Path;

const SCRIPT: &str = r#"
cmd='seq 1 6000 | tr "\n" " " | fold -w 100; echo'
ok=0; bad=0
for i in $(seq 1 $BOOTS); do
  if [ "$L2_VMM" = qemu ]; then
    qemu-system-x86_64 -accel kvm -cpu host -m 256 -smp 2 -nodefaults -no-user-config \
      -display none -serial stdio -no-reboot -kernel /guest/bzImage \
      -initrd /guest/initramfs.cpio -append "console=ttyS0 panic=-1 quiet -- $cmd" \
      > /tmp/out.txt 2>&1
    st=$?
    grep -q "exit status 0" /tmp/out.txt || st=99
  else
    # shellcheck disable=SC2086 # options are words
    /guest/perfvisor run --kvm host --timeout 200 --cpus 2 $PV_OPTS \
      --kernel /guest/vmlinux --initrd /guest/initramfs.cpio -- "$cmd" > /tmp/out.txt 2>&1
    st=$?
  fi
  n=$(tr ' ' '\n' < /tmp/out.txt | grep -c '^[0-9][0-9]*$')
  if [ $st = 0 ] && [ "$n" -ge 6000 ]; then
    ok=$((ok + 1))
  else
    bad=$((bad + 1))
    echo "boot $i: status $st, $n numbers, last line: $(grep . /tmp/out.txt | tail -1 | cut -c1-160)"
  fi
done
echo "boot-loop: $ok ok, $bad failed of $BOOTS"
"#;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let image = root.join("build/guest-image");
    let perfvisor = root.join("target/release/perfvisor");
    let mut args = std::env::args().skip(1);
    let (mut qemu, mut boots, mut opts) = (false, 30u32, Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--qemu" => qemu = true,
            "--boots" => boots = args.next().and_then(|n| n.parse().ok()).unwrap_or(30),
            "--" => opts.extend(args.by_ref()),
            other => panic!("unknown argument {other:?} (see the file's header)"),
        }
    }
    for f in [
        image.join("vmlinux"),
        image.join("initramfs.cpio"),
        perfvisor.clone(),
    ] {
        assert!(f.exists(), "{} missing: build it first", f.display());
    }
    let mut job = sandbox::Job::shell(SCRIPT)
        .binary(&perfvisor, "/guest/perfvisor")
        .files_in(&image, &["vmlinux", "bzImage", "initramfs.cpio"], "/guest")
        .env("BOOTS", &boots.to_string())
        .env("PV_OPTS", &opts.join(" "))
        .env("L2_VMM", if qemu { "qemu" } else { "perfvisor" });
    if qemu {
        job = job
            .binary(
                Path::new("/usr/bin/qemu-system-x86_64"),
                "/usr/bin/qemu-system-x86_64",
            )
            .dir("/usr/share/qemu", "/usr/share/qemu")
            .dir("/usr/share/seabios", "/usr/share/seabios");
    }
    let sb = sandbox::Sandbox::locate()
        .unwrap_or_else(|e| panic!("{e}"))
        .timeout(std::time::Duration::from_secs(60 + 120 * u64::from(boots)))
        .memory_mib(3072);
    match sb.run(&job, &mut |l| println!("{l}")) {
        Ok(out) => eprintln!("L1 job exit status {}", out.status),
        Err(e) => eprintln!("the L1 sandbox run failed: {e}"),
    }
}
