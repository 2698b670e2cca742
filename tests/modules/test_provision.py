"""signd-provision module-token, the token set-up every module's script uses (opencryptoki's
and tpm2's), tried on a fresh SoftHSM2 token of its own: random PINs of the length asked
in new 0600 files, the factory SO PIN replaced (it no longer logs in), the slot asked for
and nothing else, and a second run refused, so that no provisioning mistake wipes keys."""
import os
import stat
import subprocess

import PyKCS11
import pytest

from conftest import bb

PROVISION = os.path.join(bb.TOP, bb.BUILD, "bin", "signd-provision")
SOFTHSM2 = "/usr/lib/softhsm/libsofthsm2.so"


@pytest.fixture
def fresh(tmp_path):
    """A SoftHSM2 configuration with an empty token folder: one uninitialised slot."""
    os.mkdir(tmp_path / "tokens")
    conf = tmp_path / "softhsm2.conf"
    conf.write_text("directories.tokendir = %s\nobjectstore.backend = file\n"
                    "log.level = ERROR\n" % (tmp_path / "tokens"))
    data = tmp_path / "data"
    os.mkdir(data, 0o700)
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    factory = tmp_path / "factory-so-pin"
    factory.write_text("87654321")
    os.chmod(factory, 0o600)
    return data, env, factory


def provision(data, env, *args):
    return subprocess.run([PROVISION, "module-token", str(data), "--module", SOFTHSM2] +
                          list(args), env=env, capture_output=True, text=True, timeout=60)


def free_slot(env):
    p = subprocess.run(["pkcs11-tool", "--module", SOFTHSM2, "--list-slots"], env=env,
                       capture_output=True, text=True, check=True)
    return int(p.stdout.split("Slot 0 (0x", 1)[1].split(")", 1)[0], 16)


def login(env, label, pin, user=PyKCS11.CKU_USER):
    """C_Login in a process of its own (the module reads SOFTHSM2_CONF when loaded)."""
    code = ("import PyKCS11,sys\nl=PyKCS11.PyKCS11Lib();l.load(%r)\n"
            "s=[s for s in l.getSlotList(True) if l.getTokenInfo(s).label.strip()==%r][0]\n"
            "x=l.openSession(s,PyKCS11.CKF_RW_SESSION)\ntry:\n x.login(sys.stdin.read(),%d)\n"
            "except PyKCS11.PyKCS11Error as e:\n print(e);sys.exit(1)\n" % (SOFTHSM2, label, user))
    return subprocess.run(["/usr/bin/python3", "-c", code], input=pin, env=env,
                          capture_output=True, text=True, timeout=60)


def test_module_token_changes_the_factory_so_pin_and_writes_short_random_pins(fresh):
    data, env, factory = fresh
    slot = free_slot(env)
    p = provision(data, env, "--label", "signd-test", "--slot", str(slot), "--pin-length", "8",
                  "--factory-so-pin-file", str(factory))
    assert p.returncode == 0, p.stderr
    assert "label: signd-test" in p.stdout
    pins = {}
    for name in ("pin", "so-pin"):
        path = data / name
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o600
        pins[name] = path.read_text()
        assert len(pins[name]) == 8 and pins[name].isalnum(), name
        assert pins[name] not in p.stdout + p.stderr
    assert pins["pin"] != pins["so-pin"]
    assert login(env, "signd-test", pins["pin"]).returncode == 0
    assert login(env, "signd-test", pins["so-pin"], PyKCS11.CKU_SO).returncode == 0
    # The published SO PIN the token was initialised with no longer opens it.
    r = login(env, "signd-test", "87654321", PyKCS11.CKU_SO)
    assert r.returncode == 1 and "CKR_PIN_INCORRECT" in r.stdout, r.stdout + r.stderr
    # Run again: the PIN files exist, nothing is touched.
    again = provision(data, env, "--label", "signd-test2", "--factory-so-pin-file",
                      str(factory))
    assert again.returncode == 1 and "refusing" in again.stderr, again.stderr
    assert (data / "pin").read_text() == pins["pin"]


def test_module_token_refuses_a_slot_without_a_free_token_and_leaves_no_pin(fresh):
    data, env, factory = fresh
    p = provision(data, env, "--label", "x", "--slot", "4242", "--factory-so-pin-file",
                  str(factory))
    assert p.returncode == 1
    assert "no uninitialised token in that slot" in p.stderr, p.stderr
    assert not os.path.exists(data / "pin") and not os.path.exists(data / "so-pin")


def test_module_token_refuses_pins_outside_4_to_64(fresh):
    data, env, factory = fresh
    for n in ("3", "65"):
        p = provision(data, env, "--label", "x", "--pin-length", n)
        assert p.returncode != 0
    assert not os.path.exists(data / "pin")
