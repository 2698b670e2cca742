"""Token control (issue 11), black-box over HTTPS against a real appliance: single-use tokens
redeemed exactly once (under a race and across restarts), revocable tokens revoked through
DELETE /v1/tokens/{jti} and published in a signed status list, origin-bound tokens, who may
do what, and the error code of each malformed input.

Tokens and status lists are checked with code nobody here wrote: python3-jwcrypto for the
JWS signatures (against the JWKS and the key of GET /v1/revocations/key), zlib for the list.
"""
import base64
import json
import os
import threading
import time
import zlib
from urllib.parse import urlsplit

import pytest
import requests
from jwcrypto import jwk, jws

from test_revocation_feed import Stream

PUB_KID = "signd-publication-v1"
LIST_BYTES = 131072
ISSUER = "https://signd.example"


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def cred_id(secret):
    return secret[4:20]


@pytest.fixture(scope="module")
def make_module_appliance(tmp_path_factory):
    from conftest import Appliance
    made = []

    def factory(extra_conf=None):
        ap = Appliance(str(tmp_path_factory.mktemp("signd-tc")), extra_conf).start()
        made.append(ap)
        return ap

    yield factory
    for ap in made:
        ap.stop()


@pytest.fixture(scope="module")
def world(make_module_appliance):
    """One appliance for the module: a key, two signers (the fixture's own, which may use
    every kid, and a second one), a redeemer and an auditor."""
    a = make_module_appliance({"token_issuer": ISSUER})
    kid = a.create_key(label="token-control")["kid"]
    return {
        "a": a,
        "kid": kid,
        "signer": a.signer,
        "signer2": a.create_credential("signer", kids="all", label="second")["secret"],
        "redeemer": a.create_credential("redeemer", label="edge")["secret"],
        "auditor": a.create_credential("auditor")["secret"],
    }


def mint(w, auth=None, **fields):
    """POST /v1/tokens as a signer (the fixture's by default); returns the 200 body."""
    body = {"kid": w["kid"], "sub": "video-1", **fields}
    r = w["a"].post("/v1/tokens", body, auth=auth or w["signer"])
    assert r.status_code == 200, r.text
    return r.json()


def redeem(w, token, origin=None, auth=None, aud=None):
    body = {"token": token}
    if origin is not None:
        body["origin"] = origin
    if aud is not None:
        body["aud"] = aud
    return w["a"].post("/v1/tokens/redeem", body, auth=auth or w["redeemer"])


def revoke(w, jti, auth=None):
    return w["a"].delete("/v1/tokens/" + jti, auth=auth or w["a"].admin)


def code_of(r):
    try:
        return r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def assert_error(r, status, code):
    assert (r.status_code, code_of(r)) == (status, code), r.text


def payload_of(token):
    return json.loads(unb64u(token.split(".")[1]))


def verified_claims(a, token):
    """The token's payload after its RS256 signature verified against the fetched JWKS."""
    keyset = jwk.JWKSet.from_json(a.get("/.well-known/jwks.json", auth=False).text)
    t = jws.JWS()
    t.deserialize(token)
    header = t.jose_header
    t.verify(keyset.get_key(header["kid"]), alg="RS256")
    return header, json.loads(t.payload)


def status_list(a, uri):
    """GETs the status list uri names (its path, on this appliance: uri may name its
    public_url), verifies it with the publication key and returns (header, payload, the
    list's bytes, the response)."""
    r = a.get(urlsplit(uri).path, auth=False)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/statuslist+jwt"
    key_doc = a.get("/v1/revocations/key", auth=False).json()
    assert key_doc["kid"] == PUB_KID
    # From the PEM: jwcrypto refuses to verify with a JWK whose use is not "sig", and the
    # publication key's JWK says "kid-revocation". The two are the same key.
    key = jwk.JWK.from_pem(key_doc["pem"].encode())
    assert json.loads(key.export_public())["n"] == key_doc["jwk"]["n"]
    t = jws.JWS()
    t.deserialize(r.text)
    t.verify(key, alg="RS256")
    payload = json.loads(t.payload)
    bits = zlib.decompress(unb64u(payload["status_list"]["lst"]))
    return t.jose_header, payload, bits, r


def set_bits(bits):
    """Every index whose bit is 1: byte i/8, bit i%8 counted from the least significant."""
    found = []
    for n, byte in enumerate(bits):
        if byte:
            found += [n * 8 + b for b in range(8) if byte >> b & 1]
    return found


def enc(obj):
    return b64u(json.dumps(obj).encode())


def appliance_signed(w, header, payload, kid=None):
    """A compact JWS over header and payload (JSON values or raw bytes) that the appliance's
    key signed through POST /v1/keys/{kid}/sign: a real signature on a document the mint
    route would never produce."""
    h = enc(header) if not isinstance(header, bytes) else b64u(header)
    p = enc(payload) if not isinstance(payload, bytes) else b64u(payload)
    r = w["a"].post("/v1/keys/%s/sign" % (kid or w["kid"]),
                    {"payload": b64u((h + "." + p).encode())}, auth=w["signer"])
    assert r.status_code == 200, r.text
    return h + "." + p + "." + r.json()["signature"]


