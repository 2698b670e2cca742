#!/usr/bin/env bash
# make layers: the architecture, checked from what was built and from the sources.
#
# (a) The binaries (nm, nm -D, grep on build/bin/*): one program per privilege.
#     signd-front   no hsm_* symbol, no C_GetFunctionList, does not import dlopen, and (the
#                   production build) no SIGND_FAULT crash point;
#     signd         no hsm_* and no mg_* (CivetWeb) symbol;
#     signdctl, signd-verify   no kp_, kpd_, reg_, cred_, tks_, db_ or hsm_ symbol.
# (b) The include graph: every `#include "dir/..."` of every .c and .h, folder to folder,
#     against ALLOWED below; any other edge, and any cycle between folders, fails.
#
# One line per violation on stdout; exit 1 when there is any. BUILD=build/asan checks
# that build instead.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
bad=0
fail() {
	echo "layers: $*"
	bad=1
}

# ---- (a) the binaries ---------------------------------------------------------------------

# Defined and imported symbol names of a binary (the full table and the dynamic one).
symbols() {
	{ nm "$1" 2>/dev/null; nm -D "$1" 2>/dev/null; } | awk '{print $NF}' | sed 's/@.*//' | sort -u
}

# forbid BINARY REGEX WHY: fails for each symbol of BINARY that matches REGEX.
forbid() {
	local bin=$1 re=$2 why=$3 s
	for s in $(symbols "$bin" | grep -E "$re"); do
		fail "$(basename "$bin") has $s: $why"
	done
}

for p in signd signd-keeper signd-front signdctl signd-verify; do
	f=$build/bin/$p
	if [ ! -x "$f" ]; then
		fail "$f is missing (make all first)"
		continue
	fi
	# A stripped binary would pass every check below while proving nothing.
	symbols "$f" | grep -x main >/dev/null || fail "$p has no symbol table (stripped?): nothing to check"
done

front=$build/bin/signd-front
forbid "$front" '^(hsm_|C_GetFunctionList$)' "the front must contain no PKCS#11 code"
nm -D --undefined-only "$front" 2>/dev/null | grep -E ' dlopen(@|$)' >/dev/null &&
	fail "signd-front imports dlopen: the front must load no module"
grep -q SIGND_FAULT "$front" &&
	fail "signd-front (production) contains SIGND_FAULT: crash points are for $build/testbin only"

forbid "$build/bin/signd" '^(hsm_|mg_)' "the supervisor links neither hsm/ nor CivetWeb"

for p in signdctl signd-verify; do
	forbid "$build/bin/$p" '^(kp_|kpd_|reg_|cred_|tks_|db_|hsm_)' \
		"the operator tools link neither keeper/, kproto/ nor store/"
done

# The checks can tell: what they forbid above is there where it belongs.
symbols "$build/bin/signd-keeper" | grep '^hsm_open$' >/dev/null ||
	fail "signd-keeper has no hsm_open: the symbol check would prove nothing"
symbols "$build/bin/signd-front" | grep '^mg_start$' >/dev/null ||
	fail "signd-front has no mg_start: the symbol check would prove nothing"
[ ! -x "$build/testbin/signd-front" ] || grep -q SIGND_FAULT "$build/testbin/signd-front" ||
	fail "$build/testbin/signd-front has no SIGND_FAULT: the string check would prove nothing"

# ---- (b) the include graph ----------------------------------------------------------------

/usr/bin/python3 - <<'PY' || bad=1
import os, re, sys

# Which folder may include which (itself always). A folder is a top-level directory, or
# appliance/<name>, named here by its last part.
ALLOWED = {
    "base": [],
    "jose": ["base"],
    "hsm": ["base"],
    "verifier": ["base", "jose"],
    # + core/auditverify.h alone (FILE_ALLOWED): the pure audit-chain verifier
    "cli": ["base", "jose"],
    "common": ["base"],
    "kproto": ["base", "common"],
    "store": ["base", "common", "jose"],
    "core": ["base", "common", "kproto", "store", "jose"],
    "api": ["base", "common", "core", "store", "kproto", "jose"],  # never hsm
    "front": ["base", "common", "api", "core", "store", "kproto"],
    # jose: the keeper checks that an audit checkpoint is a JWS of the right shape
    "keeper": ["base", "hsm", "common", "kproto", "store", "core", "jose"],
    # + kproto: the watchdog pings the keeper (kp_connect, kp_ping);
    # + store: reg_open makes the schema before the keeper starts (it only reads the registry)
    "supervisor": ["base", "common", "kproto", "store"],
    "provisioning": ["base", "jose", "hsm", "common", "kproto", "store", "core", "keeper",
                     "verifier", "supervisor"],  # anything but front/ and api/
}

