"""Bad input: each malformed request gets its own 4xx and a JSON error with a stable code,
and the appliance stays healthy after all of them."""

import pytest

import conftest

KID0 = "0" * 32
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def live_kid(appliance):
    return appliance.create_key(label="malformed-target")["kid"]


def cases(kid):
    """(method, path, headers, body bytes, expected status, expected code)."""
    big = b'{"payload":"' + b"A" * (70 * 1024) + b'"}'
    return [
        ("GET", "/nope", {}, None, 404, "not_found"),
        ("GET", "/v1", {}, None, 404, "not_found"),
        ("GET", "/v1/keys/%s/nope" % kid, {}, None, 404, "not_found"),
        ("PUT", "/v1/keys", JSON, b"{}", 405, "method_not_allowed"),
        ("DELETE", "/v1/tokens", JSON, b"{}", 405, "method_not_allowed"),
        ("POST", "/.well-known/jwks.json", JSON, b"{}", 405, "method_not_allowed"),
        ("PATCH", "/v1/keys/" + kid, JSON, b"{}", 405, "method_not_allowed"),
        ("GET", "/v1/keys/XYZ", {}, None, 400, "invalid_kid"),
        ("GET", "/v1/keys/" + "A" * 32, {}, None, 400, "invalid_kid"),
        ("GET", "/v1/keys/" + "0" * 31, {}, None, 400, "invalid_kid"),
        ("GET", "/v1/keys/" + "0" * 33, {}, None, 400, "invalid_kid"),
        ("POST", "/v1/keys/%s/sign" % ("g" * 32), JSON, b'{"payload":"eA"}', 400, "invalid_kid"),
        ("GET", "/v1/keys/" + KID0, {}, None, 404, "key_not_found"),
        ("DELETE", "/v1/keys/" + KID0, JSON, b"{}", 404, "key_not_found"),
        ("POST", "/v1/keys/%s/sign" % KID0, JSON, b'{"payload":"eA"}', 404, "key_not_found"),
        ("POST", "/v1/keys", JSON, big, 413, "body_too_large"),
        ("POST", "/v1/keys", {"Content-Type": "text/plain"}, b"{}", 415, "unsupported_media_type"),
        ("POST", "/v1/tokens", {"Content-Type": "application/x-www-form-urlencoded"}, b"a=b", 415,
         "unsupported_media_type"),
        ("POST", "/v1/keys", JSON, b"{", 400, "invalid_json"),
        ("POST", "/v1/keys", JSON, b"{}{}", 400, "invalid_json"),
        ("POST", "/v1/keys", JSON, b"nul", 400, "invalid_json"),
        ("POST", "/v1/keys", JSON, b'{"label":"a\\u0000b"}', 400, "invalid_json"),
        ("POST", "/v1/keys", JSON, b'{"label":"\xff\xfe"}', 400, "invalid_utf8"),
        ("POST", "/v1/keys", JSON, b'{"bits":2048,"bits":4096}', 400, "duplicate_key"),
        ("POST", "/v1/tokens", JSON, b'{"sub":"a","sub":"b"}', 400, "duplicate_key"),
        ("POST", "/v1/keys", JSON, b"[]", 400, "not_an_object"),
        ("POST", "/v1/keys", JSON, b'"str"', 400, "not_an_object"),
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
        ("POST", "/v1/tokens", JSON, b'{"nbf":99999999999}', 400, "out_of_range"),
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
    assert len(all_cases) >= 40
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
