"""make soak-cluster (or make soak SOAK_CLUSTER=1): crash consistency of cluster mode.

Three nodes on one PostgreSQL server and one SoftHSM2 token behind HAProxy, provisioned
and started as the black-box tests start them (tests/blackbox/cluster.py, the steps of
`make cluster`). Then SOAK_ROUNDS rounds (default 50). Each round runs concurrent clients
through the load balancer (key creators and revokers, minters of plain, single-use and
revocable tokens, token revokers, and redeemers that race three at a time for each
single-use token) for a random short time, then, at a random moment, one fault:
  node       SIGKILL of a random node's supervisor, keeper and front at once; the clients
             go on against the others for a moment, then the node is started again
  postgres   SIGKILL of PostgreSQL's postmaster, the server started again 0.5 to 3 s later
             (crash recovery from its WAL), the clients running throughout
and, once every node's /readyz answers 200 again (the time is printed), checks with no
client running:
  acknowledged     every key answered 201 is listed by every node; every key revocation
                   answered 200 is revoked there;
  revocations      every node's signed feed verifies under the publication key pinned in
                   round 1, its seq is its number of entries (one sequence for the
                   cluster, no gap, no duplicate), it holds every revocation answered 200,
                   and its seq never goes back; every newly revoked kid mints on no node;
  token_revocations  every token revocation answered 200 is in force (a redeem answers
                   409 token_revoked) and answers the same seq again; no seq given twice;
  single_use       no single-use token was answered 200 redeemed:true twice, and every
                   one answered so is refused (409 token_already_used) afterwards;
  audit            the export of a random node verifies with `signd-provision
                   audit-verify` under the audit key pinned in round 1, anchored at the
                   previous round's last checkpoint, and holds key.revoked for every key
                   revocation answered 200.
A failed invariant stops the soak, names the round and invariant and leaves the cluster's
directory (the nodes' signd.log, postgres.log, haproxy.log inside).

  /usr/bin/python3 tests/soak/soak_cluster.py [ROUNDS]    (or SOAK_ROUNDS; SOAK_SEED)
"""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import requests
from jwcrypto import jwk, jws

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "blackbox"))
from cluster import Cluster  # noqa: E402
from conftest import BUILD, TOP  # noqa: E402

PROVISION = os.path.join(TOP, BUILD, "bin", "signd-provision")
NODES = 3
FAULTS = ("node", "postgres")
FAULT_WEIGHTS = (2, 1)
CONF = {"audit_flush_seconds": 1, "audit_checkpoint_events": 20,
        "audit_checkpoint_seconds": 1}
LIVE_TARGET = 8
REQUEST_TIMEOUT = 30
READY_TIMEOUT = 120
RACERS = 3  # redeemers per single-use token


class InvariantFailed(Exception):
    def __init__(self, invariant, message):
        super().__init__("%s: %s" % (invariant, message))
        self.invariant = invariant


def check(cond, invariant, message):
    if not cond:
        raise InvariantFailed(invariant, message)


