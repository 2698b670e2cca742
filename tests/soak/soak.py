"""make soak: crash consistency under load.

One data directory (provisioning/init-data-dir.sh, as the black-box tests make theirs),
then SOAK_ROUNDS rounds (default 200). Each round starts the appliance if it is down, runs
concurrent clients (creators, revokers, rotators, raw signers and JWT minters) for a random
short time, then SIGKILLs one target at a random moment:
  front       the HTTP front alone; the supervisor restarts it (its start reconciles)
  keeper      the keeper alone; the supervisor restarts it while the front answers 503
  group       the supervisor, keeper and front at once; the soak starts signd again
  supervisor  the supervisor alone; its children get SIGTERM (PR_SET_PDEATHSIG) and stop,
              the soak starts signd again
or, in a share of the rounds, stops one with SIGSTOP instead (a hang, not a crash):
  stall-keeper           the keeper, for 0.5 to 3 s (a module call that does not return),
                         then SIGCONT: requests that need the token answer 503 hsm_timeout
                         within keeper_timeout_ms, the rest as usual; the same keeper goes on
  stall-keeper-watchdog  the keeper, until the supervisor's watchdog kills it
                         (keeper_watchdog_ms, 4 s here) and starts another
  stall-front            the front, for 0.5 to 3 s, then SIGCONT
  while a watcher asks /readyz and /healthz every 100 ms; every answer's latency during a
  stall is recorded, and the end prints the table of docs/reliability.md (status, p50 /
  p99 / max per request, and the time back to ready);
and, once the appliance serves again, checks with no client running:
  token_registry   every active or retiring kid in GET /v1/keys has its private key on the
                   token, and no object on the token (but the appliance's service keys) has
                   a kid that is not active or retiring (`signd-provision token-list DIR`,
                   which reads the PIN file itself), and no key is broken;
  acknowledged     every key answered 201 (create or rotate) is still in the registry;
  revocations      every revocation answered 200, from any round, is revoked in the registry,
                   listed by GET /v1/revocations and in the signed feed, whose RS256
                   signature verifies (jwcrypto) under the publication key pinned in round 1
                   and whose seq never goes back;
  revoked_refused  a revoked kid signs nothing: POST /v1/keys/{kid}/sign and /v1/tokens
                   are refused (every kid revoked since the last check, and a sample of
                   older ones), and no signature requested after its revocation was
                   answered 200 succeeded during the round;
  audit            the export (GET /v1/audit/export) verifies with `signd-provision
                   audit-verify` under the audit key pinned in round 1, anchored at the last
                   checkpoint seen in the previous round (a trail cut back is caught), and
                   every revocation answered 200 has its key.revoked event.
A failed invariant stops the soak with the round and the invariant named, and leaves the
data directory (its path printed, signd.log inside). On success the directory is removed.

  /usr/bin/python3 tests/soak/soak.py [ROUNDS]     (or SOAK_ROUNDS; SOAK_SEED to replay)
"""
import base64
import fcntl
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import requests
from jwcrypto import jwk, jws

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "blackbox"))
from conftest import BUILD, TOP, Appliance  # noqa: E402

PROVISION = os.path.join(TOP, BUILD, "bin", "signd-provision")
TARGETS = ("front", "keeper", "group", "supervisor", "stall-keeper", "stall-keeper-watchdog",
           "stall-front")
TARGET_WEIGHTS = (3, 3, 3, 1, 2, 1, 1)
STALLS = [t for t in TARGETS if t.startswith("stall-")]
# Audit checkpoints often enough that every round has some to anchor the next one on. The
# keeper's deadline is the default; the watchdog's is short so that a stall past it fits a
# round.
WATCHDOG_MS = 4000
CONF = {"audit_flush_seconds": 1, "audit_checkpoint_events": 20, "audit_checkpoint_seconds": 1,
        "keeper_timeout_ms": 2000, "keeper_watchdog_ms": WATCHDOG_MS}
