/*
 * test_audit_verify: the audit chain's pure rules (appliance/core/auditverify.h): the hash
 * of an event, the verification of an export with only the audit public key, and the one
 * anchor parser of signdctl and signd-provision. Chains are built here, checkpoints signed
 * with real RSA keys made by OpenSSL; every tampering an auditor must catch (an edited,
 * deleted, swapped or reordered event, a rehashed chain, a foreign key, a cut tail past an
 * anchor) is made on the export's lines and must be found at its seq.
 *
 * The appliance's side (that it writes such a chain and exports it over HTTPS, that the
 * keeper signs its checkpoints, and that tampering with appliance.db shows in its export)
 * stays in tests/blackbox/test_audit.py.
 */
#include "appliance/core/auditverify.h"
#include "appliance/kproto/keeper.h"
#include "jose/jose.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#define ZERO_HASH "0000000000000000000000000000000000000000000000000000000000000000"
#define T0 1700000000
#define KID_A "00112233445566778899aabbccddeeff"
#define KID_B "ffeeddccbbaa99887766554433221100"

static EVP_PKEY *audit_key; /* signs the checkpoints */
static EVP_PKEY *other_key; /* another appliance's, or anyone's */
static char *audit_pem, *other_pem;

static char *pem_of(EVP_PKEY *k)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data = NULL, *out = NULL;
    if (b != NULL && PEM_write_bio_PUBKEY(b, k) == 1) {
        long n = BIO_get_mem_data(b, &data);
        out = n > 0 ? strndup(data, (size_t)n) : NULL;
    }
    BIO_free(b);
    return out;
}

static int keys_setup(void **state)
{
    (void)state;
    audit_key = EVP_RSA_gen(2048);
    other_key = EVP_RSA_gen(2048);
    audit_pem = audit_key ? pem_of(audit_key) : NULL;
    other_pem = other_key ? pem_of(other_key) : NULL;
    return audit_pem != NULL && other_pem != NULL ? 0 : -1;
}

static int keys_teardown(void **state)
{
    (void)state;
    EVP_PKEY_free(audit_key);
    EVP_PKEY_free(other_key);
    free(audit_pem);
    free(other_pem);
    return 0;
}

/* ---- building an export ---------------------------------------------------------------------
 */

static char *b64u(const void *in, size_t n)
{
    size_t cap = jose_b64url_encoded_len(n) + 1;
    char *out = malloc(cap);
    assert_non_null(out);
    assert_int_not_equal(jose_b64url_encode(in, n, out, cap), 0);
    return out;
}

/* A checkpoint line over (seq, hash), its JWS signed by key as the keeper signs one. */
static json_t *checkpoint(EVP_PKEY *key, uint64_t seq, const char *hash, int64_t t)
{
    json_t *p =
        json_pack("{s:s, s:I, s:I}", "hash", hash, "seq", (json_int_t)seq, "time", (json_int_t)t);
    char *payload = json_dumps(p, JSON_COMPACT | JSON_SORT_KEYS);
    char *h64 = b64u(AV_CHECKPOINT_HEADER, strlen(AV_CHECKPOINT_HEADER));
    char *p64 = b64u(payload, strlen(payload));
    char input[1024];
    int len = snprintf(input, sizeof(input), "%s.%s", h64, p64);
    assert_true(len > 0 && (size_t)len < sizeof(input));
    unsigned char sig[512];
    size_t siglen = sizeof(sig);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key), 1);
    assert_int_equal(EVP_DigestSign(ctx, sig, &siglen, (unsigned char *)input, (size_t)len), 1);
    EVP_MD_CTX_free(ctx);
    char *s64 = b64u(sig, siglen);
    char jws[2048];
    assert_true(snprintf(jws, sizeof(jws), "%s.%s", input, s64) < (int)sizeof(jws));
    json_t *line = json_pack("{s:s, s:I, s:s, s:I, s:s}", "type", "checkpoint", "seq",
                             (json_int_t)seq, "hash", hash, "time", (json_int_t)t, "jws", jws);
    free(s64);
    free(p64);
    free(h64);
    free(payload);
    json_decref(p);
    return line;
}

