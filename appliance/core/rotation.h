/*
 * rot: the retirement scheduler. POST /v1/keys/{kid}/rotate leaves the old key retiring:
 * published (its public key verifies the tokens already out) but signing nothing, until
 * its retire_at. This module revokes it then, exactly as DELETE /v1/keys/{kid} would
 * (ck_revoke, keys.h: durable first, then published, then the private key destroyed),
 * with reason ROT_REASON and audit actor ROT_ACTOR.
 *
 * What it owns: one thread in the front process (the process with the registry's writer
 * and the publication cache), its mutex, condition
 * variable and stop flag. The schedule itself is the registry's retire_at column, nothing
 * here: it survives a restart and a front crash. Keys that fell due while the appliance
 * was down are revoked by the first pass, which rot_start waits for, so a start never
 * serves them.
 *
 * Timing: the thread sleeps until the earliest retire_at ahead, but at most ROT_TICK_MS
 * (a rotation made meanwhile may be due sooner, and a wall clock that jumps is caught
 * within a tick); rot_stop wakes it at once. A key is revoked within a tick of its
 * retire_at. A revocation the registry cannot write is tried again at the next tick; a
 * private key the keeper cannot destroy is left to reconcile at the next start, as for
 * DELETE.
 *
 * Thread safety: rot_start and rot_stop from one thread (the front's main thread).
 *
 *   rot *rt;
 *   if (rot_start(&ce, &rt, err, sizeof(err)) != 0) ... err ...
 *   ... serve ...
 *   rot_stop(rt);   // before the registry, the keeper and the audit trail close
 */
#ifndef APPLIANCE_ROTATION_H
#define APPLIANCE_ROTATION_H

#include "appliance/core/keys.h"

#include <stddef.h>

#define ROT_ACTOR "system:rotation" /* the audit actor of a scheduled revocation */
#define ROT_REASON "rotated"        /* its reason in the revocation feed */
#define ROT_TICK_MS 1000            /* the longest sleep between two looks at the schedule */
#define ROT_BATCH 64                /* kids taken from the registry per look */

typedef struct rot rot;

/* Revokes what is due now, then starts the thread. What env names (registry, keeper,
 * publication) must outlive rot_stop; env itself is copied. 0 and *out set, or -1 with one
 * line in err and *out NULL. */
int rot_start(const ck_env *env, rot **out, char *err, size_t errlen);

/* Wakes the thread, lets it finish the revocation it may be in, joins it and frees t.
 * NULL is a no-op. */
void rot_stop(rot *t);

#endif
