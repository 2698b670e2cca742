"""provisioning/signd.service and what the appliance does for it: the PIN as a systemd
credential ($CREDENTIALS_DIRECTORY/NAME with `pin_credential = NAME`), a unit that
systemd-analyze accepts with every hardening setting the issue asks for, and the appliance
running under the kernel's own write-xor-execute rule (what MemoryDenyWriteExecute= asks of
it)."""
import ctypes
import os
import pathlib
import pwd
import re
import shutil
import subprocess
import tempfile

import pytest

from conftest import SIGND, TOP

UNIT = os.path.join(TOP, "provisioning", "signd.service")
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "PrivateTmp": "yes",
    "ProtectHome": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "LoadCredential": "pin:/etc/signd/pin",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "LockPersonality": "yes",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "User": "signd",
    "StateDirectory": "signd",
}


def unit_settings():
    """{key: [values]} of the unit's [Service] section."""
    out, section = {}, None
    for line in open(UNIT).read().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


CREDENTIAL_DIRS = []


@pytest.fixture(autouse=True)
def remove_credential_dirs():
    yield
    while CREDENTIAL_DIRS:
        shutil.rmtree(CREDENTIAL_DIRS.pop(), ignore_errors=True)


def credential_dir(tmp_path, pin_source, name="pin"):
    """A 0700 directory holding the PIN as systemd lays a credential out (0400), owned by
    the account that reads it, as systemd gives it to the service's user: started as root,
    the keeper runs as signd-keeper, which must reach it (so not under pytest's root-only
    tmp_path)."""
    if os.geteuid() == 0:
        d = pathlib.Path(tempfile.mkdtemp(prefix="signd-creds-"))
        CREDENTIAL_DIRS.append(str(d))
    else:
        d = tmp_path / "credentials"
        d.mkdir(mode=0o700)
    shutil.copyfile(pin_source, d / name)
    os.chmod(d / name, 0o400)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("signd-keeper")
        for path in (d, d / name):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    return str(d)


def start_failing(a, env):
    """Starts a's signd expecting it to refuse: (exit status, stdout, stderr)."""
    p = subprocess.run([SIGND, a.conf], capture_output=True, env={**os.environ, **env},
                       timeout=60)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def test_pin_is_read_from_the_systemd_credential(make_appliance, tmp_path):
    a = make_appliance(start=False)
    creds = credential_dir(tmp_path, os.path.join(a.dir, "pin"))
    # Nothing left where pin_file points: only the credential can log the keeper in.
    os.unlink(os.path.join(a.dir, "pin"))
    a.set_conf({"pin_credential": "pin"})
    a.start(env_extra={"CREDENTIALS_DIRECTORY": creds})
    assert a.get("/readyz", auth=False).status_code == 200
    kid = a.create_key()["kid"]
    r = a.post("/v1/tokens", {"kid": kid, "sub": "video-1"})
    assert r.status_code == 200, r.text


def test_the_single_process_model_is_refused_in_one_line(make_appliance):
    # process_model = single left production: the key still loads with split (every other
    # test), and single stops the start with one line naming the setting.
    a = make_appliance({"process_model": "single"}, start=False)
    rc, out, err = start_failing(a, {})
    assert rc != 0
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "process_model" in lines[0] and "only split exists" in lines[0], err


def test_missing_credential_is_one_line_and_a_failed_start(make_appliance, tmp_path):
    a = make_appliance(start=False)
    a.set_conf({"pin_credential": "pin"})
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    rc, out, err = start_failing(a, {"CREDENTIALS_DIRECTORY": str(empty)})
    assert rc != 0
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "pin_credential = pin" in lines[0] and str(empty / "pin") in lines[0], err
    assert "No such file" in lines[0], err


def test_pin_credential_without_credentials_directory_says_how_to_fix_it(make_appliance):
    a = make_appliance(start=False)
    a.set_conf({"pin_credential": "pin"})
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    p = subprocess.run([SIGND, a.conf], capture_output=True, env=env, timeout=60)
    assert p.returncode != 0
    lines = p.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "$CREDENTIALS_DIRECTORY is not set" in lines[0]
    assert "LoadCredential=pin:" in lines[0]


