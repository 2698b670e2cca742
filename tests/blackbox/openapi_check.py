"""Holds the appliance's responses to docs/openapi.yaml.

check(method, path, status, content_type, body) returns the list of ways one response
differs from the spec ([] when it matches):
  - a path the router knows (a template of the spec's paths) and a method the spec lists:
    the status must be one of the operation's responses, the media type one it declares,
    and a JSON body must validate against its schema (JSON Lines: each line against
    x-line-schema; a compact JWS: its payload against x-jws-payload-schema);
  - anything else (an unrouted path, an unlisted method): an error response that validates
    against the Error schema;
  - every error body's code must have the status x-error-codes gives it.

conftest.py calls it for every response from an appliance the tests started.
"""
import base64
import json
import os
import re
from urllib.parse import unquote, urlsplit

import jsonschema
import yaml

SPEC_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "openapi.yaml")

_spec = None
_resolver = None
_templates = None


def spec():
    global _spec, _resolver, _templates
    if _spec is None:
        with open(SPEC_PATH) as f:
            _spec = yaml.safe_load(f)
        _resolver = jsonschema.RefResolver.from_schema(_spec)
        _templates = []
        for template in _spec["paths"]:
            rx = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
            _templates.append((re.compile("^" + rx + "$"), template))
    return _spec


def deref(node):
    """node, or what its $ref points to (within the spec)."""
    spec()
    while isinstance(node, dict) and "$ref" in node:
        node = _resolver.resolve(node["$ref"])[1]
    return node


def schema_errors(schema, value):
    """The messages of every way value fails schema (a node of the spec)."""
    spec()
    v = jsonschema.Draft202012Validator(schema, resolver=_resolver,
                                        format_checker=jsonschema.FormatChecker())
    return ["%s at %s" % (e.message[:300], "/".join(str(p) for p in e.absolute_path) or "(root)")
            for e in v.iter_errors(value)]


def template_of(path):
    """The spec's path template that path (already percent-decoded) matches, or None."""
    spec()
    for rx, template in _templates:
        if rx.match(path):
            return template
    return None


def _media_type(content_type):
    return (content_type or "").split(";")[0].strip().lower()


def _b64url_json(part):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def _check_body(media, node, body):
    """Errors of one body (bytes) against a media type object of the spec."""
    schema = node.get("schema", {})
    if media == "application/json":
        try:
            doc = json.loads(body)
        except ValueError as e:
            return ["body is not JSON: %s" % e]
        return schema_errors(schema, doc)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return ["body is not UTF-8"]
    errors = schema_errors(schema, text)
    if "x-line-schema" in node:
        for n, line in enumerate(text.splitlines(), 1):
            try:
                doc = json.loads(line)
            except ValueError as e:
                errors.append("line %d is not JSON: %s" % (n, e))
                continue
            errors += ["line %d: %s" % (n, m) for m in schema_errors(node["x-line-schema"], doc)]
    if "x-jws-payload-schema" in node and not errors:
        try:
            payload = _b64url_json(text.split(".")[1])
        except ValueError as e:
            return ["JWS payload is not base64url JSON: %s" % e]
        errors += ["payload: %s" % m for m in schema_errors(node["x-jws-payload-schema"], payload)]
    return errors


def _check_error(status, content_type, body):
    s = spec()
    if status < 400:
        return ["status %d where the spec has no operation (only errors are expected)" % status]
    if _media_type(content_type) != "application/json":
        return ["error response with Content-Type %r" % content_type]
    if body is None:
        return []
    try:
        doc = json.loads(body)
    except ValueError as e:
        return ["error body is not JSON: %s" % e]
    errors = schema_errors({"$ref": "#/components/schemas/Error"}, doc)
    if not errors:
        code = doc["error"]["code"]
        want = s["components"]["x-error-codes"].get(code)
        if want != status:
            errors.append("error code %s came with status %d; x-error-codes says %s"
                          % (code, status, want))
    return errors


def check(method, url_or_path, status, content_type, body):
    """[] when the response matches the spec, else what differs (strings). body None: not
    read (a streamed response), only its status and media type are checked."""
    s = spec()
    if method.upper() == "HEAD":
        body = None  # a HEAD answer has no body, whatever its Content-Length says
    path = unquote(urlsplit(url_or_path).path)
    template = template_of(path)
    op = s["paths"][template].get(method.lower()) if template else None
    if op is None:
        return _check_error(status, content_type, body)
    responses = op.get("responses", {})
    resp = responses.get(str(status), responses.get("default"))
    if resp is None:
        return ["%s %s: status %d is not in the spec (it lists %s)"
                % (method, template, status, ", ".join(sorted(responses)))]
    resp = deref(resp)
    content = resp.get("content")
    if not content:
        return [] if not body else ["%s %s %d: the spec has no body, got %d bytes"
                                    % (method, template, status, len(body))]
    media = _media_type(content_type)
    if media not in content:
        return ["%s %s %d: Content-Type %r, the spec has %s"
                % (method, template, status, content_type, ", ".join(content))]
    if method.upper() == "HEAD" or body is None:
        return []
    errors = ["%s %s %d: %s" % (method, template, status, m)
              for m in _check_body(media, content[media], body)]
    if status >= 400 and not errors:
        errors += ["%s %s: %s" % (method, template, m)
                   for m in _check_error(status, content_type, body)]
    return errors


def check_raw(request, response):
    """check() for a request and response as bytes on the wire (tests that write raw
    HTTP): the request line names the method and path ("" for garbage: then only an error
    document is expected); the body is what follows the headers."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    if not m:
        return ["no HTTP status line in %r" % response[:60]]
    headers = dict(l.split(":", 1) for l in lines[1:] if ":" in l)
    content_type = next((v.strip() for k, v in headers.items()
                         if k.strip().lower() == "content-type"), None)
    first = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    method, path = (first[0], first[1]) if len(first) == 3 else ("", "/\x00unparsed")
    return check(method, path, int(m.group(1)), content_type, body)
