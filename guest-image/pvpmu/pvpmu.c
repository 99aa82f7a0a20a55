// SPDX-License-Identifier: GPL-2.0
/*
 * pvpmu: guest driver of perfvisor's paravirtual PMU.
 *
 * The host produces perf records into one ring per CPU in guest memory, and
 * trace bytes into the perf core's AUX pages. This driver registers the
 * "pvpmu" PMU, tells the host through a shared state page per CPU which
 * event is scheduled there, and copies the host's records into that event's
 * perf buffer. The interface is docs/pvpmu.md; design, contexts, locking and
 * debugging are in docs/pvpmu-driver.md.
 *
 * Contexts and locking. Everything that belongs to one CPU (its event slot,
 * device ring, AUX handle, throttle state) is touched only on that CPU with
 * interrupts disabled: in the pmu callbacks (the perf core runs them on the
 * event's CPU with IRQs off), in the drain (an IPI, or the device interrupt
 * when it arrives on that CPU) and in the unthrottle hrtimer (hard irq). So
 * it needs no lock. The device interrupt handler only reads every CPU's
 * irq_seq and sends the drain there; the irq core never runs it twice at
 * once. Device commands are serialized by pvpmu_cmd_lock. CPU hotplug
 * callbacks set a CPU up when it comes online and RESET its bank when it
 * goes down, both on that CPU.
 *
 * Pages the host holds (a bank's state page and ring, an AUX buffer) are
 * freed only after the RESET or AUX_CLEAR that releases them returned OK;
 * when it fails they stay allocated for good, since the host may still
 * write them.
 *
 * The host writes this CPU's ring, state page and AUX pages only while this
 * vCPU is outside guest mode (docs/pvpmu.md), so code running on the CPU
 * never races with the host writing for it. The barriers below are what
 * the protocol needs anyway (and what other readers need: the interrupt
 * handler on another CPU, user space reading the perf buffer); each comment
 * names the host-side access it pairs with.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/build_bug.h>
#include <linux/clocksource.h>
#include <linux/cpu.h>
#include <linux/cpuhotplug.h>
#include <linux/cpumask.h>
#include <linux/err.h>
#include <linux/hrtimer.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/ioport.h>
#include <linux/jiffies.h>
#include <linux/kernel.h>
#include <linux/log2.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/percpu.h>
#include <linux/perf_event.h>
#include <linux/pid.h>
#include <linux/sched.h>
#include <linux/sched/clock.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/vmalloc.h>
#include <asm/current.h>
#include <asm/pgtable_types.h>
#include <asm/pvclock.h>
#include <asm/kvmclock.h>

#include "pvpmu_compat.h"
#include "pvpmu_if.h"

/*
 * How records reach perf buffers: copied whole with perf_output_begin/copy/
 * end, which only a kernel with guest-image/patches/0001-* exports (Kbuild
 * defines PVPMU_PERF_OUTPUT when Module.symvers has them), or handed to the
 * event's overflow handler on any other kernel.
 */
#ifdef PVPMU_PERF_OUTPUT
#define PVPMU_OUTPUT_PATH	"perf_output"
#else
#define PVPMU_OUTPUT_PATH	"overflow-handler"
#endif

/* Not a device status: this CPU has no command bank. */
#define PVPMU_ST_NO_BANK	0xffffffffu

/* Sample fields whose size varies from record to record. */
#define PVPMU_VARIABLE_SAMPLE						\
	(PERF_SAMPLE_CALLCHAIN | PERF_SAMPLE_RAW | PERF_SAMPLE_BRANCH_STACK | \
	 PERF_SAMPLE_REGS_USER | PERF_SAMPLE_STACK_USER |		\
	 PERF_SAMPLE_REGS_INTR | PERF_SAMPLE_AUX)

/* AUX flags the host may report (OVERWRITE is perf_aux_output_end's). */
#define PVPMU_AUX_FLAGS							\
	(PERF_AUX_FLAG_TRUNCATED | PERF_AUX_FLAG_PARTIAL |		\
	 PERF_AUX_FLAG_COLLISION)

struct pvpmu_aux_buf {
	u64 id;			/* AUX_SET's buffer id */
	u64 size;		/* bytes */
	bool overwrite;
	int nr_pages;
	struct page **pages;	/* our references, dropped after AUX_CLEAR */
};

/* Per-CPU counters, summed in sysfs (pvpmu/stats/). */
struct pvpmu_stats {
	u64 samples;		/* SAMPLE records copied to perf */
	u64 lost_records;	/* LOST records copied to perf */
	u64 dropped_inactive;	/* records with no sampling event in the slot */
	u64 dropped_throttled;	/* records dropped at del while throttled */
	u64 bad_records;	/* wrong type or size for the event */
	u64 broken_ring;	/* ring resyncs (bad head or record size) */
	u64 output_full;	/* perf_output_begin failed (perf counts it) */
	u64 lost_unrecorded;	/* host-lost samples no LOST record could carry */
	u64 throttle_unrecorded; /* THROTTLE/UNTHROTTLE records not written */
	u64 throttles;
	u64 drains;
	u64 aux_sessions;
	u64 aux_bytes;
	u64 aux_bad;		/* host results out of range */
};

struct pvpmu_cpu {
	/* perf_output_begin's scratch (written for its LOST record) */
	struct perf_sample_data sample;
	struct perf_output_handle aux_handle;
	struct pvpmu_state *state;
	struct page **pages;			/* [0] control, then data */
	struct perf_event_mmap_page *ctrl;	/* the ring's control page */
	void *data;				/* data pages, vmap()ed */
	u64 data_size;
	u64 tail;				/* our data_tail */
	struct perf_event *event;		/* the one event slot */
	u32 sample_size;			/* exact SAMPLE size, or 0 */
	u32 sample_min;				/* minimal SAMPLE size */
	u32 lost_size;
	u32 gen;
	u64 aux_seq;
	u64 aux_room;				/* room of the posted session */
	u64 irq_seen;				/* interrupt handler only */
	call_single_data_t csd;
	struct hrtimer unthrottle_timer;
	unsigned long tick;			/* jiffies of tick_samples */
	unsigned int tick_samples;
	bool throttled;
	u64 switch_seq;				/* entries written to switch_log */
	struct perf_event *switch_ev;		/* context-switches counter */
	bool ready;				/* ring set up and started */
	bool timer_ok;				/* csd and hrtimer initialized */
	bool leaked;				/* RESET failed: pages stay the host's */
	struct pvpmu_stats stats;
#ifndef PVPMU_PERF_OUTPUT
	u64 *record;				/* one record, for parsing */
#endif
};

static struct {
	void __iomem *regs;
	struct resource *res;
	u32 features;
	u32 nr_vcpus;
	u32 max_freq;
	u64 sample_types;
	int irq;
	bool have_kvmclock;
	bool registered;
	struct pvpmu_cpu __percpu *cpus;
	struct cpumask ready;
	atomic_t aux_bufs;
	atomic_t pinned;
	atomic_t leaked_pages;		/* left allocated after a failed RESET/AUX_CLEAR */
	int hp_state;			/* our dynamic CPU-hotplug state, or 0 */
} pvpmu;

static DEFINE_RAW_SPINLOCK(pvpmu_cmd_lock);

static unsigned long base;
module_param(base, ulong, 0444);
MODULE_PARM_DESC(base, "physical address of the pvpmu MMIO region");

static int irq;
module_param(irq, int, 0444);
MODULE_PARM_DESC(irq, "interrupt line (default: the device's IRQ register)");

static unsigned int ring_pages = 16;
module_param(ring_pages, uint, 0444);
MODULE_PARM_DESC(ring_pages, "data pages per CPU sample ring, a power of two, 1..256");

static unsigned int max_samples_per_tick = DIV_ROUND_UP(100000, HZ);
module_param(max_samples_per_tick, uint, 0644);
MODULE_PARM_DESC(max_samples_per_tick,
		 "throttle an event above this many samples per tick (0: never)");

/* ------------------------------------------------------------------------
 * Device commands
 */

static const char *pvpmu_status_name(u32 status)
{
	static const char * const names[] = {
		"OK", "EINVAL", "EBUSY", "ENOENT", "EFAULT", "ENOSYS",
	};

	if (status == PVPMU_ST_NO_BANK)
		return "no command bank for this CPU";
	return status < ARRAY_SIZE(names) ? names[status] : "unknown status";
}

/*
 * Run one command on the current CPU's bank and return its STATUS. The
 * lock keeps the ARG/CMD/STATUS/RET0 sequence whole (a command may come
 * from an interrupt on the same CPU, e.g. AUX_CLEAR from the last
 * perf_aux_output_end) and pins us to the CPU whose bank we use.
 */
static u32 pvpmu_cmd(u32 cmd, u64 arg0, u64 arg1, u64 arg2, u64 *ret0)
{
	void __iomem *bank;
	unsigned long flags;
	unsigned int cpu;
	u32 status;

	raw_spin_lock_irqsave(&pvpmu_cmd_lock, flags);
	cpu = smp_processor_id();
	if (cpu >= pvpmu.nr_vcpus) {
		status = PVPMU_ST_NO_BANK;
		goto out;
	}
	bank = pvpmu.regs + PVPMU_BANK(cpu);
	writeq(arg0, bank + PVPMU_B_ARG0);
	writeq(arg1, bank + PVPMU_B_ARG1);
	writeq(arg2, bank + PVPMU_B_ARG2);
	/*
	 * The host runs the command in the MMIO exit of this write: when it
	 * retires, the command is done (which is what makes STOP, RESET and
	 * AUX_CLEAR synchronous).
	 */
	writel(cmd, bank + PVPMU_B_CMD);
	status = readl(bank + PVPMU_B_STATUS);
	if (status == 0 && ret0)
		*ret0 = readq(bank + PVPMU_B_RET0);
out:
	raw_spin_unlock_irqrestore(&pvpmu_cmd_lock, flags);
	return status;
}

