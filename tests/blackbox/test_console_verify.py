"""The web console's audit check (appliance/front/console/verify.js: the hash chain and the
checkpoints' RS256 signatures, recomputed with WebCrypto) against real trails, and against
the C verifier (`signd-provision audit-verify`, appliance/core/auditverify.c) on the same
export: both agree on an intact trail (events, last seq, last checkpoint), on a row edited
in appliance.db behind the appliance's back (the same broken seq), and the console names the
checkpoint whose signature was altered. Node runs the very module the browser loads; the
browser tests (Chromium) drive it through the page."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import TOP
from test_audit import (FAST, assert_broken_at, assert_verifies, db, export, head_seq,
                        lines_of, wait_checkpoint)

NODE = shutil.which("node") or shutil.which("nodejs")
DRIVER = os.path.join(TOP, "tests", "blackbox", "node", "verify_trail.mjs")


def console_verify(tmp_path, text, key_doc):
    n = len(list(tmp_path.glob("console-*.jsonl")))
    exp = tmp_path / ("console-%d.jsonl" % n)
    exp.write_text(text)
    key = tmp_path / ("console-key-%d.json" % n)
    key.write_text(json.dumps(key_doc))
    p = subprocess.run([NODE, DRIVER, str(exp), str(key)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def history(a):
    """Every kind of change, with details that are not plain ASCII (a subject's sub)."""
    kids = [a.create_key(label="console-%d" % i)["kid"] for i in range(3)]
    a.post("/v1/keys/%s/rotate" % kids[0], {"grace_seconds": 60})
    a.delete("/v1/keys/" + kids[1], {"reason": "console \"verify\" \\ test"})
    cred = a.create_credential("auditor", label="console")
    a.delete("/v1/credentials/" + cred["id"])
    for sub in ("caf\u00e9 \U0001F600 \u2028 <\t>", "plain/sub"):
        r = a.post("/v1/subjects/revoke", {"sub": sub}, auth=a.admin)
        assert r.status_code == 200, r.text
    assert a.get("/v1/keys", auth="sgd_0000000000000000_" + "A" * 43).status_code == 401
    return kids


@pytest.fixture
def trail(make_appliance):
    if NODE is None:
        pytest.fail("node is not installed: make deps installs nodejs (mk/packages.txt)")
    a = make_appliance(FAST)
    kids = history(a)
    text = wait_checkpoint(a, head_seq(a))
    key = a.get("/v1/audit/key", auth=False).json()
    return a, kids, text, key


def test_an_intact_trail_verifies_in_the_console_as_in_the_c_verifier(trail, tmp_path):
    a, _, text, key = trail
    assert any("\\u" in line for line in text.splitlines()), "no escaped character in the trail"
    v = console_verify(tmp_path, text, key)
    assert v["ok"] is True and v["brokenSeq"] == 0 and v["why"] == "", v
    c = assert_verifies(tmp_path, text, key["pem"])
    assert (v["events"], v["lastSeq"], v["lastCheckpoint"]) == c
    cps = [l["seq"] for l in lines_of(text) if l["type"] == "checkpoint"]
    assert [cp["seq"] for cp in v["checkpoints"]] == cps and len(cps) >= 2
    assert all(cp["ok"] for cp in v["checkpoints"])


def test_a_row_edited_in_the_database_is_broken_at_the_same_seq_in_both(trail, tmp_path):
    a, kids, _, _ = trail
    a.stop()
    with db(a) as c:
        target = c.execute("SELECT seq FROM audit WHERE action = 'key.created' AND kid = ?",
                           (kids[2],)).fetchone()[0]
        c.execute("UPDATE audit SET details = ? WHERE seq = ?",
                  ('{"bits":2048,"label":"innocent"}', target))
    a.start()
    text = export(a)
    key = a.get("/v1/audit/key", auth=False).json()
    v = console_verify(tmp_path, text, key)
    assert v["ok"] is False and v["brokenSeq"] == target, v
    assert "hash does not match" in v["why"]
    assert_broken_at(tmp_path, text, key["pem"], target)
    # Checkpoints before the edited row still vouch for what they cover; none after it.
    for cp in v["checkpoints"]:
        assert cp["ok"] == (cp["seq"] < target), cp


def test_a_checkpoint_whose_signature_was_altered_is_named(trail, tmp_path):
    _, _, text, key = trail
    lines = text.splitlines()
    i = next(n for n, l in enumerate(lines) if json.loads(l)["type"] == "checkpoint")
    cp = json.loads(lines[i])
    head, payload, sig = cp["jws"].split(".")
    cp["jws"] = ".".join((head, payload, ("B" if sig[0] == "A" else "A") + sig[1:]))
    lines[i] = json.dumps(cp, separators=(",", ":"))
    v = console_verify(tmp_path, "\n".join(lines) + "\n", key)
    assert v["ok"] is False and v["brokenSeq"] == 0, v
    bad = [c for c in v["checkpoints"] if not c["ok"]]
    assert [c["seq"] for c in bad] == [cp["seq"]]
    assert "signature does not verify" in bad[0]["why"]
