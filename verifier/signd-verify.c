/*
 * signd-verify: the reference verifier on the command line.
 *
 *   signd-verify --url URL --cacert FILE --feed-key FILE [--max-feed-age S] [--cooldown S]
 *                [--behind-grace S] [--leeway S] [--now UNIX] [--origin ORIGIN]
 *                [--aud AUDIENCE] [--redeem-credential FILE] [TOKEN ...]
 *   signd-verify ... --serve HOST:PORT [--sub-from-path N] [--serve-threads N]
 *
 * With tokens: verifies each once, one line each, exit 0 when all are ok, 1 otherwise.
 * --origin: a token bound to another origin is wrong_origin; without it, a token bound to
 * any origin is origin_required. --aud: a token for another audience (or none) is
 * wrong_audience. --redeem-credential: each
 * token that verifies is then redeemed through the appliance (vfy_redeem; the file holds the
 * secret of a redeemer credential), so a single-use token is ok once and already_used after;
 * why a redeem failed goes to stderr.
 * Without: reads one token a line from stdin and answers each with one line (flushed), stays
 * subscribed to the revocation stream until EOF, exit 0. The line "#stats" answers
 * "stats jwks_fetches=N feed_fetches=M stream=up|down seq=S" (and more fields after).
 * An answer is "ok <claims as compact JSON>" or the stable name of the reason
 * (vfy_result_name). Setup errors: exit 2 with one line "signd-verify: <what>" on stderr.
 * It never prompts.
 * --serve: the same verifier as an HTTP daemon for a web server's sub-request
 * authentication (verifier/serve.h); it answers until SIGTERM or SIGINT, exit 0.
 */
#include "verifier/serve.h"
#include "verifier/verifier.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CLI_ERR_MAX 512
#define CLI_LINE_CAP (VFY_TOKEN_MAX + 1)

static void cli_usage(FILE *f);
static int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int cli_number(const char *text, uint64_t max, uint64_t *out);
static int cli_answer(vfy *v, const char *token, const char *origin, bool redeem);
static void cli_stats(vfy *v);
static int cli_read_line(char *buf, size_t cap, size_t *len, int *bad);

static void cli_usage(FILE *f)
{
    fputs("usage: signd-verify --url URL --cacert FILE --feed-key FILE [--max-feed-age S]\n"
          "                    [--cooldown S] [--behind-grace S] [--leeway S] [--now UNIX]\n"
          "                    [--origin ORIGIN] [--aud AUDIENCE] [--redeem-credential FILE]\n"
          "                    [TOKEN ...]\n"
          "       signd-verify ... --serve HOST:PORT [--sub-from-path N] [--serve-threads N]\n"
          "Verifies RS256 tokens of a signd appliance against its JWKS, its signed\n"
          "revocation feed and the signed status list a revocable token names (both checked\n"
          "with the pinned key in --feed-key). --origin ORIGIN (https://host[:port]) refuses a\n"
          "token bound to another origin (wrong_origin); without it a token bound to any\n"
          "origin is origin_required. --aud AUDIENCE refuses a token whose aud is not it\n"
          "(wrong_audience). --redeem-credential FILE (the secret\n"
          "of a redeemer credential, never on the command line) also redeems each token\n"
          "through the appliance: a single-use token is ok once, then already_used. With no\n"
          "TOKEN, reads one token a line from stdin; the line #stats prints counters.\n"
          "--behind-grace S (default 5): told by the stream of a revocation it cannot fetch\n"
          "the signed copy of within S seconds, it answers feed_stale until it can.\n"
          "Answers: ok <claims>, malformed, alg_not_allowed, feed_stale, unknown_kid,\n"
          "revoked_kid, bad_signature, expired, not_yet_valid, revoked_token, wrong_origin,\n"
          "already_used, redeem_failed, origin_required, wrong_audience, revoked_subject.\n"
          "--serve HOST:PORT answers HTTP sub-requests (nginx auth_request) on any path: the\n"
          "token from the first segment of X-Original-URI or its token parameter, the origin\n"
          "from Origin or Referer (--origin: for requests with neither); 200 with X-Signd-Sub,\n"
          "-Jti, -Exp, or 401/403/503 with X-Signd-Reason. --sub-from-path N (1..32): the\n"
          "token's sub must be segment N of the path after the token (wrong_resource).\n",
          f);
}

/* One line on stderr, exit status 2. */
static int cli_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("signd-verify: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 2;
}

