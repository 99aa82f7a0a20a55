// SPDX-License-Identifier: GPL-2.0
/*
 * pvpmu_evil: a hostile guest for perfvisor's pvpmu device (test only).
 *
 * Loaded by tests/hostile.rs after `rmmod pvpmu`, with the real driver's
 * base= and irq=. Everything runs synchronously in module init, which
 * cleans up, prints one machine-readable line and returns 0 whatever the
 * verdict; the module then holds nothing (the device banks are RESET, its
 * pages freed) and `rmmod pvpmu_evil` unloads it. (Init does not return an
 * error: busybox insmod retries a failed finit_module() with init_module(),
 * which would run every attack twice.)
 *
 *   pvpmu-evil: result=PASS|FAIL canaries_changed=N commands=N rejected=N
 *               err_commands=N err_pages=N err_tails=N err_state=N
 *               samples_after=N
 *
 * (one line; err_* are the device's global error registers at the end).
 * Every failed check is also printed as "pvpmu-evil: FAIL: ..." and
 * a "pvpmu-evil: detail ..." line gives per-phase numbers.
 *
 * Phases (docs/pvpmu-hostile.md has the full list and the reasoning):
 *
 *  R  the register interface on every bank: wrong widths, unknown offsets
 *     and commands, commands in the wrong state, and hostile arguments
 *     (unaligned GPAs, GPAs outside RAM, in the MMIO hole, wrapping, page
 *     lists that straddle the end of RAM, duplicates, overlaps with pages
 *     other banks declared, bad counts, canary pages mixed with one bad
 *     entry). Each command's STATUS is checked against the contract
 *     (docs/pvpmu.md) and the error registers must count every rejection.
 *  S  a valid state page and ring on this CPU's bank, then nonsense in the
 *     state page while the host samples (unsupported sample_type, period 0
 *     and u64 max, task pointers outside RAM, at canaries, at MMIO, offsets
 *     that overflow, random churn).
 *  T  hostile data_tail values in the ring's control page while the ring
 *     is full; the unread records must stay intact and the host must
 *     resume once the tail is sane.
 *  A  AUX sessions with unknown buffers, room or wakeup beyond the buffer,
 *     heads near u64 max, a room the host must not exceed, rapid aux_seq
 *     churn, and AUX_CLEAR of a buffer a session still names (no write
 *     after the clear).
 *  C  (2+ vCPUs) another CPU registers and clears AUX buffers, STOPs and
 *     STARTs this CPU's bank, while this CPU samples and posts sessions.
 *  H  the device still works: RESET, a clean state page and ring, a sane
 *     event for ~200 ms, and the samples must parse.
 *
 * The device is only touched through its ioremap()ed registers and pages
 * this module allocated. A page is named in a command that should succeed
 * only if it is ours. 64 canary pages are named in commands that must be
 * rejected (and in one AUX_SET that must succeed, proving that no rejected
 * command left them declared; the host writes nothing at AUX_SET and the
 * buffer is cleared at once): they must stay byte-for-byte unchanged. On FAIL the pages are leaked
 * rather than freed: a host that wrote where it should not might still do
 * so, and a leak is safer for the guest than a use after free.
 */
#define pr_fmt(fmt) "pvpmu-evil: " fmt

#include <linux/bits.h>
#include <linux/delay.h>
#include <linux/gfp.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/ioport.h>
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/ktime.h>
#include <linux/minmax.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/percpu.h>
#include <linux/perf_event.h>
#include <linux/sched.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <asm/current.h>
#include <asm/page.h>
#include <asm/pgtable_types.h>

#include "pvpmu_compat.h"
#include "pvpmu_if.h"

/* A mask of acceptable statuses, e.g. W(OK) | W(EBUSY). */
#define W(x)			BIT(PVPMU_ST_##x)

/* The sane event: IP, TID, TIME, ID, CPU, PERIOD -> 56-byte samples. */
#define SANE_TYPE	(PERF_SAMPLE_IP | PERF_SAMPLE_TID | PERF_SAMPLE_TIME | \
			 PERF_SAMPLE_ID | PERF_SAMPLE_CPU | PERF_SAMPLE_PERIOD)
#define SANE_SIZE	56
#define LOST_SIZE	24	/* header, id, lost (sample_id_all = 0) */
#define EVIL_ID		0x5e5e1d
#define AUX_TRUNCATED	0x01	/* PERF_AUX_FLAG_TRUNCATED */

#define NR_CANARY	64
#define LIST_ORDER	3	/* a 32 KiB page list: 4096 entries */
#define LIST_ENTRIES	((PAGE_SIZE << LIST_ORDER) / sizeof(u64))
#define MAX_RES_BANKS	8	/* banks that get declared pages in phase R */
#define RING_MAX_DATA	4
#define AUX_PAGES	4
#define AUX_SIZE	(AUX_PAGES * PAGE_SIZE)
#define MAX_PAGES	96
#define MAX_BAD		32
#define MAX_LIVE_IDS	16
#define MAX_MSGS	60

static unsigned long base;
module_param(base, ulong, 0444);
MODULE_PARM_DESC(base, "physical address of the pvpmu MMIO region (pvpmu.base)");

static int irq;
module_param(irq, int, 0444);
MODULE_PARM_DESC(irq, "the device's interrupt line (pvpmu.irq); 0: do not take it");

static unsigned int phase_ms = 150;
module_param(phase_ms, uint, 0444);
MODULE_PARM_DESC(phase_ms, "length of one sampling sub-phase, ms (30..2000)");

struct evil_ring {
	struct page *pg[1 + RING_MAX_DATA];	/* control, then data */
	unsigned int nr;			/* data pages */
};

struct evil {
	void __iomem *regs;			/* 2 pages: the device + the next */
	struct resource *res;
	u32 nr_vcpus, features, max_freq;
	u64 ram_end;				/* end of the highest RAM range */
	u64 low_end;				/* end of RAM below 4 GiB */
	unsigned int cpu;			/* our bank in S, T, A, C, H */
	bool have_irq;
	atomic_t irqs;

	struct page *canary[NR_CANARY];
	u64 canary_pa[NR_CANARY];
	struct page *list_pg;			/* LIST_ORDER pages */
	u64 *list;
	u64 list_pa;
	struct page *pages[MAX_PAGES];		/* everything else, for freeing */
	unsigned int nr_pages;
	void *snap;				/* AUX_SIZE bytes of scratch */

	u64 bad[MAX_BAD];			/* page GPAs the host must refuse */
	const char *bad_name[MAX_BAD];
	bool bad_list_ok[MAX_BAD];		/* also safe as a page list GPA */
	unsigned int nr_bad;

	/* phase R: declared pages of the first banks */
	struct page *bst[MAX_RES_BANKS], *brc[MAX_RES_BANKS], *brd[MAX_RES_BANKS];
	unsigned int nr_res;

	struct page *sst;			/* state page of S, T, A, C */
	struct evil_ring sring, tring, hring;
	struct page *hst;			/* state page of H */
	struct page *fake_task;
	struct page *aux[AUX_PAGES];
	struct page *alist;

	/* phase C */
	struct page *cbuf, *clist;
	unsigned int other;
	u64 c_id;
	int c_go, c_stop, c_done;
	unsigned long c_loops, c_bad;

	u64 live_ids[MAX_LIVE_IDS];		/* AUX buffers we hold */

	/* accounting */
	atomic_long_t commands, rejected, rej_pages, rej_cmds;
	unsigned long wrong_width;
	unsigned int failures, msgs;
	u32 gen;
	u64 rng;
	u64 err0[4], err_end[4];
	u64 samples_after;
	unsigned int canaries_changed;
	char detail[768];
	size_t detail_len;
};

/* ------------------------------------------------------------------------
 * Small helpers
 */

static __printf(2, 3) void fail(struct evil *e, const char *fmt, ...)
{
	struct va_format vaf;
	va_list args;

	e->failures++;
	if (++e->msgs > MAX_MSGS)
		return;
	va_start(args, fmt);
	vaf.fmt = fmt;
	vaf.va = &args;
	pr_err("FAIL: %pV\n", &vaf);
	va_end(args);
}

static __printf(2, 3) void detail(struct evil *e, const char *fmt, ...)
{
	va_list args;
	size_t room = sizeof(e->detail) - e->detail_len;

	if (room <= 1)
		return;
	va_start(args, fmt);
	e->detail_len += vscnprintf(e->detail + e->detail_len, room, fmt, args);
	va_end(args);
}

static u64 rnd(struct evil *e)
{
	/* xorshift64*: deterministic, so a failing run can be replayed */
	e->rng ^= e->rng >> 12;
	e->rng ^= e->rng << 25;
	e->rng ^= e->rng >> 27;
	return e->rng * 0x2545f4914f6cdd1dULL;
}

static u64 pattern(unsigned int page, unsigned int word)
{
	/* Top byte 0xca: as a GPA, every word is far outside RAM. */
	return 0xca00000000000000ULL | ((u64)page << 40) | ((u64)word << 8) | 0x5a;
}

static void fill_pattern(struct page *p, unsigned int id)
{
	u64 *w = page_address(p);
	unsigned int i;

	for (i = 0; i < PAGE_SIZE / 8; i++)
		w[i] = pattern(id, i);
}

static bool check_pattern(struct page *p, unsigned int id)
{
	u64 *w = page_address(p);
	unsigned int i;

	for (i = 0; i < PAGE_SIZE / 8; i++)
		if (READ_ONCE(w[i]) != pattern(id, i))
			return false;
	return true;
}

static struct page *evil_page(struct evil *e)
{
	struct page *p;

	if (e->nr_pages >= MAX_PAGES)
		return NULL;
	p = alloc_page(GFP_KERNEL | __GFP_ZERO);
	if (p)
		e->pages[e->nr_pages++] = p;
	return p;
}

static u64 pa(struct page *p)
{
	return page_to_phys(p);
}

static u64 rd_reg(struct evil *e, unsigned int off)
{
	return readq(e->regs + off);
}

static void rd_err(struct evil *e, u64 v[4])
{
	v[0] = rd_reg(e, PVPMU_REG_ERR_COMMANDS);
	v[1] = rd_reg(e, PVPMU_REG_ERR_PAGES);
	v[2] = rd_reg(e, PVPMU_REG_ERR_TAILS);
	v[3] = rd_reg(e, PVPMU_REG_ERR_STATE);
}

/* One MMIO exit (and, with an AUX session open, one EXIT trace record). */
static void poke(struct evil *e)
{
	(void)readl(e->regs + PVPMU_REG_MAGIC);
}

static void spin_ms(struct evil *e, unsigned int ms)
{
	u64 end = ktime_get_ns() + (u64)ms * NSEC_PER_MSEC;

	while (ktime_get_ns() < end)
		cpu_relax();
}

