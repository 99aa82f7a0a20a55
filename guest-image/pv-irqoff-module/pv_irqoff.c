// SPDX-License-Identifier: GPL-2.0
/*
 * pv_irqoff: ground truth for profiles of code that runs with interrupts
 * disabled (perfvisor's tests, tests/pvpmu.rs).
 *
 * On load, a kthread bound to CPU @cpu spends @off_pct percent of every
 * @period_us in pv_irqoff_spin() with interrupts disabled and the rest in
 * pv_irqon_spin() with them enabled, for @seconds. It measures what each
 * phase really took with ktime_get_ns() and logs it when done:
 *
 *   pv_irqoff: done off_ns=N on_ns=M
 *
 * A guest's own cpu-clock event is an hrtimer, so it can only fire where
 * interrupts are on: the spin's samples land after local_irq_enable(). A
 * host-side PMU samples the vCPU whatever the guest's interrupt flag says.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/err.h>
#include <linux/irqflags.h>
#include <linux/kthread.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/compiler.h>

static unsigned int cpu;
module_param(cpu, uint, 0444);
MODULE_PARM_DESC(cpu, "CPU to spin on");

static unsigned int seconds = 3;
module_param(seconds, uint, 0444);
MODULE_PARM_DESC(seconds, "how long to run, 1..60");

static unsigned int off_pct = 30;
module_param(off_pct, uint, 0444);
MODULE_PARM_DESC(off_pct, "share of each period spent with interrupts off, 1..90");

static unsigned int period_us = 10000;
module_param(period_us, uint, 0444);
MODULE_PARM_DESC(period_us, "length of one off+on period, 1000..100000");

static struct task_struct *worker;
static DECLARE_COMPLETION(worker_done);

/* Iterations between two clock reads: the time goes to the spin itself. */
#define PV_IRQOFF_CHUNK	(1 << 14)

/* Result of the spins, so the compiler keeps them. */
static u64 pv_irqoff_sink;

/*
 * Spin until @end (ktime_get_ns); the caller decides the interrupt state.
 * The two are the same loop under two names, so that a sample in either
 * says which phase it belongs to.
 */
static noinline void pv_irqoff_spin(u64 end)
{
	u64 x = pv_irqoff_sink | 1;
	int i;

	do {
		for (i = 0; i < PV_IRQOFF_CHUNK; i++) {
			x = x * 6364136223846793005ULL + 1442695040888963407ULL;
			OPTIMIZER_HIDE_VAR(x);
		}
	} while (ktime_get_ns() < end);
	WRITE_ONCE(pv_irqoff_sink, x);
}

static noinline void pv_irqon_spin(u64 end)
{
	u64 x = pv_irqoff_sink | 1;
	int i;

	do {
		for (i = 0; i < PV_IRQOFF_CHUNK; i++) {
			x = x * 2862933555777941757ULL + 3037000493ULL;
			OPTIMIZER_HIDE_VAR(x);
		}
	} while (ktime_get_ns() < end);
	WRITE_ONCE(pv_irqoff_sink, x);
}

static int pv_irqoff_thread(void *unused)
{
	u64 period = (u64)period_us * NSEC_PER_USEC;
	u64 off = period * off_pct / 100;
	u64 stop = ktime_get_ns() + (u64)seconds * NSEC_PER_SEC;
	u64 off_ns = 0, on_ns = 0, t0, t1;
	unsigned long flags;

	while (!kthread_should_stop() && ktime_get_ns() < stop) {
		local_irq_save(flags);
		t0 = ktime_get_ns();
		pv_irqoff_spin(t0 + off);
		t1 = ktime_get_ns();
		local_irq_restore(flags);
		off_ns += t1 - t0;

		t0 = ktime_get_ns();
		pv_irqon_spin(t0 + period - off);
		t1 = ktime_get_ns();
		on_ns += t1 - t0;
		cond_resched();
	}
	pr_info("done off_ns=%llu on_ns=%llu\n", off_ns, on_ns);
	complete(&worker_done);
	/* Wait for module exit to stop us, so the task_struct stays valid. */
	while (!kthread_should_stop())
		msleep(20);
	return 0;
}

static int __init pv_irqoff_init(void)
{
	if (seconds < 1 || seconds > 60 || off_pct < 1 || off_pct > 90 ||
	    period_us < 1000 || period_us > 100000 || !cpu_online(cpu))
		return -EINVAL;
	worker = kthread_create(pv_irqoff_thread, NULL, "pv_irqoff/%u", cpu);
	if (IS_ERR(worker))
		return PTR_ERR(worker);
	kthread_bind(worker, cpu);
	wake_up_process(worker);
	return 0;
}

static void __exit pv_irqoff_exit(void)
{
	kthread_stop(worker);
	wait_for_completion(&worker_done);
}

module_init(pv_irqoff_init);
module_exit(pv_irqoff_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("perfvisor test: spins with interrupts off for a known share of a CPU");
