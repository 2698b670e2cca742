/* met: counters and their exposition, and jlog's rotation. The counters are process-wide,
 * so each test uses its own route indexes and kids. */
#include "appliance/common/jlog.h"
#include "appliance/common/metrics.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

static const char *result_name(unsigned i)
{
    static char names[MET_RESULTS_MAX][16];
    if (i == 0)
        return "ok";
    snprintf(names[i], sizeof(names[i]), "err%u", i);
    return names[i];
}

static char *render(size_t *len)
{
    met_gauges g = {.sessions_in_use = 3, .sessions_max = 9, .version = "t\"e\\s\nt"};
    g.state_name[0] = "active";
    g.state_keys[0] = 7;
    g.n_states = 1;
    char *text = met_render(&g, result_name, len);
    assert_non_null(text);
    assert_int_equal(strlen(text), *len);
    return text;
}

static sk_kid kid_of(unsigned n)
{
    sk_kid k;
    memset(&k, 0, sizeof(k));
    memcpy(k.b, &n, sizeof(n));
    k.b[15] = 0xa5;
    return k;
}

/* The value of the sample line that starts with prefix (labels included), or -1. */
static long long sample(const char *text, const char *prefix)
{
    for (const char *p = text; p != NULL && *p != '\0'; p = strchr(p, '\n'), p = p ? p + 1 : p)
        if (strncmp(p, prefix, strlen(prefix)) == 0 && p[strlen(prefix)] == ' ')
            return atoll(p + strlen(prefix) + 1);
    return -1;
}

static void test_label_values_are_escaped(void **state)
{
    (void)state;
    size_t len;
    char *text = render(&len);
    assert_non_null(strstr(text, "version=\"t\\\"e\\\\s\\nt\""));
    assert_non_null(strstr(text, "# TYPE signd_http_request_duration_seconds histogram\n"));
    assert_int_equal(sample(text, "signd_keys{state=\"active\"}"), 7);
    assert_int_equal(sample(text, "signd_pkcs11_sessions_in_use"), 3);
    free(text);
}

static void test_histogram_buckets_are_cumulative_and_inf_is_the_count(void **state)
{
    (void)state;
    met_route(1, "/h", "GET");
    met_request(1, 200, 100000);      /* 0.1 ms: first bucket */
    met_request(1, 200, 3000000);     /* 3 ms: le 0.005 */
    met_request(1, 503, 60000000000); /* 60 s: only +Inf */
    size_t len;
    char *text = render(&len);
    const char *b = "signd_http_request_duration_seconds_bucket{route=\"/h\",method=\"GET\",le=";
    char key[160];
    snprintf(key, sizeof(key), "%s\"0.0005\"}", b);
    assert_int_equal(sample(text, key), 1);
    snprintf(key, sizeof(key), "%s\"0.0025\"}", b);
    assert_int_equal(sample(text, key), 1);
    snprintf(key, sizeof(key), "%s\"0.005\"}", b);
    assert_int_equal(sample(text, key), 2);
    snprintf(key, sizeof(key), "%s\"10\"}", b);
    assert_int_equal(sample(text, key), 2);
    snprintf(key, sizeof(key), "%s\"+Inf\"}", b);
    assert_int_equal(sample(text, key), 3);
    assert_int_equal(
        sample(text, "signd_http_request_duration_seconds_count{route=\"/h\",method=\"GET\"}"), 3);
    assert_int_equal(
        sample(text, "signd_http_requests_total{route=\"/h\",method=\"GET\",status=\"503\"}"), 1);
    assert_int_equal(
        sample(text, "signd_http_requests_total{route=\"/h\",method=\"GET\",status=\"200\"}"), 2);
    free(text);
}

static void test_unmatched_requests_have_a_route_of_their_own(void **state)
{
    (void)state;
    met_request(MET_ROUTE_UNMATCHED, 404, 1000);
    met_request(12345, 404, 1000); /* out of range: counted as unmatched, not out of bounds */
    size_t len;
    char *text = render(&len);
    assert_int_equal(
        sample(text,
               "signd_http_requests_total{route=\"unmatched\",method=\"other\",status=\"404\"}"),
        2);
    free(text);
}

#define THREADS 2
#define PER_THREAD 200000

static void *hammer(void *arg)
{
    (void)arg;
    sk_kid k = kid_of(777);
    for (int i = 0; i < PER_THREAD; i++) {
        met_request(2, 200, 1000);
        met_signature(&k, 0);
    }
    return NULL;
}

static void test_concurrent_counting_loses_nothing(void **state)
{
    (void)state;
    met_route(2, "/c", "POST");
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, hammer, NULL), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    size_t len;
    char *text = render(&len);
    sk_kid k = kid_of(777);
    char hex[2 * SK_KID_LEN + 1], key[128];
    sk_kid_hex(&k, hex);
    snprintf(key, sizeof(key), "signd_signatures_total{kid=\"%s\",result=\"ok\"}", hex);
    assert_int_equal(sample(text, key), THREADS * PER_THREAD);
    assert_int_equal(
        sample(text, "signd_http_requests_total{route=\"/c\",method=\"POST\",status=\"200\"}"),
        THREADS * PER_THREAD);
    free(text);
}