/* ------------------------------------------------------------------------
 * Time
 */

/*
 * kvm-clock minus local_clock() (the perf clock), published so that the
 * host can stamp TIME = kvmclock(now) - clock_offset. local_clock() is read
 * first, so each try overestimates the offset by the time between the two
 * reads (and by any interruption): keep the smallest.
 */
static u64 pvpmu_kvmclock(void)
{
#ifdef PVPMU_KVM_CLOCK
	return kvm_clock.read(&kvm_clock);
#else
	/*
	 * Kernels that no longer export kvm_clock (6.12 does not): read the
	 * time info the vDSO reads. It exists only with a stable TSC
	 * (kvm_setup_vsyscall_timeinfo), when every vCPU's copy agrees.
	 */
	const struct pvclock_vcpu_time_info *src =
		&pvclock_get_pvti_cpu0_va()->pvti;
	unsigned int version;
	u64 ns;

	do {
		version = pvclock_read_begin(src);
		ns = __pvclock_read_cycles(src, rdtsc_ordered());
	} while (pvclock_read_retry(src, version));
	return ns;
#endif
}

static u64 pvpmu_clock_offset(void)
{
	s64 best = S64_MAX, off;
	int i;

	if (!pvpmu.have_kvmclock)
		return 0;
	for (i = 0; i < 4; i++) {
		u64 l = local_clock();
		u64 k = pvpmu_kvmclock();

		off = (s64)(k - l);
		if (off < best)
			best = off;
	}
	return best;
}

/*
 * Refresh on the CPU itself. The offset is constant only while sched_clock
 * is stable, so we redo it at every drain and add. The host reads it only
 * while this vCPU is out of guest mode: one aligned 64-bit store is enough.
 */
static void pvpmu_publish_clock(struct pvpmu_cpu *pc)
{
	WRITE_ONCE(pc->state->clock_offset, pvpmu_clock_offset());
}

/* ------------------------------------------------------------------------
 * Records we write ourselves: THROTTLE / UNTHROTTLE
 */

static struct perf_event *pvpmu_top(struct perf_event *event)
{
	return event->parent ? event->parent : event;
}

static u64 pvpmu_primary_id(struct perf_event *event)
{
	return pvpmu_top(event)->id;
}

#ifdef PVPMU_PERF_OUTPUT
/*
 * The sample_id trailer of a non-sample record, as
 * perf_event__output_id_sample() writes it: TID, TIME, ID, STREAM_ID,
 * CPU, IDENTIFIER. Returns the number of u64 words.
 */
static unsigned int pvpmu_id_sample(struct perf_event *event, u64 *w)
{
	u64 type = event->attr.sample_type;
	struct pid_namespace *ns = pvpmu_top(event)->ns;
	unsigned int n = 0;

	if (!event->attr.sample_id_all)
		return 0;
	if (type & PERF_SAMPLE_TID)
		w[n++] = (u32)task_tgid_nr_ns(current, ns) |
			 (u64)(u32)task_pid_nr_ns(current, ns) << 32;
	if (type & PERF_SAMPLE_TIME)
		w[n++] = event->clock();
	if (type & PERF_SAMPLE_ID)
		w[n++] = pvpmu_primary_id(event);
	if (type & PERF_SAMPLE_STREAM_ID)
		w[n++] = event->id;
	if (type & PERF_SAMPLE_CPU)
		w[n++] = smp_processor_id();
	if (type & PERF_SAMPLE_IDENTIFIER)
		w[n++] = pvpmu_primary_id(event);
	return n;
}
#endif

#ifdef PVPMU_PERF_OUTPUT
/* perf_log_throttle(): the kernel's record, with our own trailer. */
static void pvpmu_log_throttle(struct pvpmu_cpu *pc, struct perf_event *event,
			       bool unthrottle)
{
	struct perf_output_handle handle;
	struct {
		struct perf_event_header header;
		u64 time;
		u64 id;
		u64 stream_id;
	} rec = {
		.header = {
			.type = unthrottle ? PERF_RECORD_UNTHROTTLE :
					     PERF_RECORD_THROTTLE,
		},
		.time = event->clock(),
		.id = pvpmu_primary_id(event),
		.stream_id = event->id,
	};
	u64 trailer[6];
	unsigned int n = pvpmu_id_sample(event, trailer);

	rec.header.size = sizeof(rec) + n * sizeof(u64);
	if (perf_output_begin(&handle, &pc->sample, event, rec.header.size))
		return;
	perf_output_put(&handle, rec);
	perf_output_copy(&handle, trailer, n * sizeof(u64));
	perf_output_end(&handle);
}
#else
/*
 * A stock kernel exports nothing that writes a non-sample record into a
 * perf buffer: the throttle still happens (the host stops sampling), it is
 * only not logged in the perf stream. stats/throttle_unrecorded counts it.
 */
static void pvpmu_log_throttle(struct pvpmu_cpu *pc, struct perf_event *event,
			       bool unthrottle)
{
	pc->stats.throttle_unrecorded++;
}
#endif

/* ------------------------------------------------------------------------
 * Throttling: like __perf_event_account_interrupt(), per CPU slot
 */

static void pvpmu_throttle(struct pvpmu_cpu *pc)
{
	pc->throttled = true;
	pc->stats.throttles++;
	pvpmu_log_throttle(pc, pc->event, false);
	/*
	 * The host reads the flag at its next batch (while this vCPU is out
	 * of guest mode) and takes no samples while it is set. Whatever is
	 * already in the ring stays there until the next tick.
	 */
	WRITE_ONCE(pc->state->throttled, 1);
	hrtimer_start(&pc->unthrottle_timer, ns_to_ktime(TICK_NSEC),
		      HRTIMER_MODE_REL_PINNED_HARD);
}

static void pvpmu_unthrottle(struct pvpmu_cpu *pc, bool log)
{
	if (!pc->throttled)
		return;
	pc->throttled = false;
	pc->tick = jiffies;
	pc->tick_samples = 0;
	WRITE_ONCE(pc->state->throttled, 0);
	if (log && pc->event)
		pvpmu_log_throttle(pc, pc->event, true);
}

/* Count one sample; true when the event reached the limit of this tick. */
static bool pvpmu_account_sample(struct pvpmu_cpu *pc)
{
	unsigned int max = READ_ONCE(max_samples_per_tick);

	if (time_after(jiffies, pc->tick)) {
		pc->tick = jiffies;
		pc->tick_samples = 0;
	}
	return max && ++pc->tick_samples >= max;
}

/* ------------------------------------------------------------------------
 * The device ring: drain into the event's perf buffer
 */

enum pvpmu_drain_mode {
	PVPMU_DRAIN,		/* copy, honouring the throttle */
	PVPMU_DRAIN_FINAL,	/* at del: copy, or drop if throttled */
};

static void pvpmu_ring_broken(struct pvpmu_cpu *pc, const char *why,
			      u64 head, u64 tail, u32 size)
{
	pc->stats.broken_ring++;
	pr_warn_ratelimited("CPU%d: broken sample ring (%s: head %llu, tail %llu, record size %u); skipping to head\n",
			    smp_processor_id(), why, head, tail, size);
}

static bool pvpmu_record_ok(struct pvpmu_cpu *pc,
			    const struct perf_event_header *hdr)
{
	switch (hdr->type) {
	case PERF_RECORD_SAMPLE:
		if (pc->sample_size)
			return hdr->size == pc->sample_size;
		return hdr->size >= pc->sample_min;
	case PERF_RECORD_LOST:
		return hdr->size == pc->lost_size;
	}
	return false;
}

#ifdef PVPMU_PERF_OUTPUT
/*
 * Copy one record into @event's perf buffer. @hdr is our checked copy of
 * the header; the body is copied from the ring in at most two pieces (a
 * record may wrap the end of the ring; its 8-byte header never does).
 * perf_output_begin() redirects inherited events to the parent's buffer,
 * and when the buffer is full it drops the record, counts it and later
 * writes its own PERF_RECORD_LOST, as for any other PMU.
 */
static void pvpmu_output(struct pvpmu_cpu *pc, struct perf_event *event,
			 const struct perf_event_header *hdr, u64 tail)
{
	u64 mask = pc->data_size - 1;
	u64 body = (tail + sizeof(*hdr)) & mask;
	u32 len = hdr->size - sizeof(*hdr);
	u32 first = min_t(u64, len, pc->data_size - body);
	struct perf_output_handle handle;

	if (perf_output_begin(&handle, &pc->sample, event, hdr->size)) {
		pc->stats.output_full++;
		return;
	}
	perf_output_put(&handle, *hdr);
	perf_output_copy(&handle, pc->data + body, first);
	if (len > first)
		perf_output_copy(&handle, pc->data, len - first);
	perf_output_end(&handle);
}
#else
/*
 * A stock kernel (no guest-image/patches/0001-*) exports neither
 * perf_output_begin() nor perf_event_output(). What it does give every PMU
 * is the event's overflow handler, the pointer the perf core itself calls
 * from perf_event_overflow(): perf_event_output_forward() (or _backward(),
 * or a BPF program's wrapper). Since 6.1 that path keeps the fields a
 * driver has already filled (data->sample_flags): TID, TIME, CPU, ADDR,
 * PERIOD and CALLCHAIN are the host's, IP and the user/kernel bit come
 * from the regs we build, ID, STREAM_ID and IDENTIFIER are the core's own
 * (the same values: st->id and st->stream_id are those of this event).
 * So the record written is the host's record, byte for byte, with the perf
 * core's reservation, redirection of inherited events to the parent's
 * buffer, LOST record when the buffer is full, and wakeups.
 *
 * One difference from the patched path (docs/pvpmu-driver.md): when the
 * perf buffer had dropped records, the core writes its LOST record first
 * and re-stamps TID, TIME and CPU of the sample that follows from the
 * drain's context ("XXX mostly redundant" in __perf_output_begin).
 */
