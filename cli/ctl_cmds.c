/* ctl: `signdctl credentials|token|sign|audit ...`, and the field printer the key commands
 * share. `audit verify` checks the export with the library's own verifier
 * (av_verify_export), the code `signd-provision audit-verify` runs. See ctl.h. */
#include "cli/ctl.h"

#include "appliance/core/auditverify.h"
#include "jose/jose.h"
#include "base/hex.h"
#include "base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CTL_SIGN_MAX (48 * 1024) /* bytes /sign accepts (decoded); the body bound is 64 KiB */
#define CTL_PEM_MAX (16 * 1024)  /* bytes of an audit public key file */
#define CTL_KIDS_MAX 64          /* kids of one signer credential */

static const char ctl_credentials_help[] =
    "usage: signdctl credentials create --role admin|signer|auditor|redeemer [--label L]\n"
    "                          [--kids all|KID,KID,...] [--max-ttl SECONDS]\n"
    "                          [--client-subject DN] [--out FILE]\n"
    "       signdctl credentials list\n"
    "       signdctl credentials revoke ID\n"
    "\n"
    "API credentials (admin). create shows the new secret once: with --out FILE it is written\n"
    "to FILE (created, mode 0600, never overwritten) and not printed. Signers need --kids.\n";

static const char ctl_token_help[] =
    "usage: signdctl token mint [--kid KID] [--sub S] [--ttl SECONDS | --exp UNIX]\n"
    "                           [--nbf UNIX] [--claims JSON] [--single-use] [--revocable]\n"
    "                           [--aud AUD] [--origin https://HOST[:PORT]]\n"
    "       signdctl token revoke JTI\n"
    "\n"
    "mint: a signed JWT (signer): prints the token, or the API's JSON with --json (which\n"
    "also shows the jti). Without --kid the newest active key the credential may use signs.\n"
    "--claims is a JSON object of extra claims, e.g. '{\"downloadable\":true}'.\n"
    "--exp gives the expiry as a Unix time instead of --ttl (the same bounds apply).\n"
    "--single-use: redeemable once (POST /v1/tokens/redeem); --revocable: can be revoked\n"
    "alone by its jti; --origin binds it to one origin.\n"
    "revoke: revokes one revocable token by its jti (admin, or the signer that minted it).\n";

static const char ctl_subjects_help[] =
    "usage: signdctl subjects revoke SUB [--before UNIX]\n"
    "\n"
    "revoke: every token minted for subject SUB (its sub claim) before --before (default:\n"
    "now) is refused from then on, by the verifiers (revoked_subject) and by redeem\n"
    "(subject_revoked); tokens minted for SUB afterwards are valid at once. Admin, or a\n"
    "signer whose kids are \"all\". Prints the revocation (its seq in the revocation\n"
    "sequence, and expires_at, when it leaves the feed).\n";

static const char ctl_sign_help[] =
    "usage: signdctl sign KID [--in FILE]\n"
    "\n"
    "Signs the bytes of FILE (default: standard input; at most 48 KiB) with RS256 (signer):\n"
    "prints the base64url signature, or the API's JSON with --json.\n";

static const char ctl_audit_help[] =
    "usage: signdctl audit export [--from SEQ] [--to SEQ] [--out FILE]\n"
    "       signdctl audit verify [--key PEM] [--anchor SEQ:HASH] [--export FILE]\n"
    "                             [--from SEQ] [--to SEQ]\n"
    "\n"
    "export writes the hash-chained trail (JSON Lines) to stdout or FILE (admin or auditor).\n"
    "verify checks a trail: every hash, link and checkpoint signature, with the audit public\n"
    "key --key (the PEM recorded when the appliance was provisioned; without it the key is\n"
    "fetched from the appliance, which is only its word), and with --anchor that the trail\n"
    "reaches a checkpoint kept from an earlier audit. --export FILE verifies a saved export\n"
    "instead of fetching one. Prints 'verified N events up to seq S, last checkpoint at seq\n"
    "C' and exits 0, or exits 7 with the first broken seq.\n";

void ctl_print_object(const ctl_ctx *ctx, const json_t *obj, const char *const names[])
{
    if (ctx->json)
        ctl_print_json(obj);
    else
        ctl_print_fields(obj, names);
}