static void test_kids_past_the_table_count_as_other_and_none_is_its_own(void **state)
{
    (void)state;
    met_signature(NULL, 5);
    for (unsigned i = 0; i < MET_KIDS_MAX + 10; i++) {
        sk_kid k = kid_of(100000 + i);
        met_signature(&k, 1);
    }
    size_t len;
    char *text = render(&len);
    assert_int_equal(sample(text, "signd_signatures_total{kid=\"none\",result=\"err5\"}"), 1);
    /* The table already held kid 777 (the concurrency test, when it ran first) or not. */
    long long other = sample(text, "signd_signatures_total{kid=\"other\",result=\"err1\"}");
    assert_true(other >= 10 && other <= 11);
    free(text);
}

static void test_pkcs11_errors_are_counted_by_ckr_name_and_class(void **state)
{
    (void)state;
    met_pkcs11_error(SK_ERR_SESSION_COUNT, CKR_SESSION_COUNT);
    met_pkcs11_error(SK_ERR_SESSION_COUNT, 0); /* our own session bound: no CKR */
    met_pkcs11_error(SK_ERR_DEVICE, CKR_DEVICE_ERROR);
    met_pkcs11_error(SK_ERR_DEVICE, CKR_DEVICE_ERROR);
    met_pkcs11_error(SK_ERR_DEVICE, CKR_GENERAL_ERROR);
    met_pkcs11_error(MET_KEEPER_UNREACHABLE, 0);
    met_pkcs11_error(MET_KEEPER_UNREACHABLE, CKR_DEVICE_ERROR);     /* no CKR when unreachable */
    met_pkcs11_error(SK_OK, CKR_DEVICE_ERROR);                      /* not an error */
    met_pkcs11_error(100000, CKR_DEVICE_ERROR);                     /* out of range: ignored */
    met_pkcs11_error(SK_ERR_KEY_NOT_FOUND, CKR_KEY_HANDLE_INVALID); /* an answer, not a failure */
    size_t len;
    char *text = render(&len);
    const char *e = "signd_pkcs11_errors_total";
    char want[160];
#define CKR_SAMPLE(ckr, cls)                                                                       \
    (snprintf(want, sizeof(want), "%s{ckr=\"%s\",class=\"%s\"}", e, ckr, cls), sample(text, want))
    assert_int_equal(CKR_SAMPLE("CKR_SESSION_COUNT", "session_count"), 1);
    assert_int_equal(CKR_SAMPLE("unknown", "session_count"), 1);
    assert_int_equal(CKR_SAMPLE("CKR_DEVICE_ERROR", "device_error"), 2);
    assert_int_equal(CKR_SAMPLE("CKR_GENERAL_ERROR", "device_error"), 1);
    assert_int_equal(CKR_SAMPLE("none", "keeper_unreachable"), 2);
    /* A class a CKR value never came under has no series. */
    assert_int_equal(CKR_SAMPLE("CKR_DEVICE_ERROR", "session_count"), -1);
#undef CKR_SAMPLE
    assert_null(strstr(text, "key_not_found"));
    assert_null(strstr(text, "CKR_KEY_HANDLE_INVALID"));
    free(text);
}

static void test_a_ckr_without_a_name_is_rendered_in_hex(void **state)
{
    (void)state;
    assert_string_equal(met_ckr_name(CKR_USER_NOT_LOGGED_IN), "CKR_USER_NOT_LOGGED_IN");
    assert_string_equal(met_ckr_name(CKR_PIN_INCORRECT), "CKR_PIN_INCORRECT");
    assert_null(met_ckr_name(CKR_VENDOR_DEFINED | 0x2a));
    met_pkcs11_error(SK_ERR_DEVICE, CKR_VENDOR_DEFINED | 0x2a);
    met_pkcs11_error(SK_ERR_BAD_ARGUMENT, 0x1b0); /* CKR_RANDOM_SEED_NOT_SUPPORTED: no name */
    size_t len;
    char *text = render(&len);
    assert_int_equal(
        sample(text, "signd_pkcs11_errors_total{ckr=\"0x8000002a\",class=\"device_error\"}"), 1);
    assert_int_equal(
        sample(text, "signd_pkcs11_errors_total{ckr=\"0x000001b0\",class=\"bad_argument\"}"), 1);
    free(text);
}

/* The number of signd_pkcs11_errors_total series in text. */
static size_t pkcs11_series(const char *text)
{
    size_t n = 0;
    for (const char *p = strstr(text, "\nsignd_pkcs11_errors_total{"); p != NULL;
         p = strstr(p + 1, "\nsignd_pkcs11_errors_total{"))
        n++;
    return n;
}