class Ledger:
    """What clients were told, across every round; one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.keys = set()            # answered 201
        self.live = []               # answered 201, not revoked by us
        self.key_revoked = []        # answered 200
        self.unchecked_kids = []     # revoked kids not yet tried on every node
        self.token_revoked = {}      # jti -> (token, seq), answered 200
        self.redeemed = {}           # token -> how many 200 redeemed:true
        self.unchecked_redeemed = []
        self.errors = []             # answers no client may get, fault or not
        self.codes = {}              # "503 storage_unavailable" -> how many
        self.counts = {k: 0 for k in ("created", "revoked", "minted", "redeemed",
                                      "token_revoked", "already_used", "unknown", "5xx")}

    def count(self, what, n=1):
        with self.lock:
            self.counts[what] += n


class Clients:
    def __init__(self, lb, redeemer, ledger, rng):
        self.lb = lb
        self.redeemer_secret = redeemer
        self.ledger = ledger
        self.rng = random.Random(rng.random())
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.races = []      # (token, [results]) single-use tokens to race for
        self.revocable = []  # (jti, token)
        self.threads = []
        self.local = threading.local()

    def call(self, method, path, secret, body):
        """The response, or None when the outcome is unknown (no answer)."""
        if not hasattr(self.local, "s"):
            self.local.s = requests.Session()
        try:
            r = self.local.s.request(method, self.lb.url + path, json=body,
                                     timeout=REQUEST_TIMEOUT, verify=self.lb.cacert,
                                     headers={"Authorization": "Bearer " + secret})
        except requests.exceptions.RequestException:
            self.ledger.count("unknown")
            self.stop.wait(0.1)
            return None
        if r.status_code >= 500:
            self.ledger.count("5xx")
            try:
                code = r.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = "?"
            with self.ledger.lock:
                key = "%d %s" % (r.status_code, code)
                self.ledger.codes[key] = self.ledger.codes.get(key, 0) + 1
                # A fault is answered 503 with Retry-After (the database, the token), never
                # with a 500 or without telling the client when to come back.
                if r.status_code != 503 or not r.headers.get("Retry-After"):
                    self.ledger.errors.append("%s %s: %d %s" % (method, path, r.status_code,
                                                                 r.text[:200]))
            self.stop.wait(0.05)
        return r

    def pick_live(self):
        with self.ledger.lock:
            return self.rng.choice(self.ledger.live) if self.ledger.live else None

    def creator(self):
        while not self.stop.is_set():
            with self.ledger.lock:
                full = len(self.ledger.live) >= LIVE_TARGET
            if full:
                self.stop.wait(0.05)
                continue
            r = self.call("POST", "/v1/keys", self.lb.admin, {"bits": 2048, "label": "soak"})
            if r is not None and r.status_code == 201:
                kid = r.json()["kid"]
                with self.ledger.lock:
                    self.ledger.keys.add(kid)
                    self.ledger.live.append(kid)
                self.ledger.count("created")

    def key_revoker(self):
        while not self.stop.wait(self.rng.uniform(0.1, 0.5)):
            with self.ledger.lock:
                few = len(self.ledger.live) <= 3
            kid = None if few else self.pick_live()
            if kid is None:
                continue
            with self.ledger.lock:
                if kid in self.ledger.live:
                    self.ledger.live.remove(kid)  # minters stop picking it
            r = self.call("DELETE", "/v1/keys/" + kid, self.lb.admin, {"reason": "soak"})
            if r is not None and r.status_code == 200:
                with self.ledger.lock:
                    self.ledger.key_revoked.append(kid)
                    self.ledger.unchecked_kids.append(kid)
                self.ledger.count("revoked")
            elif r is not None and r.status_code < 500:
                with self.ledger.lock:  # our own live key: nothing may refuse it
                    self.ledger.errors.append("DELETE %s: %d %s" % (kid, r.status_code, r.text))
            # unknown or 5xx: it may or may not be revoked; minters leave it alone

    def minter(self):
        while not self.stop.is_set():
            kid = self.pick_live()
            if kid is None:
                self.stop.wait(0.05)
                continue
            kind = self.rng.choice(("plain", "single", "revocable"))
            body = {"kid": kid, "sub": "soak", "ttl": 600}
            if kind == "single":
                body["single_use"] = True
            elif kind == "revocable":
                body["revocable"] = True
            r = self.call("POST", "/v1/tokens", self.lb.signer, body)
            if r is None or r.status_code != 200:
                continue  # a 409 key_revoked: the key was revoked meanwhile
            self.ledger.count("minted")
            with self.lock:
                if kind == "single":
                    self.races.append([r.json()["token"], RACERS])
                elif kind == "revocable":
                    self.revocable.append((r.json()["jti"], r.json()["token"]))

    def redeemer(self):
        while not self.stop.is_set():
            with self.lock:
                race = self.races[-1] if self.races else None
                if race is not None:
                    race[1] -= 1
                    if race[1] == 0:
                        self.races.pop()
            if race is None:
                self.stop.wait(0.02)
                continue
            token = race[0]
            r = self.call("POST", "/v1/tokens/redeem", self.redeemer_secret, {"token": token})
            if r is None:
                continue
            if r.status_code == 200 and r.json().get("redeemed") is True:
                with self.ledger.lock:
                    self.ledger.redeemed[token] = self.ledger.redeemed.get(token, 0) + 1
                    self.ledger.unchecked_redeemed.append(token)
                self.ledger.count("redeemed")
            elif r.status_code == 409 and r.json()["error"]["code"] == "token_already_used":
                self.ledger.count("already_used")

    def token_revoker(self):
        while not self.stop.is_set():
            with self.lock:
                item = self.revocable.pop() if self.revocable else None
            if item is None:
                self.stop.wait(0.02)
                continue
            jti, token = item
            r = self.call("DELETE", "/v1/tokens/" + jti, self.lb.signer, None)
            if r is not None and r.status_code == 200:
                with self.ledger.lock:
                    self.ledger.token_revoked[jti] = (token, r.json()["seq"])
                self.ledger.count("token_revoked")

    def start(self):
        plan = [self.creator, self.key_revoker, self.minter, self.minter, self.token_revoker]
        plan += [self.redeemer] * RACERS
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


class ClusterSoak:
    def __init__(self, rounds, seed):
        self.rounds = rounds
        self.seed = seed
        self.rng = random.Random(seed)
        self.c = Cluster(nodes=NODES, haproxy=True, extra_conf=CONF)
        self.ledger = Ledger()
        self.faults = {f: 0 for f in FAULTS}
        self.pinned = {}
        self.feed_seq = 0
        self.anchor = None
        self.round = 0
        self.fault = None
        self.back = []

    # ---- the cluster -----------------------------------------------------------------

    def ready(self, i):
        try:
            return self.c.node(i).get("/readyz", auth=False, timeout=5).status_code == 200
        except requests.exceptions.RequestException:
            return False

    def wait_all_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if all(self.ready(i) for i in range(1, NODES + 1)):
                return
            time.sleep(0.1)
        raise InvariantFailed("recovery", "not every node ready within %d s: %s" % (
            READY_TIMEOUT, [i for i in range(1, NODES + 1) if not self.ready(i)]))

    def start_postgres(self):
        """The server again after its SIGKILL: its orphaned backends may still hold the
        shared memory for a moment, so a start that fails is tried again."""
        for attempt in range(20):
            try:
                self.c.pg.start()
                return
            except RuntimeError as e:
                last = e
                time.sleep(0.5)
        raise InvariantFailed("recovery", "PostgreSQL did not start again: %s" % last)

    def inject(self, fault, clients):
        if fault == "node":
            i = self.rng.randint(1, NODES)
            self.c.kill9(i)
            time.sleep(self.rng.uniform(0.5, 2.0))  # the others serve meanwhile
            clients.join()
            self.c.node(i).start()  # returns once it listens
            return "node%d" % i, time.monotonic()
        self.c.pg.kill9()
        time.sleep(self.rng.uniform(0.5, 3.0))
        self.start_postgres()  # returns once its socket answers
        back = time.monotonic()
        time.sleep(self.rng.uniform(0.0, 1.0))
        clients.join()
        return "postgres", back

    # ---- the invariants --------------------------------------------------------------

    def node(self):
        return self.c.node(self.rng.randint(1, NODES))

    def pinned_pem(self, node, path, invariant):
        r = node.get(path, auth=False)
        check(r.status_code == 200, invariant, "GET %s: %s" % (path, r.text))
        pem = r.json()["pem"]
        check(pem == self.pinned.setdefault(path, pem), invariant,
              "node%d: the key at %s changed" % (node.n, path))
        return pem

    def check_acknowledged(self):
        with self.ledger.lock:
            errors = list(self.ledger.errors)
            keys = set(self.ledger.keys)
            revoked = list(self.ledger.key_revoked)
        check(not errors, "acknowledged", "; ".join(errors[:5]))
        for node in self.c.nodes:
            r = node.get("/v1/keys")
            check(r.status_code == 200, "acknowledged", "node%d GET /v1/keys: %s" % (
                node.n, r.text))
            states = {k["kid"]: k["state"] for k in r.json()["keys"]}
            lost = sorted(keys - set(states))
            check(not lost, "acknowledged", "node%d: keys answered 201 but gone: %s" % (
                node.n, lost))
            bad = [k for k in revoked if states[k] != "revoked"]
            check(not bad, "acknowledged", "node%d: revocations answered 200 but %s" % (
                node.n, [(k, states[k]) for k in bad]))

    def feed(self, node):
        key = jwk.JWK.from_pem(self.pinned_pem(node, "/v1/revocations/key",
                                               "revocations").encode())
        r = node.get("/v1/revocations/feed", auth=False)
        check(r.status_code == 200, "revocations", "node%d feed: %s" % (node.n, r.text))
        token = jws.JWS()
        token.deserialize(r.text)
        try:
            token.verify(key, alg="RS256")
        except jws.InvalidJWSSignature:
            raise InvariantFailed("revocations", "node%d: the feed does not verify" % node.n)
        return json.loads(token.payload)

    def check_revocations(self):
        with self.ledger.lock:
            revoked = list(self.ledger.key_revoked)
            fresh = list(self.ledger.unchecked_kids)
            self.ledger.unchecked_kids.clear()
        seqs = {}
        for node in self.c.nodes:
            # A node's feed follows the others' revocations by their notes: settle briefly.
            deadline = time.monotonic() + 5
            while True:
                feed = self.feed(node)
                kids = {e["kid"] for e in feed["revoked"]}
                entries = len(feed["revoked"]) + len(feed.get("subjects", []))
                missing = [k for k in revoked if k not in kids]
                if not missing and feed["seq"] == entries or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            check(feed["seq"] == entries, "revocations",
                  "node%d: seq %d for %d entries (a gap or a duplicate)" % (
                      node.n, feed["seq"], entries))
            check(not missing, "revocations",
                  "node%d: answered 200 but not in its feed: %s" % (node.n, missing))
            check(feed["seq"] >= self.feed_seq, "revocations",
                  "node%d: the feed's seq went back from %d to %d" % (
                      node.n, self.feed_seq, feed["seq"]))
            seqs[node.n] = feed["seq"]
            for kid in fresh:
                r = node.post("/v1/tokens", {"kid": kid, "sub": "soak"})
                check(400 <= r.status_code < 500, "revocations",
                      "node%d minted with revoked %s: %d %s" % (node.n, kid, r.status_code,
                                                                 r.text))
        check(len(set(seqs.values())) == 1, "revocations", "the nodes' feeds differ: %s" % seqs)
        self.feed_seq = max(seqs.values())

    def check_tokens(self, redeemer):
        with self.ledger.lock:
            revoked = dict(self.ledger.token_revoked)
            twice = {t: n for t, n in self.ledger.redeemed.items() if n > 1}
            fresh = list(self.ledger.unchecked_redeemed)
            self.ledger.unchecked_redeemed.clear()
        check(not twice, "single_use", "redeemed more than once: %s" % list(twice.values()))
        seqs = [seq for _, seq in revoked.values()]
        check(len(seqs) == len(set(seqs)), "token_revocations", "a seq given twice")
        for token in fresh:
            node = self.node()
            r = node.post("/v1/tokens/redeem", {"token": token}, auth=redeemer)
            # Its key may have been revoked since: refused before the jti is looked at.
            check(r.status_code == 409 and r.json()["error"]["code"] in (
                "token_already_used", "key_revoked"), "single_use", "node%d: a redeemed token answered %d %s" % (
                      node.n, r.status_code, r.text))
        sample = self.rng.sample(sorted(revoked), min(30, len(revoked)))
        for jti in sample:
            token, seq = revoked[jti]
            node = self.node()
            r = node.post("/v1/tokens/redeem", {"token": token}, auth=redeemer)
            check(r.status_code == 409 and r.json()["error"]["code"] in (
                "token_revoked", "key_revoked"), "token_revocations", "node%d: a revoked token answered %d %s" % (
                      node.n, r.status_code, r.text))
            r = node.delete("/v1/tokens/" + jti, auth=node.admin)
            check(r.status_code == 200 and r.json()["seq"] == seq, "token_revocations",
                  "node%d: revocation of %s answered seq %d, now %d %s" % (
                      node.n, jti, seq, r.status_code, r.text))

    def check_audit(self):
        node = self.node()
        pem = self.pinned_pem(node, "/v1/audit/key", "audit")
        r = node.get("/v1/audit/export")
        check(r.status_code == 200, "audit", "node%d export: %d" % (node.n, r.status_code))
        export = os.path.join(self.c.dir, "soak-export.jsonl")
        pem_path = os.path.join(self.c.dir, "soak-audit.pem")
        with open(export, "w") as f:
            f.write(r.text)
        with open(pem_path, "w") as f:
            f.write(pem)
        cmd = [PROVISION, "audit-verify", export, pem_path]
        if self.anchor is not None:
            cmd += ["--anchor", "%d:%s" % self.anchor]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        check(p.returncode == 0, "audit", "node%d: %s" % (node.n, (p.stdout + p.stderr).strip()))
        lines = [json.loads(line) for line in r.text.splitlines()]
        events = {line.get("kid") for line in lines
                  if line["type"] == "event" and line.get("action") == "key.revoked"}
        with self.ledger.lock:
            silent = [k for k in self.ledger.key_revoked if k not in events]
        check(not silent, "audit", "revocations answered 200 without key.revoked: %s" % silent)
        cps = [line for line in lines if line["type"] == "checkpoint"]
        if cps:
            self.anchor = (cps[-1]["seq"], cps[-1]["hash"])

    # ---- the run -----------------------------------------------------------------------

    def run_round(self, redeemer):
        clients = Clients(self.c.balancer, redeemer, self.ledger, self.rng)
        before = dict(self.ledger.counts)
        clients.start()
        busy = self.rng.uniform(0.5, 3.0)
        time.sleep(busy)
        fault = self.fault = self.rng.choices(FAULTS, FAULT_WEIGHTS)[0]
        self.faults[fault] += 1
        try:
            what, t0 = self.inject(fault, clients)
        finally:
            clients.join()
        # From the node's or the server's return (listening again) to every node ready.
        self.wait_all_ready()
        back = time.monotonic() - t0
        self.back.append(back)
        self.check_acknowledged()
        self.check_revocations()
        self.check_tokens(redeemer)
        self.check_audit()
        with self.ledger.lock:
            d = {k: v - before[k] for k, v in self.ledger.counts.items()}
        print("round %3d: busy %.1fs, killed %-8s all ready %.1fs after its return; +%d keys, %d key "
              "revocations, %d mints, %d redeemed (%d refused as used), %d token revocations, "
              "%d unknown, %d 5xx; feed seq %d: ok"
              % (self.round, busy, what, back, d["created"], d["revoked"], d["minted"],
                 d["redeemed"], d["already_used"], d["token_revoked"], d["unknown"], d["5xx"],
                 self.feed_seq), flush=True)

    def run(self):
        t0 = time.monotonic()
        print("soak-cluster: %d rounds, seed %d, %d nodes, directory %s"
              % (self.rounds, self.seed, NODES, self.c.dir), flush=True)
        try:
            self.c.start()
            redeemer = self.c.node(1).create_credential("redeemer", label="soak")["secret"]
            self.wait_all_ready()
            for self.round in range(1, self.rounds + 1):
                self.run_round(redeemer)
        except InvariantFailed as e:
            print("soak-cluster: FAILED in round %d (fault %s): invariant %s"
                  % (self.round, self.fault, e), flush=True)
            self.stop_quietly()
            print("soak-cluster: the directory is left for inspection: %s; replay with "
                  "SOAK_SEED=%d" % (self.c.dir, self.seed), flush=True)
            return 1
        except BaseException:
            self.stop_quietly()
            print("soak-cluster: aborted in round %d; directory left: %s"
                  % (self.round, self.c.dir), flush=True)
            raise
        self.c.stop()
        c = self.ledger.counts
        back = sorted(self.back)
        print("soak-cluster: %d rounds in %.0fs; faults: %s; acknowledged: %d keys, %d key "
              "revocations, %d mints, %d redemptions (%d refused as used), %d token "
              "revocations; %d outcomes unknown, %d answered 5xx; all ready again p50 %.1f s, "
              "max %.1f s (5xx: %s); feed seq %d; all invariants held"
              % (self.rounds, time.monotonic() - t0,
                 ", ".join("%s %d" % kv for kv in self.faults.items()), c["created"],
                 c["revoked"], c["minted"], c["redeemed"], c["already_used"],
                 c["token_revoked"], c["unknown"], c["5xx"], back[len(back) // 2], back[-1],
                 self.ledger.codes, self.feed_seq), flush=True)
        return 0

    def stop_quietly(self):
        """Stops every process, keeping the directory (Cluster.stop would remove it)."""
        if self.c.balancer is not None:
            self.c.balancer.stop()
        for node in self.c.nodes:
            try:
                node.stop(signal.SIGKILL)
            except Exception as e:  # the report matters more than a clean stop
                print("soak-cluster: stopping node%d: %s" % (node.n, e), flush=True)
        if self.c.pg is not None:
            self.c.pg.stop()


def main():
    rounds = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SOAK_ROUNDS", "50"))
    seed = int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(1 << 31))
    sys.exit(ClusterSoak(rounds, seed).run())


if __name__ == "__main__":
    main()
