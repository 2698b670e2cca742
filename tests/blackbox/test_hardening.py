"""Process hardening of the appliance (appliance/common/harden.h): no core dumps, not dumpable,
private files, the switch from root to the `user` account, and no secret in the process's
command line, environment or log.

The tests run as root (make test on Debian 12); the ones that switch users are skipped
otherwise. They create the unprivileged account signd-test when it is missing.
"""
import base64
import os
import pwd
import re
import subprocess

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from conftest import machine_lock, signd_for_any_user
from procs import status

ACCOUNT = "signd-test"

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="switching users needs the tests to run as root")


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def account():
    """The unprivileged test account (created when missing) as a pwd entry."""
    with machine_lock():
        try:
            return pwd.getpwnam(ACCOUNT)
        except KeyError:
            pass
        r = subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                            "/usr/sbin/nologin", ACCOUNT], capture_output=True, text=True)
        # 9: created meanwhile by another run; anything else is a real failure.
        assert r.returncode in (0, 9), r.stderr
        return pwd.getpwnam(ACCOUNT)


def give_to(path, pw):
    subprocess.run(["chown", "-R", "%d:%d" % (pw.pw_uid, pw.pw_gid), path], check=True)


def ids(field):
    """The real, effective, saved and filesystem ids of a Uid: or Gid: line."""
    return [int(x) for x in field.split()]


def wait_refused(a):
    """Starts a without waiting, expects exit status 1; returns the log's last line."""
    a.start(wait=False)
    out = a.proc.stdout.read().decode()
    rc = a.proc.wait(timeout=30)
    log = a.read_log()
    assert rc == 1, (rc, out, log)
    assert "listening" not in out
    lines = log.strip().splitlines()
    assert lines, "signd said nothing when it refused to start"
    return lines[-1]


def started_as_account(make_appliance, pw, extra=None):
    """An appliance whose data directory belongs to pw, with user = pw's name, started."""
    a = make_appliance(extra_conf={"user": pw.pw_name, **(extra or {})}, start=False)
    give_to(a.dir, pw)
    return a.start()


def sign_and_verify(a, key):
    """Shows the key, signs with it (the fixture presents the credential the route needs)
    and verifies the signature against its JWK."""
    r = a.get("/v1/keys/" + key["kid"])
    assert r.status_code == 200 and r.json()["state"] == "active", r.text
    message = b"signed after the switch"
    r = a.post("/v1/keys/%s/sign" % key["kid"], {"payload": b64u(message)})
    assert r.status_code == 200, r.text
    n = int.from_bytes(unb64u(key["jwk"]["n"]), "big")
    e = int.from_bytes(unb64u(key["jwk"]["e"]), "big")
    pub = rsa.RSAPublicNumbers(e, n).public_key()
    pub.verify(unb64u(r.json()["signature"]), message, padding.PKCS1v15(), hashes.SHA256())


# ---- core dumps and dumpability --------------------------------------------------------

def test_appliance_has_core_dumps_off(make_appliance):
    a = make_appliance()
    assert len(a.pids()) == 3  # supervisor, keeper, front: each is checked
    for pid in a.pids():
        with open("/proc/%d/limits" % pid) as f:
            line = next(l for l in f if l.startswith("Max core file size"))
        assert line.split()[4:6] == ["0", "0"], (pid, line)


# ---- the switch to `user` --------------------------------------------------------------

@needs_root
def test_started_as_root_with_user_runs_as_that_user_and_still_creates_and_signs(
        make_appliance):
    pw = account()
    a = started_as_account(make_appliance, pw)
    assert len(a.pids()) in (1, 3)
    for pid in a.pids():
        st = status(pid)
        assert ids(st["Uid"]) == [pw.pw_uid] * 4, st["Uid"]
        assert ids(st["Gid"]) == [pw.pw_gid] * 4, st["Gid"]
        assert st["Groups"].split() in ([], [str(pw.pw_gid)]), st["Groups"]
        # Every thread switched (CivetWeb's workers were started before the switch).
        for tid in os.listdir("/proc/%d/task" % pid):
            t = status(int(tid))
            assert ids(t["Uid"]) == [pw.pw_uid] * 4 and ids(t["Gid"]) == [pw.pw_gid] * 4, tid
    # The token and the database still work as the user: a new key is new token objects.
    key = a.create_key(label="after-switch")
    sign_and_verify(a, key)
    assert a.get("/v1/keys").json()["keys"][-1]["kid"] == key["kid"]
    # Not dumpable: the kernel gives the files in /proc/PID to root although the process
    # runs as the user (task_dump_owner). The /proc/PID directory itself (mode 0555) keeps
    # the process's euid on current kernels, so it proves nothing; its files do.
    for pid in a.pids():
        for name in ("environ", "mem", "maps", "status"):
            assert os.stat("/proc/%d/%s" % (pid, name)).st_uid == 0, (pid, name)
    # And it survives a restart: what the user created, the next start can read.
    a.restart()
    assert a.get("/v1/keys/" + key["kid"]).json()["state"] == "active"
    sign_and_verify(a, key)


