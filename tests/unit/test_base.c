/*
 * test_base: the small primitives every layer shares (base/): hex, kids, printable text,
 * the monotonic clock, the stores' error buffer, name tables, the read-write lock and small-file
 * reads (on real files in a fresh temporary directory). Pure functions but the clock, which is read
 * for real (no test depends on how long a step takes, only on its order).
 */
#include "base/clock.h"
#include "base/errbuf.h"
#include "base/file.h"
#include "base/hex.h"
#include "base/lock.h"
#include "base/names.h"
#include "base/signkey.h"
#include "base/text.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* ---- hex ------------------------------------------------------------------------------- */

static void test_hex_round_trips_every_byte_in_lowercase(void **state)
{
    (void)state;
    uint8_t all[256], back[256];
    char hex[2 * 256 + 1];
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)i;
    hex_encode(all, sizeof(all), hex);
    assert_int_equal(strlen(hex), 512);
    assert_int_equal(strspn(hex, "0123456789abcdef"), 512);
    assert_memory_equal(hex, "000102", 6);
    assert_string_equal(hex + 508, "feff");
    assert_int_equal(hex_decode(hex, 512, back, sizeof(back)), 0);
    assert_memory_equal(back, all, sizeof(all));
    hex_encode(all, 0, hex);
    assert_string_equal(hex, "");
}

static void test_hex_decode_wants_exactly_twice_the_bytes_in_lowercase(void **state)
{
    (void)state;
    uint8_t out[2];
    assert_int_equal(hex_decode("0aff", 4, out, 2), 0);
    assert_int_equal(out[0], 0x0a);
    assert_int_equal(out[1], 0xff);
    assert_int_equal(hex_decode("0aFF", 4, out, 2), -1); /* one spelling only */
    assert_int_equal(hex_decode("0af", 3, out, 2), -1);
    assert_int_equal(hex_decode("0aff0", 5, out, 2), -1);
    assert_int_equal(hex_decode("0ag0", 4, out, 2), -1);
    assert_int_equal(hex_decode("0a f", 4, out, 2), -1);
    assert_int_equal(hex_decode("0a\0f", 4, out, 2), -1);
    assert_int_equal(hex_decode(NULL, 4, out, 2), -1);
}

static void test_hex_digits_and_string_take_lowercase_only(void **state)
{
    (void)state;
    assert_int_equal(hex_digit('0'), 0);
    assert_int_equal(hex_digit('9'), 9);
    assert_int_equal(hex_digit('a'), 10);
    assert_int_equal(hex_digit('f'), 15);
    assert_int_equal(hex_digit('A'), -1);
    assert_int_equal(hex_digit('g'), -1);
    assert_int_equal(hex_digit('\0'), -1);
    assert_true(hex_digits("09af", 4));
    assert_true(hex_digits(NULL, 0));
    assert_false(hex_digits("09aF", 4));
    assert_false(hex_digits("0a\0f", 4)); /* a NUL inside the span is not a digit */
    assert_true(hex_string("0123456789abcdef", 16));
    assert_false(hex_string("0123456789abcdef", 15)); /* one too long */
    assert_false(hex_string("0123456789abcde", 16));  /* one too short */
    assert_false(hex_string("0123456789abcdeF", 16));
    assert_false(hex_string(NULL, 0));
    assert_true(hex_string("", 0));
}

/* ---- kids -------------------------------------------------------------------------------- */

