/*
 * signd-provision: prepares a data directory before the appliance first starts.
 *
 *   signd-provision token DIR [--label LABEL] [--module PATH]
 *   signd-provision config DIR [--port PORT]
 *   signd-provision admin-credential DIR [--label LABEL] [--out FILE]
 *
 * No PIN or secret ever appears in argv or output: they are generated here and written
 * to 0600 files.
 */
#include "appliance/config.h"
#include "hsm/hsm.h"
#include "provisioning/token.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int usage(void)
{
    fprintf(stderr, "usage: signd-provision token DIR [--label LABEL] [--module PATH]\n"
                    "       signd-provision config DIR [--port PORT]\n"
                    "       signd-provision admin-credential DIR [--label LABEL] [--out FILE]\n");
    return 2;
}

static int cmd_token(int argc, char **argv)
{
    const char *label = "signd", *module = HSM_DEFAULT_MODULE;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--label") == 0 && i + 1 < argc)
            label = argv[++i];
        else if (strcmp(argv[i], "--module") == 0 && i + 1 < argc)
            module = argv[++i];
        else
            return usage();
    }
    return prov_token_init(argv[0], label, module, stdout) == 0 ? 0 : 1;
}

static int cmd_config(int argc, char **argv)
{
    unsigned long port = 8443;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            char *end;
            errno = 0;
            port = strtoul(argv[++i], &end, 10);
            if (errno || *end || port == 0 || port > 65535) {
                fprintf(stderr, "--port must be 1 to 65535\n");
                return 2;
            }
        } else {
            return usage();
        }
    }
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s/appliance.conf", argv[0]) >= (int)sizeof(path)) {
        fprintf(stderr, "path too long: %s\n", argv[0]);
        return 1;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "cannot create %s: %s\n", path, strerror(errno));
        return 1;
    }
    FILE *f = fdopen(fd, "w");
    if (f == NULL || cfg_write_defaults(f, (unsigned)port) != 0 || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        return 1;
    }
    printf("config: %s\n", path);
    return 0;
}

static int cmd_admin_credential(int argc, char **argv)
{
    const char *label = "admin", *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--label") == 0 && i + 1 < argc)
            label = argv[++i];
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            out = argv[++i];
        else
            return usage();
    }
    return prov_admin_credential(argv[0], label, out, stdout) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    if (strcmp(argv[1], "token") == 0)
        return cmd_token(argc - 2, argv + 2);
    if (strcmp(argv[1], "config") == 0)
        return cmd_config(argc - 2, argv + 2);
    if (strcmp(argv[1], "admin-credential") == 0)
        return cmd_admin_credential(argc - 2, argv + 2);
    return usage();
}