void ctl_print_fields(const json_t *obj, const char *const names[])
{
    int w = 0;
    for (size_t i = 0; names[i] != NULL; i++)
        if (json_object_get(obj, names[i]) != NULL && (int)strlen(names[i]) > w)
            w = (int)strlen(names[i]);
    for (size_t i = 0; names[i] != NULL; i++) {
        json_t *v = json_object_get(obj, names[i]);
        size_t len = strlen(names[i]);
        if (v == NULL)
            continue;
        if (json_is_integer(v) && len > 3 && strcmp(names[i] + len - 3, "_at") == 0) {
            char t[32];
            ctl_time(json_integer_value(v), t, sizeof(t));
            printf("%-*s  %s\n", w, names[i], t);
        } else if (json_is_string(v)) {
            const char *s = json_string_value(v);
            printf("%-*s  %s\n", w, names[i], s[0] ? s : "-");
        } else {
            char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
            printf("%-*s  %s\n", w, names[i], s ? s : "?");
            free(s);
        }
    }
}

/* Creates path for writing: never an existing file, never through a symlink. */
static int ctl_create_file(const char *cmd, const char *path, mode_t mode, FILE **out)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0)
        return ctl_usage(cmd, "cannot create %s: %s%s", path, strerror(errno),
                         errno == EEXIST ? " (it is never overwritten: choose a new name)" : "");
    *out = fdopen(fd, "w");
    if (*out == NULL) {
        close(fd);
        unlink(path);
        return ctl_usage(cmd, "cannot write %s", path);
    }
    return CTL_EXIT_OK;
}

/* ---- credentials ----------------------------------------------------------------------- */

static const char *const ctl_cred_fields[] = {
    "id",      "role",           "state",      "label",      "kids",
    "max_ttl", "client_subject", "created_at", "revoked_at", NULL};

