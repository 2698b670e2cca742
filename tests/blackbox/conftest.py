"""Fixtures for black-box tests: a real appliance over HTTPS on a real SoftHSM2 token.

Each fixture makes its own data directory (token, PINs, certificate, credential,
configuration) with provisioning/init-data-dir.sh, the same script `make run` uses, picks a
free port at run time, starts build/testbin/signd (the supervisor, which executes the
signd-keeper and signd-front next to it: the test build, with the SIGND_FAULT crash points),
and stops it by PID.

The suite runs in parallel (tests/run.sh: pytest-xdist, one file per worker): ports come
from a range of the worker's own, and what changes the machine (system accounts) runs under
machine_lock().
"""
import atexit
import contextlib
import fcntl
import itertools
import random
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import pytest
import requests

import openapi_check
from procs import status, stop_process

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# SIGND_BUILD=build/asan (make test-asan) runs the same tests against sanitized binaries.
BUILD = os.environ.get("SIGND_BUILD", "build")
# The test build of the three appliance programs (Makefile: -DSIGND_TEST_HOOKS); every
# other program comes from BUILD/bin.
SIGND = os.path.join(TOP, BUILD, "testbin", "signd")
INIT = os.path.join(TOP, "provisioning", "init-data-dir.sh")


# Every response from an appliance these tests started is checked against
# docs/openapi.yaml (openapi_check.py): requests' Session.send is wrapped, which module-level
# requests.get() goes through too. What differs is collected here, and
# openapi_conformance fails the test that received it.
APPLIANCE_PORTS = set()
OPENAPI_MISMATCHES = []
_requests_send = requests.Session.send


def _send_and_check(self, request, **kw):
    r = _requests_send(self, request, **kw)
    parts = requests.utils.urlparse(r.url)
    if parts.hostname == "127.0.0.1" and parts.port in APPLIANCE_PORTS:
        body = None if kw.get("stream") else r.content
        for m in openapi_check.check(request.method, r.url, r.status_code,
                                     r.headers.get("Content-Type"), body):
            OPENAPI_MISMATCHES.append("%s %s -> %d: %s" % (request.method, parts.path,
                                                          r.status_code, m))
    return r


requests.Session.send = _send_and_check


# Files that start first: under xdist (--dist loadfile) a file runs on one worker from its
# first test to its last, so the one with the 1,000-key test (minutes of key generation)
# would set the wall time of the run if it started late.
RUN_FIRST = ("test_crash_and_limits.py",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: os.path.basename(str(item.fspath)) not in RUN_FIRST)


@pytest.fixture(autouse=True)
def openapi_conformance():
    """Fails a test that received a response docs/openapi.yaml does not describe (or whose
    module-scoped appliance did, while it was set up for it)."""
    yield
    found, OPENAPI_MISMATCHES[:] = list(OPENAPI_MISMATCHES), []
    if found:
        pytest.fail("responses that do not match docs/openapi.yaml:\n" + "\n".join(found[:20]),
                    pytrace=False)


def raw_tls(appliance, data, timeout=10):
    """Sends raw bytes over TLS and returns what comes back (up to the close or timeout)."""
    ctx = ssl.create_default_context(cafile=appliance.cacert)
    with socket.create_connection(("127.0.0.1", appliance.port), timeout=timeout) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            t.sendall(data)
            out = b""
            try:
                while True:
                    chunk = t.recv(65536)
                    if not chunk:
                        break
                    out += chunk
                    if b"\r\n\r\n" in out and b"}}" in out:
                        break
            except (socket.timeout, ssl.SSLError, ConnectionResetError):
                pass
            # Raw answers are held to docs/openapi.yaml like those requests receives.
            OPENAPI_MISMATCHES.extend(openapi_check.check_raw(data, out))
            return out


