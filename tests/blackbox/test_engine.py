"""Standard tools reach the appliance's keys by RFC 7512 URI.

The token is made by our own provisioning tool (signd-provision token DIR) and the key by
our own hsm layer (bench-hsm keygen, which calls hsm_generate), exactly as the appliance
would; then the stock `openssl` command, through the OpenSSL pkcs11 engine (libp11),
signs with that key by URI, and the signature is checked with python-cryptography
against the public key our layer exported. The PIN never appears in argv.

Only the module path and SOFTHSM2_CONF go into the child's environment: neither is a
secret.
"""

import contextlib
import os
import pathlib
import re
import secrets
import shutil
import stat
import subprocess
import tempfile

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROVISION = ROOT / os.environ.get("SIGND_BUILD", "build") / "bin" / "signd-provision"
BENCH_HSM = ROOT / os.environ.get("SIGND_BUILD", "build") / "bin" / "bench-hsm"
MODULE = "/usr/lib/softhsm/libsofthsm2.so"
LABEL = "signd"
# libp11 0.4.12 (Debian 12) reads at most 31 characters from a pin-source file (its
# MAX_PIN_LENGTH is 32 and BIO_gets keeps one byte for the NUL); 0.4.13 raised it.
ENGINE_PIN_SOURCE_MAX = 31
MESSAGE = b'{"alg":"RS256","typ":"JWT","kid":"engine"}.{"sub":"video-42"}'


def _engine_so():
    out = subprocess.run(
        ["openssl", "version", "-e"], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r'ENGINESDIR: "([^"]+)"', out)
    return pathlib.Path(m.group(1)) / "pkcs11.so" if m else None


def _uri(kid_hex, kind, extra=""):
    kid_pct = "".join("%" + kid_hex[i : i + 2] for i in range(0, len(kid_hex), 2))
    return f"pkcs11:token={LABEL};id={kid_pct};type={kind}{extra}"


def _run(args, env, **kw):
    return subprocess.run(args, env=env, capture_output=True, timeout=60, **kw)


def _verifies(public_key, signature, message):
    try:
        public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        return True
    except InvalidSignature:
        return False


@pytest.fixture(scope="module")
def engine_token():
    for tool in (PROVISION, BENCH_HSM):
        if not os.access(tool, os.X_OK):
            pytest.fail(f"{tool} is missing: build it first (make)")
    engine = _engine_so()
    if engine is None or not engine.exists():
        pytest.fail("the OpenSSL pkcs11 engine is missing: install libengine-pkcs11-openssl")

    top = pathlib.Path(tempfile.mkdtemp(prefix="signd-engine-"))
    data = top / "data"
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    try:
        made = _run([str(PROVISION), "token", str(data)], env, text=True)
        assert made.returncode == 0, made.stderr
        kid_hex = secrets.token_hex(16)
        gen = _run([str(BENCH_HSM), "keygen", str(data), kid_hex], env, text=True)
        assert gen.returncode == 0, gen.stderr
        pem = pathlib.Path(gen.stdout.strip())
        public_key = serialization.load_pem_public_key(pem.read_bytes())

        child = dict(env)
        child["PKCS11_MODULE_PATH"] = MODULE
        child["SOFTHSM2_CONF"] = str(data / "softhsm2.conf")
        msg = top / "message"
        msg.write_bytes(MESSAGE)
        yield {
            "top": top,
            "data": data,
            "kid": kid_hex,
            "public_key": public_key,
            "env": child,
            "message": msg,
            "pin_file": data / "pin",
        }
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _dgst_sign(tok, key_uri, out, env=None):
    args = [
        "openssl", "dgst", "-sha256",
        "-engine", "pkcs11", "-keyform", "engine",
        "-sign", key_uri,
        "-out", str(out),
        str(tok["message"]),
    ]
    pin = tok["pin_file"].read_text().strip()
    assert pin not in " ".join(args)  # the PIN travels by file, never by argv
    return _run(args, env or tok["env"], text=True)