# Single headers a folder may include although their folder is out of its reach: pure
# modules that include only what the including folder may use (checked below).
FILE_ALLOWED = {
    # signdctl audit verify: the chain verifier is a pure function of an export and a key.
    ("cli", "appliance/core/auditverify.h"),
}

# Edges that exist today and are not in ALLOWED: each is named, with why it is still here.
# Remove a line when its edge is gone (a stale line fails too).
EXCEPTIONS = {}

ROOTS = ["base", "jose", "hsm", "verifier", "cli", "api", "provisioning", "appliance"]
INC_FILE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def folder(path):
    parts = path.split("/")
    if parts[0] == "appliance":
        return parts[1] if len(parts) > 2 else None
    return parts[0] if len(parts) > 1 and parts[0] in ROOTS else None


edges = {}  # (from, to) -> [file, ...]
pure = {}  # a FILE_ALLOWED header -> the folders that include it
for root in ROOTS:
    for d, _, files in os.walk(root):
        for name in files:
            if not name.endswith((".c", ".h")):
                continue
            path = os.path.join(d, name)
            src = folder(path)
            if src is None:
                continue
            with open(path, errors="replace") as f:
                text = f.read()
            for header in INC_FILE.findall(text):
                if "/" not in header:
                    continue
                dst = folder(header)
                if dst is None or dst == src:
                    continue
                if (src, header) in FILE_ALLOWED:
                    pure.setdefault(header, set()).add(src)
                    continue
                edges.setdefault((src, dst), []).append(path)

bad = 0
for (src, dst), files in sorted(edges.items()):
    if src not in ALLOWED:
        print("layers: folder %s is not in the table (mk/layers.sh ALLOWED)" % src)
        bad = 1
    elif dst not in ALLOWED[src] and (src, dst) not in EXCEPTIONS:
        print("layers: %s -> %s is not allowed (%s)" % (src, dst, ", ".join(sorted(set(files)))))
        bad = 1
# A FILE_ALLOWED header, and its .c, include only what each folder using it may use.
for header, users in sorted(pure.items()):
    home = folder(header)
    for part in (header, header[:-2] + ".c"):
        if not os.path.exists(part):
            continue
        with open(part, errors="replace") as f:
            deps = {folder(h) for h in INC_FILE.findall(f.read()) if "/" in h} - {None, home}
        for user in sorted(users):
            extra = sorted(d for d in deps if d != user and d not in ALLOWED[user])
            if extra:
                print("layers: %s is allowed to %s only while pure, but %s includes %s"
                      % (header, user, part, ", ".join(extra)))
                bad = 1
for edge in sorted(EXCEPTIONS):
    if edge not in edges:
        print("layers: exception %s -> %s is stale: the edge is gone, remove the line" % edge)
        bad = 1

# No cycle between folders, exceptions aside (they are the cycles being removed).
graph = {}
for (src, dst) in edges:
    if (src, dst) not in EXCEPTIONS:
        graph.setdefault(src, set()).add(dst)
state = {}


def visit(n, stack):
    state[n] = 1
    for m in sorted(graph.get(n, ())):
        if state.get(m) == 1:
            cycle = stack[stack.index(m):] + [m]
            print("layers: cycle between folders: " + " -> ".join(cycle))
            return 1
        if state.get(m) is None and visit(m, stack + [m]):
            return 1
    state[n] = 2
    return 0


for n in sorted(graph):
    if state.get(n) is None and visit(n, [n]):
        bad = 1
        break
sys.exit(bad)
PY

if [ $bad -eq 0 ]; then
	echo "layers: ok (binaries in $build/bin, include graph of $(git ls-files '*.c' '*.h' | grep -cvE '^(tests|mk)/') files)"
fi
exit $bad
