/* evt: the supervisor's restart events. See events.h. */
#include "appliance/common/events.h"

#include "base/names.h"

#include <unistd.h>

void evt_send(int fd, evt_role role, evt_cause cause, pid_t pid, int64_t detail)
{
    evt_restart ev = {
        .magic = EVT_MAGIC, .role = role, .cause = cause, .pid = (int32_t)pid, .detail = detail};
    if (fd >= 0)
        (void)!write(fd, &ev, sizeof(ev));
}

int evt_recv(int fd, evt_restart *out)
{
    /* A short read cannot happen for writes of at most PIPE_BUF bytes. */
    return fd >= 0 && read(fd, out, sizeof(*out)) == (ssize_t)sizeof(*out);
}

int evt_valid(const evt_restart *ev)
{
    return ev->magic == EVT_MAGIC && (ev->role == EVT_ROLE_KEEPER || ev->role == EVT_ROLE_FRONT);
}

const char *evt_cause_name(evt_cause c)
{
    static const char *const names[EVT_CAUSE_COUNT_] = {
        [EVT_CAUSE_EXITED] = "exited",
        [EVT_CAUSE_SIGNAL] = "signal",
        [EVT_CAUSE_WATCHDOG] = "watchdog",
    };
    return nm_name(names, EVT_CAUSE_COUNT_, (unsigned)c, "unknown");
}
