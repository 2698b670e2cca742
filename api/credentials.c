/* api: API credentials (POST/GET /v1/credentials, GET/DELETE /v1/credentials/{id}), admin
 * only (the server's route table says so). A secret exists in this process only between
 * cred_create and the response write: it never goes into a json_t (jansson frees without
 * wiping), only into the response body, which is marked to be wiped when freed. */
#include "api/api.h"
#include "base/hex.h"
#include "base/text.h"

#include <openssl/crypto.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Serialises "is this the last active admin?" with the revoke that follows, so two admins
 * revoking each other at once cannot leave none. */
static pthread_mutex_t api_admin_mu = PTHREAD_MUTEX_INITIALIZER;

json_t *api_credential_json(const cred_record *c)
{
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:I}", "id", c->id, "role", cred_role_name(c->role),
                          "label", c->label, "state", c->revoked_at ? "revoked" : "active",
                          "created_at", (json_int_t)c->created_at);
    if (j == NULL)
        return NULL;
    if (c->role == CRED_ROLE_SIGNER) {
        if (c->all_kids) {
            json_object_set_new(j, "kids", json_string("all"));
        } else {
            json_t *kids = json_array();
            for (size_t i = 0; kids != NULL && i < c->n_kids; i++) {
                char hex[2 * SK_KID_LEN + 1];
                sk_kid_hex(&c->kids[i], hex);
                json_array_append_new(kids, json_string(hex));
            }
            json_object_set_new(j, "kids", kids);
        }
        json_object_set_new(j, "max_ttl", json_integer(c->max_ttl));
    }
    if (c->client_subject[0] != '\0')
        json_object_set_new(j, "client_subject", json_string(c->client_subject));
    if (c->revoked_at)
        json_object_set_new(j, "revoked_at", json_integer(c->revoked_at));
    return j;
}

/* The path's {id}: 16 lowercase hex digits. */
static api_err api_credential_id(const api_req *q, api_resp *r)
{
    const char *id = q->id ? q->id : "";
    if (!hex_string(id, CRED_ID_LEN))
        return api_fail(r, API_ERR_INVALID_CREDENTIAL_ID,
                        "a credential id is 16 lowercase hexadecimal characters");
    return API_OK;
}

/* Reads "kids": "all", or a list of 1..CRED_KIDS_MAX distinct, well-formed kids (whether
 * this appliance knows them is the handler's question). */
static api_err api_read_kids(json_t *v, api_credentials_create_body *out, api_resp *r)
{
    if (json_is_string(v) && strcmp(json_string_value(v), "all") == 0) {
        out->all_kids = 1;
        return API_OK;
    }
    if (!json_is_array(v))
        return api_fail(r, API_ERR_WRONG_TYPE, "'kids' must be \"all\" or a list of kids");
    size_t n = json_array_size(v);
    if (n == 0 || n > CRED_KIDS_MAX)
        return api_fail(r, API_ERR_OUT_OF_RANGE, "'kids' must list 1 to %d kids", CRED_KIDS_MAX);
    for (size_t i = 0; i < n; i++) {
        const char *text = json_string_value(json_array_get(v, i));
        if (text == NULL || sk_kid_parse(text, &out->kids[i]) != 0)
            return api_fail(r, API_ERR_INVALID_KID,
                            "'kids'[%zu] must be 32 lowercase hexadecimal characters", i);
        for (size_t k = 0; k < i; k++)
            if (memcmp(&out->kids[k], &out->kids[i], sizeof(out->kids[i])) == 0)
                return api_fail(r, API_ERR_INVALID_KID, "'kids' lists %s twice", text);
        out->n_kids = i + 1;
    }
    return API_OK;
}

