/*
 * mint: a JWT made and signed for a caller, without HTTP. One call does what minting is:
 * the kid (the one asked for, checked against the caller's scope and its state, or the
 * newest the caller may use: keys.h), the jti (a revocable token's names a status-list
 * index under a MAC: tokstate.h; any other is 128 random bits), the claims, the size bound
 * of what the keeper signs (KP_SIGN_MAX), the signature through the keeper, and the
 * signature's audit record (audit.h). api/tokens.c parses the request into a mint_req and
 * turns the result into JSON; the order of the claims in the payload is the token's
 * documented form (docs/api.md) and is kept here.
 *
 *   mint_env me = {.cfg = c, .reg = rg, .kp = k, .tks = ts, .audit = au};
 *   mint_req m = {.caller = caller, .iat = now, .exp = now + 300, .nbf = -1};
 *   mint_token t;
 *   mint_fail why;
 *   if (mint_make(&me, &m, &t, &why) == MINT_OK) { ... t.token ... mint_token_free(&t); }
 */
#ifndef APPLIANCE_CORE_MINT_H
#define APPLIANCE_CORE_MINT_H

#include "appliance/common/config.h"
#include "appliance/core/audit.h"
#include "appliance/core/keys.h"
#include "appliance/core/publish.h"
#include "appliance/kproto/keeper.h"
#include "appliance/store/credentials.h"
#include "appliance/store/registry.h"
#include "appliance/store/tokstate.h"
#include "base/signkey.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define MINT_JTI_BYTES 16 /* random bytes of a jti that names no status index */

/* What minting works on (borrowed). */
typedef struct {
    const cfg *cfg;
    reg *reg;
    kp *kp;
    tks *tks;
    audit *audit;
} mint_env;

/* A request already parsed and bounded (api_tokens_mint_parse); every pointer borrowed. */
typedef struct {
    const cred_record *caller; /* NULL: no caller (unscoped, no owner in the jti) */
    int has_kid;
    sk_kid kid;
    const char *sub;  /* NULL: no sub claim */
    int64_t iat, nbf; /* nbf -1: none */
    int64_t exp;
    const json_t *claims; /* the caller's own claims, no reserved name among them; or NULL */
    int single_use, revocable;
    const char *aud;    /* NULL: none */
    const char *origin; /* NULL: none */
    size_t n_origins;
    const char (*origins)[CFG_ORIGIN_MAX + 1];
} mint_req;

/* A signed token. */
typedef struct {
    char *token; /* the compact JWS, malloc'd */
    size_t len;
    sk_kid kid;
    char kid_hex[2 * SK_KID_LEN + 1];
    char jti[TKS_JTI_MAX + 1];
    tks_index ix;          /* revocable: its status index */
    char uri[PUB_URI_MAX]; /* revocable: its status list's uri */
} mint_token;

typedef enum {
    MINT_OK = 0,
    MINT_ERR_KID_NOT_ALLOWED, /* the kid asked for is outside the caller's scope */
    MINT_ERR_KEY,             /* the kid asked for cannot sign: why.cs, why.state */
    MINT_ERR_NO_ACTIVE_KEY,   /* no kid asked for, and none the caller may use is active */
    MINT_ERR_LISTS_FULL,      /* every status-list index is in use */
    MINT_ERR_STATUS_INDEX,    /* no status index could be reserved (storage) */
    MINT_ERR_RANDOM,          /* no randomness for the jti */
    MINT_ERR_NO_MEMORY,
    MINT_ERR_NO_FIT,       /* the token does not fit its buffer */
    MINT_ERR_TOO_LARGE,    /* the signing input (why.signing_len) exceeds KP_SIGN_MAX */
    MINT_ERR_SIGN_REFUSED, /* the keeper signs nothing for the kid: why.has_state, state */
    MINT_ERR_TOKEN,        /* the keeper failed: why.st */
    MINT_ERR_AUDIT,        /* the signature could not be recorded */
} mint_status;

/* Why mint_make failed, beyond its status; kid is the kid it had chosen (or asked for). */
typedef struct {
    sk_kid kid;
    ck_status cs;
    int has_state;
    reg_state state;
    sk_status st;
    size_t signing_len;
} mint_fail;

/* Mints m: MINT_OK and *out (mint_token_free it), or the error and *why (*out zeroed). A
 * revocable token's status index stays handed out even when a later step fails (an unused
 * index is never revoked, and expires with its list). */
mint_status mint_make(const mint_env *e, const mint_req *m, mint_token *out, mint_fail *why);

/* Releases out's token; safe on a zeroed struct and twice. */
void mint_token_free(mint_token *t);

#endif