static int ctl_cred_create(ctl_ctx *ctx, int argc, char **argv)
{
    const char *role = NULL, *label = NULL, *kids = NULL, *max_ttl_s = NULL, *subject = NULL,
               *out_path = NULL;
    const ctl_opt opts[] = {{"role", true, &role, NULL},
                            {"label", true, &label, NULL},
                            {"kids", true, &kids, NULL},
                            {"max-ttl", true, &max_ttl_s, NULL},
                            {"client-subject", true, &subject, NULL},
                            {"out", true, &out_path, NULL},
                            {NULL, false, NULL, NULL}};
    const char *cmd = "credentials create";
    int rc, npos;
    if (ctl_parse(ctx, cmd, ctl_credentials_help, argc, argv, opts, NULL, 0, &npos, &rc) != 0)
        return rc;
    if (role == NULL || (strcmp(role, "admin") != 0 && strcmp(role, "signer") != 0 &&
                         strcmp(role, "auditor") != 0 && strcmp(role, "redeemer") != 0))
        return ctl_usage(cmd, "--role must be admin, signer, auditor or redeemer");
    if (strcmp(role, "signer") == 0 && kids == NULL)
        return ctl_usage(cmd, "a signer needs --kids all or --kids KID,KID,...");
    unsigned long long max_ttl = 0;
    if (max_ttl_s != NULL && ctl_parse_uint(max_ttl_s, 0, 31536000, &max_ttl) != 0)
        return ctl_usage(cmd, "--max-ttl must be 0 to 31536000 seconds");

    json_t *body = json_pack("{s:s}", "role", role);
    if (body == NULL)
        return CTL_EXIT_SERVER;
    if (label != NULL)
        json_object_set_new(body, "label", json_string(label));
    if (max_ttl_s != NULL)
        json_object_set_new(body, "max_ttl", json_integer((json_int_t)max_ttl));
    if (subject != NULL)
        json_object_set_new(body, "client_subject", json_string(subject));
    if (kids != NULL && strcmp(kids, "all") == 0) {
        json_object_set_new(body, "kids", json_string("all"));
    } else if (kids != NULL) {
        json_t *arr = json_array();
        const char *p = kids;
        while (arr != NULL) {
            size_t n = strcspn(p, ",");
            char kid[CTL_KID_HEX + 1];
            if (n != CTL_KID_HEX || json_array_size(arr) == CTL_KIDS_MAX) {
                json_decref(arr);
                json_decref(body);
                return ctl_usage(cmd, "--kids must be all, or 1 to %d kids separated by commas",
                                 CTL_KIDS_MAX);
            }
            memcpy(kid, p, n);
            kid[n] = '\0';
            if (!hex_string(kid, CTL_KID_HEX)) {
                json_decref(arr);
                json_decref(body);
                return ctl_usage(cmd, "'%s' in --kids is not a kid (32 lowercase hex)", kid);
            }
            json_array_append_new(arr, json_string(kid));
            if (p[n] == '\0')
                break;
            p += n + 1;
        }
        json_object_set_new(body, "kids", arr);
    }

    /* The file first: once the appliance has made the credential, its secret must have
     * somewhere to go. */
    FILE *out = NULL;
    if (out_path != NULL && (rc = ctl_create_file(cmd, out_path, 0600, &out)) != CTL_EXIT_OK) {
        json_decref(body);
        return rc;
    }
    json_t *cred = NULL;
    rc = ctl_request(ctx, true, "POST", "/v1/credentials", body, "create a credential", &cred);
    json_decref(body);
    const char *secret = json_string_value(json_object_get(cred, "secret"));
    if (rc == CTL_EXIT_OK && secret == NULL) {
        ctl_err("create a credential: the answer holds no secret; check that --url points at "
                "signd");
        rc = CTL_EXIT_SERVER;
    }
    if (out != NULL) {
        bool wrote = rc == CTL_EXIT_OK && fprintf(out, "%s\n", secret) > 0;
        if (fclose(out) != 0)
            wrote = false;
        if (rc == CTL_EXIT_OK && !wrote) {
            /* Not unlinked: a partial secret is still the only trace of it. */
            ctl_err("create a credential: cannot write the secret to %s; revoke credential %s and "
                    "create another",
                    out_path, json_string_value(json_object_get(cred, "id")));
            rc = CTL_EXIT_USAGE;
        } else if (rc != CTL_EXIT_OK) {
            unlink(out_path);
        }
        if (rc == CTL_EXIT_OK)
            json_object_del(cred, "secret"); /* wiped by jansson's wiping free */
    }
    if (rc == CTL_EXIT_OK) {
        if (ctx->json) {
            ctl_print_json(cred);
        } else {
            ctl_print_fields(cred, ctl_cred_fields);
            if (out_path != NULL)
                printf("secret      written to %s (mode 0600)\n", out_path);
            else
                printf("secret      %s\n# the secret is shown this once: store it now\n", secret);
        }
    }
    json_decref(cred);
    return rc;
}

static int ctl_cred_list(ctl_ctx *ctx, int argc, char **argv)
{
    int rc, npos;
    if (ctl_parse(ctx, "credentials list", ctl_credentials_help, argc, argv, NULL, NULL, 0, &npos,
                  &rc) != 0)
        return rc;
    json_t *list = NULL;
    if ((rc = ctl_request(ctx, true, "GET", "/v1/credentials", NULL, "list the credentials",
                          &list)) != CTL_EXIT_OK)
        return rc;
    if (ctx->json) {
        ctl_print_json(list);
        json_decref(list);
        return CTL_EXIT_OK;
    }
    json_t *creds = json_object_get(list, "credentials"), *c;
    size_t i;
    printf("%-16s  %-7s  %-7s  %-20s  %-8s  %s\n", "ID", "ROLE", "STATE", "CREATED", "KIDS",
           "LABEL");
    json_array_foreach(creds, i, c)
    {
        char created[32], kids[24] = "-";
        ctl_time(json_integer_value(json_object_get(c, "created_at")), created, sizeof(created));
        json_t *k = json_object_get(c, "kids");
        if (json_is_string(k))
            snprintf(kids, sizeof(kids), "%s", json_string_value(k));
        else if (json_is_array(k))
            snprintf(kids, sizeof(kids), "%zu", json_array_size(k));
        const char *id = json_string_value(json_object_get(c, "id"));
        const char *role = json_string_value(json_object_get(c, "role"));
        const char *state = json_string_value(json_object_get(c, "state"));
        const char *label = json_string_value(json_object_get(c, "label"));
        printf("%-16s  %-7s  %-7s  %-20s  %-8s  %s\n", id ? id : "-", role ? role : "-",
               state ? state : "-", created, kids, label && label[0] ? label : "-");
    }
    json_decref(list);
    return CTL_EXIT_OK;
}