/* Parses and bounds the create body's fields (body already strict-parsed) into out. */
static api_err api_read_spec(const api_req *q, json_t *body, api_credentials_create_body *out,
                             api_resp *r)
{
    const cfg *c = q->env->cfg;
    const char *role = NULL, *label = NULL, *subject = NULL;
    int64_t max_ttl = 0;
    api_err e;
    if ((e = api_get_string(body, "role", 16, &role, r)) != API_OK ||
        (e = api_get_string(body, "label", CRED_LABEL_MAX, &label, r)) != API_OK ||
        (e = api_get_string(body, "client_subject", CRED_SUBJECT_MAX, &subject, r)) != API_OK ||
        (e = api_get_int(body, "max_ttl", 0, c->token_ttl_max, &max_ttl, r)) != API_OK)
        return e;
    if (role == NULL)
        return api_fail(r, API_ERR_MISSING_FIELD,
                        "'role' (admin, signer, auditor or redeemer) is required");
    if (cred_role_parse(role, &out->role) != 0)
        return api_fail(r, API_ERR_INVALID_ROLE,
                        "'role' must be admin, signer, auditor or redeemer");
    if (!txt_printable_str(label))
        return api_fail(r, API_ERR_INVALID_LABEL, "'label' must be printable ASCII");
    out->has_label = label != NULL;
    snprintf(out->label, sizeof(out->label), "%s", label != NULL ? label : "");
    if (subject != NULL) {
        if (c->tls_client_ca[0] == '\0')
            return api_fail(r, API_ERR_BAD_REQUEST,
                            "'client_subject' needs mutual TLS: set tls_client_ca first");
        if (!txt_printable_str(subject))
            return api_fail(r, API_ERR_OUT_OF_RANGE,
                            "'client_subject' must be printable ASCII (RFC 2253)");
        if (subject[0] == '\0')
            return api_fail(r, API_ERR_OUT_OF_RANGE, "'client_subject' must not be empty");
        out->has_subject = 1;
        snprintf(out->client_subject, sizeof(out->client_subject), "%s", subject);
    }
    json_t *kids_j = json_object_get(body, "kids");
    if (out->role != CRED_ROLE_SIGNER) {
        if (kids_j != NULL || json_object_get(body, "max_ttl") != NULL)
            return api_fail(r, API_ERR_OUT_OF_RANGE, "only signers take 'kids' and 'max_ttl'");
        return API_OK;
    }
    if (kids_j == NULL)
        return api_fail(r, API_ERR_MISSING_FIELD,
                        "a signer needs 'kids': a list of kids, or \"all\"");
    if (max_ttl != 0 && max_ttl < c->token_ttl_min)
        return api_fail(r, API_ERR_OUT_OF_RANGE,
                        "'max_ttl' must be 0 (the appliance's limit) or %u to %u seconds",
                        (unsigned)c->token_ttl_min, (unsigned)c->token_ttl_max);
    out->max_ttl = (unsigned)max_ttl;
    return api_read_kids(kids_j, out, r);
}

api_err api_credentials_create_parse(const api_req *q, api_resp *r,
                                     api_credentials_create_body *out)
{
    static const char *const fields[] = {"role",    "label",          "kids",
                                         "max_ttl", "client_subject", NULL};
    memset(out, 0, sizeof(*out));
    json_t *body;
    api_err e = api_parse_object(q, r, fields, 0, &body);
    if (e != API_OK)
        return e;
    e = api_read_spec(q, body, out, r);
    json_decref(body);
    if (e != API_OK) {
        size_t keep = out->n_kids; /* the kids before a bad one, for the handler */
        sk_kid kids[CRED_KIDS_MAX];
        memcpy(kids, out->kids, keep * sizeof(kids[0]));
        memset(out, 0, sizeof(*out));
        memcpy(out->kids, kids, keep * sizeof(kids[0]));
        out->n_kids = keep;
    }
    return e;
}

/* The record as JSON with "secret" appended: built as text so the secret is never inside
 * a json_t, and the body is wiped when the response is freed. */
static api_err api_created(api_resp *r, const cred_record *rec, const char *secret)
{
    json_t *j = api_credential_json(rec);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (text == NULL)
        return api_fail(r, API_ERR_INTERNAL, "out of memory");
    size_t n = strlen(text); /* ends in '}' */
    size_t cap = n + sizeof(",\"secret\":\"\"}") + CRED_SECRET_LEN;
    char *body = malloc(cap);
    if (body == NULL) {
        free(text);
        return api_fail(r, API_ERR_INTERNAL, "out of memory");
    }
    int len = snprintf(body, cap, "%.*s,\"secret\":\"%s\"}", (int)(n - 1), text, secret);
    free(text);
    r->body = body;
    r->len = (size_t)len;
    r->status = 201;
    r->wipe = 1;
    return API_OK;
}

