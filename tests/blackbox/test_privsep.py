"""Privilege separation (process_model = split): what each of the three processes holds,
the keeper protocol as an untrusted peer speaks it, and what happens when a process dies
or the appliance is stopped.

  supervisor  the process the tests start: no PKCS#11 module
  keeper      "signd: keeper": the module, the PIN, keeper.sock (appliance/kproto/kproto.h)
  front       "signd: front": HTTPS, registry, credentials; no module, no PIN, no token
"""
import base64
import http.client
import json
import os
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from conftest import SIGND, TOP, alive_pid
import procs

# ---- helpers ---------------------------------------------------------------------------


def hsm_status():
    """{name: value} of the sk_status enum, read from base/signkey.h (statuses travel on
    the keeper protocol as these numbers)."""
    with open(os.path.join(TOP, "base", "signkey.h")) as f:
        text = f.read()
    body = re.search(r"typedef enum \{(.*?)\} sk_status;", text, re.S).group(1)
    names = re.findall(r"^\s*(SK_[A-Z_]+)\b", body, re.M)
    assert names[0] == "SK_OK", names
    return {name: i for i, name in enumerate(names)}


HSM = hsm_status()
KEY_NOT_FOUND = HSM["SK_ERR_KEY_NOT_FOUND"]
BAD_ARGUMENT = HSM["SK_ERR_BAD_ARGUMENT"]
# An hsm error's body: the failed token call's CKR value, u32 big-endian; 0 for the
# keeper's own refusals (kproto.h).
NO_CKR = struct.pack(">I", 0)