static int ctl_cred_revoke(ctl_ctx *ctx, int argc, char **argv)
{
    const char *pos[1];
    int rc, npos;
    if (ctl_parse(ctx, "credentials revoke", ctl_credentials_help, argc, argv, NULL, pos, 1, &npos,
                  &rc) != 0)
        return rc;
    if (npos != 1 || !hex_string(pos[0], CTL_CRED_ID_HEX))
        return ctl_usage("credentials revoke",
                         "give the credential's id (16 lowercase hex, as 'signdctl credentials "
                         "list' shows it)");
    char path[64], what[64];
    snprintf(path, sizeof(path), "/v1/credentials/%s", pos[0]);
    snprintf(what, sizeof(what), "revoke credential %s", pos[0]);
    json_t *cred = NULL;
    if ((rc = ctl_request(ctx, true, "DELETE", path, NULL, what, &cred)) != CTL_EXIT_OK)
        return rc;
    ctl_print_object(ctx, cred, ctl_cred_fields);
    json_decref(cred);
    return CTL_EXIT_OK;
}

int ctl_cmd_credentials(ctl_ctx *ctx, int argc, char **argv)
{
    if (argc == 0) {
        fputs(ctl_credentials_help, stderr);
        return CTL_EXIT_USAGE;
    }
    const char *verb = argv[0];
    if (strcmp(verb, "--help") == 0 || strcmp(verb, "-h") == 0 || strcmp(verb, "help") == 0) {
        fputs(ctl_credentials_help, stdout);
        return CTL_EXIT_OK;
    }
    if (strcmp(verb, "create") == 0)
        return ctl_cred_create(ctx, argc - 1, argv + 1);
    if (strcmp(verb, "list") == 0)
        return ctl_cred_list(ctx, argc - 1, argv + 1);
    if (strcmp(verb, "revoke") == 0)
        return ctl_cred_revoke(ctx, argc - 1, argv + 1);
    return ctl_usage("credentials", "unknown verb '%s' (create, list, revoke)", verb);
}

/* ---- token mint and revoke, sign -------------------------------------------------------- */

static const char *const ctl_token_revocation_fields[] = {"jti", "list",       "idx", "uri",
                                                          "seq", "revoked_at", NULL};

/* token revoke JTI: the appliance judges the jti (400 invalid_jti, 404 token_not_found);
 * here only what cannot be a path segment is refused. */
static int ctl_token_revoke(ctl_ctx *ctx, int argc, char **argv)
{
    const char *pos[1];
    int rc, npos;
    if (ctl_parse(ctx, "token revoke", ctl_token_help, argc, argv, NULL, pos, 1, &npos, &rc) != 0)
        return rc;
    if (npos != 1 || pos[0][0] == '\0' || strlen(pos[0]) > 64 ||
        strspn(pos[0], "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") !=
            strlen(pos[0]))
        return ctl_usage("token revoke", "give the token's jti (1 to 64 of A-Z a-z 0-9 _ -)");
    char path[96], what[96];
    snprintf(path, sizeof(path), "/v1/tokens/%s", pos[0]);
    snprintf(what, sizeof(what), "revoke token %s", pos[0]);
    json_t *rv = NULL;
    if ((rc = ctl_request(ctx, true, "DELETE", path, NULL, what, &rv)) != CTL_EXIT_OK)
        return rc;
    ctl_print_object(ctx, rv, ctl_token_revocation_fields);
    json_decref(rv);
    return CTL_EXIT_OK;
}

