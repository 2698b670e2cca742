/* ctl: `signdctl keys ...`: create (one, or N in parallel with a progress bar), list,
 * show, revoke, rotate. See ctl.h and docs/cli.md. */
#include "cli/ctl.h"
#include "base/hex.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CTL_COUNT_MAX 1000  /* keys one create may ask for: the appliance's hard limit */
#define CTL_PARALLEL_MAX 32 /* concurrent creates; the token generates one or two at a time */
#define CTL_PARALLEL_DEFAULT 4
#define CTL_BAR_WIDTH 30
#define CTL_LABEL_MAX 128

static const char ctl_keys_help[] =
    "usage: signdctl keys create [--bits 2048|3072|4096] [--label L] [--count N] [--parallel P]\n"
    "       signdctl keys list [--state active|retiring|revoked|broken]\n"
    "       signdctl keys show KID\n"
    "       signdctl keys revoke KID --reason R\n"
    "       signdctl keys rotate KID [--grace SECONDS] [--label L]\n"
    "See 'signdctl keys VERB --help' and 'signdctl --help' for the global options.\n";

static const char ctl_create_help[] =
    "usage: signdctl keys create [--bits 2048|3072|4096] [--label L] [--count N] [--parallel P]\n"
    "\n"
    "Generates RSA keys inside the appliance's token (admin). Without --count, one key, printed\n"
    "as 'keys show' does (or the API's JSON with --json).\n"
    "\n"
    "  --bits N       modulus size (default: the appliance's default_key_bits)\n"
    "  --label L      printable ASCII, at most 128 characters\n"
    "  --count N      make N keys (1 to 1000), P requests at a time; on a terminal a progress\n"
    "                 bar on stderr, otherwise one line per key on stderr; the new kids on\n"
    "                 stdout, one a line (with --json one object: requested, created, keys)\n"
    "  --parallel P   requests at a time with --count (1 to 32, default 4)\n"
    "\n"
    "When the appliance's key limit is reached it starts no more requests, waits for those\n"
    "under way, prints 'created K of N: key limit (L) reached' and exits 6. Ctrl-C does the\n"
    "same and exits 130; a second Ctrl-C ends it at once.\n";

static const char ctl_list_help[] =
    "usage: signdctl keys list [--state active|retiring|revoked|broken] [--json]\n"
    "\n"
    "Lists the keys (admin or auditor): an aligned table of kid, state, bits, creation time\n"
    "(UTC) and label, or the API's JSON with --json.\n";

static const char ctl_show_help[] = "usage: signdctl keys show KID [--json]\n"
                                    "\n"
                                    "Shows one key (admin or auditor).\n";

static const char ctl_revoke_help[] =
    "usage: signdctl keys revoke KID --reason R\n"
    "\n"
    "Revokes a key (admin): durable at once, published in the revocation feed, and its\n"
    "private key destroyed in the token. Idempotent. --reason is required (printable ASCII).\n";

static const char ctl_rotate_help[] =
    "usage: signdctl keys rotate KID [--grace SECONDS] [--label L]\n"
    "\n"
    "Makes a successor key (admin); the old one keeps verifying for --grace seconds (default:\n"
    "the appliance's rotation_grace_seconds), then is revoked by the appliance.\n";

/* The fields of a key a person reads, in this order. */
static const char *const ctl_key_fields[] = {
    "kid",       "state",       "bits",       "label",  "created_at",     "retire_at",
    "successor", "predecessor", "revoked_at", "reason", "revocation_seq", NULL};

/* Shared by the threads of keys create --count; everything below mu is guarded by it. */
typedef struct {
    ctl_ctx *ctx;
    unsigned total;
    long long bits; /* 0: the appliance's default */
    const char *label;
    unsigned parallel;
    bool tty;
    pthread_mutex_t mu;
    unsigned started, created;
    bool stop;
    int err_rc;
    char err_line[CTL_LINE_MAX];
    char (*kids)[CTL_KID_HEX + 1]; /* total of them, in the order they were made */
    json_t *keys;                  /* the API's answers, for --json */
} ctl_bulk;