MAGIC, VERSION, HDR = 0x4B, 1, 12
OP_SIGN, OP_GENERATE, OP_DESTROY, OP_PING = 1, 2, 4, 6
ST_SHORT, ST_OVERSIZED, ST_VERSION, ST_UNKNOWN_OP, ST_BAD_BODY = 100, 101, 103, 104, 105


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_key(jwk):
    n = int.from_bytes(unb64u(jwk["n"]), "big")
    e = int.from_bytes(unb64u(jwk["e"]), "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


def verify_rs256(jwk, signature, message):
    """Raises InvalidSignature unless signature is RS256 (PKCS#1 v1.5, SHA-256) by jwk."""
    public_key(jwk).verify(signature, message, padding.PKCS1v15(), hashes.SHA256())


def read_proc(pid, name):
    with open("/proc/%d/%s" % (pid, name), "rb") as f:
        return f.read()


def proc_state(pid):
    """The state letter of /proc/PID/stat, or None when the process is gone."""
    try:
        return read_proc(pid, "stat").decode().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def wait_state(pid, states, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc_state(pid) in states:
            return
        time.sleep(0.02)
    raise AssertionError("pid %d is %r, not in %r" % (pid, proc_state(pid), states))


def mapped_files(pid):
    """The paths in /proc/PID/maps."""
    paths = set()
    for line in read_proc(pid, "maps").decode(errors="replace").splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6:
            paths.add(fields[5].strip())
    return paths


def open_files(pid):
    """Where each of the process's descriptors points (readlink of /proc/PID/fd/N)."""
    fd_dir = "/proc/%d/fd" % pid
    links = []
    for fd in os.listdir(fd_dir):
        try:
            links.append(os.readlink(os.path.join(fd_dir, fd)))
        except OSError:
            pass  # closed meanwhile
    return links


def environ(pid):
    return dict(item.split(b"=", 1) for item in read_proc(pid, "environ").split(b"\0")
                if b"=" in item)


def mint(a, session=None, **fields):
    """POST /v1/tokens as the test signer, on session (a per-thread one) or a's own."""
    body = {"sub": "privsep", **fields}
    if session is None:
        return a.post("/v1/tokens", body)
    return session.post(a.url + "/v1/tokens", json=body, headers=a.auth(a.signer),
                        timeout=10, verify=a.cacert)


def token_signature_ok(token, jwk):
    head, payload, sig = token.split(".")
    verify_rs256(jwk, unb64u(sig), ("%s.%s" % (head, payload)).encode())
    return json.loads(unb64u(payload))


def key_states(a):
    r = a.get("/v1/keys")
    assert r.status_code == 200, r.text
    return {k["kid"]: k["state"] for k in r.json()["keys"]}


def revocation_feed(a):
    r = a.get("/v1/revocations", auth=False)
    assert r.status_code == 200, r.text
    return r.json()


# ---- the keeper protocol, spoken raw -----------------------------------------------------


def ids_of(pid):
    """(uid, gid, [groups]) of a running process, from /proc/PID/status."""
    st = procs.status(pid)
    return (int(st["Uid"].split()[0]), int(st["Gid"].split()[0]),
            [int(g) for g in st["Groups"].split()])


class as_ids:
    """Within the block, this process's effective ids are (uid, gid, groups): what the
    kernel checks on open and connect, and what SO_PEERCRED reports."""

    def __init__(self, uid, gid, groups):
        self.ids = (uid, gid, groups)

    def __enter__(self):
        self.saved = (os.geteuid(), os.getegid(), os.getgroups())
        uid, gid, groups = self.ids
        if uid != self.saved[0]:
            os.setgroups(groups)
            os.setegid(gid)
            os.seteuid(uid)
        return self

    def __exit__(self, *exc):
        if os.geteuid() != self.saved[0]:
            os.seteuid(self.saved[0])
            os.setegid(self.saved[1])
            os.setgroups(self.saved[2])


class Keeper:
    """A raw SOCK_SEQPACKET connection to DATA_DIR/keeper.sock: one message per send, made
    with the front's ids (the keeper admits no other account)."""

    def __init__(self, a):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.s.settimeout(30)
        with as_ids(*ids_of(a.children()["front"])):
            self.s.connect(os.path.join(a.dir, "keeper.sock"))

    def close(self):
        self.s.close()

    def exchange(self, message):
        """Sends one message, returns (op, status, body) of the reply."""
        need = len(message) + 4096
        if self.s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < need:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * need)
        assert self.s.send(message) == len(message)
        reply = self.s.recv(200000)
        assert len(reply) >= HDR, reply
        magic, version, op, status, body_len = struct.unpack(">BBHII", reply[:HDR])
        assert (magic, version) == (MAGIC, VERSION), reply[:HDR]
        body = reply[HDR:]
        assert len(body) == body_len, (body_len, len(body))
        return op, status, body

    @staticmethod
    def message(op, body=b"", version=VERSION, status=0):
        return struct.pack(">BBHII", MAGIC, version, op, status, len(body)) + body

    def request(self, op, body=b""):
        return self.exchange(self.message(op, body))

    def ping(self):
        return self.request(OP_PING, b"\0" + b"\0" * 16)


@pytest.fixture
def keeper(appliance):
    k = Keeper(appliance)
    yield k
    k.close()


# ---- what each process holds -------------------------------------------------------------


def test_front_holds_no_module_no_token_and_no_pin_while_keeper_holds_the_module(appliance):
    a = appliance
    key = a.create_key(label="privsep-maps")
    r = mint(a, kid=key["kid"])  # the front has signed through the keeper
    assert r.status_code == 200, r.text
    kids = a.children()
    assert set(kids) == {"keeper", "front"}, kids
    data = os.path.realpath(a.dir)
    token_dir = os.path.join(data, "token")
    secrets = {os.path.join(data, "pin"), os.path.join(data, "so-pin")}

    keeper_maps = mapped_files(kids["keeper"])
    assert any("libsofthsm2" in os.path.basename(p) for p in keeper_maps), keeper_maps

    for who, pid in (("front", kids["front"]), ("supervisor", a.proc.pid)):
        module = [p for p in mapped_files(pid) if "softhsm" in p.lower()]
        assert not module, (who, module)

    front_fds = open_files(kids["front"])
    assert front_fds, "no descriptor seen at all: the check would prove nothing"
    leaked = [p for p in front_fds
              if p == token_dir or p.startswith(token_dir + "/") or p in secrets]
    assert not leaked, leaked

    # /proc/PID/environ is the environment as of exec: the keeper's setenv does not show
    # there, so this catches a SOFTHSM2_CONF the front inherited, not one it set itself.
    assert b"SOFTHSM2_CONF" not in environ(kids["front"])


def test_pkcs11_env_reaches_the_keeper_alone(make_appliance):
    # The module's variables (pkcs11_env: where tpm2-pkcs11's store and bus are) go into the
    # keeper's environment as of its exec, and nowhere else: not the front's, not the
    # supervisor's own. Harmless on SoftHSM2, which reads neither.
    a = make_appliance({"pkcs11_env": "TSS2_LOG=all+none,OCK_CONFIG=/nonexistent/opencryptoki.conf"})
    key = a.create_key(label="pkcs11-env")
    assert mint(a, kid=key["kid"]).status_code == 200
    kids = a.children()
    keeper = environ(kids["keeper"])
    assert keeper.get(b"TSS2_LOG") == b"all+none", keeper
    assert keeper.get(b"OCK_CONFIG") == b"/nonexistent/opencryptoki.conf", keeper
    for who, pid in (("front", kids["front"]), ("supervisor", a.proc.pid)):
        env = environ(pid)
        assert b"TSS2_LOG" not in env and b"OCK_CONFIG" not in env, (who, env)


def test_front_and_keeper_run_under_seccomp_filters_and_still_serve(appliance):
    # Mode 2 is a filter; which calls each refuses is tests/unit/test_harden.c's subject.
    # The supervisor stays unfiltered (mode 0), which shows the check can tell them apart.
    a = appliance
    kids = a.children()
    assert procs.status(kids["front"])["Seccomp"] == "2"
    assert procs.status(kids["keeper"])["Seccomp"] == "2"
    assert procs.status(a.proc.pid)["Seccomp"] == "0"
    key = a.create_key(label="privsep-seccomp")
    assert mint(a, kid=key["kid"]).status_code == 200


def test_children_show_their_role_in_ps(appliance):
    kids = appliance.children()
    assert set(kids) == {"keeper", "front"}, kids
    for role, pid in kids.items():
        cmdline = read_proc(pid, "cmdline")
        assert cmdline.startswith(("signd: %s" % role).encode()), (role, cmdline)
        assert read_proc(pid, "comm").decode().strip() == role


# ---- the keeper protocol -----------------------------------------------------------------


def test_keeper_answers_each_malformed_request_with_an_error_and_keeps_serving(appliance,
                                                                               keeper):
    assert keeper.ping()[1] == 0
    oversized = Keeper.message(OP_PING, b"\0" * (100 * 1024 + 100 - HDR))
    assert len(oversized) == 100 * 1024 + 100
    cases = [
        ("3 bytes", b"K\x01\x00", ST_SHORT),
        ("100 KiB + 100", oversized, ST_OVERSIZED),
        ("unknown op", Keeper.message(99, b""), ST_UNKNOWN_OP),
        # Op 3 was PUBLIC_KEY, which nothing called: retired, its number never reused.
        ("retired op 3", Keeper.message(3, b"\0" * 16), ST_UNKNOWN_OP),
        ("version 2", Keeper.message(OP_PING, b"\0" * 17, version=2), ST_VERSION),
        ("PING with has_kid 7", Keeper.message(OP_PING, b"\x07" + b"\0" * 16), ST_BAD_BODY),
        ("SIGN shorter than a kid", Keeper.message(OP_SIGN, b"\0" * 5), ST_BAD_BODY),
    ]
    for what, message, expected in cases:
        _, status, body = keeper.exchange(message)
        assert (status, body) == (expected, b""), what
        # The same connection still serves.
        op, status, body = keeper.ping()
        assert (op, status, body) == (OP_PING, 0, b""), what
    # Each is a security event in the keeper's log, naming the peer: this process.
    line = "signd-keeper: security: keeper protocol error from pid %d: " % os.getpid()
    wait_for_log = time.monotonic() + 10
    while appliance.read_log().count(line) < len(cases) and time.monotonic() < wait_for_log:
        time.sleep(0.1)
    log = appliance.read_log()
    for name in ("short", "oversized", "unknown_op", "bad_version", "bad_body"):
        assert line + name in log, name


def test_keeper_signs_an_active_kid_and_refuses_a_revoked_one(appliance, keeper):
    a = appliance
    key = a.create_key(label="raw-sign")
    message = b"signed over the keeper socket"
    op, status, sig = keeper.request(OP_SIGN, bytes.fromhex(key["kid"]) + message)
    assert (op, status) == (OP_SIGN, 0)
    verify_rs256(key["jwk"], sig, message)

    victim = a.create_key(label="raw-revoked")
    op, status, sig = keeper.request(OP_SIGN, bytes.fromhex(victim["kid"]) + message)
    assert status == 0
    verify_rs256(victim["jwk"], sig, message)
    assert a.delete("/v1/keys/" + victim["kid"], {"reason": "test"}).status_code == 200
    # The keeper's own refusal: its error body is the CKR value, 0 as no token call failed.
    # The revocation answers without waiting for the token (the destroy follows in the
    # background), so the keeper refuses once it has seen the registry change: at most
    # KPD_ACTIVE_CHECK_MS (100 ms) after the commit, or at once when the object is gone.
    refused = procs.wait_for(lambda: (lambda r: r if r[1] != 0 else None)(
        keeper.request(OP_SIGN, bytes.fromhex(victim["kid"]) + message)),
        timeout=10, interval=0.02, message="the keeper to refuse the revoked kid")
    assert refused == (OP_SIGN, KEY_NOT_FOUND, NO_CKR)


def test_keeper_refuses_to_generate_under_a_revoked_kid(appliance, keeper):
    """A front in an attacker's hands cannot make a revoked kid's key again (and then mark
    its row active): the keeper generates only under a kid the registry holds as pending,
    never under one that existed. Each refusal is logged with the peer's pid."""
    a = appliance
    victim = a.create_key(label="raw-regenerate")["kid"]
    assert a.delete("/v1/keys/" + victim, {"reason": "test"}).status_code == 200
    bits = struct.pack(">I", 2048)
    key_exists = HSM["SK_ERR_KEY_EXISTS"]
    assert keeper.request(OP_GENERATE, bytes.fromhex(victim) + bits) == \
        (OP_GENERATE, key_exists, NO_CKR)
    # A kid no create reserved: refused too, nothing made.
    stranger = os.urandom(16)
    assert keeper.request(OP_GENERATE, stranger + bits) == (OP_GENERATE, BAD_ARGUMENT, NO_CKR)
    assert keeper.request(OP_PING, b"\x01" + stranger)[1] == KEY_NOT_FOUND
    line = "security: refused to generate kid %s for pid %d" % (victim, os.getpid())
    deadline = time.monotonic() + 10
    while line not in a.read_log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert line in a.read_log()
    # Creating keys through the API still works.
    assert a.create_key(label="after")["state"] == "active"


def test_keeper_refuses_to_destroy_an_active_key(appliance, keeper):
    a = appliance
    key = a.create_key(label="not-destroyed")
    assert keeper.request(OP_DESTROY, bytes.fromhex(key["kid"])) == \
        (OP_DESTROY, BAD_ARGUMENT, NO_CKR)
    assert a.get("/v1/keys/" + key["kid"]).json()["state"] == "active"
    r = a.post("/v1/keys/%s/sign" % key["kid"], {"payload": b64u(b"still here")})
    assert r.status_code == 200, r.text
    verify_rs256(key["jwk"], unb64u(r.json()["signature"]), b"still here")


# ---- one appliance per data directory ----------------------------------------------------


def test_second_appliance_on_the_same_data_directory_refuses_to_start(appliance):
    a = appliance
    r = subprocess.run([SIGND, a.conf], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "listening" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "another signd is running on this data directory" in lines[0], lines[0]
    # The first one did not notice.
    assert a.get("/readyz", auth=False).status_code == 200
    assert mint(a).status_code == 200


# ---- a process dies ----------------------------------------------------------------------


def test_front_killed_under_signing_load_is_restarted_and_loses_nothing(make_appliance):
    a = make_appliance()
    keys = [a.create_key(label="before-%d" % i) for i in range(3)]
    revoked = keys[0]
    assert a.delete("/v1/keys/" + revoked["kid"], {"reason": "test"}).status_code == 200
    states = key_states(a)
    assert states[revoked["kid"]] == "revoked"
    assert [states[k["kid"]] for k in keys[1:]] == ["active", "active"]
    feed = revocation_feed(a)
    assert [e["kid"] for e in feed["revoked"]] == [revoked["kid"]]
    supervisor = a.proc.pid
    front = a.children()["front"]

    stop = threading.Event()
    results = []  # (started, finished, thread, status code or exception)
    lock = threading.Lock()

    def load(n):
        with requests.Session() as s:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    outcome = mint(a, s).status_code
                except requests.exceptions.RequestException as e:
                    outcome = e
                    time.sleep(0.02)  # the port is closed in the gap: do not spin
                with lock:
                    results.append((t0, time.monotonic(), n, outcome))

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        killed_at = time.monotonic()
        os.kill(front, signal.SIGKILL)
        new_front = a.wait_front_restarted(front)
        back_at = time.monotonic()
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert new_front != front
    assert a.proc.pid == supervisor and a.proc.poll() is None
    assert a.children()["front"] == new_front

    before = [o for t0, t1, _, o in results if t1 < killed_at]
    gap = [o for t0, t1, _, o in results if t1 >= killed_at and t0 < back_at]
    after = [(n, o) for t0, t1, n, o in results if t0 >= back_at]
    assert before and all(o == 200 for o in before), before[:5]
    bad_gap = [o for o in gap if o != 200 and not (
        isinstance(o, (requests.exceptions.ConnectionError,
                       requests.exceptions.ChunkedEncodingError))
        or (isinstance(o, int) and o >= 500))]
    assert not bad_gap, bad_gap[:5]
    # Every client is served again after the restart, and only served.
    assert {n for n, o in after if o == 200} == {0, 1, 2, 3}, after[:10]
    assert all(o == 200 for _, o in after), [o for _, o in after if o != 200][:5]

    assert key_states(a) == states
    assert revocation_feed(a) == feed
    r = mint(a, kid=keys[2]["kid"])
    assert r.status_code == 200, r.text
    token_signature_ok(r.json()["token"], keys[2]["jwk"])
    assert "killed by signal 9: restarting it" in a.read_log()


def test_keeper_killed_gives_503_until_the_supervisor_restarts_it(make_appliance):
    a = make_appliance()
    key = a.create_key(label="survives-the-keeper")
    r = mint(a)
    assert r.status_code == 200 and r.json()["kid"] == key["kid"], r.text
    assert a.get("/readyz", auth=False).status_code == 200
    supervisor = a.proc.pid
    kids = a.children()
    keeper = kids["keeper"]

    # Stopped, the supervisor cannot restart the keeper: the outage lasts as long as the
    # test needs to observe it.
    os.kill(supervisor, signal.SIGSTOP)
    try:
        wait_state(supervisor, ("T",))
        os.kill(keeper, signal.SIGKILL)
        wait_state(keeper, ("Z", None))  # dead, unreaped while its parent is stopped
        r = mint(a)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "hsm_unavailable", r.text
        deadline = time.monotonic() + 2.5  # /readyz caches its probe for 1 s
        while True:
            r = a.get("/readyz", auth=False)
            if r.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "hsm_unavailable", r.text
        # The front itself stays up: it answers, and is the same process.
        assert a.children()["front"] == kids["front"]
    finally:
        os.kill(supervisor, signal.SIGCONT)

    deadline = time.monotonic() + 15
    while True:
        r = mint(a)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        assert r.status_code == 503, r.text
        time.sleep(0.1)
    assert r.status_code == 200, r.text
    assert r.json()["kid"] == key["kid"]
    token_signature_ok(r.json()["token"], key["jwk"])
    now = a.children()
    assert now["keeper"] != keeper and now["front"] == kids["front"], (kids, now)
    assert a.proc.pid == supervisor
    assert a.stop() == 0


# ---- stopping ----------------------------------------------------------------------------


def test_sigterm_lets_the_request_in_flight_finish_and_stops_every_process(make_appliance):
    a = make_appliance()
    kids = a.children()
    assert set(kids) == {"keeper", "front"}, kids
    ctx = ssl.create_default_context(cafile=a.cacert)
    # TLS 1.2: no session ticket arrives after the handshake, so the socket becomes
    # readable only when the response does.
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    body = json.dumps({"bits": 4096, "label": "in-flight"})
    headers = {**a.auth(), "Content-Type": "application/json"}
    # A 4096-bit key takes a second or more; should one come back before the signal was
    # sent, the request was not in flight: try again with another.
    for _ in range(5):
        conn = http.client.HTTPSConnection("127.0.0.1", a.port, context=ctx, timeout=60)
        conn.request("POST", "/v1/keys", body=body, headers=headers)
        time.sleep(0.2)  # the front has read the request and is waiting on the keeper
        answered, _, _ = select.select([conn.sock], [], [], 0)
        if not answered:
            break
        r = conn.getresponse()
        assert r.status == 201, r.read()
        conn.close()
    else:
        pytest.skip("every 4096-bit key was generated in under 0.2 s")
    a.proc.send_signal(signal.SIGTERM)
    try:
        r = conn.getresponse()
        answer = (r.status, r.read())
    except (http.client.HTTPException, OSError) as e:
        answer = (None, repr(e))
    conn.close()
    assert a.proc.wait(timeout=30) == 0, a.read_log()[-3000:]
    for role, pid in kids.items():
        wait_state(pid, ("Z", None), timeout=10)
        assert not alive_pid(pid), role
    assert "restarting" not in a.read_log()
    # The handler ran to its end: the key is in the registry after the next start.
    a.stop()
    a.start()
    made = [k for k in a.get("/v1/keys").json()["keys"] if k["label"] == "in-flight"]
    assert made and all(k["state"] == "active" for k in made), made
    # And its client was told so.
    assert answer[0] == 201, answer
    assert json.loads(answer[1])["kid"] in {k["kid"] for k in made}


# ---- one account per process (started as root, user empty) ------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="the processes switch accounts only when started as root")

# Run with a process's ids: tries to open each path (listing a directory) and prints, per
# path, "ok" or the errno's name.
PROBE = """
import errno, os, sys
for path in sys.argv[1:]:
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as f:
                f.read(1)
        print("ok")
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)))
"""


def probe(pid, paths):
    """{path: "ok" or errno name} for paths opened with pid's uid, gid and groups."""
    uid, gid, groups = ids_of(pid)
    r = subprocess.run(["/usr/bin/python3", "-c", PROBE] + paths, capture_output=True,
                       text=True, timeout=30, user=uid, group=gid, extra_groups=groups,
                       cwd="/")
    assert r.returncode == 0, r.stderr
    return dict(zip(paths, r.stdout.split()))


def account_ids(name):
    import pwd
    pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


@needs_root
def test_keeper_and_front_run_as_their_own_accounts_and_the_keeper_still_signs(appliance):
    import grp
    a = appliance
    kids = a.children()
    shared = grp.getgrnam("signd-data").gr_gid
    for role, pid in kids.items():
        uid, gid = account_ids("signd-" + role)
        st = procs.status(pid)
        assert [int(x) for x in st["Uid"].split()] == [uid] * 4, (role, st["Uid"])
        assert [int(x) for x in st["Gid"].split()] == [gid] * 4, (role, st["Gid"])
        assert shared in ids_of(pid)[2], (role, st["Groups"])
        assert st["NoNewPrivs"] == "1", role
        for field in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            assert int(st[field], 16) == 0, (role, field, st[field])
        # Every thread (CivetWeb's workers, the keeper's pool) runs as the account.
        for tid in os.listdir("/proc/%d/task" % pid):
            assert procs.status(int(tid))["Uid"].split()[0] == str(uid), (role, tid)
    assert ids_of(kids["keeper"])[0] != ids_of(kids["front"])[0]
    # The supervisor stays root, to start each again under its account.
    assert ids_of(a.proc.pid)[0] == 0
    key = a.create_key(label="own-accounts")
    message = b"signed by a keeper of its own account"
    r = a.post("/v1/keys/%s/sign" % key["kid"], {"payload": b64u(message)})
    assert r.status_code == 200, r.text
    verify_rs256(key["jwk"], unb64u(r.json()["signature"]), message)


@needs_root
def test_front_cannot_open_the_pin_a_token_file_or_the_keepers_memory(appliance):
    a = appliance
    a.create_key(label="a-token-file")
    kids = a.children()
    data = os.path.realpath(a.dir)
    token_dir = os.path.join(data, "token")
    token_file = next(os.path.join(d, f) for d, _, files in os.walk(token_dir) for f in files)
    keeper_only = [os.path.join(data, "pin"), os.path.join(data, "softhsm2.conf"), token_dir,
                   token_file, "/proc/%d/mem" % kids["keeper"],
                   "/proc/%d/environ" % kids["keeper"]]
    root_only = [os.path.join(data, "so-pin"), os.path.join(data, "admin.credential"),
                 os.path.join(data, "appliance.conf")]
    front_files = [os.path.join(data, "tls", "key.pem"), os.path.join(data, "appliance.db")]

    as_front = probe(kids["front"], keeper_only + root_only + front_files)
    assert {p: as_front[p] for p in keeper_only + root_only} == \
        {p: "EACCES" for p in keeper_only + root_only}, as_front
    # What the front needs, it opens: the probe can tell the two apart.
    assert {p: as_front[p] for p in front_files} == {p: "ok" for p in front_files}, as_front

    # The keeper opens its files (so the refusals above are the accounts', not the probe's);
    # not the front's TLS key.
    as_keeper = probe(kids["keeper"], keeper_only[:4] + front_files)
    assert [as_keeper[p] for p in keeper_only[:4]] == ["ok"] * 4, as_keeper
    assert as_keeper[front_files[0]] == "EACCES", as_keeper


@needs_root
def test_only_the_fronts_account_may_connect_to_the_keeper(appliance):
    a = appliance
    path = os.path.join(a.dir, "keeper.sock")
    st = os.stat(path)
    assert st.st_mode & 0o777 == 0o660, oct(st.st_mode)
    import grp
    assert st.st_gid == grp.getgrnam("signd-data").gr_gid
    k = Keeper(a)  # as the front: served
    try:
        assert k.ping()[1] == 0
    finally:
        k.close()
    nobody = account_ids("nobody")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        with as_ids(nobody[0], nobody[1], []):
            with pytest.raises(PermissionError):
                s.connect(path)
    finally:
        s.close()
    # An account let through the file's mode (put in the group) is still refused by the
    # keeper itself (SO_PEERCRED): closed unanswered.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(10)
    try:
        with as_ids(nobody[0], nobody[1], [st.st_gid]):
            s.connect(path)
        try:
            s.send(Keeper.message(OP_PING, b"\0" * 17))
            reply = s.recv(4096)
        except OSError:
            reply = b""
        assert reply == b"", reply
    finally:
        s.close()
    assert "refused a connection from uid %d" % nobody[0] in a.read_log()