/* Is `gpa` outside guest RAM as the host sees it (RAM below low_end and,
 * above 4 GiB, below ram_end)?
 */
static bool outside_ram(struct evil *e, u64 gpa)
{
	if (gpa >= e->ram_end)
		return true;
	return gpa >= e->low_end && gpa < SZ_4G;
}

/* ------------------------------------------------------------------------
 * Commands
 */

static u32 evil_cmd(struct evil *e, unsigned int bank, u32 cmd, u64 a0,
		    u64 a1, u64 a2, u64 *ret0)
{
	void __iomem *b = e->regs + PVPMU_BANK(bank);
	u32 st;

	writeq(a0, b + PVPMU_B_ARG0);
	writeq(a1, b + PVPMU_B_ARG1);
	writeq(a2, b + PVPMU_B_ARG2);
	/* The host runs the command in the exit of this write. */
	writel(cmd, b + PVPMU_B_CMD);
	st = readl(b + PVPMU_B_STATUS);
	if (ret0)
		*ret0 = st == PVPMU_ST_OK ? readq(b + PVPMU_B_RET0) : 0;
	atomic_long_inc(&e->commands);
	if (st != PVPMU_ST_OK) {
		atomic_long_inc(&e->rejected);
		atomic_long_inc(st == PVPMU_ST_EFAULT ? &e->rej_pages : &e->rej_cmds);
	}
	return st;
}

static void live_add(struct evil *e, u64 id)
{
	unsigned int i;

	for (i = 0; i < MAX_LIVE_IDS; i++) {
		if (!e->live_ids[i]) {
			e->live_ids[i] = id;
			return;
		}
	}
	fail(e, "internal: too many live AUX buffers");
}

static void live_del(struct evil *e, u64 id)
{
	unsigned int i;

	for (i = 0; i < MAX_LIVE_IDS; i++)
		if (e->live_ids[i] == id)
			e->live_ids[i] = 0;
}

static const char *const st_names[] = {
	"OK", "EINVAL", "EBUSY", "ENOENT", "EFAULT", "ENOSYS",
};

static const char *st_name(u32 st)
{
	return st < ARRAY_SIZE(st_names) ? st_names[st] : "?";
}

/*
 * Run a command whose STATUS must be one of `want` (a mask of W(...)).
 * A hostile command the host accepted is undone at once (AUX_CLEAR of the
 * id, or RESET of the bank) so that it cannot lead to writes later.
 */
static u32 expect(struct evil *e, unsigned int bank, const char *what, u32 cmd,
		  u64 a0, u64 a1, u64 a2, u32 want, u64 *ret0)
{
	u64 r = 0;
	u32 st = evil_cmd(e, bank, cmd, a0, a1, a2, &r);

	if (st >= 32 || !(want & BIT(st))) {
		fail(e, "bank %u: %s (cmd %u, %#llx, %#llx, %#llx): status %u (%s), want mask %#x",
		     bank, what, cmd, a0, a1, a2, st, st_name(st), want);
		if (st == PVPMU_ST_OK && !(want & W(OK))) {
			if (cmd == PVPMU_CMD_AUX_SET && r)
				evil_cmd(e, bank, PVPMU_CMD_AUX_CLEAR, r, 0, 0, NULL);
			else if (cmd == PVPMU_CMD_SET_STATE || cmd == PVPMU_CMD_SET_RING ||
				 cmd == PVPMU_CMD_START)
				evil_cmd(e, bank, PVPMU_CMD_RESET, 0, 0, 0, NULL);
		}
	}
	if (ret0)
		*ret0 = r;
	return st;
}

/* ------------------------------------------------------------------------
 * Rings
 */

static int ring_alloc(struct evil *e, struct evil_ring *r, unsigned int nr)
{
	unsigned int i;

	r->nr = nr;
	for (i = 0; i <= nr; i++) {
		r->pg[i] = evil_page(e);
		if (!r->pg[i])
			return -ENOMEM;
	}
	return 0;
}

static struct perf_event_mmap_page *ring_ctrl(struct evil_ring *r)
{
	return page_address(r->pg[0]);
}

static u64 ring_size(struct evil_ring *r)
{
	return (u64)r->nr * PAGE_SIZE;
}

/* Write the ring's page list into e->list; returns its GPA. */
static u64 ring_list(struct evil *e, struct evil_ring *r)
{
	unsigned int i;

	for (i = 0; i <= r->nr; i++)
		e->list[i] = pa(r->pg[i]);
	return e->list_pa;
}

static void ring_copy(struct evil_ring *r, u64 off, void *dst, size_t len)
{
	u64 size = ring_size(r);
	u8 *d = dst;

	while (len) {
		u64 o = off & (size - 1);
		unsigned int in = o & ~PAGE_MASK;
		size_t n = min_t(size_t, len, PAGE_SIZE - in);

		memcpy(d, page_address(r->pg[1 + (o >> PAGE_SHIFT)]) + in, n);
		d += n;
		off += n;
		len -= n;
	}
}

struct parse_result {
	unsigned long samples, lost_records, bad, bad_fields;
};

/*
 * Walk the records in [from, to). With `sane`, samples must have the sane
 * event's layout and fields (our id, our CPU, the task running the test,
 * kernel mode, monotonic time); otherwise only headers are checked.
 */
static void ring_parse(struct evil *e, struct evil_ring *r, u64 from, u64 to,
		       bool sane, unsigned int cpu, struct parse_result *p)
{
	u64 off = from, last_time = 0;
	u64 rec[SANE_SIZE / 8];

	memset(p, 0, sizeof(*p));
	if (to - from > ring_size(r) || (from & 7) || (to & 7)) {
		p->bad++;
		return;
	}
	while (off < to) {
		struct perf_event_header h;

		ring_copy(r, off, &h, sizeof(h));
		if (h.size < sizeof(h) || (h.size & 7) || h.size > to - off) {
			p->bad++;
			return;
		}
		if (h.type == PERF_RECORD_LOST) {
			p->lost_records++;
			if (sane && h.size != LOST_SIZE)
				p->bad++;
		} else if (h.type == PERF_RECORD_SAMPLE) {
			p->samples++;
			if (sane && h.size != SANE_SIZE) {
				p->bad++;
			} else if (sane) {
				u32 pid, tid, rcpu;

				ring_copy(r, off, rec, sizeof(rec));
				pid = (u32)rec[2];
				tid = (u32)(rec[2] >> 32);
				rcpu = (u32)rec[5];
				if ((h.misc & PERF_RECORD_MISC_CPUMODE_MASK) !=
					    PERF_RECORD_MISC_KERNEL ||
				    rec[1] < PAGE_OFFSET || rec[4] != EVIL_ID ||
				    rcpu != cpu || !rec[6] || rec[3] < last_time ||
				    pid != task_tgid_nr(current) ||
				    tid != task_pid_nr(current))
					p->bad_fields++;
				last_time = rec[3];
			}
		} else {
			p->bad++;
		}
		off += h.size;
	}
}

/* ------------------------------------------------------------------------
 * The state page
 */

static void state_sane(struct evil *e, struct pvpmu_state *s, unsigned int cpu)
{
	s->version = PVPMU_IF_VERSION;
	s->flags = 0;
	s->sample_type = SANE_TYPE;
	s->read_format = 0;
	s->sample_id_all = 0;
	s->period = NSEC_PER_SEC / max_t(u32, e->max_freq, 1);
	s->id = EVIL_ID;
	s->stream_id = EVIL_ID;
	s->cpu = cpu;
	s->pid_filter = 0;
	s->clock_offset = 0;
	s->current_task_gpa = slow_virt_to_phys(per_cpu_ptr(&PVPMU_CURRENT_TASK, cpu));
	s->page_offset = PAGE_OFFSET;
	s->task_pid_off = offsetof(struct task_struct, pid);
	s->task_tgid_off = offsetof(struct task_struct, tgid);
	s->throttled = 0;
	s->kimage_virt = __START_KERNEL_map;
	s->kimage_phys = phys_base;
}

/* A new event generation, published with release after the fields. */
static void activate(struct evil *e, struct pvpmu_state *s)
{
	WRITE_ONCE(s->gen, ++e->gen);
	/* Pairs with the host's acquire load of active (StatePage::active). */
	smp_store_release(&s->active, 1);
}

static void deactivate(struct pvpmu_state *s)
{
	WRITE_ONCE(s->active, 0);
}

/* ------------------------------------------------------------------------
 * Phase R: the register interface
 */

static bool in_canary(struct evil *e, u64 gpa)
{
	unsigned int i;

	for (i = 0; i < NR_CANARY; i++)
		if ((gpa & PAGE_MASK) == e->canary_pa[i])
			return true;
	return false;
}

/*
 * A page GPA the host must refuse. As a page list GPA it is used only if
 * the list cannot be read from RAM that is not ours: it starts outside RAM
 * (nothing is read), or in a canary (every word of which is far outside
 * RAM, so every entry is refused).
 */
static void add_bad(struct evil *e, u64 gpa, const char *name)
{
	/* An aligned address is hostile only if it is outside RAM. */
	if (!(gpa & ~PAGE_MASK) && !outside_ram(e, gpa))
		return;
	if (e->nr_bad < MAX_BAD) {
		e->bad[e->nr_bad] = gpa;
		e->bad_name[e->nr_bad] = name;
		e->bad_list_ok[e->nr_bad++] = outside_ram(e, gpa & PAGE_MASK) ||
					      in_canary(e, gpa);
	}
}

static void build_bad(struct evil *e)
{
	add_bad(e, e->ram_end, "first page past RAM");
	add_bad(e, e->ram_end + 7 * PAGE_SIZE, "past RAM + 7 pages");
	add_bad(e, e->low_end, "first page past low RAM");
	add_bad(e, e->ram_end - 0x800, "unaligned, straddles the end of RAM");
	add_bad(e, 0xc0000000ULL, "MMIO hole start");
	add_bad(e, base, "the pvpmu registers");
	add_bad(e, base + PVPMU_REGION_SIZE, "the page after the device");
	add_bad(e, 0xfec00000ULL, "IO-APIC");
	add_bad(e, 0xfee00000ULL, "local APIC");
	add_bad(e, 0xfffff000ULL, "last page below 4 GiB");
	add_bad(e, 1ULL << 40, "1 TiB");
	add_bad(e, 0x000ffffffffff000ULL, "highest 52-bit page");
	add_bad(e, 1ULL << 52, "2^52");
	add_bad(e, 1ULL << 63, "2^63");
	add_bad(e, U64_MAX & PAGE_MASK, "last page of u64 (wraps on +4096)");
	add_bad(e, U64_MAX - 7, "u64::MAX - 7");
	add_bad(e, U64_MAX, "u64::MAX");
	add_bad(e, e->canary_pa[0] + 8, "unaligned, inside a canary");
	add_bad(e, e->canary_pa[1] + 0x800, "half a page into a canary");
	add_bad(e, e->canary_pa[2] + 1, "odd, inside a canary");
	add_bad(e, base + 4, "unaligned, in the device");
}

