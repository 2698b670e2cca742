/*
 * rec: makes the token and the registry agree after a crash, before the appliance serves.
 *  - a key object with no registry row is destroyed (its creation was never acknowledged);
 *  - a revoked row whose object still exists has the object destroyed;
 *  - an active or retiring row whose private object is missing is marked broken and
 *    reported (a retiring key holds its object until the rotation scheduler revokes it).
 *    A retiring row whose object is there is left alone: the scheduler owns it.
 *
 * While the appliance serves, the same repair for one kid at a time: a key object that
 * must go (a revoked key, a generated key whose row was never written) but whose destroy
 * failed, or whose generation's answer was lost with the keeper that died making it, is
 * deferred here (rec_defer_destroy) and destroyed once the keeper answers again
 * (rec_retry_deferred, from the rotation scheduler's thread every tick). Without it such
 * an object stayed on the token until the next start of the front. The set is bounded
 * (REC_DEFER_MAX); a kid past the bound is left to the next start's rec_run, with a log
 * line. Process-wide state, guarded by its own mutex.
 */
#ifndef APPLIANCE_RECONCILE_H
#define APPLIANCE_RECONCILE_H

#include "appliance/keeper.h"
#include "appliance/registry.h"

#include <stdio.h>

typedef struct {
    unsigned orphans_destroyed;
    unsigned revoked_destroyed;
    unsigned marked_broken;
} rec_report;

/* Runs the three repairs, logging one line per action to log. 0, or -1 when the token or
 * the registry failed (the appliance must not serve then). */
int rec_run(kp *k, reg *r, FILE *log, rec_report *out);

#define REC_DEFER_MAX 1024

/* Remembers that kid's objects must be destroyed. Never call it for a kid that is or may
 * become active: only for a revoked kid, or one whose row will never be written. */
void rec_defer_destroy(const hsm_kid *kid);

/* Tries each deferred destroy once; a kid leaves the set when the keeper destroyed it or
 * found nothing. Returns how many remain. */
size_t rec_retry_deferred(kp *k, FILE *log);

#endif