#define PVPMU_STOCK_SAMPLE_TYPES					\
	(PERF_SAMPLE_IDENTIFIER | PERF_SAMPLE_IP | PERF_SAMPLE_TID |	\
	 PERF_SAMPLE_TIME | PERF_SAMPLE_ADDR | PERF_SAMPLE_ID |		\
	 PERF_SAMPLE_STREAM_ID | PERF_SAMPLE_CPU | PERF_SAMPLE_PERIOD |	\
	 PERF_SAMPLE_CALLCHAIN)
#define PVPMU_RECORD_MAX	(U16_MAX + 1)

/* Take word *@i of a record of @n words. */
static bool pvpmu_word(const u64 *rec, u32 n, u32 *i, u64 *v)
{
	if (*i >= n)
		return false;
	*v = rec[(*i)++];
	return true;
}

/* Fill @data and @regs from the host's sample @rec; false if it is torn. */
static bool pvpmu_parse_sample(struct perf_event *event, const u64 *rec,
			       u32 size, struct perf_sample_data *data,
			       struct pt_regs *regs)
{
	u64 type = event->attr.sample_type;
	const struct perf_event_header *hdr = (const void *)rec;
	u32 n = size / sizeof(u64), i = 1;
	u64 ip = 0, addr = 0, period = 0, tid = 0, cpu = 0, skip, nr;
	/* The fixed-size fields before the callchain, in record order. */
	const struct {
		u64 bit;
		u64 *to;
	} fields[] = {
		{ PERF_SAMPLE_IDENTIFIER, &skip },
		{ PERF_SAMPLE_IP, &ip },
		{ PERF_SAMPLE_TID, &tid },
		{ PERF_SAMPLE_TIME, &data->time },
		{ PERF_SAMPLE_ADDR, &addr },
		{ PERF_SAMPLE_ID, &skip },
		{ PERF_SAMPLE_STREAM_ID, &skip },
		{ PERF_SAMPLE_CPU, &cpu },
		{ PERF_SAMPLE_PERIOD, &period },
	};
	unsigned int f;

	for (f = 0; f < ARRAY_SIZE(fields); f++) {
		if ((type & fields[f].bit) &&
		    !pvpmu_word(rec, n, &i, fields[f].to))
			return false;
	}
	if (type & PERF_SAMPLE_CALLCHAIN) {
		if (!pvpmu_word(rec, n, &i, &nr) || nr > n - i)
			return false;
		/* struct perf_callchain_entry is { nr, ip[nr] }: as recorded. */
		data->callchain = (struct perf_callchain_entry *)&rec[i - 1];
		i += nr;
	}
	if (i != n)
		return false;

	/* After the reads: perf_sample_data_init() sets sample_flags. */
	perf_sample_data_init(data, 0, period);
#ifdef PVPMU_DYN_SIZE
	/* Since 6.3 the record's size counts what a driver filled. */
	if (type & PERF_SAMPLE_CALLCHAIN)
		data->dyn_size += (data->callchain->nr + 1) * sizeof(u64);
#endif
	data->addr = addr;
	data->tid_entry.pid = lower_32_bits(tid);
	data->tid_entry.tid = upper_32_bits(tid);
	data->cpu_entry.cpu = lower_32_bits(cpu);
	data->cpu_entry.reserved = upper_32_bits(cpu);
	data->sample_flags |= type & (PERF_SAMPLE_TID | PERF_SAMPLE_TIME |
				      PERF_SAMPLE_ADDR | PERF_SAMPLE_CPU |
				      PERF_SAMPLE_CALLCHAIN);
	/* perf_misc_flags() and perf_instruction_pointer() read these. */
	memset(regs, 0, sizeof(*regs));
	regs->ip = ip;
	regs->cs = (hdr->misc & PERF_RECORD_MISC_CPUMODE_MASK) ==
		   PERF_RECORD_MISC_USER ? __USER_CS : __KERNEL_CS;
	return true;
}

static void pvpmu_output(struct pvpmu_cpu *pc, struct perf_event *event,
			 const struct perf_event_header *hdr, u64 tail)
{
	u64 mask = pc->data_size - 1;
	u64 start = tail & mask;
	u32 first = min_t(u64, hdr->size, pc->data_size - start);
	struct perf_sample_data data;
	struct pt_regs regs;

	if (hdr->type == PERF_RECORD_LOST) {
		u64 lost;

		/* { header, id, lost, sample_id }: the count is word 2. */
		memcpy(&lost, pc->data + ((tail + 2 * sizeof(u64)) & mask),
		       sizeof(lost));
		pc->stats.lost_unrecorded += lost;
		pr_warn_ratelimited("CPU%d: the host lost %llu sample(s); this kernel exports no way to write PERF_RECORD_LOST from a module, see pvpmu/stats/lost_unrecorded\n",
				    smp_processor_id(), lost);
		return;
	}

	/* One copy: the checks and the record use the same bytes. */
	memcpy(pc->record, pc->data + start, first);
	if (hdr->size > first)
		memcpy((u8 *)pc->record + first, pc->data, hdr->size - first);
	memcpy(pc->record, hdr, sizeof(*hdr));
	if (!pvpmu_parse_sample(event, pc->record, hdr->size, &data, &regs)) {
		pc->stats.bad_records++;
		pr_warn_ratelimited("CPU%d: dropped a sample of size %u: its fields do not add up to its size\n",
				    smp_processor_id(), hdr->size);
		return;
	}
	/*
	 * perf_event_overflow() would also run the core's throttle, which
	 * the driver does itself (pvpmu_account_sample), and signals, which
	 * event_init refuses.
	 */
	READ_ONCE(event->overflow_handler)(event, &data, &regs);
}
#endif

/*
 * Consume this CPU's device ring (tools/lib/perf's reader, in the kernel):
 * records from our tail to the host's head, then publish the new tail. On
 * this CPU with IRQs off.
 */
static void pvpmu_drain_ring(struct pvpmu_cpu *pc, enum pvpmu_drain_mode mode)
{
	struct perf_event *event = pc->event;
	bool deliver = event && is_sampling_event(event);
	bool drop = mode == PVPMU_DRAIN_FINAL && pc->throttled;
	u64 head, tail = pc->tail;

	if (!pc->ready || (pc->throttled && mode == PVPMU_DRAIN))
		return;

	/*
	 * Pairs with the host's release store of data_head, made after the
	 * record bytes (docs/perf-ring.md, B pairs with C): every record below
	 * head is complete when we read it.
	 */
	head = smp_load_acquire(&pc->ctrl->data_head);
	if (head - tail > pc->data_size || head % 8) {
		pvpmu_ring_broken(pc, "head", head, tail, 0);
		tail = head;
		goto publish;
	}

	while (tail != head) {
		struct perf_event_header hdr;
		u64 word;

		/*
		 * One read of the header: the checks and the copy both use
		 * this value, whatever the host does to the page meanwhile.
		 */
		word = READ_ONCE(*(u64 *)(pc->data + (tail & (pc->data_size - 1))));
		memcpy(&hdr, &word, sizeof(hdr));
		if (hdr.size < sizeof(hdr) || hdr.size % 8 ||
		    hdr.size > head - tail) {
			pvpmu_ring_broken(pc, "record", head, tail, hdr.size);
			tail = head;
			break;
		}

		if (!deliver) {
			pc->stats.dropped_inactive++;
		} else if (drop) {
			pc->stats.dropped_throttled++;
		} else if (!pvpmu_record_ok(pc, &hdr)) {
			pc->stats.bad_records++;
			pr_warn_ratelimited("CPU%d: dropped a record of type %u, size %u: not what the event's format gives\n",
					    smp_processor_id(), hdr.type, hdr.size);
		} else if (hdr.type == PERF_RECORD_LOST) {
			pvpmu_output(pc, event, &hdr, tail);
			pc->stats.lost_records++;
		} else {
			pvpmu_output(pc, event, &hdr, tail);
			pc->stats.samples++;
			if (mode == PVPMU_DRAIN && pvpmu_account_sample(pc)) {
				tail += hdr.size;
				pvpmu_throttle(pc);
				break;
			}
		}
		tail += hdr.size;
	}

publish:
	pc->tail = tail;
	/*
	 * Pairs with the host's acquire load of data_tail before it reuses
	 * ring space (docs/perf-ring.md, D pairs with A): our reads of the
	 * records above are done before the host can see their space free.
	 */
	smp_store_release(&pc->ctrl->data_tail, tail);
}

/* ------------------------------------------------------------------------
 * AUX sessions (docs/pvpmu.md "AUX")
 */

/*
 * Post a session to the host: the fields first, then aux_seq with release.
 * Pairs with the host's acquire load of aux_seq: a host that sees the new
 * sequence number sees the session's buffer, head, room and wakeup.
 */
static void pvpmu_aux_post(struct pvpmu_cpu *pc, u64 buf, u64 head, u64 room,
			   u64 wakeup)
{
	struct pvpmu_state *st = pc->state;

	WRITE_ONCE(st->aux_buf, buf);
	WRITE_ONCE(st->aux_head, head);
	WRITE_ONCE(st->aux_room, room);
	WRITE_ONCE(st->aux_wakeup, wakeup);
	pc->aux_room = room;
	/* Publish: pairs with the host's acquire load of aux_seq. */
	smp_store_release(&st->aux_seq, ++pc->aux_seq);
}

