"""signdctl, the operator CLI (build/bin/signdctl), against a real appliance over HTTPS.

Driven the way a script drives it (--json, exit codes, stdout and stderr apart) and the
way a person does (through a pseudo-terminal, where keys create --count draws a progress
bar). Every result is checked against the appliance's own API (and tokens with jwcrypto),
not against what the CLI says about itself. Every process a test starts is stopped by PID.
Argument handling that needs no appliance (help, usage errors, exit 2 and 3, where the
secret may come from) is tests/unit/test_cli.c's.
"""
import base64
import json
import os
import pty
import re
import select
import signal
import subprocess
import tempfile
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from jwcrypto import jwk, jwt

from procs import stop_process

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("SIGND_BUILD", "build")
CTL = os.path.join(TOP, BUILD, "bin", "signdctl")

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_CONNECT, EXIT_AUTH = 0, 1, 2, 3, 4
EXIT_LIMIT, EXIT_AUDIT, EXIT_INTERRUPTED = 6, 7, 130
KID = re.compile(r"^[0-9a-f]{32}$")


def write_secret(directory, name, secret):
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return path


def ctl_env(a, **extra):
    """The environment an operator sets once: where the appliance is and how to trust it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGND_")}
    env.update(SIGND_URL=a.url, SIGND_CACERT=a.cacert)
    env.update(extra)
    return env


def ctl(a, *args, cred=None, env=None, stdin=None, timeout=300):
    """Runs signdctl with the admin credential file (or cred, a file path; False: none)."""
    e = env if env is not None else ctl_env(a)
    if cred is None:
        cred = os.path.join(a.dir, "admin.credential")
    if cred:
        e["SIGND_CREDENTIAL_FILE"] = cred
    return subprocess.run([CTL, *args], env=e, input=stdin, capture_output=True, timeout=timeout)


def one_error_line(r):
    """stderr of a failed run: exactly one line, naming the problem and the fix."""
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1, r.stderr.decode()
    assert lines[0].startswith("signdctl: ") and "; " in lines[0], lines[0]
    return lines[0]


def keys_by_label(a, label):
    r = a.get("/v1/keys")
    assert r.status_code == 200, r.text
    return {k["kid"]: k for k in r.json()["keys"] if k["label"] == label}


@pytest.fixture(scope="module")
def tmp():
    with tempfile.TemporaryDirectory(prefix="signdctl-") as d:
        yield d


@pytest.fixture(scope="module")
def signer_file(appliance, tmp):
    return write_secret(tmp, "signer.credential", appliance.signer)


# ---- the way a script drives it: --json and exit codes -------------------------------------


def test_keys_create_json_is_the_created_key(appliance):
    r = ctl(appliance, "--json", "keys", "create", "--label", "json-one")
    assert r.returncode == EXIT_OK, r.stderr
    key = json.loads(r.stdout)
    assert KID.match(key["kid"]) and key["state"] == "active" and key["label"] == "json-one"
    api = appliance.get("/v1/keys/" + key["kid"]).json()
    assert api["jwk"] == key["jwk"] and api["bits"] == key["bits"] == 2048


def test_keys_list_and_show_json_match_the_api(appliance):
    kid = appliance.create_key(label="listed")["kid"]
    r = ctl(appliance, "keys", "list", "--json")
    assert r.returncode == EXIT_OK, r.stderr
    listed = json.loads(r.stdout)
    assert listed == appliance.get("/v1/keys").json()
    r = ctl(appliance, "keys", "show", kid, "--json")
    assert r.returncode == EXIT_OK
    assert json.loads(r.stdout) == appliance.get("/v1/keys/" + kid).json()


def test_keys_list_is_an_aligned_table(appliance):
    appliance.create_key(label="table row")
    r = ctl(appliance, "keys", "list")
    assert r.returncode == EXIT_OK, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0].split()[:5] == ["KID", "STATE", "BITS", "CREATED", "LABEL"]
    # Each column starts at the same offset on every line.
    starts = [lines[0].index(h) for h in ("STATE", "BITS", "CREATED", "LABEL")]
    api = {k["kid"]: k for k in appliance.get("/v1/keys").json()["keys"]}
    assert len(lines) == 1 + len(api)
    for line in lines[1:]:
        kid = line[:32]
        assert kid in api
        assert line[starts[0]:].split()[0] == api[kid]["state"]
        assert line[starts[2]:].startswith(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(
            api[kid]["created_at"])))
        assert line[starts[3]:] == (api[kid]["label"] or "-")


def test_unknown_kid_exits_1_with_the_api_code(appliance):
    r = ctl(appliance, "keys", "show", "0" * 32)
    assert r.returncode == EXIT_REFUSED
    line = one_error_line(r)
    assert "key_not_found" in line and "keys list" in line


def test_bad_credential_exits_4(appliance, tmp):
    wrong = write_secret(tmp, "wrong.credential", "sgd_0123456789abcdef_" + "A" * 43)
    r = ctl(appliance, "keys", "list", cred=wrong)
    assert r.returncode == EXIT_AUTH
    assert "unauthorized" in one_error_line(r)


def test_signer_cannot_create_keys_exits_4(appliance, signer_file):
    r = ctl(appliance, "keys", "create", cred=signer_file)
    assert r.returncode == EXIT_AUTH
    assert "forbidden" in one_error_line(r)


def test_certificate_from_another_ca_exits_3(appliance, tmp):
    other = os.path.join(tmp, "other-ca.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout",
                    os.path.join(tmp, "other-key.pem"), "-out", other],
                   check=True, capture_output=True)
    r = ctl(appliance, "--cacert", other, "keys", "list")
    assert r.returncode == EXIT_CONNECT
    line = one_error_line(r)
    assert "TLS" in line and "--cacert" in line


def appliance_pin(a):
    pub = subprocess.run(["openssl", "x509", "-in", a.cacert, "-pubkey", "-noout"],
                         check=True, capture_output=True).stdout
    der = serialization.load_pem_public_key(pub).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return base64.b64encode(digest.finalize()).decode()


def test_pinned_public_key_alone_authenticates_the_appliance(appliance):
    env = ctl_env(appliance)
    del env["SIGND_CACERT"]
    r = ctl(appliance, "--pin-sha256", appliance_pin(appliance), "keys", "list", "--json",
            env=dict(env))
    assert r.returncode == EXIT_OK, r.stderr
    assert json.loads(r.stdout)["count"] >= 0
    r = ctl(appliance, "--pin-sha256", base64.b64encode(b"\1" * 32).decode(), "keys", "list",
            env=dict(env))
    assert r.returncode == EXIT_CONNECT
    assert "--pin-sha256" in one_error_line(r)
    # Neither a CA nor a pin: the system's store does not know a self-signed appliance.
    r = ctl(appliance, "keys", "list", env=dict(env))
    assert r.returncode == EXIT_CONNECT


def test_pin_and_cacert_must_both_hold(appliance):
    r = ctl(appliance, "--pin-sha256", base64.b64encode(b"\2" * 32).decode(), "keys", "list")
    assert r.returncode == EXIT_CONNECT


# ---- the credential never on the command line -----------------------------------------------


def test_credential_from_env_is_not_in_cmdline_or_environ(appliance):
    """While signdctl works, neither /proc/PID/cmdline nor /proc/PID/environ holds the
    secret: it came from a variable, which signdctl wiped once it had copied it."""
    env = ctl_env(appliance, OPERATOR_SECRET=appliance.admin)
    proc = subprocess.Popen([CTL, "--credential-env", "OPERATOR_SECRET", "keys", "create",
                             "--count", "4", "--parallel", "1", "--label", "env-cred"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stderr.readline().decode()
        assert first.startswith("created key 1/4"), first
        with open("/proc/%d/cmdline" % proc.pid, "rb") as f:
            cmdline = f.read()
        with open("/proc/%d/environ" % proc.pid, "rb") as f:
            environ = f.read()
        assert appliance.admin.encode() not in cmdline
        assert appliance.admin.encode() not in environ
        out, _ = proc.communicate(timeout=300)
    finally:
        stop_process(proc, signal.SIGTERM, 10)
    assert proc.returncode == EXIT_OK
    assert len(out.split()) == 4
    assert len(keys_by_label(appliance, "env-cred")) == 4


# ---- bulk provisioning ------------------------------------------------------------------------


def test_bulk_create_50_keys_in_parallel(appliance):
    r = ctl(appliance, "keys", "create", "--count", "50", "--parallel", "4", "--label", "bulk50")
    assert r.returncode == EXIT_OK, r.stderr
    kids = r.stdout.decode().split()
    assert len(kids) == 50 and len(set(kids)) == 50 and all(KID.match(k) for k in kids)
    # Not a terminal: one plain line per key, counting up, and the total.
    err = r.stderr.decode().splitlines()
    assert err[:50] == ["created key %d/50: %s" % (i + 1, k) for i, k in enumerate(kids)]
    assert err[50:] == ["created 50 of 50 keys"]
    made = keys_by_label(appliance, "bulk50")
    assert set(made) == set(kids)
    assert all(k["state"] == "active" and k["bits"] == 2048 for k in made.values())


def test_bulk_create_json_lists_every_key(appliance):
    r = ctl(appliance, "--json", "keys", "create", "--count", "3", "--label", "bulkjson")
    assert r.returncode == EXIT_OK, r.stderr
    out = json.loads(r.stdout)
    assert out["requested"] == 3 and out["created"] == 3 and "stopped" not in out
    assert {k["kid"] for k in out["keys"]} == set(keys_by_label(appliance, "bulkjson"))


def run_in_pty(argv, env, timeout=300):
    """Runs argv with stdin, stdout and stderr on a pseudo-terminal; returns (rc, bytes)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            out += chunk
        proc.wait(timeout=30)
    finally:
        stop_process(proc, signal.SIGTERM, 10)
        os.close(master)
    return proc.returncode, out


