/*
 * reg: the key registry. The appliance's record of every key (kid), its state, and every
 * revocation, kept in a store (sdb.h: one SQLite file per node, or one PostgreSQL database
 * for a cluster of nodes) and mirrored in memory so that the request path never touches
 * the database.
 *
 * What it owns:
 *  - one store connection (SQLite: WAL, synchronous=FULL so a COMMIT is fsynced before it
 *    returns, foreign_keys=ON, a busy_timeout for other connections to the same file),
 *    used only under the writer mutex. Every write transaction takes SDB_LOCK_REGISTRY,
 *    so the registry's writers are serial across every node of a cluster. Two tables: `keys` (one
 *    row per kid, state as TEXT) and `revocations` (one row per revoked kid, `seq` an
 *    AUTOINCREMENT key, so it rises strictly and is never reused, even after deletes).
 *    The schema version is PRAGMA user_version (REG_SCHEMA_VERSION); a newer file is
 *    refused, missing tables are created, and an older one is migrated in place inside
 *    the open's one schema transaction (version 1 -> 2: the rotation columns retire_at,
 *    successor and predecessor, added with ALTER TABLE: the state column has no CHECK, so
 *    no table rebuild is needed and every row keeps its id). pending_keys' columns node
 *    and started_ms (issue 20) are added when missing, with defaults, without a version
 *    bump (an older build's INSERT still works). PostgreSQL: the same tables in its
 *    dialect, created under SDB_LOCK_SCHEMA, the version in schema_versions('registry'),
 *    and the revocations' seq from the counter row counters('revocations'), bumped inside
 *    the registry's write transaction: one sequence for the cluster, no gap, no
 *    duplicate.
 *  - cluster semantics (PostgreSQL; they hold on SQLite too, where a second handle on
 *    the same file plays the second node): the key limit is counted in the database
 *    inside the locked transaction (active + retiring rows + every node's live pending
 *    records), each committed change of a key or revocation sends the note
 *    `signd_keys` (payload the kid in hex, "" for a subject revocation), reg_refresh
 *    reloads the mirror when another node's note arrives, and a write that finds the
 *    database ahead of the mirror (another node revoked or rotated the key first)
 *    refreshes and decides again.
 *  - an in-memory mirror of every row: keys in an array ordered by (created_at, kid) with
 *    a hash index kid -> row, the revocations in an array ordered by seq, per-state counts
 *    and the newest active key. Readers take a pthread rwlock for reading only.
 *  - the slot count for creates: keys that hold an object in the token (active and
 *    retiring) plus reservations, never above max_active.
 *
 * Locks, always taken in this order: the writer mutex (SQLite and every change), then the
 * mirror rwlock (for writing, only for the moment a committed change is copied into the
 * mirror), then the slot mutex (reserve/unreserve take only this one). A write commits to
 * SQLite first and changes the mirror only once the commit returned, so a reader never
 * sees a change that is not durable.
 *
 * Invariants: a row is in state 'revoked' exactly when it has a revocations row; active
 * + retiring keys + outstanding reservations <= max_active (a retiring key still holds
 * its object in the token); a retiring row has retire_at and a successor; a.successor = b
 * exactly when b.predecessor = a (both written in one transaction, never cleared); the
 * newest active key is never a retiring one (retiring is a state of its own: REG_ACTIVE
 * counts, lists and checks never include it); reg_generation() changes after, never
 * before, the mirror changed. Other registry handles (other processes, other nodes) may
 * write the same tables: the database decides, and this handle's mirror follows at its
 * next write or reg_refresh.
 *
 * Thread safety: every function but reg_open and reg_close may be called from any number
 * of threads at once. reg_close must run after every other caller has stopped.
 *
 * States and their moves:
 *
 *              reg_rotate              reg_revoke (the scheduler at retire_at, or DELETE)
 *   active --------------> retiring -----------------------------------> revoked
 *     |  \                    |                                           ^  ^
 *     |   '----------------------------------- reg_revoke ---------------'  |
 *     |  reg_mark_broken      | reg_mark_broken                              |
 *     v                       v                                              |
 *   broken <------------------'                                              |
 *     '-------------------------------- reg_revoke -------------------------'
 *
 * A retiring key was rotated: its successor (a new active row) signs from then on; it
 * signs nothing more but stays published (its public key verifies the tokens already out)
 * until retire_at, when the front's rotation scheduler revokes it. Broken: its object is
 * missing from the token (a broken key may still be revoked, so that verifiers drop it).
 * Revoked is final: marking a revoked key broken is REG_ERR_STATE (its object is meant to
 * be gone from the token), and a revoked row cannot be deleted (its revocation is already
 * published). Only an active key can be rotated (REG_ERR_STATE otherwise).
 *
 *   reg *r;
 *   if (reg_open("data/appliance.db", 1000, &r) != REG_OK)
 *       fprintf(stderr, "%s\n", reg_last_error());
 */