/* Open a handle on @event's AUX area and post it; on this CPU, IRQs off. */
static void pvpmu_aux_begin(struct pvpmu_cpu *pc, struct perf_event *event)
{
	struct perf_output_handle *handle = &pc->aux_handle;
	struct pvpmu_aux_buf *buf;
	u64 room, wakeup = 0;

	buf = perf_aux_output_begin(handle, event);
	if (!buf) {
		/*
		 * No AUX area, or no room (the perf core then disables the
		 * event until the reader catches up): no session.
		 */
		if (READ_ONCE(pc->state->aux_buf))
			pvpmu_aux_post(pc, 0, 0, 0, 0);
		return;
	}
	if (buf->overwrite) {
		/*
		 * Snapshot mode: the handle has no room or wakeup; the host
		 * may fill the whole area from head, and the next session
		 * carries on from there, so the area wraps.
		 */
		room = buf->size;
	} else {
		s64 w = handle->wakeup - handle->head;

		room = handle->size;
		if (w > 0 && w < room)
			wakeup = w;
	}
	pc->stats.aux_sessions++;
	pvpmu_aux_post(pc, buf->id, handle->head, room, wakeup);
}

/*
 * Commit the session: perf_aux_output_end() with the bytes the host wrote.
 * @stopping: pmu->stop, the session may still be open on the host side;
 * otherwise the interrupt path, the host has ended it.
 */
static void pvpmu_aux_end(struct pvpmu_cpu *pc, bool stopping)
{
	struct perf_output_handle *handle = &pc->aux_handle;
	struct pvpmu_state *st = pc->state;
	struct pvpmu_aux_buf *buf;
	u64 written = 0, flags = 0;

	if (!handle->event)
		return;
	buf = perf_get_aux(handle);

	if (stopping) {
		/*
		 * From here the host writes nothing more into this session:
		 * it checks aux_buf before every write, and writes only while
		 * this vCPU is outside guest mode. We are running on this vCPU
		 * now, so the host is not in the middle of a write, and at its
		 * next chance it finds aux_buf == 0. This is what makes stop
		 * synchronous without a VM exit: when pmu->stop returns, the
		 * perf core may free the AUX pages.
		 */
		WRITE_ONCE(st->aux_buf, 0);
	}

	/*
	 * Both loads pair with the host's release stores of aux_done_seq
	 * (session ended) and aux_written_seq (running total): seeing our
	 * sequence number there means aux_written/aux_flags, and the trace
	 * bytes they count, are the host's for this session.
	 */
	if (smp_load_acquire(&st->aux_done_seq) == pc->aux_seq ||
	    /* pairs with the host's release store of aux_written_seq */
	    smp_load_acquire(&st->aux_written_seq) == pc->aux_seq) {
		written = READ_ONCE(st->aux_written);
		flags = READ_ONCE(st->aux_flags);
	}
	if (written > pc->aux_room || flags & ~(u64)PVPMU_AUX_FLAGS) {
		pc->stats.aux_bad++;
		pr_warn_ratelimited("CPU%d: AUX result out of range (written %llu of %llu, flags %#llx)\n",
				    smp_processor_id(), written, pc->aux_room,
				    flags);
		written = min(written, pc->aux_room);
		flags &= PVPMU_AUX_FLAGS;
	}
	if (buf->overwrite) {
		/* Wrapping is the point of snapshot mode, not a truncation. */
		flags &= ~(u64)PERF_AUX_FLAG_TRUNCATED;
		handle->head += written;
	}
	if (flags)
		perf_aux_output_flag(handle, flags);
	pc->stats.aux_bytes += written;
	/*
	 * perf_aux_output_end() publishes aux_head with a plain store. The
	 * trace bytes came from the host (ordered before its release above);
	 * the full barrier makes them visible to any reader of the new
	 * aux_head, on any CPU, before that store.
	 */
	smp_mb();
	perf_aux_output_end(handle, written);
}

/* Interrupt path: the host ended the session we posted? Then commit it. */
static void pvpmu_aux_poll(struct pvpmu_cpu *pc)
{
	struct perf_event *event = pc->aux_handle.event;

	if (!event || !READ_ONCE(pc->state->aux_buf) ||
	    /* pairs with the host's release store of aux_done_seq */
	    smp_load_acquire(&pc->state->aux_done_seq) != pc->aux_seq)
		return;
	pvpmu_aux_end(pc, false);
	pvpmu_aux_begin(pc, event);
}

/* ------------------------------------------------------------------------
 * Interrupt
 */

/* The drain of one CPU: on that CPU, hard irq context. */
static void pvpmu_drain(struct pvpmu_cpu *pc)
{
	if (!pc->ready)
		return;
	pc->stats.drains++;
	pvpmu_publish_clock(pc);
	if (pc->throttled && time_after(jiffies, pc->tick)) {
		/* A tick went by and the timer has not run yet. */
		hrtimer_try_to_cancel(&pc->unthrottle_timer);
		pvpmu_unthrottle(pc, true);
	}
	pvpmu_aux_poll(pc);
	pvpmu_drain_ring(pc, PVPMU_DRAIN);
}

static void pvpmu_drain_ipi(void *info)
{
	pvpmu_drain(info);
}

static enum hrtimer_restart pvpmu_unthrottle_fn(struct hrtimer *timer)
{
	struct pvpmu_cpu *pc = container_of(timer, struct pvpmu_cpu,
					    unthrottle_timer);

	if (pc->throttled) {
		pvpmu_unthrottle(pc, true);
		pvpmu_drain_ring(pc, PVPMU_DRAIN);
	}
	return HRTIMER_NORESTART;
}

/*
 * Any CPU. For each CPU whose irq_seq moved, run its drain there. The
 * acquire pairs with the host's release increment of irq_seq, made after
 * it published the ring's data_head and the AUX result: the drain, which
 * runs after this load, finds them.
 */
static irqreturn_t pvpmu_interrupt(int irq, void *dev_id)
{
	irqreturn_t ret = IRQ_NONE;
	int cpu, this_cpu = smp_processor_id();

	for_each_cpu(cpu, &pvpmu.ready) {
		struct pvpmu_cpu *pc = per_cpu_ptr(pvpmu.cpus, cpu);
		/* pairs with the host's release increment of irq_seq */
		u64 seq = smp_load_acquire(&pc->state->irq_seq);

		if (seq == pc->irq_seen)
			continue;
		pc->irq_seen = seq;
		ret = IRQ_HANDLED;
		if (cpu == this_cpu) {
			pvpmu_drain(pc);
		} else {
			/*
			 * -EBUSY: a drain is queued and has not started
			 * (the csd is unlocked before its function runs), so
			 * it will see everything published so far.
			 */
			smp_call_function_single_async(cpu, &pc->csd);
		}
	}
	return ret;
}

/* ------------------------------------------------------------------------
 * pmu callbacks: all on the event's CPU, IRQs off
 */

static struct pmu pvpmu_pmu;

static void pvpmu_update_count(struct perf_event *event)
{
	struct hw_perf_event *hwc = &event->hw;
	u64 now = local_clock();
	u64 prev = local64_xchg(&hwc->prev_count, now);

	local64_add(now - prev, &event->count);
}

static void pvpmu_read(struct perf_event *event)
{
	if (!(event->hw.state & PERF_HES_STOPPED))
		pvpmu_update_count(event);
}

/* The state page's period: ns (period mode) or Hz (freq mode), in range. */
static u64 pvpmu_period(struct perf_event *event)
{
	u64 max = pvpmu.max_freq;

	if (event->attr.freq)
		return max ? min_t(u64, event->attr.sample_freq, max) :
			     event->attr.sample_freq;
	if (max)
		return max_t(u64, event->attr.sample_period,
			     DIV_ROUND_UP(NSEC_PER_SEC, max));
	return event->attr.sample_period;
}

static u32 pvpmu_flags(struct perf_event *event)
{
	u32 flags = 0;

	if (event->attr.exclude_user)
		flags |= PVPMU_SF_EXCLUDE_USER;
	if (event->attr.exclude_kernel)
		flags |= PVPMU_SF_EXCLUDE_KERNEL;
	if (event->attr.freq)
		flags |= PVPMU_SF_FREQ;
	return flags;
}

static void pvpmu_start(struct perf_event *event, int flags)
{
	struct pvpmu_cpu *pc = this_cpu_ptr(pvpmu.cpus);

	event->hw.state = 0;
	local64_set(&event->hw.prev_count, local_clock());
	if (is_sampling_event(event)) {
		/* PERF_EVENT_IOC_PERIOD restarts the event: take the new period. */
		WRITE_ONCE(pc->state->flags, pvpmu_flags(event));
		WRITE_ONCE(pc->state->period, pvpmu_period(event));
	}
	if (pvpmu.features & PVPMU_F_AUX)
		pvpmu_aux_begin(pc, event);
}

static void pvpmu_stop(struct perf_event *event, int flags)
{
	struct pvpmu_cpu *pc = this_cpu_ptr(pvpmu.cpus);
	struct hw_perf_event *hwc = &event->hw;

	if (hwc->state & PERF_HES_STOPPED)
		return;
	pvpmu_update_count(event);
	hwc->state |= PERF_HES_STOPPED | PERF_HES_UPTODATE;
	pvpmu_aux_end(pc, true);
}

