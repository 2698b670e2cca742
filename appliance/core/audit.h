/*
 * audit: the tamper-evident trail of every key event, for auditors who must not have to
 * trust the appliance's word.
 *
 * The chain, its actor and the same-transaction rule are the store's (appliance/store/
 * chain.h: the tables, chn_append_tx inside a store's write transaction, the thread's
 * actor); the hash is base/chainhash.h's rule. This module is what needs the keeper and
 * threads: checkpoints, batched events, reading and export for the API.
 *
 * Checkpoints. Table `audit_checkpoints`: every audit_checkpoint_events events or
 * audit_checkpoint_seconds seconds (configuration), the chain head is signed by the audit
 * key, a key of its own in the token (kp_svc_sign): a compact JWS, header
 * {"alg":"RS256","kid":<audit key id>,"typ":"signd-audit-checkpoint+jwt"}, payload
 * {"hash":<head hash>,"seq":<head seq>,"time":T}. The key never signs anything else and is
 * not one of the client keys; its public key is GET /v1/audit/key.
 *
 * Batched events. Signing is counted, not logged one by one: per kid and per credential,
 * flushed as one "sign.counts" event every audit_flush_seconds. Authentication and
 * authorization failures are queued and flushed the same way (a flood of bad credentials
 * must not become a flood of fsyncs). With audit_every_signature, each signature is its own
 * "sign" event (kid, credential, SHA-256 of the signed bytes, jti for tokens) and the
 * request waits until its event is committed; concurrent requests share one commit (group
 * commit).
 *
 * Export and verification. audit_export writes JSON Lines: one {"type":"event",...} per
 * event (every column) and one {"type":"checkpoint","seq","hash","time","jws"} per
 * checkpoint in the range. av_verify_export (auditverify.h, a pure module that signdctl and
 * signd-provision link without this writer) checks every link and every checkpoint
 * signature with only the audit public key, and optionally an anchor (a checkpoint the
 * auditor kept): the export must reach the anchor's seq with the anchor's hash, so cutting
 * the tail back past it is detected. Truncation after the newest checkpoint the verifier
 * holds cannot be detected from the export alone: an external witness of the head (a
 * checkpoint copied elsewhere) closes that gap.
 *
 * Thread safety: every function but audit_open/audit_close may be called from any thread.
 */
#ifndef APPLIANCE_AUDIT_H
#define APPLIANCE_AUDIT_H

#include "appliance/core/auditverify.h"
#include "appliance/kproto/keeper.h"
#include "appliance/store/chain.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* The keeper's check of a checkpoint (keeperd.c), on its own read-only connection to
 * db_path (a file or a PostgreSQL URI, sdb.h): walks the rows from_seq + 1 .. to_seq of `audit` in
 * one read transaction, starting from from_hash (the hash the caller already verified at from_seq;
 * ignored, the zero hash, when from_seq is 0), and requires every seq present, every prev_hash the
 * hash computed for the row before, and every stored hash the one chash_event gives for the row's
 * contents. 0 with the hash at to_seq in out, or -1 with why (one line). So the cost is the rows
 * since the caller's last verified point, not the whole chain. */
int audit_chain_walk(const char *db_path, uint64_t from_seq, const char *from_hash, uint64_t to_seq,
                     char out[CHN_HASH_HEX + 1], char *why, size_t whylen);

typedef struct audit audit;

typedef struct {
    unsigned flush_seconds;      /* batched events and counts: at most this old */
    unsigned checkpoint_events;  /* a checkpoint after this many events... */
    unsigned checkpoint_seconds; /* ...or this long after the last, when there are new ones */
    int every_signature;         /* one event per signature, group-committed */
    int log_events;              /* each event also as a JSON log line when it commits (jlog.h) */
    const char *node; /* the node its events name (chain.h); NULL: the process's (chn_set_node) */
} audit_options;

/* Opens the trail's writer for the appliance (its own connection to db_path, a file or a
 * PostgreSQL URI, and a flusher thread), signing checkpoints through k. 0, or -1 with err
 * filled.
 *
 * Several nodes on one database (cluster mode) share one chain: every append reads the
 * head in its locked transaction (chain.h), and a node signs a checkpoint only when the
 * head is past the newest checkpoint in the table, whichever node signed that one (its
 * audit_checkpoint_seconds clock restarts when it sees another node's), so the nodes do
 * not sign the same stretch over again. Each node's keeper checks what it signs from its
 * own newest checkpoint (kstate.h), across the events every node appended since. */
int audit_open(const char *db_path, kp *k, const audit_options *o, audit **out, char *err,
               size_t errlen);

/* Flushes what is pending, writes a last checkpoint, stops the thread, closes. */
void audit_close(audit *a);

/* Appends one event now, in its own transaction (start, stop, reconcile summaries). */
int audit_record(audit *a, const char *action, const char *kid_hex, json_t *details);

/* Queues a failure event (auth.failed, authz.denied) for the next flush; never blocks on
 * the disk. details is not consumed. Bounded: past AUDIT_QUEUE_MAX queued events the
 * excess is counted and recorded as one "dropped" number in the next flush. */
#define AUDIT_QUEUE_MAX 10000
void audit_queue(audit *a, const char *action, const char *actor, json_t *details);

/* One signature by credential cred_id (may be "" ) with kid. Counts it; with
 * every_signature also records a "sign" event with the SHA-256 of msg and jti (may be
 * NULL) and returns only once that event is committed (0), or -1 if it could not be. */
int audit_signature(audit *a, const char *kid_hex, const char *cred_id, const void *msg, size_t len,
                    const char *jti);

/* What has been accepted but is not yet in the trail: queued events and counted
 * signatures, and the age in seconds of the oldest of them (0 when none). For GET /metrics. */
void audit_lag(audit *a, uint64_t *events, double *oldest_seconds);

/* The backend's version ("sqlite 3.40.1", "postgresql 150008"), for /metrics. */
const char *audit_backend_version(audit *a);

/* ---- reading and export (the API) --------------------------------------------------------- */

typedef struct {
    uint64_t after;                   /* seq > after */
    unsigned limit;                   /* 1..1000 */
    const char *kid, *action, *actor; /* NULL: any */
    int64_t since, until;             /* time range, inclusive; 0: open */
} audit_query;

/* Events matching q as a JSON array (each with every column), into *out (owned by the
 * caller); *next is the seq to pass as `after` for the next page (0 when no more). */
int audit_list(const char *db_path, const audit_query *q, json_t **out, uint64_t *next);

/* JSON Lines of events from_seq..to_seq (to_seq 0: to the head) and the checkpoints
 * within, in seq order (a checkpoint after the event it covers). 0, or -1. */
int audit_export(const char *db_path, uint64_t from_seq, uint64_t to_seq, FILE *out);

#endif
