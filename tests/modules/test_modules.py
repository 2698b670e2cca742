"""The core black-box set on every PKCS#11 module (issue 21): keys of each size the token
makes (and a 400 key_size_unsupported for the ones it cannot), signed tokens checked by
jwcrypto and by `openssl dgst`, revoke, rotate, restart, the keeper split, reconcile after a
kill -9 in the middle of key creation, the private key's attributes read from the token
itself, and, where the token allows it, the mission's 1,000 active keys.

Each module's appliance is made by provisioning/hsm/NAME.sh (conftest.py) and shared by the
module's tests, which run in this file's order: the 1,000 keys last.
"""
import base64
import concurrent.futures
import json
import os
import pty
import random
import re
import select
import signal
import subprocess
import termios
import threading
import time

import pytest
import requests
from jwcrypto import jwk, jws

from conftest import HERE, bb, figure

PROVISION = os.path.join(bb.TOP, bb.BUILD, "bin", "signd-provision")


def b64u_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def jwks(a):
    r = a.get("/.well-known/jwks.json", auth=False)
    assert r.status_code == 200, r.text
    return {k["kid"]: k for k in r.json()["keys"]}


def mint(a, kid, session=None, sub="modules"):
    body = {"sub": sub, "kid": kid, "ttl": 600}
    if session is None:
        r = a.post("/v1/tokens", body)
    else:
        r = session.post(a.url + "/v1/tokens", json=body, headers=a.auth(a.signer), timeout=30,
                         verify=a.cacert)
    assert r.status_code == 200, r.text
    return r.json()["token"]


def verify_jwcrypto(token, key):
    """jwcrypto's RS256 check against the published JWK; returns the claims."""
    s = jws.JWS()
    s.deserialize(token)
    s.verify(jwk.JWK(**key), alg="RS256")
    return json.loads(s.payload)