static int pvpmu_add(struct perf_event *event, int flags)
{
	struct pvpmu_cpu *pc = this_cpu_ptr(pvpmu.cpus);
	struct pvpmu_state *st = pc->state;
	u32 extra;

	if (!pc->ready || pc->event)
		return -EAGAIN;	/* one slot per CPU: the core multiplexes */

	/*
	 * Nothing in the ring belongs to this event: the last del drained it
	 * and the host writes only while active == 1. Drop anything a
	 * misbehaving host left there (the slot is empty: counted as
	 * dropped_inactive).
	 */
	if (is_sampling_event(event))
		pvpmu_drain_ring(pc, PVPMU_DRAIN_FINAL);

	pc->event = event;
	event->hw.state = PERF_HES_STOPPED | PERF_HES_UPTODATE;

	if (is_sampling_event(event)) {
		extra = event->attr.sample_id_all ? event->id_header_size : 0;
		pc->sample_min = sizeof(struct perf_event_header) +
				 event->header_size + event->id_header_size;
		pc->sample_size = event->attr.sample_type & PVPMU_VARIABLE_SAMPLE ?
				  0 : pc->sample_min;
		pc->lost_size = sizeof(struct perf_event_header) +
				2 * sizeof(u64) + extra;
		pc->tick = jiffies;
		pc->tick_samples = 0;

		WRITE_ONCE(st->flags, pvpmu_flags(event));
		WRITE_ONCE(st->sample_type, event->attr.sample_type);
		/* read_format shapes a sample only through PERF_SAMPLE_READ. */
		WRITE_ONCE(st->read_format,
			   event->attr.sample_type & PERF_SAMPLE_READ ?
			   event->attr.read_format : 0);
		WRITE_ONCE(st->sample_id_all, event->attr.sample_id_all);
		WRITE_ONCE(st->period, pvpmu_period(event));
		WRITE_ONCE(st->id, pvpmu_primary_id(event));
		WRITE_ONCE(st->stream_id, event->id);
		WRITE_ONCE(st->pid_filter, event->hw.target ?
			   task_tgid_nr(event->hw.target) : 0);
		WRITE_ONCE(st->throttled, 0);
		WRITE_ONCE(st->gen, ++pc->gen);
		pvpmu_publish_clock(pc);
		/*
		 * Host timer: ticks wait in a host ring until a flush, so the
		 * host drops those taken before this add (they belong to
		 * whatever ran before this event).
		 */
		WRITE_ONCE(st->active_since, local_clock());
		/*
		 * Pairs with the host's acquire load of active: a host that
		 * sees active == 1 sees this event's fields above.
		 */
		smp_store_release(&st->active, 1);
	}

	if (flags & PERF_EF_START)
		pvpmu_start(event, PERF_EF_RELOAD);
	return 0;
}

/* Are @event's samples taken by the host timer (so they wait in a host ring)? */
static bool pvpmu_host_timed(struct perf_event *event)
{
	u32 f = pvpmu.features;

	if (!(f & PVPMU_F_HOST_TIMER) || !(f & PVPMU_F_FLUSH))
		return false;
	return !((f & PVPMU_F_CALLCHAIN) &&
		 (event->attr.sample_type & PERF_SAMPLE_CALLCHAIN));
}

static void pvpmu_del(struct perf_event *event, int flags)
{
	struct pvpmu_cpu *pc = this_cpu_ptr(pvpmu.cpus);
	struct pvpmu_state *st = pc->state;

	if (WARN_ON_ONCE(pc->event != event))
		return;
	pvpmu_stop(event, PERF_EF_UPDATE);

	if (is_sampling_event(event)) {
		/*
		 * Host timer: its ticks for this event may still wait in the
		 * host's own ring. FLUSH moves them into our ring before the
		 * write retires, while the state page still describes this
		 * event and `current` is still its task (del runs before the
		 * context switch). Without it they would reach the next flush,
		 * when another task or event may be current. One exit per
		 * switch-out of a sampled task; kicks need none (and a
		 * callchain event is sampled with kicks when the host walks
		 * callchains).
		 */
		if (pvpmu_host_timed(event) && !pc->throttled)
			pvpmu_cmd(PVPMU_CMD_FLUSH, 0, 0, 0, NULL);
		/*
		 * active = 0 first. The host checks it before writing and
		 * writes only while this vCPU is out of guest mode, so after
		 * this store nothing more is added for this event, and what
		 * is in the ring now is all there is: drain it into this
		 * event, so none of it reaches the next one.
		 */
		WRITE_ONCE(st->active, 0);
		pvpmu_drain_ring(pc, PVPMU_DRAIN_FINAL);
		if (pc->throttled) {
			hrtimer_try_to_cancel(&pc->unthrottle_timer);
			pvpmu_unthrottle(pc, true);
		}
		WRITE_ONCE(st->pid_filter, 0);
		WRITE_ONCE(st->sample_type, 0);
		WRITE_ONCE(st->period, 0);
	}
	pc->event = NULL;
}

static int pvpmu_group_ok(struct perf_event *event)
{
	struct perf_event *leader = event->group_leader, *sibling;
	int n = 0;

	if (leader == event)
		return 0;
	if (leader->pmu == event->pmu)
		n++;
	for_each_sibling_event(sibling, leader) {
		if (sibling->pmu == event->pmu)
			n++;
	}
	/* With this one, two pvpmu events: they could never run together. */
	return n ? -EINVAL : 0;
}

static int pvpmu_event_init(struct perf_event *event)
{
	struct perf_event_attr *attr = &event->attr;

	if (attr->type != event->pmu->type)
		return -ENOENT;
	if (attr->config || attr->config1 || attr->config2)
		return -EINVAL;	/* event 0 (cpu-clock) is the only one */
	if (has_branch_stack(event))
		return -EOPNOTSUPP;
	/*
	 * exclude_host: we run in a guest and have no guests of our own, so
	 * it would count nothing. exclude_idle: the host cannot tell idle.
	 * precise_ip, clocks other than local_clock() (the host stamps TIME
	 * in it), signals on overflow and AUX output of other events need
	 * support the device does not have.
	 */
	if (attr->exclude_host || attr->exclude_idle || attr->precise_ip ||
	    attr->use_clockid || attr->sigtrap || attr->aux_output)
		return -EOPNOTSUPP;
	if (attr->exclude_user && attr->exclude_kernel)
		return -EINVAL;
	if (event->cpu >= 0 && !cpumask_test_cpu(event->cpu, &pvpmu.ready))
		return -ENODEV;
	if ((event->attach_state & PERF_ATTACH_TASK) &&
	    !atomic_xchg(&pvpmu.pinned, 1)) {
		/*
		 * A task's perf context keeps ctx->pmu = &pvpmu_pmu until the
		 * task exits, after its last event is gone, and the scheduler
		 * follows that pointer at every context switch. So once a
		 * per-task event exists this module must stay loaded.
		 */
		__module_get(THIS_MODULE);
		pr_info("first per-task event: the module stays loaded from now on (task contexts point to it)\n");
	}

	if (is_sampling_event(event)) {
		if (!(pvpmu.features & PVPMU_F_SAMPLING))
			return -EOPNOTSUPP;
		if (attr->sample_type & ~pvpmu.sample_types)
			return -EOPNOTSUPP;
#ifndef PVPMU_PERF_OUTPUT
		/* What pvpmu_parse_sample() can hand to the perf core. */
		if (attr->sample_type & ~PVPMU_STOCK_SAMPLE_TYPES)
			return -EOPNOTSUPP;
#endif
		if ((attr->sample_type & PERF_SAMPLE_READ) &&
		    (attr->read_format & PERF_FORMAT_GROUP))
			return -EOPNOTSUPP;
		if ((attr->sample_type & PERF_SAMPLE_CALLCHAIN) &&
		    !(pvpmu.features & PVPMU_F_CALLCHAIN))
			pr_notice_once("callchains hold the sampled IP only: the host samples with its timer, which gives no registers (perfvisor --pmu-backend host-timer); --pmu-backend auto or kick walks the guest's frames\n");
	}
	return pvpmu_group_ok(event);
}

/* AUX_SET: tell the host the perf core's AUX pages, in ring order. */
static void *pvpmu_setup_aux(struct perf_event *event, void **pages,
			     int nr_pages, bool overwrite)
{
	struct pvpmu_aux_buf *buf;
	unsigned int order;
	u64 *list, id = 0;
	u32 status;
	int i;

	if (nr_pages < 1 || nr_pages > PVPMU_MAX_AUX_PAGES ||
	    !is_power_of_2(nr_pages))
		return NULL;
	buf = kzalloc(sizeof(*buf), GFP_KERNEL);
	if (!buf)
		return NULL;
	buf->pages = kmalloc_array(nr_pages, sizeof(*buf->pages), GFP_KERNEL);
	/* The list is one physically contiguous, page-aligned array. */
	order = get_order(nr_pages * sizeof(u64));
	list = (u64 *)__get_free_pages(GFP_KERNEL | __GFP_ZERO, order);
	if (!list || !buf->pages) {
		if (list)
			free_pages((unsigned long)list, order);
		kfree(buf->pages);
		kfree(buf);
		return NULL;
	}
	for (i = 0; i < nr_pages; i++)
		list[i] = virt_to_phys(pages[i]);
	status = pvpmu_cmd(PVPMU_CMD_AUX_SET, virt_to_phys(list), nr_pages,
			   overwrite, &id);
	free_pages((unsigned long)list, order);
	if (status || !id) {
		pr_err("AUX_SET of %d pages failed: status %u (%s), id %llu\n",
		       nr_pages, status, pvpmu_status_name(status), id);
		kfree(buf->pages);
		kfree(buf);
		return NULL;
	}
	/*
	 * Our own reference on every page the host may now write: the perf
	 * core frees its AUX pages right after free_aux returns, and if
	 * AUX_CLEAR fails there the host may still write them. rb_alloc_aux_page()
	 * splits high-order allocations, so each page counts its own
	 * references.
	 */
	for (i = 0; i < nr_pages; i++) {
		buf->pages[i] = virt_to_page(pages[i]);
		get_page(buf->pages[i]);
	}
	buf->nr_pages = nr_pages;
	buf->id = id;
	buf->size = (u64)nr_pages << PAGE_SHIFT;
	buf->overwrite = overwrite;
	atomic_inc(&pvpmu.aux_bufs);
	return buf;
}

