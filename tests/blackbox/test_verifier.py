"""The reference verifier (build/bin/signd-verify) against a real appliance over HTTPS.

Tokens are minted by the appliance and then forged here (payload changed, alg none, HS256
keyed with the public key, made-up kids). The publication key is fetched once from
/v1/revocations/key and pinned in a file, as an operator would. A tiny HTTPS proxy that
rewrites the signed feed stands for a cache or a man in the middle. Every process a test
starts is stopped by its PID.
"""
import base64
import hashlib
import hmac
import http.server
import json
import os
import queue
import re
import secrets
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import free_port
from procs import stop_process

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("SIGND_BUILD", "build")
VERIFY = os.path.join(TOP, BUILD, "bin", "signd-verify")
STATS = re.compile(r"^stats jwks_fetches=(\d+) feed_fetches=(\d+) stream=(up|down) seq=(\d+)")


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def unused_port():
    return free_port()


def pin_publication_key(a, directory):
    """Writes the appliance's publication key (PEM) to a file, as an operator pins it."""
    r = a.get("/v1/revocations/key", auth=False)
    assert r.status_code == 200, r.text
    path = os.path.join(directory, "publication.pem")
    with open(path, "w") as f:
        f.write(r.json()["pem"])
    return path


def mint(a, kid, **body):
    r = a.post("/v1/tokens", {"kid": kid, "sub": "video-1", **body})
    assert r.status_code == 200, r.text
    return r.json()["token"]


def parts(token):
    h, p, s = token.split(".")
    return json.loads(unb64u(h)), json.loads(unb64u(p)), s


def forge(token, header=None, payload=None, sig=None):
    """The token with its header or payload replaced (JSON objects), signature kept unless
    given."""
    h, p, s = token.split(".")
    if header is not None:
        h = b64u(json.dumps(header).encode())
    if payload is not None:
        p = b64u(json.dumps(payload).encode())
    return "%s.%s.%s" % (h, p, s if sig is None else sig)


def run_once(a, keyfile, *tokens, extra=(), url=None, cacert=None):
    """signd-verify with tokens on the command line: (returncode, stdout lines, stderr)."""
    cmd = [VERIFY, "--url", url or a.url, "--cacert", cacert or a.cacert, "--feed-key", keyfile,
           *extra, *tokens]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout.splitlines(), p.stderr


