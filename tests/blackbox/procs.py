"""Process helpers shared by the black-box tests: every test stops what it started, by PID."""
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