int ctl_cmd_token(ctl_ctx *ctx, int argc, char **argv)
{
    if (argc == 0 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        fputs(ctl_token_help, argc == 0 ? stderr : stdout);
        return argc == 0 ? CTL_EXIT_USAGE : CTL_EXIT_OK;
    }
    if (strcmp(argv[0], "revoke") == 0)
        return ctl_token_revoke(ctx, argc - 1, argv + 1);
    if (strcmp(argv[0], "mint") != 0)
        return ctl_usage("token", "unknown verb '%s' (mint, revoke)", argv[0]);
    const char *kid = NULL, *sub = NULL, *ttl_s = NULL, *nbf_s = NULL, *claims_s = NULL;
    const char *exp_s = NULL;
    const char *aud = NULL, *origin = NULL;
    bool single_use = false, revocable = false;
    const ctl_opt opts[] = {{"kid", true, &kid, NULL},
                            {"sub", true, &sub, NULL},
                            {"ttl", true, &ttl_s, NULL},
                            {"nbf", true, &nbf_s, NULL},
                            {"exp", true, &exp_s, NULL},
                            {"claims", true, &claims_s, NULL},
                            {"aud", true, &aud, NULL},
                            {"origin", true, &origin, NULL},
                            {"single-use", false, NULL, &single_use},
                            {"revocable", false, NULL, &revocable},
                            {NULL, false, NULL, NULL}};
    const char *cmd = "token mint";
    int rc, npos;
    if (ctl_parse(ctx, cmd, ctl_token_help, argc - 1, argv + 1, opts, NULL, 0, &npos, &rc) != 0)
        return rc;
    if (kid != NULL && !hex_string(kid, CTL_KID_HEX))
        return ctl_usage(cmd, "--kid '%s' is not a kid (32 lowercase hex)", kid);
    unsigned long long ttl = 0, nbf = 0;
    if (ttl_s != NULL && ctl_parse_uint(ttl_s, 1, 31536000, &ttl) != 0)
        return ctl_usage(cmd, "--ttl must be 1 to 31536000 seconds");
    if (nbf_s != NULL && ctl_parse_uint(nbf_s, 0, 1ULL << 40, &nbf) != 0)
        return ctl_usage(cmd, "--nbf must be Unix seconds");
    unsigned long long exp = 0;
    if (exp_s != NULL && ctl_parse_uint(exp_s, 1, 1ULL << 40, &exp) != 0)
        return ctl_usage(cmd, "--exp must be Unix seconds");
    if (exp_s != NULL && ttl_s != NULL)
        return ctl_usage(cmd, "give --ttl or --exp, not both");
    json_t *claims = NULL;
    if (claims_s != NULL) {
        json_error_t je;
        claims = json_loads(claims_s, JSON_REJECT_DUPLICATES, &je);
        if (!json_is_object(claims)) {
            json_decref(claims);
            return ctl_usage(cmd, "--claims must be a JSON object: %s",
                             claims ? "it is not an object" : je.text);
        }
    }
    json_t *body = json_object(), *tok = NULL;
    if (kid != NULL)
        json_object_set_new(body, "kid", json_string(kid));
    if (sub != NULL)
        json_object_set_new(body, "sub", json_string(sub));
    if (ttl_s != NULL)
        json_object_set_new(body, "ttl", json_integer((json_int_t)ttl));
    if (nbf_s != NULL)
        json_object_set_new(body, "nbf", json_integer((json_int_t)nbf));
    if (exp_s != NULL)
        json_object_set_new(body, "exp", json_integer((json_int_t)exp));
    if (claims != NULL)
        json_object_set_new(body, "claims", claims);
    if (aud != NULL)
        json_object_set_new(body, "aud", json_string(aud));
    if (origin != NULL)
        json_object_set_new(body, "origin", json_string(origin));
    if (single_use)
        json_object_set_new(body, "single_use", json_true());
    if (revocable)
        json_object_set_new(body, "revocable", json_true());
    rc = ctl_request(ctx, true, "POST", "/v1/tokens", body, "mint a token", &tok);
    json_decref(body);
    if (rc == CTL_EXIT_OK && ctx->json) {
        ctl_print_json(tok);
    } else if (rc == CTL_EXIT_OK) {
        const char *t = json_string_value(json_object_get(tok, "token"));
        if (t == NULL) {
            ctl_err("mint a token: the answer holds no token; check that --url points at signd");
            rc = CTL_EXIT_SERVER;
        } else {
            puts(t);
        }
    }
    json_decref(tok);
    return rc;
}

/* ---- subjects revoke -------------------------------------------------------------------- */

static const char *const ctl_subject_fields[] = {"sub",        "before",     "seq",
                                                 "revoked_at", "expires_at", NULL};

