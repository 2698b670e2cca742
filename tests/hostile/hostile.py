#!/usr/bin/python3
"""Hostile clients against a real appliance, each while a well-behaved client measures its
own latency (make hostile; tests/blackbox/test_hostile.py runs the bounded scale).

For every case: the RSS of the front and the keeper before; the attack, run by a separate
attacker process (its own GIL, its own source address 127.0.0.2, so the per-address
throttle it may trip is not the well-behaved client's), while two well-behaved clients in
this process record their latencies:
  - "sign": an app server on one keep-alive connection, POST /v1/keys/{kid}/sign in a loop;
  - "fresh": a client that opens a new TLS connection for each GET /healthz (every 100 ms),
    which is what needs a free worker thread and so what starvation shows up in;
then what the attacker got (status codes, closed, timeout), that nothing crashed (the same
front and keeper pids, both alive, /readyz 200), and that RSS came back within
RSS_TOLERANCE of its level before (after up to SETTLE_S seconds).

  tests/hostile/hostile.py [--scale full|bounded] [--cases a,b,...] [--markdown]

SIGND_BUILD=build/... picks the binaries (default build). No secret travels in argv or
the environment: the attacker gets its parameters on stdin.
"""
import argparse
import collections
import json
import os
import random
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(TOP, "tests", "blackbox"))

ATTACKER_ADDR = "127.0.0.2"  # loopback too; the appliance listens on 127.0.0.1
# RSS after an attack may exceed the level before by this much. Why not zero: glibc keeps
# freed chunks in its per-thread arenas (up to 8 per core) instead of returning them to the
# kernel, and a worker thread that served its first TLS connection keeps its touched stack
# pages; neither grows with repetition. The warm-up before the first case exercises every
# worker thread once, so what is left to absorb is arena fragmentation.
RSS_TOLERANCE_KB = 8 * 1024
RSS_TOLERANCE_FRACTION = 0.10
SETTLE_S = 20

SCALES = {
    # worker_threads / events_max_subscribers as configured by default (64 + 256 threads).
    "full": {
        "conf": {},
        "baseline": {"duration": 15},
        "keepalive": {"n": 1000, "hold": 20},
        "slowloris": {"n": 200, "interval": 3, "duration": 25},
        "tls_stall": {"n": 200, "duration": 15},
        "headers_many": {"threads": 16, "duration": 15, "count": 4000},
        "headers_huge": {"threads": 16, "duration": 15, "size": 1 << 20},
        "body_10mb": {"threads": 4, "duration": 15, "size": 10 << 20, "min_rounds": 3},
        "json_bad_strings": {"threads": 8, "duration": 15},
        "json_deep": {"threads": 8, "duration": 15},
        "pipelined_garbage": {"threads": 8, "duration": 15, "pipelined": 50},
        "public_signing": {"threads": 8, "duration": 15, "pipelined": 50},
    },
    # The black-box test's scale: the same cases, small and quick (request_timeout_ms short
    # so that slowloris is cut within the run).
    "bounded": {
        "conf": {"worker_threads": 16, "events_max_subscribers": 16, "request_timeout_ms": 1500,
                 "keep_alive_timeout_ms": 1500},
        "baseline": {"duration": 1},
        "keepalive": {"n": 100, "hold": 2},
        "slowloris": {"n": 20, "interval": 0.5, "duration": 4},
        "tls_stall": {"n": 20, "duration": 3},
        "headers_many": {"threads": 2, "duration": 1, "count": 4000},
        "headers_huge": {"threads": 2, "duration": 1, "size": 1 << 20},
        "body_10mb": {"threads": 2, "duration": 1, "size": 10 << 20, "min_rounds": 3},
        "json_bad_strings": {"threads": 2, "duration": 1},
        "json_deep": {"threads": 2, "duration": 1},
        "pipelined_garbage": {"threads": 2, "duration": 1, "pipelined": 20},
        "public_signing": {"threads": 2, "duration": 3, "pipelined": 20},
    },
}

