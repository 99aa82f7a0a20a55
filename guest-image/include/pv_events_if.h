/* SPDX-License-Identifier: GPL-2.0 */
/*
 * perfvisor's guest-event port: one byte per event, written by the
 * pv_events module (guest-image/pv-events-module). The host's side is
 * devices/src/legacy/guest_events.rs, whose tests read this header, so
 * change both in one commit.
 */
#ifndef _PV_EVENTS_IF_H
#define _PV_EVENTS_IF_H

#define PV_EVENTS_PORT		0xf5
/* What a one-byte read of the port returns under perfvisor. */
#define PV_EVENTS_MAGIC		0x9e

#define PV_EVENT_ATTACHED	1
#define PV_EVENT_PANIC		2
#define PV_EVENT_POWER_OFF	3
#define PV_EVENT_HALT		4
#define PV_EVENT_RESTART	5

#endif /* _PV_EVENTS_IF_H */
