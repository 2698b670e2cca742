"""The verifier as an edge's sub-request authenticator (signd-verify --serve) behind a real
origin: Debian's nginx with auth_request in front of a directory of HLS files (a playlist and
segments written here). Tokens minted by a real appliance fetch segments through nginx in
Cloudflare's form (/<token>/video-123/seg0.ts) and with a token parameter
(/video-123/seg0.ts?token=...); the sidecar checks the token's sub against the first path
segment after the token (--sub-from-path 1) and its origin against the request's Origin or
Referer. The nginx configuration is docs/edge.md's. nginx runs in the foreground with its pid,
logs and temporary files in the test's directory; every process is stopped by its PID.
"""
import http.client
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import requests

from procs import stop_process, wait_for
from test_verifier import VERIFY, forge, mint, parts, pin_publication_key, unused_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
ORIGIN_A = "https://a.example"
ORIGIN_B = "https://b.example"
VIDEOS = {
    "video-123": {"index.m3u8": None, "seg0.ts": b"\x47" * 188 * 4, "seg1.ts": b"\x47\x01" * 94},
    "video-456": {"index.m3u8": None, "seg0.ts": b"\x47\x02" * 94},
    "video-789": {"index.m3u8": None, "seg0.ts": b"\x47\x03" * 94},
}

pytestmark = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed "
                                "(mk/packages.txt lists it; make deps installs it)")

NGINX_CONF = """\
daemon off;
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    types {{ application/vnd.apple.mpegurl m3u8; video/mp2t ts; }}

    upstream signd_verify {{
        server 127.0.0.1:{verify_port};
        keepalive 16;
    }}

    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;

        # Cloudflare's form: /<token>/video-123/seg0.ts serves www/video-123/seg0.ts.
        location ~ "^/[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+(/.*)$" {{
            auth_request /_signd_auth;
            auth_request_set $signd_reason $upstream_http_x_signd_reason;
            auth_request_set $signd_sub $upstream_http_x_signd_sub;
            add_header X-Signd-Reason $signd_reason always;
            add_header X-Signd-Sub $signd_sub always;
            try_files $1 =404;
        }}

        # The token as a parameter: /video-123/seg0.ts?token=<token>.
        location / {{
            auth_request /_signd_auth;
            auth_request_set $signd_reason $upstream_http_x_signd_reason;
            auth_request_set $signd_sub $upstream_http_x_signd_sub;
            add_header X-Signd-Reason $signd_reason always;
            add_header X-Signd-Sub $signd_sub always;
        }}

        location = /_signd_auth {{
            internal;
            proxy_pass http://signd_verify;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
{extra}
    }}
}}
"""


def playlist(segments):
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:4"]
    for name in segments:
        lines += ["#EXTINF:4.0,", name]
    return ("\n".join(lines + ["#EXT-X-ENDLIST"]) + "\n").encode()


