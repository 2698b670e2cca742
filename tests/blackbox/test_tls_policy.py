"""Black-box tests of the appliance's TLS policy (appliance/front/tls.c) against a real signd.

Handshakes are made with the openssl CLI (s_client), always to 127.0.0.1 with SNI
"localhost", stdin from /dev/null and a timeout; requests over HTTPS use `requests`. Client
certificates for mutual TLS are made per test with openssl in tmp_path. No PIN or secret is
ever put in a command line.

Run with Debian's python: /usr/bin/python3 -m pytest -q tests/blackbox/test_tls_policy.py
"""
import os
import subprocess

import pytest
import requests

from conftest import reachable

TIMEOUT = 20  # seconds for one openssl command or one request
MISSING = object()


def s_client(a, *args, cert=None, key=None):
    """(exit status, stdout and stderr) of one s_client handshake with appliance a."""
    cmd = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % a.port,
           "-servername", "localhost", "-CAfile", a.cacert, "-verify_return_error"]
    cmd += list(args)
    if cert is not None:
        cmd += ["-cert", cert, "-key", key]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace")


def assert_handshake(a, version, cipher, *args):
    rc, out = s_client(a, *args)
    assert rc == 0, out
    assert "New, %s, Cipher is %s" % (version, cipher) in out, out
    assert "Verify return code: 0 (ok)" in out, out


def assert_no_handshake(a, *args, **kw):
    rc, out = s_client(a, *args, **kw)
    assert rc != 0, out
    assert "Cipher is (NONE)" in out or "Cipher is" not in out, out
    return out


def assert_refuses_to_start(a, *needles):
    """a (made with start=False) must exit at start with one log line holding every needle."""
    with pytest.raises(RuntimeError) as e:
        a.start()
    assert a.proc.returncode not in (None, 0)
    lines = [l for l in a.read_log().splitlines() if all(n in l for n in needles)]
    assert lines, "no log line holds %r:\n%s" % (needles, e.value)
    return lines[0]


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, timeout=TIMEOUT,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def make_ca(d, name):
    """A self-signed EC P-256 CA in d: (name.pem, name.key)."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "2", "-subj", "/CN=Test client CA %s" % name,
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", name + ".key", "-out", name + ".pem", cwd=d)
    return os.path.join(d, name + ".pem"), os.path.join(d, name + ".key")


def make_client_cert(d, name, ca, subject="/CN=app1/O=Example"):
    """A client certificate for subject issued by ca (its name): (name.pem, name.key)."""
    ext = os.path.join(d, "client.ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=clientAuth\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", subject, "-keyout", name + ".key", "-out", name + ".csr", cwd=d)
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
            "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", name + ".pem", cwd=d)
    return os.path.join(d, name + ".pem"), os.path.join(d, name + ".key")


@pytest.fixture
def pki(tmp_path):
    """CA A with client app1, CA B with a client of the very same subject."""
    d = str(tmp_path)
    ca_a, _ = make_ca(d, "ca-a")
    reachable(ca_a)  # the front's account reads it (conftest.reachable)
    make_ca(d, "ca-b")
    return {
        "ca_a": ca_a,
        "client_a": make_client_cert(d, "client-a", "ca-a"),
        "client_b": make_client_cert(d, "client-b", "ca-b"),
    }


def start_mtls(make_appliance, pki, **conf):
    """An appliance requiring client certificates from CA A. Its own session (the fixture's
    set-up requests) presents A's client certificate; healthz() below uses none of it."""
    a = make_appliance({"tls_client_ca": pki["ca_a"], **conf}, start=False)
    a.session.cert = pki["client_a"]
    return a.start()


@pytest.fixture
def mtls_appliance(make_appliance, pki):
    return start_mtls(make_appliance, pki)


def healthz(a, cert=None):
    # A fresh connection each time: no pooled connection made with another certificate.
    return requests.get(a.url + "/healthz", verify=a.cacert, cert=cert, timeout=TIMEOUT)


# --- versions -------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_tls_1_0_and_1_1_are_refused_by_the_server(appliance, version):
    # SECLEVEL=0 lets this client offer the old version at all: the refusal is the server's.
    out = assert_no_handshake(appliance, version, "-cipher", "DEFAULT:@SECLEVEL=0")
    assert "alert protocol version" in out, out


def test_tls_1_2_with_ecdhe_ecdsa_aes_gcm_succeeds(appliance):
    assert_handshake(appliance, "TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256",
                     "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")


def test_tls_1_2_with_chacha20_poly1305_succeeds(appliance):
    assert_handshake(appliance, "TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305",
                     "-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305")


def test_tls_1_3_succeeds(appliance):
    assert_handshake(appliance, "TLSv1.3", "TLS_AES_128_GCM_SHA256",
                     "-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256")


def test_https_request_works_with_the_default_policy(appliance):
    assert healthz(appliance).status_code == 200


# --- TLS 1.2 ciphers ------------------------------------------------------------------

@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384",
                                    "ECDHE-RSA-AES128-SHA"])
def test_tls_1_2_with_a_cbc_cipher_is_refused(appliance, cipher):
    out = assert_no_handshake(appliance, "-tls1_2", "-cipher", cipher + ":@SECLEVEL=0")
    assert "alert handshake failure" in out, out


