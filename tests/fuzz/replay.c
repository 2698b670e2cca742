/*
 * replay: runs a libFuzzer target's LLVMFuzzerTestOneInput over saved inputs, without
 * libFuzzer and with the normal compiler, so that every `make test` (and `make test-asan`,
 * under ASan and UBSan) replays the seed corpus and the regression inputs of every target.
 * The Makefile links it with one tests/fuzz/fuzz_<name>.c into
 * $(BUILD)/tests/test_fuzz_<name>, which tests/run.sh runs with the unit tests:
 *
 *   build/tests/test_fuzz_jose              tests/fuzz/corpus/jose/ and
 *                                           tests/fuzz/regressions/jose/ (repository root)
 *   build/tests/test_fuzz_jose FILE|DIR...  those instead
 *
 * Each file is handed over as libFuzzer would: in a heap block of exactly its size, so
 * ASan sees a read past the end. Files whose name starts with '.' or ends in ".note" (the
 * note that says what a regression input found) are skipped. A finding aborts, as it
 * does under libFuzzer. Exit 0 when every input ran; 1 when one could not be read, or the
 * seed corpus is missing or empty (a target that replays nothing tests nothing).
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define REPLAY_FILE_MAX (16 * 1024 * 1024) /* bytes of one input: above every target's bound */
#define REPLAY_PREFIX "test_fuzz_"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional in a target, as under libFuzzer. */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int replay_skipped(const char *name)
{
    size_t n = strlen(name);
    return name[0] == '.' || (n >= 5 && strcmp(name + n - 5, ".note") == 0);
}

/* Runs one file; 0, or -1 with a message when it cannot be read. */
static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    uint8_t *buf = malloc(REPLAY_FILE_MAX + 1);
    size_t n = buf != NULL ? fread(buf, 1, REPLAY_FILE_MAX + 1, f) : 0;
    int bad = buf == NULL || ferror(f) || n > REPLAY_FILE_MAX;
    fclose(f);
    if (bad) {
        fprintf(stderr, "replay: %s: unreadable or larger than %d bytes\n", path, REPLAY_FILE_MAX);
        free(buf);
        return -1;
    }
    /* Exactly n bytes (at least one, for malloc), so an overread is ASan's to see. */
    uint8_t *data = malloc(n > 0 ? n : 1);
    if (data == NULL) {
        free(buf);
        return -1;
    }
    memcpy(data, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(data, n);
    free(data);
    return 0;
}

/* Runs every file of a directory in name order; *count gets the number run. A missing
 * directory is -1 unless optional. */
static int replay_dir(const char *dir, int optional, size_t *count)
{
    struct dirent **names;
    int n = scandir(dir, &names, NULL, alphasort);
    if (n < 0) {
        if (optional && errno == ENOENT)
            return 0;
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < n; i++) {
        char path[4096];
        struct stat st;
        if (!replay_skipped(names[i]->d_name) &&
            snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name) < (int)sizeof(path) &&
            stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            if (replay_file(path) != 0)
                rc = -1;
            else
                (*count)++;
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

static int replay_path(const char *path, size_t *count)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return replay_dir(path, 0, count);
    if (replay_file(path) != 0)
        return -1;
    (*count)++;
    return 0;
}

int main(int argc, char **argv)
{
    if (LLVMFuzzerInitialize != NULL)
        LLVMFuzzerInitialize(&argc, &argv);
    size_t count = 0;
    int rc = 0;
    if (argc > 1) {
        for (int i = 1; i < argc; i++)
            if (replay_path(argv[i], &count) != 0)
                rc = 1;
        printf("replay: %zu inputs\n", count);
        return rc;
    }
    /* The target's name is the program's, after "test_fuzz_". */
    const char *prog = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    if (strncmp(prog, REPLAY_PREFIX, strlen(REPLAY_PREFIX)) != 0) {
        fprintf(stderr, "replay: %s: name it test_fuzz_<target>, or give files\n", prog);
        return 1;
    }
    const char *name = prog + strlen(REPLAY_PREFIX);
    char corpus[512], regressions[512];
    snprintf(corpus, sizeof(corpus), "tests/fuzz/corpus/%s", name);
    snprintf(regressions, sizeof(regressions), "tests/fuzz/regressions/%s", name);
    size_t seeds = 0, found = 0;
    if (replay_dir(corpus, 0, &seeds) != 0 || replay_dir(regressions, 1, &found) != 0)
        rc = 1;
    if (seeds == 0) {
        fprintf(stderr, "replay: %s: no seed inputs\n", corpus);
        rc = 1;
    }
    printf("replay %s: %zu seed inputs, %zu regression inputs%s\n", name, seeds, found,
           rc == 0 ? "" : " (FAILED)");
    return rc;
}