static void test_kid_round_trips_through_its_32_hex_digits(void **state)
{
    (void)state;
    sk_kid k, back;
    for (int i = 0; i < SK_KID_LEN; i++)
        k.b[i] = (uint8_t)(0xf0 + i);
    char hex[2 * SK_KID_LEN + 1];
    sk_kid_hex(&k, hex);
    assert_string_equal(hex, "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
    assert_int_equal(sk_kid_parse(hex, &back), 0);
    assert_memory_equal(back.b, k.b, SK_KID_LEN);
    assert_int_equal(sk_kid_cmp(&k, &back), 0);
    back.b[15] = 0;
    assert_true(sk_kid_cmp(&back, &k) < 0);
}

static void test_kid_parse_wants_exactly_32_lowercase_digits(void **state)
{
    (void)state;
    sk_kid k;
    assert_int_equal(sk_kid_parse("000102030405060708090a0b0c0d0e0f", &k), 0);
    assert_int_equal(k.b[10], 0x0a);
    assert_int_equal(sk_kid_parse("000102030405060708090a0b0c0d0e0", &k), -1);
    assert_int_equal(sk_kid_parse("000102030405060708090a0b0c0d0e0f0", &k), -1);
    assert_int_equal(sk_kid_parse("000102030405060708090A0B0C0D0E0F", &k), -1);
    assert_int_equal(sk_kid_parse("", &k), -1);
    assert_int_equal(sk_kid_parse(NULL, &k), -1);
    /* A kid inside a list: the length is the caller's, no NUL needed. */
    const char *list = "000102030405060708090a0b0c0d0e0f,ffffffffffffffffffffffffffffffff";
    assert_int_equal(sk_kid_parse_n(list + 33, 32, &k), 0);
    assert_int_equal(k.b[0], 0xff);
    assert_int_equal(sk_kid_parse_n(list, 33, &k), -1);
    assert_int_equal(sk_kid_parse_n(list + 1, 32, &k), -1); /* takes the ',' */
}

/* ---- printable text ---------------------------------------------------------------------- */

static void test_printable_is_space_to_tilde_and_visible_leaves_out_the_space(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        assert_int_equal(txt_is_printable((char)c), c >= 0x20 && c <= 0x7e);
        assert_int_equal(txt_is_visible((char)c), c > 0x20 && c <= 0x7e);
    }
    assert_true(txt_printable("a b~", 4));
    assert_false(txt_printable("a\tb", 3));
    assert_false(txt_printable("a\x7f", 2));
    assert_false(txt_printable("caf\xc3\xa9", 5)); /* UTF-8 is not ASCII */
    assert_false(txt_printable("a\0b", 3));
    assert_true(txt_printable(NULL, 0));
    assert_true(txt_visible("s3cr3t!", 7));
    assert_false(txt_visible("s3cr3t !", 8));
    assert_true(txt_printable_str("a label"));
    assert_true(txt_printable_str(""));
    assert_true(txt_printable_str(NULL));
    assert_false(txt_printable_str("two\nlines"));
}

static void test_copy_printable_masks_and_bounds(void **state)
{
    (void)state;
    char out[8];
    assert_int_equal(txt_copy_printable(out, sizeof(out), "/a\nb\x80", 100), 5);
    assert_string_equal(out, "/a?b?");
    assert_int_equal(txt_copy_printable(out, sizeof(out), "0123456789", 100), 7);
    assert_string_equal(out, "0123456");
    assert_int_equal(txt_copy_printable(out, sizeof(out), "0123456789", 3), 3);
    assert_string_equal(out, "012");
    assert_int_equal(txt_copy_printable(out, sizeof(out), NULL, 3), 0);
    assert_string_equal(out, "");
    out[0] = 'x';
    assert_int_equal(txt_copy_printable(out, 0, "abc", 3), 0);
    assert_int_equal(out[0], 'x'); /* no room, nothing written */
}

/* ---- the monotonic clock ----------------------------------------------------------------- */

static void test_clock_moves_forward_and_agrees_with_itself(void **state)
{
    (void)state;
    int64_t a = clk_now_ms(), ns = clk_now_ns();
    struct timespec nap = {.tv_sec = 0, .tv_nsec = 20 * 1000 * 1000};
    nanosleep(&nap, NULL);
    int64_t b = clk_now_ms();
    assert_true(b >= a + 20);
    assert_true(clk_now_ns() >= ns + 20 * 1000 * 1000);
    assert_true(ns / 1000000 >= a && ns / 1000000 <= b);
    assert_true(clk_ms_since(a) >= 20);
    assert_int_equal(clk_ms_since(b + 60000), 0); /* a start in the future is no time */
}

static void test_deadline_is_normalised_and_never_in_the_past(void **state)
{
    (void)state;
    int64_t before = clk_now_ns();
    struct timespec d = clk_deadline(1999);
    assert_true(d.tv_nsec >= 0 && d.tv_nsec < 1000000000L);
    int64_t at = (int64_t)d.tv_sec * 1000000000 + d.tv_nsec;
    assert_true(at >= before + 1999LL * 1000000);
    assert_true(at <= clk_now_ns() + 1999LL * 1000000);
    struct timespec z = clk_deadline(-5);
    int64_t zat = (int64_t)z.tv_sec * 1000000000 + z.tv_nsec;
    assert_true(zat >= before && zat <= clk_now_ns());
}

static void test_cond_waits_on_the_monotonic_clock(void **state)
{
    (void)state;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv;
    assert_int_equal(clk_cond_init(&cv), 0);
    pthread_mutex_lock(&mu);
    int64_t t0 = clk_now_ms();
    struct timespec until = clk_deadline(50);
    int rc = 0;
    while (rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&cv, &mu, &until);
    pthread_mutex_unlock(&mu);
    /* On CLOCK_REALTIME a monotonic deadline lies decades in the past (or future): the
     * wait would end at once or never, not after about 50 ms. */
    int64_t waited = clk_ms_since(t0);
    assert_true(waited >= 49);
    assert_true(waited < 5000);
    pthread_cond_destroy(&cv);
}

