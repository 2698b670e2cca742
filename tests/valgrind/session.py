#!/usr/bin/python3
"""A scripted session with signd under valgrind memcheck (make valgrind).

Starts signd (the supervisor, and signd-keeper and signd-front, which it forks and
executes: all three run under memcheck, --trace-children=yes following the execs) on a fresh SoftHSM2 token, drives a realistic session over
HTTPS (credentials, keys, raw signatures, JWTs, rotation, revocation, the feed, the event
stream, the audit trail, refused requests), then stops it with SIGTERM and reads
valgrind's log of every process. Fails (exit 1) on any invalid read or write, use of
uninitialised memory, bad free, or any byte definitely lost; "still reachable" and
"possibly lost" (libraries' one-time allocations, thread stacks) are reported, not failed.

Usage: tests/valgrind/session.py  (SIGND_BUILD=build/... picks the binaries; default build)
"""
import base64
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(TOP, "tests", "blackbox"))

from conftest import SIGND, Appliance  # noqa: E402  (the black-box tests' fixture class)

VG_ERROR_EXIT = 99
VALGRIND = [
    "valgrind", "--tool=memcheck", "--leak-check=full", "--show-leak-kinds=definite",
    "--errors-for-leak-kinds=definite", "--error-exitcode=%d" % VG_ERROR_EXIT,
    # A forked child runs a few lines and executes signd-keeper or signd-front, whose own
    # memcheck then writes vg.PID.log as the child's account: the forked one, silent, must
    # not have created that file first (as root), nor vgdb's files in /tmp (no gdbserver).
    "--trace-children=yes", "--child-silent-after-fork=yes", "--vgdb=no", "--track-origins=yes",
    "--num-callers=30",
]
# Under memcheck everything runs 20 to 50 times slower: generous bounds, never a bar.
START_TIMEOUT = 600
STOP_TIMEOUT = 600
REQUEST_TIMEOUT = 600


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class VgAppliance(Appliance):
    """The black-box fixture's appliance, started under valgrind."""

    def request(self, method, path, auth=True, **kw):
        """As the fixture's, with a timeout for memcheck's pace (a key takes 20 to 60 s)."""
        headers = kw.pop("headers", {})
        if auth is True:
            auth = self.admin
        if auth:
            headers = {**self.auth(auth), **headers}
        return self.session.request(method, self.url + path, headers=headers,
                                    timeout=REQUEST_TIMEOUT, verify=self.cacert, **kw)

    def start_under_valgrind(self, log_dir):
        env = dict(os.environ)
        env.pop("SIGND_FAULT", None)
        self.log = open(self.log_path, "ab")
        cmd = VALGRIND + ["--log-file=%s/vg.%%p.log" % log_dir, SIGND, self.conf]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, env=env,
                                     start_new_session=True)
        line = self.proc.stdout.readline().decode()
        if "listening" not in line:
            raise RuntimeError("signd did not start under valgrind: %r\n%s"
                               % (line, self.read_log()[-3000:]))
        return self


def expect(r, status, what):
    if r.status_code != status:
        raise AssertionError("%s: expected %d, got %d %s" % (what, status, r.status_code,
                                                             r.text[:300]))
    return r


SLOW = []  # what memcheck made too slow to finish here


def generate(a, what, request, fallback):
    """Key generation under memcheck on a loaded machine (20 s for one key here at load 5,
    over a minute at load 40) can outlast the front's wait for the keeper
    (keeper_generate_timeout_ms): it then answers 503 hsm_timeout and the key, never recorded,
    is an orphan that the keeper finishes and the next reconcile destroys. That is noted
    and the session goes on with fallback (a key made before memcheck started); the
    keeper's generation code still ran under memcheck to its end before the stop."""
    r = request()
    if r.status_code == 503 and r.json()["error"]["code"] in ("hsm_unavailable", "hsm_timeout"):
        SLOW.append(what)
        return fallback
    return expect(r, 201, what).json()


