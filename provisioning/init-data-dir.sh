#!/usr/bin/env bash
# Creates what is missing in a data directory, never overwriting what exists:
#   softhsm2.conf, token/, pin, so-pin   the embedded SoftHSM2 token (random PINs, 0600)
#   appliance.conf                       every setting written out with its default
#   tls/cert.pem, tls/key.pem            a self-signed certificate for localhost/127.0.0.1
#   admin.credential                     the bootstrap admin credential's secret (0600); the
#                                        credential itself is in appliance.db
# Usage: init-data-dir.sh DATA_DIR [PORT]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin="$top/${SIGND_BUILD:-build}/bin"
dir=${1:?usage: init-data-dir.sh DATA_DIR [PORT]}
port=${2:-8443}
umask 077
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

if [ ! -e "$dir/token" ]; then
	"$bin/signd-provision" token "$dir" >/dev/null
	echo "init: created the SoftHSM2 token in $dir/token"
fi
if [ ! -e "$dir/appliance.conf" ]; then
	"$bin/signd-provision" config "$dir" --port "$port" >/dev/null
	echo "init: wrote $dir/appliance.conf"
fi
if [ ! -e "$dir/tls/cert.pem" ]; then
	mkdir -p "$dir/tls"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
		-subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
		-keyout "$dir/tls/key.pem" -out "$dir/tls/cert.pem" 2>/dev/null
	chmod 0644 "$dir/tls/cert.pem"
	echo "init: created a self-signed TLS certificate in $dir/tls"
fi
# Before the access-control issue the file held a bare secret (sgd_admin_...) that the
# appliance read itself; now credentials live in the database, so such a file is retired.
if [ -e "$dir/admin.credential" ] && grep -q '^sgd_admin_' "$dir/admin.credential"; then
	mv "$dir/admin.credential" "$dir/admin.credential.retired"
	echo "init: retired the old-style admin secret to $dir/admin.credential.retired"
fi
if [ ! -e "$dir/admin.credential" ]; then
	"$bin/signd-provision" admin-credential "$dir" --label bootstrap
	echo "init: the bootstrap admin credential's secret is in $dir/admin.credential"
fi
