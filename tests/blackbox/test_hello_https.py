"""Black-box tests of build/bin/hello-https: the TLS path of our CivetWeb 1.15 build.

The fixtures make a temporary directory with a self-signed EC P-256 certificate for
127.0.0.1/localhost (openssl CLI), pick a free port at run time, start the server, wait for
its "listening" line, and stop it by PID (SIGTERM, then SIGKILL if it does not exit).

Run with Debian's python: /usr/bin/python3 -m pytest -q tests/blackbox/test_hello_https.py
"""
import json
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import pytest
import requests

from conftest import free_port
from procs import stop_process

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HELLO = os.path.join(TOP, os.environ.get("SIGND_BUILD", "build"), "bin", "hello-https")
START_TIMEOUT = 10  # seconds to wait for the "listening" line
STOP_TIMEOUT = 10  # seconds between SIGTERM and SIGKILL (CivetWeb's mg_stop takes ~2 s)


def make_cert(d):
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", key, "-out", cert],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.chmod(key, 0o600)
    return cert, key


def read_line(proc, timeout):
    """The first line of proc's stdout, or what came before the deadline or EOF."""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


class Hello:
    """One hello-https process on a free port."""

    def __init__(self, d):
        self.dir = d
        self.cert, self.key = make_cert(d)
        self.proc = None
        self.port = None
        self.log_path = os.path.join(d, "hello.log")

    def start(self):
        # The port is free when we look, but another process may take it before the server
        # binds it: try a few ports.
        for _ in range(3):
            self.port = free_port()
            self.log = open(self.log_path, "ab")
            self.proc = subprocess.Popen([HELLO, self.cert, self.key, str(self.port)],
                                         stdout=subprocess.PIPE, stderr=self.log)
            line = read_line(self.proc, START_TIMEOUT)
            if line == "listening on https://127.0.0.1:%d\n" % self.port:
                self.url = "https://127.0.0.1:%d" % self.port
                return self
            self.stop()
        raise RuntimeError("hello-https did not start: %r\n%s" % (line, self.read_log()))

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self, sig=signal.SIGTERM):
        """Stops the server by PID; returns its exit status."""
        if self.proc is None:
            return None
        rc = stop_process(self.proc, sig, STOP_TIMEOUT)[1]
        self.proc.stdout.close()
        self.log.close()
        self.proc = None
        return rc


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="hello-https-test-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def hello():
    if not os.access(HELLO, os.X_OK):
        pytest.fail("%s is missing: run `make build/bin/hello-https`" % HELLO)
    d = tempfile.mkdtemp(prefix="hello-https-test-")
    h = Hello(d).start()
    yield h
    h.stop()
    shutil.rmtree(d, ignore_errors=True)


def client_context(hello, version=None, ciphers=None):
    """A client context trusting only the test certificate, pinned to one TLS version."""
    ctx = ssl.create_default_context(cafile=hello.cert)
    if ciphers:
        ctx.set_ciphers(ciphers)
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


def tls_connect(hello, ctx):
    raw = socket.create_connection(("127.0.0.1", hello.port), timeout=5)
    try:
        return ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    except Exception:
        raw.close()
        raise