static int ctl_keys_create(ctl_ctx *ctx, int argc, char **argv);
static int ctl_keys_list(ctl_ctx *ctx, int argc, char **argv);
static int ctl_keys_show(ctl_ctx *ctx, int argc, char **argv);
static int ctl_keys_revoke(ctl_ctx *ctx, int argc, char **argv);
static int ctl_keys_rotate(ctl_ctx *ctx, int argc, char **argv);
static json_t *ctl_create_body(long long bits, const char *label);
static int ctl_bulk_run(ctl_bulk *b, unsigned parallel);
static void *ctl_bulk_worker(void *arg);
static void ctl_bulk_progress(ctl_bulk *b, const char *kid);
static void ctl_on_signal(int sig);

int ctl_cmd_keys(ctl_ctx *ctx, int argc, char **argv)
{
    if (argc == 0) {
        fputs(ctl_keys_help, stderr);
        return CTL_EXIT_USAGE;
    }
    const char *verb = argv[0];
    if (strcmp(verb, "--help") == 0 || strcmp(verb, "-h") == 0 || strcmp(verb, "help") == 0) {
        fputs(ctl_keys_help, stdout);
        return CTL_EXIT_OK;
    }
    if (strcmp(verb, "create") == 0)
        return ctl_keys_create(ctx, argc - 1, argv + 1);
    if (strcmp(verb, "list") == 0)
        return ctl_keys_list(ctx, argc - 1, argv + 1);
    if (strcmp(verb, "show") == 0)
        return ctl_keys_show(ctx, argc - 1, argv + 1);
    if (strcmp(verb, "revoke") == 0)
        return ctl_keys_revoke(ctx, argc - 1, argv + 1);
    if (strcmp(verb, "rotate") == 0)
        return ctl_keys_rotate(ctx, argc - 1, argv + 1);
    return ctl_usage("keys", "unknown verb '%s' (create, list, show, revoke, rotate)", verb);
}

/* A kid argument, checked before anything is sent. */
static int ctl_kid_arg(const char *cmd, const char *kid)
{
    if (hex_string(kid, CTL_KID_HEX))
        return CTL_EXIT_OK;
    return ctl_usage(cmd,
                     "'%s' is not a kid (32 lowercase hex characters, as 'signdctl keys list' "
                     "shows them)",
                     kid);
}

static json_t *ctl_create_body(long long bits, const char *label)
{
    json_t *body = json_object();
    if (body != NULL && bits > 0)
        json_object_set_new(body, "bits", json_integer(bits));
    if (body != NULL && label != NULL)
        json_object_set_new(body, "label", json_string(label));
    return body;
}