LIVE_TARGET = 12  # creators pause above this many live keys, revokers below a few
OLD_REVOKED_SAMPLE = 10
REQUEST_TIMEOUT = 60
READY_TIMEOUT = 120
SETTLE_SECONDS = 5  # rotation.h's ROT_TICK_MS is 1 s


def group_members(pgid):
    """The running (not zombie) processes of process group pgid, from /proc."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(name))
    return found


class InvariantFailed(Exception):
    def __init__(self, invariant, message):
        super().__init__("%s: %s" % (invariant, message))
        self.invariant = invariant


def check(cond, invariant, message):
    if not cond:
        raise InvariantFailed(invariant, message)


def unb64u(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class Ledger:
    """What clients were told, across every round. Guarded by one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked = {}        # kid -> how it was answered 201 ("create" or "rotate")
        self.live = []         # kids answered 201 and not (yet) revoked or rotated by us
        self.revoked = {}      # kid -> monotonic time its DELETE was answered 200
        self.unchecked = set()  # revoked kids not yet tried by revoked_refused
        self.late_signatures = []  # (kid, route): a signature asked for after its revocation
        self.counts = {k: 0 for k in ("created", "rotated", "revoked", "signed", "minted",
                                      "unknown", "refused", "unavailable")}
        self.phase = None  # the stall under way (a STALLS name), or None
        self.latencies = {}  # (stall, "METHOD /template", status or "no answer") -> [s]

    def note_latency(self, method, path, status, seconds):
        """Records one answer's latency while a stall is under way."""
        with self.lock:
            if self.phase is None:
                return
            route = re.sub(r"[0-9a-f]{32}", "{kid}", path.split("?")[0])
            key = (self.phase, "%s %s" % (method, route), status)
            self.latencies.setdefault(key, []).append(seconds)

    def count(self, what, n=1):
        with self.lock:
            self.counts[what] += n