DESCRIPTIONS = {
    "baseline": "no attack: the well-behaved clients alone for {duration} s (the machine's noise)",
    "keepalive": "{n} concurrent keep-alive connections: one GET each, idle {hold} s, one more",
    "slowloris": "{n} slowloris connections: a request line, then one header byte every "
                 "{interval} s, reconnecting when cut, for {duration} s",
    "tls_stall": "{n} TCP connections that never send a TLS ClientHello, for {duration} s",
    "headers_many": "{threads} threads x requests with {count} headers, for {duration} s",
    "headers_huge": "{threads} threads x requests with one {size}-byte header, for {duration} s",
    "body_10mb": "{threads} threads x 10 MB bodies (Content-Length, chunked, unauthenticated), "
                 "for {duration} s",
    "json_bad_strings": "{threads} threads x JSON with invalid UTF-8 and NUL bytes in strings, "
                        "for {duration} s",
    "json_deep": "{threads} threads x deeply nested JSON (60,000 arrays, 6,000 objects, "
                 "nested claims), for {duration} s",
    "pipelined_garbage": "{threads} threads x {pipelined} pipelined GETs then garbage; random "
                         "bytes instead of a ClientHello, for {duration} s",
    "public_signing": "{threads} threads x {pipelined} pipelined unauthenticated GETs of what "
                      "the token signs (every status list number, the signed feed and the "
                      "unsigned list after every seq), for {duration} s",
}


# ---- the attacker (a process of its own) ----------------------------------------------------

class Target:
    def __init__(self, p):
        self.port = p["port"]
        self.cafile = p["cacert"]
        self.secret = p["secret"]
        self.kid = p["kid"]
        self.ctx = ssl.create_default_context(cafile=self.cafile)

    def tcp(self, timeout):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.bind((ATTACKER_ADDR, 0))
        s.connect(("127.0.0.1", self.port))
        return s

    def tls(self, timeout):
        s = self.tcp(timeout)
        try:
            return self.ctx.wrap_socket(s, server_hostname="localhost")
        except BaseException:
            s.close()
            raise


def classify(exc):
    if isinstance(exc, socket.timeout):
        return "timeout"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)):
        return "closed"
    if isinstance(exc, ssl.SSLError):
        return "tls error"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    return type(exc).__name__


def read_status(t):
    """The status code of the next response on t (reads its head only), or "closed"."""
    buf = b""
    while b"\r\n" not in buf:
        chunk = t.recv(4096)
        if not chunk:
            return "closed" if not buf else "garbled"
        buf += chunk
    line = buf.split(b"\r\n", 1)[0].split()
    return line[1].decode() if len(line) >= 2 and line[0].startswith(b"HTTP/") else "garbled"


def read_all_statuses(t, limit=1 << 20):
    """Every status line until the server closes (or limit bytes): list of codes, then how
    it ended ("closed", "timeout", ...)."""
    buf = b""
    end = "closed"
    try:
        while len(buf) < limit:
            chunk = t.recv(65536)
            if not chunk:
                break
            buf += chunk
    except Exception as e:  # noqa: BLE001 - what ended it is the finding
        end = classify(e)
    # A body without a trailing CRLF runs straight into the next status line.
    # Each status, with the error code of its JSON body when it has one ("400 invalid_json").
    codes = []
    starts = [m for m in re.finditer(rb"HTTP/1\.[01] (\d{3}) ", buf)]
    for k, m in enumerate(starts):
        part = buf[m.end():starts[k + 1].start() if k + 1 < len(starts) else len(buf)]
        code = re.search(rb'"code":"([a-z0-9_]+)"', part)
        codes.append(m.group(1).decode() + (" " + code.group(1).decode() if code else ""))
    return codes, end


def request_bytes(method, path, secret=None, body=b"", extra=b"", ctype=True):
    head = b"%s %s HTTP/1.1\r\nHost: localhost\r\n" % (method.encode(), path.encode())
    if secret:
        head += b"Authorization: Bearer " + secret.encode() + b"\r\n"
    if body or method == "POST":
        if ctype:
            head += b"Content-Type: application/json\r\n"
        head += b"Content-Length: %d\r\n" % len(body)
    return head + extra + b"\r\n" + body


