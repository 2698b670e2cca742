"""Cluster mode (issue 20): three nodes on one PostgreSQL server and one SoftHSM2 token,
behind HAProxy, provisioned as `make cluster` provisions them (cluster.py), and the
semantics that must hold across nodes (issue 20, item 2).

One cluster serves the module (its nodes were started at the same moment on a fresh
database and token, which is what the create-once test looks at, so that test runs first);
the key-limit test has a cluster of its own with a small max_active_keys. Latency bounds
are generous (the machine is shared): the tight bars (1 s, 100 ms) are the bench's; each
assertion message carries the latency measured.

Skipped, with the reason, only while the store's PostgreSQL backend is the stub
(appliance/store/sdb_pg.c answers every open "the PostgreSQL backend is not built"); any
other failure to start is a failure."""
import base64
import json
import os
import signal
import subprocess
import threading
import time

import pytest
import requests

from cluster import Cluster
from test_audit import PROVISION
from test_privsep import KEY_NOT_FOUND, NO_CKR, OP_SIGN, Keeper, verify_rs256
from test_revocation_feed import Stream
from test_token_control import payload_of, set_bits, status_list

# What the issue asks for is 1 s (JWKS) and 100 ms (revocation); these are a shared
# machine's bounds, the measured figure is in every message.
BOUND = 5.0


def start_cluster(**kw):
    return Cluster(nodes=3, **kw).start()


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster(haproxy=True)
    c.redeemer = c.node(1).create_credential("redeemer", label="cluster")["secret"]
    yield c
    c.stop()


def code_of(r):
    try:
        return r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def poll(what, bound=BOUND, interval=0.02):
    """(result, seconds) of the first truthy what() within bound; (last result, seconds)
    when it never was."""
    t0 = time.monotonic()
    while True:
        got = what()
        took = time.monotonic() - t0
        if got or took > bound:
            return got, took
        time.sleep(interval)


def concurrently(calls):
    """Runs each zero-argument call in a thread of its own, released together; their
    results (an exception's repr for one that raised), in order."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(i):
        barrier.wait(timeout=60)
        try:
            results[i] = calls[i]()
        except Exception as e:  # reported by the caller's assertion
            results[i] = repr(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def fresh_post(node, path, body, secret):
    """A POST on a connection of its own (threads do not share a requests.Session)."""
    with requests.Session() as s:
        r = s.post(node.url + path, json=body, headers=node.auth(secret), verify=node.cacert,
                   timeout=120)
        return r.status_code, r.json()


def fresh_delete(node, path, body, secret):
    with requests.Session() as s:
        r = s.delete(node.url + path, json=body, headers=node.auth(secret), verify=node.cacert,
                     timeout=120)
        return r.status_code, r.json()


def node_name(node):
    return node.conf_value("node_name")


def psql(c, sql):
    """One query on the cluster's database, as root (cluster.sh maps root to the role)."""
    out = subprocess.run(["psql", c.pg.uri, "-AtXc", sql], check=True, capture_output=True,
                         text=True, timeout=30).stdout
    return [line.split("|") for line in out.splitlines() if line]


# ---- created once -------------------------------------------------------------------------

def test_publication_audit_and_jti_keys_are_created_once_when_all_nodes_start_together(cluster):
    """The module's cluster started its three nodes at the same moment on a fresh database
    and token (Cluster.start): each made-on-first-use key exists once."""
    pubs = [cluster.node(i).get("/v1/revocations/key", auth=False).json() for i in (1, 2, 3)]
    assert len({json.dumps(p["jwk"], sort_keys=True) for p in pubs}) == 1, pubs
    audits = [cluster.node(i).get("/v1/audit/key", auth=False).json() for i in (1, 2, 3)]
    assert len({a["pem"] for a in audits}) == 1, audits
    # The feed each node signs verifies with the one publication key (not a key of its own).
    from test_revocation_feed import open_feed
    for i in (1, 2, 3):
        open_feed(cluster.node(i), key=pubs[0])
    # The jti HMAC key: a revocable token minted on node 1 is recognised as this
    # appliance's by node 2 (redeem) and node 3 (revoke by jti: 404 token_not_found if its
    # MAC did not verify under node 3's key).
    kid = cluster.node(1).create_key(label="once")["kid"]
    r = cluster.node(1).post("/v1/tokens", {"kid": kid, "sub": "once", "revocable": True})
    assert r.status_code == 200, r.text
    minted = r.json()
    r = cluster.node(2).post("/v1/tokens/redeem", {"token": minted["token"]},
                             auth=cluster.redeemer)
    assert r.status_code == 200, r.text
    r = cluster.node(3).delete("/v1/tokens/" + minted["jti"], auth=cluster.node(3).admin)
    assert r.status_code == 200, r.text
    assert (r.json()["list"], r.json()["idx"]) == (minted["status"]["list"],
                                                   minted["status"]["idx"])


