"""Hostile clients, bounded (tests/hostile/hostile.py runs them at full scale with latency
figures: make hostile). Each attack runs from its own process and source address while two
well-behaved clients keep working; each test pins what the attacker gets (a 4xx or a
closed connection, never a 5xx or a hang), that the well-behaved clients were never
refused, that neither the front nor the keeper died or was restarted, and that the front's
and the keeper's RSS come back to their level before the attack.

Already covered elsewhere, not repeated here: one malformed request of each kind with its
exact error code, a 70 KiB body, a 10 MB Content-Length refused before the body is read
and a garbage request line (test_malformed.py).
"""
import os
import re
import shutil
import sys
import tempfile

import pytest

from conftest import Appliance

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "hostile"))
import hostile  # noqa: E402

SCALE = hostile.SCALES["bounded"]
THREADS = SCALE["conf"]["worker_threads"] + SCALE["conf"]["events_max_subscribers"]


def sanitized(pid):
    """True when pid runs an AddressSanitizer build (make test-asan): its allocator keeps
    freed memory in quarantine on purpose, so RSS is not expected to come back there."""
    with open("/proc/%d/maps" % pid) as f:
        return "libasan" in f.read()


@pytest.fixture(scope="module")
def target():
    d = tempfile.mkdtemp(prefix="signd-test-")
    a = Appliance(d, SCALE["conf"]).start()
    hostile.setup(a)
    # Every worker thread serves once first, so the RSS measured before each case already
    # holds each thread's first-use pages (hostile.py's RSS_TOLERANCE says what is left).
    hostile.warm_up(a, THREADS + 8)
    yield a
    a.stop()
    shutil.rmtree(d, ignore_errors=True)


def attack(a, case, **override):
    """Runs case at the bounded scale (with override); checks what every attack must leave
    behind and returns the outcomes (a dict: what the attacker got -> how many times)."""
    asan = any(sanitized(p) for p in a.children().values())
    row = hostile.run_case(a, case, {**SCALE[case], **override}, baseline_s=0.3,
                           settle_s=0 if asan else hostile.SETTLE_S)
    assert row["alive"], "the front or the keeper died or was restarted:\n" + a.read_log()[-3000:]
    assert row["readyz"] == 200, row["readyz"]
    for client in ("sign", "fresh"):
        assert not row[client + "_errors"], (client, row[client + "_errors"])
        assert row[client] is not None and row[client]["n"] > 0, client
    if not asan:
        assert row["rss_back"], "RSS KiB before %s, peak %s, after %s" % (
            row["rss_before"], row["rss_peak"], row["rss_after"])
    assert row["outcomes"], "the attacker recorded nothing"
    return row["outcomes"]


def only(outcomes, pattern):
    """Every outcome matches pattern (a regular expression)."""
    bad = {k: v for k, v in outcomes.items() if not re.fullmatch(pattern, k)}
    assert not bad, bad


def test_keep_alive_connections_below_the_reserve_are_all_kept_alive(target):
    # Two more connections are the well-behaved clients' (two spare); a quarter of the workers is the
    # reserve past which responses close their connection (server.c, keepalive_max).
    n = THREADS - SCALE["conf"]["worker_threads"] // 4 - 6
    out = attack(target, "keepalive", n=n, hold=1, idle=0.2, patience=60)
    only(out, r"200, then after the idle hold 200")


def test_keep_alive_connections_past_the_thread_count_are_all_served_some_closed(target):
    # Twice the threads: without the reserve, the connections past the thread count
    # would wait for the first ones to leave; with it, every connection is answered while
    # the first ones still hold their threads, and the connections answered past the
    # reserve are closed (Connection: close) instead of kept idle.
    out = attack(target, "keepalive", n=2 * THREADS, hold=1, patience=60)
    only(out, r"200, then after the idle hold (200|closed)")