static void test_ckr_values_past_the_table_count_as_other(void **state)
{
    (void)state;
    /* A module returning a new code on every call: the series stop at the table's size. */
    for (unsigned long i = 0; i < 10 * MET_CKR_MAX; i++)
        met_pkcs11_error(SK_ERR_DEVICE, 0x80001000ul + i);
    met_pkcs11_error(SK_ERR_DEVICE, 0x80002000ul);
    size_t len;
    char *text = render(&len);
    /* MET_CKR_MAX values with a class each (earlier tests' values are among them, one with
     * two classes), the keeper_unreachable line, and other. */
    assert_true(pkcs11_series(text) <= MET_CKR_MAX + 1 + 1 + 1);
    long long other =
        sample(text, "signd_pkcs11_errors_total{ckr=\"other\",class=\"device_error\"}");
    assert_true(other > 9 * MET_CKR_MAX && other <= 10 * MET_CKR_MAX + 1);
    assert_int_equal(
        sample(text, "signd_pkcs11_errors_total{ckr=\"0x80001000\",class=\"device_error\"}"), 1);
    /* A value that has its slot keeps counting there, full table or not. */
    free(text);
    met_pkcs11_error(SK_ERR_DEVICE, 0x80001000ul);
    text = render(&len);
    assert_int_equal(
        sample(text, "signd_pkcs11_errors_total{ckr=\"0x80001000\",class=\"device_error\"}"), 2);
    assert_int_equal(
        sample(text, "signd_pkcs11_errors_total{ckr=\"other\",class=\"device_error\"}"), other);
    free(text);
}

static void test_a_noted_kid_is_taken_once(void **state)
{
    (void)state;
    sk_kid k = kid_of(5), out;
    assert_int_equal(met_take_kid(&out), 0);
    met_note_kid(&k);
    assert_int_equal(met_take_kid(&out), 1);
    assert_memory_equal(out.b, k.b, SK_KID_LEN);
    assert_int_equal(met_take_kid(&out), 0);
}

static void test_jlog_appends_0600_and_follows_a_moved_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/test-jlog-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128], moved[140], err[256];
    snprintf(path, sizeof(path), "%s/log", dir);
    snprintf(moved, sizeof(moved), "%s/log.1", dir);
    assert_int_equal(jlog_open(path, err, sizeof(err)), 0);
    jlog_write(json_pack("{s:i}", "n", 1));
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(rename(path, moved), 0);
    /* The path is looked at once a second: write until it exists again (bounded). */
    for (int i = 0; i < 40 && stat(path, &st) != 0; i++) {
        usleep(100000);
        jlog_write(json_pack("{s:i}", "n", 2));
    }
    assert_int_equal(stat(path, &st), 0);
    jlog_write(json_pack("{s:i}", "n", 3));
    jlog_close();
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[64] = "", last[64] = "";
    while (fgets(line, sizeof(line), f) != NULL)
        memcpy(last, line, sizeof(line));
    fclose(f);
    assert_string_equal(last, "{\"n\":3}\n");
    f = fopen(moved, "r");
    assert_non_null(f);
    assert_non_null(fgets(line, sizeof(line), f));
    assert_string_equal(line, "{\"n\":1}\n");
    fclose(f);
    assert_int_equal(jlog_dropped(), 0);
    unlink(path);
    unlink(moved);
    rmdir(dir);
}

static void test_jlog_refuses_a_symlink(void **state)
{
    (void)state;
    char dir[] = "/tmp/test-jlog-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128], target[128], err[256] = "";
    snprintf(path, sizeof(path), "%s/link", dir);
    snprintf(target, sizeof(target), "%s/target", dir);
    assert_int_equal(symlink(target, path), 0);
    assert_int_equal(jlog_open(path, err, sizeof(err)), -1);
    assert_non_null(strstr(err, path));
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_label_values_are_escaped),
        cmocka_unit_test(test_histogram_buckets_are_cumulative_and_inf_is_the_count),
        cmocka_unit_test(test_unmatched_requests_have_a_route_of_their_own),
        cmocka_unit_test(test_concurrent_counting_loses_nothing),
        cmocka_unit_test(test_kids_past_the_table_count_as_other_and_none_is_its_own),
        cmocka_unit_test(test_pkcs11_errors_are_counted_by_ckr_name_and_class),
        cmocka_unit_test(test_a_ckr_without_a_name_is_rendered_in_hex),
        cmocka_unit_test(test_ckr_values_past_the_table_count_as_other),
        cmocka_unit_test(test_a_noted_kid_is_taken_once),
        cmocka_unit_test(test_jlog_appends_0600_and_follows_a_moved_file),
        cmocka_unit_test(test_jlog_refuses_a_symlink),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
