"""The appliance's HTTP API, black-box over HTTPS against a real SoftHSM2 token.

Signatures and tokens are checked with implementations nobody here wrote: python3
cryptography for raw RS256, python3-jwcrypto for JWTs against the fetched JWKS.
"""
import base64
import json
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.exceptions import InvalidSignature
from jwcrypto import jwk, jwt


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_key_from_jwk(j):
    n = int.from_bytes(unb64u(j["n"]), "big")
    e = int.from_bytes(unb64u(j["e"]), "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


def test_created_key_signs_and_signature_verifies_against_its_jwk(appliance):
    key = appliance.create_key(label="raw-sign")
    assert len(key["kid"]) == 32 and all(c in "0123456789abcdef" for c in key["kid"])
    assert key["state"] == "active" and key["bits"] == 2048
    assert key["jwk"]["kid"] == key["kid"] and key["jwk"]["alg"] == "RS256"
    message = b"bytes chosen by an app server \x00\xff"
    r = appliance.post("/v1/keys/%s/sign" % key["kid"], {"payload": b64u(message)})
    assert r.status_code == 200, r.text
    sig = unb64u(r.json()["signature"])
    pub = public_key_from_jwk(key["jwk"])
    pub.verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
    # The PEM in the create response is the same key.
    pem_key = serialization.load_pem_public_key(key["pem"].encode())
    assert pem_key.public_numbers() == pub.public_numbers()
    with pytest.raises(InvalidSignature):
        pub.verify(sig, message + b"!", padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize("bits", [3072, 4096])
def test_larger_keys_sign_verifiable_signatures(appliance, bits):
    key = appliance.create_key(bits=bits)
    assert key["bits"] == bits
    r = appliance.post("/v1/keys/%s/sign" % key["kid"], {"payload": b64u(b"x")})
    assert r.status_code == 200
    sig = unb64u(r.json()["signature"])
    assert len(sig) == bits // 8
    public_key_from_jwk(key["jwk"]).verify(sig, b"x", padding.PKCS1v15(), hashes.SHA256())
    appliance.delete("/v1/keys/" + key["kid"], {"reason": "test cleanup"})


def test_minted_token_verifies_with_jwcrypto_against_fetched_jwks(appliance):
    key = appliance.create_key(label="tokens")
    claims = {"accessRules": [{"type": "ip.src", "action": "allow", "ip": ["10.0.0.0/8"]}],
              "downloadable": True, "nested": {"a": [1, 2, {"b": None}]}}
    nbf = int(time.time()) - 5
    r = appliance.post("/v1/tokens", {"kid": key["kid"], "sub": "video-123", "ttl": 600,
                                      "nbf": nbf, "claims": claims})
    assert r.status_code == 200, r.text
    body = r.json()
    jwks = appliance.get("/.well-known/jwks.json", auth=False)
    assert jwks.status_code == 200
    keyset = jwk.JWKSet.from_json(jwks.text)
    tok = jwt.JWT(jwt=body["token"], key=keyset, algs=["RS256"])
    header = json.loads(tok.header)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": key["kid"]}
    got = json.loads(tok.claims)
    assert got["sub"] == "video-123"
    assert got["exp"] - got["iat"] == 600
    assert got["nbf"] == nbf
    assert got["accessRules"] == claims["accessRules"]
    assert got["downloadable"] is True
    assert got["nested"] == claims["nested"]
    assert len(got["jti"]) == 32 and got["jti"] == body["jti"]


def test_token_without_kid_uses_newest_active_key_and_default_ttl(appliance):
    appliance.create_key(label="older")
    newest = appliance.create_key(label="newest")
    r = appliance.post("/v1/tokens", {"sub": "upload"})
    assert r.status_code == 200, r.text
    assert r.json()["kid"] == newest["kid"]
    payload = json.loads(unb64u(r.json()["token"].split(".")[1]))
    assert payload["exp"] - payload["iat"] == 3600


def test_two_tokens_get_distinct_jti(appliance):
    key = appliance.create_key()
    a = appliance.post("/v1/tokens", {"kid": key["kid"], "sub": "s"}).json()["jti"]
    b = appliance.post("/v1/tokens", {"kid": key["kid"], "sub": "s"}).json()["jti"]
    assert a != b


@pytest.mark.parametrize("claim", ["iat", "exp", "jti", "iss", "sub", "nbf"])
def test_caller_cannot_override_reserved_claims(appliance, claim):
    r = appliance.post("/v1/tokens", {"sub": "s", "claims": {claim: 1}})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "reserved_claim"


def test_revoked_kid_leaves_jwks_enters_revocations_and_cannot_sign(appliance):
    key = appliance.create_key(label="to-revoke")
    kid = key["kid"]
    before = appliance.get("/.well-known/jwks.json", auth=False)
    assert kid in [k["kid"] for k in before.json()["keys"]]
    seq_before = appliance.get("/v1/revocations", auth=False).json()["sequence"]

    r = appliance.delete("/v1/keys/" + kid, {"reason": "key compromised"})
    assert r.status_code == 200, r.text
    rec = r.json()
    assert rec["state"] == "revoked" and rec["reason"] == "key compromised"

    after = appliance.get("/.well-known/jwks.json", auth=False)
    assert kid not in [k["kid"] for k in after.json()["keys"]]
    assert after.headers["ETag"] != before.headers["ETag"]

    revs = appliance.get("/v1/revocations", auth=False).json()
    assert revs["sequence"] == seq_before + 1
    entry = [e for e in revs["revoked"] if e["kid"] == kid]
    assert len(entry) == 1 and entry[0]["reason"] == "key compromised"
    assert entry[0]["revoked_at"] == rec["revoked_at"]

    s = appliance.post("/v1/keys/%s/sign" % kid, {"payload": b64u(b"x")})
    assert s.status_code == 409 and s.json()["error"]["code"] == "key_revoked"
    t = appliance.post("/v1/tokens", {"kid": kid, "sub": "x"})
    assert t.status_code == 409 and t.json()["error"]["code"] == "key_revoked"

    # Idempotent: the same record, and the sequence does not move.
    again = appliance.delete("/v1/keys/" + kid, {"reason": "another reason"})
    assert again.status_code == 200 and again.json() == rec
    assert appliance.get("/v1/revocations", auth=False).json()["sequence"] == seq_before + 1


def test_revocations_after_returns_only_newer_entries(appliance):
    k1, k2 = appliance.create_key(), appliance.create_key()
    appliance.delete("/v1/keys/" + k1["kid"])
    seq = appliance.get("/v1/revocations", auth=False).json()["sequence"]
    appliance.delete("/v1/keys/" + k2["kid"])
    delta = appliance.get("/v1/revocations?after=%d" % seq, auth=False).json()
    assert [e["kid"] for e in delta["revoked"]] == [k2["kid"]]
    assert delta["sequence"] == seq + 1


def test_jwks_and_revocations_carry_etag_cache_control_and_answer_304(appliance):
    for path in ("/.well-known/jwks.json", "/v1/revocations"):
        r = appliance.get(path, auth=False)
        assert r.status_code == 200
        assert r.headers["Cache-Control"] == "public, max-age=60"
        etag = r.headers["ETag"]
        again = appliance.get(path, auth=False, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["ETag"] == etag
        other = appliance.get(path, auth=False, headers={"If-None-Match": '"nope"'})
        assert other.status_code == 200


def test_list_and_show_keys_and_filter_by_state(appliance):
    key = appliance.create_key(label="listed")
    one = appliance.get("/v1/keys/" + key["kid"])
    assert one.status_code == 200 and one.json()["label"] == "listed"
    everything = appliance.get("/v1/keys").json()
    assert key["kid"] in [k["kid"] for k in everything["keys"]]
    active = appliance.get("/v1/keys?state=active").json()["keys"]
    assert all(k["state"] == "active" for k in active)
    revoked = appliance.get("/v1/keys?state=revoked").json()["keys"]
    assert all(k["state"] == "revoked" for k in revoked)


def test_health_and_readiness(appliance):
    assert appliance.get("/healthz", auth=False).json()["status"] == "ok"
    r = appliance.get("/readyz", auth=False)
    assert r.status_code == 200 and r.json()["status"] == "ready"


def test_restart_keeps_keys_states_and_revocations(make_appliance):
    a = make_appliance()
    kept = a.create_key(label="kept")
    gone = a.create_key(label="gone")
    a.delete("/v1/keys/" + gone["kid"], {"reason": "rotation"})
    revs_before = a.get("/v1/revocations", auth=False).json()
    jwks_before = a.get("/.well-known/jwks.json", auth=False).json()
    a.restart()
    assert a.get("/v1/keys/" + kept["kid"]).json()["state"] == "active"
    assert a.get("/v1/keys/" + gone["kid"]).json()["state"] == "revoked"
    assert a.get("/v1/revocations", auth=False).json() == revs_before
    assert a.get("/.well-known/jwks.json", auth=False).json() == jwks_before
    r = a.post("/v1/keys/%s/sign" % kept["kid"], {"payload": b64u(b"after restart")})
    assert r.status_code == 200
    public_key_from_jwk(kept["jwk"]).verify(unb64u(r.json()["signature"]), b"after restart",
                                            padding.PKCS1v15(), hashes.SHA256())
    assert a.post("/v1/keys/%s/sign" % gone["kid"], {"payload": "eA"}).status_code == 409
