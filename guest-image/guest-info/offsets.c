// SPDX-License-Identifier: GPL-2.0
/*
 * Offsets of the guest kernel's task_struct fields, for `perfvisor record`,
 * which reads the running task from guest memory without a guest driver.
 * Compiled to assembly only (asm-offsets style); see docs/record.md.
 */
#include <linux/sched.h>
#include <linux/mm_types.h>
#include <linux/kbuild.h>
void perfvisor_guest_info(void);
void perfvisor_guest_info(void)
{
	OFFSET(TASK_PID, task_struct, pid);
	OFFSET(TASK_TGID, task_struct, tgid);
	OFFSET(TASK_COMM, task_struct, comm);
	/* A process's code start: where a PIE executable was loaded. */
	OFFSET(TASK_MM, task_struct, mm);
	OFFSET(TASK_MM_START_CODE, mm_struct, start_code);
}
