"""The hsm layer probes the token instead of assuming SoftHSM2 (issue 21, item 1), as the
running appliance shows it: every key's token_attributes (read back from the token, not
the template), the keeper's one start-up line of probed facts, the forced CKM_RSA_PKCS path
giving the very signatures CKM_SHA256_RSA_PKCS gives, and a key made before the attributes
were recorded getting them from reconcile at the next start.

A key size the token cannot make (400 key_size_unsupported) cannot be shown on SoftHSM2,
which makes 512 to 16384 bits: tests/unit/test_hsm.c proves the mapping with the token's
bound lowered, and the modules suite on tpm2-pkcs11 (RSA up to 3072) with 4096."""

import base64
import os
import sqlite3
import subprocess

from prometheus_client.parser import text_string_to_metric_families
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from conftest import SIGND

SIGN_ONLY = {"sensitive": True, "extractable": False, "never_extractable": True,
             "sign_only": True}


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify(jwk, sig, payload):
    n = int.from_bytes(unb64u(jwk["n"]), "big")
    e = int.from_bytes(unb64u(jwk["e"]), "big")
    rsa.RSAPublicNumbers(e, n).public_key().verify(sig, payload, padding.PKCS1v15(),
                                                   hashes.SHA256())


def sign(a, kid, payload):
    r = a.post("/v1/keys/%s/sign" % kid, {"payload": b64u(payload)})
    assert r.status_code == 200, r.text
    return unb64u(r.json()["signature"])


def test_a_key_shows_the_attributes_the_token_holds(appliance):
    made = appliance.create_key(label="attrs")
    assert made["token_attributes"] == SIGN_ONLY
    one = appliance.get("/v1/keys/" + made["kid"]).json()
    assert one["token_attributes"] == SIGN_ONLY
    listed = {k["kid"]: k for k in appliance.get("/v1/keys").json()["keys"]}
    assert listed[made["kid"]]["token_attributes"] == SIGN_ONLY
    # A rotation's successor is read back like any new key.
    r = appliance.post("/v1/keys/%s/rotate" % made["kid"], {"grace_seconds": 60})
    assert r.status_code == 201, r.text
    assert r.json()["token_attributes"] == SIGN_ONLY
    assert r.json()["predecessor_key"]["token_attributes"] == SIGN_ONLY


def test_a_size_outside_the_appliances_own_list_is_out_of_range_not_the_tokens(appliance):
    # The appliance's own sizes are checked before the token is asked: another code than
    # key_size_unsupported, which is the token's refusal of a size the appliance allows.
    r = appliance.post("/v1/keys", {"bits": 1024})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "out_of_range"


def test_the_keeper_logs_what_it_probed_once_at_start(make_appliance):
    a = make_appliance()
    a.create_key()
    log = a.read_log()
    lines = [l for l in log.splitlines() if "signd-keeper: token" in l]
    assert len(lines) == 1, log
    line = lines[0]
    assert "SoftHSM" in line and "signs with CKM_SHA256_RSA_PKCS;" in line, line
    assert "RSA key sizes 512-16384" in line and "PIN length" in line, line
    # SoftHSM2 makes sign-only keys: no warning about a key that is not.
    assert "not sign-only" not in log


def token_info(a):
    r = a.get("/metrics")
    assert r.status_code == 200, r.text
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    found = [s.labels for s in fams["signd_token_info"].samples if s.value == 1]
    assert len(found) == 1, r.text
    return found[0]


def test_metrics_show_what_the_keeper_probed(appliance):
    info = token_info(appliance)
    assert info["sign_mechanism"] == "sha256_rsa_pkcs"
    assert info["manufacturer"] == "SoftHSM project"
    assert "SoftHSM" in info["model"]
    assert int(info["rsa_min_bits"]) <= 2048 and int(info["rsa_max_bits"]) >= 4096
    assert int(info["pin_min"]) >= 1 and int(info["max_sessions"]) >= 1
    assert info["sign_only_refused"] == "false"


