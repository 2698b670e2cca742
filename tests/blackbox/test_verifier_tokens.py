"""The reference verifier (build/bin/signd-verify) and issue 11's tokens, against a real
appliance over HTTPS: a revocable token revoked through DELETE /v1/tokens/{jti} is
revoked_token (read from the signed status list, refreshed when the event stream announces
the revocation) while its sibling still verifies; an origin-bound token is wrong_origin for
another origin; a single-use token redeemed through the CLI (--redeem-credential, the
secret of a redeemer credential in a file) is ok once and already_used after. The helpers
and fixtures are test_verifier.py's; every process a test starts is stopped by its PID.
"""
import json
import os
import time

from test_verifier import Verifier, mint, parts, pin_publication_key, run_once

ORIGIN_A = "https://a.example"
ORIGIN_B = "https://b.example:8443"


def answer_word(line):
    return line.split(" ", 1)[0]


def redeem_credential(a, directory):
    """A redeemer credential's secret in a 0600 file, as an operator keeps it."""
    secret = a.create_credential("redeemer", label="verifier")["secret"]
    path = os.path.join(directory, "redeemer.secret")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return path, secret


def test_revoked_token_is_revoked_token_while_its_sibling_from_the_same_key_verifies(
        appliance, tmp_path):
    keyfile = pin_publication_key(appliance, str(tmp_path))
    kid = appliance.create_key(label="revocable")["kid"]
    doomed = mint(appliance, kid, revocable=True)
    sibling = mint(appliance, kid, revocable=True)
    uri = parts(doomed)[1]["status"]["status_list"]["uri"]
    assert uri.startswith(appliance.url + "/v1/status-lists/"), uri
    with Verifier(appliance, keyfile) as v:
        assert answer_word(v.ask(doomed)) == "ok"
        assert answer_word(v.ask(sibling)) == "ok"
        deadline = time.monotonic() + 10
        while v.stats()["stream"] != "up" and time.monotonic() < deadline:
            time.sleep(0.05)
        before = v.stats()
        assert before["stream"] == "up" and before["status_lists"] == 1
        jti = parts(doomed)[1]["jti"]
        r = appliance.delete("/v1/tokens/" + jti)
        assert r.status_code == 200, r.text
        assert r.json()["uri"] == uri
        # The token-revocation event names the list: the verifier refetches it at once (the
        # list's own poll interval, its ttl, is far longer than this wait).
        answer, took = v.wait_for(doomed, "revoked_token", timeout=10)
        assert answer == "revoked_token", "still %r after %.2fs" % (answer, took)
        assert answer_word(v.ask(sibling)) == "ok"
        after = v.stats()
        assert after["status_lists"] == 1 and after["status_refused"] == 0
        assert after["status_fetches"] >= 2  # the first need, then at least one refresh
        assert v.close() == 0
    # A verifier that starts now fetches the list on first need and agrees.
    rc, out, err = run_once(appliance, keyfile, doomed, sibling)
    assert rc == 1, err
    assert out[0] == "revoked_token" and answer_word(out[1]) == "ok", out


def test_origin_bound_token_is_wrong_origin_elsewhere_and_ok_for_its_origin(appliance, tmp_path):
    keyfile = pin_publication_key(appliance, str(tmp_path))
    kid = appliance.create_key()["kid"]
    bound = mint(appliance, kid, origin=ORIGIN_A)
    unbound = mint(appliance, kid)
    assert parts(bound)[1]["origin"] == ORIGIN_A
    rc, out, err = run_once(appliance, keyfile, bound, unbound, extra=["--origin", ORIGIN_B])
    assert (rc, [answer_word(x) for x in out]) == (1, ["wrong_origin", "ok"]), err
    rc, out, err = run_once(appliance, keyfile, bound, extra=["--origin", ORIGIN_A])
    assert rc == 0 and json.loads(out[0].split(" ", 1)[1])["origin"] == ORIGIN_A, err
    # An origin that is not in the appliance's form is a setup error, not a silent mismatch.
    rc, out, err = run_once(appliance, keyfile, bound, extra=["--origin", ORIGIN_A + "/"])
    assert rc == 2 and out == [] and "--origin" in err, err


def test_single_use_token_redeemed_twice_is_ok_then_already_used(appliance, tmp_path):
    keyfile = pin_publication_key(appliance, str(tmp_path))
    cred, secret = redeem_credential(appliance, str(tmp_path))
    kid = appliance.create_key()["kid"]
    once = mint(appliance, kid, single_use=True, origin=ORIGIN_A)
    extra = ["--redeem-credential", cred, "--origin", ORIGIN_A]
    rc, out, err = run_once(appliance, keyfile, once, extra=extra)
    assert rc == 0 and answer_word(out[0]) == "ok", (out, err)
    assert json.loads(out[0].split(" ", 1)[1])["single_use"] is True
    rc, out, err = run_once(appliance, keyfile, once, extra=extra)
    assert (rc, out) == (1, ["already_used"]), err
    # Verified without redeeming, it still checks out: only the appliance knows it is spent.
    rc, out, err = run_once(appliance, keyfile, once, extra=["--origin", ORIGIN_A])
    assert rc == 0 and answer_word(out[0]) == "ok", err
    # A plain token redeems any number of times.
    plain = mint(appliance, kid)
    rc, out, err = run_once(appliance, keyfile, plain, plain, extra=extra)
    assert rc == 0 and [answer_word(x) for x in out] == ["ok", "ok"], (out, err)
    assert secret not in err


