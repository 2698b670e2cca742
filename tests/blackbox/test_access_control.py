"""Access control, black-box over HTTPS: the role matrix, signer scopes, credential
management, rate limits and certificate-bound credentials, against a real appliance."""
import base64
import os
import re
import subprocess
import time

import pytest
import requests

from conftest import TOP, BUILD, reachable

PROVISION = os.path.join(TOP, BUILD, "bin", "signd-provision")
ZERO_KID = "0" * 32


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def world(make_module_appliance):
    """One appliance with a key A (older), a key B, and one credential of each kind."""
    a = make_module_appliance()
    key_a = a.create_key(label="A")["kid"]
    key_b = a.create_key(label="B")["kid"]
    creds = {
        "admin": a.admin,
        "signer": a.create_credential("signer", kids="all")["secret"],
    }
    auditor = a.create_credential("auditor")
    creds["auditor"] = auditor["secret"]
    creds["redeemer"] = a.create_credential("redeemer")["secret"]
    # A plain token to redeem (any number of times) and status list 0 to read.
    minted = a.post("/v1/tokens", {"kid": key_a, "revocable": True}, auth=creds["signer"])
    assert minted.status_code == 200, minted.text
    creds["none"] = None
    return {"a": a, "A": key_a, "B": key_b, "creds": creds, "auditor_id": auditor["id"],
            "token": minted.json()["token"]}


@pytest.fixture(scope="module")
def make_module_appliance(tmp_path_factory):
    from conftest import Appliance
    made = []

    def factory(extra_conf=None):
        ap = Appliance(str(tmp_path_factory.mktemp("signd-ac")), extra_conf).start()
        made.append(ap)
        return ap

    yield factory
    for ap in made:
        ap.stop()


# The authorization matrix: route -> the roles that get a success. Every other role's 403,
# the 401 of no credential, an unknown or a revoked one, and public routes taking anyone are
# the front's decisions, pinned by tests/unit/test_front.c against the real server; here each
# allowed role shows the whole appliance serving the route to it.
MATRIX = [
    ("POST", "/v1/keys", {"admin"}),
    ("GET", "/v1/keys", {"admin", "auditor"}),
    ("GET", "/v1/keys/{A}", {"admin", "auditor"}),
    ("DELETE", "/v1/keys/{victim}", {"admin"}),
    ("POST", "/v1/keys/{victim}/rotate", {"admin"}),
    ("POST", "/v1/keys/{A}/sign", {"signer"}),
    ("POST", "/v1/tokens", {"signer"}),
    ("DELETE", "/v1/tokens/{victim_token}", {"admin", "signer"}),
    ("POST", "/v1/tokens/redeem", {"redeemer"}),
    ("POST", "/v1/subjects/revoke", {"admin", "signer"}),
    ("GET", "/v1/status-lists/0", "public"),
    ("POST", "/v1/credentials", {"admin"}),
    ("GET", "/v1/credentials", {"admin"}),
    ("GET", "/v1/credentials/{cred}", {"admin"}),
    ("DELETE", "/v1/credentials/{victim_cred}", {"admin"}),
    ("GET", "/v1/audit", {"admin", "auditor"}),
    ("GET", "/v1/audit/export", {"admin", "auditor"}),
    ("GET", "/v1/audit/key", "public"),
    ("GET", "/.well-known/jwks.json", "public"),
    ("GET", "/v1/revocations", "public"),
    ("GET", "/v1/revocations/feed", "public"),
    ("GET", "/v1/revocations/key", "public"),
    ("GET", "/v1/revocations/events", "public"),
    ("GET", "/healthz", "public"),
    ("GET", "/readyz", "public"),
    ("GET", "/metrics", {"admin", "auditor"}),
    ("GET", "/v1/whoami", {"admin", "signer", "auditor", "redeemer"}),
    ("GET", "/console/", "public"),
    ("GET", "/console/app.js", "public"),
    ("HEAD", "/console/app.js", "public"),
]


