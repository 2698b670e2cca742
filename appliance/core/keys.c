/* ck: key lifecycle. See keys.h. */
#include "appliance/core/keys.h"

#include "appliance/core/reconcile.h"
#include "jose/jose.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define CK_CREATE_TRIES 4

/* Test-only crash points (keys.h): compiled in only with -DSIGND_TEST_HOOKS (the test
 * build, $(BUILD)/testbin); a production build has none (make layers checks). */
static void ck_fault_point(const char *name)
{
#ifdef SIGND_TEST_HOOKS
    const char *want = getenv("SIGND_FAULT");
    if (want != NULL && strcmp(want, name) == 0) {
        fprintf(stderr, "signd: fault point %s reached: killing self\n", name);
        raise(SIGKILL);
    }
#else
    (void)name;
#endif
}

static void ck_publish(const ck_env *e)
{
    if (e->pub != NULL)
        pub_refresh(e->pub);
}

/* Destroys a generated key whose row was never written; if the keeper cannot do it now,
 * it is done once the keeper answers again (reconcile.h). */
static void ck_destroy_unrecorded(const ck_env *e, const sk_kid *kid)
{
    reg_pending_drop(e->reg, kid);
    sk_status st = kp_destroy(e->kp, kid);
    if (st != SK_OK && st != SK_ERR_KEY_NOT_FOUND)
        rec_defer_destroy(kid);
}

/* Reserves a slot and generates a key pair of `bits` under a fresh random kid in the
 * token, filling *k (kid, state active, bits, label, created_at now, n_b64, e_b64) and
 * *pub. CK_OK with one reservation held and the object in the token: the caller inserts
 * the row (reg_insert or reg_rotate, which consume the reservation) or destroys the object.
 * Otherwise nothing is held and the status says why. */
static ck_status ck_make(const ck_env *e, unsigned bits, const char *label, int64_t now, reg_key *k,
                         sk_pubkey *pub, ck_fail *why)
{
    if (reg_reserve(e->reg) != REG_OK)
        return CK_ERR_NO_SLOT;
    memset(k, 0, sizeof(*k));
    sk_status st = SK_ERR_KEY_EXISTS;
    /* A random 128-bit kid collides only by accident of a broken RNG; retry anyway. */
    for (int i = 0; i < CK_CREATE_TRIES && st == SK_ERR_KEY_EXISTS; i++) {
        if (getrandom(k->kid.b, sizeof(k->kid.b), 0) != sizeof(k->kid.b))
            continue;
        /* Pending first: the keeper generates only under a kid the registry holds as
         * pending (keeperd.h), and never under one that ever had a row. */
        reg_status ps = reg_pending_add(e->reg, &k->kid, now);
        if (ps == REG_ERR_EXISTS)
            continue;
        if (ps != REG_OK) {
            reg_unreserve(e->reg);
            /* The cluster-wide count (registry.h): other nodes' keys fill the slots. */
            return ps == REG_ERR_LIMIT ? CK_ERR_NO_SLOT : CK_ERR_KID;
        }
        st = kp_generate_attrs(e->kp, &k->kid, bits, pub, &k->token_attrs);
        if (st != SK_OK)
            reg_pending_drop(e->reg, &k->kid);
    }
    if (st != SK_OK) {
        /* The keeper died or went silent mid-generation (or past its deadline): the object
         * may exist, and its row never will. */
        if (st == SK_ERR_DEVICE || st == SK_ERR_TIMEOUT)
            rec_defer_destroy(&k->kid);
        reg_unreserve(e->reg);
        why->st = st;
        return CK_ERR_TOKEN;
    }
    ck_fault_point("after_generate");
    k->state = REG_ACTIVE;
    k->bits = pub->bits;
    k->created_at = now;
    snprintf(k->label, sizeof(k->label), "%s", label);
    if (jose_b64url_encode(pub->n, pub->n_len, k->n_b64, sizeof(k->n_b64)) == 0 ||
        jose_b64url_encode(pub->e, pub->e_len, k->e_b64, sizeof(k->e_b64)) == 0) {
        reg_unreserve(e->reg);
        ck_destroy_unrecorded(e, &k->kid);
        return CK_ERR_INTERNAL;
    }
    return CK_OK;
}

ck_status ck_create(const ck_env *e, unsigned bits, const char *label, int64_t now, reg_key *out,
                    sk_pubkey *pub, ck_fail *why)
{
    ck_status cs = ck_make(e, bits, label, now, out, pub, why);
    if (cs != CK_OK)
        return cs;
    if (reg_insert(e->reg, out) != REG_OK) {
        /* Never acknowledged: the key must not outlive the failed row. */
        reg_pending_drop(e->reg, &out->kid);
        kp_destroy(e->kp, &out->kid);
        return CK_ERR_STORAGE;
    }
    ck_publish(e);
    return CK_OK;
}