/* Recomputes the hash (and prev_hash, from prev) of an event line in place. */
static void rehash(json_t *e, const char *prev)
{
    char h[AV_HASH_HEX + 1];
    assert_int_equal(chash_event(prev, (uint64_t)json_integer_value(json_object_get(e, "seq")),
                                 json_integer_value(json_object_get(e, "time")),
                                 json_string_value(json_object_get(e, "actor")),
                                 json_string_value(json_object_get(e, "action")),
                                 json_string_value(json_object_get(e, "kid")),
                                 json_object_get(e, "details"), h),
                     0);
    json_object_set_new(e, "prev_hash", json_string(prev));
    json_object_set_new(e, "hash", json_string(h));
}

/* chain(): from this seq on (0: never), events name the node that appended them in their
 * details, as a cluster's nodes do ("node-a" and "node-b" in turn), where older events of
 * the same trail name none. */
static unsigned node_from;

/* Events 1..n of a bit of everything (keys, credentials, failures, counts, non-ASCII), a
 * checkpoint after every cp_every-th and after the last, as audit_export writes them. */
static json_t *chain(unsigned n, unsigned cp_every)
{
    json_t *lines = json_array();
    char prev[AV_HASH_HEX + 1] = ZERO_HASH;
    for (unsigned seq = 1; seq <= n; seq++) {
        json_t *details;
        const char *action, *kid = "", *actor = "system";
        switch (seq % 5) {
        case 1:
            action = "key.created";
            kid = seq % 2 ? KID_A : KID_B;
            actor = "0123456789abcdef";
            details = json_pack("{s:i, s:s}", "bits", 2048, "label", "caf\xc3\xa9");
            break;
        case 2:
            action = "auth.failed";
            details = json_pack("{s:s, s:s, s:s}", "method", "GET", "path", "/v1/keys/caf???",
                                "reason", "unknown credential");
            break;
        case 3:
            action = "sign.counts";
            details = json_pack("{s:{s:i}, s:{s:i}}", "by_kid", KID_A, 3, "by_credential",
                                "0123456789abcdef", 3);
            break;
        case 4:
            action = "credential.created";
            actor = "0123456789abcdef";
            details = json_pack("{s:s, s:s, s:[s]}", "credential", "fedcba9876543210", "role",
                                "signer", "kids", KID_B);
            break;
        default:
            action = "key.revoked";
            kid = KID_A;
            details = json_pack("{s:s, s:i}", "reason", "rotated", "revocation_seq", (int)seq);
            break;
        }
        if (node_from != 0 && seq >= node_from)
            json_object_set_new(details, "node", json_string(seq % 2 ? "node-a" : "node-b"));
        json_t *e = json_pack("{s:s, s:I, s:I, s:s, s:s, s:s, s:o}", "type", "event", "seq",
                              (json_int_t)seq, "time", (json_int_t)(T0 + seq), "actor", actor,
                              "action", action, "kid", kid, "details", details);
        rehash(e, prev);
        snprintf(prev, sizeof(prev), "%s", json_string_value(json_object_get(e, "hash")));
        json_array_append_new(lines, e);
        if (seq % cp_every == 0 || seq == n)
            json_array_append_new(lines, checkpoint(audit_key, seq, prev, T0 + seq));
    }
    return lines;
}

static size_t index_of(json_t *lines, const char *type, uint64_t seq)
{
    size_t i;
    json_t *l;
    json_array_foreach(lines, i, l)
    {
        if (strcmp(json_string_value(json_object_get(l, "type")), type) == 0 &&
            (uint64_t)json_integer_value(json_object_get(l, "seq")) == seq)
            return i;
    }
    fail_msg("no %s line at seq %llu", type, (unsigned long long)seq);
    return 0;
}

static json_t *event_at(json_t *lines, uint64_t seq)
{
    return json_array_get(lines, index_of(lines, "event", seq));
}

static void drop(json_t *lines, const char *type, uint64_t seq)
{
    json_array_remove(lines, index_of(lines, type, seq));
}

static FILE *as_file(json_t *lines, const char *extra)
{
    FILE *f = tmpfile();
    assert_non_null(f);
    size_t i;
    json_t *l;
    json_array_foreach(lines, i, l)
    {
        char *text = json_dumps(l, JSON_COMPACT);
        fprintf(f, "%s\n", text);
        free(text);
    }
    if (extra != NULL)
        fputs(extra, f);
    rewind(f);
    return f;
}

