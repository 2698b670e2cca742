"""Process helpers shared by the black-box tests: every test stops what it started, by PID."""
import subprocess


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