# ---- keys across nodes --------------------------------------------------------------------

def test_three_nodes_are_ready_and_a_key_made_on_one_is_listed_by_another(cluster):
    for i in (1, 2, 3):
        r = cluster.node(i).get("/readyz", auth=False)
        assert r.status_code == 200 and r.json()["status"] == "ready", (i, r.text)
    assert cluster.balancer.get("/readyz", auth=False).status_code == 200
    kid = cluster.node(1).create_key(label="made-on-node1")["kid"]
    listed, took = poll(lambda: kid in [k["kid"] for k in cluster.node(2).get("/v1/keys")
                                        .json()["keys"]])
    assert listed, "node 2 did not list the key within %.1f s" % took


def test_a_key_made_on_a_signs_and_mints_on_b_at_once_and_is_in_every_jwks(cluster):
    key = cluster.node(1).create_key(label="a-to-b")
    kid = key["kid"]
    t0 = time.monotonic()
    # At once: no wait between the create's answer and these.
    r = cluster.node(2).post("/v1/keys/%s/sign" % kid, {"payload": b64u(b"cluster")})
    assert r.status_code == 200, r.text
    sig = r.json()["signature"]
    verify_rs256(key["jwk"], base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)), b"cluster")
    r = cluster.node(3).post("/v1/tokens", {"kid": kid, "sub": "b"})
    assert r.status_code == 200, r.text
    assert payload_of(r.json()["token"])["sub"] == "b"
    for i in (1, 2, 3):
        def in_jwks(i=i):
            keys = cluster.node(i).get("/.well-known/jwks.json", auth=False).json()["keys"]
            return kid in [k["kid"] for k in keys]
        found, _ = poll(in_jwks)
        took = time.monotonic() - t0
        assert found, "node %d's JWKS lacks the key after %.3f s" % (i, took)
        print("jwks on node %d: %.3f s after the create" % (i, took))


def test_a_key_made_on_a_node_mints_there_at_once_every_time(cluster):
    """The node's own keeper knows the key as soon as the create's 201 is out: on
    PostgreSQL its change note may reach the keeper's connection a moment after the commit,
    so a kid the keeper's set lacks is read from the database itself (keeperd.c). The
    bench saw 6 to 23 refusals per 100 fresh keys before."""
    a = cluster.node(1)
    refused = []
    for i in range(20):
        kid = a.create_key(label="own-%d" % i)["kid"]
        r = a.post("/v1/tokens", {"kid": kid, "sub": "own"})
        if r.status_code != 200:
            refused.append((kid, r.status_code, r.text))
    assert refused == [], refused