static int verify(json_t *lines, const char *pem, const av_anchor *anchor, av_verdict *v)
{
    FILE *f = as_file(lines, NULL);
    int rc = av_verify_export(f, pem, anchor, v);
    fclose(f);
    return rc;
}

/* Verification fails at seq with why containing what; returns nothing, asserts. */
static void assert_broken(json_t *lines, const char *pem, const av_anchor *anchor, uint64_t seq,
                          const char *what)
{
    av_verdict v;
    assert_int_equal(verify(lines, pem, anchor, &v), -1);
    if (v.broken_seq != seq || strstr(v.why, what) == NULL)
        fail_msg("broken at seq %llu (%s); wanted seq %llu with \"%s\"",
                 (unsigned long long)v.broken_seq, v.why, (unsigned long long)seq, what);
}

static const char *hash_at(json_t *lines, uint64_t seq)
{
    return json_string_value(json_object_get(event_at(lines, seq), "hash"));
}

/* ---- the hash rule ---------------------------------------------------------------------------
 */

static void test_the_hash_rule_is_the_documented_one(void **state)
{
    (void)state;
    /* Known answers, computed with Python's hashlib over the canonical text (sorted keys,
     * compact, \u00E9 with uppercase hex as jansson writes it). */
    json_t *d1 = json_pack("{s:s, s:i}", "label", "caf\xc3\xa9", "bits", 2048);
    json_t *d2 = json_pack("{s:s, s:[i,i]}", "path", "/v1/keys", "n", 1, 2);
    char h1[AV_HASH_HEX + 1], h2[AV_HASH_HEX + 1];
    assert_int_equal(chash_event(ZERO_HASH, 1, T0, "system", "key.created", KID_A, d1, h1), 0);
    assert_string_equal(h1, "f7bd2a23db522939b171220cc59713aa5b584a986410439dab0b3b2c055c5620");
    assert_int_equal(chash_event(h1, 2, T0 + 1, "system", "auth.failed", "", d2, h2), 0);
    assert_string_equal(h2, "c67ffd4323ef4e2ea789252ba5d8ab0de9a4005e0d7f42de467709b09ee9e826");
    /* A prev_hash that is not 64 hex digits, or details that are not an object, hash
     * nothing. */
    assert_int_equal(chash_event("00", 1, T0, "system", "x", "", d1, h2), -1);
    json_t *array = json_array();
    assert_int_equal(chash_event(ZERO_HASH, 1, T0, "system", "x", "", array, h2), -1);
    json_decref(array);
    assert_int_equal(chash_event(ZERO_HASH, 1, T0, NULL, "x", "", d1, h2), -1);
    /* Reals have no canonical text; nesting is bounded. */
    assert_true(chash_details_ok(d2));
    json_t *real = json_pack("{s:f}", "x", 1.5);
    assert_false(chash_details_ok(real));
    json_t *deep = json_object();
    for (int i = 0; i < 10; i++)
        deep = json_pack("{s:o}", "d", deep);
    assert_false(chash_details_ok(deep));
    json_decref(real);
    json_decref(deep);
    json_decref(d1);
    json_decref(d2);
}

static void test_the_checkpoint_header_is_the_one_the_keeper_signs_under(void **state)
{
    (void)state;
    assert_string_equal(AV_CHECKPOINT_HEADER, KP_AUDIT_HEADER);
}

/* ---- exports that verify ---------------------------------------------------------------------
 */

static void test_a_whole_export_verifies_with_only_the_audit_public_key(void **state)
{
    (void)state;
    json_t *lines = chain(12, 5);
    av_verdict v;
    assert_int_equal(verify(lines, audit_pem, NULL, &v), 0);
    assert_int_equal(v.events, 12);
    assert_int_equal(v.last_seq, 12);
    assert_int_equal(v.last_checkpoint, 12);
    assert_int_equal(v.broken_seq, 0);
    /* With the anchor of a checkpoint it holds, too. */
    av_anchor a = {.seq = 10};
    snprintf(a.hash, sizeof(a.hash), "%s", hash_at(lines, 10));
    assert_int_equal(verify(lines, audit_pem, &a, &v), 0);
    json_decref(lines);
}

