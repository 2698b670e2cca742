/* wch: a node's listener for the other nodes' changes (watch.h). */
#include "appliance/core/watch.h"

#include "appliance/store/sdb.h"
#include "base/clock.h"
#include "base/tick.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const wch_channels[] = {"signd_keys", "signd_credentials", "signd_tokens"};

struct wch {
    wch_options o;
    char database[SDB_LOCATOR_MAX];
    sdb *db; /* the thread's alone once started */
    tick t;
    int64_t last_ping_ms;
    int stale; /* notes may have been lost: reload before healthy */
    atomic_int healthy;
    atomic_uint_fast64_t notes, reloads, reconnects;
};

/* The three mirrors from the tables. 0 when every reload succeeded. */
static int wch_reload(wch *w)
{
    int ok = reg_refresh(w->o.reg) == REG_OK;
    if (w->o.creds != NULL)
        ok = cred_refresh(w->o.creds) == CRED_OK && ok;
    if (w->o.tks != NULL)
        ok = tks_refresh(w->o.tks) == TKS_OK && ok;
    atomic_fetch_add(&w->reloads, 1);
    return ok ? 0 : -1;
}

static int wch_ping(wch *w)
{
    char err[256];
    sdb_stmt *s;
    if (sdb_prepare(w->db, "SELECT 1", &s, "ping", err, sizeof(err)) != SDB_OK)
        return -1;
    int ok = sdb_step(s) == SDB_ROW;
    sdb_finalize(s);
    return ok ? 0 : -1;
}

static int64_t wch_pass(void *ctx, tick *t)
{
    (void)t;
    wch *w = ctx;
    sdb_status st = sdb_wait(w->db, WCH_WAIT_MS);
    int64_t now = clk_now_ms();
    if (st == SDB_OK && now - w->last_ping_ms >= WCH_PING_MS) {
        w->last_ping_ms = now;
        if (wch_ping(w) != 0)
            st = SDB_ERR_UNAVAILABLE;
        else
            st = sdb_changed(w->db); /* a reset during the ping is a RESYNC */
    }
    if (st == SDB_RESYNC) {
        atomic_fetch_add(&w->reconnects, 1);
        w->stale = 1;
    } else if (st == SDB_ROW) {
        atomic_fetch_add(&w->notes, 1);
        if (wch_reload(w) != 0)
            w->stale = 1;
    } else if (st < 0) {
        w->stale = 1;
        atomic_store(&w->healthy, 0);
        return 200; /* the next pass tries to reconnect */
    }
    if (w->stale) {
        if (wch_reload(w) != 0) {
            atomic_store(&w->healthy, 0);
            return 200;
        }
        w->stale = 0;
    }
    atomic_store(&w->healthy, 1);
    return 0;
}

static const tick_ops wch_ops = {.pass = wch_pass};

int wch_start(const wch_options *o, wch **out, char *err, size_t errlen)
{
    *out = NULL;
    if (o->database == NULL || !sdb_is_postgres(o->database))
        return 0;
    wch *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        snprintf(err, errlen, "watch: out of memory");
        return -1;
    }
    w->o = *o;
    snprintf(w->database, sizeof(w->database), "%s", o->database);
    w->o.database = w->database;
    if (sdb_open(w->database, 0, 5000, &w->db, err, errlen) != SDB_OK)
        goto fail;
    for (size_t i = 0; i < sizeof(wch_channels) / sizeof(wch_channels[0]); i++)
        if (sdb_listen(w->db, wch_channels[i], err, errlen) != SDB_OK)
            goto fail;
    /* Listening now: anything committed from here on wakes the thread; what was committed
     * before the LISTEN is in this reload. */
    if (wch_reload(w) != 0) {
        snprintf(err, errlen, "watch: the first reload from the database failed");
        goto fail;
    }
    atomic_store(&w->healthy, 1);
    w->last_ping_ms = clk_now_ms();
    int rc = tick_start(&w->t, &wch_ops, w);
    if (rc != 0) {
        snprintf(err, errlen, "watch: cannot start its thread: %s", strerror(rc));
        goto fail;
    }
    *out = w;
    return 0;
fail:
    sdb_close(w->db);
    free(w);
    return -1;
}

void wch_stop(wch *w)
{
    if (w == NULL)
        return;
    tick_stop(&w->t);
    sdb_close(w->db);
    free(w);
}

int wch_healthy(wch *w)
{
    return w == NULL || atomic_load(&w->healthy);
}

void wch_read(wch *w, wch_counts *out)
{
    memset(out, 0, sizeof(*out));
    if (w == NULL)
        return;
    out->notes = atomic_load(&w->notes);
    out->reloads = atomic_load(&w->reloads);
    out->reconnects = atomic_load(&w->reconnects);
}