static int ctl_keys_create(ctl_ctx *ctx, int argc, char **argv)
{
    const char *bits_s = NULL, *label = NULL, *count_s = NULL, *par_s = NULL;
    const ctl_opt opts[] = {{"bits", true, &bits_s, NULL},
                            {"label", true, &label, NULL},
                            {"count", true, &count_s, NULL},
                            {"parallel", true, &par_s, NULL},
                            {NULL, false, NULL, NULL}};
    int rc, npos;
    if (ctl_parse(ctx, "keys create", ctl_create_help, argc, argv, opts, NULL, 0, &npos, &rc) != 0)
        return rc;
    unsigned long long bits = 0, count = 1, parallel = CTL_PARALLEL_DEFAULT;
    if (bits_s != NULL && ctl_parse_uint(bits_s, 1024, 16384, &bits) != 0)
        return ctl_usage("keys create", "--bits must be 2048, 3072 or 4096");
    if (count_s != NULL && ctl_parse_uint(count_s, 1, CTL_COUNT_MAX, &count) != 0)
        return ctl_usage("keys create", "--count must be 1 to %d", CTL_COUNT_MAX);
    if (par_s != NULL && ctl_parse_uint(par_s, 1, CTL_PARALLEL_MAX, &parallel) != 0)
        return ctl_usage("keys create", "--parallel must be 1 to %d", CTL_PARALLEL_MAX);
    if (label != NULL && strlen(label) > CTL_LABEL_MAX)
        return ctl_usage("keys create", "--label must be at most %d characters", CTL_LABEL_MAX);
    if ((rc = ctl_secret_load(ctx)) != CTL_EXIT_OK)
        return rc;

    if (count_s == NULL) {
        json_t *body = ctl_create_body((long long)bits, label), *key = NULL;
        rc = ctl_request(ctx, true, "POST", "/v1/keys", body, "create a key", &key);
        json_decref(body);
        if (rc == CTL_EXIT_OK)
            ctl_print_object(ctx, key, ctl_key_fields);
        json_decref(key);
        return rc;
    }

    ctl_bulk b = {.ctx = ctx,
                  .total = (unsigned)count,
                  .bits = (long long)bits,
                  .label = label,
                  .tty = isatty(STDERR_FILENO) == 1};
    b.kids = calloc(b.total, sizeof(*b.kids));
    b.keys = json_array();
    if (b.kids == NULL || b.keys == NULL || pthread_mutex_init(&b.mu, NULL) != 0) {
        free(b.kids);
        json_decref(b.keys);
        ctl_err("keys create: out of memory");
        return CTL_EXIT_SERVER;
    }
    b.parallel = (unsigned)(parallel < count ? parallel : count);
    rc = ctl_bulk_run(&b, b.parallel);
    pthread_mutex_destroy(&b.mu);
    free(b.kids);
    json_decref(b.keys);
    return rc;
}

static void ctl_on_signal(int sig)
{
    (void)sig;
    ctl_interrupted = 1;
}

/* Runs the workers, then reports: the kids on stdout, the count and any stop on stderr. */
static int ctl_bulk_run(ctl_bulk *b, unsigned parallel)
{
    /* The first Ctrl-C stops new requests (SA_RESETHAND: the second ends the process). The
     * workers block the signals, so their requests under way finish undisturbed. */
    struct sigaction sa = {.sa_handler = ctl_on_signal, .sa_flags = SA_RESETHAND}, old_int,
                     old_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigset_t block, prev;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &prev);
    pthread_t th[CTL_PARALLEL_MAX];
    unsigned n = 0;
    for (; n < parallel; n++)
        if (pthread_create(&th[n], NULL, ctl_bulk_worker, b) != 0)
            break;
    pthread_sigmask(SIG_SETMASK, &prev, NULL);
    if (n == 0) {
        b->err_rc = CTL_EXIT_SERVER;
        snprintf(b->err_line, sizeof(b->err_line), "keys create: cannot start a thread");
    }
    for (unsigned i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (b->tty)
        fputc('\n', stderr);

    if (b->ctx->json) {
        json_t *out = json_pack("{s:I, s:I, s:O}", "requested", (json_int_t)b->total, "created",
                                (json_int_t)b->created, "keys", b->keys);
        if (out != NULL && b->err_rc != CTL_EXIT_OK)
            json_object_set_new(out, "stopped", json_string(b->err_line));
        else if (out != NULL && ctl_interrupted)
            json_object_set_new(out, "stopped", json_string("interrupted"));
        ctl_print_json(out);
        json_decref(out);
    } else {
        for (unsigned i = 0; i < b->created; i++)
            puts(b->kids[i]);
    }
    fflush(stdout);

    if (b->err_rc == CTL_EXIT_LIMIT) {
        /* The limit itself: the keys that hold a slot (active and retiring) now. */
        json_t *list = NULL;
        long long held = 0;
        if (ctl_request(b->ctx, true, "GET", "/v1/keys", NULL, "count the keys", &list) ==
            CTL_EXIT_OK) {
            size_t i;
            json_t *k;
            json_array_foreach(json_object_get(list, "keys"), i, k)
            {
                const char *st = json_string_value(json_object_get(k, "state"));
                if (st != NULL && (strcmp(st, "active") == 0 || strcmp(st, "retiring") == 0))
                    held++;
            }
        }
        json_decref(list);
        if (held > 0)
            ctl_err("created %u of %u: key limit (%lld) reached; revoke keys no longer needed "
                    "('signdctl keys revoke KID --reason R') or raise max_active_keys (at most "
                    "1000)",
                    b->created, b->total, held);
        else
            ctl_err("created %u of %u: key limit reached; revoke keys no longer needed or raise "
                    "max_active_keys (at most 1000)",
                    b->created, b->total);
        return CTL_EXIT_LIMIT;
    }
    if (b->err_rc != CTL_EXIT_OK) {
        ctl_err("created %u of %u, then %s", b->created, b->total, b->err_line);
        return b->err_rc;
    }
    if (ctl_interrupted) {
        ctl_err("created %u of %u: interrupted; run 'signdctl keys create --count %u' to make the "
                "rest",
                b->created, b->total, b->total - b->created);
        return CTL_EXIT_INTERRUPTED;
    }
    fprintf(stderr, "created %u of %u keys\n", b->created, b->total);
    return CTL_EXIT_OK;
}