/* Fill e->list with n canary GPAs (n <= NR_CANARY), then `bad` at `at`. */
static void list_canaries(struct evil *e, unsigned int n, int at, u64 bad)
{
	unsigned int i;

	for (i = 0; i < n; i++)
		e->list[i] = e->canary_pa[i % NR_CANARY];
	if (at >= 0)
		e->list[at] = bad;
}

static void attack_widths(struct evil *e, unsigned int b)
{
	void __iomem *bk = e->regs + PVPMU_BANK(b);
	static const unsigned int widths[] = { 1, 2, 8 };
	unsigned int i;
	u64 before, after;

	/* A known STATUS to compare with: an unknown command. */
	expect(e, b, "unknown command (reference)", 0xdead, 0, 0, 0, W(ENOSYS), NULL);
	for (i = 0; i < ARRAY_SIZE(widths); i++) {
		before = rd_reg(e, PVPMU_REG_ERR_COMMANDS);
		switch (widths[i]) {
		case 1:
			writeb(PVPMU_CMD_START, bk + PVPMU_B_CMD);
			break;
		case 2:
			writew(PVPMU_CMD_START, bk + PVPMU_B_CMD);
			break;
		default:
			writeq(PVPMU_CMD_START, bk + PVPMU_B_CMD);
			break;
		}
		after = rd_reg(e, PVPMU_REG_ERR_COMMANDS);
		atomic_long_inc(&e->commands);
		if (after == before + 1) {
			atomic_long_inc(&e->rejected);
			e->wrong_width++;
		} else {
			fail(e, "bank %u: %u-byte CMD write moved ERR_COMMANDS by %lld, want 1",
			     b, widths[i], (long long)(after - before));
		}
		if (readl(bk + PVPMU_B_STATUS) != PVPMU_ST_ENOSYS)
			fail(e, "bank %u: a %u-byte CMD write ran a command", b, widths[i]);
	}
	/* Bytes of CMD at other offsets are not CMD: ignored, not counted. */
	before = rd_reg(e, PVPMU_REG_ERR_COMMANDS);
	writeb(PVPMU_CMD_START, bk + PVPMU_B_CMD + 1);
	writew(PVPMU_CMD_START, bk + PVPMU_B_CMD + 2);
	writeb(PVPMU_CMD_START, bk + PVPMU_B_CMD + 3);
	if (readl(bk + PVPMU_B_STATUS) != PVPMU_ST_ENOSYS)
		fail(e, "bank %u: a write inside CMD at offset 1..3 ran a command", b);
	if (rd_reg(e, PVPMU_REG_ERR_COMMANDS) != before)
		fail(e, "bank %u: writes at CMD+1..3 were counted as commands", b);
	/* Narrow reads read as 0. */
	if (readb(bk + PVPMU_B_STATUS) || readw(bk + PVPMU_B_STATUS))
		fail(e, "bank %u: a 1/2-byte STATUS read is not 0", b);
	/* ARG is 64-bit only: narrower writes are ignored. */
	writeq(0x1111222233334444ULL, bk + PVPMU_B_ARG0);
	writel(0xdeadbeef, bk + PVPMU_B_ARG0);
	writel(0xdeadbeef, bk + PVPMU_B_ARG0 + 4);
	writew(0xdead, bk + PVPMU_B_ARG0 + 2);
	writeb(0xde, bk + PVPMU_B_ARG0 + 7);
	if (readq(bk + PVPMU_B_ARG0) != 0x1111222233334444ULL)
		fail(e, "bank %u: a narrow ARG0 write changed it (%#llx)", b,
		     readq(bk + PVPMU_B_ARG0));
	/* STATUS and RET0 are read-only; offsets 0x28..0x3f do not exist. */
	writel(PVPMU_ST_OK, bk + PVPMU_B_STATUS);
	writeq(U64_MAX, bk + PVPMU_B_RET0);
	if (readl(bk + PVPMU_B_STATUS) != PVPMU_ST_ENOSYS || readq(bk + PVPMU_B_RET0))
		fail(e, "bank %u: STATUS or RET0 took a write", b);
	for (i = 0x28; i < 0x40; i += 8) {
		writeq(U64_MAX, bk + i);
		writel(U32_MAX, bk + i + 4);
		if (readq(bk + i) || readl(bk + i + 4))
			fail(e, "bank %u: unknown offset %#x does not read as 0", b, i);
	}
}

/* Attacks that need no declared pages; the bank is idle before and after. */
static void attack_bank_basic(struct evil *e, unsigned int b)
{
	static const u32 unknown[] = { 0, PVPMU_CMD_FLUSH + 1, 0xff, 0xdead,
				       0x80000001, U32_MAX };
	static const u64 counts_ring[] = { 0, 3, 257, 512, 1ULL << 40, 1ULL << 63, U64_MAX };
	static const u64 counts_aux[] = { 0, 3, 4097, 8192, 1ULL << 40, 1ULL << 61, U64_MAX };
	static const u64 ids[] = { 0, U64_MAX, 1ULL << 63, 0xdeadbeef00ULL };
	unsigned int i, j;
	u32 st;

	for (i = 0; i < ARRAY_SIZE(unknown); i++)
		expect(e, b, "unknown command", unknown[i], 1, 2, 3, W(ENOSYS), NULL);
	attack_widths(e, b);

	expect(e, b, "START without setup", PVPMU_CMD_START, 0, 0, 0, W(ENOENT), NULL);
	expect(e, b, "STOP without START", PVPMU_CMD_STOP, 0, 0, 0, W(OK), NULL);
	/* FLUSH takes no arguments and is harmless at any time, also unset up. */
	expect(e, b, "FLUSH with junk arguments, nothing set up", PVPMU_CMD_FLUSH,
	       U64_MAX, 1ULL << 63, 0xdead, W(OK), NULL);
	expect(e, b, "RESET", PVPMU_CMD_RESET, 0, 0, 0, W(OK), NULL);
	expect(e, b, "RESET again", PVPMU_CMD_RESET, 0, 0, 0, W(OK), NULL);
	for (i = 0; i < ARRAY_SIZE(ids); i++)
		expect(e, b, "AUX_CLEAR of an unknown id", PVPMU_CMD_AUX_CLEAR, ids[i],
		       0, 0, W(ENOENT), NULL);

	/* SET_STATE at hostile addresses. */
	for (i = 0; i < e->nr_bad; i++)
		expect(e, b, e->bad_name[i], PVPMU_CMD_SET_STATE, e->bad[i], 0, 0,
		       W(EFAULT), NULL);
	/* GPA 0 is RAM to the host (nothing is written at SET_STATE). */
	st = expect(e, b, "SET_STATE at GPA 0", PVPMU_CMD_SET_STATE, 0, 0, 0,
		    W(OK) | W(EFAULT), NULL);
	if (st == PVPMU_ST_OK)
		expect(e, b, "START with a state page but no ring", PVPMU_CMD_START,
		       0, 0, 0, W(ENOENT), NULL);
	expect(e, b, "RESET", PVPMU_CMD_RESET, 0, 0, 0, W(OK), NULL);

	/* SET_RING: bad counts (the list itself names canaries). */
	list_canaries(e, NR_CANARY, -1, 0);
	for (i = 0; i < ARRAY_SIZE(counts_ring); i++)
		expect(e, b, "SET_RING with a bad count", PVPMU_CMD_SET_RING, e->list_pa,
		       counts_ring[i], 0, W(EINVAL), NULL);
	/* SET_RING: the list itself at hostile addresses. */
	for (i = 0; i < e->nr_bad; i++)
		if (e->bad_list_ok[i])
			expect(e, b, e->bad_name[i], PVPMU_CMD_SET_RING, e->bad[i],
			       1, 0, W(EFAULT), NULL);
	expect(e, b, "ring list straddles the end of RAM", PVPMU_CMD_SET_RING,
	       e->ram_end - 8, 1, 0, W(EFAULT), NULL);
	expect(e, b, "ring list straddles the end of RAM (16 pages)", PVPMU_CMD_SET_RING,
	       e->ram_end - 64, 16, 0, W(EFAULT), NULL);
	/* SET_RING: canaries and one bad entry (control or data). */
	for (i = 0; i < e->nr_bad; i++) {
		static const int at[] = { 0, 2, 4 };

		for (j = 0; j < ARRAY_SIZE(at); j++) {
			list_canaries(e, 5, at[j], e->bad[i]);
			expect(e, b, e->bad_name[i], PVPMU_CMD_SET_RING, e->list_pa, 4, 0,
			       W(EFAULT), NULL);
		}
	}
	list_canaries(e, 5, 4, e->canary_pa[1]);
	expect(e, b, "ring names a page twice", PVPMU_CMD_SET_RING, e->list_pa, 4, 0,
	       W(EFAULT), NULL);
	list_canaries(e, 3, 2, e->canary_pa[0]);
	expect(e, b, "ring control page is also a data page", PVPMU_CMD_SET_RING,
	       e->list_pa, 2, 0, W(EFAULT), NULL);
	/* 256 data pages: 64 canaries, the rest outside RAM. */
	list_canaries(e, NR_CANARY, -1, 0);
	for (i = NR_CANARY; i < 257; i++)
		e->list[i] = e->ram_end + (u64)(i - NR_CANARY) * PAGE_SIZE;
	expect(e, b, "256-page ring mostly outside RAM", PVPMU_CMD_SET_RING, e->list_pa,
	       256, 0, W(EFAULT), NULL);

	/* AUX_SET: bad counts. */
	list_canaries(e, NR_CANARY, -1, 0);
	for (i = 0; i < ARRAY_SIZE(counts_aux); i++)
		expect(e, b, "AUX_SET with a bad count", PVPMU_CMD_AUX_SET, e->list_pa,
		       counts_aux[i], 0, W(EINVAL), NULL);
	/* AUX_SET: the list at hostile addresses. */
	for (i = 0; i < e->nr_bad; i++)
		if (e->bad_list_ok[i])
			expect(e, b, e->bad_name[i], PVPMU_CMD_AUX_SET, e->bad[i],
			       1, 0, W(EFAULT), NULL);
	expect(e, b, "AUX list straddles the end of RAM", PVPMU_CMD_AUX_SET,
	       e->ram_end - 8, 4, 1, W(EFAULT), NULL);
	/* AUX_SET: 64 canaries and one bad entry, first, middle or last. */
	for (i = 0; i < e->nr_bad; i++) {
		static const int at[] = { 0, 31, 63 };

		for (j = 0; j < ARRAY_SIZE(at); j++) {
			list_canaries(e, NR_CANARY, at[j], e->bad[i]);
			expect(e, b, e->bad_name[i], PVPMU_CMD_AUX_SET, e->list_pa,
			       NR_CANARY, j == 2 ? U64_MAX : 0, W(EFAULT), NULL);
		}
	}
	list_canaries(e, NR_CANARY, 40, e->canary_pa[7]);
	expect(e, b, "AUX list names a page twice", PVPMU_CMD_AUX_SET, e->list_pa,
	       NR_CANARY, 0, W(EFAULT), NULL);
	/* 4096 pages (a 32 KiB list): 64 canaries, then pages outside RAM. */
	list_canaries(e, NR_CANARY, -1, 0);
	for (i = NR_CANARY; i < LIST_ENTRIES; i++)
		e->list[i] = e->ram_end + (u64)(i - NR_CANARY) * PAGE_SIZE;
	expect(e, b, "4096-page AUX buffer mostly outside RAM", PVPMU_CMD_AUX_SET,
	       e->list_pa, LIST_ENTRIES, 0, W(EFAULT), NULL);
	/* ... and one of the 64 canaries, each named 64 times. */
	for (i = 0; i < LIST_ENTRIES; i++)
		e->list[i] = e->canary_pa[i % NR_CANARY];
	expect(e, b, "4096-page AUX buffer of 64 canaries repeated", PVPMU_CMD_AUX_SET,
	       e->list_pa, LIST_ENTRIES, 0, W(EFAULT), NULL);
}