/* A decimal number 0..max, digits only. */
static int cli_number(const char *text, uint64_t max, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    if (text[0] < '0' || text[0] > '9')
        return -1;
    unsigned long long n = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || n > max)
        return -1;
    *out = n;
    return 0;
}

/* Verifies (and with redeem, redeems) one token and prints its line; 0 when ok. */
static int cli_answer(vfy *v, const char *token, const char *origin, bool redeem)
{
    json_t *claims = NULL;
    char detail[CLI_ERR_MAX];
    vfy_result r = redeem ? vfy_redeem(v, token, origin, &claims, detail, sizeof(detail))
                          : vfy_verify_ex(v, token, origin, &claims);
    if (r == VFY_REDEEM_FAILED)
        fprintf(stderr, "signd-verify: redeem failed: %s\n", detail);
    if (r == VFY_OK) {
        char *text = json_dumps(claims, JSON_COMPACT);
        printf("ok %s\n", text != NULL ? text : "{}");
        free(text);
        json_decref(claims);
    } else {
        printf("%s\n", vfy_result_name(r));
    }
    fflush(stdout);
    return r == VFY_OK ? 0 : 1;
}

static void cli_stats(vfy *v)
{
    struct vfy_stats s;
    vfy_stats(v, &s);
    printf("stats jwks_fetches=%" PRIu64 " feed_fetches=%" PRIu64 " stream=%s seq=%" PRIu64
           " keys=%zu revoked=%zu feeds_refused=%" PRIu64 " stream_connects=%" PRIu64
           " feed_iat=%" PRId64 " feed_exp=%" PRId64 " status_fetches=%" PRIu64
           " status_refused=%" PRIu64 " status_lists=%zu announced_seq=%" PRIu64 " behind=%d\n",
           s.jwks_fetches, s.feed_fetches, s.stream_up ? "up" : "down", s.seq, s.keys, s.revoked,
           s.feeds_refused, s.stream_connects, s.feed_iat, s.feed_exp, s.status_fetches,
           s.status_refused, s.status_lists, s.announced_seq, s.behind ? 1 : 0);
    fflush(stdout);
}

/* Reads one line of at most cap - 1 bytes (its LF dropped) without ever holding more: the
 * rest of a longer line is read and thrown away, and *bad set. A NUL in the line sets *bad
 * too (a token cannot hold one). -1 at end of input with nothing read. */
