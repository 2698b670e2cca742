/* met: lock-free counters and the Prometheus text exposition. See metrics.h. */
#include "appliance/common/metrics.h"

#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

_Static_assert((MET_KIDS_MAX & (MET_KIDS_MAX - 1)) == 0, "MET_KIDS_MAX is a power of two");

#define MET_STATUS_FIRST 100
#define MET_STATUS_N 500 /* 100..599; anything else counts as 599's neighbour: clamped */

/* Upper bounds of the latency buckets, in nanoseconds and as printed. */
static const uint64_t met_bound_ns[MET_BUCKETS] = {
    500000ull,     1000000ull,    2500000ull,    5000000ull,     10000000ull,
    25000000ull,   50000000ull,   100000000ull,  250000000ull,   500000000ull,
    1000000000ull, 2500000000ull, 5000000000ull, 10000000000ull,
};
static const char *const met_bound_text[MET_BUCKETS] = {
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1",    "0.25",  "0.5",    "1",     "2.5",  "5",     "10",
};

typedef struct {
    const char *route, *method; /* NULL: index unused */
    atomic_ullong status[MET_STATUS_N];
    atomic_ullong bucket[MET_BUCKETS + 1]; /* not cumulative; the last is above every bound */
    atomic_ullong sum_ns;
} met_route_stats;

typedef struct {
    atomic_uint state; /* MET_SLOT_*: a slot is claimed once and never released */
    sk_kid kid;
    atomic_ullong n[MET_RESULTS_MAX];
} met_kid_slot;

enum { MET_SLOT_EMPTY = 0, MET_SLOT_CLAIMING, MET_SLOT_READY };

static met_route_stats met_routes[MET_ROUTES_MAX];
static met_kid_slot met_kids[MET_KIDS_MAX];
static met_kid_slot met_kid_none, met_kid_other;
/* A CKR value's failures by class. key: 0 while free, else MET_CKR_TAKEN | the value, set
 * once by a compare-and-swap that claims and names the slot in one step. */
typedef struct {
    atomic_ullong key;
    atomic_ullong n[SK_ERR_COUNT_];
} met_ckr_slot;

#define MET_CKR_TAKEN (1ull << 32)

static met_ckr_slot met_ckrs[MET_CKR_MAX];
static met_ckr_slot met_ckr_other; /* key unused */
static atomic_ullong met_unreachable;
static atomic_ullong met_timeouts;
static const char *const met_restart_causes[] = {"exited", "signal", "watchdog"};
#define MET_RESTART_CAUSES (sizeof(met_restart_causes) / sizeof(met_restart_causes[0]))
static atomic_ullong met_restarts[2][MET_RESTART_CAUSES]; /* [keeper][cause] */
static atomic_llong met_started;

static _Thread_local sk_kid met_tl_kid;
static _Thread_local int met_tl_has_kid;

void met_start(void)
{
    long long zero = 0;
    atomic_compare_exchange_strong(&met_started, &zero, (long long)time(NULL));
}

void met_route(unsigned i, const char *route, const char *method)
{
    if (i >= MET_ROUTE_UNMATCHED)
        return;
    met_routes[i].route = route;
    met_routes[i].method = method;
}

