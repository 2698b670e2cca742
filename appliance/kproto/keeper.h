/*
 * kp: the one narrow interface through which the HTTP side reaches the token.
 *
 * api/ never calls hsm/ directly: it asks the keeper to sign bytes with a kid, create a
 * key (and learn what the token holds for it), destroy a kid, export a public key, list
 * keys, read a key's token attributes, ask what the keeper probed of the token, or check
 * the token answers. Every
 * request is fixed-size, every reply is an sk_status, and nothing points into the token's
 * memory. Two implementations behind the same functions:
 *  - kp_open (appliance/keeper/inproc.h): in-process, forwarding to hsm/; only the keeper
 *    program, the unit tests and the bench link it, through kp_wrap_local below, so this
 *    header and the front see no hsm/ header;
 *  - kp_connect: remote, each calling thread with its own SOCK_SEQPACKET connection to the
 *    keeper process (kproto.h), opened on first use and reopened after the keeper restarts.
 *    A keeper that is down or dies mid-request gives SK_ERR_DEVICE (503 hsm_unavailable),
 *    one that does not answer within its deadline SK_ERR_TIMEOUT (503 hsm_timeout);
 *    a request that never reached it (the connection had gone stale) is retried once on a
 *    fresh connection, so a restarted keeper costs no request.
 *
 * Thread safety: as hsm.h. Each calling thread gets its own token session, in-process or
 * in the keeper.
 */
#ifndef APPLIANCE_KEEPER_H
#define APPLIANCE_KEEPER_H

#include "base/signkey.h"

#include <stddef.h>
#include <stdint.h>

typedef struct kp kp;

/* How long the remote implementation waits for one reply (0: the default). A request past
 * its deadline answers SK_ERR_TIMEOUT (503 hsm_timeout) and its connection is dropped: a
 * stalled token (a wedged module call, a keeper stopped) holds no caller longer than
 * this. generate_ms bounds GENERATE alone (RSA-4096 takes seconds); it is never shorter
 * than timeout_ms; the service keys' public halves (created on first use) take it too. */
typedef struct {
    unsigned timeout_ms;  /* keeper_timeout_ms */
    unsigned generate_ms; /* keeper_generate_timeout_ms */
} kp_deadlines;
#define KP_TIMEOUT_DEFAULT_MS 2000
#define KP_GENERATE_DEFAULT_MS 60000

/* The remote implementation: the keeper listening at socket_path. Connects nothing yet
 * (the first call of each thread does), so it succeeds while the keeper is down. dl: NULL
 * for the defaults. */
sk_status kp_connect(const char *socket_path, const kp_deadlines *dl, kp **out, char *err,
                     size_t errlen);
void kp_close(kp *k);

/* The longest message one keeper SIGN carries (KPP_SIGN_MAX, kproto.h; keeper.c checks
 * they agree): remote kp_sign refuses longer (SK_ERR_BAD_ARGUMENT), and POST /v1/tokens
 * holds both modes to it (400 token_too_large). */
#define KP_SIGN_MAX (96 * 1024 - SK_KID_LEN)
sk_status kp_sign(kp *k, const sk_kid *kid, const void *msg, size_t len, uint8_t sig[SK_SIG_MAX],
                  size_t *sig_len);
/* Generates a key pair and returns its public half. */
sk_status kp_generate(kp *k, const sk_kid *kid, unsigned bits, sk_pubkey *pub);
/* The same, and *attrs (may be NULL): what the token holds for the new private half, read
 * back (base/signkey.h SK_ATTR_*). */
sk_status kp_generate_attrs(kp *k, const sk_kid *kid, unsigned bits, sk_pubkey *pub,
                            sk_attrs *attrs);
/* What the token holds for kid's private half, read back now (a key made before the
 * appliance recorded it). */
sk_status kp_key_attrs(kp *k, const sk_kid *kid, sk_attrs *attrs);
/* What the keeper found out about the token at its start (no token call). */
sk_status kp_token_info(kp *k, sk_token_info *out);
sk_status kp_destroy(kp *k, const sk_kid *kid);
sk_status kp_list(kp *k, sk_key_entry *out, size_t cap, size_t *count);
/* The token answers: a key it holds signs a probe, or, with no key, the token answers a
 * session query and the session is logged in (hsm_ping: cheap however many keys). */
sk_status kp_ping(kp *k, const sk_kid *probe_kid);
/* Service keys: the appliance's own keys in the token, each with a reserved CKA_ID (never
 * a client kid: reconcile leaves them alone, and the kp_ functions and the keeper refuse
 * them to SIGN and PING (SK_ERR_KEY_NOT_FOUND), GENERATE and DESTROY
 * (SK_ERR_BAD_ARGUMENT)), created on first use, and each signing one shape of document
 * and nothing else:
 *  - KP_SVC_AUDIT signs audit checkpoints (audit.h);
 *  - KP_SVC_PUBLISH signs the revocation feed and the token status lists
 *    (appliance/core/publish.c), so that a copy served by a cache can be checked against a
 *    pinned key: two headers, told apart by their typ.
 * A front that is compromised can still have them sign a document of their shape with
 * content of its choosing; it cannot have them sign a token or anything else. */
typedef enum { KP_SVC_AUDIT = 0, KP_SVC_PUBLISH, KP_SVC_COUNT_ } kp_svc;

#define KP_AUDIT_ID "signd-audit-v1\0\0" /* 16 bytes */
#define KP_AUDIT_KID "signd-audit-v1"    /* its JWS kid */
#define KP_AUDIT_BITS 3072               /* RSA-3072, generated by hsm_generate */
/* The compact JWS header of every checkpoint, and its base64url (test_keeperd checks that
 * the one is the encoding of the other). */