@pytest.mark.parametrize("cipher", ["AES128-GCM-SHA256", "AES256-GCM-SHA384"])
def test_tls_1_2_aead_without_forward_secrecy_is_refused(appliance, cipher):
    out = assert_no_handshake(appliance, "-tls1_2", "-cipher", cipher + ":@SECLEVEL=0")
    assert "alert handshake failure" in out, out


def test_the_server_picks_its_own_cipher_order(make_appliance):
    a = make_appliance({"tls_ciphers": "ECDHE-ECDSA-AES256-GCM-SHA384:"
                                       "ECDHE-ECDSA-AES128-GCM-SHA256"})
    assert_handshake(a, "TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384", "-tls1_2", "-cipher",
                     "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384")


def test_tls_ciphers_setting_limits_tls_1_2(make_appliance):
    a = make_appliance({"tls_ciphers": "ECDHE-ECDSA-CHACHA20-POLY1305"})
    assert_handshake(a, "TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305", "-tls1_2")
    assert_no_handshake(a, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")


def test_tls_ciphersuites_setting_limits_tls_1_3(make_appliance):
    a = make_appliance({"tls_ciphersuites": "TLS_CHACHA20_POLY1305_SHA256"})
    assert_handshake(a, "TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256", "-tls1_3")
    assert_no_handshake(a, "-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256")


# --- tls_min_version ------------------------------------------------------------------

def test_min_version_1_3_refuses_tls_1_2_and_serves_tls_1_3(make_appliance):
    a = make_appliance({"tls_min_version": "1.3"})
    out = assert_no_handshake(a, "-tls1_2")
    assert "alert protocol version" in out, out
    assert_handshake(a, "TLSv1.3", "TLS_AES_256_GCM_SHA384",
                     "-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384")
    assert healthz(a).status_code == 200


# --- settings signd refuses to start with ---------------------------------------------

# Each setting signd refuses, with its message, is tls_configure's (tests/unit/test_tls.c);
# one case here shows that a refusal stops the process with that line.

def test_a_key_readable_by_others_stops_signd_naming_the_file(make_appliance):
    a = make_appliance(start=False)
    key = os.path.join(a.dir, "tls", "key.pem")
    os.chmod(key, 0o644)
    assert_refuses_to_start(a, "tls_private_key:", key, "chmod 600")


def test_a_key_with_mode_600_starts(make_appliance):
    a = make_appliance(start=False)
    os.chmod(os.path.join(a.dir, "tls", "key.pem"), 0o600)
    a.start()
    assert healthz(a).status_code == 200


# --- mutual TLS -----------------------------------------------------------------------

def test_without_client_ca_the_server_asks_for_no_certificate(appliance):
    rc, out = s_client(appliance, "-tls1_2")
    assert rc == 0, out
    assert "No client certificate CA names sent" in out, out


def test_mutual_tls_names_only_the_configured_ca(mtls_appliance, pki):
    rc, out = s_client(mtls_appliance, "-tls1_2", cert=pki["client_a"][0],
                       key=pki["client_a"][1])
    assert rc == 0, out
    names = out.split("Acceptable client certificate CA names", 1)[1].split("---", 1)[0]
    assert "Test client CA ca-a" in names, out
    assert "Test client CA ca-b" not in names, out


def test_mutual_tls_refuses_a_request_without_a_client_certificate(mtls_appliance):
    with pytest.raises(requests.exceptions.ConnectionError):
        healthz(mtls_appliance)


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_mutual_tls_handshake_without_a_certificate_gets_an_alert(mtls_appliance, version):
    # TLS 1.3 clients finish before the server has judged them: send a request line so that
    # s_client reads the server's alert.
    cmd = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % mtls_appliance.port,
           "-servername", "localhost", "-CAfile", mtls_appliance.cacert, "-ign_eof", version]
    p = subprocess.run(cmd, input=b"GET /healthz HTTP/1.0\r\n\r\n", capture_output=True,
                       timeout=TIMEOUT)
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert "HTTP/1.0 200" not in out and "HTTP/1.1 200" not in out, out
    assert "alert" in out and "certificate" in out, out


def test_mutual_tls_refuses_a_certificate_from_another_ca(mtls_appliance, pki):
    with pytest.raises(requests.exceptions.ConnectionError):
        healthz(mtls_appliance, cert=pki["client_b"])


def test_mutual_tls_serves_a_certificate_from_the_configured_ca(mtls_appliance, pki):
    r = healthz(mtls_appliance, cert=pki["client_a"])
    assert r.status_code == 200, r.text
    # Failed handshakes before do not hurt the next good one.
    with pytest.raises(requests.exceptions.ConnectionError):
        healthz(mtls_appliance, cert=pki["client_b"])
    assert healthz(mtls_appliance, cert=pki["client_a"]).status_code == 200


def test_mutual_tls_works_with_tls_1_3_only(make_appliance, pki):
    a = start_mtls(make_appliance, pki, tls_min_version="1.3")
    assert healthz(a, cert=pki["client_a"]).status_code == 200
    with pytest.raises(requests.exceptions.ConnectionError):
        healthz(a, cert=pki["client_b"])
