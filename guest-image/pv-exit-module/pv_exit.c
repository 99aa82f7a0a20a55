// SPDX-License-Identifier: GPL-2.0
/*
 * pv_exit: end the VM with a status through perfvisor's debug-exit port 0xf4,
 * written from kernel mode:  insmod pv_exit.ko status=N
 *
 * The guest image's /init uses it when the user-space /bin/pv-exit could not
 * (its ioperm()+OUT takes a #GP in L2 guests nested in the QEMU TCG sandbox; see
 * docs/guest-image.md). Under a VMM without the port the write is ignored and
 * loading fails with -ENODEV, so /init goes on to `reboot -f`.
 */
#include <linux/module.h>
#include <linux/io.h>

#define PV_EXIT_PORT 0xf4

static int status;
module_param(status, int, 0);
MODULE_PARM_DESC(status, "exit status, 0-255");

static int __init pv_exit_init(void)
{
	outb((u8)clamp(status, 0, 255), PV_EXIT_PORT);
	/* Still running: no perfvisor debug-exit device answered. */
	return -ENODEV;
}
module_init(pv_exit_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("perfvisor guest: exit status through the debug-exit port");
