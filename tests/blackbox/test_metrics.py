"""GET /metrics and the JSON log, black-box over HTTPS against a real appliance.

The exposition is parsed with prometheus_client's own parser (Debian's
python3-prometheus-client), not with anything written here."""
import base64
import collections
import json
import os
import re
import time

import conftest
import pytest
from prometheus_client.parser import text_string_to_metric_families

LOG_NAME = "signd.json.log"
HEX32 = re.compile(r"[0-9a-f]{32}")


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def scrape(a, secret):
    r = a.get("/metrics", auth=secret)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4"), r.headers
    return {f.name: f for f in text_string_to_metric_families(r.text)}, r.text


def samples(families, family, sample_name=None):
    """[(labels, value)] of one family's samples (sample_name: e.g. a histogram's _bucket)."""
    name = sample_name or family
    return [(s.labels, s.value) for s in families[family].samples if s.name == name]


def value(families, family, sample_name=None, **labels):
    found = [v for l, v in samples(families, family, sample_name) if l == labels]
    assert len(found) <= 1, (family, labels, found)
    return found[0] if found else 0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An appliance that logs requests and events to a file and never flushes signature
    counts during the module (so the audit lag is exactly the signatures made), with key A
    that signs, key B revoked before it was ever used, and an auditor credential."""
    from conftest import Appliance
    a = Appliance(str(tmp_path_factory.mktemp("signd-metrics")),
                  {"log_requests": "true", "log_events": "true", "log_file": LOG_NAME,
                   "audit_flush_seconds": 3600}).start()
    key_a = a.create_key(label="A")["kid"]
    key_b = a.create_key(label="B")["kid"]
    assert a.delete("/v1/keys/" + key_b, {"reason": "metrics test"}).status_code == 200
    auditor = a.create_credential("auditor", label="prometheus")
    first_signature = time.time()
    for i in range(3):
        r = a.post("/v1/keys/%s/sign" % key_a, {"payload": b64u(b"m%d" % i)})
        assert r.status_code == 200, r.text
    r = a.post("/v1/tokens", {"kid": key_a, "sub": "video-1", "ttl": 300})
    assert r.status_code == 200, r.text
    for _ in range(2):
        r = a.post("/v1/keys/%s/sign" % key_b, {"payload": b64u(b"x")})
        assert r.status_code == 409 and r.json()["error"]["code"] == "key_revoked", r.text
    # A token request names its kid in the body, not the path: still counted under B.
    r = a.post("/v1/tokens", {"kid": key_b, "sub": "video-1", "ttl": 300})
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_revoked", r.text
    unknown = [os.urandom(16).hex() for _ in range(5)]
    for kid in unknown:
        r = a.post("/v1/keys/%s/sign" % kid, {"payload": b64u(b"x")})
        assert r.status_code == 404, r.text
    families, text = scrape(a, auditor["secret"])
    yield {"a": a, "A": key_a, "B": key_b, "unknown": unknown, "auditor": auditor,
           "families": families, "text": text, "first_signature": first_signature,
           "log": os.path.join(a.dir, LOG_NAME)}
    a.stop()


def test_signature_counters_show_exact_numbers_per_kid_and_result(world):
    f, a_kid, b_kid = world["families"], world["A"], world["B"]
    assert value(f, "signd_signatures", "signd_signatures_total", kid=a_kid, result="ok") == 4
    assert value(f, "signd_signatures", "signd_signatures_total", kid=b_kid,
                 result="key_revoked") == 3
    assert value(f, "signd_signatures", "signd_signatures_total", kid=b_kid, result="ok") == 0
    assert value(f, "signd_signatures", "signd_signatures_total", kid="none",
                 result="key_not_found") == 5
    total = sum(v for _, v in samples(f, "signd_signatures", "signd_signatures_total"))
    assert total == 4 + 3 + 5


def test_kids_that_name_no_key_get_no_series_of_their_own(world):
    kids = {l["kid"] for l, _ in samples(world["families"], "signd_signatures",
                                         "signd_signatures_total")}
    assert kids == {world["A"], world["B"], "none"}
    for kid in world["unknown"]:
        assert kid not in world["text"]


def test_requests_are_counted_by_route_template_never_by_raw_path(world):
    f = world["families"]
    sign = "/v1/keys/{kid}/sign"
    counts = {(l["route"], l["method"], l["status"]): v
              for l, v in samples(f, "signd_http_requests", "signd_http_requests_total")}
    assert counts[(sign, "POST", "200")] == 3
    assert counts[(sign, "POST", "409")] == 2
    assert counts[(sign, "POST", "404")] == 5
    assert counts[("/v1/tokens", "POST", "200")] == 1
    assert counts[("/v1/keys/{kid}", "DELETE", "200")] == 1
    for (route, _, _), _ in counts.items():
        assert not HEX32.search(route), route


def test_latency_histograms_are_consistent(world):
    f = world["families"]
    fam = "signd_http_request_duration_seconds"
    buckets = collections.defaultdict(list)
    for l, v in samples(f, fam, fam + "_bucket"):
        buckets[(l["route"], l["method"])].append((float(l["le"]), v))
    counts = {(l["route"], l["method"]): v for l, v in samples(f, fam, fam + "_count")}
    sums = {(l["route"], l["method"]): v for l, v in samples(f, fam, fam + "_sum")}
    requests_by_route = collections.Counter()
    for l, v in samples(f, "signd_http_requests", "signd_http_requests_total"):
        requests_by_route[(l["route"], l["method"])] += v
    assert buckets, "no histogram"
    for key, bs in buckets.items():
        bs.sort()
        assert bs[-1][0] == float("inf"), key
        values = [v for _, v in bs]
        assert values == sorted(values), (key, bs)  # cumulative: never decreasing
        assert values[-1] == counts[key], key  # +Inf is the count
        assert counts[key] == requests_by_route[key], key
        assert sums[key] >= 0
        if counts[key] == 0:
            assert sums[key] == 0
    assert counts[("/v1/keys/{kid}/sign", "POST")] == 10


def test_keys_by_state_match_the_key_list(world):
    a, f = world["a"], world["families"]
    listed = collections.Counter(k["state"] for k in a.get("/v1/keys").json()["keys"])
    states = {l["state"]: v for l, v in samples(f, "signd_keys")}
    assert set(states) == {"active", "revoked", "broken", "retiring"}
    for state, n in states.items():
        assert n == listed.get(state, 0), (state, states, listed)
    assert states["active"] == 1 and states["revoked"] == 1


def test_revocation_seq_matches_the_feed(world):
    a, f = world["a"], world["families"]
    seq = a.get("/v1/revocations", auth=False).json()["sequence"]
    assert seq >= 1
    assert value(f, "signd_revocation_seq") == seq


def test_sessions_build_info_start_time_and_pkcs11_errors(world):
    f = world["families"]
    in_use, cap = value(f, "signd_pkcs11_sessions_in_use"), value(f, "signd_pkcs11_sessions_max")
    assert 1 <= in_use <= cap
    assert cap == 64 + 256 + 4  # worker_threads + events_max_subscribers + 4 (the default)
    info = samples(f, "signd_build_info")
    assert len(info) == 1 and info[0][1] == 1 and info[0][0]["openssl"].startswith("3.")
    start = value(f, "signd_process_start_time_seconds")
    assert 0 < start <= world["first_signature"]
    errors = {(l["ckr"], l["class"]): v
              for l, v in samples(f, "signd_pkcs11_errors", "signd_pkcs11_errors_total")}
    # Only the keeper's own line is there before anything failed: a CKR value gets its
    # series when it first happens. A revoked kid is an answer, not a failure.
    assert errors == {("none", "keeper_unreachable"): 0, ("none", "keeper_timeout"): 0}, errors
    assert value(f, "signd_log_lines_dropped", "signd_log_lines_dropped_total") == 0


def test_audit_lag_counts_the_signatures_not_yet_in_the_trail(world):
    f = world["families"]
    # audit_flush_seconds = 3600: the four signatures are counted, not yet committed.
    assert value(f, "signd_audit_lag_events") == 4
    age = value(f, "signd_audit_lag_seconds")
    assert 0 <= age <= time.time() - world["first_signature"] + 1


def test_metrics_need_an_admin_or_auditor_credential(world):
    a = world["a"]
    r = a.get("/metrics", auth=False)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = a.get("/metrics", auth=a.signer)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert a.get("/metrics", auth=a.admin).status_code == 200
    assert a.get("/metrics?x=1", auth=a.admin).status_code == 400


def read_lines(path):
    with open(path, "rb") as fh:
        raw = fh.read()
    assert raw.endswith(b"\n")
    return raw, [json.loads(line) for line in raw.decode("ascii").splitlines()]


def test_every_log_line_is_json_with_the_request_fields(world):
    a = world["a"]
    assert os.stat(world["log"]).st_mode & 0o777 == 0o600
    _, lines = read_lines(world["log"])
    requests_ = [l for l in lines if l["log"] == "request"]
    assert {l["log"] for l in lines} == {"request", "event"}
    for l in requests_:
        assert {"time", "request_id", "method", "route", "path", "status", "latency_ms"} <= set(l)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", l["time"]), l
        assert l["latency_ms"] >= 0
    ids = [l["request_id"] for l in requests_]
    assert len(ids) == len(set(ids))
    signs = [l for l in requests_ if l["route"] == "/v1/keys/{kid}/sign"]
    assert [l["status"] for l in signs].count(200) == 3
    for l in signs:
        assert l["kid"] in [world["A"], world["B"]] + world["unknown"]
        assert len(l["credential"]) == 16
    token = [l for l in requests_ if l["route"] == "/v1/tokens"]
    # the kid it signed with, or the registry key it was refused for
    assert [(l["status"], l["kid"]) for l in token] == [(200, world["A"]), (409, world["B"])]
    scrape_line = [l for l in requests_ if l["route"] == "/metrics"][0]
    assert scrape_line["credential"] == world["auditor"]["id"]


def test_every_response_carries_a_request_id_that_its_log_line_names(world):
    # Answers of every kind: public, authenticated, refused by authentication, by the
    # router (404, 405), by the body checks (415), by CivetWeb itself (a bad request line).
    a = world["a"]
    responses = [
        a.get("/healthz", auth=False),
        a.get("/v1/keys"),
        a.get("/v1/keys", auth="not-a-credential"),
        a.get("/no/such/route"),
        a.request("PUT", "/healthz", auth=False),
        a.post("/v1/keys", data="{}", headers={"Content-Type": "text/plain"}),
        a.get("/.well-known/jwks.json", auth=False),
    ]
    expected = [200, 200, 401, 404, 405, 415, 200]
    assert [r.status_code for r in responses] == expected, [r.text for r in responses]
    ids = [r.headers.get("X-Request-Id") for r in responses]
    for rid in ids:
        assert rid is not None and re.fullmatch(r"[0-9a-f]{8}-[1-9][0-9]*", rid), ids
    assert len(set(ids)) == len(ids), ids
    # Ids count up within one front: the later request has the larger number.
    numbers = [int(rid.split("-")[1]) for rid in ids]
    assert numbers == sorted(numbers), ids

    raw = conftest.raw_tls(a, b"NOT-HTTP\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 "), raw[:200]
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower().split("\r\n")
    assert any(re.fullmatch(r"x-request-id: [0-9a-f]{8}-[1-9][0-9]*", l) for l in head), head

    _, lines = read_lines(world["log"])
    logged = {l["request_id"]: l for l in lines if l["log"] == "request"}
    for rid, r in zip(ids, responses):
        assert rid in logged, (rid, r.status_code)
        assert logged[rid]["status"] == r.status_code, (rid, logged[rid])


def test_audit_events_go_to_the_log_as_they_commit(world):
    _, lines = read_lines(world["log"])
    events = [l for l in lines if l["log"] == "event"]
    for l in events:
        assert {"time", "event", "seq", "actor", "details"} <= set(l), l
    by_event = collections.defaultdict(list)
    for l in events:
        by_event[l["event"]].append(l)
    assert {e["kid"] for e in by_event["key.created"]} >= {world["A"], world["B"]}
    revoked = [e for e in by_event["key.revoked"] if e["kid"] == world["B"]]
    assert len(revoked) == 1 and revoked[0]["details"]["reason"] == "metrics test"
    made = [e for e in by_event["credential.created"]
            if e["details"]["credential"] == world["auditor"]["id"]]
    assert len(made) == 1
    # The log's seqs are the trail's: the same events, the same numbers.
    trail = world["a"].get("/v1/audit?limit=1000").json()["events"]
    seq_of = {(e["action"], e["kid"], e["seq"]) for e in trail}
    for l in events:
        assert (l["event"], l.get("kid", ""), l["seq"]) in seq_of, l


def test_no_secret_reaches_the_log(world):
    a = world["a"]
    # A rejected bearer and a refused role are logged as requests too.
    near_miss = a.admin[:-1] + ("A" if a.admin[-1] != "A" else "B")
    assert a.get("/v1/keys", auth=near_miss).status_code == 401
    raw, _ = read_lines(world["log"])
    text = raw.decode("ascii") + a.read_log()
    with open(os.path.join(a.dir, "pin")) as fh:
        pin = fh.read().strip()
    with open(os.path.join(a.dir, "so-pin")) as fh:
        so_pin = fh.read().strip()
    secrets = {"admin secret": a.admin, "signer secret": a.signer,
               "auditor secret": world["auditor"]["secret"], "PIN": pin, "SO PIN": so_pin,
               "rejected bearer": near_miss}
    for what, secret in secrets.items():
        assert len(secret) >= 4
        assert secret not in text, what + " found in the log"


def test_a_moved_log_file_is_reopened_at_its_path(world):
    a = world["a"]
    moved = world["log"] + ".1"
    os.rename(world["log"], moved)
    deadline = time.monotonic() + 30
    while not os.path.exists(world["log"]) and time.monotonic() < deadline:
        assert a.get("/healthz", auth=False).status_code == 200
        time.sleep(0.2)
    assert os.path.exists(world["log"]), "the log was not reopened after it moved"
    assert a.get("/healthz", auth=False).status_code == 200
    _, lines = read_lines(world["log"])
    assert lines and lines[-1]["route"] == "/healthz"
    assert os.stat(world["log"]).st_mode & 0o777 == 0o600
    os.rename(moved, world["log"] + ".old")


def wait_state(pid, states, timeout=10):
    """Waits until /proc says pid is in one of states (None: gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open("/proc/%d/stat" % pid) as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            state = None
        if state in states:
            return
        time.sleep(0.05)
    raise AssertionError("pid %d never reached %s" % (pid, states))


def test_a_dead_keeper_is_counted_apart_from_token_failures(make_appliance):
    import signal
    a = make_appliance()
    kid = a.create_key(label="k")["kid"]
    assert a.post("/v1/keys/%s/sign" % kid, {"payload": b64u(b"before")}).status_code == 200
    before, _ = scrape(a, a.admin)
    assert value(before, "signd_pkcs11_errors", "signd_pkcs11_errors_total",
                 ckr="none", **{"class": "keeper_unreachable"}) == 0
    supervisor, keeper = a.proc.pid, a.children()["keeper"]
    # Stopped, the supervisor cannot restart the keeper while the test looks.
    os.kill(supervisor, signal.SIGSTOP)
    try:
        wait_state(supervisor, ("T",))
        os.kill(keeper, signal.SIGKILL)
        wait_state(keeper, ("Z", None))
        r = a.post("/v1/keys/%s/sign" % kid, {"payload": b64u(b"during")})
        assert r.status_code == 503 and r.json()["error"]["code"] == "hsm_unavailable", r.text
        # The readiness probe (every 200 ms while unready) sees it too; the scrape reads
        # the probe's answer, never the keeper.
        deadline = time.monotonic() + 10
        while True:
            during, _ = scrape(a, a.admin)
            if value(during, "signd_ready") == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        os.kill(supervisor, signal.SIGCONT)
    # The supervisor restarts the keeper (a clean stop at teardown needs one running).
    deadline = time.monotonic() + 30
    while a.children().get("keeper") in (None, keeper) and time.monotonic() < deadline:
        time.sleep(0.1)
    while time.monotonic() < deadline:
        r = a.post("/v1/keys/%s/sign" % kid, {"payload": b64u(b"after")})
        if r.status_code == 200:
            break
        assert r.status_code == 503, r.text
        time.sleep(0.1)
    assert r.status_code == 200, r.text
    sig = "signd_signatures_total"
    assert value(during, "signd_signatures", sig, kid=kid, result="ok") == 1
    assert value(during, "signd_signatures", sig, kid=kid, result="hsm_unavailable") == 1
    errors = {(l["ckr"], l["class"]): v for l, v in samples(during, "signd_pkcs11_errors",
                                                            "signd_pkcs11_errors_total")}
    # The refused signature, and the readiness probe's tries (the probe then says 0
    # sessions); no token call failed, so no CKR value has a series, and no call timed out.
    assert set(errors) == {("none", "keeper_unreachable"), ("none", "keeper_timeout")}, errors
    assert errors[("none", "keeper_unreachable")] >= 1, errors
    assert errors[("none", "keeper_timeout")] == 0, errors
    assert value(during, "signd_ready") == 0
    assert value(during, "signd_pkcs11_sessions_in_use") == 0
