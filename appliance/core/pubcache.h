/*
 * pc: when to sign a public document again. The signed revocation feed and the token
 * status lists are signed in the token by the publication key (RSA-3072, and a list is
 * 128 KiB to deflate first), on requests nobody authenticates. This module is the one
 * rule that decides, for one cached copy, whether a request is served from it, signs a
 * new one, or is refused; the caller (core/publish.c) keeps the copies, the budget and the
 * signing. Pure: no clock, no lock, no allocation, so the rule is unit-tested alone
 * (tests/unit/test_pubcache.c).
 *
 * The rule, in order:
 *   1. a copy of the current content (version) younger than resign_after: serve it;
 *   2. otherwise a new copy is wanted. When nobody is signing one, the keeper has not
 *      failed within the last second (keeper_ok) and the public signing budget has a
 *      token (budget_ok): sign;
 *   3. otherwise a copy that is still valid (now < exp), even of older content: serve it.
 *      A verifier gets the newest thing the appliance signed; one that the event stream
 *      told of newer content fails closed by its own bound (signd-verify --behind-grace),
 *      not at this copy's exp;
 *   4. otherwise: wait for the thread that signs, or refuse (no budget: 503
 *      signing_budget_exhausted; keeper failing: 503 hsm_unavailable).
 *
 *   pc_entry e = {0};
 *   switch (pc_decide(&e, version, now, resign_after, keeper_ok, budget_ok)) { ... }
 */
#ifndef APPLIANCE_PUBCACHE_H
#define APPLIANCE_PUBCACHE_H

#include <stdbool.h>
#include <stdint.h>

/* What the caller knows of its one cached copy. */
typedef struct {
    bool has;         /* a signed copy is held */
    uint64_t version; /* the content it was signed from (the feed's seq, a list's revocations) */
    int64_t iat, exp; /* Unix seconds: signed at, valid until (exclusive) */
    bool signing;     /* another request is signing a new copy right now */
} pc_entry;

typedef enum {
    PC_SERVE,         /* the copy is current and fresh: serve it */
    PC_SIGN,          /* sign a new copy (and take a budget token first) */
    PC_SERVE_OLD,     /* serve the copy held: valid, but not current or not fresh */
    PC_WAIT,          /* another request signs and nothing valid is held: wait for it */
    PC_REFUSE_BUDGET, /* nothing valid held and no budget: 503 signing_budget_exhausted */
    PC_REFUSE_KEEPER, /* nothing valid held and the keeper just failed: 503 */
} pc_action;

/* The rule above for entry e, whose current content is version, at Unix second now.
 * resign_after: seconds after which a copy of unchanged content is signed again (> 0).
 * keeper_ok: no signing failed in the last second. budget_ok: the budget has a token. */
pc_action pc_decide(const pc_entry *e, uint64_t version, int64_t now, int64_t resign_after,
                    bool keeper_ok, bool budget_ok);

/* "serve", "sign", "serve_old", "wait", "refuse_budget", "refuse_keeper". */
const char *pc_action_name(pc_action a);

#endif