/* A trail from before cluster mode goes on in one: events without "node" and events with
 * it verify alike (the node is in the hashed details; the hash rule is unchanged), and a
 * node name changed afterwards is found at its seq. */
static void test_events_without_and_with_their_node_verify_in_one_export(void **state)
{
    (void)state;
    node_from = 7;
    json_t *lines = chain(12, 5);
    node_from = 0;
    assert_null(json_object_get(json_object_get(event_at(lines, 6), "details"), "node"));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(event_at(lines, 9), "details"), "node")),
        "node-a");
    av_verdict v;
    assert_int_equal(verify(lines, audit_pem, NULL, &v), 0);
    assert_int_equal(v.events, 12);
    assert_int_equal(v.last_checkpoint, 12);
    json_object_set_new(json_object_get(event_at(lines, 9), "details"), "node",
                        json_string("node-b"));
    assert_broken(lines, audit_pem, NULL, 9, "hash");
    json_decref(lines);
}

static void test_a_part_of_the_trail_verifies_on_its_own(void **state)
{
    (void)state;
    /* from=3, to=8: events 3..8 and the checkpoints inside (at 5). */
    json_t *lines = chain(12, 5);
    json_t *part = json_array();
    size_t i;
    json_t *l;
    json_array_foreach(lines, i, l)
    {
        json_int_t seq = json_integer_value(json_object_get(l, "seq"));
        if (seq >= 3 && seq <= 8)
            json_array_append(part, l);
    }
    av_verdict v;
    assert_int_equal(verify(part, audit_pem, NULL, &v), 0);
    assert_int_equal(v.events, 6);
    assert_int_equal(v.last_seq, 8);
    assert_int_equal(v.last_checkpoint, 5);
    json_decref(part);
    json_decref(lines);
}

static void
test_an_export_without_its_oldest_events_verifies_with_fewer_events_than_seqs(void **state)
{
    /* Links are checked from the first event an export holds, so a trail without its
     * oldest events verifies: only N < S in the verdict shows it does not start at seq 1
     * (docs/api.md, "What verification cannot see"). */
    (void)state;
    json_t *lines = chain(9, 4);
    drop(lines, "event", 1);
    drop(lines, "event", 2);
    av_verdict v;
    assert_int_equal(verify(lines, audit_pem, NULL, &v), 0);
    assert_int_equal(v.events, 7);
    assert_int_equal(v.last_seq, 9);
    json_decref(lines);
}

/* ---- tampering -------------------------------------------------------------------------------
 */

static void test_another_key_fails_at_the_first_checkpoint(void **state)
{
    (void)state;
    json_t *lines = chain(12, 5);
    assert_broken(lines, other_pem, NULL, 5, "does not verify with the audit key");
    /* Checkpoints signed by another key fail with the right one just the same. */
    json_t *forged = chain(3, 10);
    json_array_set_new(forged, index_of(forged, "checkpoint", 3),
                       checkpoint(other_key, 3, hash_at(forged, 3), T0));
    assert_broken(forged, audit_pem, NULL, 3, "does not verify with the audit key");
    json_decref(forged);
    json_decref(lines);
}

static void test_editing_any_column_of_an_event_is_found_at_its_seq(void **state)
{
    (void)state;
    const char *columns[] = {"details", "actor", "action", "time", "kid"};
    for (size_t c = 0; c < sizeof(columns) / sizeof(columns[0]); c++) {
        json_t *lines = chain(12, 5);
        json_t *e = event_at(lines, 6); /* a key.created */
        json_t *value = c == 0   ? json_pack("{s:i, s:s}", "bits", 2048, "label", "innocent")
                        : c == 1 ? json_string("fedcba9876543210")
                        : c == 2 ? json_string("key.deleted")
                        : c == 3 ? json_integer(1000000000)
                                 : json_string("00000000000000000000000000000000");
        json_object_set_new(e, columns[c], value);
        assert_broken(lines, audit_pem, NULL, 6, "hash does not match the event's contents");
        json_decref(lines);
    }
}

