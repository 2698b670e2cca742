"""The web console (/console/, docs/console.md) as the front serves it, and GET /v1/whoami,
which the console reads to learn what the credential may call. Every file the front
compiled in (appliance/front/console/) is fetched over HTTPS: its content type, the
Content-Security-Policy and the API's security headers, no cookie, its ETag and the 304,
HEAD; then /console's redirect, an unknown file's 404 error document, and whoami for each
role against the routes' table (`signd --routes`). The browser tests are
tests/blackbox/test_console_browser.py."""
import hashlib
import os
import subprocess

import pytest

from conftest import SIGND, TOP

CONSOLE_DIR = os.path.join(TOP, "appliance", "front", "console")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".js": "text/javascript; charset=utf-8"}


def console_files():
    return sorted(f for f in os.listdir(CONSOLE_DIR)
                  if os.path.isfile(os.path.join(CONSOLE_DIR, f)))


def security_headers(r):
    """What every console answer carries, errors included: [] when all is there."""
    h = r.headers
    want = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
    bad = ["%s: %r" % (k, h.get(k)) for k, v in want.items() if h.get(k) != v]
    if "Set-Cookie" in h:
        bad.append("Set-Cookie: %r" % h["Set-Cookie"])
    if not h.get("X-Request-Id"):
        bad.append("no X-Request-Id")
    return bad


def test_the_console_has_files_and_index_html_among_them():
    files = console_files()
    assert "index.html" in files and "app.js" in files, files
    for f in files:
        assert os.path.splitext(f)[1] in TYPES, "a console file the tests have no type for: " + f


@pytest.mark.parametrize("name", console_files())
def test_every_console_file_is_served_as_written_with_its_headers(appliance, name):
    with open(os.path.join(CONSOLE_DIR, name), "rb") as f:
        content = f.read()
    r = appliance.get("/console/" + name, auth=False)
    assert r.status_code == 200, r.text
    assert r.content == content, "the binary serves another version of " + name
    assert r.headers["Content-Type"] == TYPES[os.path.splitext(name)[1]]
    assert security_headers(r) == []
    assert r.headers["Cache-Control"] == "no-cache"
    etag = r.headers["ETag"]
    # Strong, and the file's content's: the generator hashes what it compiles in.
    assert etag == '"%s"' % hashlib.sha256(content).hexdigest()[:32]
    r2 = appliance.get("/console/" + name, auth=False, headers={"If-None-Match": etag})
    assert r2.status_code == 304 and r2.content == b""
    assert r2.headers["ETag"] == etag and security_headers(r2) == []
    r3 = appliance.get("/console/" + name, auth=False, headers={"If-None-Match": '"0000"'})
    assert r3.status_code == 200 and r3.content == content
    # HEAD: the same head, Content-Length of the file, and no body.
    h = appliance.request("HEAD", "/console/" + name, auth=False)
    assert h.status_code == 200 and h.content == b""
    assert h.headers["Content-Length"] == str(len(content))
    assert h.headers["ETag"] == etag and security_headers(h) == []


def test_the_console_root_is_index_html(appliance):
    r = appliance.get("/console/", auth=False)
    assert r.status_code == 200
    with open(os.path.join(CONSOLE_DIR, "index.html"), "rb") as f:
        assert r.content == f.read()
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert security_headers(r) == []
    h = appliance.request("HEAD", "/console/", auth=False)
    assert h.status_code == 200 and h.content == b"" and security_headers(h) == []


def test_console_without_slash_redirects_to_the_console(appliance):
    for method in ("GET", "HEAD"):
        r = appliance.request(method, "/console", auth=False, allow_redirects=False)
        assert r.status_code == 301, r.text
        assert r.headers["Location"] == "/console/"
        assert security_headers(r) == []
    r = appliance.get("/console", auth=False)  # followed
    assert r.status_code == 200 and r.url.endswith("/console/")


@pytest.mark.parametrize("path", ["/console/nothing.js", "/console/..", "/console/%2e%2e",
                                  "/console/a/b",
                                  "/console/..%2f..%2fappliance.conf"])
def test_an_unknown_console_file_is_a_404_error_document(appliance, path):
    r = appliance.get(path, auth=False)
    assert r.status_code == 404, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["error"]["code"] == "not_found"
    assert "Set-Cookie" not in r.headers