/*
 * AUX_CLEAR: when the write retires the host no longer writes the buffer,
 * so our page references can go and the perf core may free the pages
 * after we return. If it fails the host may still write them: the
 * references stay, so the pages never return to the allocator (a leak is
 * safe; a page reused while the host writes it is not). May run in hard
 * irq (from the last perf_aux_output_end()); put_page() may too.
 */
static void pvpmu_free_aux(void *aux)
{
	struct pvpmu_aux_buf *buf = aux;
	u32 status;
	int i;

	status = pvpmu_cmd(PVPMU_CMD_AUX_CLEAR, buf->id, 0, 0, NULL);
	if (status) {
		atomic_add(buf->nr_pages, &pvpmu.leaked_pages);
		pr_err("AUX_CLEAR of buffer %llu failed: status %u (%s); its %d pages stay allocated, since the host may still write them\n",
		       buf->id, status, pvpmu_status_name(status),
		       buf->nr_pages);
	} else {
		for (i = 0; i < buf->nr_pages; i++)
			put_page(buf->pages[i]);
	}
	atomic_dec(&pvpmu.aux_bufs);
	kfree(buf->pages);
	kfree(buf);
}

/* ------------------------------------------------------------------------
 * sysfs: format/, events/, stats/
 */

PMU_FORMAT_ATTR(event, "config:0-7");

static struct attribute *pvpmu_format_attrs[] = {
	&format_attr_event.attr,
	NULL,
};

static const struct attribute_group pvpmu_format_group = {
	.name = "format",
	.attrs = pvpmu_format_attrs,
};

PMU_EVENT_ATTR_STRING(cpu-clock, pvpmu_ev_cpu_clock, "event=0x0");
PMU_EVENT_ATTR_STRING(cpu-clock.unit, pvpmu_ev_cpu_clock_unit, "msec");
PMU_EVENT_ATTR_STRING(cpu-clock.scale, pvpmu_ev_cpu_clock_scale, "1e-6");

static struct attribute *pvpmu_event_attrs[] = {
	&pvpmu_ev_cpu_clock.attr.attr,
	&pvpmu_ev_cpu_clock_unit.attr.attr,
	&pvpmu_ev_cpu_clock_scale.attr.attr,
	NULL,
};

static const struct attribute_group pvpmu_events_group = {
	.name = "events",
	.attrs = pvpmu_event_attrs,
};

struct pvpmu_stat_attr {
	struct device_attribute attr;
	size_t off;		/* in struct pvpmu_stats, or ~0 */
	u32 reg;		/* device counter register */
};

static ssize_t pvpmu_stat_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	struct pvpmu_stat_attr *sa = container_of(attr, struct pvpmu_stat_attr,
						  attr);
	u64 sum = 0;
	int cpu;

	if (sa->off == SIZE_MAX)
		return sysfs_emit(buf, "%llu\n", readq(pvpmu.regs + sa->reg));
	for_each_possible_cpu(cpu) {
		struct pvpmu_cpu *pc = per_cpu_ptr(pvpmu.cpus, cpu);

		sum += READ_ONCE(*(u64 *)((u8 *)&pc->stats + sa->off));
	}
	return sysfs_emit(buf, "%llu\n", sum);
}

#define PVPMU_STAT(_name)						\
	static struct pvpmu_stat_attr pvpmu_stat_##_name = {		\
		.attr = __ATTR(_name, 0444, pvpmu_stat_show, NULL),	\
		.off = offsetof(struct pvpmu_stats, _name),		\
	}
#define PVPMU_DEV_STAT(_name, _reg)					\
	static struct pvpmu_stat_attr pvpmu_stat_##_name = {		\
		.attr = __ATTR(_name, 0444, pvpmu_stat_show, NULL),	\
		.off = SIZE_MAX,					\
		.reg = (_reg),						\
	}

PVPMU_STAT(samples);
PVPMU_STAT(lost_records);
PVPMU_STAT(dropped_inactive);
PVPMU_STAT(dropped_throttled);
PVPMU_STAT(bad_records);
PVPMU_STAT(broken_ring);
PVPMU_STAT(output_full);
PVPMU_STAT(lost_unrecorded);
PVPMU_STAT(throttle_unrecorded);
PVPMU_STAT(throttles);
PVPMU_STAT(drains);
PVPMU_STAT(aux_sessions);
PVPMU_STAT(aux_bytes);
PVPMU_STAT(aux_bad);
PVPMU_DEV_STAT(dev_err_commands, PVPMU_REG_COUNTERS + 0x00);
PVPMU_DEV_STAT(dev_err_pages, PVPMU_REG_COUNTERS + 0x08);
PVPMU_DEV_STAT(dev_err_tails, PVPMU_REG_COUNTERS + 0x10);
PVPMU_DEV_STAT(dev_err_state, PVPMU_REG_COUNTERS + 0x18);
PVPMU_DEV_STAT(dev_samples, PVPMU_REG_COUNTERS + 0x20);
PVPMU_DEV_STAT(dev_lost, PVPMU_REG_COUNTERS + 0x28);
PVPMU_DEV_STAT(dev_aux_bytes, PVPMU_REG_COUNTERS + 0x30);
PVPMU_DEV_STAT(dev_interrupts, PVPMU_REG_COUNTERS + 0x38);

static struct attribute *pvpmu_stats_attrs[] = {
	&pvpmu_stat_samples.attr.attr,
	&pvpmu_stat_lost_records.attr.attr,
	&pvpmu_stat_dropped_inactive.attr.attr,
	&pvpmu_stat_dropped_throttled.attr.attr,
	&pvpmu_stat_bad_records.attr.attr,
	&pvpmu_stat_broken_ring.attr.attr,
	&pvpmu_stat_output_full.attr.attr,
	&pvpmu_stat_lost_unrecorded.attr.attr,
	&pvpmu_stat_throttle_unrecorded.attr.attr,
	&pvpmu_stat_throttles.attr.attr,
	&pvpmu_stat_drains.attr.attr,
	&pvpmu_stat_aux_sessions.attr.attr,
	&pvpmu_stat_aux_bytes.attr.attr,
	&pvpmu_stat_aux_bad.attr.attr,
	&pvpmu_stat_dev_err_commands.attr.attr,
	&pvpmu_stat_dev_err_pages.attr.attr,
	&pvpmu_stat_dev_err_tails.attr.attr,
	&pvpmu_stat_dev_err_state.attr.attr,
	&pvpmu_stat_dev_samples.attr.attr,
	&pvpmu_stat_dev_lost.attr.attr,
	&pvpmu_stat_dev_aux_bytes.attr.attr,
	&pvpmu_stat_dev_interrupts.attr.attr,
	NULL,
};

static const struct attribute_group pvpmu_stats_group = {
	.name = "stats",
	.attrs = pvpmu_stats_attrs,
};

static const struct attribute_group *pvpmu_attr_groups[] = {
	&pvpmu_format_group,
	&pvpmu_events_group,
	&pvpmu_stats_group,
	NULL,
};

/*
 * perf_hw_context: per-task events, and the perf core rotates (multiplexes)
 * the events that compete for our single slot; it does not rotate in
 * perf_sw_context. In 6.1 a second hw-context PMU is refused (WARN, no task
 * events) unless it says PERF_PMU_CAP_HETEROGENEOUS_CPUS, which is used for
 * nothing else: we need it after our own reload (the "taken" flag is a
 * static in perf_pmu_register) and in a guest that has a CPU PMU too (we
 * then share its contexts, as hybrid PMUs do).
 */
static struct pmu pvpmu_pmu = {
	.module		= THIS_MODULE,
	.task_ctx_nr	= perf_hw_context,
#ifdef PERF_PMU_CAP_HETEROGENEOUS_CPUS	/* gone with the 6.2 context rework */
	.capabilities	= PERF_PMU_CAP_HETEROGENEOUS_CPUS,
#endif
	.attr_groups	= pvpmu_attr_groups,
	.event_init	= pvpmu_event_init,
	.add		= pvpmu_add,
	.del		= pvpmu_del,
	.start		= pvpmu_start,
	.stop		= pvpmu_stop,
	.read		= pvpmu_read,
};

/* ------------------------------------------------------------------------
 * Per-CPU set-up and teardown
 */

static void pvpmu_cpu_free(struct pvpmu_cpu *pc)
{
	int i;

	if (pc->data)
		vunmap(pc->data);
	if (pc->pages) {
		for (i = 0; i <= ring_pages; i++) {
			if (pc->pages[i])
				__free_page(pc->pages[i]);
		}
		kfree(pc->pages);
	}
	if (pc->state)
		free_page((unsigned long)pc->state);
#ifndef PVPMU_PERF_OUTPUT
	kvfree(pc->record);
	pc->record = NULL;
#endif
	pc->data = NULL;
	pc->pages = NULL;
	pc->state = NULL;
}

/*
 * The CPU's pages, allocated the first time it comes online and kept until
 * module exit: a CPU that goes offline and back reuses them. Whatever
 * fails half-way is freed by pvpmu_cpu_free() at exit.
 */