def test_a_key_revoked_on_any_node_is_refused_by_every_node_and_streamed_to_all(cluster):
    kid = cluster.node(1).create_key(label="to-revoke")["kid"]
    for i in (1, 2, 3):  # usable everywhere first: the refusal below is the revocation's
        r = cluster.node(i).post("/v1/tokens", {"kid": kid, "sub": "before"})
        assert r.status_code == 200, (i, r.text)
    # Each node's keeper, spoken to raw as its front does: its own refusal, not the front's.
    keepers = {i: Keeper(cluster.node(i)) for i in (1, 3)}
    message = b"keeper of another node"
    streams = [Stream(cluster.node(i)) for i in (1, 2, 3)]
    try:
        for i, k in keepers.items():
            assert k.request(OP_SIGN, bytes.fromhex(kid) + message)[:2] == (OP_SIGN, 0), i
        for s in streams:
            assert s.status == 200
            s.wait(lambda st: len(st.events) >= 1)
        r = cluster.node(2).delete("/v1/keys/" + kid, {"reason": "cluster"})
        assert r.status_code == 200, r.text
        t0 = time.monotonic()
        seq = r.json()["revocation_seq"] if "revocation_seq" in r.json() else None
        for i, k in keepers.items():
            def keeper_refuses(k=k):
                got = k.request(OP_SIGN, bytes.fromhex(kid) + message)
                return got == (OP_SIGN, KEY_NOT_FOUND, NO_CKR) or None
            ok, took = poll(keeper_refuses)
            assert ok, "node %d's keeper still signs with the revoked kid after %.3f s" % (i, took)
            print("revocation refused by node %d's keeper: %.3f s" % (i, time.monotonic() - t0))
        for i in (1, 3):
            def refused(i=i):
                m = cluster.node(i).post("/v1/tokens", {"kid": kid, "sub": "after"})
                s = cluster.node(i).post("/v1/keys/%s/sign" % kid, {"payload": b64u(b"x")})
                return ((m.status_code, code_of(m)) == (409, "key_revoked") and
                        (s.status_code, code_of(s)) == (409, "key_revoked")) or None
            ok, took = poll(refused)
            assert ok, "node %d still mints or signs with the revoked kid after %.3f s" % (i, took)
            print("revocation refused on node %d: %.3f s" % (i, time.monotonic() - t0))
        for n, s in enumerate(streams, 1):
            s.wait(lambda st: any(json.loads(e["data"]).get("kid") == kid
                                  for e in st.revocations()), timeout=BOUND)
            ev = [e for e in s.revocations() if json.loads(e["data"])["kid"] == kid][0]
            assert ev["id"] == str(json.loads(ev["data"])["seq"]), ev
            if seq is not None:
                assert json.loads(ev["data"])["seq"] == seq, (n, ev)
    finally:
        for s in streams:
            s.close()
        for k in keepers.values():
            k.close()


def test_revocations_from_all_nodes_take_one_global_sequence_without_gap_or_duplicate(cluster):
    nodes = [cluster.node(i) for i in (1, 2, 3)]
    kids = [r["kid"] if isinstance(r, dict) else pytest.fail(r) for r in concurrently(
        [lambda n=n: nodes[n % 3].create_key(label="seq-%d" % n) for n in range(6)])]
    results = concurrently([lambda n=n, kid=kid: fresh_delete(
        nodes[n % 3], "/v1/keys/" + kid, {"reason": "seq"}, nodes[0].admin) for n, kid in enumerate(kids)])
    assert all(isinstance(x, tuple) and x[0] == 200 for x in results), results
    seqs = sorted(x[1]["revocation_seq"] for x in results)
    assert len(set(seqs)) == len(seqs), seqs

    def full_list(node):
        doc = node.get("/v1/revocations", auth=False).json()
        have = {e["kid"] for e in doc["revoked"]}
        return doc if set(kids) <= have else None

    views = []
    for node in nodes:
        doc, took = poll(lambda node=node: full_list(node))
        assert doc, "node %s lacks revocations after %.1f s" % (node.port, took)
        views.append(doc)
    for doc in views:
        all_seqs = sorted([e["seq"] for e in doc["revoked"]] +
                          [e["seq"] for e in doc.get("subjects", [])])
        assert all_seqs == list(range(1, doc["sequence"] + 1)), doc
        assert set(seqs) <= set(all_seqs)
    assert len({json.dumps(d["revoked"], sort_keys=True) for d in views}) == 1, views


def test_a_credential_revoked_on_one_node_stops_authenticating_on_all(cluster):
    made = cluster.node(1).create_credential("signer", kids="all", label="to-revoke")
    kid = cluster.node(1).create_key(label="cred")["kid"]
    for i in (1, 2, 3):
        def works(i=i):
            r = cluster.node(i).post("/v1/tokens", {"kid": kid}, auth=made["secret"])
            return r.status_code == 200 or None
        ok, took = poll(works)
        assert ok, "node %d refuses the new credential after %.1f s" % (i, took)
    r = cluster.node(3).delete("/v1/credentials/" + made["id"])
    assert r.status_code == 200, r.text
    t0 = time.monotonic()
    for i in (1, 2, 3):
        def refused(i=i):
            r = cluster.node(i).post("/v1/tokens", {"kid": kid}, auth=made["secret"])
            return (r.status_code, code_of(r)) == (401, "unauthorized") or None
        ok, took = poll(refused)
        assert ok, "node %d still takes the revoked credential after %.3f s" % (i, took)
        print("credential refused on node %d: %.3f s" % (i, time.monotonic() - t0))