static int cli_read_line(char *buf, size_t cap, size_t *len, int *bad)
{
    int c, any = 0;
    *len = 0;
    *bad = 0;
    while ((c = getchar()) != EOF) {
        any = 1;
        if (c == '\n')
            break;
        if (c == '\0')
            *bad = 1;
        if (*len + 1 < cap)
            buf[(*len)++] = (char)c;
        else
            *bad = 1;
    }
    if (!any)
        return -1;
    if (*len > 0 && buf[*len - 1] == '\r')
        (*len)--;
    buf[*len] = '\0';
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},
        {"cacert", required_argument, NULL, 'c'},
        {"feed-key", required_argument, NULL, 'k'},
        {"max-feed-age", required_argument, NULL, 'a'},
        {"cooldown", required_argument, NULL, 'd'},
        {"behind-grace", required_argument, NULL, 'b'},
        {"leeway", required_argument, NULL, 'l'},
        {"now", required_argument, NULL, 'n'},
        {"origin", required_argument, NULL, 'o'},
        {"aud", required_argument, NULL, 'A'},
        {"redeem-credential", required_argument, NULL, 'r'},
        {"serve", required_argument, NULL, 'S'},
        {"sub-from-path", required_argument, NULL, 'P'},
        {"serve-threads", required_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    vfy_config cfg;
    vfy_config_default(&cfg);
    const char *origin = NULL;
    vsv_config serve = {.addr = NULL, .threads = VSV_THREADS_DEFAULT};
    bool serve_only = false; /* an option that means nothing without --serve was given */
    int o;
    uint64_t num;
    opterr = 0;
    while ((o = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
        switch (o) {
        case 'u':
            cfg.url = optarg;
            break;
        case 'c':
            cfg.cacert = optarg;
            break;
        case 'k':
            cfg.feed_key = optarg;
            break;
        case 'a':
            if (cli_number(optarg, 86400, &num) != 0 || num == 0)
                return cli_fail("--max-feed-age must be 1..86400 seconds, not %s", optarg);
            cfg.max_feed_age = (unsigned)num;
            break;
        case 'd':
            if (cli_number(optarg, 3600, &num) != 0)
                return cli_fail("--cooldown must be 0..3600 seconds, not %s", optarg);
            cfg.jwks_cooldown = (unsigned)num;
            break;
        case 'b':
            if (cli_number(optarg, 3600, &num) != 0 || num == 0)
                return cli_fail("--behind-grace must be 1..3600 seconds, not %s", optarg);
            cfg.behind_grace = (unsigned)num;
            break;
        case 'l':
            if (cli_number(optarg, 3600, &num) != 0)
                return cli_fail("--leeway must be 0..3600 seconds, not %s", optarg);
            cfg.leeway = (unsigned)num;
            break;
        case 'n':
            if (cli_number(optarg, INT64_MAX / 2, &num) != 0 || num == 0)
                return cli_fail("--now must be a Unix time in seconds, not %s", optarg);
            cfg.now = (int64_t)num;
            break;
        case 'o':
            if (!vfy_origin_ok(optarg))
                return cli_fail("--origin must be http(s)://host[:port] with a lowercase host "
                                "and nothing after, not %s",
                                optarg);
            origin = optarg;
            break;
        case 'A': /* checked with the rest of the settings by vfy_open */
            cfg.aud = optarg;
            break;
        case 'r':
            cfg.redeem_credential = optarg;
            break;
        case 'S':
            if (!vsv_addr_ok(optarg))
                return cli_fail("--serve must be HOST:PORT (IPv4 or [IPv6]), not %s", optarg);
            serve.addr = optarg;
            break;
        case 'P':
            if (cli_number(optarg, VSV_SEGMENT_MAX, &num) != 0 || num == 0)
                return cli_fail("--sub-from-path must be 1..%d, not %s", VSV_SEGMENT_MAX, optarg);
            serve.policy.sub_segment = (unsigned)num;
            serve_only = true;
            break;
        case 'T':
            if (cli_number(optarg, VSV_THREADS_MAX, &num) != 0 || num == 0)
                return cli_fail("--serve-threads must be 1..%d, not %s", VSV_THREADS_MAX, optarg);
            serve.threads = (unsigned)num;
            serve_only = true;
            break;
        case 'h':
            cli_usage(stdout);
            return 0;
        default:
            cli_usage(stderr);
            return cli_fail("unknown option or missing value: %s",
                            optind > 1 ? argv[optind - 1] : "?");
        }
    }
    if (cfg.url == NULL)
        return cli_fail("--url is required");
    if (cfg.cacert == NULL)
        return cli_fail("--cacert is required");
    if (cfg.feed_key == NULL)
        return cli_fail("--feed-key is required (the pinned publication key PEM)");
    if (serve_only && serve.addr == NULL)
        return cli_fail("--sub-from-path and --serve-threads need --serve");
    /* A reader that went away must not kill us mid-line; writes then fail instead. */
    signal(SIGPIPE, SIG_IGN);

    char err[CLI_ERR_MAX];
    if (serve.addr != NULL) {
        /* A daemon redeeming would spend a single-use token on its first segment, and make
         * a network call per request: not offered. */
        if (cfg.redeem_credential != NULL)
            return cli_fail("--redeem-credential cannot be used with --serve");
        if (optind < argc)
            return cli_fail("--serve takes no TOKEN arguments");
        serve.policy.fallback = origin;
        if (vsv_run(&cfg, &serve, err, sizeof(err)) != 0)
            return cli_fail("%s", err);
        return 0;
    }
    vfy *v = NULL;
    if (vfy_open(&cfg, &v, err, sizeof(err)) != VFY_E_OK)
        return cli_fail("%s", err);

    int rc = 0;
    if (optind < argc) {
        for (int i = optind; i < argc; i++)
            if (cli_answer(v, argv[i], origin, cfg.redeem_credential != NULL) != 0)
                rc = 1;
    } else {
        char *line = malloc(CLI_LINE_CAP);
        size_t len;
        int bad;
        if (line == NULL) {
            vfy_close(v);
            return cli_fail("out of memory");
        }
        while (cli_read_line(line, CLI_LINE_CAP, &len, &bad) == 0) {
            if (!bad && strcmp(line, "#stats") == 0) {
                cli_stats(v);
            } else if (bad) {
                printf("%s\n", vfy_result_name(VFY_MALFORMED));
                fflush(stdout);
            } else {
                cli_answer(v, line, origin, cfg.redeem_credential != NULL);
            }
            if (ferror(stdout))
                break;
        }
        free(line);
    }
    vfy_close(v);
    return rc;
}