def test_an_unknown_console_file_carries_the_csp_too(appliance):
    r = appliance.get("/console/nothing.js", auth=False)
    assert r.status_code == 404 and security_headers(r) == []


def test_console_files_take_no_other_method(appliance):
    r = appliance.post("/console/app.js", {}, auth=False)
    assert r.status_code == 405
    assert r.headers["Allow"] == "GET, HEAD"


def test_the_console_never_sets_a_cookie_even_when_signed_in(appliance):
    r = appliance.get("/console/", auth=appliance.admin)
    assert r.status_code == 200 and "Set-Cookie" not in r.headers
    r = appliance.get("/v1/whoami")
    assert r.status_code == 200 and "Set-Cookie" not in r.headers


# ---- GET /v1/whoami --------------------------------------------------------------------

def router_ops():
    """{role: {(METHOD, template)}} from the routes' table, the roles it enforces."""
    out = subprocess.run([SIGND, "--routes"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    ops = {}
    for line in out.splitlines():
        method, template, roles = line.split(" ")
        for role in roles.split(","):
            ops.setdefault(role, set()).add((method, template))
    return ops


@pytest.mark.parametrize("role", ["admin", "signer", "auditor", "redeemer"])
def test_whoami_names_the_credential_and_what_its_role_may_call(appliance, role):
    if role == "admin":
        secret, cred = appliance.admin, None
    else:
        fields = {"kids": "all"} if role == "signer" else {}
        cred = appliance.create_credential(role, label="who-" + role, **fields)
        secret = cred["secret"]
    r = appliance.get("/v1/whoami", auth=secret)
    assert r.status_code == 200, r.text
    me = r.json()
    assert me["role"] == role
    assert "secret" not in me
    if cred is not None:
        assert me["id"] == cred["id"] and me["label"] == "who-" + role
    if role == "signer":
        assert me["kids"] == "all"
    else:
        assert "kids" not in me
    ops = {(o["method"], o["path"]) for o in me["operations"]}
    assert ops == router_ops()[role]
    assert ("GET", "/v1/whoami") in ops
    # What it lists is what the appliance lets it do, and only that.
    if role == "auditor":
        assert ("GET", "/v1/audit") in ops and ("POST", "/v1/keys") not in ops
        assert appliance.post("/v1/keys", {}, auth=secret).status_code == 403
    if role == "admin":
        assert ("POST", "/v1/keys") in ops and ("POST", "/v1/tokens") not in ops


def test_whoami_of_a_scoped_signer_lists_its_kids(appliance):
    kid = appliance.create_key(label="whoami")["kid"]
    cred = appliance.create_credential("signer", kids=[kid], max_ttl=600)
    me = appliance.get("/v1/whoami", auth=cred["secret"]).json()
    assert me["kids"] == [kid] and me["max_ttl"] == 600


def test_whoami_needs_a_credential_and_takes_no_query(appliance):
    r = appliance.get("/v1/whoami", auth=False)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = appliance.get("/v1/whoami", auth="sgd_0000000000000000_" + "A" * 43)
    assert r.status_code == 401
    r = appliance.get("/v1/whoami?x=1")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_query"


def test_a_revoked_credential_is_not_anyone(appliance):
    cred = appliance.create_credential("auditor")
    assert appliance.get("/v1/whoami", auth=cred["secret"]).status_code == 200
    assert appliance.delete("/v1/credentials/" + cred["id"]).status_code == 200
    assert appliance.get("/v1/whoami", auth=cred["secret"]).status_code == 401


def test_head_never_has_a_body_even_for_an_error(appliance):
    """The front writes no body after a HEAD's head, whatever the answer (RFC 9110 9.3.2):
    read on the raw connection, so that a body sent anyway would show."""
    import socket
    import ssl
    ctx = ssl.create_default_context(cafile=appliance.cacert)
    ctx.check_hostname = False
    for path, status in (("/console/nothing.js", 404), ("/v1/keys", 405),
                         ("/console/app.js", 200)):
        with socket.create_connection(("127.0.0.1", appliance.port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as s:
                s.sendall(("HEAD %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                           % path).encode())
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status), head
        assert b"Content-Length: " in head
        assert rest == b"", (path, rest[:80])