int ctl_cmd_subjects(ctl_ctx *ctx, int argc, char **argv)
{
    if (argc == 0 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        fputs(ctl_subjects_help, argc == 0 ? stderr : stdout);
        return argc == 0 ? CTL_EXIT_USAGE : CTL_EXIT_OK;
    }
    if (strcmp(argv[0], "revoke") != 0)
        return ctl_usage("subjects", "unknown verb '%s' (revoke)", argv[0]);
    const char *before_s = NULL, *pos[1];
    const ctl_opt opts[] = {{"before", true, &before_s, NULL}, {NULL, false, NULL, NULL}};
    const char *cmd = "subjects revoke";
    int rc, npos;
    if (ctl_parse(ctx, cmd, ctl_subjects_help, argc - 1, argv + 1, opts, pos, 1, &npos, &rc) != 0)
        return rc;
    /* The appliance bounds sub (1 to 256 bytes); here only an absent one is refused. */
    if (npos != 1 || pos[0][0] == '\0')
        return ctl_usage(cmd, "give the subject (the tokens' sub) to revoke");
    unsigned long long before = 0;
    if (before_s != NULL && ctl_parse_uint(before_s, 1, 1ULL << 40, &before) != 0)
        return ctl_usage(cmd, "--before must be Unix seconds");
    json_t *body = json_pack("{s:s}", "sub", pos[0]), *rec = NULL;
    if (body != NULL && before_s != NULL)
        json_object_set_new(body, "before", json_integer((json_int_t)before));
    rc = ctl_request(ctx, true, "POST", "/v1/subjects/revoke", body, "revoke a subject", &rec);
    json_decref(body);
    if (rc == CTL_EXIT_OK)
        ctl_print_object(ctx, rec, ctl_subject_fields);
    json_decref(rec);
    return rc;
}

int ctl_cmd_sign(ctl_ctx *ctx, int argc, char **argv)
{
    const char *pos[1], *in_path = NULL;
    const ctl_opt opts[] = {{"in", true, &in_path, NULL}, {NULL, false, NULL, NULL}};
    int rc, npos;
    if (ctl_parse(ctx, "sign", ctl_sign_help, argc, argv, opts, pos, 1, &npos, &rc) != 0)
        return rc;
    if (npos != 1 || !hex_string(pos[0], CTL_KID_HEX))
        return ctl_usage("sign", "give the kid that signs (32 lowercase hex)");
    FILE *in = in_path == NULL || strcmp(in_path, "-") == 0 ? stdin : fopen(in_path, "rbe");
    if (in == NULL)
        return ctl_usage("sign", "cannot read %s: %s", in_path, strerror(errno));
    uint8_t *data = malloc(CTL_SIGN_MAX + 1);
    size_t n = data ? fread(data, 1, CTL_SIGN_MAX + 1, in) : 0;
    bool bad = data == NULL || ferror(in);
    if (in != stdin)
        fclose(in);
    if (bad || n > CTL_SIGN_MAX) {
        free(data);
        return ctl_usage("sign", "%s",
                         bad ? "cannot read the input"
                             : "the input is over 48 KiB: sign a digest of it, or "
                               "mint a token");
    }
    size_t cap = jose_b64url_encoded_len(n) + 1;
    char *b64 = malloc(cap);
    if (b64 == NULL || (jose_b64url_encode(data, n, b64, cap) == 0 && n > 0)) {
        free(data);
        free(b64);
        ctl_err("sign: out of memory");
        return CTL_EXIT_SERVER;
    }
    free(data);
    json_t *body = json_pack("{s:s}", "payload", b64), *sig = NULL;
    free(b64);
    char path[80], what[64];
    snprintf(path, sizeof(path), "/v1/keys/%s/sign", pos[0]);
    snprintf(what, sizeof(what), "sign with key %s", pos[0]);
    rc = ctl_request(ctx, true, "POST", path, body, what, &sig);
    json_decref(body);
    if (rc == CTL_EXIT_OK && ctx->json) {
        ctl_print_json(sig);
    } else if (rc == CTL_EXIT_OK) {
        const char *s = json_string_value(json_object_get(sig, "signature"));
        if (s == NULL) {
            ctl_err("%s: the answer holds no signature; check that --url points at signd", what);
            rc = CTL_EXIT_SERVER;
        } else {
            puts(s);
        }
    }
    json_decref(sig);
    return rc;
}

