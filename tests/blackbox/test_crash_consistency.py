"""Token and registry agree while the appliance serves, not only after its next start.

Found by `make soak` (tests/soak/soak.py): reconcile runs when a front starts, so two kinds
of key object outlived a crash of one process until the next start of the front:
 - a key the keeper generated for a front that was killed mid-request: the restarted
   front reconciled before the key existed, so nobody destroyed it. The keeper now
   destroys a generated key whose answer it could not deliver (appliance/keeper/keeperd.c);
 - a key whose destroy failed because the keeper was down (a revoked key, or a generated
   one whose answer was lost with the keeper): the front now defers it and destroys it
   once the keeper answers again (rec_defer_destroy, appliance/core/reconcile.h).
Both are checked against the token itself (`signd-provision token-list`)."""
import os
import signal
import subprocess
import functools
import threading

import requests

from conftest import BUILD, TOP, alive_pid
import procs

# A keeper or front restarting under load (ASan) takes longer than the suite's default.
wait_for = functools.partial(procs.wait_for, timeout=60, interval=0.1)

PROVISION = os.path.join(TOP, BUILD, "bin", "signd-provision")


def token_kids(a):
    """{kid: has_private} of every client key object on the token (service keys left out)."""
    p = subprocess.run([PROVISION, "token-list", a.dir], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    out = {}
    for line in p.stdout.splitlines():
        f = line.split()
        if "reserved" not in f[3:]:
            out[f[0]] = f[1] == "private"
    return out


def sent_to_keeper(front):
    """True once the front has a request queued on a keeper connection (SOCK_SEQPACKET
    Send-Q > 0 while the keeper is stopped)."""
    out = subprocess.run(["ss", "-x", "-a", "-p", "-H"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "u_seq" and "pid=%d," % front in line and int(f[3]) > 0:
            return True
    return False


def test_token_list_names_every_key_object_and_no_pin(make_appliance):
    a = make_appliance()
    keys = [a.create_key(label="listed-%d" % i)["kid"] for i in range(2)]
    assert token_kids(a) == {k: True for k in keys}
    p = subprocess.run([PROVISION, "token-list", a.dir], capture_output=True, text=True)
    pin = open(os.path.join(a.dir, "pin")).read().strip()
    assert pin not in p.stdout + p.stderr


def test_a_key_generated_for_a_front_killed_mid_request_is_destroyed_by_the_keeper(
        make_appliance):
    a = make_appliance()
    kept = a.create_key(label="kept")["kid"]
    kids = a.children()
    front, keeper = kids["front"], kids["keeper"]
    outcome = []

    def create():
        try:
            outcome.append(a.post("/v1/keys", {"bits": 4096, "label": "never answered"}))
        except requests.exceptions.ConnectionError as e:
            outcome.append(e)

    # The keeper stopped, the GENERATE waits in its socket; the front dies before the key
    # exists, so the restarted front's reconcile cannot see it.
    os.kill(keeper, signal.SIGSTOP)
    try:
        t = threading.Thread(target=create)
        t.start()
        wait_for(lambda: sent_to_keeper(front), message="the GENERATE to reach the keeper")
        os.kill(front, signal.SIGKILL)
        # Gone, not only a zombie leader whose threads still hold its keeper connections.
        wait_for(lambda: not os.path.exists("/proc/%d" % front), message="the front to go")
    finally:
        os.kill(keeper, signal.SIGCONT)
    t.join(120)
    assert isinstance(outcome[0], requests.exceptions.ConnectionError), outcome
    a.wait_front_restarted(front)
    # Either the keeper generated it and, the answer undeliverable, destroyed it; or the
    # new front's start had already cleared the dead request's pending reservation and
    # the keeper refused to generate at all (it generates only under a pending kid).
    line = wait_for(lambda: [l for l in a.read_log().splitlines()
                             if "generated for a front that did not take the answer" in l
                             or ("refused to generate kid" in l and "not pending" in l)],
                    timeout=120, message="the keeper to drop or refuse the unanswered key")
    assert line[0].endswith(": destroyed") or "not pending" in line[0], line
    assert token_kids(a) == {kept: True}
    assert [k["kid"] for k in a.get("/v1/keys").json()["keys"]] == [kept]


def test_a_revoked_key_whose_destroy_failed_with_the_keeper_down_is_destroyed_once_it_is_back(
        make_appliance):
    a = make_appliance()
    kept = a.create_key(label="kept")["kid"]
    doomed = a.create_key(label="revoked while the keeper is down")["kid"]
    supervisor, kids = a.proc.pid, a.children()
    # The supervisor stopped, the keeper stays dead while the revocation is answered.
    os.kill(supervisor, signal.SIGSTOP)
    try:
        os.kill(kids["keeper"], signal.SIGKILL)
        wait_for(lambda: not alive_pid(kids["keeper"]), message="the keeper to die")
        r = a.delete("/v1/keys/" + doomed, {"reason": "keeper down"})
        assert r.status_code == 200, r.text
        # The destroy is the destroyer thread's, after the answer: its line follows.
        wait_for(lambda: "could not destroy it yet" in a.read_log(),
                 message="the destroyer to find the keeper away")
    finally:
        os.kill(supervisor, signal.SIGCONT)
    wait_for(lambda: "destroyed kid %s, deferred while the keeper was away" % doomed
             in a.read_log(), message="the deferred destroy")
    assert token_kids(a) == {kept: True}
    # The front was never restarted: no start-up reconcile did it.
    assert a.children()["front"] == kids["front"]
    r = a.post("/v1/keys/%s/sign" % doomed, {"payload": "eA"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_revoked", r.text
