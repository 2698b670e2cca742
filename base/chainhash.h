/*
 * chainhash: the audit chain's one hash rule, a pure function (no SQLite, no token), so
 * that the chain's storage (appliance/store/chain.h), the keeper's walk and the export's
 * verifier (appliance/core/auditverify.h, linked by signdctl) hash with the same code.
 *
 * hash = SHA-256(prev_hash as 32 bytes || canonical(event)), where canonical(event) is the
 * compact JSON object
 *   {"action":...,"actor":...,"details":{...},"kid":...,"seq":N,"time":T}
 * with keys sorted at every level, no spaces, non-ASCII escaped (\uXXXX) — jansson's
 * JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII — and prev_hash of seq 1 is 64 zeros.
 *
 * Thread safety: every function may be called from any thread.
 */
#ifndef BASE_CHAINHASH_H
#define BASE_CHAINHASH_H

#include <jansson.h>
#include <stdint.h>

#define CHASH_HEX 64 /* lowercase hex digits of a hash */
/* The JSON form of a canonical event, and of whatever is hashed or exported beside it. */
#define CHASH_JSON_FLAGS (JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII)

/* Whether details may be hashed: nested at most 8 deep and without reals (their text form
 * is not canonical across implementations). 1 or 0. */
int chash_details_ok(json_t *details);

/* SHA-256(prev_hex as 32 bytes || canonical(event)) as 64 lowercase hex into out. details
 * (a JSON object) is borrowed. 0, or -1 (prev_hex not 64 hex digits, a missing field, out
 * of memory). */
int chash_event(const char *prev_hex, uint64_t seq, int64_t time, const char *actor,
                const char *action, const char *kid, json_t *details, char out[CHASH_HEX + 1]);

#endif