def test_redeem_with_a_credential_of_another_role_is_redeem_failed(appliance, tmp_path):
    keyfile = pin_publication_key(appliance, str(tmp_path))
    auditor = appliance.create_credential("auditor", label="not-a-redeemer")["secret"]
    path = tmp_path / "auditor.secret"
    path.write_text(auditor + "\n")
    path.chmod(0o600)
    kid = appliance.create_key()["kid"]
    token = mint(appliance, kid, single_use=True)
    rc, out, err = run_once(appliance, keyfile, token, extra=["--redeem-credential", str(path)])
    assert (rc, out) == (1, ["redeem_failed"]), err
    assert "403" in err and auditor not in err, err
    # Not spent by the refused call: a redeemer still gets it once.
    cred, _ = redeem_credential(appliance, str(tmp_path))
    rc, out, err = run_once(appliance, keyfile, token, extra=["--redeem-credential", cred])
    assert rc == 0 and answer_word(out[0]) == "ok", (out, err)


def test_unreadable_or_empty_redeem_credential_is_a_setup_error(appliance, tmp_path):
    keyfile = pin_publication_key(appliance, str(tmp_path))
    empty = tmp_path / "empty.secret"
    empty.write_text("\n")
    for path in (str(empty), str(tmp_path / "missing.secret")):
        rc, out, err = run_once(appliance, keyfile, "x.y.z", extra=["--redeem-credential", path])
        assert rc == 2 and out == [] and err.count("\n") == 1, err
        assert err.startswith("signd-verify: ") and path in err, err


def test_token_naming_a_status_list_elsewhere_than_the_verifiers_url_is_malformed(
        make_appliance, tmp_path):
    # The appliance announces its lists under a public_url the verifier was not given: the
    # verifier never fetches a URL a token names outside --url, so such a token cannot be
    # vouched for.
    a = make_appliance({"public_url": "https://elsewhere.example:9443"})
    keyfile = pin_publication_key(a, str(tmp_path))
    kid = a.create_key()["kid"]
    revocable = mint(a, kid, revocable=True)
    plain = mint(a, kid)
    uri = parts(revocable)[1]["status"]["status_list"]["uri"]
    assert uri.startswith("https://elsewhere.example:9443/v1/status-lists/"), uri
    with Verifier(a, keyfile) as v:
        assert v.ask(revocable) == "malformed"
        assert answer_word(v.ask(plain)) == "ok"
        assert v.stats()["status_fetches"] == 0
        assert v.close() == 0


def test_an_origin_bound_token_checked_without_origin_is_origin_required(appliance, tmp_path):
    # The fail-closed fix: signd-verify without --origin used to answer ok for a bound token.
    keyfile = pin_publication_key(appliance, str(tmp_path))
    kid = appliance.create_key()["kid"]
    bound = mint(appliance, kid, origin=ORIGIN_A)
    bound_many = mint(appliance, kid, origins=[ORIGIN_B, ORIGIN_A])
    unbound = mint(appliance, kid)
    rc, out, err = run_once(appliance, keyfile, bound, bound_many, unbound)
    assert (rc, [answer_word(x) for x in out]) == (
        1, ["origin_required", "origin_required", "ok"]), err
    rc, out, err = run_once(appliance, keyfile, bound_many, extra=["--origin", ORIGIN_A])
    assert rc == 0 and json.loads(out[0].split(" ", 1)[1])["origins"] == [ORIGIN_B, ORIGIN_A]
    rc, out, err = run_once(appliance, keyfile, bound_many,
                            extra=["--origin", "https://c.example"])
    assert (rc, out) == (1, ["wrong_origin"]), err


def test_a_verifier_with_an_audience_refuses_tokens_for_another(appliance, tmp_path):
    keyfile = pin_publication_key(appliance, str(tmp_path))
    kid = appliance.create_key()["kid"]
    player = mint(appliance, kid, aud="player")
    upload = mint(appliance, kid, aud="upload")
    none = mint(appliance, kid)
    rc, out, err = run_once(appliance, keyfile, player, upload, none, extra=["--aud", "player"])
    assert (rc, [answer_word(x) for x in out]) == (
        1, ["ok", "wrong_audience", "wrong_audience"]), err
    # Without --aud the audience is not looked at.
    rc, out, err = run_once(appliance, keyfile, upload, none)
    assert rc == 0, (out, err)
    rc, out, err = run_once(appliance, keyfile, player, extra=["--aud", ""])
    assert rc == 2 and out == [] and "audience" in err, err


def test_a_redeem_through_the_verifier_sends_its_audience(appliance, tmp_path):
    keyfile = pin_publication_key(appliance, str(tmp_path))
    cred, _ = redeem_credential(appliance, str(tmp_path))
    kid = appliance.create_key()["kid"]
    once = mint(appliance, kid, single_use=True, aud="player")
    rc, out, err = run_once(appliance, keyfile, once,
                            extra=["--redeem-credential", cred, "--aud", "player"])
    assert rc == 0 and json.loads(out[0].split(" ", 1)[1])["aud"] == "player", (out, err)
    rc, out, err = run_once(appliance, keyfile, once,
                            extra=["--redeem-credential", cred, "--aud", "player"])
    assert (rc, out) == (1, ["already_used"]), err