# ---- single use ---------------------------------------------------------------------------

def test_fifty_concurrent_redeems_over_three_nodes_let_exactly_one_through(cluster):
    minted = cluster.node(1).post("/v1/tokens", {"sub": "once", "single_use": True})
    assert minted.status_code == 200, minted.text
    token = minted.json()["token"]
    nodes = [cluster.node(i) for i in (1, 2, 3)]
    results = concurrently([lambda n=n: fresh_post(nodes[n % 3], "/v1/tokens/redeem",
                                                   {"token": token}, cluster.redeemer)
                            for n in range(50)])
    ok = [doc for x in results if isinstance(x, tuple) for status, doc in [x] if status == 200]
    used = [x for x in results if isinstance(x, tuple) and x[0] == 409 and
            x[1]["error"]["code"] == "token_already_used"]
    assert len(ok) == 1 and len(used) == 49, [x for x in results
                                              if not (isinstance(x, tuple) and x[0] == 409)]
    assert ok[0]["redeemed"] is True


def test_a_token_redeemed_on_a_stays_used_on_b_across_bs_restart(cluster):
    minted = cluster.node(1).post("/v1/tokens", {"sub": "restart", "single_use": True})
    assert minted.status_code == 200, minted.text
    token = minted.json()["token"]
    r = cluster.node(1).post("/v1/tokens/redeem", {"token": token}, auth=cluster.redeemer)
    assert r.status_code == 200 and r.json()["redeemed"] is True, r.text
    cluster.restart(2)
    cluster.wait_ready(2)
    r = cluster.node(2).post("/v1/tokens/redeem", {"token": token}, auth=cluster.redeemer)
    assert (r.status_code, code_of(r)) == (409, "token_already_used"), r.text


# ---- status lists -------------------------------------------------------------------------

def test_no_status_index_is_handed_out_twice_and_a_revocation_on_a_is_served_by_c(cluster):
    nodes = [cluster.node(i) for i in (1, 2, 3)]
    results = concurrently([lambda n=n: fresh_post(nodes[n % 3], "/v1/tokens",
                                                   {"sub": "idx-%d" % n, "revocable": True},
                                                   nodes[n % 3].signer)
                            for n in range(60)])
    assert all(isinstance(x, tuple) and x[0] == 200 for x in results), results[:3]
    claims = [payload_of(doc["token"])["status"]["status_list"] for _, doc in results]
    places = [(c["uri"], c["idx"]) for c in claims]
    assert len(set(places)) == len(places), sorted(places)
    assert [(d["status"]["uri"], d["status"]["idx"]) for _, d in results] == places
    victim = results[0][1]
    r = nodes[0].delete("/v1/tokens/" + victim["jti"], auth=nodes[0].admin)
    assert r.status_code == 200, r.text
    t0 = time.monotonic()

    def set_on_c():
        _, _, bits, _ = status_list(nodes[2], victim["status"]["uri"])
        return victim["status"]["idx"] in set_bits(bits)
    ok, took = poll(set_on_c, interval=0.1)
    assert ok, "node 3's status list lacks the bit after %.3f s" % took
    print("status bit on node 3: %.3f s" % (time.monotonic() - t0))
    # Node 2 hears the note on its own connection: node 3's having it says nothing of
    # node 2's (seen in CI: node 3 at 12 ms, node 2 still redeeming). Each node within the
    # bound, measured.
    t0 = time.monotonic()

    def refused_on_b():
        r = nodes[1].post("/v1/tokens/redeem", {"token": victim["token"]}, auth=cluster.redeemer)
        # (a Response is falsy when not ok: the answer itself is what poll sees)
        return (r.status_code, code_of(r)) == (409, "token_revoked")
    refused, took = poll(refused_on_b, interval=0.02)
    assert refused, "node 2 still redeems the revoked token after %.3f s" % took
    print("redeem refused on node 2: %.3f s" % took)


# ---- audit --------------------------------------------------------------------------------

