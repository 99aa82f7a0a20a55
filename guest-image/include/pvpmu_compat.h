/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What differs between the kernels perfvisor's guest modules build against;
 * the PVPMU_* flags come from kernel-compat.mk.
 */
#ifndef PVPMU_COMPAT_H
#define PVPMU_COMPAT_H

/* The per-CPU current task pointer: in pcpu_hot from 6.2 on. */
#ifdef PVPMU_PCPU_HOT
#define PVPMU_CURRENT_TASK	pcpu_hot.current_task
#else
#define PVPMU_CURRENT_TASK	current_task
#endif

#endif /* PVPMU_COMPAT_H */
