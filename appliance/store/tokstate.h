/*
 * tks: token-level state, below key revocation: the status lists of revocable tokens and
 * the redeemed jtis of single-use tokens. Kept in the appliance's database (sdb.h: the
 * SQLite file, or the cluster's PostgreSQL; its own connection and tables, like the
 * credential store; every write transaction under SDB_LOCK_TOKENS) and, for the status
 * lists, mirrored in memory so that minting and checking a status never touches it.
 *
 * Status lists (the IETF OAuth Token Status List draft, bits = 1). A revocable token
 * carries a status index (list, idx); list n holds TKS_LIST_SIZE one-bit statuses, bit i
 * at byte i / 8, bit i % 8 counted from the least significant bit, 1 = revoked.
 *  - Minting must not cost a disk write per token, so tks_assign hands indexes out from
 *    memory and writes once per block of TKS_BLOCK: table `token_lists` keeps per list
 *    the end of the last block any node ever reserved, and a block is [that end, + BLOCK)
 *    read and raised in one transaction. The next block is reserved ahead, once half of
 *    the current one is handed out, by the one mint that crossed the half, with the
 *    assign lock released: the others keep minting from memory during its commit. After a
 *    crash the unused rest (at most two blocks) is skipped, never handed out twice: every
 *    index handed out before the crash lies below the reserved end, and the next one
 *    starts from it.
 *  - Lists are reused: `token_lists` also keeps per list an expiry no token given one of
 *    its indexes outlives (raised, an hour ahead, before an index goes to a token expiring
 *    later) and an epoch. Once TKS_LISTS_MAX lists exist and the current one is used up,
 *    tks_assign reclaims the first list whose expiry passed more than TKS_RECLAIM_SLACK
 *    ago: its revocations are deleted and its epoch rises in one transaction, then its
 *    bits are cleared in memory. The epoch is in the MAC of revocable jtis, so an expired
 *    token's jti does not name the index a new token holds.
 *  - tks_revoke writes one row of `token_revocations` (seq: SQLite's AUTOINCREMENT, or a
 *    counter row on PostgreSQL; rises, never reused) and its audit event in one transaction,
 * fsynced before the bit is set in memory: a reader never sees a revocation that is not durable.
 * Only an index already handed out can be revoked (below its list's reserved end):
 * TKS_ERR_NOT_ISSUED.
 *
 * Redeemed jtis (single-use tokens). tks_redeem records (kid, jti, exp) in
 * `token_redeemed`, durably and exactly once: of any number of concurrent or later calls
 * for one jti of one key, before or after a restart, exactly one gets TKS_OK and every
 * other TKS_ERR_USED. The same jti under another key is another token: a signer that
 * crafts a token with a copied jti through its own key's /sign cannot use up another
 * key's token.
 * Concurrent redeems are group-committed: one thread commits every redeem queued while
 * the previous commit was on disk, in one transaction (one fsync for the batch), and
 * each caller returns only once its own row is durable. Rows are pruned once past
 * exp + TKS_PRUNE_SLACK (a token that old is refused by its exp check before it can be
 * redeemed), so the table holds at most the single-use tokens still alive.
 *
 * Cluster mode (several nodes on one PostgreSQL; the same holds for two handles on one
 * SQLite file):
 *  - a redeem's winner is decided by the database (INSERT ... ON CONFLICT DO NOTHING on
 *    the jti's primary key), so of all redeems on all nodes exactly one gets TKS_OK;
 *  - each node hands indexes out from its own block in memory; a block is reserved in a
 *    transaction under SDB_LOCK_TOKENS that reads token_lists as the database holds it, so
 *    no two nodes' blocks overlap; nothing per minted token touches the database;
 *  - tks_revoke checks and writes under SDB_LOCK_TOKENS and sends the note
 *    TKS_NOTIFY_CHANNEL (payload "list/idx"); another node's watcher then calls
 *    tks_refresh, which reads the revocations (and lists, epochs) it lacks: the bit is set
 *    there, tks_list_revoked(list) rises (the publication cache re-signs that list) and
 *    tks_generation() moves;
 *  - the jti MAC key is written once (INSERT ... ON CONFLICT DO NOTHING, read back, under
 *    SDB_LOCK_TOKENS): every node that opens the database ends up with the same key.
 *
 * Locks, in this order: the assign mutex (tks_assign only), the writer mutex (the
 * connection and every change), the mirror rwlock (for writing only while a committed
 * change is copied in). Redeems take only the batch mutex, and the writer mutex while
 * leading a batch.
 *
 * Thread safety: every function but tks_open and tks_close may be called from any number
 * of threads at once. tks_close must run after every other caller has stopped.
 *
 *   tks *t;
 *   if (tks_open("data/appliance.db", &t) != TKS_OK)
 *       fprintf(stderr, "%s\n", tks_last_error());
 *   tks_index ix;
 *   if (tks_assign(t, &ix) == TKS_OK)
 *       ... put {"status_list":{"idx":ix.idx,"uri":".../v1/status-lists/<ix.list>"}} ...
 */
