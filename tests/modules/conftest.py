"""Fixtures of `make test-modules`: the black-box suite's Appliance (tests/blackbox/conftest.py,
its HTTPS helpers and its OpenAPI check of every response), provisioned for one PKCS#11
module by that module's provisioning/hsm/NAME.sh, the script `make run HSM=NAME` uses.

One appliance per module, shared by the module's tests: opencryptoki's soft token is one
per machine, so a second data directory could not have a token of its own. The modules run
one after another (pytest orders the tests by the module fixture's parameter), and after a
module's tests its appliance is stopped, then its daemons (`stop`), then, for opencryptoki,
the token it made is wiped (`release`).
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BLACKBOX = os.path.join(HERE, "..", "blackbox")
sys.path.insert(0, BLACKBOX)
sys.path.insert(0, HERE)

# The black-box conftest under a name of its own (this file is "conftest" too).
_spec = importlib.util.spec_from_file_location("blackbox_conftest",
                                               os.path.join(BLACKBOX, "conftest.py"))
bb = importlib.util.module_from_spec(_spec)
sys.modules["blackbox_conftest"] = bb
_spec.loader.exec_module(bb)

# Every response is checked against docs/openapi.yaml, as in the black-box suite.
openapi_conformance = bb.openapi_conformance
pytest_collection_modifyitems = bb.pytest_collection_modifyitems

from modules import selected  # noqa: E402

# What the tests measured, printed at the end of the run (pytest_terminal_summary).
FIGURES = {}


def figure(module, key, value):
    FIGURES.setdefault(module, {})[key] = value


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("figures")
    for module, figs in FIGURES.items():
        for key, value in figs.items():
            terminalreporter.write_line("%s: %s = %s" % (module, key, value))
    path = os.environ.get("SIGND_MODULES_FIGURES")
    if path:
        with open(path, "w") as f:
            json.dump(FIGURES, f, indent=1)


class ModuleAppliance(bb.Appliance):
    """An appliance on the token of module (modules.Module), made by its script."""

    def __init__(self, data_dir, module, extra_conf=None):
        self.module = module
        super().__init__(data_dir, extra_conf)

    def script(self, command):
        p = subprocess.run([self.module.script, command, self.dir], capture_output=True,
                           text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError("%s %s %s: exit %d\n%s" % (self.module.script, command, self.dir,
                                                          p.returncode, p.stderr))
        return p

    def provision(self, data_dir):
        # A module whose token is one per machine may be in use by another data directory
        # for a while (make bench HSM=opencryptoki releases it when done): wait for it.
        deadline = time.monotonic() + float(os.environ.get("SIGND_MODULES_WAIT", "300"))
        while True:
            try:
                with bb.machine_lock() if os.geteuid() == 0 else bb.contextlib.nullcontext():
                    self.script("start")
                break
            except RuntimeError as e:
                if "was initialised by" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(5)
        with bb.machine_lock() if os.geteuid() == 0 else bb.contextlib.nullcontext():
            env = dict(os.environ, SIGND_HSM=self.module.name)
            subprocess.run([bb.INIT, data_dir, str(self.port)], check=True,
                           stdout=subprocess.DEVNULL, env=env)
        conf = os.path.join(data_dir, "appliance.conf")
        lines = open(conf).read().splitlines()
        self.module_conf = {}
        for line in self.script("conf").stdout.splitlines():
            key, _, value = line.partition("=")
            self.module_conf[key.strip()] = value.strip()
        lines = [l for l in lines if l.partition(" =")[0] not in self.module_conf]
        lines += ["%s = %s" % kv for kv in self.module_conf.items()]
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        return os.path.join(data_dir, "admin.credential")

    def module_env(self):
        """The environment a PKCS#11 client of this token needs (paths, never a secret)."""
        env = dict(os.environ)
        if self.module_conf.get("softhsm2_conf"):
            env["SOFTHSM2_CONF"] = os.path.join(self.dir, self.module_conf["softhsm2_conf"])
        for item in filter(None, self.module_conf.get("pkcs11_env", "").split(",")):
            name, _, value = item.partition("=")
            env[name.strip()] = value.strip()
        return env

    def teardown(self):
        """Stops the appliance, wipes the token it made (release reads the token's label
        through the module's daemon), then stops the daemons."""
        try:
            self.stop()
        finally:
            try:
                if self.module.releases:
                    self.script("release")
            finally:
                self.script("stop")


@pytest.fixture(scope="module", params=selected(), ids=lambda m: m.name)
def mod(request):
    """(module, appliance): the module's appliance, started; stopped and released after."""
    module = request.param
    if not module.available():
        pytest.skip("%s: provisioning/hsm/%s.sh is not there yet" % (module.name, module.name))
    d = tempfile.mkdtemp(prefix="signd-modules-%s-" % module.name)
    os.chmod(d, 0o755)
    a = None
    try:
        a = ModuleAppliance(d, module)
        a.start()
        yield module, a
    finally:
        if a is not None:
            a.teardown()
        else:
            if module.releases:
                subprocess.run([module.script, "release", d], capture_output=True)
            subprocess.run([module.script, "stop", d], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)
