/* pc: when to sign a public document again. See pubcache.h. */
#include "appliance/core/pubcache.h"
#include "base/names.h"

pc_action pc_decide(const pc_entry *e, uint64_t version, int64_t now, int64_t resign_after,
                    bool keeper_ok, bool budget_ok)
{
    bool valid = e->has && now < e->exp;
    if (valid && e->version == version && now - e->iat < resign_after && now >= e->iat)
        return PC_SERVE;
    if (!e->signing && keeper_ok && budget_ok)
        return PC_SIGN;
    if (valid)
        return PC_SERVE_OLD;
    if (e->signing)
        return PC_WAIT;
    return keeper_ok ? PC_REFUSE_BUDGET : PC_REFUSE_KEEPER;
}

const char *pc_action_name(pc_action a)
{
    static const char *const names[] = {
        [PC_SERVE] = "serve",
        [PC_SIGN] = "sign",
        [PC_SERVE_OLD] = "serve_old",
        [PC_WAIT] = "wait",
        [PC_REFUSE_BUDGET] = "refuse_budget",
        [PC_REFUSE_KEEPER] = "refuse_keeper",
    };
    return nm_name(names, sizeof(names) / sizeof(names[0]), (unsigned)a, "invalid");
}
