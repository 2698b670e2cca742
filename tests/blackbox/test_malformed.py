"""Bad input: each malformed request gets its own 4xx and a JSON error with a stable code,
and the appliance stays healthy after all of them."""

import shutil
import tempfile

import pytest

import conftest

KID0 = "0" * 32
JSON = {"Content-Type": "application/json"}


# Two tests wait for request_timeout_ms (a body or a trailer section that never ends): 3 s
# instead of the default 10 s is the same refusal, sooner.
REQUEST_TIMEOUT_MS = 3000


@pytest.fixture(scope="module")
def appliance():
    """This module's appliance (conftest's, with a shorter request_timeout_ms)."""
    d = tempfile.mkdtemp(prefix="signd-test-")
    a = conftest.Appliance(d, {"request_timeout_ms": REQUEST_TIMEOUT_MS}).start()
    yield a
    a.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def live_kid(appliance):
    return appliance.create_key(label="malformed-target")["kid"]


def cases(kid):
    """(method, path, headers, body bytes, expected status, expected code). What the front
    decides before a handler (404, 405, invalid_kid, 413, 415) and what the strict parser
    refuses in any body (invalid_json, invalid_utf8, duplicate_key, not_an_object) are pinned
    by tests/unit/test_front.c and test_api_common.c; these are each handler's own fields."""
    return [
        ("GET", "/v1/keys/" + KID0, {}, None, 404, "key_not_found"),
        ("DELETE", "/v1/keys/" + KID0, JSON, b"{}", 404, "key_not_found"),
        ("POST", "/v1/keys/%s/sign" % KID0, JSON, b'{"payload":"eA"}', 404, "key_not_found"),
        ("POST", "/v1/keys", JSON, b'{"bitz":2048}', 400, "unknown_field"),
        ("POST", "/v1/tokens", JSON, b'{"sub":"a","tll":60}', 400, "unknown_field"),
        ("DELETE", "/v1/keys/" + kid, JSON, b'{"reson":"x"}', 400, "unknown_field"),
        ("POST", "/v1/keys/%s/sign" % kid, JSON, b'{"payload":"eA","extra":1}', 400,
         "unknown_field"),
        ("POST", "/v1/keys", JSON, b'{"bits":"2048"}', 400, "wrong_type"),
        ("POST", "/v1/keys", JSON, b'{"bits":2048.5}', 400, "wrong_type"),
        ("POST", "/v1/keys", JSON, b'{"label":7}', 400, "wrong_type"),
        ("POST", "/v1/tokens", JSON, b'{"ttl":"60"}', 400, "wrong_type"),
        ("POST", "/v1/tokens", JSON, b'{"claims":[]}', 400, "wrong_type"),
        ("POST", "/v1/tokens", JSON, b'{"sub":5}', 400, "wrong_type"),
        ("POST", "/v1/keys/%s/sign" % kid, JSON, b'{"payload":5}', 400, "wrong_type"),
        ("POST", "/v1/keys", JSON, b'{"bits":1024}', 400, "out_of_range"),
        ("POST", "/v1/keys", JSON, b'{"bits":99999999999999999999}', 400, "invalid_json"),
        ("POST", "/v1/keys", JSON, b'{"bits":-2048}', 400, "out_of_range"),
        ("POST", "/v1/keys", JSON, b'{"label":"' + b"x" * 200 + b'"}', 400, "out_of_range"),
        ("POST", "/v1/keys", JSON, b'{"label":"bad\\nline"}', 400, "invalid_label"),
        ("POST", "/v1/tokens", JSON, b'{"ttl":59}', 400, "ttl_out_of_range"),
        ("POST", "/v1/tokens", JSON, b'{"ttl":2592001}', 400, "ttl_out_of_range"),
        ("POST", "/v1/tokens", JSON, b'{"ttl":-1}', 400, "ttl_out_of_range"),
        ("POST", "/v1/tokens", JSON, b'{"nbf":-5}', 400, "out_of_range"),
        ("POST", "/v1/tokens", JSON, b'{"nbf":99999999999}', 400, "nbf_out_of_range"),
        ("POST", "/v1/tokens", JSON, b'{"kid":"ABC"}', 400, "invalid_kid"),
        ("POST", "/v1/tokens", JSON, b'{"kid":"%s"}' % KID0.encode(), 404, "key_not_found"),
        ("POST", "/v1/tokens", JSON, b'{"claims":{"exp":1}}', 400, "reserved_claim"),
        ("POST", "/v1/tokens", JSON, b'{"claims":' + b'{"a":' * 20 + b"1" + b"}" * 20 + b"}",
         400, "out_of_range"),
        ("POST", "/v1/keys/%s/sign" % kid, JSON, b"{}", 400, "missing_field"),
        ("POST", "/v1/keys/%s/sign" % kid, JSON, b'{"payload":"eA=="}', 400,
         "invalid_base64url"),
        ("POST", "/v1/keys/%s/sign" % kid, JSON, b'{"payload":"e+/A"}', 400,
         "invalid_base64url"),
        ("POST", "/v1/keys/%s/sign" % kid, JSON, b'{"payload":"e"}', 400, "invalid_base64url"),
        ("DELETE", "/v1/keys/" + kid, JSON, b'{"reason":""}', 400, "invalid_reason"),
        ("DELETE", "/v1/keys/" + kid, JSON, b'{"reason":"a\\u0007b"}', 400, "invalid_reason"),
        ("GET", "/v1/keys?state=bogus", {}, None, 400, "invalid_query"),
        ("GET", "/v1/revocations?after=x", {}, None, 400, "invalid_query"),
        ("GET", "/v1/revocations?after=-1", {}, None, 400, "invalid_query"),
        ("GET", "/v1/revocations?since=1", {}, None, 400, "invalid_query"),
    ]


