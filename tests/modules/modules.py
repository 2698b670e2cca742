"""The PKCS#11 modules `make test-modules` runs the core black-box set on.

Each module's harness is the same script `make run HSM=NAME` uses,
provisioning/hsm/NAME.sh: `start DATA_DIR` (its daemons, its token, the PINs in 0600 files),
`conf DATA_DIR` (the appliance.conf lines), `stop DATA_DIR` (by PID, what start started);
opencryptoki's soft token is the machine's, so its script also has `release DATA_DIR`,
which wipes the token that DATA_DIR made (the tests' teardown).
"""
import os

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


class Module:
    def __init__(self, name, key_sizes, refused_sizes=(), sign_only=True, releases=False,
                 one_token_per_machine=False, thousand_keys=False, to_key_limit=False):
        self.name = name
        # What POST /v1/keys must make on this token, and what it must refuse with
        # 400 key_size_unsupported (the appliance asks 2048, 3072 or 4096).
        self.key_sizes = key_sizes
        self.refused_sizes = refused_sizes
        # Whether the token keeps the sign-only template (CKA_DECRYPT etc. false).
        self.sign_only = sign_only
        self.releases = releases
        self.one_token_per_machine = one_token_per_machine
        # The mission's 1,000 active keys (issue 21, item 4).
        self.thousand_keys = thousand_keys
        # Its conf's max_active_keys (below 1,000): made, then each signs after a restart.
        self.to_key_limit = to_key_limit

    @property
    def script(self):
        return os.path.join(TOP, "provisioning", "hsm", self.name + ".sh")

    def available(self):
        return os.access(self.script, os.X_OK)

    def __repr__(self):
        return self.name


MODULES = [
    Module("softhsm2", key_sizes=(2048, 3072, 4096)),
    # One soft token per machine (slot 3, /var/lib/opencryptoki/swtok); 2,048 private and
    # 2,048 public objects; RSA up to 4096 (docs/modules.md).
    Module("opencryptoki", key_sizes=(2048, 3072, 4096), releases=True,
           one_token_per_machine=True, thousand_keys=True),
    # tpm2-pkcs11 on swtpm: RSA 1024 to 3072, no sign-only key; one keeper process holds at
    # most 100 loaded keys (tpm2-abrmd's --max-transients), so max_active_keys = 40.
    Module("tpm2", key_sizes=(2048, 3072), refused_sizes=(4096,), sign_only=False,
           to_key_limit=True),
]


def selected():
    """TEST_MODULES (space-separated names, tests/modules/run.sh) or all of them."""
    want = os.environ.get("TEST_MODULES", "").split()
    return [m for m in MODULES if not want or m.name in want]
