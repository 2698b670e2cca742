"""The audit trail, black-box over HTTPS (appliance/core/audit.h is the contract): every change
leaves its event with the caller as actor, in the change's own transaction; failures and
signature counts arrive batched; the hash chain and the checkpoints signed by the audit key
verify offline with `signd-provision audit-verify` and only the audit public key; a row
edited in appliance.db is found at its seq, and cutting the tail back past a checkpoint the
auditor kept is found with --anchor (and, as documented, not without it); a kill -9 leaves
no change without its event.

The verifier itself (every tampering of an export, another key, the anchor's forms) is a
pure function of a file and a key: tests/unit/test_audit_verify.c carries those checks.

Checkpoints and flushes are made fast (FAST) and tests poll /v1/audit instead of sleeping."""
import base64
import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from urllib.parse import urlencode

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwcrypto import jwk, jws

from conftest import BUILD, TOP, alive_pid
from procs import restore_tree, wait_for

PROVISION = os.path.join(TOP, BUILD, "bin", "signd-provision")
AUDIT_KID = "signd-audit-v1"                    # the checkpoints' JWS kid
AUDIT_KID_HEX = b"signd-audit-v1\0\0".hex()     # its CKA_ID on the token, as a kid
ZERO_HASH = "0" * 64
# The node every event the server appends names (node_name unset: the host name, with
# characters outside [A-Za-z0-9._-] as '_', at most 63 bytes).
NODE = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:63]
# Counts and failures flushed every second, a checkpoint every 5 events or every second.
FAST = {"audit_flush_seconds": 1, "audit_checkpoint_events": 5, "audit_checkpoint_seconds": 1}
VERIFIED = re.compile(r"verified (\d+) events up to seq (\d+), last checkpoint at seq (\d+)")
BROKEN = re.compile(r"broken at seq (\d+): (.+)")


def bare(details):
    """details without its "node", which must be this host's when there (an event written
    offline, by signd-provision, names none)."""
    d = dict(details)
    assert d.pop("node", NODE) == NODE, details
    return d


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cred_id(secret):
    """A credential's id from its secret: sgd_<16 hex id>_<random>."""
    return secret[4:20]


def events(a, auth=None, after=0, **query):
    """Every event matching query (kid, action, actor, since, until), page by page."""
    out = []
    limit = query.pop("limit", 1000)
    while True:
        r = a.get("/v1/audit?" + urlencode(dict(query, after=after, limit=limit)),
                  auth=auth or a.admin)
        assert r.status_code == 200, r.text
        body = r.json()
        out += body["events"]
        if "next_after" not in body:
            return out
        assert body["next_after"] == body["events"][-1]["seq"]
        after = body["next_after"]


def wait_events(a, action, pred=lambda e: True, count=1, **query):
    """Waits until at least count events of action match pred; returns them all."""
    def found():
        hits = [e for e in events(a, action=action, **query) if pred(e)]
        return hits if len(hits) >= count else None
    return wait_for(found, message="%d %s event(s)" % (count, action))


def export(a, auth=None, **query):
    r = a.get("/v1/audit/export" + ("?" + urlencode(query) if query else ""),
              auth=auth or a.admin)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/x-ndjson")
    return r.text


def lines_of(text):
    return [json.loads(line) for line in text.splitlines()]


def checkpoints_of(text):
    return [l for l in lines_of(text) if l["type"] == "checkpoint"]


def head_seq(a):
    return events(a)[-1]["seq"]


def wait_checkpoint(a, seq):
    """Waits for a checkpoint at seq or later; returns the export that holds it."""
    def found():
        text = export(a)
        return text if any(c["seq"] >= seq for c in checkpoints_of(text)) else None
    return wait_for(found, message="a checkpoint at seq >= %d" % seq)


def audit_pem(a):
    r = a.get("/v1/audit/key", auth=False)
    assert r.status_code == 200, r.text
    return r.json()["pem"]


def verify(tmp_path, export_text, pem, anchor=None):
    """Runs the offline verifier on files: (exit code, its one line of output)."""
    n = len(list(tmp_path.glob("export-*.jsonl")))
    exp = tmp_path / ("export-%d.jsonl" % n)
    exp.write_text(export_text)
    key = tmp_path / ("audit-%d.pem" % n)
    key.write_text(pem)
    cmd = [PROVISION, "audit-verify", str(exp), str(key)]
    if anchor is not None:
        cmd += ["--anchor", "%d:%s" % anchor]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return p.returncode, (p.stdout + p.stderr).strip()


def assert_verifies(tmp_path, export_text, pem, anchor=None):
    """The export verifies; returns (events, last seq, last checkpoint) as printed."""
    rc, out = verify(tmp_path, export_text, pem, anchor)
    assert rc == 0, out
    m = VERIFIED.fullmatch(out)
    assert m, out
    return tuple(int(x) for x in m.groups())


def assert_broken_at(tmp_path, export_text, pem, seq, anchor=None):
    rc, out = verify(tmp_path, export_text, pem, anchor)
    assert rc == 1, out
    m = BROKEN.fullmatch(out)
    assert m, out
    assert int(m.group(1)) == seq, out
    return m.group(2)