def session(a, kids):
    """Every resource of the API, the successful and the refused way. kids: two keys made
    before memcheck started (each key generation takes 20 to 60 s under it)."""
    steps = 0
    signer = a.create_credential("signer", kids="all", label="vg-signer")["secret"]
    auditor = a.create_credential("auditor", label="vg-auditor")["secret"]
    k1 = generate(a, "create a key",
                  lambda: a.post("/v1/keys", json={"bits": 2048, "label": "vg-one"}),
                  {"kid": kids[2]})
    k2 = {"kid": kids[0]}
    for i in range(10):
        expect(a.post("/v1/keys/%s/sign" % k1["kid"], {"payload": b64u(b"msg %d" % i)},
                      auth=signer), 200, "sign")
        expect(a.post("/v1/tokens", {"kid": k2["kid"], "sub": "video-%d" % i, "ttl": 600,
                                     "claims": {"downloadable": i % 2 == 0,
                                                "accessRules": [{"type": "allow"}]}},
                      auth=signer), 200, "mint")
        steps += 2
    expect(a.post("/v1/tokens", {"sub": "no-kid"}, auth=signer), 200, "mint without kid")
    expect(a.get("/v1/keys"), 200, "list keys")
    expect(a.get("/v1/keys?state=active", auth=auditor), 200, "list keys as auditor")
    expect(a.get("/v1/keys/" + k1["kid"]), 200, "one key")
    rot = generate(a, "rotate",
                   lambda: a.post("/v1/keys/%s/rotate" % kids[1], json={"grace_seconds": 0}),
                   {"kid": kids[3]})
    jwks = expect(a.get("/.well-known/jwks.json", auth=False), 200, "jwks")
    expect(a.get("/.well-known/jwks.json", auth=False,
                 headers={"If-None-Match": jwks.headers["ETag"]}), 304, "jwks etag")
    # The event stream: subscribe, see the revocation arrive, leave.
    url = a.url + "/v1/revocations/events"
    with a.session.get(url, stream=True, timeout=REQUEST_TIMEOUT, verify=a.cacert,
                       headers={"Last-Event-ID": "0"}) as ev:
        expect(ev, 200, "events")
        expect(a.delete("/v1/keys/" + k2["kid"], {"reason": "valgrind session"}), 200, "revoke")
        seen = b""
        for chunk in ev.iter_content(chunk_size=None):
            seen += chunk
            if b"event: revocation" in seen:
                break
    expect(a.delete("/v1/keys/" + k2["kid"], {"reason": "again"}), 200, "revoke is idempotent")
    expect(a.post("/v1/keys/%s/sign" % k2["kid"], {"payload": "eA"}, auth=signer), 409,
           "revoked kid cannot sign")
    expect(a.post("/v1/keys/%s/sign" % rot["kid"], {"payload": "eA"}, auth=signer), 200,
           "successor signs")
    for path in ("/v1/revocations", "/v1/revocations?after=0", "/v1/revocations/feed",
                 "/v1/revocations/key", "/v1/audit/key", "/healthz", "/readyz"):
        expect(a.get(path, auth=False), 200, path)
    creds = expect(a.get("/v1/credentials"), 200, "list credentials").json()["credentials"]
    victim = a.create_credential("signer", kids=[rot["kid"]], label="vg-victim",
                                 max_ttl=600)
    expect(a.get("/v1/credentials/" + victim["id"]), 200, "one credential")
    expect(a.delete("/v1/credentials/" + victim["id"]), 200, "revoke credential")
    expect(a.post("/v1/tokens", {"sub": "x"}, auth=victim["secret"]), 401,
           "revoked credential")
    # Refused requests take their own paths through the code: each once.
    expect(a.get("/v1/keys", auth=False), 401, "no credential")
    expect(a.get("/v1/keys", auth="sgd_0000000000000000_" + "A" * 43), 401, "unknown")
    expect(a.post("/v1/keys", {"bits": 2048}, auth=signer), 403, "signer cannot create")
    expect(a.get("/nope"), 404, "not found")
    expect(a.request("PUT", "/v1/keys"), 405, "method")
    expect(a.post("/v1/keys", data=b"{", headers={"Content-Type": "application/json"}), 400,
           "invalid json")
    expect(a.post("/v1/keys", data=b'{"label":"\xff"}',
                  headers={"Content-Type": "application/json"}), 400, "invalid utf8")
    expect(a.post("/v1/keys", data=b"[" * 5000, headers={"Content-Type": "application/json"}),
           400, "deep json")
    expect(a.post("/v1/keys", data=b"x" * (70 * 1024),
                  headers={"Content-Type": "application/json"}), 413, "body too large")
    # Token-level control: mint with every flag, redeem (once, then refused), revoke one
    # token, read its signed status list, and the refusals of each route.
    redeemer = a.create_credential("redeemer", label="vg-redeemer")["secret"]
    once = expect(a.post("/v1/tokens", {"kid": rot["kid"], "single_use": True, "revocable": True,
                                        "aud": "uploads", "origin": "https://a.example"},
                         auth=signer), 200, "mint single-use revocable").json()
    expect(a.post("/v1/tokens/redeem", {"token": once["token"], "origin": "https://a.example"},
                  auth=redeemer), 200, "redeem")
    expect(a.post("/v1/tokens/redeem", {"token": once["token"]}, auth=redeemer), 409,
           "redeem again")
    expect(a.post("/v1/tokens/redeem", {"token": once["token"], "origin": "https://b.example"},
                  auth=redeemer), 409, "wrong origin")
    expect(a.post("/v1/tokens/redeem", {"token": "a.b.c"}, auth=redeemer), 400, "bad token")
    expect(a.delete("/v1/tokens/" + once["jti"], auth=signer), 200, "revoke one token")
    expect(a.delete("/v1/tokens/" + "0" * 32), 404, "not a revocable jti")
    expect(a.delete("/v1/tokens/bad!jti"), 400, "malformed jti")
    expect(a.get("/v1/status-lists/%d" % once["status"]["list"], auth=False), 200,
           "status list")
    expect(a.get("/v1/status-lists/1023", auth=False), 404, "no such status list")
    expect(a.post("/v1/tokens", {"origin": "https://A.example/"}, auth=signer), 400,
           "bad origin")
    steps += 11
    # The audit trail, read the ways an auditor reads it.
    expect(a.get("/v1/audit", auth=auditor), 200, "audit")
    expect(a.get("/v1/audit?limit=5&after=2", auth=auditor), 200, "audit page")
    expect(a.get("/v1/audit/export", auth=auditor), 200, "audit export")
    return {"credentials": len(creds), "requests": steps + 40}


