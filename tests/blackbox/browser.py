"""A real headless Chromium for the black-box tests, driven through chromedriver (Selenium).

Debian's chromium, chromium-driver and python3-selenium (mk/packages.txt). The harness
starts /usr/bin/chromedriver itself on a port picked at run time and talks to it with
Selenium's Remote driver, so Selenium never looks for a driver (no selenium-manager, no
download: SE_OFFLINE is set as well). Chromium runs headless with a user-data-dir of its
own under the test's temporary directory and every background fetch turned off, so the
only requests it makes are the page's.

The appliance's certificate is self-signed. Instead of --ignore-certificate-errors (which
would accept any certificate) the browser is told to accept exactly the test
certificate's key: --ignore-certificate-errors-spki-list=<base64 SHA-256 of its
SubjectPublicKeyInfo>, the key pin Chromium documents for this; any other certificate is
still refused.

Every request the page makes is read from Chromium's performance log (the DevTools
Network.* events): tests check the page's origin and the response headers from it.
stop() ends chromedriver and every Chromium process by PID, and checks none is left.
"""
import base64
import hashlib
import json
import os
import signal
import subprocess
import time
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import serialization

CHROMEDRIVER = "/usr/bin/chromedriver"
# The browser itself: Debian's /usr/bin/chromium is a shell wrapper that adds the flags of
# /etc/chromium.d; the harness names every flag it wants, so it runs the binary.
CHROMIUM = "/usr/lib/chromium/chromium"

# No selenium-manager lookup, whatever Selenium's version (it reads this at driver start).
os.environ["SE_OFFLINE"] = "true"

from selenium import webdriver  # noqa: E402  (after SE_OFFLINE)


def spki_sha256(cert_path):
    """base64(SHA-256(SubjectPublicKeyInfo DER)) of a PEM certificate: the form
    --ignore-certificate-errors-spki-list takes."""
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def descendants(pid):
    """Every living descendant of pid (from /proc/PID/task/*/children), depth first."""
    found = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir("/proc/%d/task" % p)
        except OSError:
            continue
        for t in tasks:
            try:
                with open("/proc/%d/task/%s/children" % (p, t)) as f:
                    kids = [int(c) for c in f.read().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def processes_using(marker):
    """PIDs whose command line holds marker (the browser's own user-data-dir, a path no
    other process on the machine has in its argv)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if marker.encode() in cmd:
            found.append(int(name))
    return found


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


class Browser:
    """One chromedriver and one headless Chromium, for one test module."""

    def __init__(self, workdir, port, trust_cert=None, width=1280, height=1000):
        self.workdir = workdir
        self.port = port
        self.profile = os.path.join(workdir, "chromium-profile")
        os.makedirs(self.profile, exist_ok=True)
        self.log_path = os.path.join(workdir, "chromedriver.log")
        self.trust_cert = trust_cert
        self.size = (width, height)
        self.driver = None
        self.proc = None
        self.perf = []          # every DevTools message read so far (dicts)

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [CHROMEDRIVER, "--port=%d" % self.port, "--log-path=" + self.log_path],
            stdout=self.log, stderr=self.log, start_new_session=True)
        url = "http://127.0.0.1:%d" % self.port
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url + "/status", timeout=2) as r:
                    if json.load(r)["value"]["ready"]:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("chromedriver did not start: see " + self.log_path)
            time.sleep(0.1)

        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                    "--user-data-dir=" + self.profile,
                    "--disable-background-networking", "--disable-component-update",
                    "--no-first-run", "--disable-sync", "--disable-default-apps",
                    "--disable-extensions", "--disable-dev-shm-usage",
                    "--no-default-browser-check", "--metrics-recording-only",
                    "--disable-domain-reliability", "--disable-breakpad",
                    "--window-size=%d,%d" % self.size):
            opts.add_argument(arg)
        # The first tab opens on about:blank, not on Chromium's new-tab page (whose own
        # chrome:// fetches would fill the performance log).
        opts.add_argument("about:blank")
        if self.trust_cert:
            opts.add_argument("--ignore-certificate-errors-spki-list=" +
                              spki_sha256(self.trust_cert))
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        try:
            self.driver = webdriver.Remote(command_executor=url, options=opts)
        except Exception:
            self.stop()
            raise
        self.driver.get("about:blank")
        self.mark()
        return self

    # ---- what the page did -------------------------------------------------------------

    def read_perf(self):
        """Drains Chromium's performance log into self.perf; returns the new messages."""
        new = []
        for entry in self.driver.get_log("performance"):
            new.append(json.loads(entry["message"])["message"])
        self.perf.extend(new)
        return new

    def mark(self):
        """Forgets what was logged so far (Chromium's own start page, earlier steps): the
        checks that follow see only the requests made from here on."""
        self.read_perf()
        self.perf = []

    def requests(self):
        """[(url, method)] of every request the page made so far."""
        self.read_perf()
        return [(m["params"]["request"]["url"], m["params"]["request"]["method"])
                for m in self.perf if m["method"] == "Network.requestWillBeSent"]

    def responses(self):
        """[(url, status, headers with lower-case names)] of every response so far."""
        self.read_perf()
        out = []
        for m in self.perf:
            if m["method"] == "Network.responseReceived":
                r = m["params"]["response"]
                out.append((r["url"], r["status"],
                            {k.lower(): v for k, v in r["headers"].items()}))
        return out

    def console_errors(self):
        """The browser console's SEVERE lines (CSP violations land here)."""
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def cdp(self, cmd, params=None):
        """A DevTools command through chromedriver (goog/cdp/execute), for the Remote
        driver, which has no execute_cdp_cmd of its own."""
        self.driver.command_executor._commands.setdefault(
            "signdCdp", ("POST", "/session/$sessionId/goog/cdp/execute"))
        return self.driver.execute("signdCdp", {"cmd": cmd, "params": params or {}})["value"]

    def screenshot(self, *paths, start=None, max_height=1600):
        """A PNG of the page beyond the window, written to each of paths: from the top, or
        from a little above the element start (a CSS selector) names, at most max_height
        CSS pixels tall."""
        size = self.cdp("Page.getLayoutMetrics")["cssContentSize"]
        top = 0
        if start:
            top = max(0, int(self.driver.execute_script(
                "return arguments[0].getBoundingClientRect().top + window.scrollY",
                self.driver.find_element("css selector", start))) - 24)
        clip = {"x": 0, "y": top, "scale": 1,
                "width": min(int(size["width"]), self.size[0]),
                "height": max(1, min(int(size["height"]) - top, max_height))}
        png = base64.b64decode(self.cdp("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True, "clip": clip})["data"])
        for p in paths:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(png)
        return png

    # ---- stop ---------------------------------------------------------------------------

    def stop(self):
        """Quits the browser, stops chromedriver, and ends by PID whatever of theirs is
        left. Raises if a Chromium process of this profile outlives it all."""
        tree = descendants(self.proc.pid) if self.proc else []
        if self.driver is not None:
            try:
                self.driver.quit()
            except Exception:
                pass
            self.driver = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
            self.log.close()
        deadline = time.monotonic() + 10
        left = []
        while time.monotonic() < deadline:
            left = [p for p in set(tree + processes_using(self.profile)) if _alive(p)]
            if not left:
                break
            time.sleep(0.1)
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
        still = [p for p in processes_using(self.profile) if _alive(p)]
        if left or still:
            raise AssertionError("browser processes outlived quit(): %s (killed)" % left)