/* Attacks against pages other banks (and this one) declared. */
static void attack_bank_overlap(struct evil *e, unsigned int b)
{
	unsigned int o = (b + 1) % e->nr_res;
	u64 st_b = pa(e->bst[b]), rc_b = pa(e->brc[b]), rd_b = pa(e->brd[b]);
	u64 st_o = pa(e->bst[o]), rc_o = pa(e->brc[o]), rd_o = pa(e->brd[o]);

	if (o != b) {
		expect(e, b, "SET_STATE at another bank's state page", PVPMU_CMD_SET_STATE,
		       st_o, 0, 0, W(EFAULT), NULL);
		expect(e, b, "SET_STATE at another bank's ring control page",
		       PVPMU_CMD_SET_STATE, rc_o, 0, 0, W(EFAULT), NULL);
		e->list[0] = rc_b;
		e->list[1] = rd_o;
		expect(e, b, "ring with another bank's data page", PVPMU_CMD_SET_RING,
		       e->list_pa, 1, 0, W(EFAULT), NULL);
		e->list[0] = st_o;
		e->list[1] = rd_b;
		expect(e, b, "ring with another bank's state page", PVPMU_CMD_SET_RING,
		       e->list_pa, 1, 0, W(EFAULT), NULL);
		e->list[0] = rd_o;
		expect(e, b, "AUX buffer on another bank's ring", PVPMU_CMD_AUX_SET,
		       e->list_pa, 1, 0, W(EFAULT), NULL);
	}
	expect(e, b, "SET_STATE at this bank's own ring page", PVPMU_CMD_SET_STATE,
	       rd_b, 0, 0, W(EFAULT), NULL);
	e->list[0] = rc_b;
	e->list[1] = st_b;
	expect(e, b, "ring with this bank's own state page", PVPMU_CMD_SET_RING,
	       e->list_pa, 1, 0, W(EFAULT), NULL);
	e->list[0] = st_b;
	expect(e, b, "AUX buffer on this bank's state page", PVPMU_CMD_AUX_SET,
	       e->list_pa, 1, 0, W(EFAULT), NULL);
	list_canaries(e, 4, 2, rc_o);
	expect(e, b, "AUX buffer of canaries and a declared ring page", PVPMU_CMD_AUX_SET,
	       e->list_pa, 4, 0, W(EFAULT), NULL);
	list_canaries(e, 5, 3, st_o);
	expect(e, b, "ring of canaries and a declared state page", PVPMU_CMD_SET_RING,
	       e->list_pa, 4, 0, W(EFAULT), NULL);

	/* Reconfiguring while running. The state page says active = 0, so
	 * the host takes no samples for this bank.
	 */
	expect(e, b, "START", PVPMU_CMD_START, 0, 0, 0, W(OK), NULL);
	e->list[0] = rc_b;
	e->list[1] = rd_b;
	expect(e, b, "SET_RING while running", PVPMU_CMD_SET_RING, e->list_pa, 1, 0,
	       W(EBUSY), NULL);
	expect(e, b, "SET_STATE while running", PVPMU_CMD_SET_STATE, st_b, 0, 0,
	       W(EBUSY), NULL);
	list_canaries(e, 5, -1, 0);
	expect(e, b, "SET_RING of canaries while running", PVPMU_CMD_SET_RING,
	       e->list_pa, 4, 0, W(EBUSY), NULL);
	expect(e, b, "START again", PVPMU_CMD_START, 0, 0, 0, W(OK), NULL);
	expect(e, b, "STOP", PVPMU_CMD_STOP, 0, 0, 0, W(OK), NULL);
	expect(e, b, "STOP again", PVPMU_CMD_STOP, 0, 0, 0, W(OK), NULL);
}

static void phase_registers(struct evil *e)
{
	u64 c0[4], c1[4], c2[4], id;
	unsigned int b, i;
	long rp, rc;
	unsigned long ww;

	rd_err(e, c0);
	atomic_long_set(&e->rej_pages, 0);
	atomic_long_set(&e->rej_cmds, 0);
	ww = e->wrong_width;

	for (b = 0; b < e->nr_vcpus; b++)
		attack_bank_basic(e, b);

	/* Declared pages on the first banks, then overlaps. */
	for (b = 0; b < e->nr_res; b++) {
		expect(e, b, "SET_STATE (own page)", PVPMU_CMD_SET_STATE, pa(e->bst[b]),
		       0, 0, W(OK), NULL);
		e->list[0] = pa(e->brc[b]);
		e->list[1] = pa(e->brd[b]);
		expect(e, b, "SET_RING (own pages)", PVPMU_CMD_SET_RING, e->list_pa, 1, 0,
		       W(OK), NULL);
		/* SET_RING zeroed the data page; from now on nobody may write it. */
		fill_pattern(e->brd[b], 1000 + b);
	}
	for (b = 0; b < e->nr_res; b++)
		attack_bank_overlap(e, b);

	/* Rejected commands declared nothing: the 64 canaries are all free. */
	list_canaries(e, NR_CANARY, -1, 0);
	if (expect(e, 0, "AUX_SET of the 64 canaries (nothing is written)",
		   PVPMU_CMD_AUX_SET, e->list_pa, NR_CANARY, 0, W(OK), &id) == PVPMU_ST_OK) {
		if (!id)
			fail(e, "AUX_SET returned buffer id 0");
		expect(e, 0, "AUX_CLEAR", PVPMU_CMD_AUX_CLEAR, id, 0, 0, W(OK), NULL);
		expect(e, 0, "AUX_CLEAR again", PVPMU_CMD_AUX_CLEAR, id, 0, 0, W(ENOENT),
		       NULL);
	}

	for (b = 0; b < e->nr_res; b++) {
		expect(e, b, "RESET", PVPMU_CMD_RESET, 0, 0, 0, W(OK), NULL);
		expect(e, b, "RESET again", PVPMU_CMD_RESET, 0, 0, 0, W(OK), NULL);
		if (!check_pattern(e->brd[b], 1000 + b))
			fail(e, "bank %u: a data page of an idle ring changed (a rejected command wrote it?)",
			     b);
	}
	/* RESET freed them for another bank. */
	if (e->nr_res > 1) {
		expect(e, 1, "SET_STATE at bank 0's former state page", PVPMU_CMD_SET_STATE,
		       pa(e->bst[0]), 0, 0, W(OK), NULL);
		expect(e, 1, "RESET", PVPMU_CMD_RESET, 0, 0, 0, W(OK), NULL);
	}

	/* Every rejection is counted once: EFAULT in ERR_PAGES, the rest and
	 * wrong-width CMD writes in ERR_COMMANDS.
	 */
	rd_err(e, c1);
	rp = atomic_long_read(&e->rej_pages);
	rc = atomic_long_read(&e->rej_cmds) + (e->wrong_width - ww);
	if (c1[1] - c0[1] != rp)
		fail(e, "ERR_PAGES moved by %llu for %ld EFAULT rejections",
		     c1[1] - c0[1], rp);
	if (c1[0] - c0[0] != rc)
		fail(e, "ERR_COMMANDS moved by %llu for %ld other rejections",
		     c1[0] - c0[0], rc);

	/* Banks that do not exist: read as 0, writes ignored. */
	for (b = e->nr_vcpus; b < PVPMU_MAX_BANKS; b++) {
		void __iomem *bk = e->regs + PVPMU_BANK(b);

		writeq(pa(e->sst), bk + PVPMU_B_ARG0);
		writel(PVPMU_CMD_SET_STATE, bk + PVPMU_B_CMD);
		writel(PVPMU_CMD_START, bk + PVPMU_B_CMD);
		writeb(PVPMU_CMD_RESET, bk + PVPMU_B_CMD);
		if (readl(bk + PVPMU_B_STATUS) || readq(bk + PVPMU_B_ARG0) ||
		    readq(bk + PVPMU_B_RET0))
			fail(e, "bank %u (>= NR_VCPUS) does not read as 0", b);
	}
	/* Every offset at every width; writes to the global registers. */
	for (i = 0; i < PVPMU_REGION_SIZE; i += 4)
		(void)readl(e->regs + i);
	for (i = 0; i < PVPMU_REGION_SIZE; i += 8)
		(void)readq(e->regs + i);
	for (i = 0; i < 0x100; i++)
		(void)readb(e->regs + i);
	for (i = 0; i < 0x100; i += 2)
		(void)readw(e->regs + i);
	for (i = 0; i < 0x100; i += 8)
		writeq(0, e->regs + i);
	for (i = 0; i < 0x100; i += 4)
		writel(U32_MAX, e->regs + i);
	writeb(0, e->regs + PVPMU_REG_MAGIC);
	/* An 8-byte access across the end of the region (KVM splits it). */
	(void)readq(e->regs + PVPMU_REGION_SIZE - 4);
	writeq(U64_MAX, e->regs + PVPMU_REGION_SIZE - 4);
	if (readl(e->regs + PVPMU_REG_MAGIC) != PVPMU_MAGIC ||
	    readl(e->regs + PVPMU_REG_VERSION) != PVPMU_IF_VERSION ||
	    readl(e->regs + PVPMU_REG_NR_VCPUS) != e->nr_vcpus)
		fail(e, "identification registers changed after writes to them");
	if (readb(e->regs + PVPMU_REG_MAGIC) || readw(e->regs + PVPMU_REG_MAGIC) ||
	    readq(e->regs + PVPMU_REG_MAGIC))
		fail(e, "MAGIC read with a width other than 4 is not 0");
	rd_err(e, c2);
	for (i = 0; i < 4; i++)
		if (c2[i] < c1[i])
			fail(e, "error register %u went down (%llu -> %llu) after writes to it",
			     i, c1[i], c2[i]);
	detail(e, " R:commands=%ld,err_commands+%llu,err_pages+%llu,absent_banks_err_commands+%llu",
	       atomic_long_read(&e->commands), c1[0] - c0[0], c1[1] - c0[1],
	       c2[0] - c1[0]);
}