def reachable(path):
    """Returns path, after giving every directory above it, below the temporary directory,
    the right to be entered (o+x, not listed) when the tests run as root: signd's keeper
    and front then run as accounts of their own (signd-keeper, signd-front), which must
    reach their data directory and files such as tls_client_ca, and pytest makes its
    tmp_path directories (and /tmp/pytest-of-root) 0700. Never above the temporary
    directory: not /root, not the clone."""
    if os.geteuid() != 0:
        return path
    tmp = os.path.realpath(tempfile.gettempdir())
    d = os.path.dirname(os.path.realpath(str(path)))
    while d.startswith(tmp + "/"):
        mode = os.stat(d).st_mode & 0o7777
        if not mode & 0o001:
            os.chmod(d, mode | 0o001)
        d = os.path.dirname(d)
    return path


_SIGND_COPY = []


def signd_for_any_user():
    """The signd binary as a path every account may execute: SIGND itself when not root;
    as root, a copy (with signd-keeper and signd-front, which it executes from its own
    directory) in a root-owned directory of mode 0755 under the temporary directory (made
    once per run), because the clone may sit in a directory only root may enter (/root is
    0700) and some tests start signd as an unprivileged user."""
    if os.geteuid() != 0:
        return SIGND
    if not _SIGND_COPY:
        d = tempfile.mkdtemp(prefix="signd-bin-")
        os.chmod(d, 0o755)
        for name in ("signd", "signd-keeper", "signd-front"):
            copy = os.path.join(d, name)
            shutil.copy2(os.path.join(os.path.dirname(SIGND), name), copy)
            os.chmod(copy, 0o755)
        _SIGND_COPY.append(os.path.join(d, "signd"))
        atexit.register(shutil.rmtree, d, True)
    return _SIGND_COPY[0]


# Ports below the kernel's ephemeral range (32768 and up on Linux), PORT_SPAN of them per
# xdist worker (gw0, gw1, ...): a port one worker picked and closed cannot be handed to
# another worker's bind(0) or to an outgoing connection before its appliance binds it.
PORT_BASE, PORT_SPAN = 20000, 760


def _worker_index():
    w = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(w[2:]) % 16 if w.startswith("gw") and w[2:].isdigit() else 0


_PORTS = itertools.cycle(range(PORT_SPAN))
for _ in range(random.randrange(PORT_SPAN)):
    next(_PORTS)