def verify_openssl(token, key, tmp):
    """`openssl dgst -sha256 -verify` on the signing input, with the JWK as a PEM."""
    head, payload, sig = token.split(".")
    pem = os.path.join(tmp, "pub.pem")
    with open(pem, "wb") as f:
        f.write(jwk.JWK(**key).export_to_pem())
    with open(os.path.join(tmp, "input"), "wb") as f:
        f.write(("%s.%s" % (head, payload)).encode())
    with open(os.path.join(tmp, "sig"), "wb") as f:
        f.write(b64u_decode(sig))
    p = subprocess.run(["openssl", "dgst", "-sha256", "-verify", pem, "-signature",
                        os.path.join(tmp, "sig"), os.path.join(tmp, "input")],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "Verified OK" in p.stdout, p.stdout + p.stderr


def create_key(a, bits, label):
    t0 = time.monotonic()
    r = a.post("/v1/keys", {"bits": bits, "label": label})
    return r, time.monotonic() - t0


def token_objects(a):
    """{kid: has_private} of the key objects on the token, service keys left out
    (`signd-provision token-list`: the token itself, not the registry)."""
    p = subprocess.run([PROVISION, "token-list", a.dir], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    out = {}
    for line in p.stdout.splitlines():
        f = line.split()
        if "reserved" not in f[3:]:
            out[f[0]] = f[1] == "private"
    return out


def registry(a, state=None):
    r = a.get("/v1/keys" + ("?state=" + state if state else ""))
    assert r.status_code == 200, r.text
    return r.json()["keys"]


def reconcile_counts(log):
    lines = re.findall(r"reconcile: (\d+) orphan objects destroyed, (\d+) revoked objects "
                       r"destroyed, (\d+) keys marked broken", log)
    assert lines, log[-3000:]
    return tuple(int(x) for x in lines[-1])


# ---- keys, signatures, verification --------------------------------------------------------


def test_keys_of_each_size_sign_tokens_that_jwcrypto_and_openssl_verify(mod, tmp_path):
    module, a = mod
    for bits in module.key_sizes:
        r, took = create_key(a, bits, "size-%d" % bits)
        assert r.status_code == 201, r.text
        figure(module.name, "keygen_s_rsa%d" % bits, round(took, 3))
        key = r.json()
        published = jwks(a)[key["kid"]]
        assert len(b64u_decode(published["n"])) * 8 == bits
        token = mint(a, key["kid"], sub="size-%d" % bits)
        claims = verify_jwcrypto(token, published)
        assert claims["sub"] == "size-%d" % bits
        verify_openssl(token, published, str(tmp_path))
        # The same key signs again: the token keeps the key, not a session's copy.
        verify_openssl(mint(a, key["kid"]), published, str(tmp_path))


def test_sizes_the_token_cannot_make_are_400_key_size_unsupported(mod):
    module, a = mod
    if not module.refused_sizes:
        pytest.skip("%s makes every size the appliance asks for" % module.name)
    for bits in module.refused_sizes:
        r = a.post("/v1/keys", {"bits": bits, "label": "too big"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "key_size_unsupported"


def test_signatures_per_second_over_https_all_verify(mod):
    module, a = mod
    kid = a.create_key(label="rate")["kid"]
    key = jwks(a)[kid]
    stop = time.monotonic() + 3
    tokens = []
    lock = threading.Lock()

    def loop():
        s = requests.Session()
        mine = []
        while time.monotonic() < stop:
            mine.append(mint(a, kid, session=s))
        with lock:
            tokens.extend(mine)

    threads = [threading.Thread(target=loop) for _ in range(2)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = len(tokens) / (time.monotonic() - t0)
    figure(module.name, "jwts_per_s_https_2_clients", round(rate))
    assert len(tokens) > 10
    for token in random.sample(tokens, 10):
        verify_jwcrypto(token, key)


# ---- what the token holds ------------------------------------------------------------------


def test_the_private_key_on_the_token_is_sensitive_and_never_extractable(mod):
    module, a = mod
    kid = a.create_key(label="attributes")["kid"]
    p = subprocess.run([os.path.join(HERE, "p11read.py"), a.module_conf["pkcs11_module"],
                        a.module_conf["token"], os.path.join(a.dir, a.module_conf["pin_file"]),
                        kid], capture_output=True, text=True, env=a.module_env(), timeout=60)
    assert p.returncode == 0, p.stderr
    objs = json.loads(p.stdout)
    assert len(objs["private"]) == 1 and len(objs["public"]) == 1, objs
    priv = objs["private"][0]
    assert priv["token"] and priv["private"] and priv["sign"], priv
    assert priv["sensitive"] and priv["always_sensitive"], priv
    assert priv["extractable"] is False and priv["never_extractable"], priv
    assert priv["local"], priv  # generated inside the token, never imported
    assert not priv["private_exponent_readable"], priv
    if module.sign_only:
        assert {k: priv[k] for k in ("decrypt", "unwrap", "derive", "sign_recover")} == {
            "decrypt": False, "unwrap": False, "derive": False, "sign_recover": False}
    # The appliance's own account of it (GET /v1/keys/{kid}, helper probe's
    # token_attributes) says the same, where the appliance reads it back.
    rec = a.get("/v1/keys/" + kid).json()
    if "token_attributes" in rec and rec["token_attributes"]:
        ta = rec["token_attributes"]
        assert ta["sensitive"] and not ta["extractable"] and ta["never_extractable"], ta
        assert ta["sign_only"] == module.sign_only, ta
    # OpenSC's pkcs11-tool, logged in, says the same of the private key.
    out = pkcs11_tool_logged_in(a, ["--list-objects", "--type", "privkey"])
    blocks = [b for b in re.split(r"\n(?=\S)", out) if re.search(r"ID:\s+%s\b" % kid, b)]
    assert len(blocks) == 1 and blocks[0].startswith("Private Key Object; RSA"), out
    usage = re.search(r"Usage:\s+(.*)", blocks[0]).group(1).strip().split(", ")
    access = re.search(r"Access:\s+(.*)", blocks[0]).group(1).strip().split(", ")
    assert "sign" in usage, usage
    if module.sign_only:
        assert set(usage) == {"sign"}, usage
    assert {"sensitive", "always sensitive", "never extractable", "local"} <= set(access), access
    assert "extractable" not in access, access


def pkcs11_tool_logged_in(a, args):
    """pkcs11-tool --login on a's token, the PIN typed into a pseudo-terminal: pkcs11-tool
    takes it from a terminal only (or from --pin, its argv, which is refused here), and a
    pty carries it from the 0600 file to the program without an argv, an environment or a
    file. Returns what pkcs11-tool printed (the PIN is not echoed)."""
    master, slave = pty.openpty()
    p = subprocess.Popen(["pkcs11-tool", "--module", a.module_conf["pkcs11_module"],
                          "--token-label", a.module_conf["token"], "--login"] + args,
                         stdin=slave, stdout=slave, stderr=slave, env=a.module_env(),
                         start_new_session=True)
    os.close(slave)
    out, sent = b"", False
    pin_path = os.path.join(a.dir, a.module_conf["pin_file"])
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the program exited and closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if not sent and b"PIN:" in out:
                # pkcs11-tool turns echo off with TCSAFLUSH, which drops what was typed
                # before: wait until the terminal is in no-echo mode.
                deadline = time.monotonic() + 10
                while termios.tcgetattr(master)[3] & termios.ECHO:
                    assert time.monotonic() < deadline, "pkcs11-tool never turned echo off"
                    time.sleep(0.01)
                with open(pin_path, "rb") as f:
                    os.write(master, f.read().rstrip(b"\n") + b"\n")
                sent = True
    finally:
        os.close(master)
        rc = p.wait(timeout=60)
    text = out.decode(errors="replace")
    assert sent and rc == 0, text
    with open(pin_path) as f:
        assert f.read().strip() not in text
    return text


# ---- lifecycle ----------------------------------------------------------------------------


def test_a_revoked_key_signs_nothing_leaves_the_jwks_and_the_token(mod):
    module, a = mod
    kid = a.create_key(label="revoked")["kid"]
    mint(a, kid)
    r = a.delete("/v1/keys/" + kid, {"reason": "superseded"})
    assert r.status_code == 200, r.text
    assert a.get("/v1/keys/" + kid).json()["state"] == "revoked"
    assert kid not in jwks(a)
    r = a.post("/v1/tokens", {"sub": "x", "kid": kid})
    assert r.status_code == 409, r.text
    # The destroy runs off the request (core/reconcile.c's destroyer).
    deadline = time.monotonic() + 30
    while kid in token_objects(a) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert kid not in token_objects(a)


def test_rotate_gives_a_successor_that_signs_while_the_old_key_stays_published(mod, tmp_path):
    module, a = mod
    old = a.create_key(label="rotated")["kid"]
    old_token = mint(a, old)
    r = a.post("/v1/keys/%s/rotate" % old, {"grace_seconds": 600})
    assert r.status_code in (200, 201), r.text
    body = r.json()
    new = (body.get("successor") or body)["kid"]
    assert new != old
    published = jwks(a)
    assert old in published and new in published
    assert a.get("/v1/keys/" + old).json()["state"] == "retiring"
    verify_jwcrypto(old_token, published[old])
    verify_openssl(mint(a, new), published[new], str(tmp_path))
    assert a.post("/v1/tokens", {"sub": "x", "kid": old}).status_code == 409


def test_keys_survive_a_restart_and_still_sign(mod, tmp_path):
    module, a = mod
    kid = a.create_key(label="restart")["kid"]
    before = jwks(a)[kid]
    t0 = time.monotonic()
    a.restart()
    figure(module.name, "restart_s", round(time.monotonic() - t0, 2))
    assert reconcile_counts(a.read_log()) == (0, 0, 0)
    assert jwks(a)[kid] == before
    verify_openssl(mint(a, kid), before, str(tmp_path))


def test_only_the_keeper_loads_the_module_and_it_runs_as_its_own_account(mod):
    module, a = mod
    kid = a.create_key(label="split")["kid"]
    mint(a, kid)
    kids = a.children()
    assert set(kids) == {"keeper", "front"}, kids
    lib = os.path.basename(os.path.realpath(a.module_conf["pkcs11_module"]))

    def maps(pid):
        with open("/proc/%d/maps" % pid) as f:
            return {line.split()[-1] for line in f if "/" in line}

    assert any(os.path.basename(p) == lib for p in maps(kids["keeper"])), lib
    for who, pid in (("front", kids["front"]), ("supervisor", a.proc.pid)):
        assert not any(os.path.basename(p) == lib for p in maps(pid)), who
    if os.geteuid() == 0:
        uid = {}
        for who, pid in kids.items():
            uid[who] = os.stat("/proc/%d" % pid).st_uid
        assert uid["keeper"] != 0 and uid["front"] != 0 and uid["keeper"] != uid["front"], uid
        # The front's account cannot read the PIN.
        pin = os.path.join(a.dir, a.module_conf["pin_file"])
        st = os.stat(pin)
        assert st.st_mode & 0o077 == 0 and st.st_uid == uid["keeper"], (oct(st.st_mode), st.st_uid)


def test_a_key_generated_for_a_request_that_crashed_is_destroyed_by_reconcile(mod):
    module, a = mod
    before = token_objects(a)
    a.crash_at("after_generate", lambda: a.post("/v1/keys", {"label": "never acknowledged"}))
    assert reconcile_counts(a.read_log()) == (1, 0, 0)
    a.restart()
    assert reconcile_counts(a.read_log()) == (0, 0, 0)
    assert token_objects(a) == before


def test_kill_9_of_everything_during_key_creation_then_restart_token_matches_registry(mod):
    module, a = mod
    stop = threading.Event()
    created, codes = [], []

    def creating():
        s = requests.Session()
        while not stop.is_set():
            try:
                r = s.post(a.url + "/v1/keys", json={"label": "burst"}, headers=a.auth(),
                           verify=a.cacert, timeout=30)
            except requests.exceptions.RequestException:
                return
            codes.append(r.status_code)
            if r.status_code == 201:
                created.append(r.json()["kid"])

    threads = [threading.Thread(target=creating) for _ in range(2)]
    for t in threads:
        t.start()
    # Killed while keys are being made: after the first answers, at a random moment.
    deadline = time.monotonic() + 60
    while len(created) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert created, codes
    time.sleep(random.random())
    a.kill9()
    stop.set()
    for t in threads:
        t.join()
    a.start()
    # Every acknowledged key is active and on the token; the token holds no key the
    # registry does not know (an orphan from the kill was destroyed by reconcile).
    live = {k["kid"] for k in registry(a) if k["state"] in ("active", "retiring")}
    objects = token_objects(a)
    assert set(created) <= live
    assert all(objects.get(k) for k in live), sorted(live - set(objects))
    assert set(objects) <= {k["kid"] for k in registry(a)}, sorted(set(objects) - live)
    verify_jwcrypto(mint(a, created[-1]), jwks(a)[created[-1]])


# ---- the mission's scale ------------------------------------------------------------------


def test_thousand_active_keys(mod):
    module, a = mod
    if not module.thousand_keys:
        pytest.skip("%s: 1,000 keys is not asked of this module" % module.name)
    limit = int(a.module_conf.get("max_active_keys") or 1000)
    assert limit == 1000
    # Retiring keys count toward the limit: revoke them, so that 1,000 are active.
    for k in registry(a, "retiring"):
        assert a.delete("/v1/keys/" + k["kid"]).status_code == 200
    active = a.get("/readyz", auth=False).json()["active_keys"]
    t0 = time.monotonic()

    def create(i):
        return a.post("/v1/keys", {"label": "bulk-%d" % i}).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        codes = list(pool.map(create, range(1000 - active + 4)))
    took = time.monotonic() - t0
    assert codes.count(201) == 1000 - active, {c: codes.count(c) for c in set(codes)}
    assert codes.count(409) == 4
    figure(module.name, "keys_created_to_1000", 1000 - active)
    figure(module.name, "create_to_1000_active_s", round(took, 1))
    r = a.post("/v1/keys", {"label": "one too many"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_limit_reached"
    published = jwks(a)
    assert len(published) == 1000
    kids = list(published)
    for kid in random.sample(kids, 5):
        verify_jwcrypto(mint(a, kid), published[kid])
    t0 = time.monotonic()
    a.restart()
    figure(module.name, "restart_with_1000_keys_s", round(time.monotonic() - t0, 1))
    assert a.get("/readyz", auth=False).json()["active_keys"] == 1000
    assert reconcile_counts(a.read_log()) == (0, 0, 0)
    for kid in random.sample(kids, 5):
        verify_jwcrypto(mint(a, kid), published[kid])
    objects = token_objects(a)
    assert set(kids) <= set(objects)


def test_keys_up_to_max_active_keys_each_sign_after_a_restart(mod):
    """A module whose conf lowers max_active_keys (the TPM: its resource manager keeps at
    most 100 objects loaded per keeper process) makes that many active keys, refuses one
    more with 409 key_limit_reached, and after a restart every one of them signs a token
    jwcrypto verifies."""
    module, a = mod
    if not module.to_key_limit:
        pytest.skip("%s: no max_active_keys of its own" % module.name)
    limit = int(a.module_conf["max_active_keys"])
    assert limit < 1000
    # A fresh keeper: what earlier tests made in this one counts against the same bound.
    a.restart()
    for k in registry(a, "retiring"):
        assert a.delete("/v1/keys/" + k["kid"]).status_code == 200
    active = a.get("/readyz", auth=False).json()["active_keys"]
    t0 = time.monotonic()
    for i in range(limit - active):
        r = a.post("/v1/keys", {"label": "limit-%d" % i})
        assert r.status_code == 201, (i, r.text)
    figure(module.name, "keys_created_to_max_active_keys", limit - active)
    figure(module.name, "create_to_max_active_keys_s", round(time.monotonic() - t0, 1))
    r = a.post("/v1/keys", {"label": "one too many"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_limit_reached"
    published = jwks(a)
    assert len(published) == limit
    a.restart()
    t0 = time.monotonic()
    for kid, key in published.items():
        verify_jwcrypto(mint(a, kid), key)
    figure(module.name, "first_token_of_each_key_after_restart_s", round(time.monotonic() - t0, 1))


def test_more_keys_than_one_keeper_could_load_are_made_and_sign_as_old_ones_are_revoked(mod):
    """The TPM's bound on loaded keys is per keeper process (tpm2-pkcs11 keeps every key it
    made loaded, destroyed ones included): one keeper used to make about 45 keys, then
    answer 503 until it was restarted. The keeper now re-opens the module at that error and
    tries once more (hsm.h, "Re-opening"): 60 keys made in one keeper's life, each revoked
    once the next exists, are all 201 and each signs a token jwcrypto verifies."""
    module, a = mod
    if not module.to_key_limit:
        pytest.skip("%s: no max_active_keys of its own" % module.name)
    a.restart()
    for k in registry(a, "active") + registry(a, "retiring"):
        assert a.delete("/v1/keys/" + k["kid"]).status_code == 200
    log_before = a.read_log().count("re-opened the module")
    t0 = time.monotonic()
    previous = None
    for i in range(60):
        r = a.post("/v1/keys", {"label": "churn-%d" % i})
        assert r.status_code == 201, (i, r.text)
        kid = r.json()["kid"]
        verify_jwcrypto(mint(a, kid), jwks(a)[kid])
        if previous is not None:
            assert a.delete("/v1/keys/" + previous).status_code == 200
        previous = kid
    reopens = a.read_log().count("re-opened the module") - log_before
    figure(module.name, "keys_made_and_revoked_in_one_keeper", 60)
    figure(module.name, "module_reopens_for_60_keys", reopens)
    figure(module.name, "churn_60_keys_s", round(time.monotonic() - t0, 1))
    assert reopens >= 1, a.read_log()[-3000:]
    verify_jwcrypto(mint(a, previous), jwks(a)[previous])
    # The readiness probe reads the keeper's count every half second into /metrics.
    deadline = time.monotonic() + 10
    while True:
        text = a.get("/metrics").text
        m = re.search(r"^signd_hsm_reopens_total (\d+)$", text, re.M)
        assert m, text[-2000:]
        if int(m.group(1)) >= reopens or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert int(m.group(1)) >= reopens


# ---- make run HSM=... ---------------------------------------------------------------------


def test_make_run_with_the_module_serves_tokens_that_verify_and_stops_what_it_started(
        mod, tmp_path):
    """provisioning/run.sh (make run HSM=NAME) on the module's data directory: start,
    conf, signd, and on SIGTERM signd stopped, then the module's daemons (last in the
    file: it takes the appliance down and brings the daemons back for the teardown)."""
    module, a = mod
    # The tests before may have left the module at its key limit (1,000 keys on
    # opencryptoki, max_active_keys on the TPM): an active key of theirs serves as well.
    active = registry(a, "active")
    kid = active[0]["kid"] if active else a.create_key(label="make run")["kid"]
    a.stop()
    env = dict(os.environ, HSM=module.name, DATA_DIR=a.dir, PORT=str(a.port))
    with open(tmp_path / "run.log", "wb") as log:
        p = subprocess.Popen([os.path.join(bb.TOP, "provisioning", "run.sh")], env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert p.poll() is None, (tmp_path / "run.log").read_text()
            try:
                if a.get("/readyz", auth=False).status_code == 200:
                    break
            except requests.exceptions.ConnectionError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.2)
        verify_jwcrypto(mint(a, kid), jwks(a)[kid])
        hsm_dir = os.path.join(a.dir, "hsm")
        daemons = []
        for name in os.listdir(hsm_dir) if os.path.isdir(hsm_dir) else []:
            if name.endswith(".pid"):
                with open(os.path.join(hsm_dir, name)) as f:
                    daemons.append(int(f.read().split()[0]))
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=60) == 0, (tmp_path / "run.log").read_text()
        for pid in daemons:
            deadline = time.monotonic() + 10
            while bb.alive_pid(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not bb.alive_pid(pid), "daemon %d outlived make run" % pid
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        a.script("start")