#ifndef APPLIANCE_TOKSTATE_H
#define APPLIANCE_TOKSTATE_H

#include <stddef.h>
#include <stdint.h>

#define TKS_LIST_SIZE (1u << 20)            /* statuses per list: 128 KiB of bits */
#define TKS_LIST_BYTES (TKS_LIST_SIZE / 8u) /* one list's bytes, uncompressed */
#define TKS_LISTS_MAX 1024u                 /* lists, so about a billion revocable tokens */
#define TKS_BLOCK 1024u                     /* indexes reserved on disk at a time */
#define TKS_JTI_MAX 64                      /* bytes of a jti, without the NUL */
#define TKS_KID_HEX 32                      /* a kid in hex, without the NUL */
#define TKS_PRUNE_SLACK 300                 /* seconds a redeemed jti is kept past its exp */
/* A list whose tokens all expired more than this many seconds ago may be reclaimed:
 * verifiers' clock leeway. */
#define TKS_RECLAIM_SLACK 300
#define TKS_BUSY_TIMEOUT_MS 5000
/* A revocable token's jti: 'r' then the base64url of (list, idx, owner, MAC): 28 bytes. */
#define TKS_JTI_REVOCABLE_PREFIX 'r'
#define TKS_JTI_REVOCABLE_LEN 39
#define TKS_OWNER_BYTES 8  /* the minting credential's id (16 hex characters) */
#define TKS_JTI_MAC_LEN 12 /* HMAC-SHA256, truncated: 96 bits against forgery */
#define TKS_MAC_KEY_LEN 32
/* The change note of a token revocation (sdb_notify; payload "list/idx"). */
#define TKS_NOTIFY_CHANNEL "signd_tokens"

typedef enum {
    TKS_OK = 0,
    TKS_ERR_USED,       /* tks_redeem: the jti was redeemed before */
    TKS_ERR_REVOKED,    /* tks_revoke: the index was revoked before (out holds that one) */
    TKS_ERR_NOT_ISSUED, /* tks_revoke: no token was ever given this index */
    TKS_ERR_NOT_FOUND,  /* no such list */
    TKS_ERR_FULL,       /* every index of TKS_LISTS_MAX lists is handed out */
    TKS_ERR_INVALID,    /* a caller error: a jti of the wrong form, a bad argument */
    TKS_ERR_IO,         /* the database failed or holds a bad row: see tks_last_error() */
    TKS_ERR_COUNT_
} tks_status;

typedef struct {
    uint32_t list;
    uint32_t idx;
} tks_index;

typedef struct {
    uint64_t seq; /* rises by one per revoked token, never reused */
    tks_index ix;
    char jti[TKS_JTI_MAX + 1];
    char kid[33]; /* hex, "" when not given */
    int64_t revoked_at;
} tks_revocation;

typedef struct tks tks;

/* The message of the last TKS_ERR_IO (or TKS_ERR_INVALID from tks_open) returned to the
 * calling thread, naming the file and the step; "" if none. Also written to stderr. */
const char *tks_last_error(void);

/* A jti this module stores: 1..TKS_JTI_MAX characters of [A-Za-z0-9_-]. 1 or 0. */
int tks_jti_ok(const char *jti);

/* Opens the state in the database path (sdb_open: a SQLite file, created 0600 when absent,
 * or a postgresql:// URI), creates the tables when missing, reads (or makes, once) the jti
 * key and loads the lists and token revocations into memory. TKS_ERR_IO for a file that
 * is not SQLite, a server out of reach, or a bad row; *out NULL on failure. */
tks_status tks_open(const char *path, tks **out);

/* Frees everything. NULL is a no-op. */
void tks_close(tks *t);

/* Brings the in-memory state up to the database: lists other nodes opened or reclaimed
 * (their reserved ends, expiries, epochs) and the token revocations they wrote. Once it
 * returns TKS_OK, a token revoked on any node before the call began is set here
 * (tks_is_revoked, tks_list_copy), its list's tks_list_revoked count has risen, and
 * tks_generation() has moved (it moves only when something differed). TKS_ERR_IO leaves
 * the state as it was. Safe beside every other call but tks_open/tks_close. */
tks_status tks_refresh(tks *t);