def run_threads(n, fn):
    """Runs fn(i) in n threads; returns the Counter of what they returned (lists merged)."""
    out = collections.Counter()
    lock = threading.Lock()

    def wrap(i):
        try:
            r = fn(i)
        except Exception as e:  # noqa: BLE001
            r = [classify(e)]
        with lock:
            out.update(r if isinstance(r, list) else [r])

    threading.stack_size(256 * 1024)
    ts = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def flood(target, p, one):
    """threads x repeat one(target) until duration has passed, and at least min_rounds
    times (a case whose outcomes take turns needs every turn even on a slow machine);
    Counter of outcomes."""
    deadline = time.monotonic() + p["duration"]
    rounds = p.get("min_rounds", 1)

    def loop(i):
        got = []
        done = 0
        while done < rounds or time.monotonic() < deadline:
            done += 1
            try:
                r = one(target, i)
            except Exception as e:  # noqa: BLE001
                r = [classify(e)]
            got.extend(r if isinstance(r, list) else [r])
        return got

    return run_threads(p["threads"], loop)


def attack_baseline(target, p):
    time.sleep(p["duration"])
    return {"nothing sent": 1}


def attack_keepalive(target, p):
    """patience: how long a connection waits for its first answer (default: the hold);
    idle: when set, how long each one idles after its answer (default: to the hold's end)."""
    start = time.monotonic()
    deadline = start + p["hold"]
    patience = start + p.get("patience", p["hold"])

    def one(i):
        t = None
        try:
            t = target.tls(max(0.5, patience - time.monotonic()))
            if p.get("sign"):
                t.sendall(request_bytes("POST", "/v1/keys/%s/sign" % target.kid,
                                        secret=target.secret, body=b'{"payload":"eA"}'))
            else:
                t.sendall(request_bytes("GET", "/healthz"))
            first = read_status(t)
        except Exception as e:  # noqa: BLE001
            if t:
                t.close()
            return "unserved within %g s (%s)" % (patience - start, classify(e))
        try:
            # idle: each connection idles that long after its own answer, not to the deadline
            time.sleep(p["idle"] if "idle" in p else max(0, deadline - time.monotonic()))
            t.settimeout(30)
            t.sendall(request_bytes("GET", "/healthz"))
            second = read_status(t)
        except Exception as e:  # noqa: BLE001
            second = classify(e)
        t.close()
        return "%s, then after the idle hold %s" % (first, second)

    return run_threads(p["n"], one)


