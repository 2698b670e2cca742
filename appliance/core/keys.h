/*
 * ck: key lifecycle. A key is created, rotated and revoked here, in the one order that
 * keeps the token, the registry and the published documents in agreement whatever fails
 * on the way:
 *   create: reserve a slot (max_active_keys), add a fresh random kid as pending (the
 *           keeper generates only under a pending kid), GENERATE in the token through the
 *           keeper, then insert the row (or destroy the object: a key is never kept
 *           without its row), then publish;
 *   rotate: the same for the successor, committed with the old key turning retiring;
 *   revoke: durable first (the row, recorded with the calling thread's audit actor), then
 *           published, then the private key object destroyed off the caller's path
 *           (reconcile.h's destroyer; a failure is left to reconcile at the next start).
 * The registry writes each change's audit event in the same transaction (registry.h).
 * Used by the HTTP handlers (api/keys.c) and the rotation scheduler (rotation.h); it
 * knows nothing of HTTP, its errors are ck_status values.
 *
 * Test-only crash points: with SIGND_FAULT=after_generate or after_revoke_commit in the
 * environment the process kills itself with SIGKILL there, so tests can prove reconcile
 * repairs what it left.
 *
 *   ck_env ce = {.reg = rg, .kp = k, .pub = p};
 *   ck_fail why;
 *   reg_key key; sk_pubkey pk;
 *   if (ck_create(&ce, 3072, "label", now, &key, &pk, &why) != CK_OK) ... why ...
 */
#ifndef APPLIANCE_CORE_KEYS_H
#define APPLIANCE_CORE_KEYS_H

#include "appliance/core/publish.h"
#include "appliance/kproto/keeper.h"
#include "appliance/store/credentials.h"
#include "appliance/store/registry.h"
#include "base/signkey.h"

#include <stdint.h>

/* How many rotations a signer's scope follows (a predecessor's signers may use its
 * successors): far above any real lineage, and a bound on the walk whatever the file
 * holds. */
#define CK_LINEAGE_MAX 32

/* What the lifecycle works on (borrowed). pub may be NULL: nothing is published. */
typedef struct {
    reg *reg;
    kp *kp;
    pub *pub;
} ck_env;

typedef enum {
    CK_OK = 0,
    CK_ERR_NOT_FOUND, /* no key with this kid */
    CK_ERR_STATE,     /* the key is not active (ck_fail.state says what it is) */
    CK_ERR_NO_SLOT,   /* max_active_keys keys hold the token: nothing reserved */
    CK_ERR_LIMIT,     /* the registry found the limit reached when committing a rotation */
    CK_ERR_KID,       /* the registry refused the new kid as pending */
    CK_ERR_TOKEN,     /* the keeper refused or failed (ck_fail.st) */
    CK_ERR_INTERNAL,  /* the public key does not fit a row */
    CK_ERR_STORAGE,   /* the registry refused the row (the new key, or the rotation) */
} ck_status;

/* Why a call failed, beyond its ck_status. */
typedef struct {
    sk_status st;    /* CK_ERR_TOKEN: the keeper's answer */
    reg_state state; /* CK_ERR_STATE: the key's state */
} ck_fail;

/* Creates an active key of `bits` (2048, 3072 or 4096) labelled label, created at now:
 * CK_OK with *out (the row) and *pub (its public key), or the error and *why; nothing is
 * left behind (a generated object whose row failed is destroyed, now or by the
 * destroyer). */
ck_status ck_create(const ck_env *e, unsigned bits, const char *label, int64_t now, reg_key *out,
                    sk_pubkey *pub, ck_fail *why);

/* Rotates kid: a successor of kid's size labelled label (NULL: kid's label) becomes
 * active and kid retiring until retire_at. CK_OK with *was (kid's row now), *made (the
 * successor's) and *pub, or the error and *why (CK_ERR_NOT_FOUND, CK_ERR_STATE, then as
 * ck_create, CK_ERR_LIMIT and CK_ERR_STORAGE); no successor is left behind. */
ck_status ck_rotate(const ck_env *e, const sk_kid *kid, const char *label, int64_t now,
                    int64_t retire_at, reg_key *was, reg_key *made, sk_pubkey *pub, ck_fail *why);

/* Revokes kid with reason at now (the order above). CK_OK and *out (may be NULL: the row
 * as revoked), CK_ERR_NOT_FOUND, or CK_ERR_STORAGE (reg_last_error says why). Revoking a
 * revoked key answers its row as it is. */
ck_status ck_revoke(const ck_env *e, const sk_kid *kid, const char *reason, int64_t now,
                    reg_key *out);

/* ---- who signs with what ----------------------------------------------------------------- */

/* 1 when caller may use kid: no caller, a caller that is not a signer, or a signer whose
 * scope holds kid or one of kid's predecessors (rotating a key does not lock out the
 * signers of the key it replaces); else 0. */
int ck_may_use(reg *rg, const cred_record *caller, const sk_kid *kid);

/* The newest active key caller may use: the registry's newest for no caller or an
 * unscoped one, else the newest active one among its kids and their successors. 0 and
 * *out, or -1 when there is none. */
int ck_newest_usable(reg *rg, const cred_record *caller, sk_kid *out);

/* Whether kid may sign now: CK_OK (active), CK_ERR_NOT_FOUND, or CK_ERR_STATE with *state
 * (revoked, retiring, broken). */
ck_status ck_signing_state(reg *rg, const sk_kid *kid, reg_state *state);

#endif