def free_port():
    """A port of this worker's range that nothing listens on now."""
    base = PORT_BASE + _worker_index() * PORT_SPAN
    for _ in range(PORT_SPAN):
        port = base + next(_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in %d..%d" % (base, base + PORT_SPAN - 1))


@contextlib.contextmanager
def machine_lock():
    """Held while a test changes the machine (useradd, groupadd, usermod): workers running
    at once would otherwise race on /etc/passwd (useradd fails when another holds its lock)."""
    with open(os.path.join(tempfile.gettempdir(), "signd-blackbox-machine.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def alive_pid(pid):
    """True while any thread of pid runs (a zombie waiting for init to reap it has stopped
    running; but a killed process's leader shows as a zombie while its other threads are
    still exiting and holding its descriptors, the data directory's lock among them)."""
    try:
        tasks = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return False
    for tid in tasks:
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    return True
        except OSError:
            continue
    return False


class Appliance:
    """One appliance process and its data directory."""

    def __init__(self, data_dir, extra_conf=None):
        self.dir = reachable(data_dir)
        self.port = free_port()
        APPLIANCE_PORTS.add(self.port)
        admin_file = self.provision(data_dir)
        self.conf = os.path.join(data_dir, "appliance.conf")
        # Tests present bad credentials on purpose, all from 127.0.0.1: the per-address
        # throttle would turn later 401s into 429s. Tests of the throttle set it low.
        self.set_conf({"auth_failure_burst": 10000})
        if extra_conf:
            self.set_conf(extra_conf)
        self.signer = None
        # (cert.pem, key.pem) presented on every request; needed when tls_client_ca is set.
        self.client_cert = None
        # The certificate the configuration names (a cluster's nodes share one).
        self.cacert = os.path.join(data_dir, self.conf_value("tls_certificate"))
        with open(admin_file) as f:
            self.admin = f.read().strip()
        self.url = "https://127.0.0.1:%d" % self.port
        self.proc = None
        self.log_path = os.path.join(data_dir, "signd.log")
        self.session = requests.Session()
        self.session.verify = self.cacert

    def provision(self, data_dir):
        """Creates what data_dir lacks, as make run does (provisioning/init-data-dir.sh);
        returns the path of the bootstrap admin's secret. cluster.py's nodes override it."""
        # As root the script creates the appliance's system accounts when missing.
        with machine_lock() if os.geteuid() == 0 else contextlib.nullcontext():
            subprocess.run([INIT, data_dir, str(self.port)], check=True,
                           stdout=subprocess.DEVNULL)
        return os.path.join(data_dir, "admin.credential")

    def conf_value(self, key):
        for line in open(self.conf).read().splitlines():
            if line.startswith(key + " ="):
                return line.split("=", 1)[1].strip()
        return None

    def set_conf(self, settings):
        lines = open(self.conf).read().splitlines()
        for key, value in settings.items():
            lines = [l for l in lines if not l.startswith(key + " =")]
            lines.append("%s = %s" % (key, value))
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, env_extra=None, wait=True):
        env = dict(os.environ)
        env.pop("SIGND_FAULT", None)
        if env_extra:
            env.update(env_extra)
        self.log = open(self.log_path, "ab")
        # Its own process group: kill9 takes the supervisor, the keeper and the front
        # down at once, as a crash of the machine would.
        self.proc = subprocess.Popen([SIGND, self.conf], stdout=subprocess.PIPE,
                                     stderr=self.log, env=env, start_new_session=True)
        return self.wait_started() if wait else self

    def wait_started(self):
        """After start(wait=False): waits for the supervisor's "listening" line (a
        RuntimeError with the log if it exits instead), then makes the test signer."""
        line = self.proc.stdout.readline().decode()
        if "listening" not in line:
            self.proc.wait(timeout=10)
            raise RuntimeError("signd did not start: %r\n%s" % (line, self.read_log()))
        if self.signer is None and (self.client_cert or not self.conf_value("tls_client_ca")):
            self.signer = self.create_credential("signer", kids="all", label="tests")["secret"]
        return self

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def living(self, name):
        """The pids of the supervisor's living children named name ("keeper", "front"),
        read from /proc (each program sets its comm). A child that died and awaits its
        reaping is a zombie still bearing the name: it serves nothing, so it is left out."""
        if self.proc is None:
            return []
        try:
            with open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            return []
        found = []
        for pid in pids:
            try:
                st = status(pid)
            except OSError:
                continue
            if st.get("Name") == name and not st.get("State", "").startswith(("Z", "X")):
                found.append(pid)
        return found

    def children(self):
        """{"keeper": pid, "front": pid} of the running appliance (living children only)."""
        found = {}
        for name in ("keeper", "front"):
            pids = self.living(name)
            if pids:
                found[name] = pids[-1]
        return found

    def pids(self):
        """Every process of the appliance: the supervisor first."""
        return [self.proc.pid] + sorted(self.children().values())

    def wait_front_restarted(self, old_pid, timeout=60):
        """Waits until a front other than old_pid serves /healthz; returns its pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.children().get("front")
            if pid and pid != old_pid:
                try:
                    if self.get("/healthz", auth=False).status_code == 200:
                        return pid
                except requests.exceptions.ConnectionError:
                    pass
            time.sleep(0.1)
        raise AssertionError("the front was not restarted:\n" + self.read_log()[-3000:])

    def crash_at(self, fault, request):
        """Restarts with the fault point armed (SIGND_FAULT), makes request() crash the
        process that serves it, and waits until the appliance serves again: only the front
        died and the supervisor restarted it (its reconcile ran; it still has the fault
        armed, so callers restart before making another change)."""
        self.restart(env_extra={"SIGND_FAULT": fault})
        front = self.children().get("front")
        assert front is not None, "no front to crash"
        with pytest.raises(requests.exceptions.ConnectionError):
            request()
        self.wait_front_restarted(front)
        assert self.proc.poll() is None, "the supervisor must outlive its front"

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc is None:
            return None
        if sig == signal.SIGKILL:
            # Every process of the appliance at once, then wait until all are gone so the
            # data directory (its lock, the port, the token) is free for the next start.
            group = self.pids()
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for pid in group[1:]:
                deadline = time.monotonic() + timeout
                while alive_pid(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
        alive, rc = stop_process(self.proc, sig, timeout)
        self.proc.stdout.close()
        self.log.close()
        self.proc = None
        self.session.close()
        self.session = requests.Session()
        self.session.verify = self.cacert
        # A clean stop exits 0: a crash on shutdown, or a sanitizer's report (make
        # test-asan), fails the test that stopped it.
        if alive and sig == signal.SIGTERM and rc != 0:
            raise AssertionError("signd exited %s on SIGTERM:\n%s" % (rc, self.read_log()[-4000:]))
        return rc

    def kill9(self):
        return self.stop(signal.SIGKILL)

    def restart(self, **kw):
        self.stop()
        return self.start(**kw)

    # HTTP helpers: every call is a real HTTPS request verified against the data dir's cert.
    def auth(self, secret=None):
        return {"Authorization": "Bearer " + (secret or self.admin)}

    def request(self, method, path, auth=True, **kw):
        """auth: True for the role the route needs (the test signer, which may use every
        kid, on /sign and /v1/tokens; the bootstrap admin elsewhere), a secret string for
        that credential, False for none."""
        headers = kw.pop("headers", {})
        if auth is True:
            signer_route = path.startswith("/v1/tokens") or path.split("?")[0].endswith("/sign")
            auth = self.signer if signer_route else self.admin
        if auth:
            headers = {**self.auth(auth), **headers}
        # verify per request: requests lets REQUESTS_CA_BUNDLE override a session's verify.
        if self.client_cert and "cert" not in kw:
            kw["cert"] = self.client_cert
        kw.setdefault("timeout", 60)
        return self.session.request(method, self.url + path, headers=headers,
                                    verify=self.cacert, **kw)

    def audit_events(self, **query):
        """Every audit event matching query (the admin's credential), paged through."""
        events, after = [], 0
        while True:
            q = "&".join("%s=%s" % kv for kv in dict(query, after=after, limit=1000).items())
            r = self.get("/v1/audit?" + q)
            assert r.status_code == 200, r.text
            page = r.json()
            events += page["events"]
            if "next_after" not in page:
                return events
            after = page["next_after"]

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        if body is not None:
            kw["json"] = body
        return self.request("POST", path, **kw)

    def delete(self, path, body=None, **kw):
        if body is not None:
            kw["json"] = body
        return self.request("DELETE", path, **kw)

    def create_credential(self, role, label="test", **fields):
        """Creates a credential as the bootstrap admin; returns the response (with secret)."""
        r = self.post("/v1/credentials", {"role": role, "label": label, **fields},
                      auth=self.admin)
        assert r.status_code == 201, r.text
        return r.json()

    def create_key(self, bits=2048, label="test"):
        r = self.post("/v1/keys", {"bits": bits, "label": label})
        assert r.status_code == 201, r.text
        return r.json()


@pytest.fixture
def make_appliance():
    """Factory: make_appliance(extra_conf=None) -> a started Appliance; all stopped after."""
    made = []
    dirs = []

    def factory(extra_conf=None, start=True):
        d = tempfile.mkdtemp(prefix="signd-test-")
        dirs.append(d)
        a = Appliance(d, extra_conf)
        made.append(a)
        return a.start() if start else a

    yield factory
    for a in made:
        a.stop()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def appliance():
    """One appliance shared by a test module (fresh token and data directory)."""
    d = tempfile.mkdtemp(prefix="signd-test-")
    a = Appliance(d).start()
    yield a
    a.stop()
    shutil.rmtree(d, ignore_errors=True)