def test_each_malformed_request_gets_its_own_error_and_server_stays_healthy(appliance, live_kid):
    all_cases = cases(live_kid)
    assert len(all_cases) >= 35
    failures = []
    for method, path, headers, body, status, code in all_cases:
        r = appliance.request(method, path, headers=dict(headers), data=body)
        got = None
        try:
            got = r.json()["error"]["code"]
            assert isinstance(r.json()["error"]["message"], str)
        except Exception:
            pass
        if r.status_code != status or got != code:
            failures.append((method, path, body and body[:60], r.status_code, got, status, code))
    assert not failures, "\n".join(map(repr, failures))
    assert appliance.get("/healthz", auth=False).status_code == 200
    assert appliance.get("/readyz", auth=False).status_code == 200
    # The target key survived every attack on it.
    assert appliance.get("/v1/keys/" + live_kid).json()["state"] == "active"


def test_garbage_request_line_gets_json_error_not_a_crash(appliance):
    out = conftest.raw_tls(appliance, b"\x00\x01GARBAGE\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 4"), out[:100]
    assert b'"error"' in out
    assert appliance.get("/healthz", auth=False).status_code == 200


def test_oversized_content_length_is_refused_without_reading_it(appliance):
    out = conftest.raw_tls(appliance, b"POST /v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
              + appliance.admin.encode()
              + b"\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{")
    assert out.startswith(b"HTTP/1.1 413"), out[:100]
    assert b"body_too_large" in out


# ---- HTTP framing (RFC 9112 sections 6 and 7) -------------------------------------------------
#
# With a load balancer in front, any byte the appliance frames differently from the balancer is
# a smuggled request. Every framing error gets 400 bad_framing and the connection closed (so no
# byte after it is ever read as a request), before the request reaches a handler: no key is
# created, whatever the route.

def exchange(appliance, data, timeout=10):
    """Sends raw bytes over TLS and reads until the server closes: (first response, the bytes
    after it, closed)."""
    import socket
    import ssl

    import openapi_check
    ctx = ssl.create_default_context(cafile=appliance.cacert)
    with socket.create_connection(("127.0.0.1", appliance.port), timeout=timeout) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            t.sendall(data)
            out, closed = b"", False
            try:
                while True:
                    chunk = t.recv(65536)
                    if not chunk:
                        closed = True
                        break
                    out += chunk
            except (socket.timeout, ssl.SSLError, ConnectionResetError) as e:
                closed = isinstance(e, (ConnectionResetError, ssl.SSLError))
    head, _, rest = out.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    first, after = out[:len(head) + 4 + length], rest[length:]
    conftest.OPENAPI_MISMATCHES.extend(openapi_check.check_raw(data, first))
    return first, after, closed


