"""Subject revocation (issue 24, "rotate a video"), black-box over HTTPS against a real
appliance and build/bin/signd-verify: POST /v1/subjects/revoke revokes every token of one
sub minted before a time; redeem refuses them (409 subject_revoked), the signed feed and the
event stream carry the revocation with a seq of the revocation sequence, the verifier answers
revoked_subject, and minting for the subject works again at once. Helpers are
test_verifier.py's and test_revocation_feed.py's; every process a test starts is stopped by
its PID.
"""
import json
import time

import pytest

from test_revocation_feed import Stream, open_feed
from test_verifier import Verifier, mint, parts, pin_publication_key, run_once

TTL_MAX = 2592000  # the default token_ttl_max


def code_of(r):
    try:
        return r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def revoke_subject(a, sub, auth=None, **fields):
    r = a.post("/v1/subjects/revoke", {"sub": sub, **fields}, auth=auth or a.admin)
    assert r.status_code == 200, r.text
    return r.json()


def redeem(a, redeemer, token):
    return a.post("/v1/tokens/redeem", {"token": token}, auth=redeemer)


def wait_past(token):
    """iat has a one-second resolution: a token minted in the second of a revocation whose
    before is now has iat == before and passes; the tests that mean "minted before" wait
    until the clock is surely past the token's iat (the appliance's clock may lag ours by
    part of a second)."""
    iat = parts(token)[1]["iat"]
    while time.time() < iat + 2:
        time.sleep(0.05)


def test_a_token_minted_before_a_subject_revocation_is_refused_by_redeem_and_a_new_one_is_not(
        appliance):
    a = appliance
    redeemer = a.create_credential("redeemer")["secret"]
    kid = a.create_key()["kid"]
    old = mint(a, kid, sub="video-123")
    other = mint(a, kid, sub="video-124")
    assert redeem(a, redeemer, old).status_code == 200
    wait_past(old)
    rec = revoke_subject(a, "video-123")
    now = int(time.time())
    assert rec["sub"] == "video-123" and abs(rec["before"] - now) <= 1
    assert rec["revoked_at"] == rec["before"] and rec["expires_at"] == rec["before"] + TTL_MAX
    r = redeem(a, redeemer, old)
    assert (r.status_code, code_of(r)) == (409, "subject_revoked"), r.text
    assert redeem(a, redeemer, other).status_code == 200
    # Minting for the subject works at once: iat >= before.
    fresh = mint(a, kid, sub="video-123")
    assert parts(fresh)[1]["iat"] >= rec["before"]
    assert redeem(a, redeemer, fresh).status_code == 200


def test_an_explicit_before_revokes_only_the_tokens_minted_before_it(appliance):
    a = appliance
    redeemer = a.create_credential("redeemer")["secret"]
    kid = a.create_key()["kid"]
    first = mint(a, kid, sub="video-7")
    wait_past(first)
    second = mint(a, kid, sub="video-7")
    cut = parts(second)[1]["iat"]
    assert cut > parts(first)[1]["iat"]
    wait_past(second)
    revoke_subject(a, "video-7", before=cut)
    assert code_of(redeem(a, redeemer, first)) == "subject_revoked"
    r = redeem(a, redeemer, second)
    assert r.status_code == 200, (r.text, parts(second)[1], cut)


def test_the_feed_and_the_stream_carry_a_subject_revocation_in_the_revocation_sequence(
        appliance):
    a = appliance
    kid = a.create_key()["kid"]
    victim = a.create_key()["kid"]
    s = Stream(a)
    try:
        s.wait(lambda st: any(e.get("event") == "hello" for e in st.events))
        start = json.loads(s.events[0]["data"])["seq"]
        rec = revoke_subject(a, "video-9")
        assert rec["seq"] == start + 1
        r = a.delete("/v1/keys/" + victim, {"reason": "after the subject"})
        assert r.json()["revocation_seq"] == start + 2  # one sequence for both
        s.wait(lambda st: len([e for e in st.events if "id" in e]) >= 2)
        ev = [e for e in s.events if "id" in e]
        assert [(e["id"], e["event"]) for e in ev] == [
            (str(start + 1), "subject-revocation"), (str(start + 2), "revocation")]
        assert json.loads(ev[0]["data"]) == {"seq": start + 1, "sub": "video-9",
                                             "before": rec["before"]}
    finally:
        s.close()
    _, payload, _ = open_feed(a)
    assert payload["seq"] == start + 2
    assert {"seq": start + 1, "sub": "video-9", "before": rec["before"]} in payload["subjects"]
    # A delta after the subject's seq still carries it: subjects are never a delta.
    _, delta, _ = open_feed(a, "?after=%d" % (start + 1))
    assert [x["kid"] for x in delta["revoked"]] == [victim]
    assert any(x["sub"] == "video-9" for x in delta["subjects"])
    listed = a.get("/v1/revocations", auth=False).json()
    assert any(x["sub"] == "video-9" for x in listed["subjects"])
    # Resumed with Last-Event-ID, the stream replays it.
    s = Stream(a, last_event_id=start)
    try:
        s.wait(lambda st: len([e for e in st.events if "id" in e]) >= 2)
        assert [e["event"] for e in s.events if "id" in e][:2] == [
            "subject-revocation", "revocation"]
    finally:
        s.close()
    del kid