def body_for(method, path, world):
    if path == "/v1/tokens/redeem":
        return {"token": world["token"]}
    if path == "/v1/subjects/revoke":
        return {"sub": "matrix"}
    if path.endswith("/sign"):
        return {"payload": b64u(b"matrix")}
    if path == "/v1/tokens":
        return {"sub": "matrix", "ttl": 300}
    if path == "/v1/credentials" and method == "POST":
        return {"role": "auditor", "label": "matrix"}
    if path == "/v1/keys" and method == "POST":
        return {"label": "matrix"}
    if method == "DELETE" and path.startswith("/v1/keys/"):
        return {"reason": "matrix"}
    if path.endswith("/rotate"):
        return {"grace_seconds": 60}
    return None


SERVED = [(m, p, who) for m, p, allowed in MATRIX
          for who in (["none"] if allowed == "public" else sorted(allowed))]


@pytest.mark.parametrize("method,template,who", SERVED,
                         ids=["%s %s %s" % case for case in SERVED])
def test_every_allowed_role_is_served_the_routes_of_the_matrix(world, who, method, template):
    a = world["a"]
    # Victims are fresh for each call that may succeed, so a DELETE really deletes.
    victim = a.create_key(label="victim")["kid"] if "{victim}" in template else ZERO_KID
    victim_cred = (a.create_credential("auditor")["id"]
                   if "{victim_cred}" in template else "0" * 16)
    # A revocable token of the matrix's signer: the signer may revoke what it minted.
    victim_token = (a.post("/v1/tokens", {"revocable": True}, auth=world["creds"]["signer"])
                    .json()["jti"] if "{victim_token}" in template else "x")
    path = template.format(A=world["A"], victim=victim, cred=world["auditor_id"],
                           victim_cred=victim_cred, victim_token=victim_token)
    secret = world["creds"][who]
    # The event stream never ends by itself: read its status and headers only.
    stream = template.endswith("/events")
    r = a.request(method, path, auth=secret if secret else False,
                  json=body_for(method, path, world), stream=stream)
    if stream:
        r.close()
    created = ("/v1/keys", "/v1/credentials", "/v1/keys/{victim}/rotate")
    expect = 201 if method == "POST" and template in created else 200
    assert r.status_code == expect, (who, method, path, r.text)


def test_a_signer_scoped_to_one_kid_gets_403_on_another(world):
    a = world["a"]
    scoped = a.create_credential("signer", kids=[world["A"]])["secret"]
    ok = a.post("/v1/keys/%s/sign" % world["A"], {"payload": "eA"}, auth=scoped)
    assert ok.status_code == 200, ok.text
    for r in (a.post("/v1/keys/%s/sign" % world["B"], {"payload": "eA"}, auth=scoped),
              a.post("/v1/tokens", {"kid": world["B"]}, auth=scoped)):
        assert r.status_code == 403 and r.json()["error"]["code"] == "kid_not_allowed", r.text
    # No kid named: the newest key it may use (A), not the appliance's newest (B).
    r = a.post("/v1/tokens", {"sub": "x"}, auth=scoped)
    assert r.status_code == 200 and r.json()["kid"] == world["A"], r.text


def test_a_signer_asking_past_its_max_ttl_gets_ttl_too_long(world):
    a = world["a"]
    capped = a.create_credential("signer", kids="all", max_ttl=600)
    assert capped["max_ttl"] == 600
    r = a.post("/v1/tokens", {"ttl": 601}, auth=capped["secret"])
    assert r.status_code == 400 and r.json()["error"]["code"] == "ttl_too_long", r.text
    r = a.post("/v1/tokens", {"ttl": 600}, auth=capped["secret"])
    assert r.status_code == 200, r.text
    # Asking for nothing gets the credential's own ceiling, not an error.
    r = a.post("/v1/tokens", {}, auth=capped["secret"])
    assert r.status_code == 200 and r.json()["exp"] - r.json()["iat"] == 600


