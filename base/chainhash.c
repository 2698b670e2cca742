/* chainhash: the audit chain's hash rule. See chainhash.h. */
#include "base/chainhash.h"

#include "base/hex.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

/* No reals: their text form is not canonical across implementations. */
static int chash_details_walk(json_t *j, int depth)
{
    if (depth > 8 || json_is_real(j))
        return 0;
    const char *k;
    json_t *v;
    size_t i;
    if (json_is_object(j)) {
        json_object_foreach(j, k, v) if (!chash_details_walk(v, depth + 1)) return 0;
    } else if (json_is_array(j)) {
        json_array_foreach(j, i, v) if (!chash_details_walk(v, depth + 1)) return 0;
    }
    return 1;
}

int chash_details_ok(json_t *details)
{
    return chash_details_walk(details, 0);
}

/* canonical(event) as malloc'd text. details is borrowed. */
static char *chash_canonical(uint64_t seq, int64_t time, const char *actor, const char *action,
                             const char *kid, json_t *details)
{
    json_t *ev =
        json_pack("{s:s, s:s, s:O, s:s, s:I, s:I}", "action", action, "actor", actor, "details",
                  details, "kid", kid, "seq", (json_int_t)seq, "time", (json_int_t)time);
    char *text = ev ? json_dumps(ev, CHASH_JSON_FLAGS) : NULL;
    json_decref(ev);
    return text;
}

int chash_event(const char *prev_hex, uint64_t seq, int64_t time, const char *actor,
                const char *action, const char *kid, json_t *details, char out[CHASH_HEX + 1])
{
    uint8_t prev[32], md[32];
    unsigned int mdlen = 0;
    if (prev_hex == NULL || strlen(prev_hex) != CHASH_HEX ||
        hex_decode(prev_hex, CHASH_HEX, prev, 32) != 0 || actor == NULL || action == NULL ||
        kid == NULL || !json_is_object(details))
        return -1;
    char *canonical = chash_canonical(seq, time, actor, action, kid, details);
    if (canonical == NULL)
        return -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, prev, sizeof(prev)) == 1 &&
             EVP_DigestUpdate(ctx, canonical, strlen(canonical)) == 1 &&
             EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 32;
    EVP_MD_CTX_free(ctx);
    free(canonical);
    if (!ok)
        return -1;
    hex_encode(md, 32, out);
    return 0;
}