void met_request(unsigned route, int status, uint64_t ns)
{
    met_route_stats *r = &met_routes[route < MET_ROUTES_MAX ? route : MET_ROUTE_UNMATCHED];
    int s = status < MET_STATUS_FIRST                   ? MET_STATUS_FIRST
            : status >= MET_STATUS_FIRST + MET_STATUS_N ? MET_STATUS_FIRST + MET_STATUS_N - 1
                                                        : status;
    atomic_fetch_add_explicit(&r->status[s - MET_STATUS_FIRST], 1, memory_order_relaxed);
    size_t b = 0;
    while (b < MET_BUCKETS && ns > met_bound_ns[b])
        b++;
    atomic_fetch_add_explicit(&r->bucket[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->sum_ns, ns, memory_order_relaxed);
}

/* kid's slot, claimed on first use; met_kid_other once the table is full. A slot being
 * claimed is waited for (a 16-byte copy away): it may be this very kid. */
static met_kid_slot *met_kid_slot_of(const sk_kid *kid)
{
    uint64_t h;
    memcpy(&h, kid->b, sizeof(h));
    size_t start = (size_t)((h * 0x9e3779b97f4a7c15ull) >> 40);
    for (size_t i = 0; i < MET_KIDS_MAX; i++) {
        met_kid_slot *s = &met_kids[(start + i) & (MET_KIDS_MAX - 1)];
        unsigned st = atomic_load_explicit(&s->state, memory_order_acquire);
        if (st == MET_SLOT_EMPTY) {
            if (atomic_compare_exchange_strong(&s->state, &st, MET_SLOT_CLAIMING)) {
                s->kid = *kid;
                atomic_store_explicit(&s->state, MET_SLOT_READY, memory_order_release);
                return s;
            }
        }
        while (st == MET_SLOT_CLAIMING) {
            sched_yield();
            st = atomic_load_explicit(&s->state, memory_order_acquire);
        }
        if (memcmp(s->kid.b, kid->b, SK_KID_LEN) == 0)
            return s;
    }
    return &met_kid_other;
}

void met_signature(const sk_kid *kid, unsigned result)
{
    met_kid_slot *s = kid != NULL ? met_kid_slot_of(kid) : &met_kid_none;
    atomic_fetch_add_explicit(&s->n[result < MET_RESULTS_MAX ? result : MET_RESULTS_MAX - 1], 1,
                              memory_order_relaxed);
}

/* The PKCS#11 names of the codes a token is likely to return here; the rest print in hex.
 * Names, not classes: two codes of one class (CKR_GENERAL_ERROR, CKR_DEVICE_ERROR) tell an
 * operator different things. */
static const struct {
    unsigned long ckr;
    const char *name;
} met_ckr_names[] = {
    {CKR_HOST_MEMORY, "CKR_HOST_MEMORY"},
    {CKR_SLOT_ID_INVALID, "CKR_SLOT_ID_INVALID"},
    {CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR"},
    {CKR_FUNCTION_FAILED, "CKR_FUNCTION_FAILED"},
    {CKR_ARGUMENTS_BAD, "CKR_ARGUMENTS_BAD"},
    {CKR_ATTRIBUTE_VALUE_INVALID, "CKR_ATTRIBUTE_VALUE_INVALID"},
    {CKR_DATA_LEN_RANGE, "CKR_DATA_LEN_RANGE"},
    {CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR"},
    {CKR_DEVICE_MEMORY, "CKR_DEVICE_MEMORY"},
    {CKR_DEVICE_REMOVED, "CKR_DEVICE_REMOVED"},
    {CKR_FUNCTION_CANCELED, "CKR_FUNCTION_CANCELED"},
    {CKR_KEY_HANDLE_INVALID, "CKR_KEY_HANDLE_INVALID"},
    {CKR_KEY_SIZE_RANGE, "CKR_KEY_SIZE_RANGE"},
    {CKR_MECHANISM_INVALID, "CKR_MECHANISM_INVALID"},
    {CKR_OBJECT_HANDLE_INVALID, "CKR_OBJECT_HANDLE_INVALID"},
    {CKR_OPERATION_ACTIVE, "CKR_OPERATION_ACTIVE"},
    {CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT"},
    {CKR_PIN_INVALID, "CKR_PIN_INVALID"},
    {CKR_PIN_LEN_RANGE, "CKR_PIN_LEN_RANGE"},
    {CKR_PIN_EXPIRED, "CKR_PIN_EXPIRED"},
    {CKR_PIN_LOCKED, "CKR_PIN_LOCKED"},
    {CKR_SESSION_CLOSED, "CKR_SESSION_CLOSED"},
    {CKR_SESSION_COUNT, "CKR_SESSION_COUNT"},
    {CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID"},
    {CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT"},
    {CKR_TOKEN_NOT_RECOGNIZED, "CKR_TOKEN_NOT_RECOGNIZED"},
    {CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN"},
    {CKR_BUFFER_TOO_SMALL, "CKR_BUFFER_TOO_SMALL"},
    {CKR_CRYPTOKI_NOT_INITIALIZED, "CKR_CRYPTOKI_NOT_INITIALIZED"},
};

const char *met_ckr_name(unsigned long ckr)
{
    if (ckr == 0)
        return "unknown"; /* CKR_OK never fails: 0 is the keeper's "no CKR to blame" */
    for (size_t i = 0; i < sizeof(met_ckr_names) / sizeof(met_ckr_names[0]); i++)
        if (met_ckr_names[i].ckr == ckr)
            return met_ckr_names[i].name;
    return NULL;
}

/* ckr's slot, claimed on first use; met_ckr_other once MET_CKR_MAX values have one (or
 * for a value wider than 32 bits, which no module returns). Slots fill in index order and
 * are never freed, so the first free slot ends the search. */
static met_ckr_slot *met_ckr_slot_of(unsigned long ckr)
{
    if ((unsigned long long)ckr >= MET_CKR_TAKEN)
        return &met_ckr_other;
    unsigned long long want = MET_CKR_TAKEN | (unsigned long long)ckr;
    for (size_t i = 0; i < MET_CKR_MAX; i++) {
        unsigned long long k = atomic_load_explicit(&met_ckrs[i].key, memory_order_relaxed);
        if (k == 0 && atomic_compare_exchange_strong(&met_ckrs[i].key, &k, want))
            return &met_ckrs[i];
        if (k == want) /* already ours, or another thread claimed it for this value first */
            return &met_ckrs[i];
    }
    return &met_ckr_other;
}

void met_pkcs11_error(unsigned code, unsigned long ckr)
{
    if (code == MET_KEEPER_UNREACHABLE || code == MET_KEEPER_TIMEOUT) {
        atomic_fetch_add_explicit(code == MET_KEEPER_TIMEOUT ? &met_timeouts : &met_unreachable, 1,
                                  memory_order_relaxed);
        return;
    }
    if (code == SK_OK || code >= SK_ERR_COUNT_ || code == SK_ERR_KEY_NOT_FOUND ||
        code == SK_ERR_KEY_EXISTS)
        return;
    atomic_fetch_add_explicit(&met_ckr_slot_of(ckr)->n[code], 1, memory_order_relaxed);
}

void met_restart(int keeper, const char *cause)
{
    for (size_t i = 0; i < MET_RESTART_CAUSES; i++)
        if (cause != NULL && strcmp(cause, met_restart_causes[i]) == 0)
            atomic_fetch_add_explicit(&met_restarts[keeper != 0][i], 1, memory_order_relaxed);
}

void met_note_kid(const sk_kid *kid)
{
    met_tl_kid = *kid;
    met_tl_has_kid = 1;
}

int met_take_kid(sk_kid *out)
{
    int had = met_tl_has_kid;
    if (had && out != NULL)
        *out = met_tl_kid;
    met_tl_has_kid = 0;
    return had;
}

/* ---- rendering -------------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} met_buf;

static void met_put(met_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void met_put(met_buf *b, const char *fmt, ...)
{
    for (int attempt = 0; attempt < 2 && !b->failed; attempt++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 > b->len + (size_t)n + 1 ? b->cap * 2 : b->len + (size_t)n + 1;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

/* A label value as the text format wants it: backslash, double quote and newline escaped.
 * out holds 2 * strlen(v) + 1 bytes. */
static const char *met_escape(const char *v, char *out, size_t cap)
{
    size_t o = 0;
    for (; *v != '\0' && o + 3 < cap; v++) {
        if (*v == '\\' || *v == '"') {
            out[o++] = '\\';
            out[o++] = *v;
        } else if (*v == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else {
            out[o++] = *v;
        }
    }
    out[o] = '\0';
    return out;
}

static void met_family(met_buf *b, const char *name, const char *type, const char *help)
{
    met_put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

#define MET_ROUTE_LABEL_MAX 256 /* escaped, with the NUL */
#define MET_METHOD_LABEL_MAX 64

/* The escaped route and method labels of route slot i: 1, or 0 for a slot no route uses. */
static int met_route_labels(size_t i, char route[MET_ROUTE_LABEL_MAX],
                            char method[MET_METHOD_LABEL_MAX])
{
    const met_route_stats *r = &met_routes[i];
    const char *rt = i == MET_ROUTE_UNMATCHED ? "unmatched" : r->route;
    if (rt == NULL)
        return 0;
    met_escape(rt, route, MET_ROUTE_LABEL_MAX);
    met_escape(i == MET_ROUTE_UNMATCHED ? "other" : r->method, method, MET_METHOD_LABEL_MAX);
    return 1;
}

static void met_render_requests(met_buf *b)
{
    char route[MET_ROUTE_LABEL_MAX], method[MET_METHOD_LABEL_MAX];
    met_family(b, "signd_http_requests_total", "counter",
               "HTTP requests answered, by route template, method and status.");
    for (size_t i = 0; i < MET_ROUTES_MAX; i++) {
        const met_route_stats *r = &met_routes[i];
        if (!met_route_labels(i, route, method))
            continue;
        for (size_t s = 0; s < MET_STATUS_N; s++) {
            unsigned long long n = atomic_load_explicit(&r->status[s], memory_order_relaxed);
            if (n != 0)
                met_put(
                    b,
                    "signd_http_requests_total{route=\"%s\",method=\"%s\",status=\"%zu\"} %llu\n",
                    route, method, s + MET_STATUS_FIRST, n);
        }
    }
    met_family(b, "signd_http_request_duration_seconds", "histogram",
               "Time from routing a request to its response written, by route template and "
               "method.");
    for (size_t i = 0; i < MET_ROUTES_MAX; i++) {
        const met_route_stats *r = &met_routes[i];
        if (!met_route_labels(i, route, method))
            continue;
        unsigned long long cum = 0;
        for (size_t k = 0; k <= MET_BUCKETS; k++) {
            cum += atomic_load_explicit(&r->bucket[k], memory_order_relaxed);
            met_put(b,
                    "signd_http_request_duration_seconds_bucket{route=\"%s\",method=\"%s\","
                    "le=\"%s\"} %llu\n",
                    route, method, k < MET_BUCKETS ? met_bound_text[k] : "+Inf", cum);
        }
        double sum = (double)atomic_load_explicit(&r->sum_ns, memory_order_relaxed) / 1e9;
        met_put(b, "signd_http_request_duration_seconds_sum{route=\"%s\",method=\"%s\"} %.9f\n",
                route, method, sum);
        met_put(b, "signd_http_request_duration_seconds_count{route=\"%s\",method=\"%s\"} %llu\n",
                route, method, cum);
    }
}

static void met_render_kid(met_buf *b, const met_kid_slot *s, const char *kid,
                           const char *(*result_name)(unsigned))
{
    char name[96];
    for (unsigned r = 0; r < MET_RESULTS_MAX; r++) {
        unsigned long long n = atomic_load_explicit(&s->n[r], memory_order_relaxed);
        if (n != 0)
            met_put(b, "signd_signatures_total{kid=\"%s\",result=\"%s\"} %llu\n", kid,
                    met_escape(result_name(r), name, sizeof(name)), n);
    }
}

static void met_render_signatures(met_buf *b, const char *(*result_name)(unsigned))
{
    met_family(b, "signd_signatures_total", "counter",
               "Signing requests (raw signatures and tokens) that reached their handler, by kid "
               "and result (ok or the API error code).");
    for (size_t i = 0; i < MET_KIDS_MAX; i++) {
        const met_kid_slot *s = &met_kids[i];
        if (atomic_load_explicit(&s->state, memory_order_acquire) != MET_SLOT_READY)
            continue;
        char hex[2 * SK_KID_LEN + 1];
        sk_kid_hex(&s->kid, hex);
        met_render_kid(b, s, hex, result_name);
    }
    met_render_kid(b, &met_kid_none, "none", result_name);
    met_render_kid(b, &met_kid_other, "other", result_name);
}

/* A slot's series: one per class it has counted (a CKR value seen under no class has
 * none). */
static void met_render_ckr(met_buf *b, const met_ckr_slot *s, const char *ckr)
{
    for (unsigned c = SK_OK + 1; c < SK_ERR_COUNT_; c++) {
        unsigned long long n = atomic_load_explicit(&s->n[c], memory_order_relaxed);
        if (n != 0)
            met_put(b, "signd_pkcs11_errors_total{ckr=\"%s\",class=\"%s\"} %llu\n", ckr,
                    sk_status_name((sk_status)c), n);
    }
}

static void met_render_pkcs11(met_buf *b, const met_gauges *g)
{
    met_family(b, "signd_pkcs11_errors_total", "counter",
               "Failed token operations seen by the HTTPS front, by the PKCS#11 return value "
               "(ckr: its CKR_ name or hex, unknown, other) and the class the keeper maps it to; "
               "ckr=\"none\",class=\"keeper_unreachable\": no answer from the keeper; "
               "class=\"keeper_timeout\": no answer within keeper_timeout_ms.");
    met_put(b, "signd_pkcs11_errors_total{ckr=\"none\",class=\"keeper_unreachable\"} %llu\n",
            atomic_load_explicit(&met_unreachable, memory_order_relaxed));
    met_put(b, "signd_pkcs11_errors_total{ckr=\"none\",class=\"keeper_timeout\"} %llu\n",
            atomic_load_explicit(&met_timeouts, memory_order_relaxed));
    for (size_t i = 0; i < MET_CKR_MAX; i++) {
        unsigned long long k = atomic_load_explicit(&met_ckrs[i].key, memory_order_relaxed);
        if (k == 0)
            break; /* slots fill in order: none after the first free one */
        unsigned long ckr = (unsigned long)(k & (MET_CKR_TAKEN - 1));
        const char *name = met_ckr_name(ckr);
        char hex[sizeof("0x") + 8];
        if (name == NULL) {
            snprintf(hex, sizeof(hex), "0x%08lx", ckr);
            name = hex;
        }
        met_render_ckr(b, &met_ckrs[i], name);
    }
    met_render_ckr(b, &met_ckr_other, "other");
    met_family(b, "signd_pkcs11_sessions_in_use", "gauge",
               "PKCS#11 sessions open in the token for worker threads.");
    met_put(b, "signd_pkcs11_sessions_in_use %u\n", g->sessions_in_use);
    met_family(b, "signd_pkcs11_sessions_max", "gauge",
               "The bound on those sessions (max_pkcs11_sessions or its default).");
    met_put(b, "signd_pkcs11_sessions_max %u\n", g->sessions_max);
}

static pthread_mutex_t met_reopen_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned long long met_reopen_total;
static unsigned long met_reopen_last;

void met_hsm_reopens(unsigned long keeper_count)
{
    pthread_mutex_lock(&met_reopen_mu);
    met_reopen_total +=
        keeper_count >= met_reopen_last ? keeper_count - met_reopen_last : keeper_count;
    met_reopen_last = keeper_count;
    pthread_mutex_unlock(&met_reopen_mu);
}

static void met_render_restarts(met_buf *b)
{
    pthread_mutex_lock(&met_reopen_mu);
    unsigned long long reopens = met_reopen_total;
    pthread_mutex_unlock(&met_reopen_mu);
    met_family(b, "signd_hsm_reopens_total", "counter",
               "Times the keeper finalised and initialised the PKCS#11 module again after the "
               "token ran out of loaded objects (tpm2-pkcs11 at tpm2-abrmd's bound; "
               "docs/modules.md), as the readiness probe last read them.");
    met_put(b, "signd_hsm_reopens_total %llu\n", reopens);
    met_family(b, "signd_restarts_total", "counter",
               "Processes the supervisor started again, by process (keeper, front) and cause: "
               "exited, signal (a crash, or a kill from outside), watchdog (a keeper that "
               "missed its pings for keeper_watchdog_ms, killed by the supervisor).");
    for (int k = 1; k >= 0; k--)
        for (size_t i = 0; i < MET_RESTART_CAUSES; i++)
            met_put(b, "signd_restarts_total{process=\"%s\",cause=\"%s\"} %llu\n",
                    k ? "keeper" : "front", met_restart_causes[i],
                    atomic_load_explicit(&met_restarts[k][i], memory_order_relaxed));
}

static pthread_mutex_t met_token_mu = PTHREAD_MUTEX_INITIALIZER;
static sk_token_info met_token;
static int met_token_known;

void met_token_info(const sk_token_info *ti)
{
    pthread_mutex_lock(&met_token_mu);
    met_token = *ti;
    met_token_known = 1;
    pthread_mutex_unlock(&met_token_mu);
}

/* signd_token_info: what the keeper found out about the token at its start (issue 21):
 * an operator sees which signing path a module got, its key sizes and whether it refused
 * sign-only keys, without reading the keeper's log. */
static void met_render_token(met_buf *b)
{
    pthread_mutex_lock(&met_token_mu);
    sk_token_info t = met_token;
    int known = met_token_known;
    pthread_mutex_unlock(&met_token_mu);
    if (!known)
        return;
    char v[3][128];
    met_family(b, "signd_token_info", "gauge",
               "What the keeper probed of the token at its start: the signing mechanism "
               "(sha256_rsa_pkcs, or rsa_pkcs over a DigestInfo), the token's manufacturer and "
               "model, its RSA key sizes and PIN lengths (0: not given), the session bound, and "
               "whether it refused a sign-only key since (sign_only_refused).");
    met_put(b,
            "signd_token_info{sign_mechanism=\"%s\",manufacturer=\"%s\",model=\"%s\","
            "rsa_min_bits=\"%u\",rsa_max_bits=\"%u\",pin_min=\"%u\",pin_max=\"%u\","
            "max_sessions=\"%u\",sign_only_refused=\"%s\"} 1\n",
            met_escape(t.sign_mechanism, v[0], sizeof(v[0])),
            met_escape(t.manufacturer, v[1], sizeof(v[1])), met_escape(t.model, v[2], sizeof(v[2])),
            t.rsa_min_bits, t.rsa_max_bits, t.pin_min, t.pin_max, t.max_sessions,
            t.sign_only_refused ? "true" : "false");
}

static void met_render_state(met_buf *b, const met_gauges *g)
{
    char v[4][128];
    met_family(b, "signd_build_info", "gauge", "The build and the libraries it runs with.");
    met_put(b, "signd_build_info{version=\"%s\",openssl=\"%s\",sqlite=\"%s\",jansson=\"%s\"} 1\n",
            met_escape(g->version ? g->version : "", v[0], sizeof(v[0])),
            met_escape(g->openssl ? g->openssl : "", v[1], sizeof(v[1])),
            met_escape(g->sqlite ? g->sqlite : "", v[2], sizeof(v[2])),
            met_escape(g->jansson ? g->jansson : "", v[3], sizeof(v[3])));
    met_family(b, "signd_process_start_time_seconds", "gauge",
               "When the serving process started, in Unix seconds.");
    met_put(b, "signd_process_start_time_seconds %lld\n", (long long)atomic_load(&met_started));
    met_family(b, "signd_keys", "gauge", "Keys in the registry, by state.");
    for (size_t i = 0; i < g->n_states && i < MET_STATES_MAX; i++)
        met_put(b, "signd_keys{state=\"%s\"} %llu\n",
                met_escape(g->state_name[i] ? g->state_name[i] : "", v[0], sizeof(v[0])),
                (unsigned long long)g->state_keys[i]);
    met_family(b, "signd_revocation_seq", "gauge",
               "Sequence number of the newest revocation (the signed feed's seq).");
    met_put(b, "signd_revocation_seq %llu\n", (unsigned long long)g->revocation_seq);
    met_family(b, "signd_ready", "gauge",
               "1 when the last readiness probe had the token sign in time (GET /readyz 200), "
               "else 0.");
    met_put(b, "signd_ready %d\n", g->ready != 0);
    met_family(b, "signd_audit_lag_events", "gauge",
               "Audit events and counted signatures accepted but not yet committed to the "
               "trail.");
    met_put(b, "signd_audit_lag_events %llu\n", (unsigned long long)g->audit_lag_events);
    met_family(b, "signd_audit_lag_seconds", "gauge",
               "Age of the oldest of those, in seconds; 0 when there is none.");
    met_put(b, "signd_audit_lag_seconds %.3f\n", g->audit_lag_seconds);
    met_family(b, "signd_log_lines_dropped_total", "counter",
               "JSON log lines that could not be written (too long, out of memory, write "
               "error).");
    met_put(b, "signd_log_lines_dropped_total %llu\n", g->log_dropped);
}

char *met_render(const met_gauges *g, const char *(*result_name)(unsigned), size_t *len)
{
    met_start();
    met_buf b = {.p = malloc(64 * 1024), .cap = 64 * 1024};
    if (b.p == NULL)
        return NULL;
    b.p[0] = '\0';
    met_render_state(&b, g);
    met_render_token(&b);
    met_render_requests(&b);
    met_render_signatures(&b, result_name);
    met_render_pkcs11(&b, g);
    met_render_restarts(&b);
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