def test_one_audit_chain_for_the_cluster_names_each_node_and_verifies_from_any(cluster,
                                                                             tmp_path):
    from test_audit import assert_verifies
    names = {node_name(cluster.node(i)) for i in (1, 2, 3)}
    assert len(names) == 3, names
    events = cluster.node(2).audit_events()
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    said = {e["details"].get("node") for e in events}
    assert names <= said, said
    created = [e for e in events if e["action"] == "key.created"]
    assert {e["details"]["node"] for e in created} >= {node_name(cluster.node(1))}
    pem = cluster.node(1).get("/v1/audit/key", auth=False).json()["pem"]
    for i in (1, 2, 3):
        r = cluster.node(i).get("/v1/audit/export")
        assert r.status_code == 200, r.text
        n, last, checkpoint = assert_verifies(tmp_path, r.text, pem)
        assert last >= len(events), (i, n, last)
        # Node 2's clean stop (the restart test before) signed one at least, with the
        # cluster's one audit key.
        assert checkpoint > 0, (i, n, last)


# ---- reconcile ----------------------------------------------------------------------------

def test_reconcile_on_b_leaves_a_key_node_a_is_still_creating(cluster):
    """Node 1's create is caught between the token's generate and the row (its front is
    killed there, SIGND_FAULT=after_generate, with its supervisor stopped so that its own
    reconcile cannot run): the object is in the token, the pending record names node1.
    Node 2 restarts meanwhile: its reconcile must leave the object. Node 1, restarted
    after its crash, destroys it (its own record from before its start), which also shows
    the object was still there."""
    a, b = cluster.node(1), cluster.node(2)
    a.restart(env_extra={"SIGND_FAULT": "after_generate"})
    before = {row[0] for row in psql(cluster, "SELECT kid FROM pending_keys")}
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(requests.exceptions.ConnectionError):
            a.post("/v1/keys", {"bits": 2048, "label": "caught"}, timeout=60)
        rows = [r for r in psql(cluster, "SELECT kid, node FROM pending_keys")
                if r[0] not in before]
        assert len(rows) == 1 and rows[0][1] == node_name(a), rows
        kid = rows[0][0]
        cluster.restart(2)
        cluster.wait_ready(2)
        assert "destroyed kid %s" % kid not in b.read_log()
        assert [r[0] for r in psql(cluster, "SELECT kid FROM pending_keys")].count(kid) == 1
    finally:
        a.kill9()  # SIGKILL reaches a stopped process
    a.start()
    cluster.wait_ready(1)

    def destroyed():
        return [e for e in b.audit_events(kid=kid) if e["action"] == "key.orphan_destroyed"]
    evs, took = poll(destroyed, bound=30, interval=0.2)
    assert len(evs) == 1 and evs[0]["details"]["node"] == node_name(a), evs
    assert psql(cluster, "SELECT kid FROM pending_keys WHERE kid = '%s'" % kid) == []


# ---- the key limit ------------------------------------------------------------------------

def test_the_key_limit_holds_cluster_wide_under_concurrent_creates_on_all_nodes():
    """max_active_keys is 12 here so the test stays short: the 1,000-key limit is the same
    code path with a bigger number (the single-node 1,000-key test is in
    test_crash_and_limits.py)."""
    c = start_cluster(extra_conf={"max_active_keys": 12})
    try:
        nodes = [c.node(i) for i in (1, 2, 3)]
        results = concurrently([lambda n=n: fresh_post(nodes[n % 3], "/v1/keys",
                                                       {"bits": 2048, "label": "lim-%d" % n},
                                                       nodes[0].admin)
                                for n in range(18)])
        made = [doc["kid"] for x in results if isinstance(x, tuple)
                for status, doc in [x] if status == 201]
        full = [x for x in results if isinstance(x, tuple) and x[0] == 409 and
                x[1]["error"]["code"] == "key_limit_reached"]
        assert len(made) == 12 and len(full) == 6, results
        for node in nodes:
            def active(node=node):
                keys = node.get("/v1/keys?state=active").json()["keys"]
                return sorted(k["kid"] for k in keys) == sorted(made) or None
            ok, took = poll(active)
            assert ok, "node %d does not list the 12 keys after %.1f s" % (node.port, took)
        r = nodes[2].post("/v1/keys", {"bits": 2048, "label": "one-too-many"})
        assert (r.status_code, code_of(r)) == (409, "key_limit_reached"), r.text
    finally:
        c.stop()
