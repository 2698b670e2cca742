"""Key rotation, black-box over HTTPS against a real SoftHSM2 token.

POST /v1/keys/{kid}/rotate makes a successor and leaves the old key retiring: still in the
JWKS (tokens already out keep verifying, checked with python3-jwcrypto against the fetched
JWKS), signing nothing, and revoked by the appliance at its retire_at, across restarts too.
"""
import base64
import json
import time

import pytest
from jwcrypto import jwk, jwt

def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rotate(a, kid, body=None, **kw):
    return a.post("/v1/keys/%s/rotate" % kid, body if body is not None else {}, **kw)


def rotated(a, kid, **body):
    r = rotate(a, kid, body)
    assert r.status_code == 201, r.text
    return r.json()


def jwks(a):
    return a.get("/.well-known/jwks.json", auth=False).json()


def jwks_kids(a):
    return {k["kid"] for k in jwks(a)["keys"]}


def verify(a, token):
    """The token's claims when it verifies against the JWKS the appliance serves now."""
    keyset = jwk.JWKSet.from_json(json.dumps(jwks(a)))
    return json.loads(jwt.JWT(jwt=token, key=keyset, algs=["RS256"]).claims)


def state_of(a, kid):
    return a.get("/v1/keys/" + kid).json()


def wait_revoked(a, kid, deadline):
    """Polls kid until it is revoked or time.time() passes deadline; returns its record."""
    while True:
        k = state_of(a, kid)
        if k["state"] == "revoked" or time.time() > deadline:
            return k
        time.sleep(0.2)


def audit_events(a, kid, action):
    r = a.get("/v1/audit?kid=%s&action=%s" % (kid, action))
    assert r.status_code == 200, r.text
    return r.json()["events"]


def reconcile_counts(log):
    import re
    lines = re.findall(r"reconcile: (\d+) orphan objects destroyed, (\d+) revoked objects "
                       r"destroyed, (\d+) keys marked broken", log)
    assert lines, log
    return tuple(int(x) for x in lines[-1])


def test_rotate_returns_the_successor_and_the_old_key_becomes_retiring(appliance):
    old = appliance.create_key(label="web-tokens")
    before = int(time.time())
    r = rotate(appliance, old["kid"], {"grace_seconds": 600})
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["kid"] != old["kid"] and len(new["kid"]) == 32
    assert r.headers["Location"] == "/v1/keys/" + new["kid"]
    assert new["state"] == "active" and new["bits"] == old["bits"]
    assert new["label"] == "web-tokens"  # the old key's, when the request names none
    assert new["predecessor"] == old["kid"] and "successor" not in new
    assert new["jwk"]["kid"] == new["kid"] and new["pem"].startswith("-----BEGIN PUBLIC KEY")
    prev = new["predecessor_key"]
    assert prev["kid"] == old["kid"] and prev["state"] == "retiring"
    assert prev["successor"] == new["kid"]
    assert before + 600 <= prev["retire_at"] <= int(time.time()) + 600
    # The same as GET shows them, and the listing filters on the new state.
    assert state_of(appliance, old["kid"]) == prev
    got = state_of(appliance, new["kid"])
    assert got["predecessor"] == old["kid"] and got["state"] == "active"
    retiring = appliance.get("/v1/keys?state=retiring").json()["keys"]
    assert old["kid"] in [k["kid"] for k in retiring]
    assert all(k["state"] == "retiring" for k in retiring)
    assert old["kid"] not in [k["kid"] for k in
                              appliance.get("/v1/keys?state=active").json()["keys"]]


def test_during_the_grace_old_tokens_verify_and_new_tokens_use_the_successor(appliance):
    old = appliance.create_key(label="grace")
    early = appliance.post("/v1/tokens", {"kid": old["kid"], "sub": "before", "ttl": 600})
    assert early.status_code == 200, early.text
    new = rotated(appliance, old["kid"], grace_seconds=600)
    # Both keys are published: the old one for the tokens already out.
    assert {old["kid"], new["kid"]} <= jwks_kids(appliance)
    assert verify(appliance, early.json()["token"])["sub"] == "before"
    # A token asked for without kid is signed by the newest active key: the successor,
    # never the retiring one.
    late = appliance.post("/v1/tokens", {"sub": "after"})
    assert late.status_code == 200, late.text
    assert late.json()["kid"] == new["kid"]
    assert verify(appliance, late.json()["token"])["sub"] == "after"


def test_a_retiring_kid_signs_nothing(appliance):
    old = appliance.create_key()
    rotated(appliance, old["kid"], grace_seconds=600)
    s = appliance.post("/v1/keys/%s/sign" % old["kid"], {"payload": b64u(b"x")})
    assert s.status_code == 409 and s.json()["error"]["code"] == "key_retiring", s.text
    t = appliance.post("/v1/tokens", {"kid": old["kid"], "sub": "x"})
    assert t.status_code == 409 and t.json()["error"]["code"] == "key_retiring", t.text


