/*
 * wch: how one node of a cluster learns what the others changed. On a PostgreSQL store
 * every write that other nodes must see sends a note (sdb_notify: "signd_keys",
 * "signd_credentials", "signd_tokens") at its COMMIT; this module keeps one connection
 * that LISTENs on the three channels, and on a note reloads the node's mirrors from the
 * tables (reg_refresh, cred_refresh, tks_refresh), which moves their generations: the
 * JWKS, the feed, the status lists and the event stream follow from those, as they do
 * for this node's own writes. No request waits for it and nothing polls a table on the
 * hot path: the thread sleeps in poll() on the connection's socket.
 *
 * A lost connection loses the notes sent meanwhile, so after every reconnection the
 * thread reloads all three mirrors before it reports healthy again. While the database
 * cannot be reached, wch_healthy is 0: /readyz fails (the load balancer routes around the
 * node) until the reload after the server's return has finished. Every WCH_PING_MS the
 * thread also asks the server something, so a silent loss is seen within that bound.
 *
 * On SQLite (one node) wch_start starts nothing and wch_healthy is always 1: the node's
 * own writes update its mirrors.
 *
 * Thread safety: wch_healthy and wch_counts from any thread.
 */
#ifndef APPLIANCE_WATCH_H
#define APPLIANCE_WATCH_H

#include "appliance/store/credentials.h"
#include "appliance/store/registry.h"
#include "appliance/store/tokstate.h"

#include <stddef.h>
#include <stdint.h>

#define WCH_WAIT_MS 250  /* the longest sleep between two looks at stop */
#define WCH_PING_MS 1000 /* a round trip at least this often while idle */

typedef struct {
    const char *database; /* the store's locator: a postgresql:// URI, or a file */
    reg *reg;
    cred_store *creds; /* NULL: not watched */
    tks *tks;          /* NULL: not watched */
} wch_options;

typedef struct wch wch;

/* Starts the watcher (PostgreSQL) or nothing (SQLite: *out NULL, 0). The first LISTEN is
 * done when it returns, so no note committed after wch_start is missed. 0, or -1 with
 * err set. */
int wch_start(const wch_options *o, wch **out, char *err, size_t errlen);
/* Stops the thread (within WCH_WAIT_MS and one reload). NULL: nothing. */
void wch_stop(wch *w);
/* 1 when the database is reachable and the mirrors are in step with it; NULL: 1. */
int wch_healthy(wch *w);

typedef struct {
    uint64_t notes;      /* wake-ups by a note */
    uint64_t reloads;    /* reloads of the mirrors */
    uint64_t reconnects; /* reloads after a lost connection */
} wch_counts;
void wch_read(wch *w, wch_counts *out);

#endif