def test_the_forced_rsa_pkcs_path_gives_the_same_signatures(make_appliance):
    a = make_appliance({"pkcs11_sign_mechanism": "rsa_pkcs"})
    key = a.create_key(label="both paths")
    assert key["token_attributes"] == SIGN_ONLY
    payloads = [b"", b"x", b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0", os.urandom(3000)]
    by_rsa_pkcs = [sign(a, key["kid"], p) for p in payloads]
    for p, s in zip(payloads, by_rsa_pkcs):
        verify(key["jwk"], s, p)
    assert "signs with CKM_RSA_PKCS over a SHA-256 DigestInfo" in a.read_log()
    assert token_info(a)["sign_mechanism"] == "rsa_pkcs"
    # The same key through CKM_SHA256_RSA_PKCS: PKCS#1 v1.5 is deterministic, so the two
    # paths must agree to the byte.
    a.stop()
    a.set_conf({"pkcs11_sign_mechanism": "sha256_rsa_pkcs"})
    a.start()
    assert [sign(a, key["kid"], p) for p in payloads] == by_rsa_pkcs
    # And a token minted after the switch verifies against the published key.
    r = a.post("/v1/tokens", {"kid": key["kid"], "sub": "alice"})
    assert r.status_code == 200, r.text
    head, body, sig = r.json()["token"].split(".")
    verify(key["jwk"], unb64u(sig), (head + "." + body).encode())


def test_an_unknown_mechanism_name_stops_the_start_with_one_line(make_appliance):
    a = make_appliance(start=False)
    a.set_conf({"pkcs11_sign_mechanism": "sha1_rsa_pkcs"})
    p = subprocess.run([SIGND, a.conf], capture_output=True, timeout=60)
    assert p.returncode != 0
    err = p.stderr.decode()
    assert "pkcs11_sign_mechanism" in err and "auto, sha256_rsa_pkcs or rsa_pkcs" in err, err


def test_a_key_recorded_as_not_sign_only_is_shown_and_warned_about_at_start(make_appliance):
    a = make_appliance()
    key = a.create_key(label="weak")
    a.stop()
    # As tpm2-pkcs11 would have made it: read back, sensitive, never extractable, but not
    # sign-only (SK_ATTR_READ | SENSITIVE | NEVER_EXTRACTABLE).
    conn = sqlite3.connect(os.path.join(a.dir, "appliance.db"))
    with conn:
        conn.execute("UPDATE keys SET token_attrs = 11 WHERE kid = ?", (key["kid"],))
    conn.close()
    a.start()
    got = a.get("/v1/keys/" + key["kid"]).json()["token_attributes"]
    assert got == dict(SIGN_ONLY, sign_only=False)
    log = a.read_log()
    assert log.count("1 live keys are not sign-only in the token") == 1, log
    # It still signs: the key is kept, only said to be weaker.
    verify(key["jwk"], sign(a, key["kid"], b"still signs"), b"still signs")


def test_a_key_made_before_gets_its_attributes_at_the_next_start(make_appliance):
    a = make_appliance()
    key = a.create_key(label="older")
    a.stop()
    # As a registry an older build wrote: the column there, nothing in it.
    conn = sqlite3.connect(os.path.join(a.dir, "appliance.db"))
    with conn:
        conn.execute("UPDATE keys SET token_attrs = NULL")
    conn.close()
    a.start()
    # Reconcile ran before the front served: the attributes are read back and recorded.
    assert a.get("/v1/keys/" + key["kid"]).json()["token_attributes"] == SIGN_ONLY
    conn = sqlite3.connect(os.path.join(a.dir, "appliance.db"))
    try:
        (n,) = conn.execute("SELECT count(*) FROM keys WHERE token_attrs IS NULL").fetchone()
    finally:
        conn.close()
    assert n == 0
