// SPDX-License-Identifier: GPL-2.0
/*
 * pv_events: tell perfvisor how this kernel ends, through perfvisor's
 * guest-event port, so that the VMM never has to believe console text,
 * which guest user space can print too (docs/security.md).
 *
 *  - panic: a panic notifier, run after the kernel printed its report;
 *  - power-off: a sys-off handler, run once the kernel has shut down;
 *  - halt and restart: a reboot notifier (the restart itself reaches the
 *    VMM as a reset).
 *
 * The guest image's /init loads it before anything else runs. It has no
 * exit function, so it cannot be unloaded: a guest that could remove it
 * would make a later panic look like a clean reboot. Under a VMM without
 * the port, loading fails with -ENODEV and nothing is registered.
 */
#include <linux/err.h>
#include <linux/io.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/notifier.h>
#include <linux/panic_notifier.h>
#include <linux/reboot.h>

#include "pv_events_if.h"

static void pv_events_send(u8 event)
{
	outb(event, PV_EVENTS_PORT);
}

static int pv_events_panic(struct notifier_block *nb, unsigned long action,
			   void *msg)
{
	pv_events_send(PV_EVENT_PANIC);
	return NOTIFY_DONE;
}

static struct notifier_block pv_events_panic_nb = {
	.notifier_call = pv_events_panic,
	/* First: one port write, before notifiers that may not return. */
	.priority = INT_MAX,
};

static int pv_events_reboot(struct notifier_block *nb, unsigned long action,
			    void *cmd)
{
	if (action == SYS_HALT)
		pv_events_send(PV_EVENT_HALT);
	else if (action == SYS_RESTART)
		pv_events_send(PV_EVENT_RESTART);
	/* SYS_POWER_OFF: the sys-off handler reports it when it is done. */
	return NOTIFY_DONE;
}

static struct notifier_block pv_events_reboot_nb = {
	.notifier_call = pv_events_reboot,
};

static int pv_events_power_off(struct sys_off_data *data)
{
	pv_events_send(PV_EVENT_POWER_OFF);
	return NOTIFY_DONE;
}

static int __init pv_events_init(void)
{
	struct sys_off_handler *off;
	int err;

	if (inb(PV_EVENTS_PORT) != PV_EVENTS_MAGIC)
		return -ENODEV;

	off = register_sys_off_handler(SYS_OFF_MODE_POWER_OFF,
				       SYS_OFF_PRIO_DEFAULT,
				       pv_events_power_off, NULL);
	if (IS_ERR(off)) {
		pr_err("pv_events: cannot register the power-off handler: %ld\n",
		       PTR_ERR(off));
		return PTR_ERR(off);
	}
	err = register_reboot_notifier(&pv_events_reboot_nb);
	if (err) {
		pr_err("pv_events: cannot register the reboot notifier: %d\n",
		       err);
		unregister_sys_off_handler(off);
		return err;
	}
	err = atomic_notifier_chain_register(&panic_notifier_list,
					     &pv_events_panic_nb);
	if (err) {
		pr_err("pv_events: cannot register the panic notifier: %d\n",
		       err);
		unregister_reboot_notifier(&pv_events_reboot_nb);
		unregister_sys_off_handler(off);
		return err;
	}
	/* From here on the VMM takes the guest's end from this port only. */
	pv_events_send(PV_EVENT_ATTACHED);
	pr_info("pv_events: panic, power-off, halt and restart reported on port 0x%x\n",
		PV_EVENTS_PORT);
	return 0;
}
module_init(pv_events_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("perfvisor guest: how the kernel ends, through the guest-event port");
