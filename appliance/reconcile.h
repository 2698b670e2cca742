/*
 * rec: makes the token and the registry agree after a crash, before the appliance serves.
 *  - a key object with no registry row is destroyed (its creation was never acknowledged);
 *  - a revoked row whose object still exists has the object destroyed;
 *  - an active or retiring row whose private object is missing is marked broken and
 *    reported (a retiring key holds its object until the rotation scheduler revokes it).
 *    A retiring row whose object is there is left alone: the scheduler owns it.
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

#endif