def test_created_secret_is_shown_once_prefixed_and_never_stored(world):
    a = world["a"]
    made = a.create_credential("signer", kids=[world["A"], world["B"]], label="cdn-edge")
    assert re.fullmatch(r"sgd_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", made["secret"])
    assert made["secret"][4:20] == made["id"]
    assert made["kids"] == [world["A"], world["B"]] and made["label"] == "cdn-edge"
    shown = a.get("/v1/credentials/" + made["id"]).json()
    assert "secret" not in shown and shown["state"] == "active"
    assert all("secret" not in c for c in a.get("/v1/credentials").json()["credentials"])
    for name in os.listdir(a.dir):
        if name.startswith("appliance.db"):
            with open(os.path.join(a.dir, name), "rb") as f:
                assert made["secret"].encode() not in f.read()


def test_a_revoked_credential_is_refused_on_its_next_request(world):
    a = world["a"]
    made = a.create_credential("signer", kids="all")
    assert a.post("/v1/tokens", {}, auth=made["secret"]).status_code == 200
    r = a.delete("/v1/credentials/" + made["id"])
    assert r.status_code == 200 and r.json()["state"] == "revoked" and r.json()["revoked_at"] > 0
    assert a.post("/v1/tokens", {}, auth=made["secret"]).status_code == 401
    again = a.delete("/v1/credentials/" + made["id"])
    assert again.status_code == 200 and again.json()["revoked_at"] == r.json()["revoked_at"]


@pytest.mark.parametrize("body,code", [
    ({"role": "root"}, "invalid_role"),
    ({}, "missing_field"),
    ({"role": "signer"}, "missing_field"),
    ({"role": "signer", "kids": []}, "out_of_range"),
    ({"role": "signer", "kids": ["nothex"]}, "invalid_kid"),
    ({"role": "signer", "kids": ["f" * 32]}, "invalid_kid"),
    ({"role": "signer", "kids": "some"}, "wrong_type"),
    ({"role": "signer", "kids": "all", "max_ttl": 10}, "out_of_range"),
    ({"role": "signer", "kids": "all", "max_ttl": "600"}, "wrong_type"),
    ({"role": "admin", "kids": "all"}, "out_of_range"),
    ({"role": "auditor", "max_ttl": 600}, "out_of_range"),
    ({"role": "auditor", "label": "tab\there"}, "invalid_label"),
    ({"role": "auditor", "label": "x" * 129}, "out_of_range"),
    ({"role": "auditor", "client_subject": "CN=app"}, "bad_request"),
    ({"role": "auditor", "secret": "mine"}, "unknown_field"),
])
def test_bad_credential_requests_get_a_stable_error_code(world, body, code):
    r = world["a"].post("/v1/credentials", body)
    assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text


def test_bad_credential_ids_and_unknown_ids(world):
    a = world["a"]
    r = a.get("/v1/credentials/XYZ")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_credential_id"
    r = a.delete("/v1/credentials/" + "0" * 16)
    assert r.status_code == 404 and r.json()["error"]["code"] == "credential_not_found"


