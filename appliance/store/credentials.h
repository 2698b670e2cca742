/*
 * cred: API credentials for the appliance's roles (admin, signer, auditor, redeemer), kept
 * in the appliance's database (sdb.h: the SQLite file, or the cluster's PostgreSQL) and
 * mirrored in memory so that authenticating a request never touches the database.
 *
 * A secret is shown once, at creation: "sgd_" + 16 lowercase hex (the credential's id) +
 * "_" + 43 base64url characters (32 random bytes), CRED_SECRET_LEN characters in all. The
 * prefix lets secret scanners find a leaked one; the id makes the lookup one hash probe.
 * Only SHA-256 of the whole secret string is stored (as hex); the secret itself never
 * reaches the file, and every copy this module makes is wiped before it returns.
 *
 * What it owns:
 *  - its own connection (sdb_open), used only by writers, cred_refresh and only under the
 *    writer mutex; every write transaction holds SDB_LOCK_CREDENTIALS. One table,
 *    `credentials` (created when missing; on PostgreSQL under SDB_LOCK_SCHEMA, with a
 *    schema_versions row 'credentials'), the allowed kids a comma-separated hex list in a
 *    column. PRAGMA user_version belongs to the registry and is never read or written here.
 *  - an in-memory mirror of every row, ordered by (created_at, insertion), with a hash
 *    index id -> row and per-role counts of active credentials. Readers take a pthread
 *    rwlock for reading only.
 *
 * Locks, in this order: the writer mutex (the connection and every change), then the mirror
 * rwlock (writer-preferring; for writing only while a committed change is copied in, so
 * a stream of readers cannot starve a create or revoke). A write commits first
 * and changes the mirror after, so a reader never sees a change that is not durable.
 * Credentials are never deleted: revoked is final, and a revoked row keeps its first
 * revoked_at.
 *
 * Cluster mode (several nodes on one PostgreSQL): a create or revoke sends the note
 * CRED_NOTIFY_CHANNEL (payload: the id) in its transaction; each node's watcher, on a note
 * (or a resync), calls cred_refresh, which reloads the mirror from the database.
 *
 * Thread safety: every function but cred_open and cred_close may be called from any
 * number of threads at once. cred_close must run after every other caller has stopped.
 *
 *   cred_store *cs;
 *   char secret[CRED_SECRET_MAX];
 *   cred_record rec;
 *   if (cred_open("data/appliance.db", &cs) != CRED_OK)
 *       fprintf(stderr, "%s\n", cred_last_error());
 *   cred_spec sp = {.role = CRED_ROLE_SIGNER, .label = "app", .all_kids = 1, .max_ttl = 3600};
 *   if (cred_create(cs, &sp, time(NULL), secret, &rec) == CRED_OK)
 *       show_once(secret);
 *   explicit_bzero(secret, sizeof(secret));
 */
#ifndef APPLIANCE_CREDENTIALS_H
#define APPLIANCE_CREDENTIALS_H

#include "base/signkey.h"

#include <stddef.h>
#include <stdint.h>

#define CRED_PREFIX "sgd_"
#define CRED_PREFIX_LEN 4
#define CRED_ID_LEN 16 /* lowercase hex characters: 8 random bytes */
#define CRED_RANDOM_BYTES 32
#define CRED_RANDOM_B64 43 /* base64url characters of CRED_RANDOM_BYTES, unpadded */
#define CRED_SECRET_LEN (CRED_PREFIX_LEN + CRED_ID_LEN + 1 + CRED_RANDOM_B64) /* 64 */
#define CRED_SECRET_MAX (CRED_SECRET_LEN + 1)                                 /* with NUL */
#define CRED_LABEL_MAX 128 /* bytes, without the NUL; printable ASCII only */
#define CRED_KIDS_MAX 64
#define CRED_SUBJECT_MAX 256 /* bytes of a bound certificate subject, without the NUL */
#define CRED_BUSY_TIMEOUT_MS 5000
/* The change note of a create or revoke (sdb_notify; payload: the credential id). */
#define CRED_NOTIFY_CHANNEL "signd_credentials"