static void test_a_deleted_event_is_found_at_its_seq(void **state)
{
    (void)state;
    json_t *lines = chain(12, 5);
    drop(lines, "event", 7);
    assert_broken(lines, audit_pem, NULL, 7, "missing: seq 8 follows 6");
    json_decref(lines);
}

static void test_two_swapped_events_are_found_at_the_first_of_them(void **state)
{
    /* As an UPDATE of seq in appliance.db does: rows 6 and 7 trade places, each taking the
     * other's seq; the export lists them by seq. */
    (void)state;
    json_t *lines = chain(12, 5);
    json_t *six = json_deep_copy(event_at(lines, 6)), *seven = json_deep_copy(event_at(lines, 7));
    json_object_set_new(six, "seq", json_integer(7));
    json_object_set_new(seven, "seq", json_integer(6));
    json_array_set_new(lines, index_of(lines, "event", 6), seven);
    json_array_set_new(lines, index_of(lines, "event", 7), six);
    av_verdict v;
    assert_int_equal(verify(lines, audit_pem, NULL, &v), -1);
    assert_int_equal(v.broken_seq, 6);
    assert_string_equal(v.why, "prev_hash is not the hash of seq 5");
    json_decref(lines);
}

static void test_lines_out_of_order_are_found_where_the_order_breaks(void **state)
{
    (void)state;
    json_t *lines = chain(12, 20);
    size_t i6 = index_of(lines, "event", 6), i7 = index_of(lines, "event", 7);
    json_t *six = json_incref(json_array_get(lines, i6));
    json_array_set(lines, i6, json_array_get(lines, i7));
    json_array_set_new(lines, i7, six);
    assert_broken(lines, audit_pem, NULL, 6, "missing: seq 7 follows 5");
    /* A seq that goes back is out of order. */
    json_t *again = chain(4, 20);
    json_array_insert_new(again, 4, json_deep_copy(event_at(again, 2)));
    assert_broken(again, audit_pem, NULL, 5, "out of order: seq 2 follows 4");
    json_decref(again);
    json_decref(lines);
}

static void test_a_rehashed_chain_is_caught_by_the_next_checkpoint(void **state)
{
    /* Whoever can write the file can recompute every hash after an edit (and the hash in
     * each checkpoint line); what they cannot make is the audit key's signature. */
    (void)state;
    json_t *lines = chain(12, 5);
    json_object_set_new(event_at(lines, 6), "details",
                        json_pack("{s:i, s:s}", "bits", 2048, "label", "innocent"));
    char prev[AV_HASH_HEX + 1];
    snprintf(prev, sizeof(prev), "%s", hash_at(lines, 5));
    for (uint64_t seq = 6; seq <= 12; seq++) {
        rehash(event_at(lines, seq), prev);
        snprintf(prev, sizeof(prev), "%s", hash_at(lines, seq));
        if (seq % 5 == 0 || seq == 12)
            json_object_set_new(json_array_get(lines, index_of(lines, "checkpoint", seq)), "hash",
                                json_string(prev));
    }
    assert_broken(lines, audit_pem, NULL, 10, "checkpoint's signed seq or hash differs");
    json_decref(lines);
}

static void test_a_checkpoint_must_name_an_event_of_the_export(void **state)
{
    (void)state;
    json_t *lines = chain(6, 5);
    json_object_set_new(json_array_get(lines, index_of(lines, "checkpoint", 5)), "hash",
                        json_string(hash_at(lines, 4)));
    assert_broken(lines, audit_pem, NULL, 5, "checkpoint's hash is not the hash of event 5");
    json_decref(lines);
    /* A checkpoint ahead of its event. */
    lines = chain(6, 5);
    json_t *cp = json_incref(json_array_get(lines, index_of(lines, "checkpoint", 5)));
    json_array_remove(lines, index_of(lines, "checkpoint", 5));
    json_array_insert_new(lines, 0, cp);
    assert_broken(lines, audit_pem, NULL, 5, "checkpoint for seq 5 has no event before it");
    json_decref(lines);
    /* A checkpoint that is not a JWS, or whose header is not the audit key's. */
    lines = chain(6, 10);
    json_t *last = json_array_get(lines, index_of(lines, "checkpoint", 6));
    json_object_set_new(last, "jws", json_string("not.a.jws"));
    assert_broken(lines, audit_pem, NULL, 6, "checkpoint is not a compact JWS");
    json_decref(lines);
    lines = chain(6, 10);
    last = json_array_get(lines, index_of(lines, "checkpoint", 6));
    const char *jws = json_string_value(json_object_get(last, "jws"));
    const char *hdr = "{\"alg\":\"RS256\",\"kid\":\"signd-publication-v1\"}";
    char *h64 = b64u(hdr, strlen(hdr));
    char swapped[2048];
    snprintf(swapped, sizeof(swapped), "%s%s", h64, strchr(jws, '.'));
    json_object_set_new(last, "jws", json_string(swapped));
    assert_broken(lines, audit_pem, NULL, 6, "checkpoint header is not the audit key's");
    free(h64);
    json_decref(lines);
}

