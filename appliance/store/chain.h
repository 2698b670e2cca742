/*
 * chain: the audit chain's storage, the part of the trail every store writes (see
 * appliance/core/audit.h for the trail as a whole: checkpoints signed by the audit key,
 * batched events, reading and export).
 *
 * Table `audit` in the appliance's database (sdb.h: the SQLite file, or the cluster's
 * PostgreSQL): seq (1, 2, ...), time, actor (a credential id, or "system"), action, kid
 * ("" when none), details (a JSON object), prev_hash and hash, both 64 lowercase hex,
 * hashed by base/chainhash.h's rule (chash_event). Table `audit_checkpoints` holds the
 * signed checkpoints (core/audit.c writes them). On PostgreSQL the columns are BIGINT and
 * TEXT and a schema_versions row 'audit' names the schema's version.
 *
 * One chain for the whole cluster. Every node appends to the one table: each append reads
 * the head (the newest row) inside its write transaction, under SDB_LOCK_AUDIT (on SQLite
 * the file's one writer; on PostgreSQL an advisory lock every node's writers share), and
 * inserts seq + 1 chained to it. Nothing of the head is kept in memory, so no node's
 * append can fork the chain. Each event's details carry "node" (chn_set_node), the node
 * that appended it; details are hashed, so the chain hash rule is unchanged and old events
 * without it verify as before.
 *
 * The same transaction. A change and its event commit together: the registry, the
 * credential store and the token state call chn_append_tx inside their own write
 * transaction (the chain head cannot move between reading it and appending: chn_append_tx
 * takes SDB_LOCK_AUDIT, after the store's own lock). No change without its event, no
 * event without its change.
 *
 * The actor. Each thread has a current actor (chn_set_actor), "system" by default: the
 * server sets the caller's credential id before a handler runs and clears it after, so the
 * stores record who asked without every call carrying it.
 *
 * Thread safety: chn_append_tx and chn_head run under their caller's connection (and
 * transaction); chn_set_actor/chn_actor are per thread; the rest may be called from any
 * thread.
 */
#ifndef APPLIANCE_STORE_CHAIN_H
#define APPLIANCE_STORE_CHAIN_H

#include "base/chainhash.h"

#include "appliance/store/sdb.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define CHN_ACTOR_MAX 32  /* "system" or a 16-hex credential id, with room */
#define CHN_ACTION_MAX 48 /* "key.created", "credential.revoked", ... */
#define CHN_HASH_HEX CHASH_HEX
#define CHN_DETAILS_MAX 4096 /* bytes of canonical details JSON */
#define CHN_SYSTEM "system"
#define CHN_NODE_MAX 64 /* a node name: [A-Za-z0-9._-]{1,63}, with the NUL */
/* prev_hash of seq 1, and the head of an empty chain. */
#define CHN_ZERO_HASH "0000000000000000000000000000000000000000000000000000000000000000"

/* Actions (the stable names auditors filter on). */
#define CHN_KEY_CREATED "key.created"
#define CHN_KEY_REVOKED "key.revoked"
#define CHN_KEY_DESTROYED "key.destroyed"     /* reconcile: a revoked key's object */
#define CHN_KEY_BROKEN "key.broken"           /* reconcile: an active key's object is gone */
#define CHN_KEY_ORPHAN "key.orphan_destroyed" /* reconcile: an object without a row */
#define CHN_KEY_DELETED "key.deleted"         /* a row whose key was never made */
#define CHN_KEY_ROTATED "key.rotated"         /* active -> retiring, with its successor */
#define CHN_SUBJECT_REVOKED "subject.revoked" /* a subject's tokens before a time */
#define CHN_CRED_CREATED "credential.created"
#define CHN_CRED_REVOKED "credential.revoked"
#define CHN_AUTH_FAILED "auth.failed"   /* 401: unknown, revoked or unbound credential */
#define CHN_AUTHZ_DENIED "authz.denied" /* 403: role or kid scope */
#define CHN_SIGN_COUNTS "sign.counts"
#define CHN_SIGN "sign"
#define CHN_STARTED "appliance.started"
#define CHN_STOPPED "appliance.stopped"
#define CHN_KEEPER_RESTARTED "keeper.restarted" /* the supervisor replaced it: its cause */
#define CHN_FRONT_RESTARTED "front.restarted"   /* recorded by the new front */

/* The schema (both tables, CREATE IF NOT EXISTS; on PostgreSQL also schema_versions and
 * its 'audit' row). Inside the caller's write transaction when it is in one (a store's
 * schema transaction: on PostgreSQL under SDB_LOCK_SCHEMA), else in one of its own under
 * SDB_LOCK_SCHEMA. 0, or -1 with err filled. */
int chn_schema(sdb *db, char *err, size_t errlen);

/* The calling thread's actor: a credential id, or NULL/"" for "system". */
void chn_set_actor(const char *actor);
const char *chn_actor(void);

/* The node this process appends as, recorded as "node" in every event's details:
 * process-wide, set once at start (before any thread appends) from the configuration's
 * node_name (cfg_node_name). NULL or "": no "node" (one appliance, or a test). */
void chn_set_node(const char *node);
/* The calling thread's node, over the process's: the audit writer's own (audit_options's
 * node) around its appends, and a test's two "nodes" in one process. NULL: the process's. */
void chn_set_thread_node(const char *node);
/* The node the calling thread appends as: "" when none. */
const char *chn_node(void);

/* Whether each appended event is also written as a JSON log line (jlog.h) when its
 * transaction commits, and dropped if it rolls back: process-wide, off until set (the
 * trail's writer sets it from its options). */
void chn_log_events(int on);

/* The head on db: seq 0 and CHN_ZERO_HASH when the chain is empty. 0, or -1. */
int chn_head(sdb *db, uint64_t *seq, char hash[CHN_HASH_HEX + 1]);

/* Appends one event inside the caller's open write transaction on db: takes
 * SDB_LOCK_AUDIT, reads the head, computes the hash, inserts. details may be NULL ({});
 * it is not consumed; the node (chn_set_node) is added to a copy unless details names
 * one. kid may be NULL. The actor is the thread's. 0, or -1 (the caller rolls back) with
 * err filled. */
int chn_append_tx(sdb *db, int64_t time, const char *action, const char *kid_hex, json_t *details,
                  char *err, size_t errlen);

#endif
