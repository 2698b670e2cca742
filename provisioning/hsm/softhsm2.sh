#!/usr/bin/env bash
# The embedded SoftHSM2 token of a data directory (the default module): no daemon.
#   start DATA_DIR   creates DATA_DIR/softhsm2.conf, token/, pin and so-pin when the
#                    directory has no token yet (signd-provision token); reuses them after
#   conf DATA_DIR    prints the appliance.conf lines for it
#   stop DATA_DIR    nothing to stop
# The same contract as the other modules' scripts (docs/modules.md).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
bin="$top/${SIGND_BUILD:-build}/bin"
cmd=${1:?usage: softhsm2.sh start|conf|stop DATA_DIR}
dir=${2:?usage: softhsm2.sh start|conf|stop DATA_DIR}
umask 077

case "$cmd" in
start)
	mkdir -p "$dir"
	if [ ! -e "$dir/token" ]; then
		"$bin/signd-provision" token "$dir" >/dev/null
		echo "init: created the SoftHSM2 token in $(cd "$dir" && pwd)/token"
	fi
	;;
conf)
	cat <<EOT
pkcs11_module = /usr/lib/softhsm/libsofthsm2.so
token = signd
pin_file = pin
softhsm2_conf = softhsm2.conf
EOT
	;;
stop) ;;
*)
	echo "usage: softhsm2.sh start|conf|stop DATA_DIR" >&2
	exit 2
	;;
esac