/* ---- the anchor ------------------------------------------------------------------------------
 */

static void test_a_cut_tail_is_found_only_with_an_anchor_past_it(void **state)
{
    (void)state;
    /* The auditor kept the checkpoint at 10. */
    json_t *kept = chain(12, 5);
    av_anchor anchor = {.seq = 10};
    snprintf(anchor.hash, sizeof(anchor.hash), "%s", hash_at(kept, 10));
    av_verdict v;
    assert_int_equal(verify(kept, audit_pem, &anchor, &v), 0);
    /* The trail is cut back to 6, and the appliance signs its new head itself. */
    json_t *cut = chain(6, 5);
    assert_int_equal(verify(cut, audit_pem, NULL, &v), 0);
    assert_int_equal(v.events, 6);
    assert_int_equal(v.last_seq, 6);
    assert_broken(cut, audit_pem, &anchor, 10,
                  "truncated: the export ends at seq 6 but the anchor checkpoint is at seq 10");
    /* An anchor whose hash is not the event's at that seq fails too (a chain cut and grown
     * past it again). */
    av_anchor wrong = {.seq = 6};
    snprintf(wrong.hash, sizeof(wrong.hash), "%s", anchor.hash);
    assert_broken(cut, audit_pem, &wrong, 6, "event 6 is not the one the anchor names");
    /* An anchor before the first event an export holds cannot be checked: refused. */
    drop(cut, "event", 1);
    av_anchor early = {.seq = 1};
    snprintf(early.hash, sizeof(early.hash), "%s", hash_at(kept, 1));
    assert_broken(cut, audit_pem, &early, 1, "truncated");
    json_decref(cut);
    json_decref(kept);
}