/* ---- the error buffer -------------------------------------------------------------------- */

static void set(char *buf, size_t cap, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void set(char *buf, size_t cap, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    eb_vset(buf, cap, "registry", path, fmt, ap);
    va_end(ap);
}

static void test_errbuf_names_the_store_and_the_file_and_truncates(void **state)
{
    (void)state;
    char buf[64];
    set(buf, sizeof(buf), "/data/signd.db", "kid %s: %d rows", "ab", 2);
    assert_string_equal(buf, "registry /data/signd.db: kid ab: 2 rows");
    set(buf, sizeof(buf), NULL, "out of memory");
    assert_string_equal(buf, "registry (null): out of memory");
    char small[16];
    set(small, sizeof(small), "/a/very/long/path/to/a/file", "lost");
    assert_int_equal(strlen(small), sizeof(small) - 1);
    assert_memory_equal(small, "registry /a/ver", 15);
}

/* ---- name tables ------------------------------------------------------------------------ */

static void test_names_look_up_both_ways_within_the_table(void **state)
{
    (void)state;
    static const char *const names[3] = {"active", "retiring", "revoked"};
    assert_string_equal(nm_name(names, 3, 0, "unknown"), "active");
    assert_string_equal(nm_name(names, 3, 2, "unknown"), "revoked");
    assert_string_equal(nm_name(names, 3, 3, "unknown"), "unknown");
    assert_string_equal(nm_name(names, 3, (unsigned)-1, "unknown"), "unknown");
    assert_int_equal(nm_find(names, 3, "retiring"), 1);
    assert_int_equal(nm_find(names, 3, "Retiring"), -1);
    assert_int_equal(nm_find(names, 3, "retiring "), -1);
    assert_int_equal(nm_find(names, 3, ""), -1);
    assert_int_equal(nm_find(names, 3, NULL), -1);
    assert_int_equal(nm_find(names, 2, "revoked"), -1); /* outside the bound given */
}

/* ---- the read-write lock ---------------------------------------------------------------- */

static void *take_write(void *arg)
{
    pthread_rwlock_t *l = arg;
    pthread_rwlock_wrlock(l);
    pthread_rwlock_unlock(l);
    return NULL;
}

/* A writer waiting holds new readers off (glibc's default would let them in forever). */
static void test_rwlock_lets_a_waiting_writer_go_before_new_readers(void **state)
{
    (void)state;
    pthread_rwlock_t l;
    assert_int_equal(lk_rwlock_init(&l), 0);
    assert_int_equal(pthread_rwlock_rdlock(&l), 0);
    pthread_t w;
    assert_int_equal(pthread_create(&w, NULL, take_write, &l), 0);
    int held_off = 0;
    for (int i = 0; i < 400 && !held_off; i++) {
        if (pthread_rwlock_tryrdlock(&l) == 0) {
            pthread_rwlock_unlock(&l); /* the writer has not queued yet */
            struct timespec nap = {.tv_sec = 0, .tv_nsec = 5 * 1000 * 1000};
            nanosleep(&nap, NULL);
        } else {
            held_off = 1;
        }
    }
    assert_true(held_off);
    pthread_rwlock_unlock(&l);
    pthread_join(w, NULL);
    pthread_rwlock_destroy(&l);
}

/* ---- small files ------------------------------------------------------------------------ */

static void put(const char *dir, const char *name, const char *text, mode_t mode, char *path)
{
    snprintf(path, 512, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

static int file_setup(void **state)
{
    char *dir = malloc(64);
    snprintf(dir, 64, "/tmp/test_base.XXXXXX");
    assert_non_null(mkdtemp(dir));
    *state = dir;
    return 0;
}

static int file_teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", (char *)*state);
    int rc = system(cmd);
    free(*state);
    return rc == 0 ? 0 : -1;
}

static void test_file_read_takes_up_to_the_bound_and_refuses_one_byte_more(void **state)
{
    const char *dir = *state;
    char path[512], buf[8];
    size_t len = 99;
    unsigned mode = 0;
    put(dir, "seven", "1234567", 0640, path);
    assert_int_equal(file_read(path, FILE_REGULAR, buf, sizeof(buf), &len, &mode), FILE_OK);
    assert_int_equal(len, 7);
    assert_string_equal(buf, "1234567");
    assert_int_equal(mode, 0640);
    put(dir, "eight", "12345678", 0600, path);
    assert_int_equal(file_read(path, 0, buf, sizeof(buf), &len, NULL), FILE_ERR_TOO_LARGE);
    assert_int_equal(len, 0);
    static const char zeros[sizeof(buf)];
    assert_memory_equal(buf, zeros, sizeof(buf)); /* wiped: it may have been a secret */
    put(dir, "empty", "", 0600, path);
    assert_int_equal(file_read(path, 0, buf, sizeof(buf), &len, NULL), FILE_OK);
    assert_int_equal(len, 0);
    assert_string_equal(buf, "");
}

static void test_file_read_checks_the_file_it_opened(void **state)
{
    const char *dir = *state;
    char path[512], link[512], buf[64];
    size_t len;
    snprintf(path, sizeof(path), "%s/missing", dir);
    errno = 0;
    assert_int_equal(file_read(path, 0, buf, sizeof(buf), &len, NULL), FILE_ERR_OPEN);
    assert_int_equal(errno, ENOENT);
    /* A directory, and a FIFO that no one writes to: refused at once, not waited on. */
    assert_int_equal(file_read(dir, FILE_REGULAR, buf, sizeof(buf), &len, NULL),
                     FILE_ERR_NOT_REGULAR);
    snprintf(path, sizeof(path), "%s/fifo", dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    assert_int_equal(file_read(path, FILE_REGULAR, buf, sizeof(buf), &len, NULL),
                     FILE_ERR_NOT_REGULAR);
    put(dir, "pin", "0000\n", 0640, path);
    assert_int_equal(file_read(path, FILE_PRIVATE, buf, sizeof(buf), &len, NULL), FILE_ERR_MODE);
    assert_int_equal(chmod(path, 0600), 0);
    assert_int_equal(file_read(path, FILE_PRIVATE, buf, sizeof(buf), &len, NULL), FILE_OK);
    snprintf(link, sizeof(link), "%s/link", dir);
    assert_int_equal(symlink(path, link), 0);
    assert_int_equal(file_read(link, 0, buf, sizeof(buf), &len, NULL), FILE_OK);
    errno = 0;
    assert_int_equal(file_read(link, FILE_NOFOLLOW, buf, sizeof(buf), &len, NULL), FILE_ERR_OPEN);
    assert_int_equal(errno, ELOOP);
}

static void test_file_read_alloc_returns_a_terminated_copy(void **state)
{
    const char *dir = *state;
    char path[512], *text = (char *)1;
    size_t len;
    put(dir, "key.pem", "-----BEGIN-----\n", 0644, path);
    assert_int_equal(file_read_alloc(path, 0, 16, &text, &len), FILE_OK);
    assert_int_equal(len, 16);
    assert_string_equal(text, "-----BEGIN-----\n");
    free(text);
    assert_int_equal(file_read_alloc(path, 0, 15, &text, &len), FILE_ERR_TOO_LARGE);
    assert_null(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hex_round_trips_every_byte_in_lowercase),
        cmocka_unit_test(test_hex_decode_wants_exactly_twice_the_bytes_in_lowercase),
        cmocka_unit_test(test_hex_digits_and_string_take_lowercase_only),
        cmocka_unit_test(test_kid_round_trips_through_its_32_hex_digits),
        cmocka_unit_test(test_kid_parse_wants_exactly_32_lowercase_digits),
        cmocka_unit_test(test_printable_is_space_to_tilde_and_visible_leaves_out_the_space),
        cmocka_unit_test(test_copy_printable_masks_and_bounds),
        cmocka_unit_test(test_clock_moves_forward_and_agrees_with_itself),
        cmocka_unit_test(test_deadline_is_normalised_and_never_in_the_past),
        cmocka_unit_test(test_cond_waits_on_the_monotonic_clock),
        cmocka_unit_test(test_errbuf_names_the_store_and_the_file_and_truncates),
        cmocka_unit_test(test_names_look_up_both_ways_within_the_table),
        cmocka_unit_test(test_rwlock_lets_a_waiting_writer_go_before_new_readers),
    };
    const struct CMUnitTest files[] = {
        cmocka_unit_test(test_file_read_takes_up_to_the_bound_and_refuses_one_byte_more),
        cmocka_unit_test(test_file_read_checks_the_file_it_opened),
        cmocka_unit_test(test_file_read_alloc_returns_a_terminated_copy),
    };
    int failed = cmocka_run_group_tests_name("base", tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("base files", files, file_setup, file_teardown);
    return failed == 0 ? 0 : 1;
}