def crafted_claims(**over):
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "crafted", "iat": now, "exp": now + 600,
              "jti": os.urandom(16).hex()}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


# ---- minting ------------------------------------------------------------------------------

def test_a_revocable_single_use_token_carries_status_single_use_origin_and_aud_claims(world):
    a = world["a"]
    body = mint(world, revocable=True, single_use=True, origin="https://a.example", aud="cdn")
    assert body["revocable"] is True and body["single_use"] is True
    status = body["status"]
    assert set(status) == {"list", "idx", "uri"}
    assert status["uri"] == "%s/v1/status-lists/%d" % (a.url, status["list"])
    header, claims = verified_claims(a, body["token"])
    assert header == {"alg": "RS256", "typ": "JWT", "kid": world["kid"]}
    assert claims["status"] == {"status_list": {"idx": status["idx"], "uri": status["uri"]}}
    assert claims["single_use"] is True
    assert claims["origin"] == "https://a.example"
    assert claims["aud"] == "cdn"
    assert claims["jti"] == body["jti"] and claims["iss"] == ISSUER
    # The jti: "r" + base64url(list u32 BE, idx u32 BE, minting credential id, 12-byte MAC).
    jti = body["jti"]
    assert len(jti) == 39 and jti[0] == "r"
    raw = unb64u(jti[1:])
    assert len(raw) == 28
    assert int.from_bytes(raw[0:4], "big") == status["list"]
    assert int.from_bytes(raw[4:8], "big") == status["idx"]
    assert raw[8:16].hex() == cred_id(world["signer"])


def test_a_plain_token_has_none_of_the_new_claims_and_a_hex_jti(world):
    body = mint(world)
    assert body["revocable"] is False and body["single_use"] is False
    assert "status" not in body
    assert len(body["jti"]) == 32 and all(c in "0123456789abcdef" for c in body["jti"])
    _, claims = verified_claims(world["a"], body["token"])
    for claim in ("status", "single_use", "origin", "aud"):
        assert claim not in claims, claim
    # Asked for explicitly false: the same as not asked.
    body = mint(world, revocable=False, single_use=False)
    assert body["revocable"] is False and body["single_use"] is False and "status" not in body
    assert "single_use" not in payload_of(body["token"])


def test_two_revocable_tokens_get_distinct_status_list_entries(world):
    one = mint(world, revocable=True)["status"]
    two = mint(world, revocable=True)["status"]
    assert (one["list"], one["idx"]) != (two["list"], two["idx"])


# ---- single use ---------------------------------------------------------------------------