/* Hands out the next free status index for a token expiring at exp (unix seconds): from
 * memory, with one durable write per TKS_BLOCK indexes, and one when exp passes the
 * list's recorded expiry (written an hour ahead). When the current list is used up it
 * opens the next; once TKS_LISTS_MAX lists exist, it reclaims the first whose every token
 * expired more than 5 minutes before now: its revocations are deleted, its bits cleared,
 * and its epoch (in its jtis' MAC) moves on, so an expired token's jti no longer names
 * the index. TKS_ERR_FULL only when no list is reclaimable, TKS_ERR_IO when a write fails
 * (no index is handed out then). */
tks_status tks_assign(tks *t, int64_t now, int64_t exp, tks_index *out);

/* Revokes the token with status index ix, durably, with a "token.revoked" audit event
 * (the calling thread's actor; details: jti, list, idx) in the same transaction. jti must
 * pass tks_jti_ok; kid_hex may be NULL. *out (may be NULL) receives the revocation: the
 * new one, or for TKS_ERR_REVOKED the earlier one. TKS_ERR_NOT_FOUND / TKS_ERR_NOT_ISSUED
 * for an index never handed out; nothing changed then. */
tks_status tks_revoke(tks *t, tks_index ix, const char *jti, const char *kid_hex, int64_t now,
                      tks_revocation *out);

/* 1 when the index is revoked, 0 when not (or never handed out). */
int tks_is_revoked(tks *t, tks_index ix);

/* The number of lists that exist: lists 0 .. count - 1 (0 before the first tks_assign). */
uint32_t tks_list_count(tks *t);

/* Copies list's TKS_LIST_BYTES of bits into dst and its state: *reserved (indexes handed
 * out at most) and *revoked (its version as of this copy, as tks_list_revoked gives it).
 * TKS_ERR_NOT_FOUND for a list that does not exist. */
tks_status tks_list_copy(tks *t, uint32_t list, uint8_t dst[TKS_LIST_BYTES], uint32_t *reserved,
                         uint64_t *revoked);

/* The list's version (0 for a list that does not exist): how many of its tokens are
 * revoked, plus its epoch times 2^32. It rises with each revocation in that list, and
 * with a reclaim (which clears the bits and starts the count again), and only then: a
 * cached copy of the list signed at another version is out of date. At epoch 0, the
 * count itself. */
uint64_t tks_list_revoked(tks *t, uint32_t list);
/* Changes after, never before, every revocation, list opened or list reclaimed reached
 * memory (this node's own, or another node's through tks_refresh). */
uint64_t tks_generation(tks *t);

/* The newest token revocation's seq, 0 when there is none. */
uint64_t tks_seq(tks *t);

/* Copies up to max revocations with seq > after, oldest first, into out; returns how many
 * were copied (fewer than max: those were all). */
size_t tks_revocations_after(tks *t, uint64_t after, tks_revocation *out, size_t max);

/* Consumes a single-use token's jti under its key (kid_hex; NULL: the jti alone), durably, with a
 * "token.redeemed" audit event (actor, details: jti, kid_hex when not NULL) in the same
 * transaction: TKS_OK for the one caller who redeems it first, TKS_ERR_USED for every other, before
 * or after a restart. exp: the token's exp (unix seconds), after which the row may be pruned. Also
 * prunes rows past exp + TKS_PRUNE_SLACK, at most once a minute, in the same transaction.
 * TKS_ERR_INVALID for a jti that fails tks_jti_ok or an exp before now; TKS_ERR_IO when
 * the commit failed (nothing was consumed then: the caller may retry). */
tks_status tks_redeem(tks *t, const char *jti, int64_t exp, const char *kid_hex, int64_t now);

/* A revocable token's jti, so that revoking it needs nothing stored per token: the jti
 * itself says which status index it has and which credential minted it (owner_hex, 16
 * lowercase hex, or NULL/"" for none), under a MAC whose key the state file keeps (made on
 * first open): nobody can name another token's index or claim to own it. Writes
 * TKS_JTI_REVOCABLE_LEN characters and a NUL. TKS_ERR_INVALID for a bad index or owner. */
tks_status tks_jti_make(tks *t, tks_index ix, const char *owner_hex, char out[TKS_JTI_MAX + 1]);

/* The inverse: TKS_OK with *ix and owner_hex ("" for none) for a jti tks_jti_make made with
 * this file's key; TKS_ERR_INVALID for a jti that fails tks_jti_ok; TKS_ERR_NOT_FOUND for
 * any other (a plain token's jti, a forged or altered one). */
tks_status tks_jti_read(tks *t, const char *jti, tks_index *ix,
                        char owner_hex[2 * TKS_OWNER_BYTES + 1]);

/* Deletes redeemed jtis past exp + TKS_PRUNE_SLACK; *deleted (may be NULL) how many. */
tks_status tks_prune(tks *t, int64_t now, uint64_t *deleted);

/* Rows in the redeemed table (what pruning bounds). */
tks_status tks_redeemed_count(tks *t, uint64_t *count);

#endif