def test_past_the_reserve_each_response_closes_its_connection(make_appliance):
    # 4 + 4 threads, a reserve of 2: six connections may idle; the seventh and later are
    # answered with Connection: close and closed, which frees their thread for the next.
    a = make_appliance({"worker_threads": 4, "events_max_subscribers": 4,
                        "keep_alive_timeout_ms": 600000})
    a.session.close()
    t = hostile.Target({"port": a.port, "cacert": a.cacert, "secret": "", "kid": ""})
    held, got = [], []
    try:
        for _ in range(12):
            s = t.tls(60)
            s.sendall(hostile.request_bytes("GET", "/healthz"))
            codes, end = ([], None)
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            closing = b"Connection: close" in head
            if closing:
                codes, end = hostile.read_all_statuses(s)  # the rest: nothing, then the close
            got.append((head.split(b" ")[1].decode(), closing, end))
            held.append(s)
    finally:
        for s in held:
            s.close()
    # Six may idle: the five made here, and the fixture's own keep-alive session unless
    # the server has already seen it close.
    kept = sum(1 for g in got if not g[1])
    assert 5 <= kept <= 6, got
    assert got == [("200", False, None)] * kept + [("200", True, "closed")] * (12 - kept), got


def test_idle_keep_alive_connection_is_closed_after_keep_alive_timeout(target):
    idle = int(SCALE["conf"]["keep_alive_timeout_ms"]) / 1000 + 3
    out = attack(target, "keepalive", n=THREADS // 2, hold=idle, idle=idle, patience=60)
    only(out, r"200, then after the idle hold closed")


def test_slowloris_connections_are_cut_with_a_4xx_after_request_timeout(target):
    timeout = int(SCALE["conf"]["request_timeout_ms"]) / 1000
    # duration only caps a connection the server never cuts (each stops once cut)
    out = attack(target, "slowloris", once=True, duration=timeout + 30)
    only(out, r"cut: (HTTP/1\.1 4\d\d .*|closed)")


def test_connections_that_never_start_tls_are_closed(target):
    timeout = int(SCALE["conf"]["request_timeout_ms"]) / 1000
    out = attack(target, "tls_stall", duration=timeout + 30)
    only(out, r"closed")


def test_thousands_of_headers_get_400(target):
    only(attack(target, "headers_many"), r"4\d\d|closed")


def test_a_megabyte_header_gets_4xx_or_close(target):
    only(attack(target, "headers_huge"), r"4\d\d|closed")


def test_ten_megabyte_bodies_get_413_or_401_whatever_their_framing(target):
    out = attack(target, "body_10mb")
    only(out, r"(content-length|chunked): (413|closed)|unauthenticated: (401|closed)")
    assert {k.split(":")[0] for k in out} == {"content-length", "chunked", "unauthenticated"}


def test_invalid_utf8_and_nul_bytes_in_json_strings_get_400(target):
    out = attack(target, "json_bad_strings")
    only(out, r"400 (invalid_json|invalid_utf8)")
    assert "400 invalid_utf8" in out and "400 invalid_json" in out


def test_deeply_nested_json_gets_400_and_leaves_no_memory_behind(target):
    only(attack(target, "json_deep"), r"400 invalid_json")


def test_pipelined_requests_are_answered_then_garbage_gets_400_and_close(target):
    out = attack(target, "pipelined_garbage")
    n = SCALE["pipelined_garbage"]["pipelined"]
    only(out, r"%d x 200, then 400 bad_request, closed|no TLS: (closed|alert, closed)" % n)


def test_json_nesting_limit_is_32_levels_of_the_whole_body(target):
    def body(depth):
        # the body object, "claims", then arrays: depth levels of [ and { in all
        return b'{"sub":"x","claims":{"a":' + b"[" * (depth - 2) + b"]" * (depth - 2) + b"}}"

    headers = {"Content-Type": "application/json"}
    r = target.post("/v1/tokens", data=body(33), headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text
    assert "deeper than 32" in r.json()["error"]["message"]
    # 32 levels parse: what refuses them is the claims' own, smaller bound.
    r = target.post("/v1/tokens", data=body(32), headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "out_of_range", r.text


def test_public_routes_that_sign_are_served_from_their_cache_within_the_signing_budget(target):
    """Issue 22 (3): cycling status list numbers, the feed's and the list's after= makes
    the token sign only what changed: the feed after 0, the empty delta from the newest
    and status list 0, once each (a few more only if a copy ages out during the run)."""
    outcomes = hostile.run_attacker({"case": "public_signing", **SCALE["public_signing"],
                                     "port": target.port, "cacert": target.cacert,
                                     "secret": target.attacker_secret, "kid": target.hostile_kid},
                                    120)
    only(outcomes["outcomes"], r"200|404")
    assert outcomes["outcomes"].get("200", 0) > 0
    assert outcomes["signed copies served"] <= 5, outcomes
    # And the attack left the well-behaved clients and the processes as every other does.
    attack(target, "public_signing")
