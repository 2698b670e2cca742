/* signdctl's entry point: the process set-up, then ctl_main (signdctl.c). */
#include "cli/ctl.h"

#include <sys/prctl.h>

int main(int argc, char **argv)
{
    /* No core dump, and /proc/PID/environ and mem readable by root only: this process
     * holds a credential's secret. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    return ctl_main(argc, argv);
}