#ifndef APPLIANCE_REGISTRY_H
#define APPLIANCE_REGISTRY_H

#include "base/signkey.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define REG_SCHEMA_VERSION 2 /* 2: rotation (retire_at, successor, predecessor) */
#define REG_LABEL_MAX 128    /* bytes, without the NUL */
#define REG_REASON_MAX 256   /* bytes, without the NUL */
#define REG_N_B64_MAX 700    /* base64url modulus of RSA-4096 is 683 characters, with NUL */
#define REG_E_B64_MAX 16
#define REG_BUSY_TIMEOUT_MS 5000
#define REG_NODE_MAX 63 /* bytes of a node name (reg_set_node), without the NUL */
/* A pending record older than this is an orphan (its create died): it holds no slot and
 * protects no object from reconcile. Far above any key generation. */
#define REG_PENDING_ORPHAN_MS (10 * 60 * 1000)

typedef enum {
    REG_OK = 0,
    REG_ERR_NOT_FOUND, /* no row with this kid (or no active key at all) */
    REG_ERR_EXISTS,    /* a row with this kid already exists */
    REG_ERR_LIMIT,     /* active + retiring keys + reservations reached max_active */
    REG_ERR_STATE,     /* the key's state does not allow this move */
    REG_ERR_INVALID,   /* a caller error: a string too long or unterminated, a bad argument */
    REG_ERR_IO,        /* SQLite failed, or the file is not a registry: see reg_last_error() */
    REG_ERR_COUNT_
} reg_status;

typedef enum {
    REG_ACTIVE = 0,
    REG_REVOKED,
    REG_BROKEN,
    REG_RETIRING, /* rotated: published, signs nothing, revoked at retire_at */
    REG_STATE_COUNT_
} reg_state;

/* reg_list's filter for the keys verifiers need and the token must hold: active and
 * retiring (the JWKS, reconcile). */
#define REG_LIST_LIVE (-2)

typedef struct {
    sk_kid kid;
    reg_state state;
    unsigned bits;
    char label[REG_LABEL_MAX + 1];
    int64_t created_at; /* unix seconds */
    /* Set only when state is REG_REVOKED; 0 and "" otherwise. */
    int64_t revoked_at; /* unix seconds */
    char reason[REG_REASON_MAX + 1];
    uint64_t revocation_seq;
    /* Rotation. retire_at: when a retiring key is (or was to be) revoked, unix seconds; 0
     * for a key never rotated. successor / predecessor: the key that replaced this one /
     * the one this key replaced, when has_successor / has_predecessor. Kept after the key
     * leaves retiring, so the lineage stays readable. */
    int64_t retire_at;
    int has_successor, has_predecessor;
    sk_kid successor, predecessor;
    /* The public key, base64url without padding, so JWKS needs no token. */
    char n_b64[REG_N_B64_MAX];
    char e_b64[REG_E_B64_MAX];
    /* What the token holds for the private half, read back (base/signkey.h SK_ATTR_*); 0
     * when never read (a key made before the appliance recorded it: reconcile fills it in
     * through reg_set_token_attrs). reg_insert stores the caller's value. */
    sk_attrs token_attrs;
} reg_key;

typedef struct {
    uint64_t seq;
    sk_kid kid;
    int64_t revoked_at;
    char reason[REG_REASON_MAX + 1];
} reg_revocation;

/* A subject revocation: every token with this sub and an iat before `before` is revoked.
 * Its seq is taken from the same sequence as the key revocations (reg_revocation_seq), so
 * the feed's seq and the event stream's ids cover both. */
#define REG_SUB_MAX 256 /* bytes of a subject, without the NUL (a token's sub, API_SUB_MAX) */
typedef struct {
    uint64_t seq;
    char sub[REG_SUB_MAX + 1];
    int64_t before;     /* unix seconds: tokens with iat < before are revoked */
    int64_t revoked_at; /* unix seconds */
} reg_subject;

