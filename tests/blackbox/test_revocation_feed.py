"""The signed revocation feed, the publication key, and the revocation event stream.

Black-box over HTTPS against a real token. Feed signatures are checked with python3-cryptography
against the key from /v1/revocations/key, never with the appliance's own code.
"""
import base64
import json
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from procs import wait_for

PUB_KID = "signd-publication-v1"


def unb64u(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def publication_key(a):
    r = a.get("/v1/revocations/key", auth=False)
    assert r.status_code == 200, r.text
    return r.json()


def open_feed(a, query="", key=None):
    """Fetches the feed, checks its signature with the published key, returns
    (header, payload, response)."""
    r = a.get("/v1/revocations/feed" + query, auth=False)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/kid-revocation+jwt"
    h, p, s = r.text.split(".")
    pem = (key or publication_key(a))["pem"].encode()
    pub = serialization.load_pem_public_key(pem)
    pub.verify(unb64u(s), (h + "." + p).encode(), padding.PKCS1v15(), hashes.SHA256())
    return json.loads(unb64u(h)), json.loads(unb64u(p)), r


def revoke(a, kid, reason="test"):
    r = a.delete("/v1/keys/" + kid, {"reason": reason})
    assert r.status_code == 200, r.text
    return r.json()


class Stream:
    """One event-stream subscriber on its own TLS socket (so that close() returns at once):
    a thread reads the chunked body and parses the events into lists."""

    def __init__(self, a, last_event_id=None):
        ctx = ssl.create_default_context(cafile=a.cacert)
        raw = socket.create_connection(("127.0.0.1", a.port), timeout=30)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        extra = "Last-Event-ID: %s\r\n" % last_event_id if last_event_id is not None else ""
        self.sock.sendall(("GET /v1/revocations/events HTTP/1.1\r\nHost: localhost\r\n"
                           "Accept: text/event-stream\r\n%s\r\n" % extra).encode())
        self.f = self.sock.makefile("rb")
        self.status = int(self.f.readline().split()[1])
        self.headers = {}
        while True:
            line = self.f.readline().decode().rstrip("\r\n")
            if not line:
                break
            k, _, v = line.partition(":")
            self.headers[k.strip()] = v.strip()
        self.events = []
        self.comments = []
        self.ended = False
        self.cv = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _body_lines(self):
        """The stream's lines, across chunk boundaries."""
        buf = b""
        while True:
            size = int(self.f.readline().strip() or b"0", 16)
            if size == 0:
                return
            buf += self.f.read(size)
            self.f.readline()
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield line.decode()

    def _read(self):
        if self.status != 200:
            return
        ev = {}
        try:
            for line in self._body_lines():
                with self.cv:
                    if line == "":
                        if ev:
                            self.events.append(ev)
                        ev = {}
                    elif line.startswith(":"):
                        self.comments.append(line)
                    else:
                        k, _, v = line.partition(":")
                        ev[k] = v[1:] if v.startswith(" ") else v
                    self.cv.notify_all()
        except (OSError, ValueError):
            pass
        with self.cv:
            self.ended = True
            self.cv.notify_all()

    def wait(self, pred, timeout=10):
        with self.cv:
            assert self.cv.wait_for(lambda: pred(self), timeout), (self.events, self.comments)

    def revocations(self):
        return [e for e in self.events if e.get("event") == "revocation"]

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def test_feed_is_a_jws_signed_by_the_publication_key_with_the_documented_claims(make_appliance):
    a = make_appliance({"revocation_feed_lifetime": 600, "revocations_max_age": 30,
                        "token_issuer": "https://signd.example"})
    key = publication_key(a)
    assert key["kid"] == PUB_KID and key["alg"] == "RS256" and key["jwk"]["use"] == "kid-revocation"
    k = a.create_key()
    revoke(a, k["kid"], "compromised")
    header, payload, r = open_feed(a, key=key)
    assert header == {"alg": "RS256", "kid": PUB_KID, "typ": "kid-revocation+jwt"}
    assert set(payload) == {"iss", "seq", "after", "iat", "exp", "ttl", "revoked",
                            "subjects"}
    assert payload["iss"] == "https://signd.example"
    assert payload["seq"] == 1 and payload["after"] == 0
    assert payload["exp"] - payload["iat"] == 600 and payload["ttl"] == 30
    assert abs(payload["iat"] - time.time()) < 60
    assert payload["revoked"] == [{"seq": 1, "kid": k["kid"], "revoked_at": payload["revoked"][0]
                                   ["revoked_at"], "reason": "compromised"}]
    assert r.headers["Cache-Control"] == "public, max-age=30"


def test_publication_key_is_served_only_at_its_own_route_and_is_no_client_kid(make_appliance):
    a = make_appliance()
    k = a.create_key()
    jwks = a.get("/.well-known/jwks.json", auth=False)
    # Only the client key: the publication key is not in the JWKS under any kid or use.
    assert [(j["kid"], j["use"]) for j in jwks.json()["keys"]] == [(k["kid"], "sig")]
    assert PUB_KID not in jwks.text and publication_key(a)["jwk"]["n"] not in jwks.text
    # Not a client key: not listed, not signable, not revocable through the key routes.
    assert PUB_KID not in [x["kid"] for x in a.get("/v1/keys").json()["keys"]]
    assert a.delete("/v1/keys/" + PUB_KID).status_code == 400
    assert a.post("/v1/tokens", {"kid": PUB_KID, "sub": "x"}).status_code == 400


NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")


def node_jose_verdict(jwks_path, token):
    """node's jose (tests/blackbox/node, installed with npm ci when missing): "accepted" or
    "refused <code>"."""
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "jose")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--prefix", NODE_DIR],
                       check=True, capture_output=True, timeout=300)
    out = subprocess.run(["node", os.path.join(NODE_DIR, "verify_as_token.mjs"), jwks_path,
                          token], check=True, capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


def pyjwt_verdict(jwks, token):
    """PyJWT (python3-jwt) as a relying party uses it: the JWKS key whose kid the header
    names, RS256; neither use nor typ looked at."""
    import jwt
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        key = next(k for k in jwt.PyJWKSet.from_dict(jwks).keys if k.key_id == kid)
        jwt.decode(token, key.key, algorithms=["RS256"])
        return "accepted"
    except (StopIteration, jwt.PyJWTError) as e:
        return "refused " + type(e).__name__


def jwcrypto_verdict(jwks, token):
    from jwcrypto import jwk as cjwk, jwt as cjwt
    try:
        cjwt.JWT(jwt=token, key=cjwk.JWKSet.from_json(json.dumps(jwks)), algs=["RS256"])
        return "accepted"
    except Exception as e:  # jwcrypto raises a family of unrelated types
        return "refused " + type(e).__name__


def test_jose_libraries_refuse_the_feed_and_a_status_list_as_tokens_under_the_jwks(
        make_appliance, tmp_path):
    """Issue 22 (2): a relying party that picks a JWKS key by kid and checks neither use nor
    typ must not take a publication document (a JWS with iss and a fresh exp) for a token."""
    a = make_appliance()
    k = a.create_key()
    revoke(a, a.create_key()["kid"])
    tok = a.post("/v1/tokens", {"kid": k["kid"], "sub": "x", "revocable": True}).json()
    assert a.delete("/v1/tokens/" + tok["jti"]).status_code == 200
    feed = a.get("/v1/revocations/feed", auth=False).text
    slist = a.get("/v1/status-lists/%d" % tok["status"]["list"], auth=False).text
    jwks = a.get("/.well-known/jwks.json", auth=False).json()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    # The libraries do accept this appliance's real tokens under the same JWKS.
    assert pyjwt_verdict(jwks, tok["token"]) == "accepted"
    assert jwcrypto_verdict(jwks, tok["token"]) == "accepted"
    assert node_jose_verdict(str(path), tok["token"]) == "accepted"
    for doc in (feed, slist):
        assert pyjwt_verdict(jwks, doc).startswith("refused"), doc
        assert jwcrypto_verdict(jwks, doc).startswith("refused"), doc
        assert node_jose_verdict(str(path), doc).startswith("refused"), doc


def test_feed_seq_rises_by_one_per_revocation_and_a_delta_holds_only_later_ones(make_appliance):
    a = make_appliance()
    key = publication_key(a)
    kids = [a.create_key()["kid"] for _ in range(3)]
    _, empty, _ = open_feed(a, key=key)
    assert empty["seq"] == 0 and empty["revoked"] == []
    for kid in kids:
        revoke(a, kid)
    _, full, _ = open_feed(a, key=key)
    assert full["seq"] == 3 and [x["seq"] for x in full["revoked"]] == [1, 2, 3]
    assert [x["kid"] for x in full["revoked"]] == kids
    _, delta, _ = open_feed(a, "?after=1", key=key)
    assert delta["after"] == 1 and delta["seq"] == 3
    assert [x["kid"] for x in delta["revoked"]] == kids[1:]
    _, none, _ = open_feed(a, "?after=3", key=key)
    assert none["after"] == 3 and none["revoked"] == []
    # Past the newest: an empty delta from the newest, never a claim about the future.
    _, ahead, _ = open_feed(a, "?after=999", key=key)
    assert ahead["after"] == 3 and ahead["seq"] == 3 and ahead["revoked"] == []
    for bad in ("?after=-1", "?after=x", "?before=1", "?after=1&x=2", "?after=1234567890123456"):
        r = a.get("/v1/revocations/feed" + bad, auth=False)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_query", bad


def test_feed_has_an_etag_and_answers_304_until_a_revocation_changes_it(make_appliance):
    a = make_appliance()
    kid = a.create_key()["kid"]
    r1 = a.get("/v1/revocations/feed", auth=False)
    etag = r1.headers["ETag"]
    r2 = a.get("/v1/revocations/feed", auth=False, headers={"If-None-Match": etag})
    assert r2.status_code == 304 and r2.content == b""
    revoke(a, kid)
    r3 = a.get("/v1/revocations/feed", auth=False, headers={"If-None-Match": etag})
    assert r3.status_code == 200 and r3.headers["ETag"] != etag


def test_feed_and_publication_key_survive_a_restart_and_seq_never_goes_back(make_appliance):
    a = make_appliance()
    key = publication_key(a)
    kid = a.create_key()["kid"]
    revoke(a, kid)
    a.restart()
    assert publication_key(a)["pem"] == key["pem"]
    _, p, _ = open_feed(a, key=key)
    assert p["seq"] == 1 and p["revoked"][0]["kid"] == kid
    revoke(a, a.create_key()["kid"])
    _, p, _ = open_feed(a, key=key)
    assert p["seq"] == 2


def test_a_tampered_feed_no_longer_verifies(make_appliance):
    a = make_appliance()
    key = publication_key(a)
    kids = [a.create_key()["kid"] for _ in range(2)]
    for kid in kids:
        revoke(a, kid)
    h, p, s = a.get("/v1/revocations/feed", auth=False).text.split(".")
    payload = json.loads(unb64u(p))
    payload["revoked"] = payload["revoked"][1:]  # one kid removed, the signature kept
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    pub = serialization.load_pem_public_key(key["pem"].encode())
    with pytest.raises(InvalidSignature):
        pub.verify(unb64u(s), (h + "." + forged).encode(), padding.PKCS1v15(), hashes.SHA256())


def test_event_stream_says_hello_then_sends_one_event_per_revocation_with_its_seq(make_appliance):
    a = make_appliance()
    kids = [a.create_key()["kid"] for _ in range(3)]
    revoke(a, kids[0])
    s = Stream(a)
    try:
        assert s.status == 200
        assert s.headers["Content-Type"] == "text/event-stream"
        assert s.headers["Cache-Control"] == "no-store"
        s.wait(lambda st: len(st.events) >= 1)
        assert s.events[0]["event"] == "hello"
        assert json.loads(s.events[0]["data"]) == {"seq": 1, "token_seq": 0}
        assert "id" not in s.events[0]
        revoke(a, kids[1], "rotated out")
        revoke(a, kids[2])
        s.wait(lambda st: len(st.revocations()) >= 2)
        evs = s.revocations()
        assert [e["id"] for e in evs] == ["2", "3"]
        d = json.loads(evs[0]["data"])
        assert d["seq"] == 2 and d["kid"] == kids[1] and d["reason"] == "rotated out"
        assert isinstance(d["revoked_at"], int)
    finally:
        s.close()


def test_event_stream_resumes_after_last_event_id(make_appliance):
    a = make_appliance()
    kids = [a.create_key()["kid"] for _ in range(3)]
    for kid in kids:
        revoke(a, kid)
    s = Stream(a, last_event_id=1)
    try:
        s.wait(lambda st: len(st.revocations()) >= 2)
        assert [e["id"] for e in s.revocations()] == ["2", "3"]
        assert [json.loads(e["data"])["kid"] for e in s.revocations()] == kids[1:]
    finally:
        s.close()
    for bad in ("x", "-1", "1.5", "9" * 16):
        r = requests.get(a.url + "/v1/revocations/events", headers={"Last-Event-ID": bad},
                         verify=a.cacert, timeout=10)
        assert r.status_code == 400, bad
        assert r.json()["error"]["code"] == "invalid_last_event_id"


def test_event_stream_sends_heartbeats_while_idle(make_appliance):
    a = make_appliance({"events_heartbeat_seconds": 1})
    s = Stream(a)
    try:
        s.wait(lambda st: len(st.comments) >= 2, timeout=10)
        assert s.comments[0].startswith(": keepalive")
    finally:
        s.close()


def test_subscribers_past_the_bound_get_503_and_signing_keeps_its_threads(make_appliance):
    # A heartbeat a second: a subscriber that vanished is noticed by the second write after.
    a = make_appliance({"events_max_subscribers": 3, "worker_threads": 2,
                        "events_heartbeat_seconds": 1})
    kid = a.create_key()["kid"]
    streams = [Stream(a) for _ in range(3)]
    try:
        for s in streams:
            assert s.status == 200
            s.wait(lambda st: len(st.events) >= 1)
        r = requests.get(a.url + "/v1/revocations/events", verify=a.cacert, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "too_many_subscribers"
        assert "Retry-After" in r.headers
        # Both workers are still free for the requests that sign.
        for _ in range(10):
            assert a.post("/v1/tokens", {"kid": kid, "sub": "s"}).status_code == 200
    finally:
        for s in streams:
            s.close()
    # A subscriber that left gives its place back.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = requests.get(a.url + "/v1/revocations/events", verify=a.cacert, stream=True,
                         timeout=10)
        ok = r.status_code == 200
        r.close()
        if ok:
            break
        time.sleep(0.5)
    assert ok


def test_appliance_stops_promptly_and_cleanly_with_subscribers_connected(make_appliance):
    a = make_appliance()
    streams = [Stream(a) for _ in range(5)]
    for s in streams:
        s.wait(lambda st: len(st.events) >= 1)
    t0 = time.monotonic()
    assert a.stop() == 0
    assert time.monotonic() - t0 < 10
    for s in streams:
        s.wait(lambda st: st.ended)  # the stream was ended, not left hanging
        s.close()


def test_every_thread_may_sign_so_subscriber_threads_never_cause_503(make_appliance):
    # CivetWeb runs worker_threads + events_max_subscribers threads, and any of them may
    # serve a request that signs: each needs a session (or keeper connection) of its own.
    # Keep-alive connections held open at once are served by distinct threads: eight of
    # them (of the ten threads, the fixture's own connection holds one) need eight
    # sessions, more than worker_threads + 4.
    a = make_appliance({"worker_threads": 2,
                        "events_max_subscribers": 8})
    kid = a.create_key()["kid"]
    sessions = []
    try:
        for _ in range(8):
            s = requests.Session()
            s.verify = a.cacert
            s.headers["Authorization"] = "Bearer " + a.signer
            sessions.append(s)
            r = s.post(a.url + "/v1/tokens", json={"kid": kid, "sub": "t"}, timeout=30,
                       verify=a.cacert)
            assert r.status_code == 200, r.text
        for s in sessions:
            r = s.post(a.url + "/v1/tokens", json={"kid": kid, "sub": "t"}, timeout=30,
                       verify=a.cacert)
            assert r.status_code == 200, r.text
    finally:
        for s in sessions:
            s.close()


def test_while_the_keeper_cannot_sign_the_feed_and_a_status_list_serve_their_last_signed_copy(
        make_appliance):
    """Issue 22 (1), the appliance's side: a revocation while the keeper is stopped. The
    request that asks for the new feed (or list) waits for the keeper; every other one is
    served the last signed copy at once (valid: before its exp), not a 503; once the keeper
    answers, the new copy is signed."""
    from test_verifier import StoppedKeeper, in_background
    a = make_appliance()
    key = publication_key(a)
    k = a.create_key()
    tok = a.post("/v1/tokens", {"kid": k["kid"], "sub": "x", "revocable": True}).json()
    sl_path = "/v1/status-lists/%d" % tok["status"]["list"]
    _, before, r0 = open_feed(a, key=key)
    assert before["seq"] == 0
    l0 = a.get(sl_path, auth=False)
    assert l0.status_code == 200
    with StoppedKeeper(a):
        deleted = in_background(a.delete, "/v1/keys/" + k["kid"], {"reason": "compromised"})
        assert a.delete("/v1/tokens/" + tok["jti"]).status_code == 200  # no keeper needed
        wait_for(lambda: a.get("/v1/revocations", auth=False).json()["sequence"] == 1,
                 message="the revocation to commit")
        signing = in_background(open_feed, a, "", key)  # waits for the keeper
        signing_list = in_background(lambda: a.get(sl_path, auth=False))
        time.sleep(0.5)
        t0 = time.monotonic()
        _, held, r = open_feed(a, key=key)
        assert held["seq"] == 0 and r.headers["ETag"] == r0.headers["ETag"]
        r = a.get(sl_path, auth=False)
        assert r.status_code == 200 and r.headers["ETag"] == l0.headers["ETag"]
        assert time.monotonic() - t0 < 5  # served at once, not after the keeper's deadline
    _, after, _ = signing()
    assert after["seq"] in (0, 1)  # 0 when it gave up on the keeper before SIGCONT
    signing_list()
    assert deleted().status_code == 200
    wait_for(lambda: open_feed(a, key=key)[1]["seq"] == 1, timeout=30,
             message="the new feed once the keeper answers")
    wait_for(lambda: a.get(sl_path, auth=False).headers["ETag"] != l0.headers["ETag"],
             timeout=30, message="the new status list once the keeper answers")


def test_public_signing_past_the_budget_serves_copies_or_503_with_retry_after(make_appliance):
    """Issue 22 (3): publication_signs_per_second bounds what unauthenticated requests make
    the token sign. A document with a valid copy is served from it whatever the budget; one
    with none, once the budget is spent, gets 503 signing_budget_exhausted with
    Retry-After."""
    a = make_appliance({"publication_signs_per_second": 1})
    k = a.create_key()
    tok = a.post("/v1/tokens", {"kid": k["kid"], "sub": "x", "revocable": True}).json()
    sl_path = "/v1/status-lists/%d" % tok["status"]["list"]
    time.sleep(1.2)  # a full bucket: one signature
    t0 = time.monotonic()
    assert a.get("/v1/revocations/feed", auth=False).status_code == 200  # signs: the budget
    r = a.get(sl_path, auth=False)  # no copy yet, no budget left
    took = time.monotonic() - t0
    if took < 0.9:  # the bucket earns one signature a second
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "signing_budget_exhausted"
        assert int(r.headers["Retry-After"]) >= 1
    time.sleep(1.2)
    first = a.get(sl_path, auth=False)
    assert first.status_code == 200, first.text
    # Served from the copy from now on, however often and whatever the budget.
    for _ in range(30):
        r = a.get(sl_path, auth=False)
        assert r.status_code == 200 and r.headers["ETag"] == first.headers["ETag"]
    for n in range(30):
        r = a.get("/v1/revocations/feed?after=%d" % n, auth=False)
        assert r.status_code == 200, r.text