@needs_root
def test_no_new_privs_is_set_after_the_switch(make_appliance):
    pw = account()
    a = started_as_account(make_appliance, pw)
    for pid in a.pids():
        st = status(pid)
        assert st["NoNewPrivs"] == "1"
        assert ids(st["Uid"])[0] == pw.pw_uid
        # No capability left anywhere.
        for field in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            assert int(st[field], 16) == 0, (field, st[field])


@needs_root
def test_user_naming_a_missing_account_refuses_to_start(make_appliance):
    a = make_appliance(extra_conf={"user": "signd-no-such-account"}, start=False)
    last = wait_refused(a)
    assert "user = signd-no-such-account" in last and "no such account" in last, last


@needs_root
def test_user_naming_root_refuses_to_start(make_appliance):
    a = make_appliance(extra_conf={"user": "root"}, start=False)
    last = wait_refused(a)
    assert "user = root" in last and "uid 0" in last, last


@needs_root
def test_user_set_with_data_dir_not_owned_by_it_refuses_and_names_the_fix(make_appliance):
    pw = account()
    a = make_appliance(extra_conf={"user": ACCOUNT}, start=False)
    give_to(a.dir, pw)
    # One token file left to root, as a `cp` by root into the data directory would.
    tokdir = os.path.join(a.dir, "token")
    victim = next(os.path.join(d, f) for d, _, files in os.walk(tokdir) for f in files)
    os.chown(victim, 0, 0)
    last = wait_refused(a)
    assert victim in last and "user = %s" % ACCOUNT in last, last
    assert "chown -R %s %s" % (ACCOUNT, a.dir) in last, last
    # The fix it names works.
    give_to(a.dir, pw)
    a.start()
    assert ids(status(a.proc.pid)["Uid"])[0] == pw.pw_uid