typedef struct reg reg;

/* "active", "revoked", "broken", "retiring"; "unknown" for anything else. The same strings
 * are the state column in SQL. */
const char *reg_state_name(reg_state s);

/* The inverse of reg_state_name: 0 and *out set, or -1 for any other string (NULL too). */
int reg_state_parse(const char *s, reg_state *out);

/* A short English phrase for a status, never NULL. */
const char *reg_strerror(reg_status st);

/* The message of the last REG_ERR_IO (or REG_ERR_INVALID from reg_open) returned to the
 * calling thread: names the file, the step and SQLite's own message. "" if none. Each
 * such failure is also written to stderr. Thread-local, so it works for a failed reg_open
 * too, where there is no handle. */
const char *reg_last_error(void);

/* Opens (creating if absent, mode 0600, no symlink followed) the registry file at path,
 * sets WAL / synchronous=FULL / foreign_keys=ON / busy_timeout, creates the tables when
 * missing, and loads every row into memory (O(n), fine for 10,000+ rows). max_active
 * (>= 1) bounds the active keys for reg_reserve; rows already above it are loaded anyway.
 * REG_ERR_IO when the file is not SQLite, holds a newer schema or an inconsistent row;
 * REG_ERR_INVALID for a NULL or over-long path or max_active 0. *out is NULL on failure.
 *
 *   reg *r;
 *   if (reg_open(path, 1000, &r) != REG_OK) ... reg_last_error() ...
 */
reg_status reg_open(const char *path, unsigned max_active, reg **out);
/* path may be a PostgreSQL URI (sdb.h): then no file is checked or created, the tables
 * are created under SDB_LOCK_SCHEMA if missing, and pending records are kept (other nodes
 * may be creating). */

/* Names this node in its pending records (reconcile tells its own records from other
 * nodes'): at most REG_NODE_MAX printable bytes; "" is the default, gethostname().
 * REG_ERR_INVALID otherwise. Nodes on one host must be given distinct names. */
reg_status reg_set_node(reg *r, const char *name);

/* Reloads the mirror from the tables in one read transaction (O(n): about a millisecond
 * for 1,000 keys) and, when anything differs, swaps it in under the write lock, moves
 * reg_generation() and wakes reg_wait_change. This node's reservations are kept. What a
 * node calls when another node's note arrives. Safe against readers and writers of this
 * handle (takes the writer mutex first, as they do). REG_OK or REG_ERR_IO (the mirror is
 * then unchanged). */
reg_status reg_refresh(reg *r);

/* reg_refresh only if the database changed since the last call: PostgreSQL: a note on
 * `signd_keys` arrived on the handle's connection (its first call LISTENs and refreshes
 * once); SQLite: another connection committed to the file (data_version). Never blocks on
 * the network when nothing arrived. For a watcher that polls. */
reg_status reg_refresh_if_changed(reg *r);

/* Closes the connection and frees the mirror. NULL is a no-op. */
void reg_close(reg *r);

/* ---- creates: reserve a slot, generate the key (slow, outside any lock), insert ------- */

/* Takes one slot for a key about to be created: REG_OK, or REG_ERR_LIMIT when active keys
 * + reservations already reach max_active. Exactly max_active of any number of concurrent
 * reservations succeed. Each REG_OK must be followed by exactly one reg_insert or one
 * reg_unreserve.
 *
 *   if (reg_reserve(r) != REG_OK) return limit_reached;
 *   if (generate(&k) != 0) { reg_unreserve(r); return failed; }
 *   st = reg_insert(r, &k);    // the reservation is gone whatever st is
 */
reg_status reg_reserve(reg *r);

/* Gives back a slot taken by reg_reserve (a create that failed before reg_insert). */
void reg_unreserve(reg *r);

/* Inserts k as an active row, durably, and then into the mirror. Uses k's kid, bits,
 * label, created_at, n_b64, e_b64; state is forced to active and the revocation fields to
 * zero. Consumes one reservation whatever the result (so a failed insert needs no
 * unreserve); called with none outstanding it checks the limit itself (REG_ERR_LIMIT).
 * REG_ERR_EXISTS for a kid already present (in any state), REG_ERR_INVALID for an
 * unterminated label/n_b64/e_b64, REG_ERR_IO when SQLite fails (nothing changed then). */
reg_status reg_insert(reg *r, const reg_key *k);

