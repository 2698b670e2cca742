/* rec: start-up reconciliation of token and registry. See reconcile.h. */
#include "appliance/reconcile.h"

#include "appliance/audit.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REC_LIST_MAX 8192

static int rec_kid_cmp(const void *a, const void *b)
{
    return memcmp(((const hsm_key_entry *)a)->kid.b, ((const hsm_key_entry *)b)->kid.b,
                  HSM_KID_LEN);
}

int rec_run(kp *k, reg *r, FILE *log, rec_report *out)
{
    memset(out, 0, sizeof(*out));
    hsm_key_entry *objs = calloc(REC_LIST_MAX, sizeof(*objs));
    if (objs == NULL)
        return -1;
    size_t n = 0;
    hsm_status st = kp_list(k, objs, REC_LIST_MAX, &n);
    if (st != HSM_OK || n > REC_LIST_MAX) {
        fprintf(log, "signd: reconcile: cannot list the token: %s\n",
                st != HSM_OK ? hsm_strerror(st) : "more objects than the reconcile bound");
        free(objs);
        return -1;
    }
    int rc = 0;
    char hex[2 * HSM_KID_LEN + 1];
    for (size_t i = 0; i < n; i++) {
        /* A reserved kid (the audit key, keeper.h) is the appliance's own and never has a
         * registry row: it is no orphan, and destroying it would cut the audit trail's
         * checkpoints off from their key. (The keeper would refuse anyway.) */
        if (kp_is_reserved(&objs[i].kid))
            continue;
        reg_key row;
        int known = reg_get(r, &objs[i].kid, &row) == REG_OK;
        if (known && row.state != REG_REVOKED)
            continue;
        hsm_kid_hex(&objs[i].kid, hex);
        st = kp_destroy(k, &objs[i].kid);
        if (st != HSM_OK && st != HSM_ERR_KEY_NOT_FOUND) {
            fprintf(log, "signd: reconcile: cannot destroy kid %s: %s\n", hex, hsm_strerror(st));
            rc = -1;
            continue;
        }
        /* The token changed with no row changing: its own event (actor "system"). */
        if (known) {
            out->revoked_destroyed++;
            fprintf(log, "signd: reconcile: destroyed the object of revoked kid %s\n", hex);
            reg_audit(r, (int64_t)time(NULL), AUDIT_KEY_DESTROYED, &objs[i].kid,
                      json_pack("{s:s}", "why", "revoked, its object survived a crash"));
        } else {
            out->orphans_destroyed++;
            fprintf(log, "signd: reconcile: destroyed kid %s: on the token, not in the registry\n",
                    hex);
            reg_audit(r, (int64_t)time(NULL), AUDIT_KEY_ORPHAN, &objs[i].kid,
                      json_pack("{s:s}", "why", "on the token, never recorded in the registry"));
        }
    }
    /* Active rows whose private half is gone can never sign again; retiring ones too must
     * hold their object (it is revoked and destroyed at retire_at, not before), so a
     * missing one is as broken, and leaves the JWKS. */
    qsort(objs, n, sizeof(*objs), rec_kid_cmp);
    size_t cap = reg_count(r, REG_ACTIVE) + reg_count(r, REG_RETIRING);
    reg_key *rows = calloc(cap + 1, sizeof(*rows));
    if (rows == NULL) {
        free(objs);
        return -1;
    }
    size_t m = reg_list(r, REG_LIST_LIVE, rows, cap + 1);
    for (size_t i = 0; i < m && i <= cap; i++) {
        hsm_key_entry probe = {.kid = rows[i].kid};
        hsm_key_entry *hit = bsearch(&probe, objs, n, sizeof(*objs), rec_kid_cmp);
        if (hit != NULL && hit->has_private)
            continue;
        hsm_kid_hex(&rows[i].kid, hex);
        if (reg_mark_broken(r, &rows[i].kid) != REG_OK) {
            rc = -1;
            continue;
        }
        out->marked_broken++;
        fprintf(log,
                "signd: reconcile: kid %s is %s but its key is missing from the token: "
                "marked broken\n",
                hex, reg_state_name(rows[i].state));
    }
    free(rows);
    free(objs);
    return rc;
}

/* ---- deferred destroys -------------------------------------------------------------------- */

static pthread_mutex_t rec_defer_mu = PTHREAD_MUTEX_INITIALIZER;
static hsm_kid rec_deferred[REC_DEFER_MAX];
static size_t rec_deferred_n;

void rec_defer_destroy(const hsm_kid *kid)
{
    pthread_mutex_lock(&rec_defer_mu);
    int known = 0;
    for (size_t i = 0; i < rec_deferred_n && !known; i++)
        known = memcmp(rec_deferred[i].b, kid->b, HSM_KID_LEN) == 0;
    int full = !known && rec_deferred_n == REC_DEFER_MAX;
    if (!known && !full)
        rec_deferred[rec_deferred_n++] = *kid;
    pthread_mutex_unlock(&rec_defer_mu);
    if (full) {
        char hex[2 * HSM_KID_LEN + 1];
        hsm_kid_hex(kid, hex);
        fprintf(stderr, "signd: kid %s: too many deferred destroys, left to the next start\n", hex);
    }
}

size_t rec_retry_deferred(kp *k, FILE *log)
{
    /* A copy, so that no keeper round trip runs under the mutex request threads take. */
    hsm_kid todo[REC_DEFER_MAX];
    pthread_mutex_lock(&rec_defer_mu);
    size_t n = rec_deferred_n;
    memcpy(todo, rec_deferred, n * sizeof(*todo));
    pthread_mutex_unlock(&rec_defer_mu);
    if (n == 0)
        return 0;
    char hex[2 * HSM_KID_LEN + 1];
    for (size_t i = 0; i < n; i++) {
        hsm_status st = kp_destroy(k, &todo[i]);
        if (st != HSM_OK && st != HSM_ERR_KEY_NOT_FOUND)
            continue;
        if (st == HSM_OK) {
            hsm_kid_hex(&todo[i], hex);
            fprintf(log, "signd: destroyed kid %s, deferred while the keeper was away\n", hex);
        }
        pthread_mutex_lock(&rec_defer_mu);
        for (size_t j = 0; j < rec_deferred_n; j++) {
            if (memcmp(rec_deferred[j].b, todo[i].b, HSM_KID_LEN) == 0) {
                rec_deferred[j] = rec_deferred[--rec_deferred_n];
                break;
            }
        }
        pthread_mutex_unlock(&rec_defer_mu);
    }
    pthread_mutex_lock(&rec_defer_mu);
    size_t left = rec_deferred_n;
    pthread_mutex_unlock(&rec_defer_mu);
    return left;
}