/* ---- audit ----------------------------------------------------------------------------- */

/* GET /v1/audit/export[?from&to] streamed into out. */
static int ctl_audit_fetch(ctl_ctx *ctx, unsigned long long from, unsigned long long to, FILE *out)
{
    int rc = ctl_secret_load(ctx);
    if (rc != CTL_EXIT_OK)
        return rc;
    char path[96];
    int n = snprintf(path, sizeof(path), "/v1/audit/export");
    if (from > 0 || to > 0)
        snprintf(path + n, sizeof(path) - (size_t)n, "?from=%llu%s%.0llu", from ? from : 1,
                 to ? "&to=" : "", to);
    ctl_conn c;
    if ((rc = ctl_conn_open(ctx, true, &c)) != CTL_EXIT_OK)
        return rc;
    ctl_resp r;
    ctl_resp_init(&r, out);
    char line[CTL_LINE_MAX];
    rc = ctl_call(&c, "GET", path, NULL, &r, "export the audit trail", line, sizeof(line));
    ctl_conn_close(&c);
    ctl_resp_free(&r);
    if (rc != CTL_EXIT_OK)
        ctl_err("%s", line);
    else if (fflush(out) != 0) {
        ctl_err("export the audit trail: cannot write it: %s", strerror(errno));
        rc = CTL_EXIT_USAGE;
    }
    return rc;
}

static int ctl_audit_range(const char *cmd, const char *from_s, const char *to_s,
                           unsigned long long *from, unsigned long long *to)
{
    *from = *to = 0;
    if (from_s != NULL && ctl_parse_uint(from_s, 1, 1ULL << 62, from) != 0)
        return ctl_usage(cmd, "--from must be a seq (1 or more)");
    if (to_s != NULL && ctl_parse_uint(to_s, 1, 1ULL << 62, to) != 0)
        return ctl_usage(cmd, "--to must be a seq (1 or more)");
    return CTL_EXIT_OK;
}

static int ctl_audit_export(ctl_ctx *ctx, int argc, char **argv)
{
    const char *from_s = NULL, *to_s = NULL, *out_path = NULL;
    const ctl_opt opts[] = {{"from", true, &from_s, NULL},
                            {"to", true, &to_s, NULL},
                            {"out", true, &out_path, NULL},
                            {NULL, false, NULL, NULL}};
    const char *cmd = "audit export";
    int rc, npos;
    if (ctl_parse(ctx, cmd, ctl_audit_help, argc, argv, opts, NULL, 0, &npos, &rc) != 0)
        return rc;
    unsigned long long from, to;
    if ((rc = ctl_audit_range(cmd, from_s, to_s, &from, &to)) != CTL_EXIT_OK)
        return rc;
    FILE *out = stdout;
    if (out_path != NULL && (rc = ctl_create_file(cmd, out_path, 0644, &out)) != CTL_EXIT_OK)
        return rc;
    rc = ctl_audit_fetch(ctx, from, to, out);
    if (out != stdout && fclose(out) != 0 && rc == CTL_EXIT_OK) {
        ctl_err("audit export: cannot write %s: %s", out_path, strerror(errno));
        rc = CTL_EXIT_USAGE;
    }
    if (out != stdout && rc != CTL_EXIT_OK)
        unlink(out_path);
    return rc;
}