/* Rotates old_kid to successor in ONE transaction: inserts successor as an active row
 * whose predecessor is old_kid (as reg_insert: its kid, bits, label, created_at, n_b64,
 * e_b64 are used, the rest forced), moves old_kid active -> retiring with retire_at and
 * successor set, and records key.created (the successor) and key.rotated (old_kid, with
 * the successor and retire_at) in the audit trail; fsynced, then both mirrored at once, so
 * no reader sees one half. Consumes one reservation whatever the result (as reg_insert);
 * the old key keeps its slot (it stays in the token until revoked). REG_ERR_NOT_FOUND for
 * an unknown old_kid, REG_ERR_STATE when it is not active (retiring, revoked, broken: the
 * caller reads its state for the reason), REG_ERR_EXISTS, REG_ERR_INVALID, REG_ERR_LIMIT
 * and REG_ERR_IO as reg_insert; nothing changed then. *old_out and *new_out (each may be
 * NULL) receive both rows as they stand afterwards.
 *
 *   if (reg_reserve(r) != REG_OK) return limit_reached;
 *   generate(&next);           // same bits as the old key
 *   st = reg_rotate(r, &old, &next, now + grace, &was, &now_active);
 */
reg_status reg_rotate(reg *r, const sk_kid *old_kid, const reg_key *successor, int64_t retire_at,
                      reg_key *old_out, reg_key *new_out);

/* ---- pending kids: what the keeper may generate under ---------------------------------- */

/* Records kid as pending (table pending_keys: kid, now, this node's name, the wall clock
 * in ms), durably, before a create or rotation asks the keeper to generate under it: the
 * keeper generates only for a pending kid that has no row (keeperd.h). reg_insert and
 * reg_rotate remove it in their own transaction; reg_open empties the table on SQLite.
 * The record is the create's slot for the whole cluster: inside the locked transaction
 * the active and retiring rows plus the live pending records (every node's) are counted,
 * REG_ERR_LIMIT when they reach max_active (reg_reserve is this node's fast pre-check).
 * REG_ERR_EXISTS when kid has a row or is pending already, REG_ERR_IO when the store
 * fails. */
reg_status reg_pending_add(reg *r, const sk_kid *kid, int64_t now);
/* Removes kid from the pending ones (a create that failed before its row, or an orphan
 * record reconcile destroyed the object of). */
void reg_pending_drop(reg *r, const sk_kid *kid);

/* Reconcile's question for an object under kid found in the token with no row in the
 * mirror, asked of the database (one statement: the row and the record of one moment):
 * REG_OK when it is an orphan (no row, and no pending record, or only an orphan one:
 * started before now_ms - REG_PENDING_ORPHAN_MS, or this node's own from before this
 * handle opened), REG_ERR_EXISTS when a row or a live pending record (a create under way
 * here or on another node) claims it, REG_ERR_IO. now_ms: the wall clock in ms. */
reg_status reg_kid_orphan(reg *r, const sk_kid *kid, int64_t now_ms);

/* ---- changes --------------------------------------------------------------------------- */

/* Revokes kid: in one transaction marks the row revoked and appends a revocations row
 * with the next seq; fsynced when it returns REG_OK. reason is "" when NULL and at most
 * REG_REASON_MAX bytes (else REG_ERR_INVALID). Idempotent: an already revoked kid is left
 * alone and its first record returned (same revoked_at, reason, seq). A broken or a
 * retiring key may be revoked (a retiring one before its retire_at too). Revoking an
 * active or retiring key frees its slot. *out (may be NULL) receives the row as
 * it stands afterwards. REG_ERR_NOT_FOUND for an unknown kid.
 *
 *   reg_key k;
 *   if (reg_revoke(r, &kid, "compromised", time(NULL), &k) == REG_OK) publish(k.revocation_seq);
 */
reg_status reg_revoke(reg *r, const sk_kid *kid, const char *reason, int64_t now, reg_key *out);

/* Revokes every token of subject sub with an iat before `before`: in one transaction
 * appends a subject_revocations row with the next revocation seq (shared with reg_revoke),
 * records subject.revoked (sub, before, revocation_seq) in the audit trail, and deletes the
 * rows whose before <= expired_before (no token they match is still alive: the caller
 * passes now - token_ttl_max); fsynced when it returns REG_OK, then mirrored. sub is 1 to
 * REG_SUB_MAX bytes (else REG_ERR_INVALID). Not idempotent: each call is a revocation of
 * its own, with its own seq. *out (may be NULL) receives the new row.
 *
 *   reg_subject s;
 *   if (reg_revoke_subject(r, "video-123", now, now, now - ttl_max, &s) == REG_OK) ...
 */
