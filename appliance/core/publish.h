/*
 * pub: what the appliance publishes, as one handle. The JWKS and the revocation lists are
 * built once per registry change and kept in memory with a strong ETag; readers share one
 * immutable, reference-counted document (pub_doc), so a 1,000-key JWKS is never rebuilt or
 * copied per request. The signed feed and the token status lists are kept the same way
 * until their content changes or they age out, and what public requests may make the
 * token sign is budgeted (publication_signs_per_second; pubcache.h is the rule). The HTTP
 * handlers (api/publish.c) turn a pub_doc or a refusal into an answer; key lifecycle
 * (keys.h) calls pub_refresh after every change.
 *
 * What it owns: every cached document, the signing budget, the keeper's last failure,
 * and the two mutexes around them. It borrows the configuration, the registry, the keeper
 * and the token state, which must outlive pub_free.
 *
 * Thread safety: every function but pub_new and pub_free from any number of threads.
 *
 *   pub *p = pub_new(c, rg, k, ts);
 *   if (p == NULL) ... out of memory ...
 *   pub_doc *d = pub_jwks(p);
 *   ... pub_doc_body(d, &len), pub_doc_etag(d) ...
 *   pub_doc_put(d);
 *   pub_free(p);
 */
#ifndef APPLIANCE_CORE_PUBLISH_H
#define APPLIANCE_CORE_PUBLISH_H

#include "appliance/common/config.h"
#include "appliance/kproto/keeper.h"
#include "appliance/store/registry.h"
#include "appliance/store/tokstate.h"
#include "base/signkey.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pub pub;
typedef struct pub_doc pub_doc;

#define PUB_FEED_ISSUER_DEFAULT "signd" /* the feed's iss when token_issuer is empty */
/* The uri of a status list: <pub_public_url>/v1/status-lists/<n>. */
#define PUB_URI_MAX (CFG_ORIGIN_MAX + 64)
/* Deltas of the revocation documents reach this far back (?after=); further back gets
 * the full list. */
#define PUB_FEED_DELTA_MAX 64

/* A handle over c, rg, k and t (borrowed), with nothing built yet; NULL when out of
 * memory. */
pub *pub_new(const cfg *c, reg *rg, kp *k, tks *t);

/* Drops every document the handle holds (readers keep theirs until pub_doc_put) and frees
 * it. NULL is a no-op. */
void pub_free(pub *p);

/* Rebuilds the JWKS and the full revocation list from the registry now: called after every
 * registry change (create, rotate, revoke) so the next reader gets the new documents;
 * readers also rebuild when they see the registry's generation move. */
void pub_refresh(pub *p);

/* The JWKS of the active and retiring keys (never the publication key): a new reference,
 * or NULL when out of memory. */
pub_doc *pub_jwks(pub *p);

/* The revocation list {"sequence", "revoked", "subjects"}: the full list for after 0, else
 * the delta after `after` (which may cover more than asked, never less). A new reference,
 * or NULL when out of memory. */
pub_doc *pub_revocations(pub *p, uint64_t after);

/* Why a signed document could not be had. */
typedef struct {
    int budget;           /* 1: the public signing budget is spent (retry_after seconds) */
    unsigned retry_after; /* seconds, when budget */
    sk_status st;         /* else the keeper's last failure */
} pub_why;

/* The signed feed (a compact JWS under KP_PUBLISH_HEADER, payload {"iss", "seq", "after",
 * "iat", "exp", "ttl", "revoked", "subjects"}) for `after`, as of now: a new reference, or
 * NULL and *why. */
pub_doc *pub_feed(pub *p, uint64_t after, int64_t now, pub_why *why);

/* Status list `list` (< TKS_LISTS_MAX, and existing: tks_list_count) signed under
 * KP_STATUS_LIST_HEADER, as of now: a new reference, or NULL and *why. */
pub_doc *pub_status_list(pub *p, uint32_t list, int64_t now, pub_why *why);

/* A document's bytes (NUL-terminated; *len without the NUL) and its strong ETag ("<first
 * 128 bits of SHA-256 in hex>", quoted). */
const char *pub_doc_body(const pub_doc *d, size_t *len);
const char *pub_doc_etag(const pub_doc *d);

/* Drops one reference; the last frees d. NULL is a no-op. */
void pub_doc_put(pub_doc *d);

/* The base of every URL the appliance names in what it signs: public_url, else
 * https://listen_address:port. */
void pub_public_url(const cfg *c, char out[CFG_ORIGIN_MAX + 1]);

/* The uri of status list `list`. */
void pub_status_list_uri(const cfg *c, uint32_t list, char out[PUB_URI_MAX]);

/* One revocation as every document and event carries it: {"seq", "kid", "revoked_at",
 * "reason"}. A new reference, NULL when out of memory. */
json_t *pub_revocation_json(const reg_revocation *rv);

/* One subject revocation as the feed, GET /v1/revocations and the event stream carry it:
 * {"seq", "sub", "before"}. A new reference, NULL when out of memory. */
json_t *pub_subject_json(const reg_subject *s);

#endif