def test_progress_bar_on_a_terminal(appliance):
    env = ctl_env(appliance, SIGND_CREDENTIAL_FILE=os.path.join(appliance.dir, "admin.credential"))
    rc, out = run_in_pty([CTL, "keys", "create", "--count", "6", "--parallel", "2", "--label",
                          "bar"], env)
    text = out.decode()
    assert rc == EXIT_OK, text
    # The bar is redrawn in place (carriage returns), once per key, up to 6/6.
    bars = re.findall(r"\r\[([#.]{30})\] (\d+)/6 keys", text)
    assert [int(n) for _, n in bars] == [1, 2, 3, 4, 5, 6]
    assert bars[-1][0] == "#" * 30 and bars[0][0].count("#") == 5
    assert "created key" not in text  # no plain lines on a terminal
    assert "created 6 of 6 keys" in text
    kids = re.findall(r"^([0-9a-f]{32})\r?$", text, re.M)
    assert set(kids) == set(keys_by_label(appliance, "bar")) and len(kids) == 6


def test_count_stops_cleanly_at_the_key_limit(make_appliance):
    a = make_appliance({"max_active_keys": 5})
    a.create_key(label="before")
    r = ctl(a, "keys", "create", "--count", "8", "--parallel", "3", "--label", "tolimit")
    assert r.returncode == EXIT_LIMIT, r.stderr
    kids = r.stdout.decode().split()
    assert len(kids) == 4
    assert set(kids) == set(keys_by_label(a, "tolimit"))
    err = r.stderr.decode().splitlines()
    assert err[-1].startswith("signdctl: created 4 of 8: key limit (5) reached; ")
    assert sum(1 for l in err if l.startswith("created key ")) == 4
    # At the limit already: nothing made, same code.
    r = ctl(a, "--json", "keys", "create", "--count", "2")
    assert r.returncode == EXIT_LIMIT
    out = json.loads(r.stdout)
    assert out["created"] == 0 and "key_limit_reached" in out["stopped"]
    r = ctl(a, "keys", "create")
    assert r.returncode == EXIT_LIMIT and "key_limit_reached" in one_error_line(r)