/* ------------------------------------------------------------------------
 * Phase S: nonsense in the state page while the host samples
 */

static u64 reg_delta(struct evil *e, unsigned int reg, u64 since)
{
	return rd_reg(e, reg) - since;
}

/*
 * Spin `ms`, then on until the SAMPLES register moved past `since` (at most
 * 3 s more): under a loaded nested KVM the kick backend delivers as little
 * as a fifth of --pmu-freq. Returns the samples taken.
 */
static u64 spin_samples(struct evil *e, unsigned int ms, u64 since)
{
	unsigned int i;

	spin_ms(e, ms);
	for (i = 0; i < 300 && rd_reg(e, PVPMU_REG_SAMPLES) == since; i++)
		spin_ms(e, 10);
	return reg_delta(e, PVPMU_REG_SAMPLES, since);
}

/* Samples written plus samples lost to a full ring: what the sampler did. */
static u64 sampler_output(struct evil *e)
{
	return rd_reg(e, PVPMU_REG_SAMPLES) + rd_reg(e, PVPMU_REG_LOST);
}

/* Like spin_samples, but a sample lost to a full ring counts too. */
static u64 spin_output(struct evil *e, unsigned int ms, u64 since)
{
	unsigned int i;

	spin_ms(e, ms);
	for (i = 0; i < 300 && sampler_output(e) == since; i++)
		spin_ms(e, 10);
	return sampler_output(e) - since;
}

static void phase_state(struct evil *e, struct pvpmu_state *s)
{
	static const u64 bad_types[] = {
		SANE_TYPE | PERF_SAMPLE_RAW,
		SANE_TYPE | PERF_SAMPLE_READ,
		SANE_TYPE | PERF_SAMPLE_BRANCH_STACK,
		SANE_TYPE | PERF_SAMPLE_REGS_USER | PERF_SAMPLE_STACK_USER,
		SANE_TYPE | (1ULL << 63),
		U64_MAX,
	};
	static const u64 churn_types[] = {
		SANE_TYPE, SANE_TYPE | PERF_SAMPLE_CALLCHAIN, PERF_SAMPLE_IP, 0,
		PERF_SAMPLE_IDENTIFIER | PERF_SAMPLE_IP | PERF_SAMPLE_TIME,
		SANE_TYPE | PERF_SAMPLE_ADDR | PERF_SAMPLE_STREAM_ID,
		SANE_TYPE | PERF_SAMPLE_RAW, U64_MAX, 1ULL << 40,
	};
	u64 *task = page_address(e->fake_task);
	u64 tp = PAGE_OFFSET + e->canary_pa[7];
	u64 bad_task_gpa[] = {
		e->ram_end, base, U64_MAX - 7, e->ram_end - 4, e->canary_pa[5],
		0xfee00000ULL, U64_MAX,
	};
	u64 st0, smp0, n, end;
	unsigned int i, q = max(phase_ms / 6, 10u);

	/* S1: a sane event: the host must sample at all. */
	state_sane(e, s, e->cpu);
	smp0 = rd_reg(e, PVPMU_REG_SAMPLES);
	activate(e, s);
	n = spin_samples(e, phase_ms, smp0);
	detail(e, " S:sane_samples=%llu", n);
	if (!n)
		fail(e, "S: the host took no samples for a sane event in %u ms",
		     phase_ms);

	st0 = rd_reg(e, PVPMU_REG_ERR_STATE);
	/* S2: sample_type bits the host cannot produce. */
	for (i = 0; i < ARRAY_SIZE(bad_types); i++) {
		s->sample_type = bad_types[i];
		activate(e, s);
		spin_ms(e, q);
	}
	n = reg_delta(e, PVPMU_REG_ERR_STATE, st0);
	detail(e, ",bad_type_err_state=%llu", n);
	if (!n)
		fail(e, "S: unsupported sample_type did not count ERR_STATE");
	state_sane(e, s, e->cpu);

	/* S3: periods 0 and u64::MAX, freq mode 0 and u64::MAX. */
	s->period = 0;
	activate(e, s);
	spin_ms(e, q);
	s->period = U64_MAX;
	activate(e, s);
	spin_ms(e, q);
	/* The sampler's cadence for a u64::MAX period is ~584 years: it is
	 * forgotten when the event goes inactive (10 ms poll).
	 */
	deactivate(s);
	spin_ms(e, 40);
	s->flags = PVPMU_SF_FREQ;
	s->period = 0;
	activate(e, s);
	spin_ms(e, q);
	deactivate(s);
	spin_ms(e, 40);
	s->period = U64_MAX;
	activate(e, s);
	spin_ms(e, q);
	state_sane(e, s, e->cpu);
	deactivate(s);
	spin_ms(e, 40);
	/* Nobody consumes this ring during S, and the host timer samples at
	 * --pmu-freq whatever the period says, so by now the ring may be
	 * full: a sample lost for lack of room proves the sampler alive as
	 * well as one written (phase T checks that writing resumes).
	 */
	smp0 = sampler_output(e);
	activate(e, s);
	n = spin_output(e, q * 2, smp0);
	detail(e, ",after_periods=%llu", n);
	if (!n)
		fail(e, "S: no samples, not even lost ones, after the hostile periods (sampler stuck?)");

	/* S4: current_task_gpa outside RAM, at MMIO, at a canary, wrapping. */
	st0 = rd_reg(e, PVPMU_REG_ERR_STATE);
	for (i = 0; i < ARRAY_SIZE(bad_task_gpa); i++) {
		s->current_task_gpa = bad_task_gpa[i];
		activate(e, s);
		spin_ms(e, q / 2);
	}
	n = reg_delta(e, PVPMU_REG_ERR_STATE, st0);
	detail(e, ",task_gpa_err_state=%llu", n);
	if (!n)
		fail(e, "S: hostile current_task_gpa did not count ERR_STATE");
	state_sane(e, s, e->cpu);

	/* S5: a task pointer (in our own page) that lands at a canary, below
	 * page_offset, past RAM, on the device, or overflows the kimage math.
	 */
	st0 = rd_reg(e, PVPMU_REG_ERR_STATE);
	s->current_task_gpa = pa(e->fake_task);
	task[0] = tp;
	activate(e, s);
	spin_ms(e, q / 2);			/* reads a canary: allowed */
	s->page_offset = tp + PAGE_SIZE;	/* underflow */
	activate(e, s);
	spin_ms(e, q / 2);
	s->page_offset = tp - e->ram_end;	/* past RAM */
	activate(e, s);
	spin_ms(e, q / 2);
	s->page_offset = PAGE_OFFSET;
	s->kimage_virt = 1;
	s->kimage_phys = U64_MAX;		/* overflow */
	activate(e, s);
	spin_ms(e, q / 2);
	s->kimage_virt = tp;
	s->kimage_phys = base;			/* the device: not RAM */
	activate(e, s);
	spin_ms(e, q / 2);
	s->kimage_phys = e->canary_pa[8];	/* reads a canary */
	activate(e, s);
	spin_ms(e, q / 2);
	s->kimage_virt = __START_KERNEL_map;
	s->kimage_phys = phys_base;
	task[0] = 0;				/* NULL task */
	activate(e, s);
	spin_ms(e, q / 2);
	/* S6: task field offsets beyond anything sane. */
	task[0] = tp;
	s->task_pid_off = U32_MAX;
	activate(e, s);
	spin_ms(e, q / 2);
	s->task_pid_off = 0;
	s->task_tgid_off = 0x10001;
	activate(e, s);
	spin_ms(e, q / 2);
	s->task_tgid_off = 0x10000;
	activate(e, s);
	spin_ms(e, q / 2);
	n = reg_delta(e, PVPMU_REG_ERR_STATE, st0);
	detail(e, ",task_ptr_err_state=%llu", n);
	if (!n)
		fail(e, "S: hostile task pointers and offsets did not count ERR_STATE");
	state_sane(e, s, e->cpu);

	/* S7: odd flags and fields the host must just carry or ignore. */
	s->flags = PVPMU_SF_EXCLUDE_USER | PVPMU_SF_EXCLUDE_KERNEL;
	activate(e, s);
	spin_ms(e, q / 2);
	s->flags = U32_MAX;
	activate(e, s);
	spin_ms(e, q / 2);
	s->flags = 0;
	s->throttled = 1;
	activate(e, s);
	spin_ms(e, q / 2);
	s->throttled = 0;
	s->version = 0xdead;
	s->cpu = U32_MAX;
	s->pid_filter = U32_MAX;
	s->sample_id_all = 0xff;
	s->read_format = U64_MAX;
	s->id = U64_MAX;
	s->clock_offset = U64_MAX;
	activate(e, s);
	WRITE_ONCE(s->active, U32_MAX);
	spin_ms(e, q);
	/* The host's half, scribbled over. */
	s->irq_seq = U64_MAX;
	s->samples = U64_MAX;
	s->lost = U64_MAX;
	s->aux_done_seq = U64_MAX;
	s->aux_written = U64_MAX;
	spin_ms(e, q / 2);

	/* S8: churn: every ~200 us a random mix of sane and hostile fields. */
	state_sane(e, s, e->cpu);
	activate(e, s);
	end = ktime_get_ns() + (u64)phase_ms * NSEC_PER_MSEC;
	while (ktime_get_ns() < end) {
		u64 r = rnd(e);

		s->sample_type = churn_types[r % ARRAY_SIZE(churn_types)];
		s->sample_id_all = (r >> 8) & 1;
		s->flags = (r >> 9) & 7;
		s->throttled = ((r >> 12) & 15) == 0;
		s->period = (r >> 16) & 1 ? (r >> 20) & 0xfffff : U64_MAX >> (r & 63);
		s->current_task_gpa = (r >> 40) & 1 ?
			bad_task_gpa[(r >> 41) % ARRAY_SIZE(bad_task_gpa)] :
			slow_virt_to_phys(per_cpu_ptr(&PVPMU_CURRENT_TASK, e->cpu));
		s->task_pid_off = (r >> 50) & 1 ? (u32)r : offsetof(struct task_struct, pid);
		if ((r >> 52) & 1)
			WRITE_ONCE(s->gen, ++e->gen);
		/* Release, as in activate(). */
		smp_store_release(&s->active, ((r >> 53) & 7) != 0);
		udelay(200);
	}
	deactivate(s);
	state_sane(e, s, e->cpu);
	spin_ms(e, 20);
}