api_err api_credentials_create(const api_req *q, api_resp *r)
{
    api_credentials_create_body b;
    api_err e = api_credentials_create_parse(q, r, &b);
    /* A typo would make a credential that can sign nothing: only known kids. In list
     * order, before the form of a later kid, as one pass over the list would. */
    for (size_t i = 0; i < b.n_kids; i++)
        if (reg_get(q->env->reg, &b.kids[i], NULL) != REG_OK)
            return api_fail(r, API_ERR_INVALID_KID, "'kids'[%zu] is no key of this appliance", i);
    if (e != API_OK)
        return e;
    cred_spec sp = {.role = b.role,
                    .label = b.has_label ? b.label : NULL,
                    .kids = b.n_kids > 0 ? b.kids : NULL,
                    .n_kids = b.n_kids,
                    .all_kids = b.all_kids,
                    .max_ttl = b.max_ttl,
                    .client_subject = b.has_subject ? b.client_subject : NULL};
    char secret[CRED_SECRET_MAX];
    cred_record rec;
    cred_status st = cred_create(q->env->creds, &sp, q->now, secret, &rec);
    if (st == CRED_OK)
        e = api_created(r, &rec, secret);
    else if (st == CRED_ERR_INVALID)
        e = api_fail(r, API_ERR_BAD_REQUEST, "the credential is not valid");
    else
        e = api_fail(r, API_ERR_STORAGE, "the credential could not be stored");
    OPENSSL_cleanse(secret, sizeof(secret));
    return e;
}

api_err api_credentials_list(const api_req *q, api_resp *r)
{
    if (q->query != NULL && q->query[0] != '\0')
        return api_fail(r, API_ERR_INVALID_QUERY, "this resource takes no query");
    size_t cap = cred_list(q->env->creds, NULL, 0) + 16;
    cred_record *all = calloc(cap, sizeof(*all));
    if (all == NULL)
        return api_fail(r, API_ERR_INTERNAL, "out of memory");
    size_t n = cred_list(q->env->creds, all, cap);
    if (n > cap)
        n = cap;
    json_t *arr = json_array();
    for (size_t i = 0; arr != NULL && i < n; i++)
        json_array_append_new(arr, api_credential_json(&all[i]));
    free(all);
    return api_json(r, 200, json_pack("{s:o, s:I}", "credentials", arr, "count", (json_int_t)n));
}

api_err api_credentials_get(const api_req *q, api_resp *r)
{
    api_err e = api_credential_id(q, r);
    if (e != API_OK)
        return e;
    cred_record rec;
    if (cred_get(q->env->creds, q->id, &rec) != CRED_OK)
        return api_fail(r, API_ERR_CREDENTIAL_NOT_FOUND, "no credential with this id");
    return api_json(r, 200, api_credential_json(&rec));
}

api_err api_credentials_revoke_parse(const api_req *q, api_resp *r)
{
    if (q->body_len == 0)
        return API_OK;
    /* No fields yet; still refuse what we would ignore. */
    static const char *const none[] = {NULL};
    json_t *body;
    api_err e = api_parse_object(q, r, none, 1, &body);
    json_decref(body);
    return e;
}

api_err api_credentials_revoke(const api_req *q, api_resp *r)
{
    api_err e = api_credential_id(q, r);
    if (e != API_OK)
        return e;
    if ((e = api_credentials_revoke_parse(q, r)) != API_OK)
        return e;
    cred_record rec;
    pthread_mutex_lock(&api_admin_mu);
    cred_status st = cred_get(q->env->creds, q->id, &rec);
    if (st == CRED_OK && rec.role == CRED_ROLE_ADMIN && rec.revoked_at == 0 &&
        cred_count_active(q->env->creds, CRED_ROLE_ADMIN) <= 1) {
        pthread_mutex_unlock(&api_admin_mu);
        return api_fail(r, API_ERR_LAST_ADMIN,
                        "this is the last active admin credential: create another first");
    }
    if (st == CRED_OK)
        st = cred_revoke_keeping_an_admin(q->env->creds, q->id, q->now, &rec);
    pthread_mutex_unlock(&api_admin_mu);
    if (st == CRED_ERR_LAST_ADMIN) /* the last one cluster-wide, counted in the database */
        return api_fail(r, API_ERR_LAST_ADMIN,
                        "this is the last active admin credential: create another first");
    if (st == CRED_ERR_NOT_FOUND)
        return api_fail(r, API_ERR_CREDENTIAL_NOT_FOUND, "no credential with this id");
    if (st != CRED_OK)
        return api_fail(r, API_ERR_STORAGE, "the revocation could not be stored");
    return api_json(r, 200, api_credential_json(&rec));
}
