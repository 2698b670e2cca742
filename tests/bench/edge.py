"""`make bench` (and BENCH_ONLY=edge): the cost of signd-verify --serve in front of a real
origin. The same HLS segment is fetched by wrk -t2 -c64 through Debian's nginx three ways:
with auth_request asking the sidecar about one cached token (/<token>/video-123/seg0.ts), from
a location with no check (/plain/video-123/seg0.ts), and with the same auth_request asking an
upstream that answers 200 at once (/ceiling/...: the most any authenticator could get). The
runs alternate (order reversed every other round); medians of req/s and of wrk's p50/p99 are
printed as table rows, with the ratio checked / unchecked (goal >= 0.5). Any answer that is
not 2xx fails the bench. Then the sidecar alone, per core: wrk straight at it (the token in
X-Original-URI, no nginx), its CPU time read from /proc, against signd-verify's in-process
loop (the same token on stdin, LOOP_TOKENS times), its CPU time from wait4. The appliance,
the sidecar and nginx are those of tests/blackbox/test_edge.py, in a temporary directory,
stopped by their PID.

    /usr/bin/python3 tests/bench/edge.py SECONDS ROUNDS
"""
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(TOP, "tests", "blackbox"))

from conftest import Appliance  # noqa: E402
from test_edge import Nginx, Sidecar  # noqa: E402
from test_verifier import VERIFY, mint, pin_publication_key, unused_port  # noqa: E402