def read_logs(log_dir):
    """{pid: (errors, definitely lost bytes, text)} from each process's valgrind log."""
    out = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "vg.*.log"))):
        text = open(path, errors="replace").read()
        pid = int(path.rsplit(".", 2)[1])
        m = re.findall(r"ERROR SUMMARY: ([\d,]+) errors", text)
        errors = int(m[-1].replace(",", "")) if m else None
        d = re.findall(r"definitely lost: ([\d,]+) bytes", text)
        lost = int(d[-1].replace(",", "")) if d else 0
        out[pid] = (errors, lost, text)
    return out


def main():
    if shutil.which("valgrind") is None:
        print("valgrind is missing: apt-get install valgrind (mk/packages.txt lists it)")
        return 2
    work = tempfile.mkdtemp(prefix="signd-valgrind-")
    # Entered, not listed, by the keeper's and the front's accounts (started as root they
    # run as signd-keeper and signd-front), which must reach the data directory in it.
    os.chmod(work, 0o711)
    data, logs = os.path.join(work, "data"), os.path.join(work, "vg")
    os.makedirs(logs)
    # signd-keeper and signd-front are executed after their switch of accounts, so the
    # memcheck that follows each exec opens its log as that account: sticky, writable by all.
    os.chmod(logs, 0o1733)
    # Few threads (each one is slow to start under memcheck); checkpoints and flushes
    # often, so the audit key signs during the session; every signature audited.
    # The keeper's deadlines at their longest: memcheck's pace is not a stalled token (and
    # the watchdog only kills a keeper that uses no CPU, which memcheck's never is).
    a = VgAppliance(data, {"worker_threads": 4, "events_max_subscribers": 2,
                           "audit_flush_seconds": 1, "audit_checkpoint_events": 10,
                           "audit_every_signature": "true", "log_requests": "true",
                           "keeper_timeout_ms": 600000, "keeper_generate_timeout_ms": 600000})
    t0 = time.monotonic()
    ok = False
    try:
        # The token's first keys (publication, audit and two client keys) without memcheck.
        a.start()
        kids = [a.create_key(label="vg-before-%d" % i)["kid"] for i in range(4)]
        a.stop()
        a.start_under_valgrind(logs)
        started = time.monotonic()
        a.signer = None
        stats = session(a, kids)
        worked = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        rc = a.proc.wait(timeout=STOP_TIMEOUT)
        stopped = time.monotonic()
        ok = True
    finally:
        if not ok and a.proc is not None and a.proc.poll() is None:
            os.killpg(a.proc.pid, signal.SIGKILL)
            a.proc.wait()
    results = read_logs(logs)
    print("valgrind memcheck session: start %.0f s, %d requests %.0f s, stop %.0f s; "
          "signd exit %d" % (started - t0, stats["requests"], worked - started,
                             stopped - worked, rc))
    if SLOW:
        print("  not completed within the front's wait for the keeper under memcheck (machine load): %s"
              % ", ".join(SLOW))
    failed = rc != 0
    for pid, (errors, lost, text) in results.items():
        print("  pid %d: %s errors, %d bytes definitely lost" % (pid, errors, lost))
        if errors != 0 or lost != 0:
            failed = True
            print(text[-20000:])
    if len(results) < 3:
        print("expected a valgrind log for the supervisor, the keeper and the front; got %d"
              % len(results))
        failed = True
    if failed:
        print("FAILED: logs kept in %s; signd's stderr in %s" % (logs, a.log_path))
        return 1
    print("OK: no invalid access, no definite leak in any process")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
