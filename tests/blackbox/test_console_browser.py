"""The web console (/console/) driven in a real headless Chromium, as a person would.

One appliance and one browser for the module (browser.py: Debian's chromium and
chromedriver, started here, the appliance's certificate trusted by its key alone). The
tests run in file order and build on each other the way a session at the console does:
a wrong secret, the admin's keys, credentials, tokens, the live revocations and health,
then an auditor's read-only session and "verify" on the intact trail and on one edited
behind the appliance's back. The last test reads the browser's performance log of the
whole session: the page's Content-Security-Policy and no request to another origin.

The element ids are the console's DOM contract (docs/console.md). Screenshots of each view
go to the test's output directory, and also to SIGND_SCREENSHOT_DIR when it is set (make
console-screenshots: docs/console/*.png).
"""
import json
import os
import shutil
import sqlite3
import ssl
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

import browser
from conftest import Appliance, free_port

# The audit writer flushes every second and checkpoints every 5 events or every second, so
# "verify" has checkpoints to check within the module's time.
FAST_AUDIT = {"audit_flush_seconds": 1, "audit_checkpoint_events": 5,
              "audit_checkpoint_seconds": 1}
WAIT = 15           # seconds any one step of the page may take on a loaded machine


# ---- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app():
    d = tempfile.mkdtemp(prefix="signd-test-")
    a = Appliance(d, FAST_AUDIT).start()
    yield a
    a.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def web(app, tmp_path_factory):
    b = browser.Browser(str(tmp_path_factory.mktemp("chromium")), free_port(),
                        trust_cert=app.cacert).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """shots(name): a PNG of the page now, in the test output directory (and in
    SIGND_SCREENSHOT_DIR when set); the list of names written is shots.names."""
    out = [str(tmp_path_factory.mktemp("screenshots"))]
    if os.environ.get("SIGND_SCREENSHOT_DIR"):
        out.append(os.path.abspath(os.environ["SIGND_SCREENSHOT_DIR"]))
    names = []

    def shot(web, name, **kw):
        web.screenshot(*[os.path.join(d, name + ".png") for d in out], **kw)
        names.append(name + ".png")

    shot.names = names
    shot.dirs = out
    yield shot
    print("\nscreenshots in %s: %s" % (" and ".join(out), " ".join(names)))


# ---- page helpers ------------------------------------------------------------------------

def css(web, selector):
    return web.driver.find_elements(By.CSS_SELECTOR, selector)


def one(web, selector):
    return web.driver.find_element(By.CSS_SELECTOR, selector)


def until(web, what, message, timeout=WAIT):
    """Polls what(driver) until truthy (stale elements while the page redraws are retried)."""
    def probe(driver):
        try:
            return what(driver)
        except (NoSuchElementException, StaleElementReferenceException):
            return False
    return WebDriverWait(web.driver, timeout, poll_frequency=0.05).until(probe, message)


def visible(web, selector, timeout=WAIT):
    return until(web, lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, selector)
                                      if e.is_displayed()), False),
                 "%s never became visible" % selector, timeout)


def typed(web, selector, text):
    e = one(web, selector)
    e.clear()
    e.send_keys(text)
    return e


def choose(web, selector, value):
    """Sets a select (or an input standing in for one) to value, as a person picking it."""
    e = one(web, selector)
    if e.tag_name == "select":
        # An option's value is its text when it has no value attribute.
        sel = Select(e)
        try:
            sel.select_by_value(str(value))
        except NoSuchElementException:
            sel.select_by_visible_text(str(value))
    else:
        e.clear()
        e.send_keys(str(value))


def error_shown(web):
    e = visible(web, "#error")
    return e.get_attribute("data-code"), e.get_attribute("data-request-id"), e.text


def open_console(web, app):
    """The console with no one signed in (sessionStorage of the tab cleared)."""
    web.driver.get(app.url + "/console/")
    web.driver.execute_script("sessionStorage.clear()")
    web.driver.get(app.url + "/console/")
    visible(web, "form#signin")