# Added to test_edge.py's server block: /plain/ serves the files with no check, and
# /ceiling/ asks, through the same auth_request set-up, an upstream that answers 200 at once
# (nginx itself on another port): what auth_request costs whatever the authenticator does.
# The block closes the server to add that upstream and server; the template closes the last.
PLAIN = """
        location ^~ /plain/ {
            alias DIR/www/;
        }
        location ^~ /ceiling/ {
            auth_request /_ceiling_auth;
            alias DIR/www/;
        }
        location = /_ceiling_auth {
            internal;
            proxy_pass http://ceiling;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    upstream ceiling {
        server 127.0.0.1:CEILING_PORT;
        keepalive 16;
    }
    server {
        listen 127.0.0.1:CEILING_PORT;
        location / { return 200; }
"""
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
LOOP_TOKENS = 20000
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of pid, every thread, in seconds (/proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def sidecar_alone(side, token, seconds):
    """(checks/s, checks per CPU-second of the sidecar): wrk at the sidecar itself."""
    before = cpu_seconds(side.proc.pid)
    out = subprocess.run(["wrk", "-t2", "-c64", "-d%ds" % seconds, "-H",
                          "X-Original-URI: /%s/video-123/seg0.ts" % token, side.url + "/auth"],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    used = cpu_seconds(side.proc.pid) - before
    if "Non-2xx or 3xx responses" in out or "Socket errors" in out:
        sys.exit("bench edge: wrk saw errors against the sidecar:\n%s" % out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"^Requests/sec:\s+([0-9.]+)", out, re.M).group(1))
    return rps, total / used if used > 0 else float("inf")


def in_process(a, keyfile, token, top):
    """(checks/s, checks per CPU-second): signd-verify's stdin loop over LOOP_TOKENS copies
    of the token (its set-up, one JWKS and feed fetch, included), its CPU from wait4."""
    import time
    src, dst = os.path.join(top, "tokens.txt"), os.path.join(top, "answers.txt")
    with open(src, "w") as f:
        f.write((token + "\n") * LOOP_TOKENS)
    t0 = time.monotonic()
    pid = os.posix_spawn(VERIFY, [VERIFY, "--url", a.url, "--cacert", a.cacert, "--feed-key",
                                  keyfile], dict(os.environ), file_actions=[
        (os.POSIX_SPAWN_OPEN, 0, src, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
        (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)])
    _, _, usage = os.wait4(pid, 0)
    wall = time.monotonic() - t0
    with open(dst) as f:
        ok = sum(1 for line in f if line.startswith("ok "))
    if ok != LOOP_TOKENS:
        sys.exit("bench edge: the in-process loop answered %d ok of %d" % (ok, LOOP_TOKENS))
    return LOOP_TOKENS / wall, LOOP_TOKENS / (usage.ru_utime + usage.ru_stime)


def wrk(url, seconds):
    """(req/s, p50 ms, p99 ms) of one wrk run; exits when any answer is not 2xx."""
    out = subprocess.run(["wrk", "-t2", "-c64", "-d%ds" % seconds, "--latency", url],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    if "Non-2xx or 3xx responses" in out or "Socket errors" in out:
        sys.exit("bench edge: wrk saw errors against %s:\n%s" % (url, out))
    rps = float(re.search(r"^Requests/sec:\s+([0-9.]+)", out, re.M).group(1))

    def pct(p):
        m = re.search(r"^\s+%d%%\s+([0-9.]+)(us|ms|s)\s*$" % p, out, re.M)
        return float(m.group(1)) * UNITS[m.group(2)]
    return rps, pct(50), pct(99)


def main():
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    top = tempfile.mkdtemp(prefix="signd-bench-edge-")
    data = os.path.join(top, "appliance")
    os.makedirs(data)
    a = Appliance(data).start()
    side = ngx = None
    try:
        keyfile = pin_publication_key(a, top)
        kid = a.create_key(label="edge-bench")["kid"]
        token = mint(a, kid, sub="video-123", ttl=3600)
        side = Sidecar(a, keyfile, "--sub-from-path", "1")
        ngx = Nginx(os.path.join(top, "nginx"), side.port,
                    extra=PLAIN.replace("CEILING_PORT", str(unused_port())))
        urls = {"checked": "%s/%s/video-123/seg0.ts" % (ngx.url, token),
                "plain": ngx.url + "/plain/video-123/seg0.ts",
                "ceiling": ngx.url + "/ceiling/video-123/seg0.ts"}
        for url in urls.values():
            r = ngx.get(url[len(ngx.url):])
            if r.status_code != 200:
                sys.exit("bench edge: %s answered %d" % (url, r.status_code))
        runs = {name: [] for name in urls}
        for r in range(rounds):
            order = ["checked", "plain", "ceiling"]
            if r % 2:
                order.reverse()
            for name in order:
                print("bench: round %d/%d: a segment through nginx, %s, wrk -t2 -c64, %ds"
                      % (r + 1, rounds, name, seconds), file=sys.stderr)
                runs[name].append(wrk(urls[name], seconds))
        print("bench: the sidecar alone, wrk -t2 -c64, %ds; the in-process loop, %d tokens"
              % (seconds, LOOP_TOKENS), file=sys.stderr)
        alone = sidecar_alone(side, token, seconds)
        loop = in_process(a, keyfile, token, top)
    finally:
        if ngx is not None:
            ngx.close()
        if side is not None:
            side.close()
        a.stop()
        shutil.rmtree(top, ignore_errors=True)

    def med(name, i):
        return statistics.median(x[i] for x in runs[name])
    checked, plain, ceiling = med("checked", 0), med("plain", 0), med("ceiling", 0)
    ratio = checked / plain
    print("| segment fetches through nginx auth_request + signd-verify --serve, one cached "
          "token, wrk -t2 -c64 (req/s) | %.0f |" % checked)
    print("| the same segment from nginx with no check (req/s) | %.0f |" % plain)
    print("| ratio checked / unchecked (goal >= 0.5) | %.3f %s |"
          % (ratio, "pass" if ratio >= 0.5 else "FAIL"))
    print("| the same auth_request asking an upstream that answers 200 at once, the ceiling "
          "(req/s); ratio to unchecked; checked / ceiling | %.0f; %.3f; %.3f |"
          % (ceiling, ceiling / plain, checked / ceiling))
    print("| latency p50 / p99 checked; unchecked; ceiling (ms) | %.2f / %.2f; %.2f / %.2f; "
          "%.2f / %.2f |" % (med("checked", 1), med("checked", 2), med("plain", 1),
                             med("plain", 2), med("ceiling", 1), med("ceiling", 2)))
    print("| the sidecar alone, wrk at it (checks/s; per CPU-second of the sidecar) | %.0f; %.0f |"
          % alone)
    print("| signd-verify's in-process loop, the same token (checks/s; per CPU-second) | "
          "%.0f; %.0f |" % loop)
    print("| the sidecar's checks per core / the in-process loop's | %.3f |" % (alone[1] / loop[1]))
    print("| runs checked / unchecked / ceiling (req/s) | %s |"
          % " / ".join(" ".join("%.0f" % x[0] for x in runs[n])
                       for n in ("checked", "plain", "ceiling")))


if __name__ == "__main__":
    main()