def test_a_hundred_concurrent_redeems_of_a_single_use_token_let_exactly_one_through(world):
    a = world["a"]
    body = mint(world, single_use=True)
    n = 100
    barrier = threading.Barrier(n)
    results = [None] * n

    def one(i):
        # A connection of its own per caller: the races happen in the appliance, not here.
        with requests.Session() as s:
            barrier.wait(timeout=60)
            try:
                r = s.post(a.url + "/v1/tokens/redeem", json={"token": body["token"]},
                           headers=a.auth(world["redeemer"]), verify=a.cacert, timeout=120)
                results[i] = (r.status_code, r.json())
            except Exception as e:  # reported below with the others
                results[i] = ("exception", repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [doc for status, doc in results if status == 200]
    used = [doc for status, doc in results
            if status == 409 and doc["error"]["code"] == "token_already_used"]
    other = [(status, doc) for status, doc in results
             if status != 200 and not (status == 409 and doc["error"]["code"] ==
                                       "token_already_used")]
    assert other == [], other[:5]
    assert len(ok) == 1 and len(used) == n - 1
    assert ok[0]["redeemed"] is True and ok[0]["single_use"] is True
    assert ok[0]["jti"] == body["jti"] and ok[0]["kid"] == world["kid"]
    assert ok[0]["claims"] == payload_of(body["token"])
    assert_error(redeem(world, body["token"]), 409, "token_already_used")


def test_a_plain_token_redeems_any_number_of_times_and_is_never_marked_redeemed(world):
    body = mint(world, claims={"scope": ["read"]})
    for _ in range(3):
        r = redeem(world, body["token"])
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["redeemed"] is False and doc["single_use"] is False
        assert doc["exp"] == body["exp"] and doc["claims"]["scope"] == ["read"]


def test_a_redeemed_single_use_token_stays_used_across_a_restart_and_a_kill(world):
    a = world["a"]
    first = mint(world, single_use=True)
    second = mint(world, single_use=True)
    untouched = mint(world, single_use=True)
    r = redeem(world, first["token"])
    assert r.status_code == 200 and r.json()["redeemed"] is True, r.text
    a.restart()
    assert_error(redeem(world, first["token"]), 409, "token_already_used")
    # Consumed before it was answered: a crash right after the 200 does not forget it.
    r = redeem(world, second["token"])
    assert r.status_code == 200 and r.json()["redeemed"] is True, r.text
    a.kill9()
    a.start()
    assert_error(redeem(world, second["token"]), 409, "token_already_used")
    assert_error(redeem(world, first["token"]), 409, "token_already_used")
    # One never redeemed is still good once, after both.
    r = redeem(world, untouched["token"])
    assert r.status_code == 200 and r.json()["redeemed"] is True, r.text
    assert_error(redeem(world, untouched["token"]), 409, "token_already_used")


def test_a_redeem_refused_for_another_reason_does_not_consume_a_single_use_token(world):
    body = mint(world, single_use=True, origin="https://a.example")
    assert_error(redeem(world, body["token"], origin="https://b.example"), 409, "wrong_origin")
    r = redeem(world, body["token"], origin="https://a.example")
    assert r.status_code == 200 and r.json()["redeemed"] is True, r.text


# ---- revocation ---------------------------------------------------------------------------

def test_a_revoked_token_is_refused_while_its_sibling_from_the_same_key_redeems(world):
    victim = mint(world, revocable=True)
    sibling = mint(world, revocable=True)
    assert redeem(world, victim["token"]).status_code == 200
    r = revoke(world, victim["jti"])
    assert r.status_code == 200, r.text
    rec = r.json()
    assert rec["jti"] == victim["jti"]
    assert (rec["list"], rec["idx"], rec["uri"]) == (victim["status"]["list"],
                                                     victim["status"]["idx"],
                                                     victim["status"]["uri"])
    assert rec["seq"] >= 1 and abs(rec["revoked_at"] - time.time()) < 600
    assert_error(redeem(world, victim["token"]), 409, "token_revoked")
    r = redeem(world, sibling["token"])
    assert r.status_code == 200 and r.json()["jti"] == sibling["jti"], r.text
    # Idempotent: the same record again, the sequence not moved.
    again = revoke(world, victim["jti"])
    assert again.status_code == 200 and again.json() == rec


def test_a_revocable_single_use_token_redeems_once_and_revoked_outranks_used(world):
    body = mint(world, revocable=True, single_use=True)
    r = redeem(world, body["token"])
    assert r.status_code == 200 and r.json()["redeemed"] is True, r.text
    assert r.json()["jti"] == body["jti"]
    assert_error(redeem(world, body["token"]), 409, "token_already_used")
    # Revoking a consumed token still works, and the status check comes before consumption.
    assert revoke(world, body["jti"]).status_code == 200
    assert_error(redeem(world, body["token"]), 409, "token_revoked")


def test_a_revoked_single_use_token_is_refused_as_revoked_and_not_consumed(world):
    body = mint(world, revocable=True, single_use=True)
    assert revoke(world, body["jti"]).status_code == 200
    assert_error(redeem(world, body["token"]), 409, "token_revoked")
    assert_error(redeem(world, body["token"]), 409, "token_revoked")


def test_a_signer_revokes_only_its_own_tokens_and_an_admin_any(world):
    theirs = mint(world, auth=world["signer2"], revocable=True)
    r = revoke(world, theirs["jti"], auth=world["signer"])
    assert_error(r, 403, "token_not_owned")
    assert redeem(world, theirs["token"]).status_code == 200  # still good
    r = revoke(world, theirs["jti"], auth=world["a"].admin)
    assert r.status_code == 200, r.text
    assert_error(redeem(world, theirs["token"]), 409, "token_revoked")
    own = mint(world, auth=world["signer2"], revocable=True)
    r = revoke(world, own["jti"], auth=world["signer2"])
    assert r.status_code == 200 and r.json()["jti"] == own["jti"], r.text


def test_only_a_redeemer_redeems_and_a_redeemer_neither_mints_nor_revokes(world):
    a = world["a"]
    body = mint(world, revocable=True)
    for who in ("signer", "auditor"):
        assert_error(redeem(world, body["token"], auth=world[who]), 403, "forbidden")
    assert_error(redeem(world, body["token"], auth=a.admin), 403, "forbidden")
    r = a.post("/v1/tokens/redeem", {"token": body["token"]}, auth=False)
    assert_error(r, 401, "unauthorized")
    r = a.post("/v1/tokens", {"kid": world["kid"], "sub": "x"}, auth=world["redeemer"])
    assert_error(r, 403, "forbidden")
    assert_error(revoke(world, body["jti"], auth=world["redeemer"]), 403, "forbidden")
    assert_error(revoke(world, body["jti"], auth=world["auditor"]), 403, "forbidden")
    r = a.delete("/v1/tokens/" + body["jti"], auth=False)
    assert_error(r, 401, "unauthorized")
    # None of the refusals touched it.
    r = redeem(world, body["token"])
    assert r.status_code == 200 and r.json()["redeemed"] is False, r.text


def test_a_redeemer_credential_is_listed_with_its_role_and_no_signer_fields(world):
    a = world["a"]
    made = a.create_credential("redeemer", label="listed")
    assert made["role"] == "redeemer" and "kids" not in made and "max_ttl" not in made
    shown = a.get("/v1/credentials/" + made["id"]).json()
    assert shown["role"] == "redeemer" and "secret" not in shown
    r = a.post("/v1/credentials", {"role": "redeemer", "kids": "all"})
    assert r.status_code == 400, r.text


# ---- checks in their order ----------------------------------------------------------------

def test_a_token_bound_to_an_origin_redeems_only_from_it(world):
    body = mint(world, origin="https://a.example")
    r = redeem(world, body["token"], origin="https://a.example")
    assert r.status_code == 200 and r.json()["claims"]["origin"] == "https://a.example", r.text
    assert_error(redeem(world, body["token"], origin="https://b.example"), 409, "wrong_origin")
    assert_error(redeem(world, body["token"], origin="https://a.example:8443"), 409,
                 "wrong_origin")
    assert_error(redeem(world, body["token"], origin="http://a.example"), 409, "wrong_origin")
    # A token without one is valid anywhere, named or not.
    anywhere = mint(world)
    assert redeem(world, anywhere["token"], origin="https://b.example").status_code == 200
    assert redeem(world, anywhere["token"]).status_code == 200


def test_a_bound_token_redeemed_without_an_origin_is_origin_required(world):
    # The fail-closed fix: a redeem that named no origin used to pass a bound token.
    one = mint(world, origin="https://a.example", single_use=True)
    assert_error(redeem(world, one["token"]), 409, "origin_required")
    many = mint(world, origins=["https://a.example", "https://b.example"])
    assert_error(redeem(world, many["token"]), 409, "origin_required")
    # Refused, not consumed: the single-use token still redeems once from its origin.
    r = redeem(world, one["token"], origin="https://a.example")
    assert r.status_code == 200 and r.json()["redeemed"] is True, r.text


def test_a_token_bound_to_origins_redeems_from_each_of_them_and_no_other(world):
    origins = ["https://a.example", "https://b.example:8443", "http://10.0.0.1"]
    body = mint(world, origins=origins)
    claims = payload_of(body["token"])
    assert claims["origins"] == origins and "origin" not in claims
    for origin in origins:
        r = redeem(world, body["token"], origin=origin)
        assert r.status_code == 200 and r.json()["claims"]["origins"] == origins, r.text
    assert_error(redeem(world, body["token"], origin="https://b.example"), 409, "wrong_origin")
    assert mint(world, origins=["https://x%d.example" % i for i in range(16)])["token"]


@pytest.mark.parametrize("fields,code", [
    ({"origin": "https://a.example", "origins": ["https://b.example"]}, "conflicting_fields"),
    ({"origins": []}, "out_of_range"),
    ({"origins": ["https://x%d.example" % i for i in range(17)]}, "out_of_range"),
    ({"origins": "https://a.example"}, "wrong_type"),
    ({"origins": [5]}, "wrong_type"),
    ({"origins": ["https://a.example/"]}, "invalid_origin"),
    ({"origins": ["https://a.example", "https://a.example"]}, "invalid_origin"),
    ({"claims": {"origins": ["https://a.example"]}}, "reserved_claim"),
])
def test_a_malformed_origins_request_gets_its_code(world, fields, code):
    r = world["a"].post("/v1/tokens", {"kid": world["kid"], **fields}, auth=world["signer"])
    assert_error(r, 400, code)


def test_a_redeem_naming_an_audience_refuses_a_token_for_another(world):
    cdn = mint(world, aud="cdn")
    assert redeem(world, cdn["token"], aud="cdn").status_code == 200
    assert_error(redeem(world, cdn["token"], aud="player"), 409, "wrong_audience")
    listed = mint(world, claims={"aud": ["cdn", "player"]})
    assert redeem(world, listed["token"], aud="player").status_code == 200
    # A token without aud is for no audience in particular: refused when one is named.
    assert_error(redeem(world, mint(world)["token"], aud="cdn"), 409, "wrong_audience")
    # Not named: aud is not looked at.
    assert redeem(world, cdn["token"]).status_code == 200
    for bad, code in ((5, "wrong_type"), ("", "out_of_range"), ("x" * 257, "out_of_range")):
        r = world["a"].post("/v1/tokens/redeem", {"token": cdn["token"], "aud": bad},
                            auth=world["redeemer"])
        assert_error(r, 400, code)


def test_exp_as_a_unix_time_sets_the_tokens_exp_within_the_ttl_bounds(world):
    now = int(time.time())
    body = mint(world, exp=now + 1200)
    claims = payload_of(body["token"])
    assert claims["exp"] == body["exp"] == now + 1200
    assert abs(claims["exp"] - claims["iat"] - 1200) <= 2
    nbf = now + 60
    body = mint(world, exp=now + 1200, nbf=nbf)
    assert payload_of(body["token"])["nbf"] == nbf
    # Within the seconds-long skew the appliance tolerates, a past nbf is fine.
    assert payload_of(mint(world, nbf=now - 120)["token"])["nbf"] == now - 120


@pytest.mark.parametrize("fields,code", [
    ({"ttl": 600, "exp": "NOW+600"}, "conflicting_fields"),
    ({"exp": "NOW-10"}, "ttl_out_of_range"),
    ({"exp": "NOW+0"}, "ttl_out_of_range"),
    ({"exp": "NOW+999999999"}, "ttl_out_of_range"),
    ({"exp": 99999999999999999}, "ttl_out_of_range"),
    ({"exp": "1e9"}, "wrong_type"),
    ({"exp": 1.5}, "wrong_type"),
    ({"exp": "NOW+600", "nbf": "NOW+600"}, "nbf_out_of_range"),
    ({"exp": "NOW+600", "nbf": "NOW+900"}, "nbf_out_of_range"),
    ({"nbf": "NOW-3600"}, "nbf_out_of_range"),
    ({"nbf": 0}, "nbf_out_of_range"),
])
def test_a_malformed_exp_or_nbf_gets_its_code(world, fields, code):
    now = int(time.time())
    body = {}
    for k, v in fields.items():
        if isinstance(v, str) and v.startswith("NOW"):
            v = now + int(v[3:])
        body[k] = v
    r = world["a"].post("/v1/tokens", {"kid": world["kid"], **body}, auth=world["signer"])
    assert_error(r, 400, code)


def test_a_signer_with_a_max_ttl_cannot_ask_for_a_later_exp(world):
    a = world["a"]
    short = a.create_credential("signer", kids="all", max_ttl=600, label="short")["secret"]
    now = int(time.time())
    r = a.post("/v1/tokens", {"kid": world["kid"], "exp": now + 3000}, auth=short)
    assert_error(r, 400, "ttl_too_long")
    assert mint(world, auth=short, exp=now + 500)["exp"] == now + 500


def test_a_token_before_its_nbf_is_not_yet_valid(world):
    body = mint(world, nbf=int(time.time()) + 1800, single_use=True)
    assert_error(redeem(world, body["token"]), 409, "token_not_yet_valid")
    # Not consumed by the refusal either: it is still not yet valid, not already used.
    assert_error(redeem(world, body["token"]), 409, "token_not_yet_valid")


def test_not_yet_valid_is_answered_before_revoked_and_revoked_before_wrong_origin(world):
    early = mint(world, nbf=int(time.time()) + 1800, revocable=True)
    assert revoke(world, early["jti"]).status_code == 200
    assert_error(redeem(world, early["token"]), 409, "token_not_yet_valid")
    bound = mint(world, revocable=True, origin="https://a.example")
    assert revoke(world, bound["jti"]).status_code == 200
    assert_error(redeem(world, bound["token"], origin="https://b.example"), 409, "token_revoked")


def test_a_token_of_a_revoked_key_is_refused_with_key_revoked(world):
    a = world["a"]
    kid = a.create_key(label="doomed")["kid"]
    body = mint(world, kid=kid, single_use=True)
    assert a.delete("/v1/keys/" + kid, {"reason": "test"}).status_code == 200
    assert_error(redeem(world, body["token"]), 409, "key_revoked")


# ---- status lists -------------------------------------------------------------------------

def test_the_status_list_is_a_signed_jwt_whose_only_set_bit_is_the_revoked_token(make_appliance):
    # Its own appliance: nothing else was revoked in it, so "only" is literal. Its public_url
    # is what the uri and the list's sub name; with no token_issuer the list's iss is signd.
    a = make_appliance({"revocation_feed_lifetime": 600, "revocations_max_age": 30,
                        "public_url": "https://signd.example:8443"})
    kid = a.create_key()["kid"]
    red = a.create_credential("redeemer")["secret"]
    bodies = [a.post("/v1/tokens", {"kid": kid, "revocable": True}).json() for _ in range(3)]
    victim = bodies[1]
    st = victim["status"]
    assert len({b["status"]["list"] for b in bodies}) == 1, "three tokens, one list"
    assert st["uri"] == "https://signd.example:8443/v1/status-lists/%d" % st["list"]
    assert payload_of(victim["token"])["status"]["status_list"]["uri"] == st["uri"]
    header, payload, bits, r = status_list(a, st["uri"])
    assert header == {"alg": "RS256", "kid": PUB_KID, "typ": "statuslist+jwt"}
    assert len(bits) == LIST_BYTES and set_bits(bits) == []
    r = a.delete("/v1/tokens/" + victim["jti"], auth=a.admin)
    assert r.status_code == 200, r.text
    header, payload, bits, r = status_list(a, st["uri"])
    assert header == {"alg": "RS256", "kid": PUB_KID, "typ": "statuslist+jwt"}
    assert set(payload) == {"iss", "sub", "iat", "exp", "ttl", "status_list"}
    assert payload["iss"] == "signd" and payload["sub"] == st["uri"]
    assert payload["exp"] - payload["iat"] == 600 and payload["ttl"] == 30
    assert abs(payload["iat"] - time.time()) < 600
    assert payload["status_list"]["bits"] == 1
    assert len(bits) == LIST_BYTES
    assert set_bits(bits) == [st["idx"]]
    assert r.headers["Cache-Control"] == "public, max-age=30"
    # What the list says is what redeem answers.
    for b in bodies:
        got = a.post("/v1/tokens/redeem", {"token": b["token"]}, auth=red)
        assert got.status_code == (409 if b is victim else 200), got.text


def test_the_status_list_has_an_etag_answers_304_and_changes_with_a_revocation(world):
    a = world["a"]
    body = mint(world, revocable=True)
    path = urlsplit(body["status"]["uri"]).path
    r = a.get(path, auth=False)
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "public, max-age=60"
    etag = r.headers["ETag"]
    again = a.get(path, auth=False, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["ETag"] == etag
    other = a.get(path, auth=False, headers={"If-None-Match": '"nope"'})
    assert other.status_code == 200
    assert revoke(world, body["jti"]).status_code == 200
    after = a.get(path, auth=False, headers={"If-None-Match": etag})
    assert after.status_code == 200 and after.headers["ETag"] != etag
    _, payload, bits, _ = status_list(a, body["status"]["uri"])
    assert body["status"]["idx"] in set_bits(bits)
    assert payload["iss"] == ISSUER  # token_issuer, when set


def test_a_revoked_token_stays_revoked_across_a_restart(world):
    a = world["a"]
    body = mint(world, revocable=True)
    rec = revoke(world, body["jti"]).json()
    a.restart()
    assert_error(redeem(world, body["token"]), 409, "token_revoked")
    _, _, bits, _ = status_list(a, body["status"]["uri"])
    assert body["status"]["idx"] in set_bits(bits)
    assert revoke(world, body["jti"]).json() == rec
    # And minting after the restart does not hand out an index already used.
    fresh = mint(world, revocable=True)
    assert (fresh["status"]["list"], fresh["status"]["idx"]) != (body["status"]["list"],
                                                                 body["status"]["idx"])
    assert redeem(world, fresh["token"]).status_code == 200


def test_the_event_stream_announces_a_token_revocation_without_an_id(world):
    a = world["a"]
    body = mint(world, revocable=True)
    s = Stream(a)
    try:
        assert s.status == 200
        s.wait(lambda st: len(st.events) >= 1)
        hello = s.events[0]
        assert hello["event"] == "hello"
        assert isinstance(json.loads(hello["data"])["token_seq"], int)
        r = revoke(world, body["jti"])
        assert r.status_code == 200, r.text
        s.wait(lambda st: any(e.get("event") == "token-revocation" for e in st.events))
        ev = [e for e in s.events if e.get("event") == "token-revocation"]
        assert len(ev) == 1 and "id" not in ev[0]
        assert json.loads(ev[0]["data"]) == r.json()
        assert json.loads(ev[0]["data"])["seq"] > json.loads(hello["data"])["token_seq"]
    finally:
        s.close()


# ---- malformed input ----------------------------------------------------------------------

@pytest.mark.parametrize("jti", ["r" * 65, "bad!jti", "bad.jti", "bad~jti", "bad%20jti"])
def test_a_malformed_jti_is_invalid_jti(world, jti):
    assert_error(revoke(world, jti), 400, "invalid_jti")


def test_a_well_formed_jti_the_appliance_did_not_issue_as_revocable_is_not_found(world):
    assert_error(revoke(world, "r" + b64u(os.urandom(28))), 404, "token_not_found")
    assert_error(revoke(world, "0" * 32), 404, "token_not_found")
    plain = mint(world)
    assert_error(revoke(world, plain["jti"]), 404, "token_not_found")
    # A real jti with another index and its MAC kept: forged, not found, nothing revoked.
    real = mint(world, revocable=True)
    raw = bytearray(unb64u(real["jti"][1:]))
    raw[7] ^= 1
    assert_error(revoke(world, "r" + b64u(bytes(raw))), 404, "token_not_found")
    assert redeem(world, real["token"]).status_code == 200


def test_a_delete_with_an_unknown_field_is_refused(world):
    body = mint(world, revocable=True)
    r = world["a"].delete("/v1/tokens/" + body["jti"], {"reason": "x"}, auth=world["a"].admin)
    assert_error(r, 400, "unknown_field")
    assert redeem(world, body["token"]).status_code == 200
    r = world["a"].delete("/v1/tokens/" + body["jti"], {}, auth=world["a"].admin)
    assert r.status_code == 200, r.text


def forged_tokens(w):
    """(name, token) pairs that are not a token of this appliance's, each for invalid_token."""
    good = mint(w)["token"]
    h, p, s = good.split(".")
    sig = bytearray(unb64u(s))
    sig[len(sig) // 2] ^= 0x01
    header = json.loads(unb64u(h))
    payload = json.loads(unb64u(p))
    local = jwk.JWK.generate(kty="RSA", size=2048)
    # The appliance's own signed documents that are no tokens: its publication key's.
    revocable = mint(w, revocable=True)
    status_jws = w["a"].get(urlsplit(revocable["status"]["uri"]).path, auth=False).text
    feed_jws = w["a"].get("/v1/revocations/feed", auth=False).text

    def signed_locally(hdr, pl):
        t = jws.JWS(json.dumps(pl).encode())
        t.add_signature(local, alg="RS256", protected=json.dumps(hdr))
        return t.serialize(compact=True)

    return [
        ("garbage", "garbage"),
        ("empty", ""),
        ("two parts", h + "." + p),
        ("four parts", good + ".x"),
        ("bad base64", h + "." + p + "." + s[:-1] + "*"),
        ("flipped signature byte", h + "." + p + "." + b64u(bytes(sig))),
        ("payload changed", h + "." + enc({**payload, "sub": "other"}) + "." + s),
        ("alg none", enc({**header, "alg": "none"}) + "." + p + "."),
        ("alg HS256", enc({**header, "alg": "HS256"}) + "." + p + "." + s),
        ("no kid", enc({"alg": "RS256", "typ": "JWT"}) + "." + p + "." + s),
        ("header not an object", b64u(b"[1]") + "." + p + "." + s),
        ("payload not JSON", h + "." + b64u(b"not json") + "." + s),
        ("unknown kid, own key", signed_locally({**header, "kid": "0" * 32}, payload)),
        ("known kid, own key", signed_locally(header, payload)),
        ("a status list", status_jws),
        ("the revocation feed", feed_jws),
        # Signed by the appliance's key itself, each wrong in one way.
        ("exp a string", appliance_signed(w, header, crafted_claims(exp="soon"))),
        ("exp a fraction",
         appliance_signed(w, header, crafted_claims(exp=int(time.time()) + 600.5))),
        ("no exp", appliance_signed(w, header, crafted_claims(exp=None))),
        ("payload an array", appliance_signed(w, header, [1, 2])),
        ("payload not JSON, signed", appliance_signed(w, header, b"{not json")),
        ("kid not hex", appliance_signed(w, {**header, "kid": w["kid"].upper()},
                                         crafted_claims())),
        ("alg RS512 claimed", appliance_signed(w, {**header, "alg": "RS512"}, crafted_claims())),
    ]


def test_every_token_that_is_not_one_of_the_appliances_is_invalid_token(world):
    failures = []
    for name, token in forged_tokens(world):
        r = redeem(world, token)
        if (r.status_code, code_of(r)) != (400, "invalid_token"):
            failures.append((name, r.status_code, r.text[:200]))
    assert failures == []


def test_a_well_formed_token_signed_through_the_sign_route_redeems(world):
    """The control for the forgeries above: a document made the same way but right passes,
    so each of them is refused for what is wrong in it."""
    claims = crafted_claims(single_use=True)
    token = appliance_signed(world, {"alg": "RS256", "typ": "JWT", "kid": world["kid"]}, claims)
    r = redeem(world, token)
    assert r.status_code == 200, r.text
    assert r.json()["redeemed"] is True and r.json()["claims"] == claims


def test_a_token_crafted_under_another_key_cannot_use_up_a_tokens_jti(world):
    """Redeemed jtis are kept per key: a signer that copies a single-use token's jti into a
    document its own key signs (through /sign) spends only that document, not the token."""
    victim = mint(world, single_use=True)
    other_kid = world["a"].create_key(label="crafter")["kid"]
    crafted = appliance_signed(world, {"alg": "RS256", "typ": "JWT", "kid": other_kid},
                               crafted_claims(single_use=True, jti=victim["jti"]),
                               kid=other_kid)
    first = redeem(world, crafted)
    assert first.status_code == 200 and first.json()["redeemed"] is True, first.text
    r = redeem(world, victim["token"])
    assert r.status_code == 200 and r.json()["redeemed"] is True, r.text
    assert code_of(redeem(world, victim["token"])) == "token_already_used"


def test_a_token_past_its_exp_is_expired_and_a_revoked_key_is_answered_first(world):
    a = world["a"]
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": world["kid"]}
    expired = appliance_signed(world, header,
                               crafted_claims(iat=now - 600, exp=now - 60, single_use=True))
    assert_error(redeem(world, expired), 409, "token_expired")
    assert_error(redeem(world, expired), 409, "token_expired")
    # Expired and not yet valid at once: one of the two (the same step of the checks).
    both = appliance_signed(world, header, crafted_claims(exp=now - 60, nbf=now + 600))
    assert code_of(redeem(world, both)) in ("token_expired", "token_not_yet_valid")
    kid = a.create_key(label="expired-and-revoked")["kid"]
    old = appliance_signed(world, {**header, "kid": kid},
                           crafted_claims(iat=now - 600, exp=now - 60), kid=kid)
    assert_error(redeem(world, old), 409, "token_expired")
    assert a.delete("/v1/keys/" + kid, {"reason": "test"}).status_code == 200
    assert_error(redeem(world, old), 409, "key_revoked")


@pytest.mark.parametrize("body,status,code", [
    ({}, 400, "missing_field"),
    ({"token": 5}, 400, "wrong_type"),
    ({"token": "a.b.c", "extra": 1}, 400, "unknown_field"),
    ({"token": "A" * (70 * 1024)}, 413, "body_too_large"),
])
def test_a_malformed_redeem_request_gets_its_code(world, body, status, code):
    r = world["a"].post("/v1/tokens/redeem", body, auth=world["redeemer"])
    assert_error(r, status, code)


@pytest.mark.parametrize("origin", [
    "https://a.example/",
    "https://a.example/path",
    "https://a.example?x=1",
    "https://a.example#f",
    "ftp://a.example",
    "https://A.example",
    "HTTPS://a.example",
    "https://user@a.example",
    "https://user:pw@a.example",
    "https://a.example:0",
    "https://a.example:65536",
    "https://a.example:",
    "https://a_b.example",
    "https://",
    "a.example",
    "//a.example",
    "https://a.example ",
    "https://" + "a" * 248 + ".example",
])
def test_a_malformed_origin_is_invalid_origin_when_minting_and_redeeming(world, origin):
    r = world["a"].post("/v1/tokens", {"kid": world["kid"], "origin": origin},
                        auth=world["signer"])
    assert_error(r, 400, "invalid_origin")
    plain = mint(world)
    assert_error(redeem(world, plain["token"], origin=origin), 400, "invalid_origin")


@pytest.mark.parametrize("origin", ["https://a.example", "http://10.0.0.1:8080",
                                    "https://a-b.c.example:65535", "https://localhost:1"])
def test_a_well_formed_origin_is_accepted_and_carried(world, origin):
    body = mint(world, origin=origin)
    assert payload_of(body["token"])["origin"] == origin
    r = redeem(world, body["token"], origin=origin)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("fields,code", [
    ({"single_use": "true"}, "wrong_type"),
    ({"single_use": 1}, "wrong_type"),
    ({"single_use": None}, "wrong_type"),
    ({"revocable": "yes"}, "wrong_type"),
    ({"revocable": 0}, "wrong_type"),
    ({"aud": 5}, "wrong_type"),
    ({"aud": ""}, "out_of_range"),
    ({"aud": "x" * 257}, "out_of_range"),
    ({"aud": "tab\there"}, "out_of_range"),
    ({"aud": ["a"]}, "wrong_type"),
    ({"origin": 5}, "wrong_type"),
    ({"claims": {"status": {"status_list": {"idx": 0, "uri": "https://x"}}}}, "reserved_claim"),
    ({"claims": {"single_use": True}}, "reserved_claim"),
    ({"claims": {"origin": "https://a.example"}}, "reserved_claim"),
    ({"aud": "cdn", "claims": {"aud": "other"}}, "reserved_claim"),
])
def test_a_malformed_mint_request_gets_its_code(world, fields, code):
    r = world["a"].post("/v1/tokens", {"kid": world["kid"], **fields}, auth=world["signer"])
    assert_error(r, 400, code)


def test_aud_in_claims_is_allowed_when_no_top_level_aud_is_given(world):
    body = mint(world, claims={"aud": ["a", "b"]})
    assert payload_of(body["token"])["aud"] == ["a", "b"]
    body = mint(world, aud="x" * 256)
    assert payload_of(body["token"])["aud"] == "x" * 256


@pytest.mark.parametrize("n", ["01", "00", "-1", "+1", "1024", "99999999999", "abc", "1.0",
                               "0x1", " 1"])
def test_a_malformed_status_list_number_is_invalid_status_list(world, n):
    r = world["a"].get("/v1/status-lists/" + n, auth=False)
    assert_error(r, 400, "invalid_status_list")


def test_a_list_not_created_yet_is_not_found_and_a_query_is_invalid(world):
    a = world["a"]
    body = mint(world, revocable=True)
    assert_error(a.get("/v1/status-lists/1023", auth=False), 404, "status_list_not_found")
    path = urlsplit(body["status"]["uri"]).path
    assert_error(a.get(path + "?x=1", auth=False), 400, "invalid_query")
    assert a.get(path, auth=False).status_code == 200


def test_claims_that_grow_past_the_signing_bound_get_400_token_too_large(world):
    """A body under 64 KiB whose claims jansson writes back longer (1e9 becomes
    1000000000.0) would exceed what the keeper signs: the caller's error, not 503."""
    a = world["a"]
    numbers = ",".join(["1e9"] * 15000)  # about 60 KB here, about 195 KB re-serialised
    body = '{"kid":"%s","sub":"big","claims":{"n":[%s]}}' % (world["kid"], numbers)
    assert len(body) < 64 * 1024
    r = a.post("/v1/tokens", auth=world["signer"], data=body,
               headers={"Content-Type": "application/json"})
    assert_error(r, 400, "token_too_large")
    assert "claims" in r.json()["error"]["message"]
    # Large claims that stay under the bound still sign.
    ok = mint(world, claims={"s": "x" * 40000})
    assert len(payload_of(ok["token"])["s"]) == 40000