def test_engine_signs_by_uri_with_pin_source_and_signature_verifies(engine_token):
    tok = engine_token
    pin_file = tok["pin_file"]
    assert stat.S_IMODE(pin_file.stat().st_mode) == 0o600
    sig = tok["top"] / "sig-pin-source"
    # pin-source is a query attribute (RFC 7512 section 2.4).
    uri = _uri(tok["kid"], "private", f"?pin-source=file:{pin_file}")
    res = _dgst_sign(tok, uri, sig)
    pin_len = len(pin_file.read_bytes().rstrip(b"\n"))
    assert res.returncode == 0, (
        f"openssl could not sign with {uri!r}: {res.stderr.strip()}\n"
        + (
            f"(the PIN file holds {pin_len} characters; this engine reads at most "
            f"{ENGINE_PIN_SOURCE_MAX} from pin-source, so provisioning must write PINs of "
            f"at most {ENGINE_PIN_SOURCE_MAX} characters, without a trailing newline)"
            if pin_len > ENGINE_PIN_SOURCE_MAX
            else ""
        )
    )
    signature = sig.read_bytes()
    assert len(signature) == 256
    assert _verifies(tok["public_key"], signature, MESSAGE)
    flipped = bytearray(signature)
    flipped[100] ^= 0x01
    assert not _verifies(tok["public_key"], bytes(flipped), MESSAGE)
    assert not _verifies(tok["public_key"], signature, MESSAGE + b" ")


@contextlib.contextmanager
def _engine_config(tok):
    """An OpenSSL configuration (0600, removed afterwards) that hands the engine the PIN
    through its PIN control command: the PIN is read from the token's PIN file, never put
    in argv."""
    pin = tok["pin_file"].read_text().strip()
    conf = tok["top"] / f"engine-{secrets.token_hex(4)}.cnf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(
            "openssl_conf = openssl_init\n"
            "[openssl_init]\nengines = engine_section\n"
            "[engine_section]\npkcs11 = pkcs11_section\n"
            f"[pkcs11_section]\nengine_id = pkcs11\nMODULE_PATH = {MODULE}\n"
            f"PIN = {pin}\ninit = 0\n"
        )
    try:
        yield dict(tok["env"], OPENSSL_CONF=str(conf))
    finally:
        conf.unlink()


def test_engine_signs_by_uri_with_pin_from_engine_config(engine_token):
    """The same key by the same URI with the PIN handed over by the engine's configuration
    instead of pin-source: the URI, the key and its attributes work with the stock tool,
    independently of how the engine reads PIN files."""
    tok = engine_token
    sig = tok["top"] / "sig-engine-config"
    with _engine_config(tok) as env:
        res = _dgst_sign(tok, _uri(tok["kid"], "private"), sig, env)
    assert res.returncode == 0, res.stderr
    signature = sig.read_bytes()
    assert _verifies(tok["public_key"], signature, MESSAGE)
    flipped = bytearray(signature)
    flipped[-1] ^= 0x80
    assert not _verifies(tok["public_key"], bytes(flipped), MESSAGE)


def test_engine_reads_the_same_public_key_by_uri(engine_token):
    tok = engine_token
    res = _run(
        [
            "openssl", "pkey", "-engine", "pkcs11", "-inform", "engine",
            "-in", _uri(tok["kid"], "public"), "-pubin", "-pubout",
        ],
        tok["env"],
    )
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    m = re.search(rb"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----\n", res.stdout, re.S)
    assert m, res.stdout
    via_engine = serialization.load_pem_public_key(m.group(0))
    assert via_engine.public_numbers() == tok["public_key"].public_numbers()
    assert via_engine.key_size == 2048


def test_engine_finds_no_key_for_an_unknown_id(engine_token):
    tok = engine_token
    sig = tok["top"] / "sig-unknown"
    with _engine_config(tok) as env:
        res = _dgst_sign(tok, _uri(secrets.token_hex(16), "private"), sig, env)
    # Non-zero; libp11 0.4.12 then also crashes on its way out (SIGSEGV), so no exact code.
    assert res.returncode != 0, res.stderr
    assert "object not found" in res.stderr, res.stderr  # logged in, found nothing
    assert "PIN incorrect" not in res.stderr
    assert not sig.exists() or sig.stat().st_size == 0