def test_pin_credential_readable_by_others_is_refused(make_appliance, tmp_path):
    a = make_appliance(start=False)
    creds = credential_dir(tmp_path, os.path.join(a.dir, "pin"))
    os.chmod(os.path.join(creds, "pin"), 0o444)
    a.set_conf({"pin_credential": "pin"})
    rc, out, err = start_failing(a, {"CREDENTIALS_DIRECTORY": creds})
    assert rc != 0
    assert "listening" not in out
    assert "pin_file_unusable" in err, err
    # The PIN itself never reaches a log.
    assert open(os.path.join(a.dir, "pin")).read().strip() not in err


@pytest.mark.parametrize("name", ["../pin", "sub/pin", ".."])
def test_pin_credential_name_that_leaves_the_directory_is_refused(make_appliance, name):
    a = make_appliance(start=False)
    a.set_conf({"pin_credential": name})
    rc, out, err = start_failing(a, {"CREDENTIALS_DIRECTORY": a.dir})
    assert rc != 0
    assert "'pin_credential' must be a credential name" in err, err


def test_unit_has_every_hardening_setting():
    settings = unit_settings()
    for key, value in HARDENING.items():
        assert value in settings.get(key, []), "%s=%s missing from %s" % (key, value, UNIT)
    # The unit runs the appliance on the data directory systemd creates for it.
    assert settings["ExecStart"] == ["/usr/local/bin/signd /var/lib/signd/appliance.conf"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_accepts_the_unit_and_rates_it_ok(tmp_path):
    # verify checks that ExecStart's binary exists: point it at the one under test.
    unit = tmp_path / "signd.service"
    unit.write_text(open(UNIT).read().replace("/usr/local/bin/signd ", SIGND + " "))
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and p.stderr.strip() == "", p.stderr
    p = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    m = re.search(r"Overall exposure level for signd.service: ([0-9.]+) (\w+)", p.stdout)
    assert m, p.stdout[-2000:]
    assert float(m.group(1)) <= 2.0 and m.group(2) == "OK", m.group(0)


PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1


def _refuse_exec_gain():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        os._exit(97)


def _mdwe_supported():
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0


@pytest.mark.skipif(not _mdwe_supported(), reason="kernel without PR_SET_MDWE (Linux < 6.3)")
def test_appliance_signs_with_write_xor_execute_memory(make_appliance):
    """MemoryDenyWriteExecute=yes: the kernel's PR_SET_MDWE refuses the same mappings
    (writable and executable, or made executable later) and, unlike systemd's filter, is
    inherited by the keeper and the front. The whole appliance (SoftHSM2, OpenSSL, SQLite,
    CivetWeb) starts, signs and stops under it."""
    # The control: a process started the same way cannot map memory writable and
    # executable (the rule survives execve and reaches children).
    wx = ("import mmap, sys\n"
          "try:\n"
          "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
          "except OSError:\n"
          "    sys.exit(3)\n")
    assert subprocess.run(["/usr/bin/python3", "-c", wx], preexec_fn=_refuse_exec_gain,
                          timeout=60).returncode == 3
    assert subprocess.run(["/usr/bin/python3", "-c", wx], timeout=60).returncode == 0
    a = make_appliance(start=False)
    a.log = open(a.log_path, "ab")
    a.proc = subprocess.Popen([SIGND, a.conf], stdout=subprocess.PIPE, stderr=a.log,
                              start_new_session=True, preexec_fn=_refuse_exec_gain)
    line = a.proc.stdout.readline().decode()
    assert "listening" in line, a.read_log()
    assert len(a.pids()) == 3  # supervisor, keeper and front all run under it
    a.signer = a.create_credential("signer", kids="all")["secret"]
    kid = a.create_key()["kid"]
    r = a.post("/v1/keys/%s/sign" % kid, {"payload": "aGVsbG8"})
    assert r.status_code == 200, r.text
    assert a.stop() == 0