static int pvpmu_cpu_alloc(struct pvpmu_cpu *pc, int cpu)
{
	int node = cpu_to_node(cpu);
	struct page *page;
	int i;

	if (!pc->timer_ok) {
		INIT_CSD(&pc->csd, pvpmu_drain_ipi, pc);
		hrtimer_init(&pc->unthrottle_timer, CLOCK_MONOTONIC,
			     HRTIMER_MODE_REL_PINNED_HARD);
		pc->unthrottle_timer.function = pvpmu_unthrottle_fn;
		pc->timer_ok = true;
	}
	if (!pc->state) {
		page = alloc_pages_node(node, GFP_KERNEL | __GFP_ZERO, 0);
		if (!page)
			return -ENOMEM;
		pc->state = page_address(page);
	}
	if (!pc->pages)
		pc->pages = kcalloc(ring_pages + 1, sizeof(*pc->pages),
				    GFP_KERNEL);
	if (!pc->pages)
		return -ENOMEM;
	for (i = 0; i <= ring_pages; i++) {
		if (!pc->pages[i])
			pc->pages[i] = alloc_pages_node(node,
							GFP_KERNEL | __GFP_ZERO, 0);
		if (!pc->pages[i])
			return -ENOMEM;
	}
#ifndef PVPMU_PERF_OUTPUT
	if (!pc->record)
		pc->record = kvmalloc_node(PVPMU_RECORD_MAX, GFP_KERNEL, node);
	if (!pc->record)
		return -ENOMEM;
#endif
	pc->ctrl = page_address(pc->pages[0]);
	if (!pc->data)
		pc->data = vmap(pc->pages + 1, ring_pages, VM_MAP, PAGE_KERNEL);
	if (!pc->data)
		return -ENOMEM;
	pc->data_size = (u64)ring_pages << PAGE_SHIFT;
	return 0;
}

/*
 * A fresh state page and an empty ring, as the host expects them at
 * SET_STATE and SET_RING (also after an offline CPU comes back: the host
 * forgot them at RESET, and so do we).
 */
static void pvpmu_cpu_init(struct pvpmu_cpu *pc, int cpu)
{
	memset(pc->state, 0, PAGE_SIZE);
	memset(pc->ctrl, 0, PAGE_SIZE);
	pc->tail = 0;
	pc->aux_seq = 0;
	pc->aux_room = 0;
	pc->irq_seen = 0;
	pc->switch_seq = 0;
	pc->throttled = false;

	pc->state->version = PVPMU_IF_VERSION;
	pc->state->cpu = cpu;
	pc->state->current_task_gpa =
		slow_virt_to_phys(per_cpu_ptr(&PVPMU_CURRENT_TASK, cpu));
	pc->state->page_offset = PAGE_OFFSET;
	pc->state->task_pid_off = offsetof(struct task_struct, pid);
	pc->state->task_tgid_off = offsetof(struct task_struct, tgid);
	/* CPU 0's idle task, init_task, is in the kernel image mapping. */
	pc->state->kimage_virt = __START_KERNEL_map;
	pc->state->kimage_phys = phys_base;
}

/*
 * Host timer: its ticks reach the host's drain up to a flush interval late,
 * when another task may be current. So every context switch on a CPU is
 * logged in its state page: the task that leaves, and when. The host gives
 * a tick the task of the first switch after it (or the current task when
 * none came since). A kernel counter of the software context-switches
 * event, period 1, runs this in perf_event_task_sched_out(), on the CPU,
 * IRQs off, while `current` is still the task that leaves. The host reads
 * the log only while this vCPU is out of guest mode, so entries are whole;
 * the release store of switch_seq is for any other reader.
 */
static void pvpmu_switch_overflow(struct perf_event *ev,
				  struct perf_sample_data *data,
				  struct pt_regs *regs)
{
	struct pvpmu_cpu *pc = this_cpu_ptr(pvpmu.cpus);
	struct pvpmu_switch *e;

	if (!pc->ready)
		return;
	e = &pc->state->switch_log[pc->switch_seq % PVPMU_SWITCH_LOG_LEN];
	WRITE_ONCE(e->time, local_clock());
	WRITE_ONCE(e->pid, task_tgid_nr(current));
	WRITE_ONCE(e->tid, task_pid_nr(current));
	/* Pairs with the host's acquire load of switch_seq. */
	smp_store_release(&pc->state->switch_seq, ++pc->switch_seq);
}

static void pvpmu_switch_log_start(int cpu)
{
	struct pvpmu_cpu *pc = per_cpu_ptr(pvpmu.cpus, cpu);
	struct perf_event_attr attr = {
		.type = PERF_TYPE_SOFTWARE,
		.size = sizeof(attr),
		.config = PERF_COUNT_SW_CONTEXT_SWITCHES,
		.sample_period = 1,
		.pinned = 1,
	};
	struct perf_event *ev;

	ev = perf_event_create_kernel_counter(&attr, cpu, NULL,
					      pvpmu_switch_overflow, NULL);
	if (IS_ERR(ev)) {
		pr_warn("CPU%d: no context-switch log (%ld): system-wide host-timer samples take the task current at the host's drain\n",
			cpu, PTR_ERR(ev));
		return;
	}
	pc->switch_ev = ev;
}

struct pvpmu_setup {
	struct pvpmu_cpu *pc;
	phys_addr_t list;
	u32 status;
	const char *failed;
};

/* On the CPU itself (IPI): SET_STATE, SET_RING, START on its bank. */
static void pvpmu_cpu_start(void *arg)
{
	struct pvpmu_setup *s = arg;
	struct pvpmu_cpu *pc = s->pc;

	pvpmu_publish_clock(pc);
	s->failed = "SET_STATE";
	s->status = pvpmu_cmd(PVPMU_CMD_SET_STATE, virt_to_phys(pc->state),
			      0, 0, NULL);
	if (s->status)
		return;
	s->failed = "SET_RING";
	s->status = pvpmu_cmd(PVPMU_CMD_SET_RING, s->list, ring_pages, 0, NULL);
	if (s->status)
		return;
	s->failed = "START";
	s->status = pvpmu_cmd(PVPMU_CMD_START, 0, 0, 0, NULL);
}

/*
 * On the CPU itself, IRQs off: RESET (STOP, then forget the state and ring).
 * No drain runs here after this (they run on this CPU and check ready).
 */
static void pvpmu_cpu_reset(void *arg)
{
	struct pvpmu_cpu *pc = this_cpu_ptr(pvpmu.cpus);
	u32 *status = arg;

	pc->ready = false;
	*status = pvpmu_cmd(PVPMU_CMD_RESET, 0, 0, 0, NULL);
}

static unsigned int pvpmu_cpu_nr_pages(void)
{
	return ring_pages + 2;	/* state page, control page, data pages */
}

/*
 * Stop the host writing @cpu's pages: RESET its bank, on the CPU. When
 * RESET fails (or cannot be sent) the host may go on writing them, so
 * they stay allocated for good (pc->leaked): freeing them would hand the
 * host's writes to whoever gets the pages next.
 */
static void pvpmu_cpu_reset_bank(int cpu)
{
	struct pvpmu_cpu *pc = per_cpu_ptr(pvpmu.cpus, cpu);
	u32 status = PVPMU_ST_NO_BANK;
	int err;

	err = smp_call_function_single(cpu, pvpmu_cpu_reset, &status, 1);
	if (err || status) {
		pc->leaked = true;
		atomic_add(pvpmu_cpu_nr_pages(), &pvpmu.leaked_pages);
		pr_err("CPU%d: RESET failed (%d, status %u: %s); its %u pages stay allocated, since the host may still write them\n",
		       cpu, err, status, pvpmu_status_name(status),
		       pvpmu_cpu_nr_pages());
	}
}

/* Offline or unload: the counter, the ready bit, the bank, the timer. */
static void pvpmu_cpu_release(int cpu)
{
	struct pvpmu_cpu *pc = per_cpu_ptr(pvpmu.cpus, cpu);

	if (pc->switch_ev)
		perf_event_release_kernel(pc->switch_ev);
	pc->switch_ev = NULL;
	if (!pc->ready)
		return;
	/* No new drains from the interrupt handler (the pages stay ours). */
	cpumask_clear_cpu(cpu, &pvpmu.ready);
	pvpmu_cpu_reset_bank(cpu);
	if (pc->timer_ok)
		hrtimer_cancel(&pc->unthrottle_timer);
}

static int pvpmu_cpu_setup(int cpu)
{
	struct pvpmu_cpu *pc = per_cpu_ptr(pvpmu.cpus, cpu);
	struct pvpmu_setup s = { .pc = pc };
	u64 *list;
	int i, err;

	if (cpu >= pvpmu.nr_vcpus) {
		pr_warn("CPU%d: the device has only %u command banks; no sampling on this CPU\n",
			cpu, pvpmu.nr_vcpus);
		return 0;
	}
	if (pc->leaked) {
		pr_warn("CPU%d: its pages from before are still the host's (RESET failed); no sampling on this CPU\n",
			cpu);
		return 0;
	}
	err = pvpmu_cpu_alloc(pc, cpu);
	if (err)
		return err;
	pvpmu_cpu_init(pc, cpu);

	list = (u64 *)get_zeroed_page(GFP_KERNEL);
	if (!list)
		return -ENOMEM;
	for (i = 0; i <= ring_pages; i++)
		list[i] = page_to_phys(pc->pages[i]);
	s.list = virt_to_phys(list);
	err = smp_call_function_single(cpu, pvpmu_cpu_start, &s, 1);
	free_page((unsigned long)list);
	if (err)
		return err;
	if (s.status) {
		pr_err("CPU%d: %s failed: status %u (%s)\n", cpu, s.failed,
		       s.status, pvpmu_status_name(s.status));
		/* Whatever the host took before the failure, it forgets. */
		pvpmu_cpu_reset_bank(cpu);
		return -EIO;
	}
	pc->ready = true;
	cpumask_set_cpu(cpu, &pvpmu.ready);
	return 0;
}

