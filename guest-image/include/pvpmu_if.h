/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The pvpmu device's guest interface: MMIO registers, command banks and
 * the shared state page, as docs/pvpmu.md describes them. Shared by the
 * driver (guest-image/pvpmu) and the hostile test module
 * (guest-image/pvpmu-evil). The host's side is the pvpmu-abi crate;
 * pvpmu-abi/tests/header.rs compiles this header against every value
 * there, so change both in one commit.
 */
#ifndef _PVPMU_IF_H
#define _PVPMU_IF_H

#include <linux/bits.h>
#include <linux/build_bug.h>
#include <linux/stddef.h>
#include <linux/types.h>
#include <asm/page.h>

/* Registers (docs/pvpmu.md "Registers"). */
#define PVPMU_REGION_SIZE	0x1000
#define PVPMU_REG_MAGIC		0x000
#define PVPMU_REG_VERSION	0x004
#define PVPMU_REG_FEATURES	0x008
#define PVPMU_REG_NR_VCPUS	0x00c
#define PVPMU_REG_MAX_FREQ	0x010
#define PVPMU_REG_IRQ		0x014
#define PVPMU_REG_SAMPLE_TYPES	0x018
/* Eight u64 device counters, in this order. */
#define PVPMU_REG_COUNTERS	0x040
#define PVPMU_REG_ERR_COMMANDS	0x040
#define PVPMU_REG_ERR_PAGES	0x048
#define PVPMU_REG_ERR_TAILS	0x050
#define PVPMU_REG_ERR_STATE	0x058
#define PVPMU_REG_SAMPLES	0x060
#define PVPMU_REG_LOST		0x068
#define PVPMU_REG_AUX_BYTES	0x070
#define PVPMU_REG_INTERRUPTS	0x078

#define PVPMU_MAGIC		0x55504d50
#define PVPMU_IF_VERSION	1
#define PVPMU_F_SAMPLING	BIT(0)
#define PVPMU_F_AUX		BIT(1)
#define PVPMU_F_HOST_TIMER	BIT(2)
/* Callchain events get the host's frame-pointer walk (else the IP alone). */
#define PVPMU_F_CALLCHAIN	BIT(3)
/* The FLUSH command exists. */
#define PVPMU_F_FLUSH		BIT(4)

/* Per-vCPU command banks. */
#define PVPMU_BANK(n)		(0x100 + (n) * 0x40)
#define PVPMU_MAX_BANKS		((PVPMU_REGION_SIZE - 0x100) / 0x40)
#define PVPMU_B_CMD		0x00
#define PVPMU_B_STATUS		0x04
#define PVPMU_B_ARG0		0x08
#define PVPMU_B_ARG1		0x10
#define PVPMU_B_ARG2		0x18
#define PVPMU_B_RET0		0x20

enum pvpmu_cmd {
	PVPMU_CMD_SET_STATE	= 1,
	PVPMU_CMD_SET_RING	= 2,
	PVPMU_CMD_START		= 3,
	PVPMU_CMD_STOP		= 4,
	PVPMU_CMD_RESET		= 5,
	PVPMU_CMD_AUX_SET	= 6,
	PVPMU_CMD_AUX_CLEAR	= 7,
	PVPMU_CMD_FLUSH		= 8,
};

/* Command statuses (the bank's STATUS register). */
#define PVPMU_ST_OK		0
#define PVPMU_ST_EINVAL		1
#define PVPMU_ST_EBUSY		2
#define PVPMU_ST_ENOENT		3
#define PVPMU_ST_EFAULT		4
#define PVPMU_ST_ENOSYS		5

#define PVPMU_MAX_RING_PAGES	256
#define PVPMU_MAX_AUX_PAGES	4096

/* State page flags. */
#define PVPMU_SF_EXCLUDE_USER	BIT(0)
#define PVPMU_SF_EXCLUDE_KERNEL	BIT(1)
#define PVPMU_SF_FREQ		BIT(2)

/*
 * One context switch in the state page's switch log: the task that left
 * the CPU at @time (the guest's perf clock). docs/pvpmu.md "Task identity".
 */
struct pvpmu_switch {
	u64 time;
	u32 pid;		/* tgid */
	u32 tid;
};

#define PVPMU_SWITCH_LOG_LEN	96

/* The shared state page (docs/pvpmu.md "The shared state page"). */
struct pvpmu_state {
	/* 0x000-0x7ff: written by the guest */
	u32 version;
	u32 active;
	u32 gen;
	u32 flags;
	u64 sample_type;
	u64 read_format;
	u64 sample_id_all;
	u64 period;
	u64 id;
	u64 stream_id;
	u32 cpu;
	u32 pid_filter;
	u64 clock_offset;
	u64 current_task_gpa;
	u64 page_offset;
	u32 task_pid_off;
	u32 task_tgid_off;
	u32 throttled;
	u32 __guest_free0;
	u64 kimage_virt;
	u64 kimage_phys;
	u64 active_since;
	u8 __guest_free1[0x100 - 0x88];
	u64 aux_seq;
	u64 aux_buf;
	u64 aux_head;
	u64 aux_room;
	u64 aux_wakeup;
	u64 switch_seq;
	u8 __guest_free2[0x200 - 0x130];
	struct pvpmu_switch switch_log[PVPMU_SWITCH_LOG_LEN];
	/* 0x800-0xfff: written by the host */
	u64 irq_seq;
	u64 samples;
	u64 lost;
	u64 aux_done_seq;
	u64 aux_written;
	u64 aux_flags;
	u64 aux_written_seq;
	u8 __host_free[0x1000 - 0x838];
};

static_assert(sizeof(struct pvpmu_state) == PAGE_SIZE);
static_assert(offsetof(struct pvpmu_state, sample_type) == 0x010);
static_assert(offsetof(struct pvpmu_state, cpu) == 0x040);
static_assert(offsetof(struct pvpmu_state, clock_offset) == 0x048);
static_assert(offsetof(struct pvpmu_state, task_tgid_off) == 0x064);
static_assert(offsetof(struct pvpmu_state, throttled) == 0x068);
static_assert(offsetof(struct pvpmu_state, kimage_phys) == 0x078);
static_assert(offsetof(struct pvpmu_state, active_since) == 0x080);
static_assert(offsetof(struct pvpmu_state, aux_seq) == 0x100);
static_assert(offsetof(struct pvpmu_state, aux_wakeup) == 0x120);
static_assert(offsetof(struct pvpmu_state, switch_seq) == 0x128);
static_assert(offsetof(struct pvpmu_state, switch_log) == 0x200);
static_assert(sizeof(struct pvpmu_switch) == 16);
static_assert(offsetof(struct pvpmu_state, irq_seq) == 0x800);
static_assert(offsetof(struct pvpmu_state, aux_flags) == 0x828);
static_assert(offsetof(struct pvpmu_state, aux_written_seq) == 0x830);

#endif /* _PVPMU_IF_H */
