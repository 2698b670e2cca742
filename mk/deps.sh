#!/usr/bin/env bash
# Installs the Debian packages listed in mk/packages.txt that are missing, then builds
# CivetWeb 1.15 from Debian's source package into build/civetweb. Safe to run twice:
# the second run installs nothing and compiles nothing. HSM (space-separated module names)
# adds each module's mk/packages-NAME.txt when there is one (make deps HSM=opencryptoki).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
build="$top/build"
export DEBIAN_FRONTEND=noninteractive

lists=("$here/packages.txt")
for hsm in ${HSM:-}; do
	[ ! -e "$here/packages-$hsm.txt" ] || lists+=("$here/packages-$hsm.txt")
done
missing=()
while read -r pkg; do
	case "$pkg" in '' | '#'*) continue ;; esac
	status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
	[ "$status" = "install ok installed" ] || missing+=("$pkg")
done < <(cat "${lists[@]}")

if [ ${#missing[@]} -gt 0 ]; then
	echo "deps: installing ${missing[*]}"
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: missing packages and not root: run 'make deps' as root" >&2
		exit 1
	fi
	apt-get update -q </dev/null
	apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi

"$here/civetweb.sh"

# node's jose for tests/blackbox (a third JOSE library the publication documents are tried
# against), at the version package-lock.json pins. Debian's nodejs ships without npm.
node_dir="$top/tests/blackbox/node"
if [ ! -d "$node_dir/node_modules/jose" ]; then
	if ! command -v npm >/dev/null; then
		[ "$(id -u)" -eq 0 ] || { echo "deps: npm missing and not root: run 'make deps' as root" >&2; exit 1; }
		apt-get update -q </dev/null
		apt-get install -y -q --no-install-recommends npm </dev/null
	fi
	npm ci --no-audit --no-fund --prefix "$node_dir"
fi