/* ------------------------------------------------------------------------
 * Phase T: hostile data_tail values while the ring is full
 */

static void phase_tails(struct evil *e, struct pvpmu_state *s)
{
	struct evil_ring *r = &e->tring;
	struct perf_event_mmap_page *ctrl = ring_ctrl(r);
	struct parse_result p;
	u64 head, head2, lost0, lost1, tails0, tails, smp0;
	u64 hostile[7];
	unsigned int i, q = max(phase_ms / 4, 10u);

	expect(e, e->cpu, "STOP", PVPMU_CMD_STOP, 0, 0, 0, W(OK), NULL);
	if (expect(e, e->cpu, "SET_RING (one data page)", PVPMU_CMD_SET_RING,
		   ring_list(e, r), r->nr, 0, W(OK), NULL) != PVPMU_ST_OK)
		return;
	expect(e, e->cpu, "START", PVPMU_CMD_START, 0, 0, 0, W(OK), NULL);
	state_sane(e, s, e->cpu);
	lost0 = rd_reg(e, PVPMU_REG_LOST);
	activate(e, s);
	/* Nobody consumes: the 4 KiB ring fills in ~73 samples; wait until
	 * the host drops some (LOST is device-wide; only this bank samples).
	 */
	for (i = 0; i < 300 && rd_reg(e, PVPMU_REG_LOST) - lost0 < 3; i++)
		spin_ms(e, 10);
	/* Acquire: pairs with the host's release store of data_head. */
	head = smp_load_acquire(&ctrl->data_head);
	if (rd_reg(e, PVPMU_REG_LOST) - lost0 < 3)
		fail(e, "T: the ring did not fill in 3 s (head %llu)", head);
	ring_parse(e, r, 0, head, true, e->cpu, &p);
	if (p.bad || p.bad_fields || !p.samples)
		fail(e, "T: records before the tail attack do not parse (%lu samples, %lu bad, %lu bad fields)",
		     p.samples, p.bad, p.bad_fields);

	lost1 = rd_reg(e, PVPMU_REG_LOST);
	tails0 = rd_reg(e, PVPMU_REG_ERR_TAILS);
	hostile[0] = head + PAGE_SIZE;		/* ahead of head */
	hostile[1] = 3;				/* unaligned */
	hostile[2] = U64_MAX;
	hostile[3] = 1ULL << 40;		/* far ahead */
	hostile[4] = 8;				/* legal: 8 bytes read, no room */
	hostile[5] = 0;				/* backwards */
	hostile[6] = 4;				/* unaligned, backwards */
	for (i = 0; i < ARRAY_SIZE(hostile); i++) {
		WRITE_ONCE(ctrl->data_tail, hostile[i]);
		/* data_head is the host's; scribbling on it changes nothing. */
		WRITE_ONCE(ctrl->data_head, hostile[i] ^ 0x5a5a);
		spin_ms(e, q);
	}
	tails = reg_delta(e, PVPMU_REG_ERR_TAILS, tails0);
	detail(e, " T:ring_head=%llu,lost+%llu,err_tails+%llu", head,
	       reg_delta(e, PVPMU_REG_LOST, lost1), tails);
	if (!reg_delta(e, PVPMU_REG_LOST, lost1))
		fail(e, "T: the ring was full and nothing was lost (did the host take a hostile tail?)");
	if (!tails)
		fail(e, "T: the host ignored hostile data_tail values (LOST moved) but the ERR_TAILS register did not move");
	/* The unread records are intact. */
	ring_parse(e, r, 0, head, true, e->cpu, &p);
	if (p.bad || p.bad_fields || !p.samples)
		fail(e, "T: unread records changed under hostile tails (%lu bad, %lu bad fields)",
		     p.bad, p.bad_fields);

	/* A sane tail (everything read): the host resumes, LOST first. */
	smp0 = rd_reg(e, PVPMU_REG_SAMPLES);
	/* Release: our reads of the records happen before the host reuses them. */
	smp_store_release(&ctrl->data_tail, head);
	spin_samples(e, q * 2, smp0);
	head2 = smp_load_acquire(&ctrl->data_head);	/* as above */
	if (head2 <= head || head2 - head > ring_size(r)) {
		fail(e, "T: the host did not resume after a sane tail (head %llu -> %llu)",
		     head, head2);
	} else {
		struct perf_event_header h;

		ring_copy(r, head, &h, sizeof(h));
		ring_parse(e, r, head, head2, true, e->cpu, &p);
		if (h.type != PERF_RECORD_LOST || p.bad || p.bad_fields ||
		    !p.samples)
			fail(e, "T: after recovery: first record type %u, %lu samples, %lu bad, %lu bad fields",
			     h.type, p.samples, p.bad, p.bad_fields);
	}
	detail(e, ",resumed_samples=%llu", reg_delta(e, PVPMU_REG_SAMPLES, smp0));
	deactivate(s);
	spin_ms(e, 20);
}

/* ------------------------------------------------------------------------
 * Phase A: AUX sessions
 */

static void aux_fill(struct evil *e)
{
	unsigned int i;

	for (i = 0; i < AUX_PAGES; i++)
		memset(page_address(e->aux[i]), 0xaa, PAGE_SIZE);
}

static u8 aux_byte(struct evil *e, u64 off)
{
	return ((u8 *)page_address(e->aux[off >> PAGE_SHIFT]))[off & ~PAGE_MASK];
}

/* Bytes outside [head, head + room) (mod size) must still be 0xaa. */
static unsigned long aux_outside(struct evil *e, u64 head, u64 room)
{
	unsigned long bad = 0;
	u64 off, rel;

	for (off = 0; off < AUX_SIZE; off++) {
		rel = (off - head) & (AUX_SIZE - 1);
		if (rel >= room && aux_byte(e, off) != 0xaa)
			bad++;
	}
	return bad;
}

static u64 aux_post(struct pvpmu_state *s, u64 buf, u64 head, u64 room, u64 wakeup)
{
	u64 seq = s->aux_seq + 1;

	WRITE_ONCE(s->aux_buf, buf);
	WRITE_ONCE(s->aux_head, head);
	WRITE_ONCE(s->aux_room, room);
	WRITE_ONCE(s->aux_wakeup, wakeup);
	/* Pairs with the host's acquire load of aux_seq (StatePage::aux). */
	smp_store_release(&s->aux_seq, seq);
	return seq;
}

/* Make exits until the host ends session `seq` (or `ms` pass). */
static bool aux_wait_done(struct evil *e, struct pvpmu_state *s, u64 seq,
			  unsigned int ms)
{
	u64 end = ktime_get_ns() + (u64)ms * NSEC_PER_MSEC;

	while (ktime_get_ns() < end) {
		/* Acquire: the session's results were stored before it. */
		if (smp_load_acquire(&s->aux_done_seq) == seq)
			return true;
		poke(e);
	}
	return smp_load_acquire(&s->aux_done_seq) == seq;	/* as above */
}

static void pokes(struct evil *e, unsigned int n)
{
	while (n--)
		poke(e);
}

/* A session whose writes must stay inside [head, head + room). */
static void aux_bounded(struct evil *e, struct pvpmu_state *s, u64 id,
			const char *what, u64 head, u64 room, u64 wakeup)
{
	unsigned long outside;
	u64 seq, written;

	aux_fill(e);
	seq = aux_post(s, id, head, room, wakeup);
	if (!aux_wait_done(e, s, seq, 400)) {
		fail(e, "A: %s: the host did not end the session", what);
		return;
	}
	written = READ_ONCE(s->aux_written);
	outside = aux_outside(e, head, room);
	/* (A session may end empty: a record larger than the room ends it.) */
	if (written > room || outside)
		fail(e, "A: %s: aux_written %llu for room %llu, %lu bytes written outside the room",
		     what, written, room, outside);
}