/* Under b->mu. A bar redrawn in place on a terminal; otherwise one line per key. */
static void ctl_bulk_progress(ctl_bulk *b, const char *kid)
{
    if (!b->tty) {
        if (kid != NULL)
            fprintf(stderr, "created key %u/%u: %s\n", b->created, b->total, kid);
        return;
    }
    char bar[CTL_BAR_WIDTH + 1];
    unsigned fill = (unsigned)((unsigned long long)b->created * CTL_BAR_WIDTH / b->total);
    memset(bar, '#', fill);
    memset(bar + fill, '.', CTL_BAR_WIDTH - fill);
    bar[CTL_BAR_WIDTH] = '\0';
    fprintf(stderr, "\r[%s] %u/%u keys%s", bar, b->created, b->total,
            b->stop || ctl_interrupted ? " (stopping)" : "");
    fflush(stderr);
}

static void *ctl_bulk_worker(void *arg)
{
    ctl_bulk *b = arg;
    ctl_conn c;
    char line[CTL_LINE_MAX];
    json_t *body = ctl_create_body(b->bits, b->label);
    /* Opening fails only for want of memory; ctl_conn_open has printed why. */
    int rc = body != NULL ? ctl_conn_open(b->ctx, true, &c) : CTL_EXIT_SERVER;
    if (rc != CTL_EXIT_OK) {
        pthread_mutex_lock(&b->mu);
        if (b->err_rc == CTL_EXIT_OK) {
            b->err_rc = rc;
            snprintf(b->err_line, sizeof(b->err_line), "create a key: cannot set up libcurl");
        }
        b->stop = true;
        pthread_mutex_unlock(&b->mu);
        json_decref(body);
        return NULL;
    }
    /* The token makes one key pair at a time: a request may wait behind every other one
     * under way. Cutting it off early would leave a key made but not reported. */
    curl_easy_setopt(c.curl, CURLOPT_TIMEOUT, b->ctx->timeout * (long)b->parallel);
    for (;;) {
        pthread_mutex_lock(&b->mu);
        bool go = !b->stop && !ctl_interrupted && b->started < b->total;
        if (go)
            b->started++;
        pthread_mutex_unlock(&b->mu);
        if (!go)
            break;
        ctl_resp r;
        ctl_resp_init(&r, NULL);
        rc = ctl_call(&c, "POST", "/v1/keys", body, &r, "create a key", line, sizeof(line));
        json_t *key = NULL;
        const char *kid = NULL;
        if (rc == CTL_EXIT_OK) {
            key = json_loadb(r.body ? r.body : "", r.len, 0, NULL);
            kid = json_string_value(json_object_get(key, "kid"));
            if (!hex_string(kid, CTL_KID_HEX)) {
                rc = CTL_EXIT_SERVER;
                snprintf(line, sizeof(line),
                         "create a key: the answer holds no kid; check that --url points at signd");
            }
        }
        pthread_mutex_lock(&b->mu);
        if (rc == CTL_EXIT_OK) {
            memcpy(b->kids[b->created], kid, CTL_KID_HEX + 1);
            b->created++;
            json_array_append(b->keys, key);
        } else {
            if (b->err_rc == CTL_EXIT_OK) {
                b->err_rc = rc;
                memcpy(b->err_line, line, sizeof(line));
            }
            b->stop = true;
        }
        ctl_bulk_progress(b, rc == CTL_EXIT_OK ? b->kids[b->created - 1] : NULL);
        pthread_mutex_unlock(&b->mu);
        json_decref(key);
        ctl_resp_free(&r);
    }
    ctl_conn_close(&c);
    json_decref(body);
    return NULL;
}