def admin_post(appliance, path, framing, body=b""):
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + appliance.admin.encode() + b"\r\nContent-Type: application/json\r\n" + framing
            + b"\r\n" + body)


def key_count(appliance):
    return appliance.get("/v1/keys").json()["count"]


def assert_refused(appliance, data, status, code, timeout=10):
    first, after, closed = exchange(appliance, data, timeout=timeout)
    assert first.startswith(b"HTTP/1.1 %d " % status), first[:200]
    assert b'"code":"%s"' % code.encode() in first, first
    assert b"Connection: close" in first, first
    assert closed, "the connection stayed open after %r" % first[:60]
    assert after == b"", "a second response came back: %r" % after[:200]


# A body that would create a key if it were ever read as one.
KEY_BODY = b'{"label":"smuggled"}'


def chunked(size_line, data=KEY_BODY, end=b"0\r\n\r\n"):
    return size_line + b"\r\n" + data + b"\r\n" + end


def test_chunk_size_that_is_not_hex_is_400_and_closes(appliance):
    before = key_count(appliance)
    for size in (b"ZZ", b"0x14", b" 14", b"-14", b"14 14", b"1" * 70):
        assert_refused(appliance, admin_post(appliance, "/v1/keys", b"Transfer-Encoding: chunked\r\n",
                                             chunked(size)), 400, "bad_framing")
    assert key_count(appliance) == before, "a malformed chunked body created a key"


def test_chunk_that_does_not_end_in_crlf_is_400_and_closes(appliance):
    before = key_count(appliance)
    body = b"%x\r\n" % len(KEY_BODY) + KEY_BODY + b"XX0\r\n\r\n"
    assert_refused(appliance, admin_post(appliance, "/v1/keys", b"Transfer-Encoding: chunked\r\n",
                                         body), 400, "bad_framing")
    assert key_count(appliance) == before


def test_malformed_chunk_extension_is_400_and_closes(appliance):
    before = key_count(appliance)
    for ext in (b";", b";=x", b"; a=\"unterminated", b";a b", b";a=b c"):
        size = b"%x" % len(KEY_BODY) + ext
        assert_refused(appliance, admin_post(appliance, "/v1/keys", b"Transfer-Encoding: chunked\r\n",
                                             chunked(size)), 400, "bad_framing")
    assert key_count(appliance) == before


def test_malformed_trailer_is_400_and_closes(appliance):
    before = key_count(appliance)
    size = b"%x" % len(KEY_BODY)
    for trailer in (b"no colon here\r\n\r\n", b"X-T : 1\r\n\r\n", b"X-T: 1\r\n folded\r\n\r\n",
                    b"X-T: \x01\r\n\r\n", b"X-T: 1\n\n"):
        assert_refused(appliance, admin_post(appliance, "/v1/keys", b"Transfer-Encoding: chunked\r\n",
                                             chunked(size, end=b"0\r\n" + trailer)),
                       400, "bad_framing")
    # A trailer section that never ends: refused at request_timeout_ms, never served.
    timeout = int(appliance.conf_value("request_timeout_ms") or 10000) / 1000
    assert_refused(appliance, admin_post(appliance, "/v1/keys", b"Transfer-Encoding: chunked\r\n",
                                         chunked(size, end=b"0\r\nX-T: 1\r\n")),
                   400, "bad_framing", timeout=timeout + 20)
    assert key_count(appliance) == before


def test_chunk_line_with_bare_cr_or_lf_is_400_and_closes(appliance):
    before = key_count(appliance)
    for size in (b"1\r4", b"14\n", b"14\r"):
        assert_refused(appliance, admin_post(appliance, "/v1/keys", b"Transfer-Encoding: chunked\r\n",
                                             chunked(size)), 400, "bad_framing")
    assert key_count(appliance) == before