def attack_slowloris(target, p):
    deadline = time.monotonic() + p["duration"]
    cut_after = []
    lock = threading.Lock()

    def one(i):
        got = []
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                t = target.tls(10)
            except Exception as e:  # noqa: BLE001
                got.append("connect: " + classify(e))
                time.sleep(0.5)
                continue
            try:
                t.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
                t.settimeout(p["interval"])
                outcome = None
                # once: each connection drips until it is cut, for at most duration of its own
                end = t0 + p["duration"] if p.get("once") else deadline
                while time.monotonic() < end:
                    try:
                        data = t.recv(4096)
                        outcome = ("cut: " + data.split(b"\r\n")[0].decode(errors="replace")
                                   if data else "cut: closed")
                        break
                    except socket.timeout:
                        t.sendall(b"a")
                if outcome is None:
                    outcome = "still open when the attack ended"
                else:
                    with lock:
                        cut_after.append(time.monotonic() - t0)
            except Exception as e:  # noqa: BLE001
                outcome = "cut: " + classify(e)
                with lock:
                    cut_after.append(time.monotonic() - t0)
            finally:
                t.close()
            got.append(outcome)
            if p.get("once"):
                break
        return got

    out = run_threads(p["n"], one)
    cut_after.sort()
    extra = {}
    if cut_after:
        extra = {"cut_after_s": {"min": round(cut_after[0], 1),
                                 "median": round(cut_after[len(cut_after) // 2], 1),
                                 "max": round(cut_after[-1], 1)}}
    return out, extra


def attack_tls_stall(target, p):
    cut_after = []
    lock = threading.Lock()

    def one(i):
        t0 = time.monotonic()
        s = target.tcp(10)
        s.settimeout(p["duration"])  # from its own start: a late connection waits as long
        try:
            data = s.recv(4096)
            outcome = "closed" if not data else "got %d bytes" % len(data)
            with lock:
                cut_after.append(time.monotonic() - t0)
        except Exception as e:  # noqa: BLE001
            outcome = classify(e)
            if outcome == "timeout":
                outcome = "still open when the attack ended"
        s.close()
        return outcome

    out = run_threads(p["n"], one)
    cut_after.sort()
    return out, ({"cut_after_s": {"min": round(cut_after[0], 1),
                                  "max": round(cut_after[-1], 1)}} if cut_after else {})


def attack_headers_many(target, p):
    extra = b"".join(b"X-H%d: v\r\n" % i for i in range(p["count"]))

    def one(target, i):
        with target.tls(10) as t:
            try:
                t.sendall(request_bytes("GET", "/healthz", extra=extra))
            except Exception as e:  # noqa: BLE001 - refused mid-send, then read the answer
                if classify(e) != "closed":
                    raise
            return read_status(t)

    return flood(target, p, one)


def attack_headers_huge(target, p):
    extra = b"X-Huge: " + b"h" * p["size"] + b"\r\n"

    def one(target, i):
        with target.tls(10) as t:
            try:
                t.sendall(request_bytes("GET", "/healthz", extra=extra))
            except Exception as e:  # noqa: BLE001
                if classify(e) != "closed":
                    raise
            try:
                return read_status(t)
            except Exception as e:  # noqa: BLE001
                return classify(e)

    return flood(target, p, one)


def attack_body_10mb(target, p):
    size = p["size"]
    block = b"A" * 65536
    path = "/v1/keys/%s/sign" % target.kid

    def send_body(t, chunked):
        sent = 0
        try:
            while sent < size:
                if chunked:
                    t.sendall(b"%x\r\n%s\r\n" % (len(block), block))
                else:
                    t.sendall(block)
                sent += len(block)
            if chunked:
                t.sendall(b"0\r\n\r\n")
        except Exception as e:  # noqa: BLE001 - the server stopped reading: the answer says why
            if classify(e) not in ("closed", "timeout"):
                raise
        return sent

    turns = collections.Counter()

    def one(target, i):
        kind = turns[i] % 3  # each thread takes the three kinds in turn
        turns[i] += 1
        with target.tls(20) as t:
            if kind == 0:  # Content-Length: 10 MB, and all of it sent
                head = request_bytes("POST", path, secret=target.secret)
                head = head.replace(b"Content-Length: 0", b"Content-Length: %d" % size)
                t.sendall(head)
                send_body(t, False)
                tag = "content-length"
            elif kind == 1:  # chunked: no length announced, the bound must hold anyway
                t.sendall(b"POST %s HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer %s\r\n"
                          b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                          % (path.encode(), target.secret.encode()))
                send_body(t, True)
                tag = "chunked"
            else:  # no credential at all
                t.sendall(b"POST /v1/keys HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                          b"application/json\r\nContent-Length: %d\r\n\r\n" % size)
                send_body(t, False)
                tag = "unauthenticated"
            t.settimeout(20)
            try:
                return "%s: %s" % (tag, read_status(t))
            except Exception as e:  # noqa: BLE001
                return "%s: %s" % (tag, classify(e))

    return flood(target, p, one)


BAD_STRINGS = [
    b'{"sub":"a\x00b"}',                # a raw NUL inside a string
    b'{"sub":"a\\u0000b"}',             # an escaped NUL
    b'{"sub":"\xff\xfe"}',              # bytes that are never UTF-8
    b'{"sub":"\xc0\x80"}',              # overlong NUL
    b'{"sub":"\xed\xa0\x80"}',          # a UTF-16 surrogate encoded as UTF-8
    b'{"sub":"\\ud800"}',               # a lone escaped surrogate
    b'{"sub":"\xf4\x90\x80\x80"}',      # above U+10FFFF
    b'{"sub":"ok","claims":{"k\x00":1}}',  # NUL inside a key
    b'{"sub":"ok"}\x00',                # NUL after the document
    b'\x00{"sub":"ok"}',                # NUL before it
    b'{"sub":"a\xe2\x82"}',             # a truncated sequence
]


def keepalive_burst(target, bodies, path, secret):
    """All bodies as requests on one keep-alive connection, pipelined; their statuses."""
    with target.tls(20) as t:
        t.sendall(b"".join(request_bytes("POST", path, secret=secret, body=b) for b in bodies)
                  + request_bytes("GET", "/healthz", extra=b"Connection: close\r\n"))
        codes, end = read_all_statuses(t)
    if codes[-1:] == ["200"]:
        return codes[:-1]  # the closing GET: every body was answered
    return codes + ["then %s before the last" % end]


def attack_json_bad_strings(target, p):
    return flood(target, p, lambda target, i: keepalive_burst(
        target, BAD_STRINGS, "/v1/tokens", target.secret))


DEEP = [
    b"[" * 60000,
    b'{"a":' * 6000 + b"1" + b"}" * 6000,
    b'{"sub":"x","claims":' + b'{"a":' * 5000 + b"1" + b"}" * 5001,
    b'{"sub":"x","claims":{"a":' + b"[" * 30000 + b"]" * 30000 + b"}}",
]


def attack_json_deep(target, p):
    return flood(target, p, lambda target, i: keepalive_burst(
        target, DEEP, "/v1/tokens", target.secret))


def attack_pipelined_garbage(target, p):
    def one(target, i):
        if i % 2 == 1:  # random bytes where the ClientHello should be
            with target.tcp(10) as s:
                s.sendall(random.randbytes(4096))
                try:
                    data = s.recv(4096)
                    return "no TLS: " + ("closed" if not data else "alert, closed")
                except Exception as e:  # noqa: BLE001
                    return "no TLS: " + classify(e)
        with target.tls(20) as t:
            t.sendall(request_bytes("GET", "/healthz") * p["pipelined"]
                      + b"\x00\x01GARBAGE " + random.randbytes(512) + b"\r\n\r\n")
            codes, end = read_all_statuses(t)
        ok = codes.count("200")
        rest = [c for c in codes if c != "200"]
        return "%d x 200, then %s, %s" % (ok, "/".join(rest) or "nothing", end)

    return flood(target, p, one)


def attack_public_signing(target, p):
    """What made the token sign per request before issue 22: status lists cycled past the
    cache, the feed and the revocation list after every seq. The extra figure is how many
    distinct signed copies (ETags of the feed and the lists) the attacker was served: the
    signatures its requests caused, at most the budget (publication_signs_per_second)."""
    seen, lock = set(), threading.Lock()

    def one(target, i):
        paths = []
        for k in range(p["pipelined"]):
            n = random.randrange(0, 80)
            paths.append(("/v1/status-lists/%d" % (n % 8), "/v1/revocations/feed?after=%d" % n,
                          "/v1/revocations?after=%d" % n)[k % 3])
        with target.tls(20) as t:
            t.sendall(b"".join(request_bytes("GET", path) for path in paths)
                      + request_bytes("GET", "/healthz", extra=b"Connection: close\r\n"))
            buf = b""
            try:
                while True:
                    chunk = t.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            except Exception:  # noqa: BLE001 - what was read is what counts
                pass
        heads = re.findall(rb"HTTP/1\.1 (\d{3}) [^\r]*\r\n((?:[^\r]+\r\n)*)\r\n", buf)
        codes = []
        for status, head in heads:
            m = re.search(rb"(?i)^content-type: application/(kid-revocation|statuslist)\+jwt\r?$",
                          head, re.M)
            tag = re.search(rb"(?i)^etag: (\S+)\r?$", head, re.M)
            if m and tag:
                with lock:
                    seen.add(tag.group(1))
            codes.append(status.decode())
        return codes[:-1] if codes[-1:] == ["200"] else codes + ["cut short"]

    out = flood(target, p, one)
    return out, {"signed copies served": len(seen)}


ATTACKS = {
    "baseline": attack_baseline,
    "keepalive": attack_keepalive,
    "slowloris": attack_slowloris,
    "tls_stall": attack_tls_stall,
    "headers_many": attack_headers_many,
    "headers_huge": attack_headers_huge,
    "body_10mb": attack_body_10mb,
    "json_bad_strings": attack_json_bad_strings,
    "json_deep": attack_json_deep,
    "pipelined_garbage": attack_pipelined_garbage,
    "public_signing": attack_public_signing,
}


def attacker_main():
    """`hostile.py attack`: parameters on stdin (JSON), the outcome on stdout (JSON)."""
    p = json.load(sys.stdin)
    r = ATTACKS[p["case"]](Target(p), p)
    out, extra = r if isinstance(r, tuple) else (r, {})
    json.dump({"outcomes": dict(out), **extra}, sys.stdout)
    return 0


# ---- the well-behaved clients and the measurements ------------------------------------------

def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """Samples the RSS of each pid every 100 ms; keeps the peak."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = {name: rss_kb(pid) for name, pid in pids.items()}
        self.stop_flag = threading.Event()

    def run(self):
        while not self.stop_flag.wait(0.1):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss_kb(pid))


class WellBehaved(threading.Thread):
    """A client that does one kind of request in a loop and records each latency (ms)."""

    def __init__(self, a, kind):
        super().__init__(daemon=True)
        self.a, self.kind = a, kind
        self.lat, self.errors = [], collections.Counter()
        self.stop_flag = threading.Event()

    def run(self):
        import requests
        s = requests.Session()
        url = self.a.url
        ca = self.a.cacert
        sign = {"Authorization": "Bearer " + self.a.signer}
        path = "/v1/keys/%s/sign" % self.a.hostile_kid
        while not self.stop_flag.is_set():
            t0 = time.perf_counter()
            try:
                if self.kind == "sign":
                    r = s.post(url + path, json={"payload": "aGVsbG8"}, headers=sign,
                               verify=ca, timeout=60)
                else:
                    with requests.get(url + "/healthz", verify=ca, timeout=60,
                                      headers={"Connection": "close"}) as r:
                        pass
                ok = r.status_code == 200
                if not ok:
                    self.errors[str(r.status_code)] += 1
            except Exception as e:  # noqa: BLE001
                ok = False
                self.errors[type(e).__name__] += 1
                s = requests.Session()
            dt = (time.perf_counter() - t0) * 1000
            if ok:
                self.lat.append(dt)
            if self.kind == "fresh":
                self.stop_flag.wait(0.1)


def percentiles(lat):
    if not lat:
        return None
    s = sorted(lat)

    def q(x):
        return s[min(len(s) - 1, int(round(x * (len(s) - 1))))]

    return {"n": len(s), "p50": q(0.50), "p99": q(0.99), "max": s[-1]}


def fmt_lat(p):
    return "-" if p is None else "%.1f / %.1f / %.0f" % (p["p50"], p["p99"], p["max"])


def tolerance_kb(before):
    return max(RSS_TOLERANCE_KB, int(before * RSS_TOLERANCE_FRACTION))


def setup(a):
    """A key, the well-behaved client's signer and the attacker's own signer; a revoked key
    and a revoked token, so that the feed and status list 0 have something to sign."""
    a.hostile_kid = a.create_key(label="hostile-target")["kid"]
    a.attacker_secret = a.create_credential("signer", kids="all", label="attacker")["secret"]
    assert a.delete("/v1/keys/" + a.create_key(label="revoked")["kid"]).status_code == 200
    r = a.post("/v1/tokens", {"kid": a.hostile_kid, "sub": "hostile", "revocable": True})
    assert r.status_code == 200, r.text
    assert a.delete("/v1/tokens/" + r.json()["jti"]).status_code == 200


def warm_up(a, n):
    """Has every worker thread serve a TLS request and a signature (n concurrent
    connections), so that RSS before the first case already counts each thread's first-use
    pages and the keeper's session for it (about 130 KiB each in the keeper)."""
    p = {"case": "keepalive", "n": n, "hold": 1, "port": a.port, "cacert": a.cacert,
         "secret": a.attacker_secret, "kid": a.hostile_kid, "sign": True}
    run_attacker(p, 300)


def run_attacker(p, timeout):
    # At nice 19: on this 2-core machine the attacker's own CPU (Python building and
    # encrypting its requests) would otherwise be taken from the appliance and the
    # well-behaved clients, which a remote attacker's is not.
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "attack"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.nice(19))
    out, _ = proc.communicate(json.dumps(p), timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError("the attacker failed (exit %d)" % proc.returncode)
    return json.loads(out)


def ready(a):
    import requests
    try:
        return requests.get(a.url + "/readyz", verify=a.cacert, timeout=30).status_code
    except Exception as e:  # noqa: BLE001
        return type(e).__name__


def pkcs11_sessions(a):
    """The keeper's PKCS#11 sessions in use (one per front thread that has signed), from
    /metrics; None when the appliance has no such metric."""
    import requests
    try:
        r = requests.get(a.url + "/metrics", verify=a.cacert, timeout=30,
                         headers={"Authorization": "Bearer " + a.admin})
        m = re.search(r"^signd_pkcs11_sessions_in_use (\d+)$", r.text, re.M)
        return int(m.group(1)) if m else None
    except Exception:  # noqa: BLE001
        return None


def run_case(a, case, params, baseline_s=1.0, settle_s=SETTLE_S):
    """Runs one case; returns its row (a dict). baseline_s: the pause before RSS is taken,
    and the time the well-behaved clients run alone before the attack starts; settle_s:
    how long RSS may take to come back."""
    pids = a.children()
    if not pids:
        pids = {"single": a.proc.pid}
    time.sleep(baseline_s)
    before = {n: rss_kb(p) for n, p in pids.items()}
    sessions_before = pkcs11_sessions(a)
    sampler = Sampler(pids)
    clients = [WellBehaved(a, "sign"), WellBehaved(a, "fresh")]
    sampler.start()
    for c in clients:
        c.start()
    time.sleep(baseline_s)  # the clients' own baseline comes first
    p = {"case": case, **params, "port": a.port, "cacert": a.cacert,
         "secret": a.attacker_secret, "kid": a.hostile_kid}
    t0 = time.monotonic()
    result = run_attacker(p, 600)
    attack_s = time.monotonic() - t0
    for c in clients:
        c.stop_flag.set()
    for c in clients:
        c.join(90)
    # RSS back: poll until within tolerance or SETTLE_S passed.
    deadline = time.monotonic() + settle_s
    while True:
        after = {n: rss_kb(p) for n, p in pids.items()}
        back = all(after[n] <= before[n] + tolerance_kb(before[n]) for n in pids)
        if back or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    sampler.stop_flag.set()
    sampler.join()
    now = a.children() if "single" not in pids else {"single": a.proc.pid}
    alive = now == pids and all(rss_kb(p) > 0 for p in pids.values())
    return {
        "case": case,
        "what": DESCRIPTIONS[case].format(**params),
        "outcomes": result["outcomes"],
        "extra": {k: v for k, v in result.items() if k != "outcomes"},
        "attack_s": attack_s,
        "sign": percentiles(clients[0].lat),
        "sign_errors": dict(clients[0].errors),
        "fresh": percentiles(clients[1].lat),
        "fresh_errors": dict(clients[1].errors),
        "rss_before": before,
        "rss_peak": dict(sampler.peak),
        "rss_after": after,
        "rss_back": back,
        "sessions": (sessions_before, pkcs11_sessions(a)),
        "alive": alive,
        "readyz": ready(a),
    }


def fmt_outcomes(o):
    return ", ".join("%s x%d" % (k, v) for k, v in sorted(o.items(), key=lambda kv: -kv[1]))


def fmt_rss(row):
    s = row.get("sessions", (None, None))
    text = "; ".join("%s %.1f / %.1f / %.1f" % (n, row["rss_before"][n] / 1024,
                                                row["rss_peak"][n] / 1024,
                                                row["rss_after"][n] / 1024)
                     for n in row["rss_before"])
    if s[0] is not None and s[1] is not None:
        text += " (keeper's PKCS#11 sessions %d -> %d)" % s
    return text


def print_table(rows):
    print("| case | what the attacker got | sign keep-alive p50 / p99 / max ms | "
          "fresh-connection /healthz p50 / p99 / max ms | RSS MiB before / peak / after | "
          "alive, /readyz, RSS back |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        got = fmt_outcomes(r["outcomes"])
        if r["extra"]:
            got += " " + json.dumps(r["extra"])
        errs = ""
        if r["sign_errors"] or r["fresh_errors"]:
            errs = " (client errors: %s)" % json.dumps({**r["sign_errors"], **r["fresh_errors"]})
        print("| %s: %s | %s | %s | %s%s | %s | %s, %s, %s |" % (
            r["case"], r["what"], got, fmt_lat(r["sign"]), fmt_lat(r["fresh"]), errs,
            fmt_rss(r), "yes" if r["alive"] else "NO", r["readyz"],
            "yes" if r["rss_back"] else "NO"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", choices=sorted(SCALES), default="full")
    ap.add_argument("--cases", default=",".join(ATTACKS))
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every case this many times (RSS: does it come back to a plateau?)")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    from conftest import Appliance
    scale = SCALES[args.scale]
    cases = args.cases.split(",")
    d = tempfile.mkdtemp(prefix="signd-hostile-")
    a = Appliance(d, scale["conf"]).start()
    rows = []
    try:
        setup(a)
        pids = a.children()
        cold = {n: rss_kb(p) for n, p in pids.items()}
        threads = int(a.conf_value("worker_threads")) + int(a.conf_value("events_max_subscribers"))
        warm_up(a, threads + 16)
        warm = {n: rss_kb(p) for n, p in pids.items()}
        print("appliance: %s threads (worker_threads + events_max_subscribers), request_timeout_"
              "ms %s, keep_alive_timeout_ms %s; RSS MiB cold -> after warm-up: %s" % (
                  threads, a.conf_value("request_timeout_ms"), a.conf_value("keep_alive_timeout_ms"),
                  ", ".join("%s %.1f -> %.1f" % (n, cold[n] / 1024, warm[n] / 1024) for n in cold)),
              flush=True)
        for rnd in range(1, args.rounds + 1):
            for case in cases:
                row = run_case(a, case, scale[case])
                if args.rounds > 1:
                    row["case"] = "%s (round %d)" % (case, rnd)
                rows.append(row)
                print("%-18s done in %4.0f s: %s | sign %s | fresh %s | %s" % (
                    case, row["attack_s"], fmt_outcomes(row["outcomes"])[:200], fmt_lat(row["sign"]),
                    fmt_lat(row["fresh"]), fmt_rss(row)), flush=True)
        end = {n: rss_kb(p) for n, p in pids.items()}
        print("RSS MiB after warm-up -> after the last case: %s" % ", ".join(
            "%s %.1f -> %.1f" % (n, warm[n] / 1024, end[n] / 1024) for n in warm))
        print()
        print_table(rows)
    finally:
        a.stop()
        shutil.rmtree(d, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    bad = [r["case"] for r in rows if not (r["alive"] and r["readyz"] == 200 and r["rss_back"])]
    if bad:
        print("FAILED: %s" % ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "attack":
        sys.exit(attacker_main())
    sys.exit(main())