static int ctl_keys_list(ctl_ctx *ctx, int argc, char **argv)
{
    const char *state = NULL;
    const ctl_opt opts[] = {{"state", true, &state, NULL}, {NULL, false, NULL, NULL}};
    int rc, npos;
    if (ctl_parse(ctx, "keys list", ctl_list_help, argc, argv, opts, NULL, 0, &npos, &rc) != 0)
        return rc;
    static const char *const states[] = {"active", "retiring", "revoked", "broken", NULL};
    bool known = state == NULL;
    for (size_t i = 0; !known && states[i] != NULL; i++)
        known = strcmp(states[i], state) == 0;
    if (!known)
        return ctl_usage("keys list", "--state must be active, retiring, revoked or broken");
    char path[64];
    snprintf(path, sizeof(path), "/v1/keys%s%s", state ? "?state=" : "", state ? state : "");
    json_t *list = NULL;
    if ((rc = ctl_request(ctx, true, "GET", path, NULL, "list the keys", &list)) != CTL_EXIT_OK)
        return rc;
    if (ctx->json) {
        ctl_print_json(list);
        json_decref(list);
        return CTL_EXIT_OK;
    }
    json_t *keys = json_object_get(list, "keys");
    /* Column widths from the widest cell; the label is last and left ragged. */
    int w_state = 5, w_bits = 4;
    size_t i;
    json_t *k;
    json_array_foreach(keys, i, k)
    {
        const char *st = json_string_value(json_object_get(k, "state"));
        int ws = st ? (int)strlen(st) : 1;
        char bits[24];
        int wb = snprintf(bits, sizeof(bits), "%lld",
                          (long long)json_integer_value(json_object_get(k, "bits")));
        w_state = ws > w_state ? ws : w_state;
        w_bits = wb > w_bits ? wb : w_bits;
    }
    if (json_array_size(keys) == 0) {
        fprintf(stderr, "no keys%s%s\n", state ? " in state " : "", state ? state : "");
        json_decref(list);
        return CTL_EXIT_OK;
    }
    printf("%-32s  %-*s  %*s  %-20s  %s\n", "KID", w_state, "STATE", w_bits, "BITS", "CREATED",
           "LABEL");
    json_array_foreach(keys, i, k)
    {
        char created[32];
        ctl_time(json_integer_value(json_object_get(k, "created_at")), created, sizeof(created));
        const char *kid = json_string_value(json_object_get(k, "kid"));
        const char *st = json_string_value(json_object_get(k, "state"));
        const char *label = json_string_value(json_object_get(k, "label"));
        printf("%-32s  %-*s  %*lld  %-20s  %s\n", kid ? kid : "-", w_state, st ? st : "-", w_bits,
               (long long)json_integer_value(json_object_get(k, "bits")), created,
               label && label[0] ? label : "-");
    }
    json_decref(list);
    return CTL_EXIT_OK;
}

