"""Crash consistency (kill -9 at the two dangerous moments, then reconcile) and the
1,000-active-key limit, created for real and in parallel."""
import concurrent.futures
import os
import re
import shutil

import pytest

from procs import restore_tree


def reconcile_counts(log):
    """The numbers from the last reconcile summary line of the log."""
    lines = re.findall(r"reconcile: (\d+) orphan objects destroyed, (\d+) revoked objects "
                       r"destroyed, (\d+) keys marked broken", log)
    assert lines, log
    return tuple(int(x) for x in lines[-1])


def crash_at(a, fault, request):
    """Crashes a at the fault point (conftest's crash_at) and returns the counts of the
    reconcile that followed; then restarts it once more without the fault, so the caller
    can check that nothing was left to repair."""
    a.crash_at(fault, request)
    counts = reconcile_counts(a.read_log())
    a.restart()
    return counts


def test_thousand_active_keys_then_the_next_is_refused(make_appliance):
    # First in the file, and the file first in the run (conftest.RUN_FIRST): generating
    # 1,000 keys is minutes of CPU, the longest test of the suite.
    a = make_appliance(extra_conf={"worker_threads": 32})

    def create(i):
        return a.post("/v1/keys", {"label": "bulk-%d" % i}).status_code

    # 1,010 creates race for 1,000 slots: exactly 1,000 win.
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(create, range(1010)))
    assert codes.count(201) == 1000, {c: codes.count(c) for c in set(codes)}
    assert codes.count(409) == 10
    r = a.post("/v1/keys", {"label": "one too many"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_limit_reached"
    jwks = a.get("/.well-known/jwks.json", auth=False).json()["keys"]
    assert len(jwks) == 1000 and all(k["use"] == "sig" for k in jwks)
    # Revoking one frees a slot.
    kid = a.get("/v1/keys?state=active").json()["keys"][0]["kid"]
    assert a.delete("/v1/keys/" + kid).status_code == 200
    assert a.post("/v1/keys", {"label": "replacement"}).status_code == 201
    # And all of it survives a restart, with every handle cached again.
    a.restart()
    assert a.get("/readyz", auth=False).json()["active_keys"] == 1000
    assert reconcile_counts(a.read_log()) == (0, 0, 0)


def test_kill_between_generating_and_committing_leaves_no_orphan(make_appliance):
    a = make_appliance()
    kept = a.create_key(label="kept")
    counts = crash_at(a, "after_generate",
                      lambda: a.post("/v1/keys", {"label": "never acknowledged"}))
    assert counts == (1, 0, 0)
    keys = a.get("/v1/keys").json()["keys"]
    assert [k["kid"] for k in keys] == [kept["kid"]]
    # The next start finds nothing left to repair: the orphan is gone from the token.
    assert reconcile_counts(a.read_log()) == (0, 0, 0)
    assert a.post("/v1/keys/%s/sign" % kept["kid"], {"payload": "eA"}).status_code == 200


def test_kill_between_committing_revocation_and_destroying_object(make_appliance):
    a = make_appliance()
    victim = a.create_key(label="victim")
    counts = crash_at(a, "after_revoke_commit",
                      lambda: a.delete("/v1/keys/" + victim["kid"], {"reason": "compromised"}))
    # The revocation was durable before the crash: it is in the feed, and reconcile
    # destroyed the object that survived.
    assert counts == (0, 1, 0)
    assert a.get("/v1/keys/" + victim["kid"]).json()["state"] == "revoked"
    feed = a.get("/v1/revocations", auth=False).json()
    assert [e["kid"] for e in feed["revoked"]] == [victim["kid"]]
    assert victim["kid"] not in a.get("/.well-known/jwks.json", auth=False).text
    assert a.post("/v1/keys/%s/sign" % victim["kid"], {"payload": "eA"}).status_code == 409
    assert reconcile_counts(a.read_log()) == (0, 0, 0)


def test_active_key_missing_from_token_is_marked_broken(make_appliance):
    a = make_appliance()
    survivor = a.create_key(label="survivor")
    a.stop()
    snapshot = os.path.join(a.dir, "token-snapshot")
    shutil.copytree(os.path.join(a.dir, "token"), snapshot)
    a.start()
    lost = a.create_key(label="lost")
    a.stop()
    # The token goes back to before "lost" existed; the registry still says active.
    restore_tree(snapshot, os.path.join(a.dir, "token"))
    a.start()
    assert reconcile_counts(a.read_log()) == (0, 0, 1)
    assert a.get("/v1/keys/" + lost["kid"]).json()["state"] == "broken"
    r = a.post("/v1/keys/%s/sign" % lost["kid"], {"payload": "eA"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_broken"
    assert lost["kid"] not in a.get("/.well-known/jwks.json", auth=False).text
    assert a.post("/v1/keys/%s/sign" % survivor["kid"], {"payload": "eA"}).status_code == 200


def test_limit_can_be_lowered_in_configuration(make_appliance):
    a = make_appliance(extra_conf={"max_active_keys": 2})
    k = a.create_key()
    a.create_key()
    r = a.post("/v1/keys", {})
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_limit_reached"
    # A rotation needs a slot for its successor too (docs/api.md; the rest of the rule,
    # retiring keys holding theirs, is test_core_keys.c's).
    r = a.post("/v1/keys/%s/rotate" % k["kid"], {"grace_seconds": 600})
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_limit_reached", r.text
    assert a.get("/v1/keys/" + k["kid"]).json()["state"] == "active"