typedef enum {
    CRED_OK = 0,
    CRED_ERR_NOT_FOUND,  /* no credential with this id */
    CRED_ERR_UNKNOWN,    /* authentication failed: malformed, unknown id or wrong secret */
    CRED_ERR_REVOKED,    /* authentication with the right secret of a revoked credential */
    CRED_ERR_INVALID,    /* a caller error: bad role, label, kid list, max_ttl, argument */
    CRED_ERR_IO,         /* the database or randomness failed, or a bad row: cred_last_error() */
    CRED_ERR_LAST_ADMIN, /* cred_revoke: the last active admin credential, on every node */
    CRED_ERR_COUNT_
} cred_status;

typedef enum {
    CRED_ROLE_ADMIN = 0,
    CRED_ROLE_SIGNER,
    CRED_ROLE_AUDITOR,
    /* Redeems single-use tokens and checks tokens online (POST /v1/tokens/redeem): an
     * upload endpoint or a player backend. Mints nothing, reads nothing else. */
    CRED_ROLE_REDEEMER,
    CRED_ROLE_COUNT_
} cred_role;

typedef struct {
    char id[CRED_ID_LEN + 1];
    cred_role role;
    char label[CRED_LABEL_MAX + 1];
    /* Signers only (0 and empty for the other roles): either all_kids = 1 and no list, or
     * all_kids = 0 and 1..CRED_KIDS_MAX distinct kids. */
    int all_kids;
    size_t n_kids;
    sk_kid kids[CRED_KIDS_MAX];
    unsigned max_ttl;   /* signers: the longest token lifetime in seconds, 0 = no own limit */
    int64_t created_at; /* unix seconds */
    int64_t revoked_at; /* unix seconds, 0 while active */
    /* "" when unbound; else the only TLS client certificate subject (RFC 2253, as
     * tls_peer_subject gives it) this credential is accepted with. */
    char client_subject[CRED_SUBJECT_MAX + 1];
} cred_record;

/* What a new credential is: cred_create's input. */
typedef struct {
    cred_role role;
    const char *label; /* NULL: "" */
    /* Signers only: all_kids = 1 and no list, or all_kids = 0 and 1..CRED_KIDS_MAX kids. */
    const sk_kid *kids;
    size_t n_kids;
    int all_kids;
    unsigned max_ttl;           /* signers only; 0 = no own limit */
    const char *client_subject; /* NULL or "": not bound to a client certificate */
} cred_spec;

typedef struct cred_store cred_store;

/* "admin", "signer", "auditor", "redeemer"; "unknown" for anything else. The same strings are the
 * role column in SQL and the role in the HTTP API. */
const char *cred_role_name(cred_role r);

/* The inverse of cred_role_name: 0 and *out set, or -1 for any other string (NULL too). */
int cred_role_parse(const char *s, cred_role *out);

/* A short English phrase for a status, never NULL. */
const char *cred_strerror(cred_status st);

/* The message of the last CRED_ERR_IO (or CRED_ERR_INVALID from cred_open) returned to
 * the calling thread: names the database, the step and the backend's message. "" if none. Each such
 * failure is also written to stderr. Thread-local, so it works for a failed cred_open. */
const char *cred_last_error(void);

/* Opens the database db_path (sdb_open: a SQLite file, created if absent, mode 0600, no
 * symlink followed; or a postgresql:// URI), creates the credentials table when missing
 * and loads every row into memory. CRED_ERR_IO when the file is not SQLite, the server
 * cannot be reached, or a row is bad; CRED_ERR_INVALID for a NULL, empty or over-long path or a
 * NULL out. *out is NULL on failure.
 *
 *   cred_store *cs;
 *   if (cred_open(path, &cs) != CRED_OK) ... cred_last_error() ...
 */
cred_status cred_open(const char *db_path, cred_store **out);

/* Closes the connection and frees the mirror. NULL is a no-op. */
void cred_close(cred_store *cs);