def test_at_the_end_of_the_grace_the_old_kid_is_revoked_published_and_destroyed(make_appliance):
    a = make_appliance()
    old = a.create_key(label="short")
    early = a.post("/v1/tokens", {"kid": old["kid"], "sub": "early", "ttl": 600}).json()["token"]
    new = rotated(a, old["kid"], grace_seconds=3)
    retire_at = new["predecessor_key"]["retire_at"]
    assert verify(a, early)["sub"] == "early"
    seq_before = a.get("/v1/revocations", auth=False).json()["sequence"]

    k = wait_revoked(a, old["kid"], retire_at + 5)
    assert k["state"] == "revoked", k
    assert k["reason"] == "rotated" and retire_at <= k["revoked_at"] <= retire_at + 2
    assert k["successor"] == new["kid"] and "retire_at" not in k
    feed = a.get("/v1/revocations", auth=False).json()
    assert feed["sequence"] == seq_before + 1
    assert [(e["kid"], e["reason"]) for e in feed["revoked"]] == [(old["kid"], "rotated")]
    assert old["kid"] not in jwks_kids(a) and new["kid"] in jwks_kids(a)
    with pytest.raises(Exception):
        verify(a, early)  # its key is gone from the JWKS: verifiers drop the old tokens
    s = a.post("/v1/keys/%s/sign" % old["kid"], {"payload": b64u(b"x")})
    assert s.status_code == 409 and s.json()["error"]["code"] == "key_revoked"
    assert a.post("/v1/tokens", {"sub": "x"}).json()["kid"] == new["kid"]

    # Recorded: the rotation by the admin, the revocation by the scheduler.
    admin_id = a.admin[4:20]
    [ev] = audit_events(a, old["kid"], "key.rotated")
    assert ev["actor"] == admin_id
    details = {k: v for k, v in ev["details"].items() if k != "node"}  # the node appending it
    assert details == {"successor": new["kid"], "retire_at": retire_at}
    [ev] = audit_events(a, new["kid"], "key.created")
    assert ev["details"]["predecessor"] == old["kid"] and ev["actor"] == admin_id
    [ev] = audit_events(a, old["kid"], "key.revoked")
    assert ev["actor"] == "system:rotation" and ev["details"]["reason"] == "rotated"

    # The private key was destroyed at once: the next start finds no revoked object left.
    a.restart()
    assert reconcile_counts(a.read_log()) == (0, 0, 0)
    assert state_of(a, old["kid"])["state"] == "revoked"


def test_a_grace_that_ends_while_the_appliance_is_down_is_revoked_on_start(make_appliance):
    a = make_appliance()
    old = a.create_key()
    new = rotated(a, old["kid"], grace_seconds=4)
    retire_at = new["predecessor_key"]["retire_at"]
    a.stop()
    while time.time() < retire_at + 1:
        time.sleep(0.2)
    a.start()
    # Revoked before the appliance served its first request: no polling needed.
    k = state_of(a, old["kid"])
    assert k["state"] == "revoked" and k["reason"] == "rotated", k
    assert old["kid"] not in jwks_kids(a)
    feed = a.get("/v1/revocations", auth=False).json()
    assert old["kid"] in [e["kid"] for e in feed["revoked"]]
    assert reconcile_counts(a.read_log()) == (0, 0, 0)  # the scheduler, not reconcile
    a.restart()
    assert reconcile_counts(a.read_log()) == (0, 0, 0)  # and its object is gone
    assert state_of(a, new["kid"])["state"] == "active"


def test_a_restart_during_the_grace_keeps_the_key_retiring_until_its_retire_at(make_appliance):
    a = make_appliance()
    old = a.create_key()
    new = rotated(a, old["kid"], grace_seconds=10)
    retire_at = new["predecessor_key"]["retire_at"]
    a.restart()
    k = state_of(a, old["kid"])
    if time.time() < retire_at - 1:  # the restart took less than the grace, as it should
        assert k["state"] == "retiring" and k["retire_at"] == retire_at, k
        assert old["kid"] in jwks_kids(a)
    k = wait_revoked(a, old["kid"], retire_at + 5)
    assert k["state"] == "revoked" and k["reason"] == "rotated", k
    assert k["revoked_at"] >= retire_at


