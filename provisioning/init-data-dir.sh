#!/usr/bin/env bash
# Creates what is missing in a data directory, never overwriting what exists:
#   softhsm2.conf, token/, pin, so-pin   the embedded SoftHSM2 token (random PINs, 0600)
#   appliance.conf                       every setting written out with its default
#   tls/cert.pem, tls/key.pem            a self-signed certificate for localhost/127.0.0.1
#   admin.credential                     the bootstrap admin credential's secret (0600); the
#                                        credential itself is in appliance.db
# Run as root (and `user` not set in appliance.conf), it also gives the keeper and the front
# system accounts of their own (keeper_user, front_user: signd-keeper and signd-front by
# default, both in the group signd-data) and the data directory to them, every time:
#   DIR                          root:signd-data 3770 (setgid: new files get the group;
#                                sticky: neither account can remove or rename the other's)
#   token/, softhsm2.conf, pin   the keeper's alone (0700/0600)
#   tls/                         the front's alone (key.pem 0600; cert.pem 0644)
#   appliance.db and its -wal,   the front's, group signd-data, 0660: the keeper reads the
#   -shm, -journal               registry (SQLite copies the mode to the -wal and -shm)
#   so-pin, admin.credential,    root's (0600): no process of the appliance needs them
#   appliance.conf
# With SIGND_HSM set to another module than softhsm2, the SoftHSM2 token is not made: that
# module's provisioning/hsm/NAME.sh made its token and PINs, and DATA_DIR/hsm/keeper-groups
# lists the groups the keeper's account needs to reach it (opencryptoki: pkcs11).
# Usage: init-data-dir.sh DATA_DIR [PORT]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/provisioning/lib.sh"
bin="$top/${SIGND_BUILD:-build}/bin"
dir=${1:?usage: init-data-dir.sh DATA_DIR [PORT]}
port=${2:-8443}
umask 077
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

if [ "${SIGND_HSM:-softhsm2}" = softhsm2 ] && [ ! -e "$dir/token" ]; then
	"$bin/signd-provision" token "$dir" >/dev/null
	echo "init: created the SoftHSM2 token in $dir/token"
fi
if [ ! -e "$dir/appliance.conf" ]; then
	"$bin/signd-provision" config "$dir" --port "$port" >/dev/null
	echo "init: wrote $dir/appliance.conf"
fi
prov_tls_cert "$dir"
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

# One account per process (process_model = split, started as root): the front's account
# cannot open the token or the PIN. Skipped when appliance.conf names one `user` for all.
conf_value() { prov_conf_value "$dir/appliance.conf" "$1"; }
if [ "$(id -u)" = 0 ] && [ -z "$(conf_value user)" ]; then
	group=signd-data
	keeper=$(conf_value keeper_user)
	front=$(conf_value front_user)
	prov_accounts "$group" $keeper $front
	chown root:"$group" "$dir"
	chmod 3770 "$dir"
	if [ -n "$keeper" ]; then
		[ ! -e "$dir/token" ] || chown -R "$keeper:$(id -gn "$keeper")" "$dir/token"
		[ ! -e "$dir/softhsm2.conf" ] || chown "$keeper:$(id -gn "$keeper")" "$dir/softhsm2.conf"
		if [ -e "$dir/hsm/keeper-groups" ]; then
			for g in $(cat "$dir/hsm/keeper-groups"); do
				id -nG "$keeper" | tr ' ' '\n' | grep -qx "$g" || usermod -a -G "$g" "$keeper"
			done
		fi
		[ ! -e "$dir/pin" ] || chown "$keeper:$(id -gn "$keeper")" "$dir/pin"
	fi
	if [ -n "$front" ]; then
		chown -R "$front:$(id -gn "$front")" "$dir/tls"
		for f in "$dir/appliance.db" "$dir/appliance.db-wal" "$dir/appliance.db-shm" \
			"$dir/appliance.db-journal"; do
			[ ! -e "$f" ] || { chown "$front:$group" "$f" && chmod 0660 "$f"; }
		done
	fi
fi