/*
 * CPU hotplug (CPUHP_AP_ONLINE_DYN): both callbacks run on @cpu itself, in
 * its hotplug thread, also for every online CPU at module load and unload.
 * Going down, ours runs before the perf core's own (CPUHP_AP_PERF_ONLINE)
 * removes that CPU's events, so an event may still sit in the slot: after
 * RESET its pmu callbacks write only to our own pages, which stay
 * allocated until module exit, and add() refuses a CPU that is not ready.
 * A CPU that fails to set up is only logged: it takes no samples, and
 * bringing it online does not fail.
 */
static int pvpmu_cpu_online(unsigned int cpu)
{
	struct pvpmu_cpu *pc = per_cpu_ptr(pvpmu.cpus, cpu);
	int err = pvpmu_cpu_setup(cpu);

	if (err)
		pr_err("CPU%u: set-up failed (%d); no sampling on this CPU\n",
		       cpu, err);
	else if (pc->ready && (pvpmu.features & PVPMU_F_HOST_TIMER))
		pvpmu_switch_log_start(cpu);
	return 0;
}

static int pvpmu_cpu_offline(unsigned int cpu)
{
	pvpmu_cpu_release(cpu);
	return 0;
}

static void pvpmu_nop(void *info)
{
}

/*
 * Release every CPU (RESET on each online one; offline ones were released
 * when they went down), then the interrupt and the drains, then the pages
 * of every CPU whose RESET worked.
 */
static void pvpmu_teardown(void)
{
	int cpu;

	if (pvpmu.hp_state > 0)
		cpuhp_remove_state(pvpmu.hp_state);
	pvpmu.hp_state = 0;
	if (pvpmu.irq > 0)
		free_irq(pvpmu.irq, &pvpmu);
	/*
	 * A drain queued by the last interrupt may still be pending: a
	 * synchronous call to each CPU runs after it (the call queue is
	 * flushed as a whole), and it finds its CPU not ready.
	 */
	on_each_cpu(pvpmu_nop, NULL, 1);
	for_each_possible_cpu(cpu) {
		struct pvpmu_cpu *pc = per_cpu_ptr(pvpmu.cpus, cpu);

		if (pc->timer_ok)
			hrtimer_cancel(&pc->unthrottle_timer);
		if (WARN_ON_ONCE(pc->ready) || pc->leaked)
			continue;	/* never free what the host may write */
		pvpmu_cpu_free(pc);
	}
	cpumask_clear(&pvpmu.ready);
	if (atomic_read(&pvpmu.leaked_pages))
		pr_warn("%d pages stay allocated: the host may still write them (a RESET or AUX_CLEAR failed)\n",
			atomic_read(&pvpmu.leaked_pages));
}

/* ------------------------------------------------------------------------
 * Module init / exit
 */

static int __init pvpmu_probe_device(void)
{
	u32 magic, version, dev_irq;

	if (!base) {
		pr_info("no device: pvpmu.base not given (perfvisor passes it when it has the device)\n");
		return -ENODEV;
	}
	pvpmu.res = request_mem_region(base, PVPMU_REGION_SIZE, "pvpmu");
	if (!pvpmu.res) {
		pr_err("MMIO region %#lx is busy\n", base);
		return -EBUSY;
	}
	pvpmu.regs = ioremap(base, PVPMU_REGION_SIZE);
	if (!pvpmu.regs) {
		pr_err("cannot map MMIO region %#lx\n", base);
		return -ENOMEM;
	}
	magic = readl(pvpmu.regs + PVPMU_REG_MAGIC);
	version = readl(pvpmu.regs + PVPMU_REG_VERSION);
	if (magic != PVPMU_MAGIC) {
		pr_info("no device at %#lx (magic %#x, want %#x)\n", base,
			magic, PVPMU_MAGIC);
		return -ENODEV;
	}
	if (version != PVPMU_IF_VERSION) {
		pr_info("device at %#lx has interface version %u; this driver speaks %u\n",
			base, version, PVPMU_IF_VERSION);
		return -ENODEV;
	}
	pvpmu.features = readl(pvpmu.regs + PVPMU_REG_FEATURES);
	pvpmu.nr_vcpus = min_t(u32, readl(pvpmu.regs + PVPMU_REG_NR_VCPUS),
			       PVPMU_MAX_BANKS);
	pvpmu.max_freq = readl(pvpmu.regs + PVPMU_REG_MAX_FREQ);
	pvpmu.sample_types = readq(pvpmu.regs + PVPMU_REG_SAMPLE_TYPES);
	dev_irq = readl(pvpmu.regs + PVPMU_REG_IRQ);
	pvpmu.irq = irq ? irq : dev_irq;
	if (irq && irq != dev_irq)
		pr_warn("pvpmu.irq=%d but the device says %u; using %d\n",
			irq, dev_irq, irq);
	if (!(pvpmu.features & (PVPMU_F_SAMPLING | PVPMU_F_AUX))) {
		pr_info("device offers neither sampling nor AUX (features %#x)\n",
			pvpmu.features);
		return -ENODEV;
	}
	if (pvpmu.irq <= 0) {
		pr_err("no interrupt line (pass pvpmu.irq=N)\n");
		return -EINVAL;
	}
	return 0;
}

static void pvpmu_unmap(void)
{
	if (pvpmu.regs)
		iounmap(pvpmu.regs);
	if (pvpmu.res)
		release_mem_region(base, PVPMU_REGION_SIZE);
	pvpmu.regs = NULL;
	pvpmu.res = NULL;
}

static int __init pvpmu_init(void)
{
	int err;

	if (!ring_pages || ring_pages > PVPMU_MAX_RING_PAGES ||
	    !is_power_of_2(ring_pages)) {
		pr_err("ring_pages=%u: want a power of two, 1..%d\n",
		       ring_pages, PVPMU_MAX_RING_PAGES);
		return -EINVAL;
	}
	err = pvpmu_probe_device();
	if (err)
		goto err_unmap;

	pvpmu.have_kvmclock = !!pvclock_get_pvti_cpu0_va();
	if (!pvpmu.have_kvmclock)
		pr_warn("kvm-clock is not in use: clock_offset stays 0 and sample times will not match the guest's perf clock\n");

	pvpmu.cpus = alloc_percpu(struct pvpmu_cpu);
	if (!pvpmu.cpus) {
		err = -ENOMEM;
		goto err_unmap;
	}
	/*
	 * Edge-triggered ISA line: the handler walks every CPU's irq_seq, so
	 * a single interrupt for several CPUs' batches is enough. Requested
	 * before START so that no batch goes unnoticed.
	 */
	err = request_irq(pvpmu.irq, pvpmu_interrupt, 0, "pvpmu", &pvpmu);
	if (err) {
		pr_err("cannot get IRQ %d: %d\n", pvpmu.irq, err);
		pvpmu.irq = 0;
		goto err_free;
	}

	/* Sets up every online CPU now, and each one that comes online. */
	err = cpuhp_setup_state(CPUHP_AP_ONLINE_DYN, "perf/pvpmu:online",
				pvpmu_cpu_online, pvpmu_cpu_offline);
	if (err < 0) {
		pr_err("cannot register the CPU hotplug callbacks: %d\n", err);
		goto err_teardown;
	}
	pvpmu.hp_state = err;
	if (cpumask_empty(&pvpmu.ready)) {
		err = -ENODEV;
		goto err_teardown;
	}

	if (pvpmu.features & PVPMU_F_AUX) {
		pvpmu_pmu.setup_aux = pvpmu_setup_aux;
		pvpmu_pmu.free_aux = pvpmu_free_aux;
	}
	if (!(pvpmu.features & PVPMU_F_SAMPLING))
		pvpmu_pmu.capabilities |= PERF_PMU_CAP_NO_INTERRUPT;
	err = perf_pmu_register(&pvpmu_pmu, "pvpmu", -1);
	if (err) {
		pr_err("perf_pmu_register failed: %d\n", err);
		goto err_teardown;
	}
	pvpmu.registered = true;

	pr_info("MMIO %#lx, IRQ %d, features %#x%s%s%s%s, %u vCPUs, max %u Hz, sample types %#llx; %u CPU(s) ready, %u-page rings, pmu type %d, records by %s\n",
		base, pvpmu.irq, pvpmu.features,
		pvpmu.features & PVPMU_F_SAMPLING ? " sampling" : "",
		pvpmu.features & PVPMU_F_AUX ? " aux" : "",
		pvpmu.features & PVPMU_F_HOST_TIMER ? " host-timer" : " kick",
		pvpmu.features & PVPMU_F_CALLCHAIN ? " callchains" : " ip-only-callchains",
		pvpmu.nr_vcpus, pvpmu.max_freq, pvpmu.sample_types,
		cpumask_weight(&pvpmu.ready), ring_pages, pvpmu_pmu.type,
		PVPMU_OUTPUT_PATH);
	return 0;

err_teardown:
	pvpmu_teardown();
err_free:
	free_percpu(pvpmu.cpus);
	pvpmu.cpus = NULL;
err_unmap:
	pvpmu_unmap();
	return err;
}

static void __exit pvpmu_exit(void)
{
	/*
	 * The module cannot be unloaded while an event exists (pmu.module), so
	 * every AUX buffer is gone and every slot is empty.
	 */
	perf_pmu_unregister(&pvpmu_pmu);
	WARN_ON(atomic_read(&pvpmu.aux_bufs));
	pvpmu_teardown();
	free_percpu(pvpmu.cpus);
	pvpmu_unmap();
}

module_init(pvpmu_init);
module_exit(pvpmu_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("perfvisor paravirtual PMU: host-produced perf samples and AUX trace");