ck_status ck_rotate(const ck_env *e, const sk_kid *kid, const char *label, int64_t now,
                    int64_t retire_at, reg_key *was, reg_key *made, sk_pubkey *pub, ck_fail *why)
{
    /* Checked before generating (a second of token time for RSA-2048), and again by
     * reg_rotate under the writer lock, since a revocation or another rotation may win the
     * race meanwhile. */
    reg_key old;
    if (reg_get(e->reg, kid, &old) != REG_OK)
        return CK_ERR_NOT_FOUND;
    if (old.state != REG_ACTIVE) {
        why->state = old.state;
        return CK_ERR_STATE;
    }
    reg_key k;
    ck_status cs = ck_make(e, old.bits, label != NULL ? label : old.label, now, &k, pub, why);
    if (cs != CK_OK)
        return cs;
    reg_status rs = reg_rotate(e->reg, kid, &k, retire_at, was, made);
    if (rs != REG_OK) {
        /* Never acknowledged: the successor must not outlive the failed rotation. */
        ck_destroy_unrecorded(e, &k.kid);
        if (rs == REG_ERR_STATE && reg_get(e->reg, kid, &old) == REG_OK) {
            why->state = old.state;
            return CK_ERR_STATE;
        }
        if (rs == REG_ERR_NOT_FOUND)
            return CK_ERR_NOT_FOUND;
        if (rs == REG_ERR_LIMIT)
            return CK_ERR_LIMIT;
        return CK_ERR_STORAGE;
    }
    ck_publish(e);
    return CK_OK;
}

ck_status ck_revoke(const ck_env *e, const sk_kid *kid, const char *reason, int64_t now,
                    reg_key *out)
{
    /* Durable first, then published, then the private key object destroyed. The answer
     * does not wait for the destroy: once the row says revoked the keeper signs nothing
     * for the kid, so the object is already unusable, and a stalled token must not hold a
     * revocation's answer. The destroyer (reconcile.h) does it at once, or once the keeper
     * answers again, or reconcile at the next start. */
    reg_status rs = reg_revoke(e->reg, kid, reason, now, out);
    if (rs == REG_ERR_NOT_FOUND)
        return CK_ERR_NOT_FOUND;
    if (rs != REG_OK)
        return CK_ERR_STORAGE;
    ck_publish(e);
    ck_fault_point("after_revoke_commit");
    rec_defer_destroy(kid);
    return CK_OK;
}

int ck_may_use(reg *rg, const cred_record *caller, const sk_kid *kid)
{
    if (caller == NULL || caller->role != CRED_ROLE_SIGNER || cred_may_use_kid(caller, kid))
        return 1;
    /* A successor inherits its predecessors' signers: an admin rotating a key must not cut
     * off the app servers scoped to it. Only backwards (a credential scoped to the new key
     * gains nothing on the old one, which signs nothing anyway), and bounded. */
    reg_key k;
    sk_kid cur = *kid;
    for (int i = 0; i < CK_LINEAGE_MAX && reg_get(rg, &cur, &k) == REG_OK && k.has_predecessor;
         i++) {
        if (cred_may_use_kid(caller, &k.predecessor))
            return 1;
        cur = k.predecessor;
    }
    return 0;
}

/* At most CRED_KIDS_MAX * CK_LINEAGE_MAX lookups in memory, one per kid while nothing
 * rotated. */
int ck_newest_usable(reg *rg, const cred_record *caller, sk_kid *out)
{
    reg_key k;
    if (caller == NULL || caller->all_kids) {
        if (reg_newest_active(rg, &k) != REG_OK)
            return -1;
        *out = k.kid;
        return 0;
    }
    int found = 0;
    int64_t newest = 0;
    for (size_t i = 0; i < caller->n_kids; i++) {
        if (reg_get(rg, &caller->kids[i], &k) != REG_OK)
            continue;
        /* Only the last of a lineage can be active: every key before it was rotated. */
        for (int d = 0; d < CK_LINEAGE_MAX && k.has_successor; d++) {
            sk_kid next = k.successor;
            if (reg_get(rg, &next, &k) != REG_OK)
                break;
        }
        if (k.state != REG_ACTIVE)
            continue;
        if (!found || k.created_at >= newest) {
            found = 1;
            newest = k.created_at;
            *out = k.kid;
        }
    }
    return found ? 0 : -1;
}

ck_status ck_signing_state(reg *rg, const sk_kid *kid, reg_state *state)
{
    reg_key k;
    if (reg_is_active(rg, kid))
        return CK_OK;
    /* A kid the mirror does not hold may have been made on another node a moment ago
     * (cluster mode): its note is on this handle's connection before the watcher has
     * reloaded. Looked at once, with no round trip when nothing arrived. */
    if (reg_get(rg, kid, &k) != REG_OK &&
        (reg_refresh_if_changed(rg) != REG_OK || reg_get(rg, kid, &k) != REG_OK))
        return CK_ERR_NOT_FOUND;
    if (k.state == REG_ACTIVE) /* inserted between the two reads */
        return CK_OK;
    *state = k.state;
    return CK_ERR_STATE;
}