reg_status reg_revoke_subject(reg *r, const char *sub, int64_t before, int64_t now,
                              int64_t expired_before, reg_subject *out);

/* Copies the subject revocations whose before > expired_before (those that may still match
 * a live token), ascending by seq, at most cap of them, to out; returns how many match (may
 * exceed cap, as reg_list). Rows at or below expired_before may linger in the file until
 * the next reg_revoke_subject; they are never returned. */
size_t reg_subjects_live(reg *r, int64_t expired_before, reg_subject *out, size_t cap);

/* 1 when a subject revocation of sub has before > iat (the token sub/iat is revoked),
 * else 0. One pass over the mirror under the read lock: the redeem path's check. */
int reg_subject_revokes(reg *r, const char *sub, int64_t iat);

/* The subject revocations with seq > after, ascending by seq (the event stream's replay),
 * at most cap, to out; returns how many match (may exceed cap). */
size_t reg_subjects_after(reg *r, uint64_t after, reg_subject *out, size_t cap);

/* active or retiring -> broken (its key is missing from the token); frees its slot. A
 * retiring key that breaks is no longer scheduled (it is no longer published either).
 * Already broken: REG_OK, nothing changes. Revoked: REG_ERR_STATE. Unknown:
 * REG_ERR_NOT_FOUND. */
reg_status reg_mark_broken(reg *r, const sk_kid *kid);

/* Records the token's attributes of kid's private half (SK_ATTR_READ set) where none is
 * recorded yet; a row that has some keeps them (REG_OK). REG_ERR_NOT_FOUND for a kid
 * without a row, REG_ERR_INVALID for a value that is not an attribute set. No audit
 * event: it records what the token says, the key does not change. */
reg_status reg_set_token_attrs(reg *r, const sk_kid *kid, sk_attrs attrs);

/* Deletes the row of an active or broken kid (undoing a create that failed after
 * reg_insert); frees its slot if it was active. A revoked row is kept, and so is either
 * half of a rotation (a retiring row, a row with a predecessor: the other half points at
 * it): REG_ERR_STATE. */
reg_status reg_delete(reg *r, const sk_kid *kid);

/* ---- reads: from memory only, under the read lock ------------------------------------- */

/* Copies kid's row to *out (out may be NULL: an existence check). REG_ERR_NOT_FOUND. */
reg_status reg_get(reg *r, const sk_kid *kid, reg_key *out);

/* Appends one audit event (audit.h) in its own transaction on the registry's connection,
 * for what changes the token but no row (reconcile destroying an orphan or a revoked
 * key's object). details (may be NULL) is consumed. */
reg_status reg_audit(reg *r, int64_t time, const char *action, const sk_kid *kid, json_t *details);

/* 1 when kid exists and is active, else 0. The signing path's check: one hash probe. */
int reg_is_active(reg *r, const sk_kid *kid);

/* The active key with the largest created_at (on a tie, the one inserted last), O(1).
 * REG_ERR_NOT_FOUND when no key is active. */
reg_status reg_newest_active(reg *r, reg_key *out);

/* How many rows are in state s (0 for an out-of-range s). REG_ACTIVE never counts a
 * retiring key: add reg_count(r, REG_RETIRING) for the keys the JWKS lists. */
size_t reg_count(reg *r, reg_state s);

/* Copies the rows in state state_filter (-1: every row; REG_LIST_LIVE: active and
 * retiring) ordered by created_at then kid, at most cap of them, to out. Returns how many
 * rows match, which may exceed cap (as snprintf does): the caller sees truncation. out may
 * be NULL when cap is 0.
 *
 *   size_t n = reg_count(r, REG_ACTIVE) + 8;    // room for a create racing the count
 *   reg_key *v = calloc(n, sizeof(*v));
 *   size_t m = reg_list(r, REG_ACTIVE, v, n);   // m > n: grow and retry
 */
size_t reg_list(reg *r, int state_filter, reg_key *out, size_t cap);

/* The rotation scheduler's question, one pass over the mirror under the read lock: copies
 * to out (at most cap) the kids of the retiring keys whose retire_at <= now, and returns
 * how many there are (may exceed cap); *next_at (may be NULL) receives the earliest
 * retire_at of the retiring keys not yet due, 0 when there is none.
 *
 *   int64_t next;
 *   size_t n = reg_retiring_due(r, time(NULL), due, 64, &next);
 */