class Sidecar:
    """signd-verify --serve on a port picked now; ready once it prints "serving"."""

    def __init__(self, a, keyfile, *extra):
        self.port = unused_port()
        self.proc = subprocess.Popen(
            [VERIFY, "--url", a.url, "--cacert", a.cacert, "--feed-key", keyfile,
             "--serve", "127.0.0.1:%d" % self.port, *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("serving 127.0.0.1:%d" % self.port):
            stop_process(self.proc, signal.SIGTERM, 10)
            why = self.proc.stderr.read()
            self.close()
            raise AssertionError("signd-verify --serve did not start: %r %s" % (line, why))
        self.url = "http://127.0.0.1:%d" % self.port

    def ask(self, uri, **headers):
        return requests.get(self.url + "/auth", headers={"X-Original-URI": uri, **headers},
                            timeout=30)

    def close(self):
        alive, rc = stop_process(self.proc, signal.SIGTERM, 10)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc


class Nginx:
    """nginx -p DIR in the foreground, everything of it under DIR; stopped by its PID."""

    def __init__(self, directory, verify_port, extra=""):
        """extra: more of the server block (tests/bench/edge.py adds a location with no
        check)."""
        self.dir = str(directory)
        self.port = unused_port()
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        for video, files in VIDEOS.items():
            os.makedirs(os.path.join(self.dir, "www", video), exist_ok=True)
            for name, body in files.items():
                if body is None:
                    body = playlist(sorted(n for n in files if n.endswith(".ts")))
                with open(os.path.join(self.dir, "www", video, name), "wb") as f:
                    f.write(body)
        # As root nginx would switch its workers to nobody, who may not enter the test's
        # directory: they stay root (the master binds nothing below 1024 here anyway).
        user = "user root;" if os.geteuid() == 0 else ""
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(NGINX_CONF.format(dir=self.dir, port=self.port, verify_port=verify_port,
                                      user=user, extra=extra.replace("DIR", self.dir)))
        self.proc = subprocess.Popen([NGINX, "-p", self.dir, "-c", self.conf],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.url = "http://127.0.0.1:%d" % self.port
        wait_for(self._up, timeout=20, interval=0.05, message="nginx to listen")

    def _up(self):
        if self.proc.poll() is not None:
            raise AssertionError("nginx exited %s: %s" % (self.proc.returncode,
                                                          self.proc.stderr.read().decode()))
        try:
            requests.get(self.url + "/", timeout=2)
            return True
        except requests.exceptions.ConnectionError:
            return False

    def get(self, path, **headers):
        return requests.get(self.url + path, headers=headers, timeout=30)

    def get_raw(self, path):
        """path sent as it is (requests would resolve dot segments first)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def close(self):
        # SIGQUIT: nginx's graceful stop; its master waits for its worker.
        stop_process(self.proc, signal.SIGQUIT, 10)
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """An appliance (token_ttl_min 1, for short-lived tokens), a sidecar and nginx."""
    from conftest import Appliance
    d = tmp_path_factory.mktemp("edge")
    data = tempfile.mkdtemp(prefix="signd-test-")
    a = Appliance(data, {"token_ttl_min": 1}).start()
    side = ngx = None
    try:
        keyfile = pin_publication_key(a, str(d))
        # Keys made before the sidecar starts: it has them from its first JWKS (a kid it
        # does not know costs a refetch, at most one per --cooldown).
        kids = {"edge": a.create_key(label="edge")["kid"],
                "doomed": a.create_key(label="doomed")["kid"]}
        side = Sidecar(a, keyfile, "--sub-from-path", "1")
        ngx = Nginx(d / "nginx", side.port)
        yield a, side, ngx, kids
    finally:
        if ngx is not None:
            ngx.close()
        if side is not None:
            assert side.close() == 0
        a.stop()
        shutil.rmtree(data, ignore_errors=True)


def reason(r):
    return r.headers.get("X-Signd-Reason")


def refused(ngx, path, timeout, message):
    """Fetches path until it is no longer 200; returns (status, reason). (A Response is
    false when it is not 2xx, hence the tuple.)"""
    def once():
        r = ngx.get(path)
        return (r.status_code, reason(r)) if r.status_code != 200 else None
    return wait_for(once, timeout=timeout, interval=0.05, message=message)


def test_minted_token_fetches_the_playlist_and_segments_through_nginx(edge):
    a, side, ngx, kids = edge
    kid = kids["edge"]
    token = mint(a, kid, sub="video-123")
    r = ngx.get("/%s/video-123/index.m3u8" % token)
    assert r.status_code == 200, (r.status_code, reason(r))
    assert r.content.startswith(b"#EXTM3U") and b"seg1.ts" in r.content
    for name in ("seg0.ts", "seg1.ts"):
        r = ngx.get("/%s/video-123/%s" % (token, name))
        assert r.status_code == 200 and r.content == VIDEOS["video-123"][name]
        assert r.headers.get("X-Signd-Sub") == "video-123"
    r = ngx.get("/video-123/seg0.ts?token=" + token)
    assert r.status_code == 200 and r.content == VIDEOS["video-123"]["seg0.ts"]


def test_sidecar_answers_200_with_the_claims_as_headers(edge):
    a, side, ngx, kids = edge
    kid = kids["edge"]
    token = mint(a, kid, sub="video-123")
    claims = parts(token)[1]
    r = side.ask("/%s/video-123/seg0.ts" % token)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["X-Signd-Sub"] == "video-123"
    assert r.headers["X-Signd-Jti"] == claims["jti"]
    assert r.headers["X-Signd-Exp"] == str(claims["exp"])
    assert "X-Signd-Reason" not in r.headers
    # Without X-Original-URI the request's own target is the URI (a proxy forwarding as is).
    r = requests.get("%s/%s/video-123/seg0.ts" % (side.url, token), timeout=30)
    assert r.status_code == 200 and r.headers["X-Signd-Sub"] == "video-123"


def test_request_without_a_token_gets_401_missing_token(edge):
    a, side, ngx, kids = edge
    kid = kids["edge"]
    r = ngx.get("/video-123/seg0.ts")
    assert (r.status_code, reason(r)) == (401, "missing_token")
    assert side.ask("/video-123/seg0.ts").status_code == 401


def test_forged_token_gets_401_bad_signature(edge):
    a, side, ngx, kids = edge
    kid = kids["edge"]
    token = mint(a, kid, sub="video-123")
    payload = dict(parts(token)[1], sub="video-456")
    r = ngx.get("/%s/video-456/seg0.ts" % forge(token, payload=payload))
    assert (r.status_code, reason(r)) == (401, "bad_signature")


def test_expired_token_gets_401_with_the_reason_header(edge):
    a, side, ngx, kids = edge
    kid = kids["edge"]
    token = mint(a, kid, sub="video-123", ttl=1)
    time.sleep(max(0.0, parts(token)[1]["exp"] - time.time()) + 1.1)
    r = ngx.get("/%s/video-123/seg0.ts" % token)
    assert (r.status_code, reason(r)) == (401, "expired")
    assert r.content != VIDEOS["video-123"]["seg0.ts"]


def test_not_yet_valid_token_gets_401_not_yet_valid(edge):
    a, side, ngx, kids = edge
    kid = kids["edge"]
    token = mint(a, kid, sub="video-123", nbf=int(time.time()) + 600, ttl=900)
    r = ngx.get("/%s/video-123/seg0.ts" % token)
    assert (r.status_code, reason(r)) == (401, "not_yet_valid")


def test_token_for_another_video_gets_403_wrong_resource(edge):
    a, side, ngx, kids = edge
    kid = kids["edge"]
    token = mint(a, kid, sub="video-123")
    r = ngx.get("/%s/video-456/seg0.ts" % token)
    assert (r.status_code, reason(r)) == (403, "wrong_resource")
    r = ngx.get("/video-456/seg0.ts?token=" + token)
    assert (r.status_code, reason(r)) == (403, "wrong_resource")


def test_dot_segments_get_403_bad_uri_instead_of_the_other_video(edge):
    a, side, ngx, kids = edge
    kid = kids["edge"]
    token = mint(a, kid, sub="video-123")
    # nginx would serve www/video-456/seg0.ts for both: the sidecar reads the raw URI.
    for path in ("/%s/video-123/../video-456/seg0.ts" % token,
                 "/%s/video-123/%%2e%%2e/video-456/seg0.ts" % token):
        status, headers, body = ngx.get_raw(path)
        assert (status, headers.get("X-Signd-Reason")) == (403, "bad_uri"), path
        assert body != VIDEOS["video-456"]["seg0.ts"]


def test_origin_bound_token_is_403_wrong_origin_from_another_origin(edge):
    a, side, ngx, kids = edge
    kid = kids["edge"]
    token = mint(a, kid, sub="video-123", origin=ORIGIN_A)
    path = "/%s/video-123/seg0.ts" % token
    assert ngx.get(path, Origin=ORIGIN_A).status_code == 200
    assert ngx.get(path, Referer=ORIGIN_A + "/watch?v=123").status_code == 200
    r = ngx.get(path, Origin=ORIGIN_B)
    assert (r.status_code, reason(r)) == (403, "wrong_origin")
    r = ngx.get(path, Referer=ORIGIN_B + "/embed")
    assert (r.status_code, reason(r)) == (403, "wrong_origin")
    # Neither header: the binding cannot be checked, so it is refused.
    r = ngx.get(path)
    assert (r.status_code, reason(r)) == (403, "origin_required")
    # A token bound to no origin plays from anywhere.
    assert ngx.get("/%s/video-123/seg0.ts" % mint(a, kid, sub="video-123"),
                   Origin=ORIGIN_B).status_code == 200


def test_token_of_a_revoked_key_gets_403_revoked_kid(edge):
    a, side, ngx, kids = edge
    kid = kids["edge"]
    doomed = kids["doomed"]
    token = mint(a, doomed, sub="video-123")
    path = "/%s/video-123/seg0.ts" % token
    assert ngx.get(path).status_code == 200
    assert a.delete("/v1/keys/" + doomed, {"reason": "compromised"}).status_code == 200
    assert refused(ngx, path, 15, "the revocation to reach the sidecar") == (403, "revoked_kid")


def test_revoked_token_gets_403_revoked_token_while_its_sibling_plays(edge):
    a, side, ngx, kids = edge
    kid = kids["edge"]
    doomed = mint(a, kid, sub="video-123", revocable=True)
    sibling = mint(a, kid, sub="video-123", revocable=True)
    for t in (doomed, sibling):
        assert ngx.get("/%s/video-123/seg0.ts" % t).status_code == 200
    assert a.delete("/v1/tokens/" + parts(doomed)[1]["jti"]).status_code == 200
    path = "/%s/video-123/seg1.ts" % doomed
    assert refused(ngx, path, 15, "the token revocation to reach the sidecar") == \
        (403, "revoked_token")
    assert ngx.get("/%s/video-123/seg1.ts" % sibling).status_code == 200


def test_a_revoked_subject_gets_403_revoked_subject_and_a_new_token_plays(edge):
    """AVCaption's rotate: every token of one video dies at once, the video's later tokens
    and other videos' tokens play."""
    a, side, ngx, kids = edge
    kid = kids["edge"]
    old = mint(a, kid, sub="video-789")
    other = mint(a, kid, sub="video-123")
    assert ngx.get("/%s/video-789/seg0.ts" % old).status_code == 200
    time.sleep(1.1)  # iat has whole seconds: the revocation's default before is now
    r = a.post("/v1/subjects/revoke", {"sub": "video-789"})
    assert r.status_code == 200, r.text
    assert refused(ngx, "/%s/video-789/seg0.ts" % old, 15,
                   "the subject revocation to reach the sidecar") == (403, "revoked_subject")
    assert ngx.get("/%s/video-123/seg0.ts" % other).status_code == 200
    time.sleep(1.1)
    new = mint(a, kid, sub="video-789")
    assert ngx.get("/%s/video-789/seg0.ts" % new).status_code == 200


def test_appliance_stopped_still_plays_until_the_feed_ages_out_then_refuses(make_appliance,
                                                                           tmp_path):
    # revocations_max_age 0: the appliance re-signs its feed every 10 s, so the feed the
    # sidecar holds is at most 10 s old when the appliance stops; --max-feed-age 20 then
    # keeps it answering for 10 s or more, and fails closed within 20 s.
    a = make_appliance({"revocations_max_age": 0})
    keyfile = pin_publication_key(a, str(tmp_path))
    kid = a.create_key()["kid"]
    token = mint(a, kid, sub="video-123")
    path = "/%s/video-123/seg0.ts" % token
    side = Sidecar(a, keyfile, "--sub-from-path", "1", "--max-feed-age", "20")
    ngx = Nginx(tmp_path / "nginx", side.port)
    try:
        assert ngx.get(path).status_code == 200
        a.stop()
        stopped = time.monotonic()
        assert ngx.get(path).status_code == 200  # cached: no call to the appliance
        # feed_stale is 503 at the sidecar, which nginx's auth_request turns into 500.
        assert refused(ngx, path, 40, "the feed to age out") == (500, "feed_stale")
        assert time.monotonic() - stopped <= 25
        direct = side.ask(path)
        assert (direct.status_code, reason(direct)) == (503, "feed_stale")
        # The appliance back (same port): the stream reconnects and it plays again.
        a.start()
        wait_for(lambda: ngx.get(path).status_code == 200, timeout=40, interval=0.2,
                 message="the sidecar to recover once the appliance is back")
    finally:
        ngx.close()
        assert side.close() == 0


def test_origin_option_stands_in_for_a_request_with_neither_origin_nor_referer(edge, tmp_path):
    a, side, ngx, kids = edge
    keyfile = pin_publication_key(a, str(tmp_path))
    token = mint(a, kids["edge"], sub="video-123", origin=ORIGIN_A)
    uri = "/%s/video-123/seg0.ts" % token
    fallback = Sidecar(a, keyfile, "--sub-from-path", "1", "--origin", ORIGIN_A)
    try:
        assert fallback.ask(uri).status_code == 200
        # The request's own origin still wins over the fallback.
        r = fallback.ask(uri, Origin=ORIGIN_B)
        assert (r.status_code, reason(r)) == (403, "wrong_origin")
    finally:
        assert fallback.close() == 0


def test_uri_beyond_its_bound_gets_403_bad_uri_and_a_huge_head_is_refused(edge):
    a, side, ngx, kids = edge
    token = mint(a, kids["edge"], sub="video-123")
    long_uri = "/%s/video-123/%s" % (token, "a" * (16384 + 4096))
    r = side.ask(long_uri)
    assert (r.status_code, reason(r)) == (403, "bad_uri")
    # Beyond CivetWeb's max_request_size the head is not read at all: never a 200.
    r = requests.get(side.url + "/auth", timeout=30,
                     headers={"X-Original-URI": "/%s/video-123/seg0.ts" % token,
                              "X-Padding": "p" * 60000})
    assert r.status_code >= 400
    # And the daemon still answers afterwards.
    assert side.ask("/%s/video-123/seg0.ts" % token).status_code == 200


def test_serve_options_that_cannot_work_are_setup_errors(edge, tmp_path):
    a, side, ngx, kids = edge
    base = [VERIFY, "--url", a.url, "--cacert", a.cacert, "--feed-key",
            pin_publication_key(a, str(tmp_path))]
    secret = tmp_path / "redeemer.secret"
    secret.write_text("not-used\n")
    for extra, why in ((["--serve", "8081"], "--serve"),
                       (["--serve", "127.0.0.1:443s"], "--serve"),
                       (["--sub-from-path", "1"], "need --serve"),
                       (["--serve", "127.0.0.1:1", "--sub-from-path", "0"], "--sub-from-path"),
                       (["--serve", "127.0.0.1:1", "--serve-threads", "257"], "--serve-threads"),
                       (["--serve", "127.0.0.1:1", "--redeem-credential", str(secret)],
                        "--redeem-credential"),
                       (["--serve", "127.0.0.1:1", "some.token.here"], "TOKEN")):
        p = subprocess.run(base + extra, capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        assert p.returncode == 2 and p.stdout == "" and why in p.stderr, (extra, p.stderr)