def test_the_last_admin_cannot_be_revoked_and_offline_recovery_mints_a_new_one(make_appliance,
                                                                                tmp_path):
    a = make_appliance()
    boot_id = a.admin[4:20]
    r = a.delete("/v1/credentials/" + boot_id)
    assert r.status_code == 409 and r.json()["error"]["code"] == "last_admin"
    second = a.create_credential("admin", label="second")
    assert a.delete("/v1/credentials/" + boot_id, auth=second["secret"]).status_code == 200
    assert a.get("/v1/keys").status_code == 401  # the bootstrap secret is dead now

    # Every admin secret lost: with data-directory access, mint one offline.
    a.stop()
    out = tmp_path / "recovered.credential"
    p = subprocess.run([PROVISION, "admin-credential", a.dir, "--out", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert oct(os.stat(out).st_mode & 0o777) == "0o600"
    again = subprocess.run([PROVISION, "admin-credential", a.dir, "--out", str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
    assert "--out" in again.stderr and str(out) in again.stderr
    a.start()
    recovered = out.read_text().strip()
    assert recovered not in p.stdout + p.stderr  # shown only in its 0600 file
    assert a.get("/v1/credentials", auth=recovered).status_code == 200


def test_past_the_burst_a_credential_gets_429_and_works_again_after_retry_after(make_appliance):
    a = make_appliance({"rate_limit_per_second": 1, "rate_limit_burst": 5})
    counted = a.create_credential("auditor")["secret"]
    other = a.create_credential("auditor")["secret"]
    codes = [a.get("/v1/keys", auth=counted).status_code for _ in range(5)]
    assert codes == [200] * 5
    r = a.get("/v1/keys", auth=counted)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
    wait = int(r.headers["Retry-After"])
    assert 1 <= wait <= 2
    # Per credential: another one is not slowed down by this one.
    assert a.get("/v1/keys", auth=other).status_code == 200
    time.sleep(wait)
    assert a.get("/v1/keys", auth=counted).status_code == 200


def test_repeated_bad_credentials_from_one_address_are_slowed_down(make_appliance):
    a = make_appliance({"auth_failure_burst": 3, "auth_failures_per_minute": 60})
    bad = "sgd_0123456789abcdef_" + "A" * 43
    assert [a.get("/v1/keys", auth=bad).status_code for _ in range(3)] == [401, 401, 401]
    r = a.get("/v1/keys", auth=bad)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    # While the address is throttled even a good credential waits: guessing gains nothing.
    r = a.get("/v1/keys")
    assert r.status_code == 429
    time.sleep(int(r.headers["Retry-After"]))
    assert a.get("/v1/keys").status_code == 200
    # Public routes never look at credentials, so they are never throttled this way.
    assert a.get("/healthz", auth=bad).status_code == 200


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def client_pki(tmp_path_factory):
    """A client CA and two client certificates it issued: CN=app1 and CN=app2."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "2", "-subj", "/CN=client CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for cn in ("app1", "app2"):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-subj", "/O=Example/CN=%s" % cn, "-keyout", cn + ".key", "-out", cn + ".csr",
                cwd=d)
        openssl("x509", "-req", "-in", cn + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-out", cn + ".pem", cwd=d)
    reachable(d / "ca.pem")  # the front's account reads it (conftest.reachable)
    return {n: str(d / n) for n in ("ca.pem", "app1.pem", "app1.key", "app2.pem", "app2.key")}


def test_a_credential_bound_to_a_certificate_subject_works_only_with_that_certificate(
        make_appliance, client_pki):
    a = make_appliance({"tls_client_ca": client_pki["ca.pem"]}, start=False)
    app1 = (client_pki["app1.pem"], client_pki["app1.key"])
    app2 = (client_pki["app2.pem"], client_pki["app2.key"])
    a.client_cert = app1
    a.start()
    key = a.create_key()
    bound = a.create_credential("signer", kids="all", client_subject="CN=app1,O=Example")
    assert bound["client_subject"] == "CN=app1,O=Example"
    url = a.url + "/v1/keys/%s/sign" % key["kid"]

    def sign_with(cert):
        # A fresh session per certificate: a pooled connection keeps its first certificate.
        with requests.Session() as s:
            return s.post(url, json={"payload": "eA"}, headers=a.auth(bound["secret"]),
                          cert=cert, verify=a.cacert, timeout=30)

    r = sign_with(app1)
    assert r.status_code == 200, r.text
    r = sign_with(app2)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
    # An unbound credential works with any certificate of the client CA.
    with requests.Session() as s:
        r = s.get(a.url + "/v1/keys", headers=a.auth(), cert=app2, verify=a.cacert, timeout=30)
        assert r.status_code == 200


def test_every_response_carries_hsts_and_no_server_header(world):
    a = world["a"]
    for r in (a.get("/healthz", auth=False), a.get("/v1/keys", auth=False),
              a.get("/no/such/route", auth=False), a.get("/v1/keys")):
        assert r.headers["Strict-Transport-Security"] == "max-age=31536000", r.headers
        assert "Server" not in r.headers


def test_hsts_max_age_zero_sends_no_hsts_header(make_appliance):
    a = make_appliance({"hsts_max_age": 0})
    assert "Strict-Transport-Security" not in a.get("/healthz", auth=False).headers