class Clients:
    """Concurrent clients, each thread with its own HTTPS session."""

    def __init__(self, a, ledger, rng):
        self.a = a
        self.ledger = ledger
        self.stop = threading.Event()
        self.rng = random.Random(rng.random())
        self.threads = []

    def session(self):
        return requests.Session()

    def call(self, s, method, path, secret, body):
        """The response, or None when the outcome is unknown (connection lost)."""
        t0 = time.monotonic()
        try:
            # verify per request: REQUESTS_CA_BUNDLE would override a session's.
            r = s.request(method, self.a.url + path, json=body, timeout=REQUEST_TIMEOUT,
                          headers={"Authorization": "Bearer " + secret}, verify=self.a.cacert)
            self.ledger.note_latency(method, path, r.status_code, time.monotonic() - t0)
            return r
        except requests.exceptions.ConnectionError:
            self.ledger.note_latency(method, path, "no answer", time.monotonic() - t0)
            self.ledger.count("unknown")
            self.stop.wait(0.1)  # the front is down: do not spin until it is back
            return None

    def tally(self, r, ok):
        if r is None:
            return False
        if r.status_code == ok:
            return True
        self.ledger.count("unavailable" if r.status_code >= 500 else "refused")
        return False

    def pick_live(self):
        with self.ledger.lock:
            return self.rng.choice(self.ledger.live) if self.ledger.live else None

    def creator(self):
        s = self.session()
        while not self.stop.is_set():
            with self.ledger.lock:
                full = len(self.ledger.live) >= LIVE_TARGET
            if full:
                self.stop.wait(0.05)
                continue
            r = self.call(s, "POST", "/v1/keys", self.a.admin, {"bits": 2048, "label": "soak"})
            if self.tally(r, 201):
                kid = r.json()["kid"]
                with self.ledger.lock:
                    self.ledger.acked[kid] = "create"
                    self.ledger.live.append(kid)
                self.ledger.count("created")

    def revoker(self):
        s = self.session()
        while not self.stop.is_set():
            with self.ledger.lock:
                few = len(self.ledger.live) <= 3
            kid = None if few else self.pick_live()
            if kid is None:
                self.stop.wait(0.05)
                continue
            r = self.call(s, "DELETE", "/v1/keys/" + kid, self.a.admin, {"reason": "soak"})
            if r is not None and r.status_code == 409:
                continue  # rotated meanwhile: retiring keys are the scheduler's
            if self.tally(r, 200):
                with self.ledger.lock:
                    self.ledger.revoked[kid] = time.monotonic()
                    self.ledger.unchecked.add(kid)
                    if kid in self.ledger.live:
                        self.ledger.live.remove(kid)
                self.ledger.count("revoked")
            self.stop.wait(self.rng.uniform(0.05, 0.3))

    def rotator(self):
        s = self.session()
        while not self.stop.wait(self.rng.uniform(0.2, 1.0)):
            kid = self.pick_live()
            if kid is None:
                continue
            # A short grace: the scheduler revokes the old key within the soak too.
            r = self.call(s, "POST", "/v1/keys/%s/rotate" % kid, self.a.admin,
                          {"grace_seconds": self.rng.choice((1, 2, 5, 30))})
            if self.tally(r, 201):
                new = r.json()["kid"]
                with self.ledger.lock:
                    self.ledger.acked[new] = "rotate"
                    self.ledger.live.append(new)
                    if kid in self.ledger.live:
                        self.ledger.live.remove(kid)
                self.ledger.count("rotated")

    def signer(self, route):
        s = self.session()
        while not self.stop.is_set():
            kid = self.pick_live()
            if kid is None:
                with self.ledger.lock:
                    kid = self.rng.choice(list(self.ledger.revoked)) if self.ledger.revoked \
                        else None
                if kid is None:
                    self.stop.wait(0.05)
                    continue
            started = time.monotonic()
            if route == "sign":
                r = self.call(s, "POST", "/v1/keys/%s/sign" % kid, self.a.signer,
                              {"payload": "c29haw"})
            else:
                r = self.call(s, "POST", "/v1/tokens", self.a.signer,
                              {"kid": kid, "sub": "soak", "ttl": 600})
            if r is not None and r.status_code == 200:
                with self.ledger.lock:
                    t = self.ledger.revoked.get(kid)
                    if t is not None and t < started:
                        self.ledger.late_signatures.append((kid, route))
                self.ledger.count("signed" if route == "sign" else "minted")
            else:
                self.tally(r, 200)

    def watcher(self):
        """What a load balancer and a liveness check see: /readyz and /healthz every 100 ms
        (their latencies are recorded while a stall is under way)."""
        s = self.session()
        while not self.stop.wait(0.1):
            for path in ("/readyz", "/healthz"):
                t0 = time.monotonic()
                try:
                    r = s.get(self.a.url + path, timeout=REQUEST_TIMEOUT, verify=self.a.cacert)
                    status = r.status_code
                except requests.exceptions.RequestException:
                    status = "no answer"
                self.ledger.note_latency("GET", path, status, time.monotonic() - t0)

    def start(self):
        plan = [self.creator, self.creator, self.revoker, self.rotator,
                lambda: self.signer("sign"), lambda: self.signer("token"), self.watcher]
        for f in plan:
            t = threading.Thread(target=f, daemon=True)
            t.start()
            self.threads.append(t)

    def join(self):
        self.stop.set()
        for t in self.threads:
            t.join(REQUEST_TIMEOUT + 30)
            if t.is_alive():
                raise RuntimeError("a client thread is stuck")