def read_response(sock):
    """(status, headers with lowercase names, body) of one response read off sock."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError("connection closed before the headers ended: %r" % data)
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    while len(body) < n:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def get(sock, path):
    sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path).encode())
    return read_response(sock)


def test_hello_answers_json_over_https_verified_against_the_certificate(hello):
    r = requests.get(hello.url + "/hello", verify=hello.cert, timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"hello": "world"}
    assert r.content == b'{"hello":"world"}'


def test_client_without_the_certificate_does_not_trust_the_server(hello):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(hello.url + "/hello", timeout=5)


@pytest.mark.parametrize("path", ["/", "/nope", "/hello/extra", "/hellox", "/v1/keys"])
def test_unknown_path_gets_a_json_404(hello, path):
    r = requests.get(hello.url + path, verify=hello.cert, timeout=5)
    assert r.status_code == 404
    assert r.headers["Content-Type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] == "not_found"
    assert isinstance(err["message"], str) and err["message"]


def test_hello_takes_get_only(hello):
    r = requests.post(hello.url + "/hello", data=b"x", verify=hello.cert, timeout=5)
    assert r.status_code == 405
    assert r.headers["Allow"] == "GET"
    assert r.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_is_refused_by_the_server(hello):
    # SECLEVEL=0 lets this client offer TLS 1.1 at all, so the refusal is the server's.
    ctx = client_context(hello, ssl.TLSVersion.TLSv1_1, "DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as e:
        tls_connect(hello, ctx).close()
    assert "ALERT_PROTOCOL_VERSION" in str(e.value)  # the server's alert, not our own refusal


@pytest.mark.parametrize("version,name", [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
                                          (ssl.TLSVersion.TLSv1_3, "TLSv1.3")])
def test_tls_1_2_and_1_3_serve_hello(hello, version, name):
    with tls_connect(hello, client_context(hello, version)) as s:
        assert s.version() == name
        status, headers, body = get(s, "/hello")
    assert status == 200
    assert body == b'{"hello":"world"}'


def test_tls_1_2_negotiates_only_ecdhe_aead_suites(hello):
    with tls_connect(hello, client_context(hello, ssl.TLSVersion.TLSv1_2)) as s:
        cipher = s.cipher()[0]
    assert cipher.startswith("ECDHE-")
    assert "GCM" in cipher or "CHACHA20" in cipher


@pytest.mark.parametrize("ciphers", ["AES128-SHA:AES256-GCM-SHA384",  # RSA key exchange
                                     "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384"])  # CBC
def test_tls_1_2_refuses_static_rsa_and_cbc_suites(hello, ciphers):
    ctx = client_context(hello, ssl.TLSVersion.TLSv1_2, ciphers + ":@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        tls_connect(hello, ctx).close()


def test_no_response_carries_a_server_header(hello):
    for path in ["/hello", "/nope"]:
        r = requests.get(hello.url + path, verify=hello.cert, timeout=5)
        assert "Server" not in r.headers, r.headers
    # An error CivetWeb raises itself (a malformed request line) has none either.
    with tls_connect(hello, client_context(hello)) as s:
        s.sendall(b"NONSENSE\r\n\r\n")
        status, headers, body = read_response(s)
    assert status == 400
    assert "server" not in headers
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "bad_request"


def test_plain_http_to_the_tls_port_gets_no_200(hello):
    try:
        r = requests.get("http://127.0.0.1:%d/hello" % hello.port, timeout=5)
    except requests.exceptions.ConnectionError:
        return
    assert r.status_code != 200


def test_keep_alive_responses_are_not_delayed(hello):
    # One connection, many requests: each response must come back whole and at once. A
    # response sent in two writes without TCP_NODELAY stalls ~40 ms on delayed ACKs.
    n = 50
    with tls_connect(hello, client_context(hello)) as s:
        started = time.monotonic()
        for _ in range(n):
            status, headers, body = get(s, "/hello")
            assert status == 200 and body == b'{"hello":"world"}'
        elapsed = time.monotonic() - started
    assert elapsed < n * 0.02, "%d keep-alive requests took %.3f s" % (n, elapsed)


def test_sigterm_stops_the_server_with_status_0(workdir):
    h = Hello(workdir).start()
    r = requests.get(h.url + "/hello", verify=h.cert, timeout=5)
    assert r.status_code == 200
    assert h.stop(signal.SIGTERM) == 0
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(h.url + "/hello", verify=h.cert, timeout=5)


def test_sigint_stops_the_server_with_status_0(workdir):
    h = Hello(workdir).start()
    assert h.stop(signal.SIGINT) == 0


@pytest.mark.parametrize("args", [[], ["cert.pem"], ["c", "k", "0"], ["c", "k", "65536"],
                                  ["c", "k", "80x"]])
def test_bad_arguments_exit_2_with_usage(args):
    p = subprocess.run([HELLO] + args, capture_output=True, timeout=10)
    assert p.returncode == 2
    assert b"hello-https" in p.stderr


def test_unreadable_key_fails_to_start(workdir):
    cert, _ = make_cert(workdir)
    p = subprocess.run([HELLO, cert, os.path.join(workdir, "missing.pem"), str(free_port())],
                       capture_output=True, timeout=10)
    assert p.returncode == 1
    assert b"missing.pem" in p.stderr
    assert p.stdout == b""