static void test_the_anchor_is_seq_colon_64_lowercase_hex(void **state)
{
    (void)state;
    char text[128];
    const char *h = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    av_anchor a;
    snprintf(text, sizeof(text), "1200:%s", h);
    assert_int_equal(av_anchor_parse(text, &a), AV_ANCHOR_OK);
    assert_int_equal(a.seq, 1200);
    assert_string_equal(a.hash, h);
    snprintf(text, sizeof(text), "4611686018427387904:%s", h); /* 2^62 */
    assert_int_equal(av_anchor_parse(text, &a), AV_ANCHOR_OK);
    assert_int_equal(a.seq, 1ULL << 62);

    const char *z63 = "000000000000000000000000000000000000000000000000000000000000000";
    struct {
        const char *seq, *hash;
        av_anchor_err want;
    } bad[] = {
        {"12", NULL, AV_ANCHOR_FORM}, /* no colon */
        {"x", ZERO_HASH, AV_ANCHOR_FORM},
        {"", ZERO_HASH, AV_ANCHOR_FORM},
        {"3", z63, AV_ANCHOR_FORM}, /* 63 hex */
        {"3", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", AV_ANCHOR_FORM},
        {"3", ZERO_HASH "0", AV_ANCHOR_FORM},
        {"-3", ZERO_HASH, AV_ANCHOR_FORM},
        {"+3", ZERO_HASH, AV_ANCHOR_FORM},
        {" 3", ZERO_HASH, AV_ANCHOR_FORM},
        {"0x3", ZERO_HASH, AV_ANCHOR_FORM},
        {"0", ZERO_HASH, AV_ANCHOR_SEQ},
        {"4611686018427387905", ZERO_HASH, AV_ANCHOR_SEQ},  /* 2^62 + 1 */
        {"18446744073709551617", ZERO_HASH, AV_ANCHOR_SEQ}, /* past 2^64 */
        {"99999999999999999999999", ZERO_HASH, AV_ANCHOR_SEQ},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (bad[i].hash != NULL)
            snprintf(text, sizeof(text), "%s:%s", bad[i].seq, bad[i].hash);
        else
            snprintf(text, sizeof(text), "%s", bad[i].seq);
        av_anchor_err got = av_anchor_parse(text, &a);
        if (got != bad[i].want)
            fail_msg("%s: %d, wanted %d", text, got, bad[i].want);
        assert_int_equal(a.seq, 0);
        assert_true(strstr(av_anchor_strerror(got), "SEQ:HASH") != NULL);
    }
    assert_int_equal(av_anchor_parse(NULL, &a), AV_ANCHOR_FORM);
}

/* ---- input that is not an export -------------------------------------------------------------
 */

static void test_unusable_input_is_reported(void **state)
{
    (void)state;
    av_verdict v;
    json_t *none = json_array();
    assert_int_equal(verify(none, audit_pem, NULL, &v), -1);
    assert_int_equal(v.broken_seq, 0);
    assert_string_equal(v.why, "the export holds no event");
    json_decref(none);

    json_t *lines = chain(3, 5);
    assert_int_equal(verify(lines, "not a key\n", NULL, &v), -1);
    assert_int_equal(v.broken_seq, 0);
    assert_string_equal(v.why, "the audit public key is not a PEM public key");

    FILE *f = as_file(lines, "not json\n");
    assert_int_equal(av_verify_export(f, audit_pem, NULL, &v), -1);
    fclose(f);
    assert_int_equal(v.broken_seq, 4);
    assert_string_equal(v.why, "line 5 is not an export line");

    f = as_file(lines, "{\"type\":\"note\",\"seq\":4}\n");
    assert_int_equal(av_verify_export(f, audit_pem, NULL, &v), -1);
    fclose(f);
    assert_string_equal(v.why, "line 5 has an unknown type");

    json_object_del(event_at(lines, 2), "details");
    assert_broken(lines, audit_pem, NULL, 2, "missing or mistyped field");
    json_decref(lines);

    /* A line longer than AV_LINE_MAX is refused, not split. */
    char *big = malloc(AV_LINE_MAX + 16);
    memset(big, ' ', AV_LINE_MAX + 8);
    strcpy(big + AV_LINE_MAX + 8, "{}\n");
    f = tmpfile();
    fputs(big, f);
    rewind(f);
    assert_int_equal(av_verify_export(f, audit_pem, NULL, &v), -1);
    assert_true(strstr(v.why, "line 1 is longer than") != NULL);
    fclose(f);
    free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_the_hash_rule_is_the_documented_one),
        cmocka_unit_test(test_the_checkpoint_header_is_the_one_the_keeper_signs_under),
        cmocka_unit_test(test_a_whole_export_verifies_with_only_the_audit_public_key),
        cmocka_unit_test(test_events_without_and_with_their_node_verify_in_one_export),
        cmocka_unit_test(test_a_part_of_the_trail_verifies_on_its_own),
        cmocka_unit_test(
            test_an_export_without_its_oldest_events_verifies_with_fewer_events_than_seqs),
        cmocka_unit_test(test_another_key_fails_at_the_first_checkpoint),
        cmocka_unit_test(test_editing_any_column_of_an_event_is_found_at_its_seq),
        cmocka_unit_test(test_a_deleted_event_is_found_at_its_seq),
        cmocka_unit_test(test_two_swapped_events_are_found_at_the_first_of_them),
        cmocka_unit_test(test_lines_out_of_order_are_found_where_the_order_breaks),
        cmocka_unit_test(test_a_rehashed_chain_is_caught_by_the_next_checkpoint),
        cmocka_unit_test(test_a_checkpoint_must_name_an_event_of_the_export),
        cmocka_unit_test(test_a_cut_tail_is_found_only_with_an_anchor_past_it),
        cmocka_unit_test(test_the_anchor_is_seq_colon_64_lowercase_hex),
        cmocka_unit_test(test_unusable_input_is_reported),
    };
    return cmocka_run_group_tests(tests, keys_setup, keys_teardown);
}