static void phase_aux(struct evil *e, struct pvpmu_state *s)
{
	u64 *alist = page_address(e->alist);
	u64 id = 0, id2 = 0, st0, n, seq, bytes0 = rd_reg(e, PVPMU_REG_AUX_BYTES);
	unsigned int i;

	if (!(e->features & PVPMU_F_AUX)) {
		detail(e, " A:skipped(no AUX feature)");
		return;
	}
	/* The bank is running (from T), active = 0: only exits produce data. */
	deactivate(s);
	for (i = 0; i < AUX_PAGES; i++)
		alist[i] = pa(e->aux[i]);
	aux_fill(e);
	if (expect(e, e->cpu, "AUX_SET (own pages)", PVPMU_CMD_AUX_SET, pa(e->alist),
		   AUX_PAGES, 0, W(OK), &id) != PVPMU_ST_OK || !id) {
		fail(e, "A: cannot register an AUX buffer");
		return;
	}
	live_add(e, id);

	/* Sessions the host must refuse (ERR_STATE) without writing. */
	st0 = rd_reg(e, PVPMU_REG_ERR_STATE);
	aux_post(s, id + 1000, 0, PAGE_SIZE, 0);
	pokes(e, 20);
	aux_post(s, U64_MAX, 0, PAGE_SIZE, 0);
	pokes(e, 20);
	aux_post(s, id, 0, AUX_SIZE + 1, 0);
	pokes(e, 20);
	aux_post(s, id, 0, U64_MAX, 0);
	pokes(e, 20);
	aux_post(s, id, 0, AUX_SIZE, AUX_SIZE + PAGE_SIZE);
	pokes(e, 20);
	aux_post(s, id, U64_MAX, U64_MAX, U64_MAX);
	pokes(e, 20);
	n = reg_delta(e, PVPMU_REG_ERR_STATE, st0);
	if (n < 6)
		fail(e, "A: 6 hostile sessions counted ERR_STATE %llu times", n);
	if (aux_outside(e, 0, 0))
		fail(e, "A: the host wrote into the buffer for a refused session");
	detail(e, " A:refused_err_state=%llu", n);

	/* Sessions the host accepts; writes must stay inside the room. */
	aux_bounded(e, s, id, "room 256", 0, 256, 0);
	aux_bounded(e, s, id, "wakeup beyond the room", 0, 512, 2048);
	aux_bounded(e, s, id, "wrapping head", AUX_SIZE - 64, 256, 0);
	aux_bounded(e, s, id, "head u64::MAX - 7", U64_MAX - 7, 1024, 0);
	aux_bounded(e, s, id, "head u64::MAX - 4095", U64_MAX - 4095, AUX_SIZE, 0);

	/* aux_seq churn: a new session (sane or not) at every exit. */
	for (i = 0; i < 400; i++) {
		static const u64 rooms[] = { 0, 8, 48, AUX_SIZE, AUX_SIZE + 1, U64_MAX };
		u64 r = rnd(e);
		u64 buf = (r & 3) == 0 ? 0 : (r & 3) == 1 ? id + 1 : id;

		aux_post(s, buf, r >> 8, rooms[(r >> 4) % ARRAY_SIZE(rooms)],
			 (r >> 2) & 1 ? AUX_SIZE * ((r >> 7) & 3) : 0);
		poke(e);
	}

	/* AUX_CLEAR while a session names the buffer: no write after it. */
	aux_fill(e);
	seq = aux_post(s, id, 0, AUX_SIZE, 0);
	for (i = 0; i < 2000 && READ_ONCE(s->aux_written_seq) != seq; i++)
		poke(e);
	if (READ_ONCE(s->aux_written_seq) != seq)
		fail(e, "A: no trace bytes in a fresh session");
	expect(e, e->cpu, "AUX_CLEAR of a buffer a session names", PVPMU_CMD_AUX_CLEAR,
	       id, 0, 0, W(OK), NULL);
	live_del(e, id);
	for (i = 0; i < AUX_PAGES; i++)
		memcpy(e->snap + i * PAGE_SIZE, page_address(e->aux[i]), PAGE_SIZE);
	pokes(e, 300);
	st0 = rd_reg(e, PVPMU_REG_ERR_STATE);
	aux_post(s, id, 0, AUX_SIZE, 0);	/* names the cleared buffer */
	pokes(e, 100);
	if (reg_delta(e, PVPMU_REG_ERR_STATE, st0) == 0)
		fail(e, "A: a session naming a cleared buffer did not count ERR_STATE");
	for (i = 0; i < AUX_PAGES; i++)
		if (memcmp(e->snap + i * PAGE_SIZE, page_address(e->aux[i]), PAGE_SIZE))
			fail(e, "A: the host wrote AUX page %u after AUX_CLEAR", i);
	expect(e, e->cpu, "AUX_CLEAR again", PVPMU_CMD_AUX_CLEAR, id, 0, 0, W(ENOENT), NULL);
	/* The pages are free again. */
	if (expect(e, e->cpu, "AUX_SET of the cleared pages", PVPMU_CMD_AUX_SET,
		   pa(e->alist), AUX_PAGES, 0, W(OK), &id2) == PVPMU_ST_OK) {
		if (id2 == id)
			fail(e, "A: AUX_SET reused buffer id %llu", id);
		expect(e, e->cpu, "AUX_CLEAR", PVPMU_CMD_AUX_CLEAR, id2, 0, 0, W(OK), NULL);
	}
	aux_post(s, 0, 0, 0, 0);
	n = reg_delta(e, PVPMU_REG_AUX_BYTES, bytes0);
	detail(e, ",aux_bytes+%llu", n);
	if (!n)
		fail(e, "A: the host wrote no trace bytes into a valid AUX buffer");
}

/* ------------------------------------------------------------------------
 * Phase C: another CPU hammers commands while this one samples
 */

static int evil_cthread(void *arg)
{
	struct evil *e = arg;
	u64 *clist = page_address(e->clist);
	unsigned int o = e->other, c;
	u64 id;
	u32 st;

	clist[0] = pa(e->cbuf);
	while (!READ_ONCE(e->c_go) && !kthread_should_stop())
		schedule_timeout_uninterruptible(1);
	c = READ_ONCE(e->cpu);
	while (!READ_ONCE(e->c_stop) && !kthread_should_stop()) {
		if (evil_cmd(e, o, PVPMU_CMD_AUX_SET, pa(e->clist), 1, 0, &id) == PVPMU_ST_OK &&
		    id) {
			WRITE_ONCE(e->c_id, id);
			(void)readl(e->regs + PVPMU_REG_MAGIC);
			if (evil_cmd(e, o, PVPMU_CMD_AUX_CLEAR, id, 0, 0, NULL) != PVPMU_ST_OK)
				WRITE_ONCE(e->c_done, -1);
		}
		/* The sampling bank's ring data page: must be refused. */
		clist[1] = pa(e->tring.pg[1]);
		st = evil_cmd(e, o, PVPMU_CMD_SET_RING, pa(e->clist), 1, 0, NULL);
		if (st != PVPMU_ST_EFAULT) {
			e->c_bad++;
			if (st == PVPMU_ST_OK)
				evil_cmd(e, o, PVPMU_CMD_RESET, 0, 0, 0, NULL);
		}
		/* STOP and START the sampling CPU's bank under its feet. */
		evil_cmd(e, c, PVPMU_CMD_STOP, 0, 0, 0, NULL);
		evil_cmd(e, c, PVPMU_CMD_START, 0, 0, 0, NULL);
		e->c_loops++;
		cond_resched();
	}
	if (!READ_ONCE(e->c_done))
		WRITE_ONCE(e->c_done, 1);
	while (!kthread_should_stop())
		schedule_timeout_uninterruptible(1);
	return 0;
}

static void phase_concurrent(struct evil *e, struct pvpmu_state *s)
{
	u64 end, smp0;

	/* Runs pinned; the thread was started on e->other before. */
	state_sane(e, s, e->cpu);
	activate(e, s);
	smp0 = rd_reg(e, PVPMU_REG_SAMPLES);
	WRITE_ONCE(e->c_go, 1);
	end = ktime_get_ns() + (u64)phase_ms * NSEC_PER_MSEC;
	while (ktime_get_ns() < end) {
		aux_post(s, READ_ONCE(e->c_id), rnd(e), PAGE_SIZE, 0);
		poke(e);
	}
	WRITE_ONCE(e->c_stop, 1);
	end = ktime_get_ns() + 5 * NSEC_PER_SEC;
	while (!READ_ONCE(e->c_done) && ktime_get_ns() < end)
		cpu_relax();
	if (READ_ONCE(e->c_done) != 1)
		fail(e, "C: the other CPU's command loop %s",
		     READ_ONCE(e->c_done) ? "saw an AUX_CLEAR fail" : "did not finish");
	if (e->c_bad)
		fail(e, "C: %lu SET_RING commands naming the sampling bank's ring were not refused with EFAULT",
		     e->c_bad);
	/* The last buffer is cleared: its page must not change any more. */
	memcpy(e->snap, page_address(e->cbuf), PAGE_SIZE);
	aux_post(s, READ_ONCE(e->c_id), 0, PAGE_SIZE, 0);
	pokes(e, 200);
	if (memcmp(e->snap, page_address(e->cbuf), PAGE_SIZE))
		fail(e, "C: the host wrote a cleared AUX buffer");
	aux_post(s, 0, 0, 0, 0);
	deactivate(s);
	detail(e, " C:loops=%lu,samples+%llu", e->c_loops,
	       reg_delta(e, PVPMU_REG_SAMPLES, smp0));
}

/* ------------------------------------------------------------------------
 * Phase H: the device still works
 */

static void phase_health(struct evil *e)
{
	struct pvpmu_state *s = page_address(e->hst);
	struct evil_ring *r = &e->hring;
	struct perf_event_mmap_page *ctrl = ring_ctrl(r);
	struct parse_result p;
	u64 head;
	unsigned int c = e->cpu;

	expect(e, c, "RESET", PVPMU_CMD_RESET, 0, 0, 0, W(OK), NULL);
	expect(e, c, "RESET again", PVPMU_CMD_RESET, 0, 0, 0, W(OK), NULL);
	if (expect(e, c, "SET_STATE (clean)", PVPMU_CMD_SET_STATE, pa(e->hst), 0, 0,
		   W(OK), NULL) ||
	    expect(e, c, "SET_RING (clean)", PVPMU_CMD_SET_RING, ring_list(e, r), r->nr,
		   0, W(OK), NULL) ||
	    expect(e, c, "START (clean)", PVPMU_CMD_START, 0, 0, 0, W(OK), NULL)) {
		fail(e, "H: the device refuses a clean setup");
		return;
	}
	state_sane(e, s, c);
	activate(e, s);
	spin_samples(e, 200, rd_reg(e, PVPMU_REG_SAMPLES));
	deactivate(s);
	spin_ms(e, 20);
	/* Acquire: pairs with the host's release store of data_head. */
	head = smp_load_acquire(&ctrl->data_head);
	ring_parse(e, r, 0, min(head, ring_size(r)), true, c, &p);
	e->samples_after = p.samples;
	detail(e, " H:head=%llu,samples=%lu,lost_records=%lu,bad=%lu,bad_fields=%lu,irq_seq=%llu,irqs=%d",
	       head, p.samples, p.lost_records, p.bad, p.bad_fields,
	       READ_ONCE(s->irq_seq), atomic_read(&e->irqs));
	if (!p.samples)
		fail(e, "H: no samples in a clean ring after 200 ms");
	if (p.bad || p.bad_fields > p.samples / 10)
		fail(e, "H: %lu malformed records, %lu samples with wrong fields",
		     p.bad, p.bad_fields);
	if (head > ring_size(r))
		fail(e, "H: data_head %llu beyond a ring nobody read", head);
	if (p.samples && !READ_ONCE(s->irq_seq))
		fail(e, "H: samples arrived but irq_seq never moved");
	if (READ_ONCE(s->samples) < p.samples)
		fail(e, "H: the state page counts %llu samples, the ring has %lu",
		     READ_ONCE(s->samples), p.samples);
	expect(e, c, "RESET", PVPMU_CMD_RESET, 0, 0, 0, W(OK), NULL);
}

/* ------------------------------------------------------------------------
 * Setup and teardown
 */

static irqreturn_t evil_irq(int irqno, void *dev)
{
	struct evil *e = dev;

	atomic_inc(&e->irqs);
	return IRQ_HANDLED;
}

static int evil_ram_cb(struct resource *r, void *arg)
{
	struct evil *e = arg;
	u64 end = (u64)r->end + 1;

	if (end > e->ram_end)
		e->ram_end = end;
	if (end <= SZ_4G && end > e->low_end)
		e->low_end = end;
	return 0;
}