def sign_in(web, app, secret, role):
    open_console(web, app)
    typed(web, "#secret", secret)
    one(web, "#signin-button").click()
    who = visible(web, "#whoami")
    until(web, lambda d: who.get_attribute("data-role") == role,
          "signed in as %s" % role)
    return who


def open_view(web, name):
    one(web, 'nav#nav a[data-view="%s"]' % name).click()
    section = visible(web, "section#view-" + name)
    others = [s for s in css(web, "section[id^=view-]")
              if s.get_attribute("id") != "view-" + name and s.is_displayed()]
    assert not others, "only the current view is shown"
    return section


def row(web, table, attr, value):
    return css(web, 'table#%s tr[%s="%s"]' % (table, attr, value))


def cell(web, table, attr, value, cls):
    found = css(web, 'table#%s tr[%s="%s"] td.%s' % (table, attr, value, cls))
    return found[0].text.strip() if found else None


def kids_in_table(web):
    return [r.get_attribute("data-kid") for r in css(web, "table#keys-table tr[data-kid]")]


def api_key(app, kid):
    r = app.get("/v1/keys/" + kid)
    assert r.status_code == 200, r.text
    return r.json()


def export_lines(app):
    r = app.get("/v1/audit/export")
    assert r.status_code == 200, r.text
    return [json.loads(l) for l in r.text.splitlines() if l]


def wait_checkpoint_at_head(app):
    """Waits until a checkpoint covers the newest event; returns the checkpoints' seqs."""
    deadline = time.monotonic() + 20
    while True:
        lines = export_lines(app)
        head = max(l["seq"] for l in lines if l["type"] == "event")
        cps = [l["seq"] for l in lines if l["type"] == "checkpoint"]
        if cps and cps[-1] >= head:
            return cps
        assert time.monotonic() < deadline, "no checkpoint reached seq %d" % head
        time.sleep(0.2)


STATE = {}   # what one test leaves for the next (kids, credentials): the session's story


# ---- the browser itself --------------------------------------------------------------------