/* Reloads the mirror from the database: what other nodes created or revoked since. The
 * new table replaces the old one at once under the mirror's write lock, so a reader sees
 * one or the other; once it returns CRED_OK, a credential revoked anywhere before the call
 * began fails cred_authenticate (CRED_ERR_REVOKED) here. On failure (CRED_ERR_IO) the old
 * mirror stays. Safe beside every other call but cred_open/cred_close. */
cred_status cred_refresh(cred_store *cs);

/* Creates a credential, durably, and writes its secret (CRED_SECRET_LEN characters and a
 * NUL) to the caller's buffer: the only time it exists outside the caller. Signers need
 * all_kids = 1 with n_kids = 0, or all_kids = 0 with 1..CRED_KIDS_MAX distinct kids;
 * admins and auditors take no kids, all_kids 0 and max_ttl 0. Anything else, an unknown
 * role, a label over CRED_LABEL_MAX bytes or a client_subject over CRED_SUBJECT_MAX, or
 * either with a byte outside printable ASCII, is CRED_ERR_INVALID. *out (may be NULL)
 * receives the record. On any failure secret is wiped and holds "".
 *
 *   char secret[CRED_SECRET_MAX];
 *   cred_spec sp = {.role = CRED_ROLE_SIGNER, .label = "cdn", .kids = kids, .n_kids = 2,
 *                   .max_ttl = 600};
 *   st = cred_create(cs, &sp, now, secret, &rec);
 *   ... show secret once ...; explicit_bzero(secret, sizeof(secret));
 */
cred_status cred_create(cred_store *cs, const cred_spec *spec, int64_t now,
                        char secret[CRED_SECRET_MAX], cred_record *out);

/* Revokes the credential id, durably (fsynced when it returns CRED_OK). Idempotent: an
 * already revoked credential is left alone and its first record returned (same
 * revoked_at). *out (may be NULL) receives the record as it stands afterwards.
 * CRED_ERR_NOT_FOUND for an unknown id, CRED_ERR_INVALID for NULL. */
cred_status cred_revoke(cred_store *cs, const char *id, int64_t now, cred_record *out);

/* cred_revoke, but CRED_ERR_LAST_ADMIN (nothing changed) when id is an active admin and no
 * other admin is active in the database: counted inside the locked transaction, so two
 * nodes revoking two admins at once cannot leave none (either node's mirror may not have
 * seen the other's revocation yet). The API's DELETE /v1/credentials/{id}. */
cred_status cred_revoke_keeping_an_admin(cred_store *cs, const char *id, int64_t now,
                                         cred_record *out);

/* Copies id's record to *out (may be NULL: an existence check). CRED_ERR_NOT_FOUND. */
cred_status cred_get(cred_store *cs, const char *id, cred_record *out);

/* Copies every record, ordered by created_at (ties in creation order), at most cap of
 * them, to out. Returns how many there are, which may exceed cap (as snprintf does). out
 * may be NULL when cap is 0. */
size_t cred_list(cred_store *cs, cred_record *out, size_t cap);

/* How many credentials of this role are active (0 for an out-of-range role): for refusing
 * to revoke the last admin. */
size_t cred_count_active(cred_store *cs, cred_role role);

/* Checks a presented secret (len bytes, need not be NUL-terminated). CRED_OK and *out
 * (may be NULL) filled when it is exactly the secret of an active credential;
 * CRED_ERR_REVOKED (and *out filled) when it is exactly the secret of a revoked one;
 * CRED_ERR_UNKNOWN for everything else (malformed, unknown id, wrong secret), with
 * nothing to tell these apart. The hash compare is constant time; the request path: one
 * SHA-256, one hash probe under the read lock, no database, no allocation by this module. */
cred_status cred_authenticate(cred_store *cs, const char *presented, size_t len, cred_record *out);

/* 1 when rec is an active signer allowed to use kid (all_kids, or kid in its list), else
 * 0 (NULL arguments too). */
int cred_may_use_kid(const cred_record *rec, const sk_kid *kid);

#endif