size_t reg_retiring_due(reg *r, int64_t now, sk_kid *out, size_t cap, int64_t *next_at);

/* The highest revocation seq ever assigned in this file (key or subject revocation), 0 if
 * none. It never goes back, even if revocation rows were removed from the file outside the
 * registry or subject revocations expired. */
uint64_t reg_revocation_seq(reg *r);

/* Copies the revocations with seq > after, ascending by seq, at most cap of them, to out.
 * Returns how many match (may exceed cap, as reg_list). */
size_t reg_revocations_after(reg *r, uint64_t after, reg_revocation *out, size_t cap);

/* A counter that changes after every change of the mirror (insert, rotate, revoke, mark
 * broken, delete): rebuild a cached document (JWKS, revocation list) when it moved. No lock. */
uint64_t reg_generation(reg *r);

/* Waits until reg_generation() differs from seen, or timeout_ms passed; returns the
 * generation then. For the revocation event stream: one broadcast per change wakes every
 * subscriber, none polls. */
uint64_t reg_wait_change(reg *r, uint64_t seen, unsigned timeout_ms);

/* Wakes every reg_wait_change at once without changing the generation: news from outside
 * the registry the same subscribers carry (a token revocation, tokstate.h). A waiter that
 * enters after the poke sleeps its timeout: the caller checks for that news before it
 * waits and after every wake. */
void reg_poke(reg *r);

/* ---- a read-only view for another process ---------------------------------------------- */

/* The keeper's view of the registry: no mirror, its own read-only connection. It sees
 * what writers have committed (each call is a read transaction of its own), never an
 * uncommitted change. The keeper lists the active kids once and lists them again when
 * reg_reader_data_version says the database changed.
 *
 *   reg_reader *rr;
 *   if (reg_reader_open(c.database, &rr) != REG_OK) ... reg_last_error() ...
 *   uint64_t v = reg_reader_data_version(rr);
 *   if (reg_reader_active_kids(rr, &kids, &n) != REG_OK) refuse_everything();
 *   ... later: if (reg_reader_data_version(rr) != v) list them again ...
 *   reg_reader_close(rr);
 */
typedef struct reg_reader reg_reader;

/* Opens the registry at path read-only (SQLite: SQLITE_OPEN_READONLY; a symlink, a missing
 * file, a non-regular file, a newer schema or a file without the keys table is refused;
 * PostgreSQL: read-only transactions, and LISTEN signd_keys), busy_timeout
 * REG_BUSY_TIMEOUT_MS. Creates nothing but SQLite's own -shm/-wal files.
 * REG_OK, REG_ERR_INVALID (NULL or over-long path, NULL out) or REG_ERR_IO
 * (reg_last_error()). *out is NULL on failure. */
reg_status reg_reader_open(const char *path, reg_reader **out);

/* A version that differs from the last value whenever a writer committed a change in
 * between: SQLite: another connection committed to the file (PRAGMA data_version);
 * PostgreSQL: a `signd_keys` note arrived (read from what the socket already holds: no
 * round trip per call), or the connection was reset (notes may be lost). Cheap to ask
 * often. 0 on failure (see reg_last_error()). */
uint64_t reg_reader_data_version(reg_reader *rr);

/* Every kid in state active, sorted by sk_kid_cmp (for bsearch), in a malloc'd
 * array the caller frees: REG_OK, or REG_ERR_IO with *out NULL and *n 0. One read
 * transaction, so the list is one consistent moment of the file. */
reg_status reg_reader_active_kids(reg_reader *rr, sk_kid **out, size_t *n);

/* Every kid with a row, whatever its state, as reg_reader_active_kids (the keeper's seed
 * of the kids it must never generate under, kstate.h). */
reg_status reg_reader_all_kids(reg_reader *rr, sk_kid **out, size_t *n);

/* Whether the keeper may generate under kid: REG_OK when it is pending and has no row,
 * REG_ERR_EXISTS when it has a row (any state), REG_ERR_NOT_FOUND when it is not pending,
 * REG_ERR_IO (reg_last_error()). */
reg_status reg_reader_pending(reg_reader *rr, const sk_kid *kid);

/* Closes the connection. NULL is a no-op. */
void reg_reader_close(reg_reader *rr);

#endif