class Verifier:
    """signd-verify in stdin mode: one token a line in, one answer a line out."""

    def __init__(self, a, keyfile, *extra, url=None):
        self.proc = subprocess.Popen(
            [VERIFY, "--url", url or a.url, "--cacert", a.cacert, "--feed-key", keyfile, *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            bufsize=1)
        self.lines = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def ask(self, line, timeout=30):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        try:
            answer = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("signd-verify did not answer within %ss" % timeout)
        if answer is None:
            self.proc.wait(timeout=10)
            raise AssertionError("signd-verify exited %s: %s"
                                 % (self.proc.returncode, self.proc.stderr.read()))
        return answer

    def stats(self):
        line = self.ask("#stats")
        m = STATS.match(line)
        assert m, line
        fields = dict(kv.split("=", 1) for kv in line.split()[1:])
        return {k: (v if k == "stream" else int(v)) for k, v in fields.items()}

    def wait_for(self, token, want, timeout):
        """Asks about token until the answer starts with want; returns (answer, seconds)."""
        t0 = time.monotonic()
        while True:
            answer = self.ask(token)
            if answer.split(" ", 1)[0] == want or time.monotonic() - t0 > timeout:
                return answer, time.monotonic() - t0
            time.sleep(0.02)

    def close(self):
        """EOF on stdin ends it (exit 0); stopped by PID if it does not go."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            rc = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _, rc = stop_process(self.proc, 15, 5)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            stop_process(self.proc, 15, 10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


@pytest.fixture(scope="module")
def pinned(appliance, tmp_path_factory):
    return pin_publication_key(appliance, str(tmp_path_factory.mktemp("pin")))


# ---- verification ----------------------------------------------------------------------------

def test_appliance_minted_tokens_verify_ok_with_their_claims(appliance, pinned):
    kid = appliance.create_key(label="verifier")["kid"]
    t1 = mint(appliance, kid, claims={"downloadable": True, "accessRules": [{"ip": "10/8"}]})
    t2 = mint(appliance, kid, ttl=60)
    rc, out, err = run_once(appliance, pinned, t1, t2)
    assert rc == 0, err
    assert len(out) == 2
    for line, token in zip(out, (t1, t2)):
        word, _, claims = line.partition(" ")
        assert word == "ok"
        assert json.loads(claims) == parts(token)[1]
    assert json.loads(out[0].split(" ", 1)[1])["downloadable"] is True


def test_token_naming_a_kid_not_in_the_jwks_is_unknown_kid(appliance, pinned):
    kid = appliance.create_key()["kid"]
    token = mint(appliance, kid)
    h, _, _ = parts(token)
    other = forge(token, header={**h, "kid": secrets.token_hex(16)})
    rc, out, err = run_once(appliance, pinned, token, other)
    assert out == [out[0], "unknown_kid"] and out[0].startswith("ok "), err
    assert rc == 1


def test_changed_payload_is_bad_signature(appliance, pinned):
    kid = appliance.create_key()["kid"]
    token = mint(appliance, kid)
    _, p, _ = parts(token)
    rc, out, _ = run_once(appliance, pinned, forge(token, payload={**p, "sub": "video-2"}))
    assert (rc, out) == (1, ["bad_signature"])


def test_alg_none_and_hs256_keyed_with_the_public_key_are_alg_not_allowed(appliance, pinned):
    key = appliance.create_key()
    token = mint(appliance, key["kid"])
    h, p, _ = parts(token)
    none = forge(token, header={**h, "alg": "none"}, sig="")
    # The classic confusion: HMAC keyed with the RSA public key a verifier has anyway.
    hs_h = b64u(json.dumps({**h, "alg": "HS256"}).encode())
    hs_p = token.split(".")[1]
    outs = []
    for secret in (key["pem"].encode(), json.dumps(key["jwk"]).encode()):
        mac = hmac.new(secret, ("%s.%s" % (hs_h, hs_p)).encode(), hashlib.sha256).digest()
        outs.append("%s.%s.%s" % (hs_h, hs_p, b64u(mac)))
    rc, out, _ = run_once(appliance, pinned, none, *outs)
    assert (rc, out) == (1, ["alg_not_allowed"] * 3)


def test_expired_and_not_yet_valid_tokens_answer_their_reasons_at_the_given_now(appliance,
                                                                               pinned):
    kid = appliance.create_key()["kid"]
    nbf = int(time.time()) + 300
    token = mint(appliance, kid, ttl=900, nbf=nbf)
    _, p, _ = parts(token)
    assert run_once(appliance, pinned, token)[1] == ["not_yet_valid"]
    assert run_once(appliance, pinned, token, extra=["--now", str(nbf - 5)])[1] == \
        ["not_yet_valid"]
    assert run_once(appliance, pinned, token,
                    extra=["--now", str(nbf - 5), "--leeway", "10"])[1][0].startswith("ok ")
    assert run_once(appliance, pinned, token, extra=["--now", str(nbf)])[1][0].startswith("ok ")
    assert run_once(appliance, pinned, token, extra=["--now", str(p["exp"])])[1] == ["expired"]
    assert run_once(appliance, pinned, token,
                    extra=["--now", str(p["exp"]), "--leeway", "30"])[1][0].startswith("ok ")
    assert run_once(appliance, pinned, token, extra=["--now", str(p["exp"] + 3600)])[1] == \
        ["expired"]


def test_malformed_lines_are_answered_one_line_each(appliance, pinned):
    kid = appliance.create_key()["kid"]
    token = mint(appliance, kid)
    with Verifier(appliance, pinned) as v:
        assert v.ask("") == "malformed"
        assert v.ask("not a token") == "malformed"
        assert v.ask(token + ".x") == "malformed"
        assert v.ask("x" * 20000) == "malformed"
        assert v.ask(token).startswith("ok ")
        assert v.close() == 0


# ---- revocation and the JWKS -----------------------------------------------------------------

def test_revoked_kid_reaches_a_subscribed_verifier_within_two_seconds(appliance, pinned):
    kid = appliance.create_key(label="to-revoke")["kid"]
    token = mint(appliance, kid)
    with Verifier(appliance, pinned) as v:
        assert v.ask(token).startswith("ok ")
        deadline = time.monotonic() + 10
        while v.stats()["stream"] != "up" and time.monotonic() < deadline:
            time.sleep(0.05)
        before = v.stats()
        assert before["stream"] == "up"
        r = appliance.delete("/v1/keys/" + kid, {"reason": "compromised"})
        assert r.status_code == 200, r.text
        answer, took = v.wait_for(token, "revoked_kid", timeout=2)
        assert answer == "revoked_kid", "still %r after %.2fs" % (answer, took)
        after = v.stats()
        assert after["seq"] > before["seq"]
        # It learnt it from the signed feed, which it fetched when the stream said so.
        assert after["feed_fetches"] > before["feed_fetches"]
        assert v.close() == 0


def test_key_created_after_start_is_found_through_one_jwks_refetch(appliance, pinned):
    with Verifier(appliance, pinned) as v:
        assert v.stats()["jwks_fetches"] == 1
        kid = appliance.create_key(label="late")["kid"]
        token = mint(appliance, kid)
        assert v.ask(token).startswith("ok ")
        assert v.stats()["jwks_fetches"] == 2
        assert v.ask(token).startswith("ok ")  # known now: no further fetch
        assert v.stats()["jwks_fetches"] == 2
        assert v.close() == 0


def test_fifty_bogus_kids_cost_at_most_one_jwks_fetch_within_the_cooldown(appliance, pinned):
    kid = appliance.create_key()["kid"]
    token = mint(appliance, kid)
    h, _, _ = parts(token)
    with Verifier(appliance, pinned, "--cooldown", "60") as v:
        before = v.stats()["jwks_fetches"]
        for _ in range(50):
            bogus = forge(token, header={**h, "kid": secrets.token_hex(16)})
            assert v.ask(bogus) == "unknown_kid"
        assert v.stats()["jwks_fetches"] - before <= 1
        assert v.ask(token).startswith("ok ")
        assert v.close() == 0


def test_stream_down_and_feed_older_than_max_feed_age_fails_closed_then_recovers(make_appliance,
                                                                                tmp_path):
    a = make_appliance()
    keyfile = pin_publication_key(a, str(tmp_path))
    kid = a.create_key()["kid"]
    token = mint(a, kid)
    with Verifier(a, keyfile, "--max-feed-age", "3") as v:
        assert v.ask(token).startswith("ok ")
        a.stop()
        answer, took = v.wait_for(token, "feed_stale", timeout=20)
        assert answer == "feed_stale", answer
        assert v.stats()["stream"] == "down"
        # Back up: the verifier reconnects, fetches a fresh feed, and answers again.
        a.start()
        answer, took = v.wait_for(token, "ok", timeout=60)
        assert answer.startswith("ok "), answer
        assert v.close() == 0


# ---- told of a revocation it cannot fetch -----------------------------------------------------

BEHIND_GRACE = 2


class StoppedKeeper:
    """SIGSTOPs the appliance's keeper ("signd: keeper"), so that nothing can be signed,
    and SIGCONTs it on exit whatever happened."""

    def __init__(self, a):
        self.pid = a.children()["keeper"]

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass  # a supervisor that restarts a stuck keeper replaced it: as good


def in_background(fn, *args):
    """Runs fn(*args) in a thread (a request the stopped keeper holds up); join() returns
    its result."""
    box = {}

    def run():
        box["result"] = fn(*args)

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join(timeout=90):
        t.join(timeout)
        assert not t.is_alive(), "the request did not end"
        return box["result"]

    return join


def wait_stream_up(v):
    deadline = time.monotonic() + 10
    while v.stats()["stream"] != "up":
        assert time.monotonic() < deadline, "the event stream did not come up"
        time.sleep(0.05)


def test_verifier_fails_closed_when_told_of_a_newer_seq_it_cannot_fetch(make_appliance, tmp_path):
    """Issue 22 (1): the stream announces a revocation, the signed feed cannot be had (the
    keeper is stopped: the appliance cannot sign it). The verifier must not go on answering
    ok for the revoked kid until the old feed's exp: feed_stale once --behind-grace has
    passed, revoked_kid once the keeper answers again."""
    a = make_appliance()
    keyfile = pin_publication_key(a, str(tmp_path))
    kid = a.create_key()["kid"]
    token = mint(a, kid)
    with Verifier(a, keyfile, "--behind-grace", str(BEHIND_GRACE)) as v:
        assert v.ask(token).startswith("ok ")
        wait_stream_up(v)
        seq = v.stats()["seq"]
        with StoppedKeeper(a):
            # The revocation commits and is announced; destroying the key waits for the
            # keeper, so the DELETE answers only after SIGCONT.
            t0 = time.monotonic()
            deleted = in_background(a.delete, "/v1/keys/" + kid, {"reason": "compromised"})
            answer, _ = v.wait_for(token, "feed_stale", timeout=BEHIND_GRACE + 10)
            took = time.monotonic() - t0
            assert answer == "feed_stale", answer
            # Within the bound (plus the time the event takes to arrive), never at the old
            # feed's exp (900 s away).
            assert took < BEHIND_GRACE + 3, took
            st = v.stats()
            assert st["seq"] == seq and st["announced_seq"] == seq + 1 and st["behind"] == 1
        answer, took = v.wait_for(token, "revoked_kid", timeout=60)
        assert answer == "revoked_kid", "still %r %.1fs after SIGCONT" % (answer, took)
        assert v.stats()["behind"] == 0
        assert deleted().status_code == 200
        assert v.close() == 0


def test_verifier_fails_closed_when_told_of_a_token_revocation_it_cannot_fetch(make_appliance,
                                                                               tmp_path):
    """The status-list twin: a token-revocation event names a list the verifier holds; the
    list cannot be signed again. feed_stale for that list's tokens past --behind-grace,
    revoked_token once the keeper answers."""
    a = make_appliance()
    keyfile = pin_publication_key(a, str(tmp_path))
    kid = a.create_key()["kid"]
    r = a.post("/v1/tokens", {"kid": kid, "sub": "video-1", "revocable": True})
    assert r.status_code == 200, r.text
    body = r.json()
    token = body["token"]
    with Verifier(a, keyfile, "--behind-grace", str(BEHIND_GRACE)) as v:
        assert v.ask(token).startswith("ok ")  # the list is fetched and kept
        wait_stream_up(v)
        with StoppedKeeper(a):
            t0 = time.monotonic()
            r = a.delete("/v1/tokens/" + body["jti"])  # SQLite only: answers at once
            assert r.status_code == 200, r.text
            answer, _ = v.wait_for(token, "feed_stale", timeout=BEHIND_GRACE + 10)
            took = time.monotonic() - t0
            assert answer == "feed_stale", answer
            assert took < BEHIND_GRACE + 3, took
            assert v.stats()["behind"] == 1
        answer, took = v.wait_for(token, "revoked_token", timeout=60)
        assert answer == "revoked_token", "still %r %.1fs after SIGCONT" % (answer, took)
        assert v.close() == 0


# ---- a feed that does not check out --------------------------------------------------------

class FeedProxy:
    """An HTTPS proxy in front of the appliance (same certificate) that passes everything
    but rewrites the signed feed: it drops the first revoked entry and keeps the signature,
    as a censoring cache would. The event stream is refused (503), so the verifier polls."""

    def __init__(self, a):
        self.a = a
        self.tamper = True
        self.feeds_served = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.startswith("/v1/revocations/events"):
                    body = b'{"error":{"code":"too_many_subscribers","message":"proxy"}}'
                    self._send(503, "application/json", body)
                    return
                r = requests.get(proxy.a.url + self.path, verify=proxy.a.cacert, timeout=30)
                body = r.content
                if self.path.startswith("/v1/revocations/feed") and r.status_code == 200:
                    proxy.feeds_served += 1
                    if proxy.tamper:
                        h, p, s = r.text.split(".")
                        payload = json.loads(unb64u(p))
                        payload["revoked"] = payload["revoked"][1:]
                        body = ("%s.%s.%s" % (h, b64u(json.dumps(payload).encode()), s)).encode()
                self._send(r.status_code, r.headers.get("Content-Type", ""), body)

            def _send(self, status, ctype, body):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(a.dir, "tls", "cert.pem"),
                            os.path.join(a.dir, "tls", "key.pem"))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = "https://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_tampered_feed_is_refused_at_start(appliance, pinned):
    victim = appliance.create_key()["kid"]
    token = mint(appliance, victim)
    assert appliance.delete("/v1/keys/" + victim, {"reason": "test"}).status_code == 200
    proxy = FeedProxy(appliance)
    try:
        rc, out, err = run_once(appliance, pinned, token, url=proxy.url)
        assert rc == 2 and out == [], (out, err)
        assert err.startswith("signd-verify: ") and "bad_signature" in err, err
        assert proxy.feeds_served >= 1
        # Through the same proxy, honest, the kid is revoked.
        proxy.tamper = False
        rc, out, err = run_once(appliance, pinned, token, url=proxy.url)
        assert (rc, out) == (1, ["revoked_kid"]), err
    finally:
        proxy.close()


def test_tampered_feeds_after_start_are_refused_and_the_verifier_goes_stale(make_appliance,
                                                                          tmp_path):
    # revocations_max_age 0: the appliance re-signs its feed every 10 s, so an honest feed
    # stays well inside --max-feed-age 20 while the stream is down (the proxy refuses it).
    a = make_appliance({"revocations_max_age": 0})
    keyfile = pin_publication_key(a, str(tmp_path))
    kid = a.create_key()["kid"]
    token = mint(a, kid)
    proxy = FeedProxy(a)
    proxy.tamper = False
    try:
        with Verifier(a, keyfile, "--max-feed-age", "20", url=proxy.url) as v:
            assert v.ask(token).startswith("ok ")
            before = v.stats()
            assert before["stream"] == "down" and before["feeds_refused"] == 0
            proxy.tamper = True
            r = a.delete("/v1/keys/" + kid, {"reason": "hidden by the proxy"})
            assert r.status_code == 200
            # Every later feed has that revocation cut out: refused, never believed, and with
            # no good feed for longer than --max-feed-age the verifier fails closed.
            answer, _ = v.wait_for(token, "feed_stale", timeout=60)
            assert answer == "feed_stale", answer
            after = v.stats()
            assert after["feeds_refused"] >= 1 and after["seq"] == before["seq"]
            assert v.close() == 0
    finally:
        proxy.close()


# ---- setup errors ----------------------------------------------------------------------------

def test_setup_errors_exit_2_with_one_line_on_stderr(appliance, pinned, tmp_path):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    wrong = tmp_path / "stranger.pem"
    wrong.write_bytes(stranger.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo))
    cases = [
        (dict(keyfile=str(tmp_path / "missing.pem")), "missing.pem"),
        (dict(keyfile=str(wrong)), "bad_signature"),
        (dict(keyfile=pinned, url="https://127.0.0.1:%d" % unused_port()), "unreachable"),
        (dict(keyfile=pinned, url=appliance.url.replace("https", "http")), "https"),
        (dict(keyfile=pinned, cacert="/etc/ssl/certs/ca-certificates.crt"), "TLS"),
    ]
    for kw, needle in cases:
        keyfile = kw.pop("keyfile")
        rc, out, err = run_once(appliance, keyfile, "x.y.z", **kw)
        assert rc == 2 and out == [], (kw, out, err)
        assert err.startswith("signd-verify: ") and err.count("\n") == 1, err
        assert needle in err, err
    p = subprocess.run([VERIFY, "--cacert", appliance.cacert], capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and "--url" in p.stderr