def test_a_subject_revocation_past_its_horizon_is_not_in_the_feed(appliance):
    a = appliance
    before = int(time.time()) - TTL_MAX - 10  # no token it could match is alive
    rec = revoke_subject(a, "long-gone", before=before)
    assert rec["expires_at"] < time.time()
    _, payload, _ = open_feed(a)
    assert payload["seq"] >= rec["seq"]
    assert all(x["sub"] != "long-gone" for x in payload["subjects"])


def test_a_subject_revocation_is_audited_and_survives_a_restart(appliance):
    a = appliance
    redeemer = a.create_credential("redeemer")["secret"]
    kid = a.create_key()["kid"]
    old = mint(a, kid, sub="video-r")
    wait_past(old)
    rec = revoke_subject(a, "video-r")
    events = [e for e in a.get("/v1/audit?action=subject.revoked").json()["events"]
              if e["details"]["sub"] == "video-r"]
    # Every event names its node (one chain for a cluster's nodes); the rest is exact.
    assert [{k: v for k, v in e["details"].items() if k != "node"} for e in events] == [
        {"sub": "video-r", "before": rec["before"], "revocation_seq": rec["seq"]}]
    assert all(e["details"].get("node") for e in events), events
    assert events[0]["actor"] != "system"
    a.restart()
    assert code_of(redeem(a, redeemer, old)) == "subject_revoked"
    _, payload, _ = open_feed(a)
    assert any(x["sub"] == "video-r" for x in payload["subjects"])


def test_only_an_admin_or_a_signer_of_every_kid_revokes_a_subject(appliance):
    a = appliance
    kid = a.create_key()["kid"]
    everything = a.create_credential("signer", kids="all")["secret"]
    scoped = a.create_credential("signer", kids=[kid])["secret"]
    assert revoke_subject(a, "by-signer", auth=everything)["sub"] == "by-signer"
    r = a.post("/v1/subjects/revoke", {"sub": "by-scoped"}, auth=scoped)
    assert (r.status_code, code_of(r)) == (403, "forbidden"), r.text
    for role in ("auditor", "redeemer"):
        secret = a.create_credential(role)["secret"]
        r = a.post("/v1/subjects/revoke", {"sub": "x"}, auth=secret)
        assert (r.status_code, code_of(r)) == (403, "forbidden"), r.text


@pytest.mark.parametrize("body,code", [
    ({}, "missing_field"),
    ({"sub": ""}, "out_of_range"),
    ({"sub": "s" * 257}, "out_of_range"),
    ({"sub": 5}, "wrong_type"),
    ({"sub": "v", "before": 0}, "out_of_range"),
    ({"sub": "v", "before": "NOW+60"}, "out_of_range"),
    ({"sub": "v", "before": "1"}, "wrong_type"),
    ({"sub": "v", "kid": "x"}, "unknown_field"),
])
def test_a_malformed_subject_revocation_gets_its_code(appliance, body, code):
    body = {k: int(time.time()) + 60 if v == "NOW+60" else v for k, v in body.items()}
    r = appliance.post("/v1/subjects/revoke", body, auth=appliance.admin)
    assert (r.status_code, code_of(r)) == (400, code), r.text


def test_the_verifier_answers_revoked_subject_as_soon_as_the_stream_announces_it(
        appliance, tmp_path):
    a = appliance
    keyfile = pin_publication_key(a, str(tmp_path))
    kid = a.create_key()["kid"]
    old = mint(a, kid, sub="video-v")
    other = mint(a, kid, sub="video-w")
    with Verifier(a, keyfile) as v:
        assert v.ask(old).split(" ", 1)[0] == "ok"
        deadline = time.monotonic() + 10
        while v.stats()["stream"] != "up" and time.monotonic() < deadline:
            time.sleep(0.05)
        wait_past(old)
        revoke_subject(a, "video-v")
        answer, took = v.wait_for(old, "revoked_subject", timeout=10)
        assert answer == "revoked_subject", "still %r after %.2fs" % (answer, took)
        assert v.ask(other).split(" ", 1)[0] == "ok"
        fresh = mint(a, kid, sub="video-v")
        assert v.ask(fresh).split(" ", 1)[0] == "ok"
        assert v.close() == 0
    # A verifier that starts now reads it from the full feed.
    rc, out, err = run_once(a, keyfile, old, other)
    assert (rc, [x.split(" ", 1)[0] for x in out]) == (1, ["revoked_subject", "ok"]), err


def test_a_scoped_signer_revoking_a_subject_is_recorded_as_authz_denied(make_appliance):
    a = make_appliance({"audit_flush_seconds": 1})
    kid = a.create_key()["kid"]
    scoped = a.create_credential("signer", kids=[kid], label="scoped")
    r = a.post("/v1/subjects/revoke", {"sub": "not-mine"}, auth=scoped["secret"])
    assert (r.status_code, code_of(r)) == (403, "forbidden"), r.text
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        evs = a.get("/v1/audit?action=authz.denied&actor=" + scoped["id"]).json()["events"]
        if evs:
            break
        time.sleep(0.2)
    assert [(e["details"]["path"], e["details"]["reason"]) for e in evs] == [
        ("/v1/subjects/revoke", "scope does not reach every kid")]
    assert a.get("/v1/audit?action=subject.revoked").json()["events"] == []
