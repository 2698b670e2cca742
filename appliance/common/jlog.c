/* jlog: JSON log lines to stderr or an appended file. See jlog.h. */
#include "appliance/common/jlog.h"

#include "appliance/common/config.h"
#include "base/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* How often a writer looks whether logrotate has moved the file. */
#define JLOG_CHECK_NS 1000000000LL

static int jlog_fd = -1; /* -1: stderr */
static char jlog_path[CFG_PATH_MAX];
static atomic_llong jlog_next_check; /* monotonic ns; claimed by one writer at a time */
static atomic_ullong jlog_lost;

static int jlog_open_path(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
}

int jlog_open(const char *path, char *err, size_t errlen)
{
    if (path == NULL || path[0] == '\0') {
        jlog_close();
        return 0;
    }
    if (strlen(path) >= sizeof(jlog_path)) {
        snprintf(err, errlen, "log_file: path longer than %zu bytes", sizeof(jlog_path) - 1);
        return -1;
    }
    int fd = jlog_open_path(path);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: %s", path, fd < 0 ? strerror(errno) : "not a regular file");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    jlog_close();
    memcpy(jlog_path, path, strlen(path) + 1);
    jlog_fd = fd;
    atomic_store(&jlog_next_check, clk_now_ns() + JLOG_CHECK_NS);
    return 0;
}

void jlog_close(void)
{
    if (jlog_fd >= 0)
        close(jlog_fd);
    jlog_fd = -1;
    jlog_path[0] = '\0';
}

/* Once a second (one writer wins the claim): when the path no longer names the open file,
 * the path is opened again and takes the descriptor's place. */
static void jlog_follow_rotation(int fd)
{
    long long now = clk_now_ns();
    long long due = atomic_load_explicit(&jlog_next_check, memory_order_relaxed);
    if (now < due || !atomic_compare_exchange_strong(&jlog_next_check, &due, now + JLOG_CHECK_NS))
        return;
    struct stat at_path, open_now;
    if (stat(jlog_path, &at_path) == 0 && fstat(fd, &open_now) == 0 &&
        at_path.st_ino == open_now.st_ino && at_path.st_dev == open_now.st_dev)
        return;
    int fresh = jlog_open_path(jlog_path);
    if (fresh < 0)
        return; /* keep writing to the moved file rather than lose lines */
    if (dup3(fresh, fd, O_CLOEXEC) < 0)
        atomic_fetch_add(&jlog_lost, 1);
    close(fresh);
}

void jlog_write(json_t *j)
{
    if (j == NULL)
        return;
    char line[JLOG_LINE_MAX + 1];
    /* JSON_ENSURE_ASCII: a line is valid UTF-8 (plain ASCII) whatever a field held; six
     * significant digits are plenty for a latency. */
    size_t n = json_dumpb(j, line, JLOG_LINE_MAX,
                          JSON_COMPACT | JSON_ENSURE_ASCII | JSON_REAL_PRECISION(6));
    json_decref(j);
    if (n == 0 || n >= JLOG_LINE_MAX) {
        atomic_fetch_add(&jlog_lost, 1);
        return;
    }
    line[n++] = '\n';
    int fd = jlog_fd >= 0 ? jlog_fd : STDERR_FILENO;
    if (jlog_fd >= 0)
        jlog_follow_rotation(fd);
    ssize_t w;
    do
        w = write(fd, line, n);
    while (w < 0 && errno == EINTR);
    if (w != (ssize_t)n)
        atomic_fetch_add(&jlog_lost, 1);
}

void jlog_time(char out[JLOG_TIME_LEN])
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, JLOG_TIME_LEN, "%Y-%m-%dT%H:%M:%S", &tm);
    unsigned ms = (unsigned)(ts.tv_nsec / 1000000) % 1000u;
    if (n + 6 <= JLOG_TIME_LEN) { /* ".123Z" and the NUL */
        out[n] = '.';
        out[n + 1] = (char)('0' + ms / 100);
        out[n + 2] = (char)('0' + ms / 10 % 10);
        out[n + 3] = (char)('0' + ms % 10);
        out[n + 4] = 'Z';
        out[n + 5] = '\0';
    }
}

unsigned long long jlog_dropped(void)
{
    return atomic_load(&jlog_lost);
}