def canonical(e):
    """canonical(event) of audit.h: sorted keys, compact, ASCII, as jansson writes it. One
    difference from Python's json: jansson's \\uXXXX escapes use uppercase hex digits."""
    ev = {k: e[k] for k in ("action", "actor", "details", "kid", "seq", "time")}
    text = json.dumps(ev, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    text = re.sub(r"\\\\|\\u[0-9a-f]{4}",
                  lambda m: m.group(0) if m.group(0) == "\\\\" else "\\u" + m.group(0)[2:].upper(),
                  text)
    return text.encode()


def chain_hash(prev_hex, e):
    return hashlib.sha256(bytes.fromhex(prev_hex) + canonical(e)).hexdigest()


@contextlib.contextmanager
def db(a):
    """The appliance's SQLite file (the appliance stopped), for tampering: one transaction,
    committed, and the connection closed."""
    conn = sqlite3.connect(os.path.join(a.dir, "appliance.db"))
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def sum_counts(evs):
    """by_kid and by_credential summed over sign.counts events."""
    by_kid, by_cred = {}, {}
    for e in evs:
        for k, n in e["details"]["by_kid"].items():
            by_kid[k] = by_kid.get(k, 0) + n
        for c, n in e["details"]["by_credential"].items():
            by_cred[c] = by_cred.get(c, 0) + n
    return by_kid, by_cred


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One appliance for the tests that only read and change nothing."""
    from conftest import Appliance
    a = Appliance(str(tmp_path_factory.mktemp("signd-audit")), FAST).start()
    yield a
    a.stop()


# ---- every change leaves its event, with its actor -------------------------------------------

def test_key_creation_and_revocation_are_recorded_at_once_with_the_admin_as_actor(make_appliance):
    a = make_appliance(FAST)
    admin = cred_id(a.admin)
    t0 = int(time.time())
    kid = a.create_key(bits=2048, label="audited")["kid"]
    # Same transaction as the row: visible as soon as the 201 is, no flush to wait for.
    [created] = events(a, kid=kid)
    assert created["action"] == "key.created" and created["actor"] == admin
    assert bare(created["details"]) == {"bits": 2048, "label": "audited"}
    assert created["details"]["node"] == NODE  # one chain for a cluster: which node wrote it
    # The appliance stamps requests with time(2), which reads the kernel's tick-coarse
    # clock: it may lag Python's clock_gettime by a few ms, a whole second across a
    # second's boundary (seen once in CI: 1796595420 against t0 = 1796595421).
    assert t0 - 1 <= created["time"] <= int(time.time())
    r = a.delete("/v1/keys/" + kid, {"reason": "rotated"})
    assert r.status_code == 200, r.text
    evs = events(a, kid=kid)
    assert [e["action"] for e in evs] == ["key.created", "key.revoked"]
    revoked = evs[1]
    assert revoked["actor"] == admin
    assert bare(revoked["details"]) == {"reason": "rotated",
                                  "revocation_seq": r.json()["revocation_seq"]}
    # A second DELETE changes nothing, so it records nothing (no event without its change).
    assert a.delete("/v1/keys/" + kid, {"reason": "again"}).status_code == 200
    assert events(a, kid=kid) == evs


def test_credential_creation_and_revocation_are_recorded_with_the_calling_admin(make_appliance):
    a = make_appliance(FAST)
    # The bootstrap admin was made offline by signd-provision: actor "system", seq 1.
    first = events(a)[0]
    assert first["seq"] == 1 and first["prev_hash"] == ZERO_HASH
    assert first["action"] == "credential.created" and first["actor"] == "system"
    assert first["details"]["credential"] == cred_id(a.admin)
    assert first["details"]["role"] == "admin"
    second = a.create_credential("admin", label="second admin")
    kid = a.create_key()["kid"]
    # The second admin makes and revokes a credential: the actor is who asked.
    r = a.post("/v1/credentials", {"role": "signer", "kids": [kid], "label": "edge"},
               auth=second["secret"])
    assert r.status_code == 201, r.text
    made = r.json()
    assert a.delete("/v1/credentials/" + made["id"], auth=second["secret"]).status_code == 200
    evs = [e for e in events(a, action="credential.created") + events(a, action="credential.revoked")
           if e["details"]["credential"] in (second["id"], made["id"])]
    evs.sort(key=lambda e: e["seq"])
    assert [(e["action"], e["actor"], e["details"]["credential"]) for e in evs] == [
        ("credential.created", cred_id(a.admin), second["id"]),
        ("credential.created", second["id"], made["id"]),
        ("credential.revoked", second["id"], made["id"]),
    ]
    assert bare(evs[1]["details"]) == {"credential": made["id"], "role": "signer", "label": "edge",
                                 "kids": [kid], "max_ttl": 0}
    assert bare(evs[2]["details"]) == {"credential": made["id"], "role": "signer"}
    # Revoking again changes nothing and records nothing.
    assert a.delete("/v1/credentials/" + made["id"]).status_code == 200
    assert len(events(a, action="credential.revoked")) == 1
    # No secret ever reaches the trail.
    trail = json.dumps(events(a))
    for secret in (a.admin, second["secret"], made["secret"], a.signer):
        assert secret not in trail and secret.split("_")[-1] not in trail


def test_bad_credentials_are_recorded_as_auth_failed(make_appliance):
    a = make_appliance(FAST)
    revoked = a.create_credential("signer", kids="all", label="gone")
    assert a.delete("/v1/credentials/" + revoked["id"]).status_code == 200
    bogus = "sgd_0123456789abcdef_" + "A" * 43
    assert a.get("/v1/keys", auth=bogus).status_code == 401
    assert a.get("/v1/credentials", auth=False).status_code == 401
    assert a.post("/v1/tokens", {}, auth=revoked["secret"]).status_code == 401
    evs = wait_events(a, "auth.failed", count=3)
    by_reason = {e["details"]["reason"]: e for e in evs}
    unknown = by_reason["unknown credential"]
    # An unknown secret may be a mistyped one: its id is not recorded, the actor is system.
    assert unknown["actor"] == "system" and unknown["kid"] == ""
    assert bare(unknown["details"]) == {"method": "GET", "path": "/v1/keys", "address": "127.0.0.1",
                                  "reason": "unknown credential"}
    assert "0123456789abcdef" not in json.dumps(evs)
    none = by_reason["no credential"]
    assert none["actor"] == "system" and none["details"]["path"] == "/v1/credentials"
    # A revoked credential's id is known and not secret: it is the actor.
    gone = by_reason["revoked credential"]
    assert gone["actor"] == revoked["id"]
    assert gone["details"]["role"] == "signer" and gone["details"]["path"] == "/v1/tokens"
    assert gone["details"]["method"] == "POST"


def test_a_failure_on_a_path_that_is_not_utf8_still_records_where_it_came_from(make_appliance):
    a = make_appliance(FAST)
    assert a.get("/v1/keys/%FF", auth=False).status_code == 401
    [e] = wait_events(a, "auth.failed")
    assert e["details"].get("address") == "127.0.0.1", e
    assert e["details"].get("reason") == "no credential", e
    assert e["details"].get("path") == "/v1/keys/?", e


def test_a_flood_of_bad_credentials_is_recorded_event_by_event_in_batches(make_appliance):
    a = make_appliance(FAST)
    before = head_seq(a)
    for i in range(40):
        assert a.get("/v1/keys", auth="sgd_%016x_" % i + "B" * 43).status_code == 401
    evs = wait_events(a, "auth.failed", count=40, after=before)
    assert len(evs) == 40 and all(e["actor"] == "system" for e in evs)
    # Batched: they arrived in at most a few flushes, consecutive in the chain.
    seqs = [e["seq"] for e in evs]
    assert seqs == list(range(seqs[0], seqs[0] + 40))


def test_a_signer_calling_an_admin_route_is_recorded_as_authz_denied(make_appliance):
    a = make_appliance(FAST)
    signer = cred_id(a.signer)
    for method, path in [("GET", "/v1/credentials"), ("POST", "/v1/keys"),
                         ("GET", "/v1/audit")]:
        r = a.request(method, path, auth=a.signer, json={} if method == "POST" else None)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    evs = wait_events(a, "authz.denied", count=3, actor=signer)
    assert [(e["details"]["method"], e["details"]["path"]) for e in evs] == [
        ("GET", "/v1/credentials"), ("POST", "/v1/keys"), ("GET", "/v1/audit")]
    for e in evs:
        assert e["actor"] == signer and e["details"]["role"] == "signer"
        assert e["details"]["reason"] == "role may not call this route"
    # Nothing was created by the refused POST.
    assert events(a, action="key.created") == []


def test_a_scoped_signer_using_a_kid_outside_its_scope_is_recorded_as_authz_denied(
        make_appliance):
    a = make_appliance(FAST)
    mine, other = a.create_key(label="mine")["kid"], a.create_key(label="other")["kid"]
    scoped = a.create_credential("signer", kids=[mine], label="scoped")
    for r in (a.post("/v1/keys/%s/sign" % other, {"payload": "eA"}, auth=scoped["secret"]),
              a.post("/v1/tokens", {"kid": other}, auth=scoped["secret"])):
        assert r.status_code == 403 and r.json()["error"]["code"] == "kid_not_allowed", r.text
    evs = wait_events(a, "authz.denied", count=2, actor=scoped["id"])
    assert [e["details"]["path"] for e in evs] == ["/v1/keys/%s/sign" % other, "/v1/tokens"]
    for e in evs:
        assert e["details"]["reason"] == "kid outside the credential's scope"
        assert e["details"]["role"] == "signer"
    # Its allowed kid signs, and is counted, not denied.
    assert a.post("/v1/keys/%s/sign" % mine, {"payload": "eA"}, auth=scoped["secret"]).ok
    wait_events(a, "sign.counts", lambda e: e["details"]["by_credential"].get(scoped["id"]))
    assert len(events(a, action="authz.denied")) == 2


def test_signatures_are_counted_per_kid_and_per_credential(make_appliance):
    a = make_appliance(FAST)
    ka, kb = a.create_key(label="A")["kid"], a.create_key(label="B")["kid"]
    s1 = a.signer
    s2 = a.create_credential("signer", kids="all", label="second")["secret"]
    before = head_seq(a)
    for _ in range(3):
        assert a.post("/v1/tokens", {"kid": ka, "sub": "x"}, auth=s1).status_code == 200
    assert a.post("/v1/tokens", {"kid": kb}, auth=s1).status_code == 200
    for _ in range(2):
        assert a.post("/v1/keys/%s/sign" % kb, {"payload": b64u(b"raw")},
                      auth=s2).status_code == 200
    want = ({ka: 3, kb: 3}, {cred_id(s1): 4, cred_id(s2): 2})
    wait_for(lambda: sum_counts(events(a, action="sign.counts", after=before)) == want,
             message="sign.counts to reach %r" % (want,))
    counts = events(a, action="sign.counts", after=before)
    assert all(e["actor"] == "system" and e["kid"] == "" for e in counts)
    # Counted, not logged one by one; and counted once: two more flushes add nothing.
    assert events(a, action="sign") == []
    time.sleep(2.5)
    assert sum_counts(events(a, action="sign.counts", after=before)) == want


def test_start_records_the_configuration_hash_and_a_restart_records_the_stop(make_appliance):
    a = make_appliance(FAST)

    def conf_sha256():
        with open(a.conf, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    [started] = events(a, action="appliance.started")
    assert started["actor"] == "system"
    assert bare(started["details"]) == {"config_sha256": conf_sha256(), "process_model": "split",
                                  "active_keys": 0}
    a.create_key()
    a.stop()
    a.set_conf({"audit_checkpoint_events": 6})
    a.start()
    evs = events(a)
    stopped = [e for e in evs if e["action"] == "appliance.stopped"]
    assert len(stopped) == 1 and stopped[0]["actor"] == "system"
    assert bare(stopped[0]["details"]) == {}
    restarted = [e for e in evs if e["action"] == "appliance.started"][-1]
    assert restarted["seq"] > stopped[0]["seq"]
    assert restarted["details"]["config_sha256"] == conf_sha256() != started["details"][
        "config_sha256"]
    assert restarted["details"]["active_keys"] == 1
    # Stopping signs a last checkpoint: the stop itself is covered.
    assert stopped[0]["seq"] in [c["seq"] for c in checkpoints_of(export(a))]


def test_reconcile_records_a_missing_active_key_as_broken(make_appliance, tmp_path):
    import shutil
    a = make_appliance(FAST)
    survivor = a.create_key(label="survivor")["kid"]
    a.stop()
    snapshot = os.path.join(a.dir, "token-snapshot")
    shutil.copytree(os.path.join(a.dir, "token"), snapshot)
    a.start()
    lost = a.create_key(label="lost")["kid"]
    a.stop()
    # The token goes back to before "lost" existed; the registry still says active.
    restore_tree(snapshot, os.path.join(a.dir, "token"))
    a.start()
    assert a.get("/v1/keys/" + lost).json()["state"] == "broken"
    evs = events(a)
    [broken] = [e for e in evs if e["action"] == "key.broken"]
    assert broken["kid"] == lost and broken["actor"] == "system"
    assert bare(broken["details"]) == {"why": "the token has no object for this kid"}
    # Reconcile runs before this run's start is recorded: after the last stop, before it.
    last_stop = [e["seq"] for e in evs if e["action"] == "appliance.stopped"][-1]
    last_start = [e["seq"] for e in evs if e["action"] == "appliance.started"][-1]
    assert last_stop < broken["seq"] < last_start
    assert [e["action"] for e in events(a, kid=survivor)] == ["key.created"]
    # The audit key survived the token's rollback (it was made before the snapshot).
    assert_verifies(tmp_path, export(a), audit_pem(a))


# ---- reading the trail: filters, paging, errors, roles ------------------------------------

def test_audit_list_filters_by_kid_action_and_actor(make_appliance):
    a = make_appliance(FAST)
    admin = cred_id(a.admin)
    k1, k2 = a.create_key(label="one")["kid"], a.create_key(label="two")["kid"]
    a.delete("/v1/keys/" + k1, {"reason": "filter"})
    second = a.create_credential("admin", label="other admin")
    k3 = a.post("/v1/keys", {"label": "three"}, auth=second["secret"]).json()["kid"]
    everything = events(a)
    assert [e["seq"] for e in everything] == list(range(1, len(everything) + 1))

    assert [e["action"] for e in events(a, kid=k1)] == ["key.created", "key.revoked"]
    assert [e["action"] for e in events(a, kid=k2)] == ["key.created"]
    assert [e["kid"] for e in events(a, action="key.created")] == [k1, k2, k3]
    assert [e["kid"] for e in events(a, action="key.revoked")] == [k1]
    assert events(a, action="key.created", kid=k3)[0]["actor"] == second["id"]
    assert events(a, action="key.created", actor=admin, kid=k3) == []
    mine = events(a, actor=admin)
    assert mine == [e for e in everything if e["actor"] == admin] and mine
    assert events(a, actor=second["id"]) == [e for e in everything if e["kid"] == k3]
    assert events(a, actor="system") == [e for e in everything if e["actor"] == "system"]
    assert events(a, kid="0" * 32) == [] and events(a, action="no.such") == []


def test_audit_list_filters_by_time_range(make_appliance):
    a = make_appliance(FAST)
    for label in ("t1", "t2", "t3"):
        a.create_key(label=label)
        time.sleep(1.1)
    everything = events(a)
    times = sorted({e["time"] for e in everything})
    assert len(times) >= 3
    t = times[len(times) // 2]
    assert events(a, since=t) == [e for e in everything if e["time"] >= t]
    assert events(a, until=t) == [e for e in everything if e["time"] <= t]
    assert events(a, since=t, until=t) == [e for e in everything if e["time"] == t]
    assert events(a, since=times[-1] + 1) == []
    assert events(a, until=times[0] - 1) == []
    # 0 means open; since and until combine with the other filters.
    assert events(a, since=0, until=0) == everything
    assert events(a, since=t, action="key.created") == [
        e for e in everything if e["time"] >= t and e["action"] == "key.created"]


def test_audit_list_pages_with_after_limit_and_next_after(make_appliance):
    a = make_appliance(FAST)
    for i in range(5):
        a.create_key(label="page-%d" % i)
    everything = events(a)
    n = len(everything)
    # One by one: n pages, each one event, next_after its seq, none after the last.
    seen, after, pages = [], 0, 0
    while True:
        body = a.get("/v1/audit?after=%d&limit=1" % after).json()
        pages += 1
        seen += body["events"]
        if "next_after" not in body:
            break
        assert body["next_after"] == body["events"][-1]["seq"]
        after = body["next_after"]
    assert seen == everything and pages == n
    # Pages of 3 with a filter: next_after is the seq to pass as after.
    body = a.get("/v1/audit?action=key.created&limit=3").json()
    assert [e["details"]["label"] for e in body["events"]] == ["page-0", "page-1", "page-2"]
    rest = a.get("/v1/audit?action=key.created&limit=3&after=%d" % body["next_after"]).json()
    assert [e["details"]["label"] for e in rest["events"]] == ["page-3", "page-4"]
    assert "next_after" not in rest
    # after alone; the default page is 100 events.
    assert a.get("/v1/audit?after=%d" % (n - 2)).json()["events"] == everything[-2:]
    assert a.get("/v1/audit?after=%d" % n).json() == {"events": []}
    for i in range(100):
        assert a.get("/v1/keys", auth="sgd_%016x_" % i + "C" * 43).status_code == 401
    wait_for(lambda: len(events(a)) >= n + 100, message="100 auth.failed events")
    body = a.get("/v1/audit").json()
    assert len(body["events"]) == 100 and body["next_after"] == 100


@pytest.mark.parametrize("path,code", [
    ("/v1/audit?limit=0", "invalid_query"),
    ("/v1/audit?limit=1001", "invalid_query"),
    ("/v1/audit?limit=ten", "invalid_query"),
    ("/v1/audit?after=-1", "invalid_query"),
    ("/v1/audit?after=", "invalid_query"),
    ("/v1/audit?after=1e3", "invalid_query"),
    ("/v1/audit?after=" + "9" * 19, "invalid_query"),
    ("/v1/audit?since=yesterday", "invalid_query"),
    ("/v1/audit?until=1.5", "invalid_query"),
    ("/v1/audit?until=-5", "invalid_query"),
    ("/v1/audit?nosuch=1", "invalid_query"),
    ("/v1/audit?limit", "invalid_query"),
    ("/v1/audit?limit=5&&after=1", "invalid_query"),
    ("/v1/audit?action=" + "x" * 65, "invalid_query"),
    ("/v1/audit?from=1", "invalid_query"),
    ("/v1/audit?kid=" + "A" * 32, "invalid_kid"),
    ("/v1/audit?kid=zz", "invalid_kid"),
    ("/v1/audit/export?from=x", "invalid_query"),
    ("/v1/audit/export?to=-1", "invalid_query"),
    ("/v1/audit/export?from=5&to=4", "invalid_query"),
    ("/v1/audit/export?limit=5", "invalid_query"),
    ("/v1/audit/export?after=1", "invalid_query"),
])
def test_bad_audit_query_values_get_400(shared, path, code):
    r = shared.get(path)
    assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text


def test_the_trail_is_for_admins_and_auditors_and_its_key_is_public(make_appliance):
    a = make_appliance(FAST)
    auditor = a.create_credential("auditor", label="auditor")["secret"]
    for path in ("/v1/audit", "/v1/audit/export"):
        r = a.get(path, auth=a.signer)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
        assert a.get(path, auth=False).status_code == 401
        assert a.get(path, auth=auditor).status_code == 200
        assert a.get(path).status_code == 200
        assert a.post(path, {}, auth=auditor).status_code == 405
    # Once the refusals above are flushed and checkpointed, both roles read the same.
    wait_events(a, "authz.denied", count=2)
    wait_events(a, "auth.failed", count=2)
    wait_checkpoint(a, head_seq(a))
    assert events(a, auth=auditor) == events(a)
    assert export(a, auth=auditor) == export(a)
    r = a.get("/v1/audit/key", auth=False)
    assert r.status_code == 200 and r.json()["kid"] == AUDIT_KID and r.json()["alg"] == "RS256"
    assert a.get("/v1/audit/", auth=auditor).status_code == 404


# ---- the chain, the export and offline verification -----------------------------------------

def make_history(a):
    """A bit of everything: keys, credentials, revocations, signatures, failures."""
    ka = a.create_key(label="A")["kid"]
    kb = a.create_key(label="B")["kid"]
    c = a.create_credential("auditor", label="reader")
    a.delete("/v1/credentials/" + c["id"])
    assert a.post("/v1/tokens", {"kid": ka, "claims": {"note": "caf\u00e9"}}).status_code == 200
    assert a.post("/v1/keys/%s/sign" % kb, {"payload": b64u(b"x")}).status_code == 200
    assert a.get("/v1/keys", auth="sgd_%016x_" % 7 + "D" * 43).status_code == 401
    # Non-ASCII and control characters reach the trail through a failure's path.
    assert a.get("/v1/keys/caf%C3%A9%1F", auth=False).status_code == 401
    a.delete("/v1/keys/" + kb, {"reason": "history"})
    wait_events(a, "sign.counts")
    wait_events(a, "auth.failed", count=2)
    return ka, kb


def test_every_event_hash_chains_to_the_previous_as_documented(make_appliance):
    a = make_appliance(FAST)
    make_history(a)
    prev = ZERO_HASH
    evs = events(a)
    for e in evs:
        assert e["prev_hash"] == prev, e
        assert e["hash"] == chain_hash(prev, e), e
        assert re.fullmatch(r"[0-9a-f]{64}", e["hash"])
        prev = e["hash"]
    assert len({e["action"] for e in evs}) >= 7
    # A path is kept as printable ASCII ('?' for every other byte), so that a path which is
    # not UTF-8 cannot make its event lose its details.
    assert any(e["details"].get("path") == "/v1/keys/caf???" for e in evs)


def test_an_export_verifies_offline_with_only_the_audit_public_key(make_appliance, tmp_path):
    a = make_appliance(FAST)
    make_history(a)
    text = wait_checkpoint(a, head_seq(a))
    pem = audit_pem(a)
    lines = lines_of(text)
    evs = [l for l in lines if l["type"] == "event"]
    cps = [l for l in lines if l["type"] == "checkpoint"]
    # Every event, in seq order, each column as /v1/audit gives it; a checkpoint right
    # after the event it covers.
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
    listed = events(a, until=0)[:len(evs)]
    assert [{k: v for k, v in e.items() if k != "type"} for e in evs] == listed
    for i, line in enumerate(lines):
        if line["type"] == "checkpoint":
            assert lines[i - 1]["type"] == "event" and lines[i - 1]["seq"] == line["seq"]
            assert set(line) == {"type", "seq", "hash", "time", "jws"}
            assert line["hash"] == evs[line["seq"] - 1]["hash"]
    # Offline: the appliance is stopped, only the file and the public key are left.
    a.stop()
    assert assert_verifies(tmp_path, text, pem) == (len(evs), evs[-1]["seq"], cps[-1]["seq"])
    # From standard input too: "-".
    p = subprocess.run([PROVISION, "audit-verify", "-", str(tmp_path / "audit-0.pem")],
                       input=text, capture_output=True, text=True)
    assert p.returncode == 0 and VERIFIED.fullmatch(p.stdout.strip()), p.stdout
    # A part of the trail verifies on its own, with the checkpoints inside it.
    a.start()
    part = export(a, **{"from": 3, "to": 8})
    pevs = [l for l in lines_of(part) if l["type"] == "event"]
    assert [e["seq"] for e in pevs] == [3, 4, 5, 6, 7, 8]
    inside = [c["seq"] for c in checkpoints_of(part)]
    assert inside == [c["seq"] for c in cps if 3 <= c["seq"] <= 8]
    assert assert_verifies(tmp_path, part, pem) == (6, 8, inside[-1] if inside else 0)


def tampered_appliance(make_appliance):
    """A stopped appliance with a history (and checkpoints up to its head) to tamper with."""
    a = make_appliance(FAST)
    keys = [a.create_key(label="k%d" % i)["kid"] for i in range(3)]
    creds = [a.create_credential("auditor", label="c%d" % i)["id"] for i in range(2)]
    a.delete("/v1/keys/" + keys[0], {"reason": "tamper"})
    a.delete("/v1/credentials/" + creds[0])
    wait_checkpoint(a, head_seq(a))
    a.stop()
    return a, keys


def seq_where(a, action, kid):
    with db(a) as c:
        return c.execute("SELECT seq FROM audit WHERE action = ? AND kid = ?",
                         (action, kid)).fetchone()[0]


def export_after_restart(a):
    """The appliance started again on the (tampered) file: its export (exports do not
    validate) and the audit public key."""
    a.start()
    return export(a), audit_pem(a)


def test_editing_one_event_in_the_database_is_detected_at_its_seq(make_appliance, tmp_path):
    """End to end: a row edited in appliance.db reaches the export as it is (exports do not
    validate) and the offline verifier finds it at its seq. Every other tampering (another
    column, a deleted, swapped or reordered event, a rehashed chain, another key, a cut
    tail) is made on an export in tests/unit/test_audit_verify.c."""
    a, keys = tampered_appliance(make_appliance)
    target = seq_where(a, "key.created", keys[1])
    with db(a) as c:
        c.execute("UPDATE audit SET details = ? WHERE seq = ?",
                  ('{"bits":2048,"label":"innocent"}', target))
    text, pem = export_after_restart(a)
    why = assert_broken_at(tmp_path, text, pem, target)
    assert "hash does not match" in why


def test_cutting_the_tail_past_a_kept_checkpoint_is_detected_only_with_the_anchor(
        make_appliance, tmp_path):
    a = make_appliance(FAST)
    for i in range(6):
        a.create_key(label="tail-%d" % i)
    kept = wait_checkpoint(a, head_seq(a))
    pem = audit_pem(a)
    anchor_cp = checkpoints_of(kept)[-1]
    anchor = (anchor_cp["seq"], anchor_cp["hash"])
    assert anchor[0] >= 8
    # The auditor's copy verifies against the anchor it kept.
    assert assert_verifies(tmp_path, kept, pem, anchor)[1] >= anchor[0]
    a.stop()
    cut = anchor[0] - 4
    with db(a) as c:
        c.execute("DELETE FROM audit WHERE seq > ?", (cut,))
        c.execute("DELETE FROM audit_checkpoints WHERE seq > ?", (cut,))
    a.start()
    text = export(a)
    last = lines_of(text)
    assert max(l["seq"] for l in last) < anchor[0]
    why = assert_broken_at(tmp_path, text, pem, anchor[0], anchor)
    assert why.startswith("truncated")
    # Without the anchor nothing shows: the shorter chain is whole, and the appliance signs
    # its new head itself. This is the limit audit.h documents.
    n, s, _ = assert_verifies(tmp_path, text, pem)
    assert s < anchor[0] and n == s


def test_signd_provision_audit_verify_exit_codes_and_arguments(tmp_path):
    """The command's side (no appliance needed): a malformed --anchor or a file it cannot
    read exits 2 naming it; a verdict exits 1 with its one line. What the verifier finds in
    an export, and every anchor form, is tests/unit/test_audit_verify.c's."""
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key() \
        .public_bytes(serialization.Encoding.PEM,
                      serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    # export-0.jsonl and audit-0.pem
    assert verify(tmp_path, "", pem) == (1, "broken at seq 0: the export holds no event")
    rc, out = verify(tmp_path, "not json\n", pem)
    assert rc == 1 and out == "broken at seq 1: line 1 is not an export line", out
    for bad in ("12", "x:" + "0" * 64, "0:" + "0" * 64, "3:" + "0" * 63, "3:" + "A" * 64,
                "-3:" + "0" * 64, " 3:" + "0" * 64):
        p = subprocess.run([PROVISION, "audit-verify", str(tmp_path / "export-0.jsonl"),
                            str(tmp_path / "audit-0.pem"), "--anchor", bad],
                           capture_output=True, text=True)
        assert p.returncode == 2 and "--anchor must be SEQ:HASH" in p.stderr, (bad, p.stderr)
    p = subprocess.run([PROVISION, "audit-verify", str(tmp_path / "none.jsonl"),
                        str(tmp_path / "audit-0.pem")], capture_output=True, text=True)
    assert p.returncode == 2 and "none.jsonl" in p.stderr, p.stderr
    p = subprocess.run([PROVISION, "audit-verify", str(tmp_path / "export-0.jsonl"),
                        str(tmp_path / "none.pem")], capture_output=True, text=True)
    assert p.returncode == 2 and "none.pem" in p.stderr, p.stderr


# ---- checkpoints and the audit key -----------------------------------------------------------

def test_a_checkpoint_is_a_jws_by_the_audit_key_over_an_event_of_the_chain(make_appliance):
    a = make_appliance(FAST)
    make_history(a)
    text = wait_checkpoint(a, head_seq(a))
    doc = a.get("/v1/audit/key", auth=False).json()
    assert doc["kid"] == AUDIT_KID and doc["alg"] == "RS256"
    key = jwk.JWK(**doc["jwk"])
    assert doc["jwk"]["kid"] == AUDIT_KID and doc["jwk"]["use"] == "sig"
    # "pem" and "jwk" are the same public key, RSA-3072.
    assert jwk.JWK.from_pem(doc["pem"].encode()).thumbprint() == key.thumbprint()
    assert serialization.load_pem_public_key(doc["pem"].encode()).key_size == 3072
    by_seq = {e["seq"]: e for e in events(a)}
    cps = checkpoints_of(text)
    assert cps
    for cp in cps:
        t = jws.JWS()
        t.deserialize(cp["jws"])
        t.verify(key)
        assert t.jose_header == {"alg": "RS256", "kid": AUDIT_KID,
                                 "typ": "signd-audit-checkpoint+jwt"}
        payload = json.loads(t.payload)
        assert payload == {"hash": cp["hash"], "seq": cp["seq"], "time": cp["time"]}
        assert by_seq[payload["seq"]]["hash"] == payload["hash"]
    # A checkpoint does not verify with a client key.
    client = jwk.JWK(**a.get("/.well-known/jwks.json", auth=False).json()["keys"][0])
    with pytest.raises(Exception):
        t = jws.JWS()
        t.deserialize(cps[0]["jws"])
        t.verify(client)


def test_the_audit_key_cannot_be_used_or_managed_through_the_key_api(make_appliance, tmp_path):
    a = make_appliance(FAST)
    kid = a.create_key(label="client")["kid"]
    doc = a.get("/v1/audit/key", auth=False).json()
    r = a.post("/v1/keys/%s/sign" % AUDIT_KID_HEX, {"payload": b64u(b"forge me")})
    assert r.status_code in (404, 409), r.text
    r = a.post("/v1/tokens", {"kid": AUDIT_KID_HEX, "sub": "forged"})
    assert r.status_code in (404, 409), r.text
    # A checkpoint-shaped input is refused just the same.
    header = b64u(b'{"alg":"RS256","kid":"signd-audit-v1","typ":"signd-audit-checkpoint+jwt"}')
    r = a.post("/v1/keys/%s/sign" % AUDIT_KID_HEX,
               {"payload": b64u((header + "." + b64u(b'{"seq":1}')).encode())})
    assert r.status_code in (404, 409), r.text
    assert a.get("/v1/keys/" + AUDIT_KID_HEX).status_code == 404
    r = a.delete("/v1/keys/" + AUDIT_KID_HEX, {"reason": "try"})
    assert r.status_code == 404, r.text
    r = a.post("/v1/credentials", {"role": "signer", "kids": [AUDIT_KID_HEX]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_kid", r.text
    jwks = a.get("/.well-known/jwks.json", auth=False)
    # The client key alone (never the audit key; the publication key has its own route).
    assert [k["kid"] for k in jwks.json()["keys"]] == [kid]
    assert AUDIT_KID not in jwks.text and AUDIT_KID_HEX not in jwks.text
    assert doc["jwk"]["n"] not in jwks.text
    assert all(k["kid"] != AUDIT_KID_HEX for k in a.get("/v1/keys").json()["keys"])
    # None of that reached the trail as a change, and the key still signs checkpoints
    # (survives a restart and its reconcile).
    assert events(a, kid=AUDIT_KID_HEX) == []
    a.restart()
    assert a.get("/v1/audit/key", auth=False).json() == doc
    a.create_key(label="after")
    text = wait_checkpoint(a, head_seq(a))
    assert assert_verifies(tmp_path, text, doc["pem"])[2] == checkpoints_of(text)[-1]["seq"]


# ---- crash consistency -----------------------------------------------------------------------

def crash_and_recover(a, fault, request):
    """crash_at (conftest), then a clean restart without the fault."""
    a.crash_at(fault, request)
    a.restart()


def assert_no_change_without_its_event(a, tmp_path):
    """Every key row has its key.created event and every revocation its key.revoked, and
    no such event lacks its row; the whole exported chain verifies."""
    keys = a.get("/v1/keys").json()["keys"]
    created = {e["kid"]: e for e in events(a, action="key.created")}
    revoked = {e["kid"]: e for e in events(a, action="key.revoked")}
    assert len(created) == len(events(a, action="key.created"))
    assert len(revoked) == len(events(a, action="key.revoked"))
    assert set(created) == {k["kid"] for k in keys}
    assert set(revoked) == {k["kid"] for k in keys if k["state"] == "revoked"}
    for k in keys:
        if k["state"] == "revoked":
            assert revoked[k["kid"]]["details"]["revocation_seq"] == k["revocation_seq"]
            assert revoked[k["kid"]]["details"]["reason"] == k["reason"]
    text = wait_checkpoint(a, head_seq(a))
    n, last, _ = assert_verifies(tmp_path, text, audit_pem(a))
    assert n == last
    return keys


def test_a_kill_between_generating_and_committing_a_key_leaves_no_event_and_a_whole_chain(
        make_appliance, tmp_path):
    a = make_appliance(FAST)
    kept = a.create_key(label="kept")["kid"]
    crash_and_recover(a, "after_generate",
                      lambda: a.post("/v1/keys", {"label": "never acknowledged"}))
    keys = assert_no_change_without_its_event(a, tmp_path)
    assert [k["kid"] for k in keys] == [kept]
    assert all(e["details"]["label"] != "never acknowledged"
               for e in events(a, action="key.created"))
    # Reconcile destroyed the orphan, once, and said so as "system" before that run's start.
    evs = events(a)
    [orphan] = [e for e in evs if e["action"] == "key.orphan_destroyed"]
    assert orphan["actor"] == "system" and orphan["kid"] not in (kept, "")
    assert bare(orphan["details"]) == {"why": "on the token, never recorded in the registry"}
    assert events(a, kid=orphan["kid"]) == [orphan]
    later = [e["action"] for e in evs if e["seq"] > orphan["seq"]]
    assert later[0] == "appliance.started"
    assert [e for e in evs if e["action"] == "key.destroyed"] == []


def test_a_kill_after_a_revocation_commits_keeps_its_event(make_appliance, tmp_path):
    a = make_appliance(FAST)
    victim = a.create_key(label="victim")["kid"]
    crash_and_recover(a, "after_revoke_commit",
                      lambda: a.delete("/v1/keys/" + victim, {"reason": "compromised"}))
    assert a.get("/v1/keys/" + victim).json()["state"] == "revoked"
    assert_no_change_without_its_event(a, tmp_path)
    [ev] = events(a, action="key.revoked")
    assert ev["kid"] == victim and ev["actor"] == cred_id(a.admin)
    assert ev["details"]["reason"] == "compromised"
    # Its object survived the crash; reconcile destroyed it, once, as "system".
    evs = events(a, kid=victim)
    assert [e["action"] for e in evs] == ["key.created", "key.revoked", "key.destroyed"]
    assert evs[2]["actor"] == "system"
    assert bare(evs[2]["details"]) == {"why": "revoked, its object survived a crash"}
    assert events(a, action="key.orphan_destroyed") == []


def test_a_kill_during_concurrent_changes_leaves_no_change_without_its_event(make_appliance,
                                                                            tmp_path):
    a = make_appliance({**FAST, "worker_threads": 16})
    stop = threading.Event()
    acked_created, acked_revoked = set(), set()
    lock = threading.Lock()

    def churn(i):
        n = 0
        while not stop.is_set():
            try:
                r = a.post("/v1/keys", {"label": "churn-%d-%d" % (i, n)}, auth=a.admin)
                if r.status_code != 201:
                    continue
                kid = r.json()["kid"]
                with lock:
                    acked_created.add(kid)
                if n % 2 == 0:
                    r = a.delete("/v1/keys/" + kid, {"reason": "churn"}, auth=a.admin)
                    if r.status_code == 200:
                        with lock:
                            acked_revoked.add(kid)
                # Failures and signatures in flight too.
                a.get("/v1/keys", auth="sgd_%016x_" % n + "E" * 43)
                n += 1
            except requests.exceptions.RequestException:
                if stop.is_set():
                    return
                time.sleep(0.05)

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(churn, i) for i in range(6)]
        wait_for(lambda: len(acked_created) >= 12, timeout=60, message="12 keys created")
        stop.set()
        a.kill9()
        for f in futures:
            f.result(timeout=120)
    a.start()
    keys = assert_no_change_without_its_event(a, tmp_path)
    state = {k["kid"]: k["state"] for k in keys}
    # Whatever was acknowledged is there, with its event.
    assert acked_created <= set(state)
    assert all(state[k] == "revoked" for k in acked_revoked)
    # What reconcile destroyed is accounted for too: an orphan has no row, a destroyed
    # object belonged to a revoked key; each is recorded once.
    orphans = [e["kid"] for e in events(a, action="key.orphan_destroyed")]
    destroyed = [e["kid"] for e in events(a, action="key.destroyed")]
    assert len(set(orphans)) == len(orphans) and not set(orphans) & set(state)
    assert len(set(destroyed)) == len(destroyed)
    assert all(state.get(k) == "revoked" for k in destroyed)


# ---- one event per signature -------------------------------------------------------------------

EVERY = {**FAST, "audit_every_signature": "true"}


def test_every_signature_mode_records_each_token_before_answering(make_appliance, tmp_path):
    a = make_appliance(EVERY)
    kid = a.create_key(label="per-signature")["kid"]
    signer = cred_id(a.signer)
    for i in range(3):
        r = a.post("/v1/tokens", {"kid": kid, "sub": "user-%d" % i})
        assert r.status_code == 200, r.text
        tok = r.json()
        # No polling: the request returned only once its event was committed.
        last = events(a, action="sign")[-1]
        assert last["kid"] == kid and last["actor"] == signer
        signing_input = tok["token"].rsplit(".", 1)[0].encode()
        assert bare(last["details"]) == {"sha256": hashlib.sha256(signing_input).hexdigest(),
                                   "jti": tok["jti"]}
    assert len(events(a, action="sign")) == 3
    # A raw signature: the SHA-256 of the signed bytes, no jti.
    data = b"raw bytes to sign"
    assert a.post("/v1/keys/%s/sign" % kid, {"payload": b64u(data)}).status_code == 200
    last = events(a, action="sign")[-1]
    assert bare(last["details"]) == {"sha256": hashlib.sha256(data).hexdigest()}
    assert last["actor"] == signer and last["kid"] == kid
    text = wait_checkpoint(a, head_seq(a))
    assert_verifies(tmp_path, text, audit_pem(a))


def test_every_signature_mode_group_commits_concurrent_requests(make_appliance, tmp_path):
    a = make_appliance({**EVERY, "worker_threads": 32})
    kid = a.create_key(label="group")["kid"]
    before = head_seq(a)
    signers = [a.create_credential("signer", kids=[kid], label="s%d" % i)["secret"]
               for i in range(4)]

    def mint(i):
        secret = signers[i % len(signers)]
        r = a.post("/v1/tokens", {"kid": kid, "sub": "c%d" % i}, auth=secret)
        assert r.status_code == 200, r.text
        jti = r.json()["jti"]
        # Visible to the very next read, whoever else was committing at the same time.
        mine = [e for e in events(a, action="sign", kid=kid, actor=cred_id(secret),
                                  after=before) if e["details"]["jti"] == jti]
        assert len(mine) == 1, jti
        return jti

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        jtis = list(pool.map(mint, range(64)))
    recorded = [e["details"]["jti"] for e in events(a, action="sign", after=before)]
    assert sorted(recorded) == sorted(jtis) and len(set(jtis)) == 64
    text = wait_checkpoint(a, head_seq(a))
    n, last, _ = assert_verifies(tmp_path, text, audit_pem(a))
    assert n == last >= before + 64


def test_token_mints_are_counted_and_redeems_and_token_revocations_recorded_with_the_actor(
        make_appliance, tmp_path):
    """Token-level control in the trail: a revocable or single-use mint is counted like any
    other token (per kid and credential, not one event each); a redeem and a token
    revocation are each an event with the calling credential as actor, in the chain that
    still verifies."""
    a = make_appliance(FAST)
    kid = a.create_key()["kid"]
    redeemer = a.create_credential("redeemer")["secret"]
    before = head_seq(a)
    once = a.post("/v1/tokens", {"kid": kid, "single_use": True, "revocable": True})
    plain = a.post("/v1/tokens", {"kid": kid, "revocable": True})
    assert once.status_code == 200 and plain.status_code == 200
    r = a.post("/v1/tokens/redeem", {"token": once.json()["token"]}, auth=redeemer)
    assert r.status_code == 200 and r.json()["redeemed"] is True, r.text
    assert a.delete("/v1/tokens/" + plain.json()["jti"]).status_code == 200
    redeemed = wait_events(a, "token.redeemed", after=before)
    assert [e["actor"] for e in redeemed] == [cred_id(redeemer)]
    assert redeemed[0]["kid"] == kid
    assert redeemed[0]["details"]["jti"] == once.json()["jti"]
    revoked = wait_events(a, "token.revoked", after=before)
    assert [e["actor"] for e in revoked] == [cred_id(a.signer)]
    assert revoked[0]["details"]["jti"] == plain.json()["jti"]
    want = ({kid: 2}, {cred_id(a.signer): 2})
    wait_for(lambda: sum_counts(events(a, action="sign.counts", after=before)) == want,
             message="sign.counts to reach %r" % (want,))
    text = wait_checkpoint(a, head_seq(a))
    assert_verifies(tmp_path, text, audit_pem(a))


def test_the_keeper_refuses_to_sign_a_checkpoint_over_a_rewritten_history(make_appliance):
    """Anything that reaches keeper.sock (the front, or another process of its account) can
    rewrite the table and rehash the chain; the keeper walks the chain itself from the last
    checkpoint it signed, so it signs no checkpoint of the rewritten head."""
    from test_privsep import BAD_ARGUMENT, NO_CKR, Keeper
    a = make_appliance(FAST)
    keys = [a.create_key(label="rewrite-%d" % i)["kid"] for i in range(3)]
    wait_checkpoint(a, head_seq(a))
    target = seq_where(a, "key.created", keys[1])
    with db(a) as c:
        rows = c.execute("SELECT seq, time, actor, action, kid, details, prev_hash FROM audit"
                         " WHERE seq >= ? ORDER BY seq", (target,)).fetchall()
        prev = rows[0][6]
        for seq, t, actor, action, kid, details, _ in rows:
            d = json.loads(details)
            if seq == target:
                d["label"] = "innocent"
            new = chain_hash(prev, {"seq": seq, "time": t, "actor": actor, "action": action,
                                    "kid": kid, "details": d})
            c.execute("UPDATE audit SET details = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                      (json.dumps(d, sort_keys=True, separators=(",", ":")), prev, new, seq))
            prev = new
        head = c.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
        assert head == rows[-1][0]
    payload = json.dumps({"hash": prev, "seq": head, "time": int(time.time())},
                         separators=(",", ":")).encode()
    header = b64u(b'{"alg":"RS256","kid":"signd-audit-v1","typ":"signd-audit-checkpoint+jwt"}')
    k = Keeper(a)
    try:
        assert k.request(9, (header + "." + b64u(payload)).encode()) == (9, BAD_ARGUMENT, NO_CKR)
    finally:
        k.close()
    # The refusal is a security event in the keeper's log, naming the peer: this process.
    wait_for(lambda: "security: refused an audit checkpoint from pid %d" % os.getpid()
             in a.read_log(), message="the keeper's log line")


def test_ctrl_c_to_the_whole_process_group_still_signs_the_last_checkpoint(make_appliance):
    """A terminal's Ctrl-C (make run) sends SIGINT to the supervisor, the keeper and the
    front at once. Only the supervisor acts on it: the front stops first and its last
    checkpoint is signed by the keeper, still running; nothing restarts, all exit 0."""
    a = make_appliance(FAST)
    a.create_key()
    kids = a.children()
    os.killpg(a.proc.pid, signal.SIGINT)
    assert a.proc.wait(timeout=30) == 0, a.read_log()[-3000:]
    for role, pid in kids.items():
        deadline = time.monotonic() + 10
        while alive_pid(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive_pid(pid), role
    log = a.read_log()
    assert "checkpoint failed" not in log and "restarting" not in log, log[-3000:]
    a.start()
    stopped = [e for e in events(a) if e["action"] == "appliance.stopped"]
    assert len(stopped) == 1
    assert stopped[0]["seq"] in [c["seq"] for c in checkpoints_of(export(a))]