@needs_root
def test_user_set_but_started_as_another_unprivileged_user_refuses(make_appliance):
    pw = account()
    a = make_appliance(extra_conf={"user": "nobody"}, start=False)
    give_to(a.dir, pw)
    log = open(a.log_path, "ab")
    try:
        proc = subprocess.Popen([signd_for_any_user(), a.conf], stdout=subprocess.PIPE,
                                stderr=log, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        out = proc.stdout.read().decode()
        rc = proc.wait(timeout=30)
        proc.stdout.close()
    finally:
        log.close()
    assert rc == 1 and "listening" not in out, (rc, out)
    last = a.read_log().strip().splitlines()[-1]
    assert "user = nobody is set but signd was not started as root" in last, last


@needs_root
def test_user_set_and_already_running_as_it_starts(make_appliance):
    pw = account()
    a = make_appliance(extra_conf={"user": ACCOUNT}, start=False)
    give_to(a.dir, pw)
    log = open(a.log_path, "ab")
    proc = subprocess.Popen([signd_for_any_user(), a.conf], stdout=subprocess.PIPE,
                            stderr=log, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
    try:
        line = proc.stdout.readline().decode()
        assert "listening" in line, (line, a.read_log())
        assert status(proc.pid)["NoNewPrivs"] == "1"
        a.create_key(label="as-the-user")
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        proc.stdout.close()
        log.close()


# ---- one account per process (user empty) -----------------------------------------------

@needs_root
def test_a_token_file_not_the_keepers_stops_signd_naming_the_chown(make_appliance):
    a = make_appliance(start=False)
    tokdir = os.path.join(a.dir, "token")
    victim = next(os.path.join(d, f) for d, _, files in os.walk(tokdir) for f in files)
    os.chown(victim, 0, 0)  # as a `cp` by root into the token would leave it
    last = wait_refused(a)
    assert "keeper_user = signd-keeper" in last and victim in last, last
    assert "chown signd-keeper %s" % victim in last, last
    # The fix the message names (init-data-dir.sh does it for the whole directory) works.
    subprocess.run(["chown", "signd-keeper:", victim], check=True)
    a.start()
    assert status(a.children()["keeper"])["Uid"].split()[0] == \
        str(pwd.getpwnam("signd-keeper").pw_uid)


@needs_root
def test_one_account_for_keeper_and_front_is_refused_unless_user_says_so(make_appliance):
    a = make_appliance(extra_conf={"front_user": "signd-keeper"}, start=False)
    last = wait_refused(a)
    assert "keeper_user = signd-keeper and front_user = signd-keeper are the same account" \
        in last, last


# ---- private files ---------------------------------------------------------------------

def private_files_of(a):
    """Every path under the token directory, appliance.db*, and everything init-data-dir.sh
    made, except the TLS certificate (public, 0644 on purpose) and the log the test opened."""
    paths = []
    for d, dirs, files in os.walk(a.dir):
        for name in dirs + files:
            paths.append(os.path.join(d, name))
    paths.append(a.dir)
    skip = {os.path.join(a.dir, "tls", "cert.pem"), a.log_path}
    return [p for p in paths if p not in skip]


# What the keeper and the front share, through a group of their own (signd-data, made by
# init-data-dir.sh when root): the data directory (to create the database's -wal and -shm
# and the keeper's socket), the database the keeper reads, the socket the front connects
# to. Only these may carry group bits, and nothing may carry bits for others.
SHARED = ("", "appliance.db", "appliance.db-wal", "appliance.db-shm", "appliance.db-journal",
          "keeper.sock")


def assert_private(a):
    paths = private_files_of(a)
    assert any(os.path.basename(p).startswith("appliance.db") for p in paths), paths
    assert any("/token/" in p for p in paths), paths
    shared = {os.path.normpath(os.path.join(a.dir, name)) for name in SHARED}
    loose = ["%s %o" % (p, os.lstat(p).st_mode & 0o7777) for p in paths
             if os.lstat(p).st_mode & (0o007 if os.path.normpath(p) in shared else 0o077)]
    assert not loose, loose


def test_files_the_appliance_creates_are_private(make_appliance):
    a = make_appliance()
    before = set(private_files_of(a))
    key = a.create_key(label="private")
    a.delete("/v1/keys/" + key["kid"], {"reason": "test"})
    a.create_key(label="second")
    after = set(private_files_of(a))
    # The key's token objects and the database's -wal/-shm are among what is checked.
    assert len([p for p in after - before if "/token/" in p]) >= 2, sorted(after - before)
    assert_private(a)
    a.stop()
    assert_private(a)


@needs_root
def test_files_created_after_the_switch_are_private_and_the_users(make_appliance):
    pw = account()
    a = started_as_account(make_appliance, pw)
    a.create_key(label="private")
    assert_private(a)
    owners = {p: os.lstat(p).st_uid for p in private_files_of(a) if "/token/" in p}
    assert set(owners.values()) == {pw.pw_uid}, owners


# ---- secrets stay out of /proc and the log ---------------------------------------------

def secrets_of(a):
    found = {"admin secret": a.admin}
    if a.signer:
        found["signer secret"] = a.signer
    for name in ("pin", "so-pin"):
        with open(os.path.join(a.dir, name)) as f:
            found[name] = f.read().strip()
    assert all(len(v) >= 8 for v in found.values()), found
    return found


def exercise(a):
    """Some successful and failed requests, with a near miss of the admin secret."""
    near_miss = a.admin[:-1] + ("A" if a.admin[-1] != "A" else "B")
    key = a.create_key(label="secrets")
    a.get("/v1/keys")
    assert a.post("/v1/keys/%s/sign" % key["kid"], {"payload": b64u(b"x")}).status_code == 200
    for bearer in (near_miss, "sgd_wrong", a.admin + "x"):
        r = a.get("/v1/keys", headers=a.auth(bearer))
        # 429: the address presented too many bad credentials (auth_failure_burst).
        assert r.status_code in (401, 429), (bearer, r.status_code)
    assert a.get("/v1/keys", auth=False).status_code in (401, 429)
    r = a.post("/v1/keys", {"bits": 1}, headers={"Authorization": "Basic " + a.admin})
    assert r.status_code in (401, 429)
    return near_miss


def assert_no_secret(a, extra=()):
    """No secret in the cmdline or environment of any process of the appliance (the
    supervisor, the keeper, the front), nor in its log."""
    secrets = secrets_of(a)
    secrets.update(extra)
    places = {}
    assert len(a.pids()) == 3
    for pid in a.pids():
        for name in ("cmdline", "environ"):
            with open("/proc/%d/%s" % (pid, name), "rb") as f:
                places["/proc/%d/%s" % (pid, name)] = f.read().decode(errors="replace")
    places["log"] = a.read_log()
    for where, text in places.items():
        for what, value in secrets.items():
            assert value not in text, "%s found in %s" % (what, where)


def test_pin_and_admin_secret_appear_in_no_cmdline_environ_or_log(make_appliance):
    a = make_appliance(extra_conf={"log_requests": "true"})
    near_miss = exercise(a)
    assert re.search(r'"status":40[13]', a.read_log()), "log_requests logged nothing to search"
    # A rejected bearer is a secret with a typo: it is not logged either.
    assert_no_secret(a, {"a rejected bearer": near_miss})


@needs_root
def test_secrets_stay_out_of_proc_and_log_after_the_switch(make_appliance):
    pw = account()
    a = started_as_account(make_appliance, pw, {"log_requests": "true"})
    near_miss = exercise(a)
    assert_no_secret(a, {"a rejected bearer": near_miss})