class Soak:
    def __init__(self, rounds, seed):
        self.rounds = rounds
        self.seed = seed
        self.rng = random.Random(seed)
        self.dir = tempfile.mkdtemp(prefix="signd-soak-")
        self.a = Appliance(self.dir, CONF)
        self.ledger = Ledger()
        self.kills = {t: 0 for t in TARGETS}
        self.feed_seq = 0
        self.pinned = {}  # path -> the service key's PEM, as round 1 saw it
        self.anchor = None
        self.revocations_checked = 0
        self.round = 0
        self.target = None
        self.back_to_ready = {}  # stall -> [seconds from its end to /readyz 200]

    # ---- the appliance ---------------------------------------------------------------

    def wait_ready(self, timeout=READY_TIMEOUT):
        """Until /readyz answers 200 (the keeper answers the front)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.a.get("/readyz", auth=False).status_code == 200:
                    return
            except requests.exceptions.RequestException:
                pass
            time.sleep(0.1)
        raise InvariantFailed("restart", "the appliance did not become ready in %d s" % timeout)

    def wait_child_replaced(self, role, old):
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            pid = self.a.children().get(role)
            if pid and pid != old:
                return pid
            check(self.a.proc.poll() is None, "restart",
                  "the supervisor died after its %s was killed" % role)
            time.sleep(0.05)
        raise InvariantFailed("restart", "the supervisor did not restart its %s" % role)

    def lock_free(self):
        """True when no process holds the data directory's lock (appliance/supervisor/main.c)."""
        fd = os.open(os.path.join(self.dir, "appliance.db.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # releases the lock at once

    def stall(self, target):
        """SIGSTOP the keeper or the front (a module call that never returns, a wedged
        process) while the clients run; SIGCONT it, or let the watchdog kill it
        (stall-keeper-watchdog). Returns the seconds from the end of the stall (SIGCONT, or
        the watchdog's restart) to /readyz 200."""
        a = self.a
        role = "front" if target == "stall-front" else "keeper"
        pid = a.children()[role]
        with self.ledger.lock:
            self.ledger.phase = target
        os.kill(pid, signal.SIGSTOP)
        try:
            if target == "stall-keeper-watchdog":
                self.wait_child_replaced("keeper", pid)
            else:
                # Below the watchdog's bound: the same keeper goes on.
                time.sleep(self.rng.uniform(0.5, min(3.0, WATCHDOG_MS / 1000 - 1)))
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        t = time.monotonic()
        self.wait_ready()
        back = time.monotonic() - t
        with self.ledger.lock:
            self.ledger.phase = None
        if target != "stall-keeper-watchdog":
            check(a.children().get(role) == pid, "restart",
                  "the %s was replaced during a stall shorter than the watchdog's" % role)
        self.back_to_ready.setdefault(target, []).append(back)
        return back

    def kill(self, target):
        a = self.a
        if target in STALLS:
            self.stall(target)
            return
        kids = a.children()
        if target in ("front", "keeper"):
            os.kill(kids[target], signal.SIGKILL)
            self.wait_child_replaced(target, kids[target])
            self.wait_ready()
            return
        group = a.proc.pid
        if target == "group":
            os.killpg(group, signal.SIGKILL)
        else:
            os.kill(group, signal.SIGKILL)
        # Every process of the group holds the data directory's lock (inherited), a child
        # being forked too: the next start needs all of them gone. After the supervisor
        # alone, its children stop on SIGTERM (PR_SET_PDEATHSIG) by themselves.
        # A killed process's leader shows as a zombie while its other threads still hold
        # the descriptors: wait for the lock itself.
        deadline = time.monotonic() + 60
        while (group_members(group) or not self.lock_free()) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = group_members(group)
        check(not left and self.lock_free(), "restart",
              "pids %s, or the data directory's lock, outlived the supervisor by 60 s" % left)
        a.stop(signal.SIGKILL)
        a.start()
        self.wait_ready()

    # ---- the invariants ----------------------------------------------------------------

    def keys(self):
        r = self.a.get("/v1/keys")
        check(r.status_code == 200, "token_registry", "GET /v1/keys: %s" % r.text)
        return {k["kid"]: k["state"] for k in r.json()["keys"]}

    def token(self):
        p = subprocess.run([PROVISION, "token-list", self.dir], capture_output=True, text=True,
                           timeout=120)
        check(p.returncode == 0, "token_registry", "token-list: " + p.stderr.strip())
        objs = {}
        for line in p.stdout.splitlines():
            f = line.split()
            if "reserved" not in f[3:]:
                objs[f[0]] = f[1] == "private"
        return objs

    def check_token_registry(self):
        # The rotation scheduler may revoke a retiring key between the two reads: read the
        # registry before and after the token, and judge only a stable picture.
        # A destroy the front deferred while the keeper was away runs at the rotation
        # scheduler's next tick (appliance/core/reconcile.h): settle for a few ticks, no more.
        settle = time.monotonic() + SETTLE_SECONDS
        while True:
            before = self.keys()
            objs = self.token()
            after = self.keys()
            if before != after:  # judge only a picture taken while nothing changed
                problem = "the registry kept changing while idle"
            else:
                problem = self.token_registry_problem(after, objs)
                if problem is None:
                    return after
            if time.monotonic() > settle:
                raise InvariantFailed("token_registry", problem)
            time.sleep(0.25)

    @staticmethod
    def token_registry_problem(states, objs):
        live = {k for k, s in states.items() if s in ("active", "retiring")}
        broken = sorted(k for k, s in states.items() if s == "broken")
        if broken:
            return "keys marked broken: %s" % broken
        missing = sorted(k for k in live if not objs.get(k))
        if missing:
            return "live in the registry, no private key on the token: %s" % missing
        extra = sorted((k, states.get(k, "no row")) for k in objs if k not in live)
        if extra:
            return "objects on the token without a live registry row: %s" % extra
        return None

    def check_acknowledged(self, states):
        with self.ledger.lock:
            acked = dict(self.ledger.acked)
        lost = sorted(k for k in acked if k not in states)
        check(not lost, "acknowledged", "keys answered 201 but gone: %s" % lost)

    def pinned_pem(self, path, invariant, what):
        """The service key's PEM at path, which must be the one round 1 saw."""
        r = self.a.get(path, auth=False)
        check(r.status_code == 200, invariant, "GET %s: %s" % (path, r.text))
        pem = r.json()["pem"]
        check(pem == self.pinned.setdefault(path, pem), invariant, "the %s key changed" % what)
        return pem

    def publication_key(self):
        pem = self.pinned_pem("/v1/revocations/key", "revocations", "publication")
        return jwk.JWK.from_pem(pem.encode())

    def check_revocations(self, states):
        # The rotation scheduler may revoke a retiring key while this looks: compare the
        # three views only when the registry did not change around them.
        for _ in range(20):
            feed, listed = self.revocation_views()
            after = self.keys()
            if after == states:
                break
            states = after
        else:
            raise InvariantFailed("revocations", "the registry kept changing while idle")
        self.judge_revocations(states, feed, listed)
        return states

    def revocation_views(self):
        """The signed feed's payload (signature checked) and GET /v1/revocations's kids."""
        key = self.publication_key()
        r = self.a.get("/v1/revocations/feed", auth=False)
        check(r.status_code == 200, "revocations", "GET /v1/revocations/feed: %s" % r.text)
        token = jws.JWS()
        token.deserialize(r.text)
        try:
            token.verify(key, alg="RS256")
        except jws.InvalidJWSSignature:
            raise InvariantFailed("revocations", "the feed's signature does not verify")
        header = token.jose_header
        check(header.get("typ") == "kid-revocation+jwt", "revocations", "feed header %s" % header)
        feed = json.loads(token.payload)
        check(feed["seq"] >= self.feed_seq, "revocations",
              "the feed's seq went back from %d to %d" % (self.feed_seq, feed["seq"]))
        self.feed_seq = feed["seq"]
        r = self.a.get("/v1/revocations", auth=False)
        check(r.status_code == 200, "revocations", "GET /v1/revocations: %s" % r.text)
        return feed, {e["kid"] for e in r.json()["revoked"]}

    def judge_revocations(self, states, feed, listed):
        in_feed = {e["kid"] for e in feed["revoked"]}
        check(feed["seq"] == len(in_feed), "revocations",
              "the full feed has seq %d but %d kids" % (feed["seq"], len(in_feed)))
        with self.ledger.lock:
            revoked = sorted(self.ledger.revoked)
        for what, have in (("the signed feed", in_feed), ("GET /v1/revocations", listed)):
            gone = [k for k in revoked if k not in have]
            check(not gone, "revocations", "answered 200 but missing from %s: %s" % (what, gone))
        not_revoked = [k for k in revoked if states.get(k) != "revoked"]
        check(not not_revoked, "revocations",
              "answered 200 but not revoked in GET /v1/keys: %s" % not_revoked)
        registry = {k for k, s in states.items() if s == "revoked"}
        check(registry == in_feed == listed, "revocations",
              "registry, feed and list disagree: %d revoked rows, %d in the feed, %d listed"
              % (len(registry), len(in_feed), len(listed)))

    def check_revoked_refused(self, states):
        with self.ledger.lock:
            late = list(self.ledger.late_signatures)
            fresh = sorted(self.ledger.unchecked)
            self.ledger.unchecked.clear()
        check(not late, "revoked_refused",
              "signed after its revocation was answered 200: %s" % late)
        older = sorted(k for k, s in states.items() if s == "revoked" and k not in fresh)
        kids = fresh + self.rng.sample(older, min(OLD_REVOKED_SAMPLE, len(older)))
        for kid in kids:
            for path, body in (("/v1/keys/%s/sign" % kid, {"payload": "c29haw"}),
                               ("/v1/tokens", {"kid": kid, "sub": "soak"})):
                r = self.a.post(path, body)
                check(400 <= r.status_code < 500, "revoked_refused",
                      "revoked kid %s: %s answered %d %s" % (kid, path, r.status_code, r.text))
        self.revocations_checked += len(kids)

    def check_audit(self):
        pem = self.pinned_pem("/v1/audit/key", "audit", "audit")
        r = self.a.get("/v1/audit/export")
        check(r.status_code == 200, "audit", "GET /v1/audit/export: %d" % r.status_code)
        export = os.path.join(self.dir, "soak-export.jsonl")
        pem_path = os.path.join(self.dir, "soak-audit.pem")
        with open(export, "w") as f:
            f.write(r.text)
        with open(pem_path, "w") as f:
            f.write(pem)
        cmd = [PROVISION, "audit-verify", export, pem_path]
        if self.anchor is not None:
            cmd += ["--anchor", "%d:%s" % self.anchor]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        check(p.returncode == 0, "audit", (p.stdout + p.stderr).strip() +
              (" (anchor %d:%s)" % self.anchor if self.anchor else ""))
        lines = [json.loads(l) for l in r.text.splitlines()]
        revoked_events = {l.get("kid") for l in lines
                          if l["type"] == "event" and l.get("action") == "key.revoked"}
        with self.ledger.lock:
            revoked = list(self.ledger.revoked)
        silent = [k for k in revoked if k not in revoked_events]
        check(not silent, "audit", "revocations answered 200 without key.revoked: %s" % silent)
        cps = [l for l in lines if l["type"] == "checkpoint"]
        if cps:
            self.anchor = (cps[-1]["seq"], cps[-1]["hash"])

    def check_all(self):
        states = self.check_token_registry()
        self.check_acknowledged(states)
        states = self.check_revocations(states)
        self.check_revoked_refused(states)
        self.check_audit()
        return states

    # ---- the run -------------------------------------------------------------------------

    def run_round(self):
        clients = Clients(self.a, self.ledger, self.rng)
        before = dict(self.ledger.counts)
        clients.start()
        busy = self.rng.uniform(0.3, 3.0)
        time.sleep(busy)
        target = self.target = self.rng.choices(TARGETS, TARGET_WEIGHTS)[0]
        self.kills[target] += 1
        t0 = time.monotonic()
        try:
            self.kill(target)
        finally:
            clients.join()
        back = time.monotonic() - t0
        states = self.check_all()
        with self.ledger.lock:
            d = {k: v - before[k] for k, v in self.ledger.counts.items()}
        live = sum(1 for s in states.values() if s in ("active", "retiring"))
        print("round %3d: busy %.1fs, killed %-10s back in %.1fs; +%d keys, %d revoked, "
              "%d signed, %d unknown, %d 503; %d live, %d revoked, feed seq %d: ok"
              % (self.round, busy, target, back, d["created"] + d["rotated"], d["revoked"],
                 d["signed"] + d["minted"], d["unknown"], d["unavailable"], live,
                 len(states) - live, self.feed_seq), flush=True)

    def run(self):
        t0 = time.monotonic()
        print("soak: %d rounds, seed %d, data directory %s" % (self.rounds, self.seed, self.dir),
              flush=True)
        try:
            self.a.start()
            self.wait_ready()
            for self.round in range(1, self.rounds + 1):
                self.run_round()
        except InvariantFailed as e:
            print("soak: FAILED in round %d (killed %s): invariant %s"
                  % (self.round, self.target, e), flush=True)
            self.stop_quietly()
            print("soak: the data directory is left for inspection: %s (signd.log inside); "
                  "replay with SOAK_SEED=%d" % (self.dir, self.seed), flush=True)
            return 1
        except BaseException:
            self.stop_quietly()
            print("soak: aborted in round %d; data directory left: %s"
                  % (self.round, self.dir), flush=True)
            raise
        self.a.stop()
        c = self.ledger.counts
        print("soak: %d rounds in %.0fs; kills: %s; acknowledged: %d keys created, %d rotated, "
              "%d revocations, %d signatures, %d JWTs; %d outcomes unknown, %d answered 5xx; "
              "%d revoked-kid refusals checked; feed seq %d; all invariants held"
              % (self.rounds, time.monotonic() - t0,
                 ", ".join("%s %d" % kv for kv in self.kills.items()), c["created"],
                 c["rotated"], c["revoked"], c["signed"], c["minted"], c["unknown"],
                 c["unavailable"], self.revocations_checked, self.feed_seq), flush=True)
        self.report_stalls()
        shutil.rmtree(self.dir, ignore_errors=True)
        return 0

    def report_stalls(self):
        """The table of docs/reliability.md: for each stall, what clients saw (status,
        p50 / p99 / max latency in ms, how many) and the time back to ready."""
        def pct(xs, p):
            xs = sorted(xs)
            return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000

        print("soak: stalls (latencies in ms while stalled; back to ready after it ended)")
        print("| stall | request | status | n | p50 | p99 | max |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for key in sorted(self.ledger.latencies, key=str):
            xs = self.ledger.latencies[key]
            print("| %s | %s | %s | %d | %.0f | %.0f | %.0f |"
                  % (key[0], key[1], key[2], len(xs), pct(xs, 0.5), pct(xs, 0.99),
                     max(xs) * 1000))
        for target, xs in sorted(self.back_to_ready.items()):
            print("soak: %s: %d stalls, back to ready p50 %.2f s, max %.2f s"
                  % (target, len(xs), pct(xs, 0.5) / 1000, max(xs)))

    def stop_quietly(self):
        try:
            self.a.stop(signal.SIGKILL)
        except Exception as e:  # the report matters more than a clean stop
            print("soak: stopping the appliance: %s" % e, flush=True)


def main():
    rounds = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SOAK_ROUNDS", "200"))
    seed = int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(1 << 31))
    sys.exit(Soak(rounds, seed).run())


if __name__ == "__main__":
    main()