def test_a_signer_scoped_to_the_old_kid_may_use_its_successors(appliance):
    old = appliance.create_key(label="app-A")
    other = appliance.create_key(label="app-B")
    scoped = appliance.create_credential("signer", kids=[old["kid"]])["secret"]
    first = rotated(appliance, old["kid"], grace_seconds=600)
    second = rotated(appliance, first["kid"], grace_seconds=600)  # two rotations deep

    for kid in (second["kid"],):
        r = appliance.post("/v1/keys/%s/sign" % kid, {"payload": b64u(b"x")}, auth=scoped)
        assert r.status_code == 200, r.text
        r = appliance.post("/v1/tokens", {"kid": kid, "sub": "s"}, auth=scoped)
        assert r.status_code == 200, r.text
    # Without kid: the newest active key of its lineage, not the appliance's newest.
    r = appliance.post("/v1/tokens", {"sub": "s"}, auth=scoped)
    assert r.status_code == 200 and r.json()["kid"] == second["kid"], r.text
    assert verify(appliance, r.json()["token"])["sub"] == "s"
    # The keys in between are retiring: in scope, but they sign nothing.
    r = appliance.post("/v1/tokens", {"kid": first["kid"]}, auth=scoped)
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_retiring", r.text
    # Scope does not spread to unrelated keys, nor backwards from a successor.
    r = appliance.post("/v1/tokens", {"kid": other["kid"]}, auth=scoped)
    assert r.status_code == 403 and r.json()["error"]["code"] == "kid_not_allowed"
    newer_only = appliance.create_credential("signer", kids=[second["kid"]])["secret"]
    r = appliance.post("/v1/keys/%s/sign" % old["kid"], {"payload": "eA"}, auth=newer_only)
    assert r.status_code == 403 and r.json()["error"]["code"] == "kid_not_allowed"


def test_rotate_errors_have_stable_codes(appliance):
    key = appliance.create_key()
    # Unknown kids, the appliance's own service keys (audit, publication) among them: they
    # have no registry row and are never rotated.
    for kid in ("0" * 32, b"signd-audit-v1\0\0".hex(), b"signd-publish-v1".hex()):
        r = rotate(appliance, kid)
        assert r.status_code == 404 and r.json()["error"]["code"] == "key_not_found", r.text
    r = rotate(appliance, "NOTAKID")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_kid"
    for body, code in [({"grace_seconds": -1}, "out_of_range"),
                       ({"grace_seconds": 31536001}, "out_of_range"),
                       ({"grace_seconds": "60"}, "wrong_type"),
                       ({"label": "tab\there"}, "invalid_label"),
                       ({"bits": 4096}, "unknown_field")]:
        r = rotate(appliance, key["kid"], body)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, (body, r.text)
    assert state_of(appliance, key["kid"])["state"] == "active"  # nothing happened

    new = rotated(appliance, key["kid"], grace_seconds=600)
    r = rotate(appliance, key["kid"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_retiring", r.text
    assert appliance.delete("/v1/keys/" + key["kid"], {"reason": "early"}).status_code == 200
    r = rotate(appliance, key["kid"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_revoked", r.text
    # A retiring key revoked early by DELETE: its successor is untouched.
    assert state_of(appliance, new["kid"])["state"] == "active"

    auditor = appliance.create_credential("auditor")["secret"]
    for who in (appliance.signer, auditor):
        r = rotate(appliance, new["kid"], auth=who)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert state_of(appliance, new["kid"])["state"] == "active"


def test_rotation_keeps_bits_and_takes_a_new_label(appliance):
    old = appliance.create_key(bits=3072, label="big")
    new = rotated(appliance, old["kid"], label="big-2026", grace_seconds=60)
    assert new["bits"] == 3072 and new["label"] == "big-2026"
    assert state_of(appliance, old["kid"])["label"] == "big"


def test_the_default_grace_is_the_longest_token_ttl_or_the_configured_one(appliance,
                                                                          make_appliance):
    old = appliance.create_key()
    before = int(time.time())
    ttl_max = 2592000  # token_ttl_max's default, used when rotation_grace_seconds is 0
    retire_at = rotated(appliance, old["kid"])["predecessor_key"]["retire_at"]
    assert before + ttl_max <= retire_at <= int(time.time()) + ttl_max

    a = make_appliance({"rotation_grace_seconds": 120})
    old = a.create_key()
    before = int(time.time())
    retire_at = rotated(a, old["kid"])["predecessor_key"]["retire_at"]
    assert before + 120 <= retire_at <= int(time.time()) + 120


def test_a_crash_between_generating_the_successor_and_committing_leaves_the_old_key_active(
        make_appliance):
    a = make_appliance()
    old = a.create_key()
    a.crash_at("after_generate", lambda: rotate(a, old["kid"], {"grace_seconds": 60}))
    # The successor was never acknowledged: reconcile destroyed it; nothing rotated.
    assert reconcile_counts(a.read_log()) == (1, 0, 0)
    a.restart()
    assert state_of(a, old["kid"])["state"] == "active"
    assert [k["kid"] for k in a.get("/v1/keys").json()["keys"]] == [old["kid"]]
    assert a.post("/v1/keys/%s/sign" % old["kid"], {"payload": "eA"}).status_code == 200
    assert rotate(a, old["kid"], {"grace_seconds": 60}).status_code == 201