class _Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"an impostor"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_browser_trusts_the_appliance_key_and_no_other(web, app, tmp_path):
    """The harness pins the appliance certificate's key: the appliance loads, and a server
    with another self-signed certificate for the same name is refused (the browser does not
    accept every certificate, as --ignore-certificate-errors would)."""
    web.driver.get(app.url + "/healthz")
    assert '"status":"ok"' in web.driver.page_source

    key, cert = str(tmp_path / "key.pem"), str(tmp_path / "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = HTTPServer(("127.0.0.1", free_port()), _Hello)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = "https://127.0.0.1:%d/" % srv.server_address[1]
        web.mark()
        web.driver.get(url)
        assert "an impostor" not in web.driver.page_source
        failed = [m["params"].get("errorText", "") for m in web.perf + web.read_perf()
                  if m["method"] == "Network.loadingFailed"]
        assert any("CERT" in f for f in failed), failed
    finally:
        srv.shutdown()
        srv.server_close()
        t.join()
    web.driver.get("about:blank")
    web.mark()      # the session's log starts here: the console's requests alone


# ---- signing in ------------------------------------------------------------------------------

def test_a_wrong_secret_shows_the_api_401_code_and_request_id(web, app, shots):
    wrong = "sgd_" + "0" * 16 + "_" + "A" * 43
    r = app.get("/v1/keys", auth=wrong)
    assert r.status_code == 401
    code = r.json()["error"]["code"]

    open_console(web, app)
    shots(web, "signin")
    typed(web, "#secret", wrong)
    one(web, "#signin-button").click()
    shown, rid, text = error_shown(web)
    assert shown == code
    assert code in text and rid and rid in text
    assert not [e for e in css(web, "#whoami") if e.is_displayed()]
    shots(web, "signin-error")


# ---- admin: keys ---------------------------------------------------------------------------

def test_admin_creates_a_key_and_sees_its_jwk_pem_and_history(web, app, shots):
    who = sign_in(web, app, app.admin, "admin")
    assert "admin" in who.text
    assert css(web, "button#signout")
    views = {a.get_attribute("data-view") for a in css(web, "nav#nav a[data-view]")}
    assert views == {"keys", "credentials", "tokens", "revocations", "audit", "health"}

    open_view(web, "keys")
    before = set(kids_in_table(web))
    typed(web, "#key-label", "console-first")
    choose(web, "#key-bits", 2048)
    typed(web, "#key-count", "1")
    one(web, "#key-create-button").click()
    new = until(web, lambda d: set(kids_in_table(web)) - before, "the new key's row")
    (kid,) = new
    assert cell(web, "keys-table", "data-kid", kid, "label") == "console-first"
    assert cell(web, "keys-table", "data-kid", kid, "bits") == "2048"
    assert cell(web, "keys-table", "data-kid", kid, "state") == "active"
    assert cell(web, "keys-table", "data-kid", kid, "created")
    assert api_key(app, kid)["label"] == "console-first"

    row(web, "keys-table", "data-kid", kid)[0].click()
    detail = visible(web, '#key-detail[data-kid="%s"]' % kid)
    until(web, lambda d: kid in one(web, "#key-jwk").text, "the JWK names the kid")
    assert "BEGIN PUBLIC KEY" in one(web, "#key-pem").text
    until(web, lambda d: css(web, '#key-history li[data-action="key.created"]'),
          "the key.created event in the key's history")
    assert detail.is_displayed()
    STATE["first"] = kid
    shots(web, "keys")


def test_admin_rotates_the_key_with_a_grace(web, app, shots):
    kid = STATE["first"]
    before = set(kids_in_table(web))
    typed(web, "#rotate-grace", "600")
    one(web, "#key-rotate").click()
    (successor,) = until(web, lambda d: set(kids_in_table(web)) - before, "the successor's row")
    until(web, lambda d: cell(web, "keys-table", "data-kid", kid, "state") == "retiring",
          "the old key shown retiring")
    assert cell(web, "keys-table", "data-kid", successor, "state") == "active"
    assert api_key(app, kid)["state"] == "retiring"
    assert api_key(app, successor)["state"] == "active"
    STATE["successor"] = successor
    shots(web, "keys-rotated")


def test_admin_revokes_a_key_after_typing_its_kid(web, app, shots):
    kid = STATE["first"]
    row(web, "keys-table", "data-kid", kid)[0].click()
    visible(web, '#key-detail[data-kid="%s"]' % kid)
    one(web, "#key-revoke").click()
    dialog = visible(web, "dialog#revoke-dialog")
    assert dialog.get_attribute("open") is not None
    confirm = one(web, "#revoke-confirm-button")
    typed(web, "#revoke-reason", "console test")
    assert not confirm.is_enabled(), "enabled before the kid was typed"
    typed(web, "#revoke-confirm-kid", kid[:-1])
    assert not confirm.is_enabled(), "enabled on a kid one character short"
    typed(web, "#revoke-confirm-kid", kid[:-1] + ("0" if kid[-1] != "0" else "1"))
    assert not confirm.is_enabled(), "enabled on another kid"
    assert api_key(app, kid)["state"] == "retiring"
    typed(web, "#revoke-confirm-kid", kid)
    until(web, lambda d: confirm.is_enabled(), "enabled once the kid is typed")
    shots(web, "key-revoke-dialog")
    confirm.click()
    until(web, lambda d: cell(web, "keys-table", "data-kid", kid, "state") == "revoked",
          "the key shown revoked")
    k = api_key(app, kid)
    assert k["state"] == "revoked"
    row(web, "keys-table", "data-kid", kid)[0].click()
    until(web, lambda d: css(web, '#key-detail[data-kid="%s"] #key-history '
                                  'li[data-action="key.revoked"]' % kid),
          "key.revoked in the key's history")
    # The filter shows the revoked key alone among revoked ones.
    choose(web, "#keys-filter", "revoked")
    until(web, lambda d: kid in kids_in_table(web) and
          STATE["successor"] not in kids_in_table(web), "the revoked filter")
    choose(web, "#keys-filter", "all")
    until(web, lambda d: STATE["successor"] in kids_in_table(web), "the filter reset")


def test_creating_several_keys_shows_the_progress_bar(web, app, shots):
    before = set(kids_in_table(web))
    typed(web, "#key-label", "console-batch")
    typed(web, "#key-count", "3")
    one(web, "#key-create-button").click()
    bar = one(web, "progress#key-progress")
    seen = until(web, lambda d: bar.is_displayed() and bar.get_attribute("max") == "3" and
                 bar.get_attribute("value"), "the progress bar counting to 3")
    shots(web, "keys-progress")
    new = until(web, lambda d: len(set(kids_in_table(web)) - before) == 3 and
                set(kids_in_table(web)) - before, "three new rows")
    until(web, lambda d: bar.get_attribute("value") == "3", "the bar full")
    assert float(seen) <= 3
    assert all(api_key(app, k)["label"] == "console-batch" for k in new)


# ---- admin: credentials ----------------------------------------------------------------------

def test_a_new_signer_credential_shows_its_secret_once(web, app, shots):
    open_view(web, "credentials")
    ids = lambda: {r.get_attribute("data-id") for r in css(web, "table#credentials-table tr[data-id]")}
    before = ids()
    choose(web, "#cred-role", "signer")
    typed(web, "#cred-kids", "all")
    typed(web, "#cred-label", "console-signer")
    one(web, "#cred-create-button").click()
    secret_el = visible(web, "#cred-secret")
    secret = until(web, lambda d: secret_el.text.strip() or secret_el.get_attribute("value"),
                   "the secret")
    assert secret.startswith("sgd_")
    assert css(web, "button#cred-copy")
    (cid,) = until(web, lambda d: ids() - before, "the new credential's row")
    assert cid in secret
    assert cell(web, "credentials-table", "data-id", cid, "role") == "signer"
    assert cell(web, "credentials-table", "data-id", cid, "label") == "console-signer"
    shots(web, "credentials-secret")
    # The secret works: the signer mints with it.
    r = app.post("/v1/tokens", {"sub": "console"}, auth=secret)
    assert r.status_code == 200, r.text
    # Leaving the view takes it away; coming back does not bring it back.
    open_view(web, "keys")
    open_view(web, "credentials")
    until(web, lambda d: cid in ids(), "the list again")
    gone = [e for e in css(web, "#cred-secret") if e.is_displayed() and
            (e.text.strip() or e.get_attribute("value"))]
    assert not gone, "the secret is shown again"
    assert secret not in web.driver.page_source
    STATE["signer"] = (cid, secret)
    shots(web, "credentials")


def test_admin_revokes_a_credential_from_its_row(web, app):
    victim = app.create_credential("redeemer", label="console-victim")
    open_view(web, "keys")
    open_view(web, "credentials")
    r = until(web, lambda d: row(web, "credentials-table", "data-id", victim["id"]),
              "the victim's row")[0]
    r.find_element(By.CSS_SELECTOR, "button.revoke").click()
    visible(web, "dialog#cred-revoke-dialog")
    one(web, "#cred-revoke-confirm").click()
    until(web, lambda d: cell(web, "credentials-table", "data-id", victim["id"], "state")
          == "revoked", "the credential shown revoked")
    assert app.get("/v1/keys", auth=victim["secret"]).status_code == 401


# ---- admin: tokens ---------------------------------------------------------------------------

def test_admin_revokes_a_token_and_a_subject(web, app, shots):
    cid, secret = STATE["signer"]
    r = app.post("/v1/tokens", {"sub": "alice", "revocable": True}, auth=secret)
    assert r.status_code == 200, r.text
    minted = r.json()
    jti = minted["jti"]
    open_view(web, "tokens")
    typed(web, "#token-jti", jti)
    one(web, "#token-revoke-button").click()
    until(web, lambda d: jti in one(web, "#token-result").text, "the token's revocation")
    redeemer = app.create_credential("redeemer", label="console-redeemer")["secret"]
    r = app.post("/v1/tokens/redeem", {"token": minted["token"]}, auth=redeemer)
    assert r.status_code == 409 and r.json()["error"]["code"] == "token_revoked", r.text

    typed(web, "#subject-sub", "mallory")
    one(web, "#subject-revoke-button").click()
    until(web, lambda d: "mallory" in one(web, "#token-result").text,
          "the subject's revocation")
    subs = app.get("/v1/revocations", auth=False).json().get("subjects", [])
    assert "mallory" in [s["sub"] for s in subs]
    shots(web, "tokens")


# ---- revocations, live -----------------------------------------------------------------------

def test_a_revocation_made_through_the_api_appears_within_a_second(web, app, shots):
    open_view(web, "revocations")
    listed = app.get("/v1/revocations", auth=False).json()
    seqs = [r["seq"] for r in listed["revoked"]] + [s["seq"] for s in listed.get("subjects", [])]
    until(web, lambda d: {int(li.get_attribute("data-seq"))
                          for li in css(web, "ol#revocations-list li[data-seq]")} >= set(seqs),
          "the initial list")
    shown = [int(li.get_attribute("data-seq"))
             for li in css(web, "ol#revocations-list li[data-seq]")]
    assert shown == sorted(shown, reverse=True), "newest first"
    # The stream is open once its response headers reached the page.
    until(web, lambda d: any("/v1/revocations/events" in u for u, _, _ in web.responses()),
          "the event stream's response")
    time.sleep(0.3)

    t0 = time.monotonic()
    r = app.post("/v1/subjects/revoke", {"sub": "live-%d" % time.time_ns()})
    assert r.status_code == 200, r.text
    seq = r.json()["seq"]
    until(web, lambda d: css(web, 'ol#revocations-list li[data-seq="%d"]' % seq),
          "seq %d in the open view" % seq, timeout=5)
    elapsed = time.monotonic() - t0
    print("\nrevocation seq %d shown %.3f s after the API call was sent" % (seq, elapsed))
    assert elapsed < 1.0, "shown after %.3f s" % elapsed
    first = css(web, "ol#revocations-list li[data-seq]")[0]
    assert int(first.get_attribute("data-seq")) == seq, "the newest on top"
    shots(web, "revocations")


# ---- health ----------------------------------------------------------------------------------

def test_health_shows_readiness_keys_sessions_and_the_revocation_seq(web, app, shots):
    open_view(web, "health")
    visible(web, '#health-ready[data-status="ready"]')
    seq = app.get("/v1/revocations", auth=False).json()["sequence"]
    until(web, lambda d: str(seq) in one(web, "#health-revocation-seq").text,
          "the revocation seq %d" % seq)
    assert any(ch.isdigit() for ch in one(web, "#health-keys").text)
    assert any(ch.isdigit() for ch in one(web, "#health-sessions").text)
    shots(web, "health")


# ---- auditor ---------------------------------------------------------------------------------

def test_sign_out_clears_the_tab(web, app):
    one(web, "button#signout").click()
    visible(web, "form#signin")
    assert app.admin not in json.dumps(web.driver.execute_script(
        "return Object.assign({}, sessionStorage)"))
    web.driver.refresh()
    visible(web, "form#signin")
    assert not [e for e in css(web, "#whoami") if e.is_displayed()]


def test_a_signer_and_a_redeemer_see_only_their_views(web, app):
    """The navigation follows GET /v1/whoami: a signer revokes tokens and reads the public
    revocations; a redeemer reads the revocations alone."""
    redeemer = app.create_credential("redeemer", label="console-redeemer-view")["secret"]
    for secret, role, want in ((STATE["signer"][1], "signer", {"tokens", "revocations"}),
                               (redeemer, "redeemer", {"revocations"})):
        who = sign_in(web, app, secret, role)
        assert role in who.text
        views = {a.get_attribute("data-view") for a in css(web, "nav#nav a[data-view]")}
        assert views == want, (role, views)
        for absent in ("#key-create", "#cred-create", "#audit-verify", "button.revoke"):
            assert not css(web, absent), "%s is in the %s's DOM" % (absent, role)
        one(web, "button#signout").click()
        visible(web, "form#signin")
    # A signer scoped to some kids may not revoke a subject (403 from the API): not offered.
    scoped = app.create_credential("signer", label="console-scoped",
                                   kids=[STATE["successor"]])["secret"]
    sign_in(web, app, scoped, "signer")
    open_view(web, "tokens")
    assert css(web, "#token-revoke-button")
    assert not css(web, "#subject-revoke-button"), "offered a subject revocation it may not make"
    one(web, "button#signout").click()
    visible(web, "form#signin")


def test_an_auditor_sees_no_create_or_revoke_control(web, app, shots):
    auditor = app.create_credential("auditor", label="console-auditor")["secret"]
    STATE["auditor"] = auditor
    who = sign_in(web, app, auditor, "auditor")
    assert "auditor" in who.text
    views = {a.get_attribute("data-view") for a in css(web, "nav#nav a[data-view]")}
    # GET /v1/credentials is the admin's alone; revoking tokens the admin's and signers'.
    assert views == {"keys", "revocations", "audit", "health"}, views

    open_view(web, "keys")
    until(web, lambda d: STATE["successor"] in kids_in_table(web), "the keys")
    row(web, "keys-table", "data-kid", STATE["successor"])[0].click()
    visible(web, '#key-detail[data-kid="%s"]' % STATE["successor"])
    for absent in ("#key-create", "#key-rotate", "#key-revoke", "#cred-create",
                   "button.revoke", "#token-revoke-button", "#subject-revoke-button"):
        assert not css(web, absent), "%s is in the auditor's DOM" % absent
    shots(web, "keys-auditor")


def test_the_auditor_filters_the_trail(web, app, shots):
    open_view(web, "audit")
    until(web, lambda d: css(web, "table#audit-table tr[data-seq]"), "the trail")
    typed(web, "#audit-action", "key.revoked")
    one(web, "#audit-apply").click()
    want = [e["seq"] for e in app.audit_events(action="key.revoked")]
    assert want
    until(web, lambda d: [int(r.get_attribute("data-seq"))
                          for r in css(web, "table#audit-table tr[data-seq]")] == want,
          "only the key.revoked events (%s)" % want)
    typed(web, "#audit-action", "")
    typed(web, "#audit-kid", STATE["first"])
    one(web, "#audit-apply").click()
    want = [e["seq"] for e in app.audit_events(kid=STATE["first"])]
    until(web, lambda d: [int(r.get_attribute("data-seq"))
                          for r in css(web, "table#audit-table tr[data-seq]")] == want,
          "the first key's events (%s)" % want)
    typed(web, "#audit-kid", "")
    one(web, "#audit-apply").click()
    shots(web, "audit")


def test_verify_on_the_intact_trail_checks_every_checkpoint(web, app, shots):
    cps = wait_checkpoint_at_head(app)
    one(web, "#audit-verify").click()
    result = visible(web, "#verify-result[data-status]", timeout=30)
    assert result.get_attribute("data-status") == "ok", result.text
    items = until(web, lambda d: css(web, "ol#verify-checkpoints li[data-seq]"),
                  "the checkpoints")
    shown = {int(li.get_attribute("data-seq")): li.get_attribute("data-status") for li in items}
    assert set(cps) <= set(shown), "checkpoints %s, shown %s" % (cps, sorted(shown))
    assert set(shown.values()) == {"ok"}, shown
    assert not [e for e in css(web, "#verify-broken") if e.is_displayed()]
    print("\nverify: %d checkpoints ok" % len(shown))
    shots(web, "audit-verify-ok", start="#view-audit", max_height=800)


def test_verify_shows_the_seq_of_a_row_edited_behind_the_appliance(web, app, shots):
    """One audit row's details changed with sqlite3 in appliance.db while the appliance
    runs (WAL: its next read sees it): the chain breaks at exactly that seq."""
    kid = STATE["first"]
    created = [e for e in app.audit_events(kid=kid) if e["action"] == "key.created"]
    target = created[0]["seq"]
    conn = sqlite3.connect(os.path.join(app.dir, "appliance.db"), timeout=10)
    try:
        with conn:
            n = conn.execute("UPDATE audit SET details = ? WHERE seq = ?",
                             ('{"bits":2048,"label":"innocent"}', target)).rowcount
        assert n == 1
    finally:
        conn.close()
    # The premise: the API serves the edited row as it now is.
    edited = [e for e in app.audit_events(kid=kid) if e["seq"] == target][0]
    assert edited["details"].get("label") == "innocent"

    open_view(web, "health")
    open_view(web, "audit")
    until(web, lambda d: css(web, "table#audit-table tr[data-seq]"), "the trail")
    one(web, "#audit-verify").click()
    result = visible(web, '#verify-result[data-status="broken"]', timeout=30)
    broken = visible(web, "#verify-broken")
    assert broken.get_attribute("data-seq") == str(target), (broken.text, result.text)
    assert str(target) in broken.text
    # Checkpoints below the edit still verify; every one from it on covers the broken link.
    items = {int(li.get_attribute("data-seq")): li.get_attribute("data-status")
             for li in css(web, "ol#verify-checkpoints li[data-seq]")}
    assert {s: v for s, v in items.items() if s < target} == \
        {s: "ok" for s in items if s < target}, items
    assert [s for s in items if s >= target] and \
        {v for s, v in items.items() if s >= target} == {"bad"}, items
    print("\nverify: broken at seq %d, as edited" % target)
    shots(web, "audit-verify-broken", start="#view-audit", max_height=800)


# ---- what the page asked for, all session long ----------------------------------------------

def test_the_page_has_a_strict_csp_and_asks_only_its_own_origin(web, app):
    origin = app.url + "/"
    urls = [u for u, _ in web.requests()]
    assert any(u.startswith(app.url + "/console/") for u in urls)
    foreign = [u for u in urls if not u.startswith((origin, "data:", "about:"))]
    assert not foreign, "requests to another origin: %s" % foreign

    docs = [(u, h) for u, s, h in web.responses()
            if u.rstrip("/").endswith("/console") or u.endswith("/console/")
            or u.endswith("/index.html")]
    assert docs, "the console's page is in the log"
    for u, h in docs:
        if "location" in h:     # /console -> /console/
            continue
        csp = h.get("content-security-policy", "")
        directives = {d.strip().split(" ")[0]: d.strip() for d in csp.split(";") if d.strip()}
        assert directives.get("default-src") == "default-src 'self'", csp
        assert directives.get("frame-ancestors") == "frame-ancestors 'none'", csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
        assert h.get("x-content-type-options") == "nosniff"
        assert "set-cookie" not in h
    assert not [h for _, _, h in web.responses() if "set-cookie" in h], "no cookie, ever"
    violations = [m for m in web.console_errors() if "Content Security Policy" in m]
    assert not violations, violations
    print("\n%d requests, all to %s" % (len(urls), app.url))