static int ctl_keys_show(ctl_ctx *ctx, int argc, char **argv)
{
    const char *pos[1];
    int rc, npos;
    if (ctl_parse(ctx, "keys show", ctl_show_help, argc, argv, NULL, pos, 1, &npos, &rc) != 0)
        return rc;
    if (npos != 1)
        return ctl_usage("keys show", "give the kid to show");
    if ((rc = ctl_kid_arg("keys show", pos[0])) != CTL_EXIT_OK)
        return rc;
    char path[64], what[64];
    snprintf(path, sizeof(path), "/v1/keys/%s", pos[0]);
    snprintf(what, sizeof(what), "show key %s", pos[0]);
    json_t *key = NULL;
    if ((rc = ctl_request(ctx, true, "GET", path, NULL, what, &key)) != CTL_EXIT_OK)
        return rc;
    ctl_print_object(ctx, key, ctl_key_fields);
    json_decref(key);
    return CTL_EXIT_OK;
}

static int ctl_keys_revoke(ctl_ctx *ctx, int argc, char **argv)
{
    const char *pos[1], *reason = NULL;
    const ctl_opt opts[] = {{"reason", true, &reason, NULL}, {NULL, false, NULL, NULL}};
    int rc, npos;
    if (ctl_parse(ctx, "keys revoke", ctl_revoke_help, argc, argv, opts, pos, 1, &npos, &rc) != 0)
        return rc;
    if (npos != 1)
        return ctl_usage("keys revoke", "give the kid to revoke");
    if ((rc = ctl_kid_arg("keys revoke", pos[0])) != CTL_EXIT_OK)
        return rc;
    if (reason == NULL || reason[0] == '\0')
        return ctl_usage("keys revoke", "say why with --reason (it is published in the "
                                        "revocation feed)");
    char path[64], what[64];
    snprintf(path, sizeof(path), "/v1/keys/%s", pos[0]);
    snprintf(what, sizeof(what), "revoke key %s", pos[0]);
    json_t *body = json_pack("{s:s}", "reason", reason), *key = NULL;
    rc = ctl_request(ctx, true, "DELETE", path, body, what, &key);
    json_decref(body);
    if (rc == CTL_EXIT_OK)
        ctl_print_object(ctx, key, ctl_key_fields);
    json_decref(key);
    return rc;
}

static int ctl_keys_rotate(ctl_ctx *ctx, int argc, char **argv)
{
    const char *pos[1], *grace_s = NULL, *label = NULL;
    const ctl_opt opts[] = {
        {"grace", true, &grace_s, NULL}, {"label", true, &label, NULL}, {NULL, false, NULL, NULL}};
    int rc, npos;
    if (ctl_parse(ctx, "keys rotate", ctl_rotate_help, argc, argv, opts, pos, 1, &npos, &rc) != 0)
        return rc;
    if (npos != 1)
        return ctl_usage("keys rotate", "give the kid to rotate");
    if ((rc = ctl_kid_arg("keys rotate", pos[0])) != CTL_EXIT_OK)
        return rc;
    unsigned long long grace = 0;
    if (grace_s != NULL && ctl_parse_uint(grace_s, 0, 31536000, &grace) != 0)
        return ctl_usage("keys rotate", "--grace must be 0 to 31536000 seconds");
    json_t *body = json_object(), *key = NULL;
    if (grace_s != NULL)
        json_object_set_new(body, "grace_seconds", json_integer((json_int_t)grace));
    if (label != NULL)
        json_object_set_new(body, "label", json_string(label));
    char path[80], what[64];
    snprintf(path, sizeof(path), "/v1/keys/%s/rotate", pos[0]);
    snprintf(what, sizeof(what), "rotate key %s", pos[0]);
    rc = ctl_request(ctx, true, "POST", path, body, what, &key);
    json_decref(body);
    if (rc == CTL_EXIT_OK && ctx->json) {
        ctl_print_json(key);
    } else if (rc == CTL_EXIT_OK) {
        ctl_print_fields(key, ctl_key_fields);
        json_t *old = json_object_get(key, "predecessor_key");
        char at[32];
        ctl_time(json_integer_value(json_object_get(old, "retire_at")), at, sizeof(at));
        printf("# %s now retires at %s\n", pos[0], at);
    }
    json_decref(key);
    return rc;
}
