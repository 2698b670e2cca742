"""docs/openapi.yaml against the appliance itself: the router's table (`signd --routes`),
the error table (api/common.c), and real responses. conftest.py checks every response of
every black-box test against the spec; here every operation is called at least once for
each of its success statuses, so none goes unchecked, and the checker is shown to catch a
response that drifts from the spec."""
import json
import os
import re
import subprocess

import jsonschema
import pytest
import requests
import yaml

import openapi_check
from conftest import SIGND, TOP

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def spec():
    with open(openapi_check.SPEC_PATH) as f:
        return yaml.safe_load(f)


def router_routes():
    """{(METHOD, template): set(roles)} as the binary's route table says."""
    out = subprocess.run([SIGND, "--routes"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    routes = {}
    for line in out.splitlines():
        method, template, roles = line.split(" ")
        assert (method, template) not in routes, "route listed twice: " + line
        routes[(method, template)] = set(roles.split(","))
    assert routes, "signd --routes printed nothing"
    return routes


def spec_routes():
    routes = {}
    for template, item in spec()["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                routes[(method.upper(), template)] = set(op["x-roles"])
    return routes


def test_spec_lists_exactly_the_routers_routes():
    router, documented = router_routes(), spec_routes()
    assert sorted(set(router) - set(documented)) == [], "routed but not in docs/openapi.yaml"
    assert sorted(set(documented) - set(router)) == [], "in docs/openapi.yaml but not routed"


def test_spec_roles_are_the_routers_roles():
    router, documented = router_routes(), spec_routes()
    differ = {r: (documented[r], router[r]) for r in router if documented.get(r) != router[r]}
    assert differ == {}, "(spec x-roles, router roles) differ"


def test_public_operations_and_only_they_need_no_credential():
    for template, item in spec()["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            public = op["x-roles"] == ["public"]
            assert (op.get("security") == []) == public, (method, template)
            # Authenticated operations document 401 and 403; public ones cannot answer them.
            assert ("401" in op["responses"]) == (not public), (method, template)
            assert ("403" in op["responses"]) == (not public), (method, template)


def test_routes_print_one_line_per_route_and_exit_zero():
    p = subprocess.run([SIGND, "--routes"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stderr == ""
    for line in p.stdout.splitlines():
        assert re.fullmatch(r"(GET|HEAD|POST|DELETE) /[^ ]* (public|[a-z]+(,[a-z]+)*)", line), line


def error_table():
    """{code: status} from api/common.c, the one table of the appliance's errors."""
    text = open(os.path.join(TOP, "api", "common.c")).read()
    table = dict((code, int(status)) for status, code in
                 re.findall(r'\[API_ERR_[A-Z0-9_]+\]\s*=\s*\{(\d+),\s*"([a-z0-9_]+)"\}', text))
    assert len(table) > 30
    return table


def test_spec_error_codes_are_the_error_table():
    s = spec()
    assert s["components"]["x-error-codes"] == error_table()
    assert sorted(s["components"]["schemas"]["ErrorCode"]["enum"]) == sorted(error_table())


def test_spec_schemas_are_valid_json_schema_and_every_ref_resolves():
    s = spec()
    for name, schema in s["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)
    resolver = jsonschema.RefResolver.from_schema(s)
    refs = re.findall(r'\$ref: "([^"]+)"', open(openapi_check.SPEC_PATH).read())
    assert refs
    for ref in set(refs):
        resolver.resolve(ref)
    # Every status an operation lists has a description, and a body schema unless 304.
    for template, item in s["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            for status, resp in op["responses"].items():
                resp = openapi_check.deref(resp)
                assert resp.get("description"), (method, template, status)
                if status != "304":
                    assert resp.get("content"), (method, template, status)


# ---- real responses ------------------------------------------------------------------------

def seen_statuses(a, calls):
    """Makes each call (method, path, kwargs) and returns {(METHOD, template): {status}}."""
    seen = {}
    for method, path, kw in calls:
        r = a.request(method, path, **kw)
        template = openapi_check.template_of(path.split("?")[0])
        seen.setdefault((method, template), set()).add(r.status_code)
    return seen


def test_every_operation_answers_as_the_spec_says(make_appliance):
    """Each documented success status is produced once; conftest validates each body."""
    a = make_appliance()
    auditor = a.create_credential("auditor")["secret"]
    key = a.create_key(label="openapi")
    kid = key["kid"]
    other = a.create_key()["kid"]
    cred = a.create_credential("signer", kids=[kid], max_ttl=600)
    redeemer = a.create_credential("redeemer")["secret"]
    minted = a.post("/v1/tokens", {"kid": kid, "revocable": True, "single_use": True,
                                   "origin": "https://a.example", "aud": "openapi"})
    assert minted.status_code == 200, minted.text
    minted = minted.json()
    status_path = "/v1/status-lists/%d" % minted["status"]["list"]
    jwks = a.get("/.well-known/jwks.json", auth=False)
    calls = [
        ("GET", "/.well-known/jwks.json",
         {"auth": False, "headers": {"If-None-Match": jwks.headers["ETag"]}}),
        ("GET", "/v1/keys", {}),
        ("GET", "/v1/keys?state=active", {"auth": auditor}),
        ("GET", "/v1/keys/" + kid, {}),
        ("POST", "/v1/keys/%s/sign" % kid, {"json": {"payload": "aGVsbG8"}}),
        ("POST", "/v1/tokens", {"json": {"kid": kid, "sub": "v", "claims": {"a": [1]}}}),
        ("POST", "/v1/tokens/redeem", {"auth": redeemer, "json": {"token": minted["token"], "origin": "https://a.example",
                                    "aud": "openapi"}}),
        ("DELETE", "/v1/tokens/" + minted["jti"], {"auth": a.admin}),
        ("POST", "/v1/subjects/revoke", {"json": {"sub": "openapi", "before": minted["iat"]},
                                         "auth": a.admin}),
        ("POST", "/v1/keys/%s/rotate" % other, {"json": {"grace_seconds": 600}}),
        ("GET", "/v1/keys/" + other, {}),
        ("DELETE", "/v1/keys/" + kid, {"json": {"reason": "openapi test"}}),
        ("GET", "/v1/keys/" + kid, {}),
        ("GET", "/v1/credentials", {}),
        ("GET", "/v1/credentials/" + cred["id"], {}),
        ("DELETE", "/v1/credentials/" + cred["id"], {}),
        ("GET", "/v1/credentials/" + cred["id"], {}),
        ("GET", "/v1/audit?limit=2", {"auth": auditor}),
        ("GET", "/v1/audit/export", {"auth": auditor}),
        ("GET", "/v1/audit/key", {"auth": False}),
        ("GET", "/v1/revocations", {"auth": False}),
        ("GET", "/v1/revocations?after=0", {"auth": False}),
        ("GET", "/v1/revocations/feed", {"auth": False}),
        ("GET", "/v1/revocations/key", {"auth": False}),
        ("GET", "/healthz", {"auth": False}),
        ("GET", "/readyz", {"auth": False}),
        ("GET", "/v1/whoami", {"auth": auditor}),
        ("GET", "/console", {"auth": False, "allow_redirects": False}),
        ("HEAD", "/console", {"auth": False, "allow_redirects": False}),
    ]
    for path in ("/console/", "/console/app.js"):
        etag = a.get(path, auth=False).headers["ETag"]
        for method in ("GET", "HEAD"):
            calls.append((method, path, {"auth": False}))
            calls.append((method, path, {"auth": False, "headers": {"If-None-Match": etag}}))
    if ("GET", "/metrics") in router_routes():
        calls.append(("GET", "/metrics", {"auth": auditor}))
    seen = seen_statuses(a, calls)
    for path in ("/.well-known/jwks.json", "/v1/revocations", "/v1/revocations/feed",
                 status_path):
        template = openapi_check.template_of(path)
        r = a.get(path, auth=False)
        seen.setdefault(("GET", template), set()).add(r.status_code)
        etag = r.headers["ETag"]
        r = a.get(path, auth=False, headers={"If-None-Match": etag})
        assert r.content == b""
        seen[("GET", template)].add(r.status_code)
    r = a.get("/v1/revocations/events", auth=False, stream=True)
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/event-stream"
    r.close()
    seen[("GET", "/v1/revocations/events")] = {200}
    seen[("POST", "/v1/keys")] = {201}
    seen[("POST", "/v1/credentials")] = {201}
    for (method, template), ops in spec_routes().items():
        if (method, template) not in router_routes():
            continue  # test_spec_lists_exactly_the_routers_routes says which
        op = spec()["paths"][template][method.lower()]
        want = {int(s) for s in op["responses"] if int(s) < 400}
        assert want <= seen.get((method, template), set()), (method, template, seen)


@pytest.mark.parametrize("method,path,kw,status", [
    ("GET", "/no/such/route", {}, 404),
    ("PUT", "/v1/keys", {}, 405),
    ("GET", "/v1/keys/NOT-A-KID", {}, 400),
    ("POST", "/v1/keys", {"data": b"{", "headers": {"Content-Type": "application/json"}}, 400),
    ("POST", "/v1/keys", {"json": {"bits": 2048, "bits2": 1}}, 400),
    ("POST", "/v1/keys", {"data": b"{}", "headers": {"Content-Type": "text/plain"}}, 415),
    ("GET", "/v1/keys", {"auth": "sgd_0000000000000000_" + "A" * 43}, 401),
    ("POST", "/v1/tokens", {"auth": None, "json": {}}, 403),
    ("GET", "/v1/keys/" + "0" * 32, {}, 404),
    ("GET", "/v1/credentials/xyz", {}, 400),
    ("GET", "/v1/audit?bogus=1", {}, 400),
    ("GET", "/v1/revocations?after=x", {"auth": False}, 400),
    ("GET", "/v1/revocations/events", {"auth": False, "headers": {"Last-Event-ID": "x"}}, 400),
    ("GET", "/v1/status-lists/01", {"auth": False}, 400),
    ("GET", "/v1/status-lists/1023", {"auth": False}, 404),
    ("POST", "/v1/tokens/redeem", {"auth": None, "json": {"token": "x.y.z"}}, 403),
    ("DELETE", "/v1/tokens/bad!jti", {}, 400),
    ("DELETE", "/v1/tokens/" + "0" * 32, {}, 404),
])
def test_error_responses_match_the_spec(appliance, method, path, kw, status):
    kw = dict(kw)
    if kw.get("auth", True) is None:
        kw["auth"] = appliance.admin  # an admin on a signer's route: 403 forbidden
    r = appliance.request(method, path, **kw)
    assert r.status_code == status, r.text
    assert openapi_check.check(method, path, r.status_code, r.headers.get("Content-Type"),
                               r.content) == []


def test_the_checker_catches_a_response_that_drifts_from_the_spec(appliance):
    """The same real responses, doctored: an extra field, a missing one, a wrong type, an
    undocumented status, a code with the wrong status, a wrong media type."""
    kid = appliance.create_key()["kid"]
    r = appliance.get("/v1/keys/" + kid)
    good = r.json()
    ct = r.headers["Content-Type"]
    path = "/v1/keys/" + kid
    assert openapi_check.check("GET", path, 200, ct, r.content) == []
    for doc in ({**good, "private_key": "x"},
                {k: v for k, v in good.items() if k != "jwk"},
                {**good, "bits": "2048"},
                {**good, "state": "revoked"}):
        assert openapi_check.check("GET", path, 200, ct, json.dumps(doc).encode()) != []
    assert openapi_check.check("GET", path, 201, ct, r.content) != []
    assert openapi_check.check("GET", path, 200, "text/plain", r.content) != []
    err = appliance.get("/v1/keys/" + "0" * 32)
    assert err.status_code == 404
    assert openapi_check.check("GET", path, 404, ct, err.content) == []
    assert openapi_check.check("GET", path, 409, ct, err.content) != []
    assert openapi_check.check("GET", "/nowhere", 200, ct, r.content) != []
    feed = appliance.get("/v1/revocations/feed", auth=False)
    fct = feed.headers["Content-Type"]
    assert openapi_check.check("GET", "/v1/revocations/feed", 200, fct, feed.content) == []
    header, payload, sig = feed.text.split(".")
    doctored = header + "." + payload[:-4] + "." + sig
    assert openapi_check.check("GET", "/v1/revocations/feed", 200, fct,
                               doctored.encode()) != []


def test_module_level_requests_calls_are_checked_too(appliance):
    """conftest wraps requests.Session.send, which requests.get() uses as well."""
    import conftest
    before = len(conftest.OPENAPI_MISMATCHES)
    requests.get(appliance.url + "/healthz", verify=appliance.cacert, timeout=30)
    assert len(conftest.OPENAPI_MISMATCHES) == before
    # A response the spec does not describe (a 200 on a path it lacks cannot be made, so
    # check that the hook sees responses at all through a doctored spec lookup).
    original = openapi_check.check
    seen = []
    openapi_check.check = lambda *args: seen.append(args) or []
    try:
        requests.get(appliance.url + "/healthz", verify=appliance.cacert, timeout=30)
    finally:
        openapi_check.check = original
    assert seen and seen[0][0] == "GET" and seen[0][2] == 200
