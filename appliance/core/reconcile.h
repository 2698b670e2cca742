/*
 * rec: makes the token and the registry agree after a crash, before the appliance serves.
 *  - a key object with no registry row is destroyed (its creation was never acknowledged);
 *  - a revoked row whose object still exists has the object destroyed;
 *  - an active or retiring row whose private object is missing is marked broken and
 *    reported (a retiring key holds its object until the rotation scheduler revokes it).
 *    A retiring row whose object is there is left alone: the scheduler owns it;
 *  - a live row whose token attributes were never recorded (a key made before the
 *    appliance read them back, issue 21) has them read (kp_key_attrs) and recorded
 *    (reg_set_token_attrs), once: keys found in the token get theirs at the front's start.
 *
 * While the appliance serves, the same repair for one kid at a time: a key object that
 * must go is handed to the destroyer (rec_defer_destroy): a revoked key's (a revocation
 * answers once it is durable, never waiting for the token), a generated key's whose row
 * was never written and whose destroy failed, or whose generation's answer was lost with
 * the keeper that died making it. The destroyer thread (rec_worker_start) tries each at
 * once and again every REC_RETRY_SECONDS until the keeper destroyed it or found nothing;
 * without a destroyer, rec_retry_deferred does one pass. The set is bounded
 * (REC_DEFER_MAX); a kid past the bound is left to the next start's rec_run, with a log
 * line. Process-wide state, guarded by its own mutex.
 */
#ifndef APPLIANCE_RECONCILE_H
#define APPLIANCE_RECONCILE_H

#include "appliance/kproto/keeper.h"
#include "appliance/store/registry.h"

#include <stdio.h>

typedef struct {
    unsigned orphans_destroyed;
    unsigned revoked_destroyed;
    unsigned marked_broken;
    unsigned attrs_read;    /* live keys whose token attributes were read back for the first time */
    unsigned not_sign_only; /* live keys in the token whose attributes say not sign-only */
} rec_report;

/* Runs the three repairs, logging one line per action to log. 0, or -1 when the token or
 * the registry failed (the appliance must not serve then). */
int rec_run(kp *k, reg *r, FILE *log, rec_report *out);

#define REC_DEFER_MAX 1024

/* Remembers that kid's objects must be destroyed. Never call it for a kid that is or may
 * become active: only for a revoked kid, or one whose row will never be written. */
void rec_defer_destroy(const sk_kid *kid);

/* Tries each deferred destroy once; a kid leaves the set when the keeper destroyed it or
 * found nothing. Logs a kid's first failure, and its destruction after one. Returns how
 * many remain. */
size_t rec_retry_deferred(kp *k, FILE *log);

#define REC_RETRY_SECONDS 2

/* The destroyer: a thread running rec_retry_deferred whenever a kid is deferred and every
 * REC_RETRY_SECONDS, through its own keeper connection. Each of its waits for the keeper is
 * bounded by the keeper's deadline (keeper.h), so a stalled token holds only this thread.
 * rec_worker_stop ends it after its current pass; what is left is rec_run's at the next
 * start. */
typedef struct rec_worker rec_worker;
int rec_worker_start(kp *k, FILE *log, rec_worker **out);
void rec_worker_stop(rec_worker *w);

#endif