#define KP_AUDIT_HEADER                                                                            \
    "{\"alg\":\"RS256\",\"kid\":\"signd-audit-v1\",\"typ\":\"signd-audit-checkpoint+jwt\"}"
#define KP_AUDIT_HEADER_B64                                                                        \
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InNpZ25kLWF1ZGl0LXYxIiwidHlwIjoic2lnbmQtYXVkaXQtY2hlY2twb2ludCtq" \
    "d3QifQ"
#define KP_AUDIT_SIGN_MAX 1024

#define KP_PUBLISH_ID "signd-publish-v1"      /* 16 bytes */
#define KP_PUBLISH_KID "signd-publication-v1" /* its JWS kid, and its kid in the JWKS */
#define KP_PUBLISH_BITS 3072
#define KP_PUBLISH_HEADER                                                                          \
    "{\"alg\":\"RS256\",\"kid\":\"signd-publication-v1\",\"typ\":\"kid-revocation+jwt\"}"
#define KP_PUBLISH_HEADER_B64                                                                      \
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InNpZ25kLXB1YmxpY2F0aW9uLXYxIiwidHlwIjoia2lkLXJldm9jYXRpb24rand0" \
    "In0"
/* A token status list's header (the IETF OAuth Token Status List draft's typ), signed by
 * the same key. */
#define KP_STATUS_LIST_HEADER                                                                      \
    "{\"alg\":\"RS256\",\"kid\":\"signd-publication-v1\",\"typ\":\"statuslist+jwt\"}"
#define KP_STATUS_LIST_HEADER_B64                                                                  \
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InNpZ25kLXB1YmxpY2F0aW9uLXYxIiwidHlwIjoic3RhdHVzbGlzdCtqd3QifQ"
/* A feed's signing input may be this long: about 100,000 revocations. */
#define KP_PUBLISH_SIGN_MAX (16u * 1024 * 1024)

/* 1 when kid is a service key's id, else 0. */
int kp_is_reserved(const sk_kid *kid);
/* The service key's public half, the key pair being generated (RSA-3072) when the token
 * has none yet. Read once per handle, then answered from memory: a public route showing it
 * never waits for the token. */
sk_status kp_svc_public_key(kp *k, kp_svc s, sk_pubkey *pub);
/* RS256 over a document's JWS signing input with the service key (created if missing).
 * SK_ERR_BAD_ARGUMENT, the token untouched, unless kp_svc_input_ok(s, msg, len). */
sk_status kp_svc_sign(kp *k, kp_svc s, const void *msg, size_t len, uint8_t sig[SK_SIG_MAX],
                      size_t *sig_len);
/* A service key's one policy, shared by both modes and the keeper: 1 when msg is
 * document-shaped, i.e. at most the key's bound (KP_AUDIT_SIGN_MAX, KP_PUBLISH_SIGN_MAX),
 * one of the key's headers in base64url, ".", then a non-empty payload of base64url characters
 * only (so exactly one "." in all); else 0. */
int kp_svc_input_ok(kp_svc s, const void *msg, size_t len);
/* A service key's reserved id and its size in bits: what the in-process implementation
 * (inproc.h) and the keeper create it with. SK_ERR_BAD_ARGUMENT for an unknown s. */
sk_status kp_svc_params(kp_svc s, sk_kid *kid, unsigned *bits);

/* The in-process implementation's operations (appliance/keeper/inproc.c): kp_wrap_local
 * makes a handle whose kp_ functions call them on ctx, after the checks every mode
 * shares (reserved kids, kp_svc_input_ok, the service keys' cache). Each counts its own
 * failures for GET /metrics. close releases ctx (kp_close). */
typedef struct {
    sk_status (*sign)(void *ctx, const sk_kid *kid, const void *msg, size_t len,
                      uint8_t sig[SK_SIG_MAX], size_t *sig_len);
    sk_status (*generate)(void *ctx, const sk_kid *kid, unsigned bits, sk_pubkey *pub,
                          sk_attrs *attrs);
    sk_status (*key_attrs)(void *ctx, const sk_kid *kid, sk_attrs *attrs);
    sk_status (*token_info)(void *ctx, sk_token_info *out);
    sk_status (*destroy)(void *ctx, const sk_kid *kid);
    sk_status (*list)(void *ctx, sk_key_entry *out, size_t cap, size_t *count);
    sk_status (*ping)(void *ctx, const sk_kid *probe_kid);
    sk_status (*svc_public_key)(void *ctx, kp_svc s, sk_pubkey *pub);
    sk_status (*svc_sign)(void *ctx, kp_svc s, const void *msg, size_t len, uint8_t sig[SK_SIG_MAX],
                          size_t *sig_len);
    void (*thread_done)(void *ctx);
    unsigned (*sessions_open)(void *ctx);
    unsigned long (*reopens)(void *ctx);
    void (*close)(void *ctx);
} kp_local_ops;
/* A handle over ops and ctx. SK_ERR_DEVICE (out of memory; ctx left to the caller). */
sk_status kp_wrap_local(const kp_local_ops *ops, void *ctx, kp **out);
/* Releases the calling thread's session (CivetWeb's exit_thread). */
void kp_thread_done(kp *k);
unsigned kp_sessions_open(kp *k);
/* How many times the keeper re-opened the module since it started (hsm_reopens), into
 * *out; SK_OK, or the failure (*out untouched). The readiness probe reads it for
 * signd_hsm_reopens_total. */
sk_status kp_reopens(kp *k, unsigned long *out);

#endif