/* Reads a whole small file into a NUL-terminated buffer (the audit public key). */
static char *ctl_read_small(const char *path)
{
    char *buf;
    size_t n;
    if (file_read_alloc(path, 0, CTL_PEM_MAX, &buf, &n) != FILE_OK)
        return NULL;
    if (n == 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static int ctl_audit_verify(ctl_ctx *ctx, int argc, char **argv)
{
    const char *key_path = NULL, *anchor = NULL, *export_path = NULL, *from_s = NULL, *to_s = NULL;
    const ctl_opt opts[] = {{"key", true, &key_path, NULL},
                            {"anchor", true, &anchor, NULL},
                            {"export", true, &export_path, NULL},
                            {"from", true, &from_s, NULL},
                            {"to", true, &to_s, NULL},
                            {NULL, false, NULL, NULL}};
    const char *cmd = "audit verify";
    int rc, npos;
    if (ctl_parse(ctx, cmd, ctl_audit_help, argc, argv, opts, NULL, 0, &npos, &rc) != 0)
        return rc;
    unsigned long long from, to;
    if ((rc = ctl_audit_range(cmd, from_s, to_s, &from, &to)) != CTL_EXIT_OK)
        return rc;
    av_anchor anchor_at;
    av_anchor_err ae = anchor != NULL ? av_anchor_parse(anchor, &anchor_at) : AV_ANCHOR_OK;
    if (ae != AV_ANCHOR_OK)
        return ctl_usage(cmd, "--anchor must be %s", av_anchor_strerror(ae));

    char *pem = NULL;
    if (key_path != NULL) {
        if ((pem = ctl_read_small(key_path)) == NULL)
            return ctl_usage(cmd, "cannot read the audit public key %s (PEM, at most %d bytes)",
                             key_path, CTL_PEM_MAX);
    } else {
        json_t *k = NULL;
        if ((rc = ctl_request(ctx, false, "GET", "/v1/audit/key", NULL, "fetch the audit key",
                              &k)) != CTL_EXIT_OK)
            return rc;
        const char *p = json_string_value(json_object_get(k, "pem"));
        pem = p ? strdup(p) : NULL;
        json_decref(k);
        if (pem == NULL) {
            ctl_err("fetch the audit key: the answer holds no pem; check that --url points at "
                    "signd");
            return CTL_EXIT_SERVER;
        }
        fprintf(stderr, "signdctl: note: the audit key was fetched from the appliance under "
                        "audit; pass --key FILE with the copy recorded at provisioning\n");
    }

    FILE *in;
    if (export_path != NULL) {
        in = fopen(export_path, "re");
        if (in == NULL) {
            free(pem);
            return ctl_usage(cmd, "cannot open the export %s: %s", export_path, strerror(errno));
        }
    } else {
        in = tmpfile();
        if (in == NULL) {
            free(pem);
            ctl_err("audit verify: cannot make a temporary file: %s; set TMPDIR", strerror(errno));
            return CTL_EXIT_USAGE;
        }
        if ((rc = ctl_audit_fetch(ctx, from, to, in)) != CTL_EXIT_OK) {
            fclose(in);
            free(pem);
            return rc;
        }
        rewind(in);
    }
    av_verdict v;
    int bad = av_verify_export(in, pem, anchor != NULL ? &anchor_at : NULL, &v);
    fclose(in);
    free(pem);
    if (ctx->json) {
        json_t *j = bad ? json_pack("{s:b, s:I, s:s}", "verified", 0, "broken_seq",
                                    (json_int_t)v.broken_seq, "why", v.why)
                        : json_pack("{s:b, s:I, s:I, s:I}", "verified", 1, "events",
                                    (json_int_t)v.events, "last_seq", (json_int_t)v.last_seq,
                                    "last_checkpoint", (json_int_t)v.last_checkpoint);
        ctl_print_json(j);
        json_decref(j);
    } else if (!bad) {
        printf("verified %llu events up to seq %llu, last checkpoint at seq %llu\n",
               (unsigned long long)v.events, (unsigned long long)v.last_seq,
               (unsigned long long)v.last_checkpoint);
    }
    if (bad) {
        ctl_err("audit verify: broken at seq %llu: %s; keep this export as evidence and compare "
                "it with your last verified one",
                (unsigned long long)v.broken_seq, v.why);
        return CTL_EXIT_AUDIT;
    }
    return CTL_EXIT_OK;
}

int ctl_cmd_audit(ctl_ctx *ctx, int argc, char **argv)
{
    if (argc == 0) {
        fputs(ctl_audit_help, stderr);
        return CTL_EXIT_USAGE;
    }
    const char *verb = argv[0];
    if (strcmp(verb, "--help") == 0 || strcmp(verb, "-h") == 0 || strcmp(verb, "help") == 0) {
        fputs(ctl_audit_help, stdout);
        return CTL_EXIT_OK;
    }
    if (strcmp(verb, "export") == 0)
        return ctl_audit_export(ctx, argc - 1, argv + 1);
    if (strcmp(verb, "verify") == 0)
        return ctl_audit_verify(ctx, argc - 1, argv + 1);
    return ctl_usage("audit", "unknown verb '%s' (export, verify)", verb);
}