def test_ctrl_c_stops_new_requests_and_reports_the_count(appliance):
    env = ctl_env(appliance, SIGND_CREDENTIAL_FILE=os.path.join(appliance.dir, "admin.credential"))
    proc = subprocess.Popen([CTL, "keys", "create", "--count", "200", "--parallel", "2",
                             "--label", "interrupted"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        first = proc.stderr.readline().decode()
        assert first.startswith("created key 1/200"), first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        stop_process(proc, signal.SIGTERM, 10)
    assert proc.returncode == EXIT_INTERRUPTED, err
    kids = out.decode().split()
    last = err.decode().splitlines()[-1]
    m = re.match(r"signdctl: created (\d+) of 200: interrupted; ", last)
    assert m, last
    # What it says it made is what the appliance holds: no request was cut off halfway.
    assert int(m.group(1)) == len(kids) < 200
    assert set(kids) == set(keys_by_label(appliance, "interrupted"))


# ---- the other verbs ---------------------------------------------------------------------------


def test_revoke_and_rotate(appliance):
    kid = appliance.create_key(label="lifecycle")["kid"]
    r = ctl(appliance, "--json", "keys", "rotate", kid, "--grace", "600")
    assert r.returncode == EXIT_OK, r.stderr
    succ = json.loads(r.stdout)
    assert succ["predecessor"] == kid
    assert appliance.get("/v1/keys/" + kid).json()["state"] == "retiring"
    r = ctl(appliance, "keys", "revoke", succ["kid"], "--reason", "compromised")
    assert r.returncode == EXIT_OK, r.stderr
    assert re.search(r"^state\s+revoked$", r.stdout.decode(), re.M)
    got = appliance.get("/v1/keys/" + succ["kid"]).json()
    assert got["state"] == "revoked" and got["reason"] == "compromised"
    feed = appliance.get("/v1/revocations", auth=False).json()
    assert succ["kid"] in [e["kid"] for e in feed["revoked"]]
    r = ctl(appliance, "keys", "rotate", succ["kid"])
    assert r.returncode == EXIT_REFUSED and "key_revoked" in one_error_line(r)


def test_credentials_create_list_revoke(appliance, tmp):
    kid = appliance.create_key(label="scoped")["kid"]
    out = os.path.join(tmp, "app1.credential")
    r = ctl(appliance, "--json", "credentials", "create", "--role", "signer", "--kids", kid,
            "--label", "app1", "--max-ttl", "600", "--out", out)
    assert r.returncode == EXIT_OK, r.stderr
    cred = json.loads(r.stdout)
    assert "secret" not in cred and cred["kids"] == [kid] and cred["max_ttl"] == 600
    assert os.stat(out).st_mode & 0o777 == 0o600
    secret = open(out).read().strip()
    assert secret.startswith("sgd_%s_" % cred["id"])
    assert secret.encode() not in r.stdout
    # The new secret works, within its scope.
    r = ctl(appliance, "token", "mint", "--kid", kid, "--ttl", "60", cred=out)
    assert r.returncode == EXIT_OK, r.stderr
    r = ctl(appliance, "token", "mint", "--ttl", "601", cred=out)
    assert r.returncode == EXIT_REFUSED and "ttl_too_long" in one_error_line(r)
    r = ctl(appliance, "credentials", "list", "--json")
    assert cred["id"] in [c["id"] for c in json.loads(r.stdout)["credentials"]]
    r = ctl(appliance, "credentials", "list")
    row = [l for l in r.stdout.decode().splitlines() if l.startswith(cred["id"])]
    assert row and row[0].split()[1:3] == ["signer", "active"]
    r = ctl(appliance, "credentials", "revoke", cred["id"])
    assert r.returncode == EXIT_OK, r.stderr
    r = ctl(appliance, "token", "mint", "--kid", kid, cred=out)
    assert r.returncode == EXIT_AUTH
    # --out never overwrites: the existing file is kept and nothing is created.
    before = len(appliance.get("/v1/credentials").json()["credentials"])
    r = ctl(appliance, "credentials", "create", "--role", "auditor", "--out", out)
    assert r.returncode == EXIT_USAGE
    assert len(appliance.get("/v1/credentials").json()["credentials"]) == before


def test_token_mint_verifies_with_the_jwks(appliance, signer_file):
    kid = appliance.create_key(label="tokens")["kid"]
    r = ctl(appliance, "token", "mint", "--kid", kid, "--sub", "video-123", "--ttl", "120",
            "--claims", '{"downloadable":true,"accessRules":["eu"]}', cred=signer_file)
    assert r.returncode == EXIT_OK, r.stderr
    token = r.stdout.decode().strip()
    keys = jwk.JWKSet.from_json(appliance.get("/.well-known/jwks.json", auth=False).text)
    claims = json.loads(jwt.JWT(jwt=token, key=keys, algs=["RS256"]).claims)
    assert claims["sub"] == "video-123" and claims["downloadable"] is True
    assert claims["exp"] - claims["iat"] == 120
    r = ctl(appliance, "token", "mint", "--claims", "[1]", cred=signer_file)
    assert r.returncode == EXIT_USAGE


def test_token_mint_flags_and_token_revoke_by_its_minter(appliance, signer_file):
    appliance.create_key(label="revocable")
    r = ctl(appliance, "--json", "token", "mint", "--single-use", "--revocable", "--aud", "up",
            "--origin", "https://a.example", cred=signer_file)
    assert r.returncode == EXIT_OK, r.stderr
    minted = json.loads(r.stdout)
    assert minted["single_use"] is True and minted["revocable"] is True
    claims = json.loads(jwt.JWT(jwt=minted["token"]).token.objects["payload"])
    assert claims["aud"] == "up" and claims["origin"] == "https://a.example"
    assert claims["status"]["status_list"]["idx"] == minted["status"]["idx"]
    first = ctl(appliance, "--json", "token", "revoke", minted["jti"], cred=signer_file)
    assert first.returncode == EXIT_OK, first.stderr
    again = ctl(appliance, "--json", "token", "revoke", minted["jti"])  # the admin
    assert again.returncode == EXIT_OK, again.stderr
    assert json.loads(first.stdout) == json.loads(again.stdout)
    assert json.loads(first.stdout)["jti"] == minted["jti"]
    # Refused before any request: not a jti at all; by the appliance: not one of its own.
    bad = ctl(appliance, "token", "revoke", "a/b")
    assert bad.returncode == EXIT_USAGE and "jti" in one_error_line(bad)
    unknown = ctl(appliance, "token", "revoke", "0" * 32)
    assert unknown.returncode == EXIT_REFUSED and "token_not_found" in one_error_line(unknown)
    bad_origin = ctl(appliance, "token", "mint", "--origin", "https://A.example/",
                     cred=signer_file)
    assert bad_origin.returncode == EXIT_REFUSED
    assert "invalid_origin" in one_error_line(bad_origin)


def test_sign_verifies_with_the_public_key(appliance, signer_file, tmp):
    key = appliance.create_key(label="raw")
    data = os.urandom(1000)
    path = os.path.join(tmp, "payload.bin")
    with open(path, "wb") as f:
        f.write(data)
    r = ctl(appliance, "sign", key["kid"], "--in", path, cred=signer_file)
    assert r.returncode == EXIT_OK, r.stderr
    sig = base64.urlsafe_b64decode(r.stdout.decode().strip() + "==")
    pub = serialization.load_pem_public_key(key["pem"].encode())
    pub.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
    # From stdin too, same bytes, same deterministic PKCS#1 v1.5 signature.
    r2 = ctl(appliance, "sign", key["kid"], cred=signer_file, stdin=data)
    assert r2.returncode == EXIT_OK and r2.stdout == r.stdout


def test_audit_export_and_verify(appliance, tmp):
    keyfile = os.path.join(tmp, "audit.pem")
    with open(keyfile, "w") as f:
        f.write(appliance.get("/v1/audit/key", auth=False).json()["pem"])
    export = os.path.join(tmp, "trail.jsonl")
    r = ctl(appliance, "audit", "export", "--out", export)
    assert r.returncode == EXIT_OK, r.stderr
    lines = open(export).read().splitlines()
    events = [json.loads(l) for l in lines if json.loads(l)["type"] == "event"]
    assert events and events[0]["seq"] == 1
    r = ctl(appliance, "audit", "verify", "--key", keyfile)
    assert r.returncode == EXIT_OK, r.stderr
    assert re.match(r"verified \d+ events up to seq \d+, last checkpoint at seq \d+$",
                    r.stdout.decode().strip())
    r = ctl(appliance, "--json", "audit", "verify", "--key", keyfile, "--export", export)
    assert r.returncode == EXIT_OK
    assert json.loads(r.stdout)["last_seq"] == events[-1]["seq"]
    # --anchor: an event the export holds verifies; a malformed one is a usage error, parsed
    # by the one anchor parser signd-provision uses too (its cases: test_audit_verify.c).
    good = "%d:%s" % (events[-1]["seq"], events[-1]["hash"])
    r = ctl(appliance, "audit", "verify", "--key", keyfile, "--export", export, "--anchor", good)
    assert r.returncode == EXIT_OK, r.stderr
    for bad in ("12", "0:" + "0" * 64, "-1:" + "0" * 64, "3:" + "A" * 64):
        r = ctl(appliance, "audit", "verify", "--key", keyfile, "--export", export,
                "--anchor", bad)
        assert r.returncode == EXIT_USAGE and "--anchor must be SEQ:HASH" in r.stderr.decode(), \
            (bad, r.stderr)
    # One edited event breaks the chain at its seq.
    victim = next(e for e in events if e["action"] == "key.created")
    tampered = os.path.join(tmp, "tampered.jsonl")
    with open(tampered, "w") as f:
        for l in lines:
            e = json.loads(l)
            if e.get("type") == "event" and e["seq"] == victim["seq"]:
                e["details"]["label"] = "edited"
                l = json.dumps(e, sort_keys=True, separators=(",", ":"))
            f.write(l + "\n")
    r = ctl(appliance, "audit", "verify", "--key", keyfile, "--export", tampered)
    assert r.returncode == EXIT_AUDIT
    assert "broken at seq %d" % victim["seq"] in one_error_line(r)
    # An auditor may not export without a credential of the right role.
    aud = write_secret(tmp, "auditor.credential",
                       appliance.create_credential("auditor")["secret"])
    r = ctl(appliance, "audit", "export", cred=aud)
    assert r.returncode == EXIT_OK and r.stdout.startswith(b'{"action"')
    r = ctl(appliance, "keys", "create", cred=aud)
    assert r.returncode == EXIT_AUTH


def test_subjects_revoke_revokes_a_subjects_earlier_tokens(appliance, signer_file):
    a = appliance
    a.create_key(label="subjects")
    r = ctl(a, "--json", "token", "mint", "--sub", "video-cli", cred=signer_file)
    assert r.returncode == EXIT_OK, r.stderr
    old = json.loads(r.stdout)
    while time.time() < old["iat"] + 2:  # iat has a one-second resolution
        time.sleep(0.05)
    r = ctl(a, "--json", "subjects", "revoke", "video-cli")  # the admin
    assert r.returncode == EXIT_OK, r.stderr
    rec = json.loads(r.stdout)
    assert rec["sub"] == "video-cli" and rec["before"] > old["iat"] and rec["seq"] >= 1
    got = a.post("/v1/tokens/redeem", {"token": old["token"]},
                 auth=a.create_credential("redeemer")["secret"])
    assert got.status_code == 409 and got.json()["error"]["code"] == "subject_revoked"
    # The table form, with an explicit --before; a signer of every kid may too.
    r = ctl(a, "subjects", "revoke", "video-cli2", "--before", str(old["iat"]), cred=signer_file)
    assert r.returncode == EXIT_OK, r.stderr
    assert re.search(r"^sub\s+video-cli2$", r.stdout.decode(), re.M), r.stdout
    assert re.search(r"^before\s+", r.stdout.decode(), re.M), r.stdout
    # Refused before any request, and by the appliance.
    r = ctl(a, "subjects", "revoke")
    assert r.returncode == EXIT_USAGE and "subject" in one_error_line(r)
    r = ctl(a, "subjects", "revoke", "v", "--before", "soon")
    assert r.returncode == EXIT_USAGE and "--before" in one_error_line(r)
    r = ctl(a, "subjects", "revoke", "v", "--before", str(int(time.time()) + 3600))
    assert r.returncode == EXIT_REFUSED and "out_of_range" in one_error_line(r)
    r = ctl(a, "subjects", "revoke", "--help", cred=False)
    assert r.returncode == EXIT_OK and r.stdout.decode().startswith("usage: signdctl subjects")


def test_token_mint_takes_exp_as_a_unix_time_instead_of_ttl(appliance, signer_file):
    appliance.create_key(label="exp")
    exp = int(time.time()) + 900
    r = ctl(appliance, "--json", "token", "mint", "--exp", str(exp), cred=signer_file)
    assert r.returncode == EXIT_OK, r.stderr
    assert json.loads(r.stdout)["exp"] == exp
    r = ctl(appliance, "token", "mint", "--exp", str(exp), "--ttl", "60", cred=signer_file)
    assert r.returncode == EXIT_USAGE and "--exp" in one_error_line(r)
    r = ctl(appliance, "token", "mint", "--exp", str(int(time.time()) - 5), cred=signer_file)
    assert r.returncode == EXIT_REFUSED and "ttl_out_of_range" in one_error_line(r)