static int evil_alloc(struct evil *e)
{
	unsigned int i;

	for (i = 0; i < NR_CANARY; i++) {
		e->canary[i] = alloc_page(GFP_KERNEL);
		if (!e->canary[i])
			return -ENOMEM;
		fill_pattern(e->canary[i], i);
		e->canary_pa[i] = pa(e->canary[i]);
	}
	e->list_pg = alloc_pages(GFP_KERNEL | __GFP_ZERO, LIST_ORDER);
	if (!e->list_pg)
		return -ENOMEM;
	e->list = page_address(e->list_pg);
	e->list_pa = pa(e->list_pg);
	e->snap = kmalloc(AUX_SIZE, GFP_KERNEL);
	if (!e->snap)
		return -ENOMEM;

	e->nr_res = min_t(u32, e->nr_vcpus, MAX_RES_BANKS);
	for (i = 0; i < e->nr_res; i++) {
		e->bst[i] = evil_page(e);
		e->brc[i] = evil_page(e);
		e->brd[i] = evil_page(e);
		if (!e->bst[i] || !e->brc[i] || !e->brd[i])
			return -ENOMEM;
	}
	e->sst = evil_page(e);
	e->hst = evil_page(e);
	e->fake_task = evil_page(e);
	e->alist = evil_page(e);
	e->cbuf = evil_page(e);
	e->clist = evil_page(e);
	if (!e->sst || !e->hst || !e->fake_task || !e->alist || !e->cbuf ||
	    !e->clist)
		return -ENOMEM;
	for (i = 0; i < AUX_PAGES; i++) {
		e->aux[i] = evil_page(e);
		if (!e->aux[i])
			return -ENOMEM;
	}
	if (ring_alloc(e, &e->sring, RING_MAX_DATA) ||
	    ring_alloc(e, &e->tring, 1) || ring_alloc(e, &e->hring, RING_MAX_DATA))
		return -ENOMEM;
	return 0;
}

static void evil_free(struct evil *e, bool leak)
{
	unsigned int i;

	if (leak) {
		pr_warn("leaking %u pages after FAIL (the host may still write them)\n",
			NR_CANARY + e->nr_pages + (1 << LIST_ORDER));
		return;
	}
	for (i = 0; i < NR_CANARY; i++)
		if (e->canary[i])
			__free_page(e->canary[i]);
	for (i = 0; i < e->nr_pages; i++)
		__free_page(e->pages[i]);
	if (e->list_pg)
		__free_pages(e->list_pg, LIST_ORDER);
	kfree(e->snap);
}

/* The sampling phases, pinned to one CPU (no sleeping inside). */
static void run_pinned(struct evil *e, struct task_struct *ct)
{
	struct pvpmu_state *s = page_address(e->sst);
	unsigned int c;

	c = get_cpu();
	if (c != e->cpu) {
		put_cpu();
		fail(e, "running on CPU %u, not on CPU %u as asked", c, e->cpu);
		return;
	}
	if (expect(e, c, "SET_STATE", PVPMU_CMD_SET_STATE, pa(e->sst), 0, 0, W(OK), NULL) ||
	    expect(e, c, "SET_RING", PVPMU_CMD_SET_RING, ring_list(e, &e->sring),
		   e->sring.nr, 0, W(OK), NULL) ||
	    expect(e, c, "START", PVPMU_CMD_START, 0, 0, 0, W(OK), NULL)) {
		put_cpu();
		fail(e, "S: cannot set up a valid state page and ring");
		return;
	}
	phase_state(e, s);
	/* Records from S: every header must parse (formats changed a lot). */
	{
		struct parse_result p;
		/* Acquire: pairs with the host's release store of data_head. */
		u64 head = smp_load_acquire(&ring_ctrl(&e->sring)->data_head);

		ring_parse(e, &e->sring, 0, min(head, ring_size(&e->sring)),
			   false, c, &p);
		if (p.bad)
			fail(e, "S: the host wrote malformed records (%lu)", p.bad);
	}
	phase_tails(e, s);
	phase_aux(e, s);
	if (ct)
		phase_concurrent(e, s);
	deactivate(s);
	phase_health(e);
	put_cpu();
}

static unsigned int count_canaries(struct evil *e)
{
	unsigned int i, n = 0;

	for (i = 0; i < NR_CANARY; i++) {
		if (!check_pattern(e->canary[i], i)) {
			n++;
			fail(e, "canary %u at %#llx changed", i, e->canary_pa[i]);
		}
	}
	return n;
}

static int __init evil_init(void)
{
	struct task_struct *ct = NULL;
	struct evil *e;
	unsigned int b, i, cpu;
	bool pass;
	int err = 0;
	u32 v;

	e = kzalloc(sizeof(*e), GFP_KERNEL);
	if (!e)
		return -ENOMEM;
	e->rng = 0x9e3779b97f4a7c15ULL;
	phase_ms = clamp(phase_ms, 30u, 2000u);

	if (!base) {
		fail(e, "no base= given");
		goto report;
	}
	/* Busy if the real driver is still loaded: its state would be ours. */
	e->res = request_mem_region(base, PVPMU_REGION_SIZE, "pvpmu-evil");
	if (!e->res) {
		fail(e, "MMIO region %#lx is busy: rmmod pvpmu first", base);
		goto report;
	}
	/* Two pages: the device, and the page after it for straddling. */
	e->regs = ioremap(base, 2 * PVPMU_REGION_SIZE);
	if (!e->regs) {
		fail(e, "cannot map %#lx", base);
		goto report;
	}
	v = readl(e->regs + PVPMU_REG_MAGIC);
	if (v != PVPMU_MAGIC || readl(e->regs + PVPMU_REG_VERSION) != PVPMU_IF_VERSION) {
		fail(e, "no pvpmu device at %#lx (magic %#x)", base, v);
		goto report;
	}
	e->features = readl(e->regs + PVPMU_REG_FEATURES);
	e->nr_vcpus = min_t(u32, readl(e->regs + PVPMU_REG_NR_VCPUS), PVPMU_MAX_BANKS);
	e->max_freq = readl(e->regs + PVPMU_REG_MAX_FREQ);
	if (!e->nr_vcpus) {
		fail(e, "the device has no banks");
		goto report;
	}
	walk_iomem_res_desc(IORES_DESC_NONE, IORESOURCE_SYSTEM_RAM | IORESOURCE_BUSY,
			    0, U64_MAX, e, evil_ram_cb);
	if (!e->ram_end) {
		fail(e, "cannot find guest RAM");
		goto report;
	}
	err = evil_alloc(e);
	if (err) {
		fail(e, "out of memory");
		goto report;
	}
	build_bad(e);
	if (irq > 0 && !request_irq(irq, evil_irq, 0, "pvpmu-evil", e))
		e->have_irq = true;
	rd_err(e, e->err0);
	pr_info("device at %#lx: %u banks, features %#x, max %u Hz; RAM ends at %#llx (%#llx below 4 GiB); %u hostile GPAs; phase %u ms\n",
		base, e->nr_vcpus, e->features, e->max_freq, e->ram_end, e->low_end,
		e->nr_bad, phase_ms);

	phase_registers(e);

	/*
	 * The sampling phases run on the first CPU with a bank (this task is
	 * moved there), phase C's thread on the next one. With the busy loops
	 * of the pinned phases the two must not share a CPU.
	 */
	e->cpu = nr_cpu_ids;
	e->other = nr_cpu_ids;
	for_each_online_cpu(cpu) {
		if (cpu >= e->nr_vcpus)
			continue;
		if (e->cpu == nr_cpu_ids)
			e->cpu = cpu;
		else if (e->other == nr_cpu_ids)
			e->other = cpu;
	}
	if (e->cpu == nr_cpu_ids || set_cpus_allowed_ptr(current, cpumask_of(e->cpu))) {
		fail(e, "cannot run on a CPU with a command bank");
		e->cpu = 0;
		goto report;
	}
	if (e->other != nr_cpu_ids) {
		ct = kthread_create(evil_cthread, e, "pvpmu-evil/%u", e->other);
		if (IS_ERR(ct)) {
			ct = NULL;
		} else {
			kthread_bind(ct, e->other);
			wake_up_process(ct);
		}
	}
	run_pinned(e, ct);
	if (ct) {
		WRITE_ONCE(e->c_stop, 1);
		kthread_stop(ct);
	} else {
		detail(e, " C:skipped(one CPU)");
	}
	set_cpus_allowed_ptr(current, cpu_possible_mask);

report:
	/* Nothing may write our pages any more. */
	for (b = 0; e->regs && b < e->nr_vcpus; b++)
		expect(e, b, "final RESET", PVPMU_CMD_RESET, 0, 0, 0, W(OK), NULL);
	for (i = 0; e->regs && i < MAX_LIVE_IDS; i++)
		if (e->live_ids[i])
			expect(e, e->cpu, "final AUX_CLEAR", PVPMU_CMD_AUX_CLEAR,
			       e->live_ids[i], 0, 0, W(OK), NULL);
	if (e->have_irq)
		free_irq(irq, e);
	if (e->canary[NR_CANARY - 1])
		e->canaries_changed = count_canaries(e);
	if (e->regs) {
		rd_err(e, e->err_end);
		for (i = 0; i < 4; i++) {
			static const char *const names[] = {
				"ERR_COMMANDS", "ERR_PAGES", "ERR_TAILS", "ERR_STATE",
			};

			if (e->err_end[i] <= e->err0[i])
				fail(e, "the %s register did not increase (%llu -> %llu)",
				     names[i], e->err0[i], e->err_end[i]);
		}
		detail(e, " dev:samples=%llu,lost=%llu,interrupts=%llu",
		       rd_reg(e, PVPMU_REG_SAMPLES), rd_reg(e, PVPMU_REG_LOST),
		       rd_reg(e, PVPMU_REG_INTERRUPTS));
	}
	if (!e->samples_after)
		fail(e, "no samples after the attacks");
	pass = !e->failures && !e->canaries_changed;
	pr_info("detail failures=%u%s\n", e->failures, e->detail);
	pr_info("result=%s canaries_changed=%u commands=%ld rejected=%ld err_commands=%llu err_pages=%llu err_tails=%llu err_state=%llu samples_after=%llu\n",
		pass ? "PASS" : "FAIL", e->canaries_changed,
		atomic_long_read(&e->commands), atomic_long_read(&e->rejected),
		e->err_end[0], e->err_end[1], e->err_end[2], e->err_end[3],
		e->samples_after);

	evil_free(e, !pass);
	if (e->regs)
		iounmap(e->regs);
	if (e->res)
		release_mem_region(base, PVPMU_REGION_SIZE);
	if (pass)
		kfree(e);
	/* Done either way; see the top of the file for why not an error. */
	return 0;
}
module_init(evil_init);

/* Init left nothing behind: the banks are RESET, the pages freed or leaked. */
static void __exit evil_exit(void)
{
	pr_info("unloaded\n");
}
module_exit(evil_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("perfvisor test: a hostile guest for the pvpmu device");
