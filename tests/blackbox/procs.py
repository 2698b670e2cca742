"""Process helpers shared by the black-box tests: every test stops what it started, by PID."""
import os
import shutil
import subprocess
import time


def stop_process(proc, sig, timeout):
    """Sends sig to a running proc, waits up to timeout, then SIGKILLs it.

    Returns (was_alive, returncode)."""
    alive = proc.poll() is None
    if alive:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return alive, proc.returncode


def wait_for(what, timeout=20, interval=0.2, message="condition"):
    """Polls what() until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + message)
        time.sleep(interval)


def status(pid):
    """/proc/PID/status as a dict of its fields (text after the colon, stripped)."""
    fields = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def restore_tree(snapshot, path):
    """Replaces the directory path by snapshot (a copy the test made as root), owned as
    path was: started as root, the token directory is the keeper account's, and signd
    refuses one that is not (as an operator restoring a backup must chown it)."""
    owner = os.stat(path)
    shutil.rmtree(path)
    shutil.move(snapshot, path)
    for d, _, files in os.walk(path):
        for p in [d] + [os.path.join(d, n) for n in files]:
            os.chown(p, owner.st_uid, owner.st_gid)