def test_well_formed_chunked_body_with_extension_and_trailer_is_read(appliance):
    # The body reaches the handler (its bits are refused there, so no key is made), and the
    # connection carries the next request: the chunked body ended exactly where it said.
    body = b'{"bits":1024}'
    nxt = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for size, end in ((b"%x" % len(body), b"0\r\n\r\n"),
                      (b"%X;name=value;q=\"a \\\"b\\\"\" ; n = v" % len(body),
                       b"000;last\r\nX-Trailer: yes\r\nX-Empty:\r\n\r\n")):
        first, after, closed = exchange(appliance, admin_post(
            appliance, "/v1/keys", b"Transfer-Encoding: Chunked\r\n",
            chunked(size, body, end)) + nxt)
        assert first.startswith(b"HTTP/1.1 400 "), first[:200]
        assert b'"code":"out_of_range"' in first, first
        assert b"Connection: close" not in first, first
        assert after.startswith(b"HTTP/1.1 200 ") and after.endswith(b'{"status":"ok"}'), after


def test_malformed_chunked_body_after_an_early_answer_closes_and_answers_nothing_more(appliance):
    # 401 comes before the body is read; the body, read only to drop it, is malformed: the
    # connection closes there, and the request hidden after it is never answered.
    data = (b"POST /v1/keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"ZZ")
            + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    first, after, closed = exchange(appliance, data)
    assert first.startswith(b"HTTP/1.1 401 "), first[:200]
    assert closed and after == b"", after[:200]


def test_content_length_with_transfer_encoding_is_400_and_closes(appliance):
    before = key_count(appliance)
    body = chunked(b"%x" % len(KEY_BODY))
    for framing in (b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(body),
                    b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n"):
        assert_refused(appliance, admin_post(appliance, "/v1/keys", framing, body), 400, "bad_framing")
    assert key_count(appliance) == before


def test_transfer_encoding_other_than_chunked_is_400_and_closes(appliance):
    before = key_count(appliance)
    body = chunked(b"%x" % len(KEY_BODY))
    for te in (b"Transfer-Encoding: identity\r\nContent-Length: %d\r\n" % len(KEY_BODY),
               b"Transfer-Encoding: gzip\r\n", b"Transfer-Encoding: gzip, chunked\r\n",
               b"Transfer-Encoding: chunked, chunked\r\n", b"Transfer-Encoding: chunked;x=1\r\n",
               b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
               b"Transfer-Encoding: \r\n", b"Transfer-Encoding: xchunked\r\n"):
        assert_refused(appliance, admin_post(appliance, "/v1/keys", te, body), 400, "bad_framing")
    assert key_count(appliance) == before


def test_transfer_encoding_in_http_1_0_is_400_and_closes(appliance):
    before = key_count(appliance)
    data = admin_post(appliance, "/v1/keys", b"Transfer-Encoding: chunked\r\n",
                      chunked(b"%x" % len(KEY_BODY))).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    assert_refused(appliance, data, 400, "bad_framing")
    assert key_count(appliance) == before


def test_duplicate_or_non_numeric_content_length_is_400_and_closes(appliance):
    before = key_count(appliance)
    n = len(KEY_BODY)
    for cl in (b"Content-Length: %d\r\nContent-Length: %d\r\n" % (n, n),
               b"Content-Length: %d\r\nContent-Length: %d\r\n" % (n, n + 1),
               b"Content-Length: %d, %d\r\n" % (n, n), b"Content-Length: %dx\r\n" % n,
               b"Content-Length: +%d\r\n" % n, b"Content-Length: -1\r\n",
               b"Content-Length: \r\n", b"Content-Length: 0x14\r\n"):
        assert_refused(appliance, admin_post(appliance, "/v1/keys", cl, KEY_BODY), 400, "bad_framing")
    assert key_count(appliance) == before


def test_body_shorter_than_its_content_length_is_400_and_closes(appliance):
    # CivetWeb ends the read at request_timeout_ms with what came: never a body to serve.
    before = key_count(appliance)
    data = admin_post(appliance, "/v1/keys", b"Content-Length: %d\r\n" % (len(KEY_BODY) + 10),
                      KEY_BODY)
    timeout = int(appliance.conf_value("request_timeout_ms") or 10000) / 1000
    assert_refused(appliance, data, 400, "bad_framing", timeout=timeout + 20)
    assert key_count(appliance) == before


def test_body_on_get_is_400_and_closes(appliance):
    get = b"GET /v1/revocations HTTP/1.1\r\nHost: x\r\n"
    for framing, body in ((b"Content-Length: 5\r\n", b"GET /"),
                          (b"Transfer-Encoding: chunked\r\n", b"5\r\nGET /\r\n0\r\n\r\n")):
        assert_refused(appliance, get + framing + b"\r\n" + body, 400, "bad_framing")
    # An empty body is no body.
    first, _, _ = exchange(appliance, get + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 "), first[:200]


def test_folded_or_spaced_field_line_is_400_and_closes(appliance):
    # obs-fold and whitespace before the colon (RFC 9112 section 5): a balancer may read either
    # differently, so neither is a header the appliance guesses at.
    before = key_count(appliance)
    n = len(KEY_BODY)
    for lines in (b"X-Folded: a\r\n b\r\nContent-Length: %d\r\n" % n,
                  b"Content-Length: %d\r\n\tX-Folded: b\r\n" % n,
                  b"Content-Length : %d\r\n" % n, b"Content-Length\t: %d\r\n" % n):
        assert_refused(appliance, admin_post(appliance, "/v1/keys", lines, KEY_BODY), 400,
                       "bad_request")
    assert key_count(appliance) == before


def test_unsupported_http_version_is_505_and_closes(appliance):
    for version in (b"HTTP/2.0", b"HTTP/1.2", b"HTTP/3.0", b"HTTP/0.9"):
        assert_refused(appliance, b"GET /healthz " + version + b"\r\nHost: x\r\n\r\n", 505,
                       "http_version_not_supported")


def test_malformed_http_version_is_400_and_closes(appliance):
    for version in (b"HTTP/x.y", b"HTTP/1.1.1", b"HTTP/11", b"HTTP/"):
        assert_refused(appliance, b"GET /healthz " + version + b"\r\nHost: x\r\n\r\n", 400,
                       "bad_request")


def test_content_encoding_other_than_identity_is_415(appliance):
    before = key_count(appliance)
    for ce in (b"gzip", b"deflate", b"br", b"identity, gzip", b"x-unknown", b""):
        data = admin_post(appliance, "/v1/keys", b"Content-Encoding: %s\r\nContent-Length: %d\r\n"
                          % (ce, len(KEY_BODY)), KEY_BODY)
        first, _, _ = exchange(appliance, data)
        assert first.startswith(b"HTTP/1.1 415 "), (ce, first[:200])
        assert b'"code":"unsupported_content_encoding"' in first, first
    assert key_count(appliance) == before
    # identity is no coding at all: the body reaches the handler.
    body = b'{"bits":1024}'
    first, _, _ = exchange(appliance, admin_post(
        appliance, "/v1/keys", b"Content-Encoding: Identity\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n" % len(body), body))
    assert b'"code":"out_of_range"' in first, first


def test_no_framing_error_gets_a_5xx_and_the_appliance_stays_healthy(appliance):
    # The classes above, on a public route and an unrouted path: never a 5xx but 505.
    for path in ("/healthz", "/nope"):
        for framing in (b"Transfer-Encoding: gzip\r\n", b"Content-Length: 1\r\nContent-Length: 2\r\n",
                        b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n"):
            first, _, _ = exchange(appliance, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                                   + framing + b"\r\n{}")
            assert first.startswith(b"HTTP/1.1 4"), (path, framing, first[:200])
    assert appliance.get("/healthz", auth=False).status_code == 200
    assert appliance.get("/readyz", auth=False).status_code == 200


def test_framing_refusals_are_counted_as_unmatched_requests(appliance):
    # An operator sees smuggling attempts in /metrics: signd_http_requests_total, route
    # "unmatched", by status.
    import re

    def counted(status):
        text = appliance.get("/metrics").text
        m = re.search(r'^signd_http_requests_total\{route="unmatched",method="other",'
                      r'status="%d"\} (\d+)$' % status, text, re.M)
        return int(m.group(1)) if m else 0

    before400, before415 = counted(400), counted(415)
    assert_refused(appliance, admin_post(appliance, "/v1/keys",
                                         b"Content-Length: 2\r\nContent-Length: 2\r\n", b"{}"),
                   400, "bad_framing")
    exchange(appliance, admin_post(appliance, "/v1/keys",
                                   b"Content-Encoding: gzip\r\nContent-Length: 2\r\n", b"{}"))
    assert counted(400) == before400 + 1
    assert counted(415) == before415 + 1
