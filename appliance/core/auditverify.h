/*
 * auditverify: the audit chain's rules as pure functions (no SQLite, no keeper, no token):
 * the check of an exported trail with only the audit public key, and the one parser of an
 * auditor's anchor that every front end (signdctl audit verify, signd-provision
 * audit-verify) uses. The hash of one event is base/chainhash.h's chash_event, the rule the
 * chain's storage (appliance/store/chain.h) and the keeper hash with too.
 *
 * The export (audit.h's audit_export): JSON Lines, one {"type":"event",...} per event
 * (every column) and one {"type":"checkpoint","seq","hash","time","jws"} per checkpoint,
 * a checkpoint after the event it covers. A checkpoint's JWS is by the audit key, header
 * AV_CHECKPOINT_HEADER, payload {"hash":<hash>,"seq":<seq>,"time":T}.
 *
 * What verification cannot see: links are checked from the first event an export holds
 * (a part verifies on its own), so a trail without its oldest events verifies, with fewer
 * events than its last seq; and a tail cut after the newest checkpoint the verifier holds
 * verifies unless an anchor (a checkpoint kept elsewhere) names a seq past the cut.
 *
 * Thread safety: every function may be called from any thread.
 */
#ifndef APPLIANCE_AUDITVERIFY_H
#define APPLIANCE_AUDITVERIFY_H

#include "base/chainhash.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

#define AV_HASH_HEX CHASH_HEX
#define AV_LINE_MAX (64 * 1024) /* bytes of one export line */
/* The compact JWS header of every checkpoint: the keeper signs only input under this
 * header (KP_AUDIT_HEADER in kproto/keeper.h; test_audit_verify checks both are one). */
#define AV_CHECKPOINT_HEADER                                                                       \
    "{\"alg\":\"RS256\",\"kid\":\"signd-audit-v1\",\"typ\":\"signd-audit-checkpoint+jwt\"}"
#define AV_ANCHOR_SEQ_MAX (1ULL << 62)

/* An auditor's anchor: a checkpoint's seq and hash, kept outside the appliance. */
typedef struct {
    uint64_t seq;
    char hash[AV_HASH_HEX + 1];
} av_anchor;

typedef enum {
    AV_ANCHOR_OK = 0,
    AV_ANCHOR_FORM, /* not SEQ:HASH with SEQ decimal digits and HASH 64 lowercase hex */
    AV_ANCHOR_SEQ,  /* SEQ outside 1..AV_ANCHOR_SEQ_MAX */
} av_anchor_err;

/* Parses "SEQ:HASH" (the form the verifiers print and docs/api.md gives) into out. */
av_anchor_err av_anchor_parse(const char *text, av_anchor *out);

/* What failed, for a usage message: "--anchor must be ..." follows from it. */
const char *av_anchor_strerror(av_anchor_err e);

typedef struct {
    uint64_t events;          /* verified */
    uint64_t last_seq;        /* of the last event */
    uint64_t last_checkpoint; /* seq of the last verified checkpoint, 0 if none */
    uint64_t broken_seq;      /* the first seq that failed, 0 if none */
    char why[256];            /* what failed */
} av_verdict;

/* Verifies an export read from in: links (each prev_hash is the previous hash, each hash
 * recomputed, seqs consecutive from the first), every checkpoint's signature with pub_pem
 * (the audit public key, PEM) and that it names an event hash in the export, and, when
 * anchor is not NULL, that the export holds event anchor->seq with hash anchor->hash.
 * 0 when all holds, else -1 with v->broken_seq and v->why. */
int av_verify_export(FILE *in, const char *pub_pem, const av_anchor *anchor, av_verdict *v);

#endif
