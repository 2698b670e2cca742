#!/usr/bin/env bash
# opencryptoki 3.8's soft token (slot 3) behind its slot daemon, pkcsslotd.
#   start DATA_DIR   creates opencryptoki's lock and state folders (systemd-tmpfiles, as
#                    the unit would), starts pkcsslotd unless one runs (pid in
#                    DATA_DIR/hsm/pkcsslotd.pid when this script started it), and
#                    initialises the soft token when it is not: through PKCS#11
#                    (signd-provision module-token), with random 8-character PINs in
#                    DATA_DIR/pin and DATA_DIR/so-pin (0600; never in argv or a log), the
#                    factory SO PIN 87654321 changed at once. Run again, it reuses all.
#   conf DATA_DIR    prints the appliance.conf lines for it
#   stop DATA_DIR    stops pkcsslotd if start started it (by its PID)
#   release DATA_DIR wipes the soft token, only when DATA_DIR is the one that initialised
#                    it (its keys are gone for good: the tests' teardown); before stop, as
#                    it reads the token's label through pkcsslotd
#
# One machine, one soft token: pkcsslotd is one daemon per machine and 3.8 keeps the token in
# /var/lib/opencryptoki/swtok (its PKCS_APP_STORE variable moves only the shared-memory
# name: 3.8.1 then writes NVTOK.DAT and MK_SO to "/"). So the token is the machine's, and
# `start` never touches one it did not initialise: DATA_DIR/hsm/token-label records the
# random label it gave the token, and /var/lib/opencryptoki/signd.owner names the data
# directory that holds its PINs.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
bin="$top/${SIGND_BUILD:-build}/bin"
cmd=${1:?usage: opencryptoki.sh start|conf|stop|release DATA_DIR}
dir=${2:?usage: opencryptoki.sh start|conf|stop|release DATA_DIR}
umask 077

slot=3
factory_so_pin=87654321
# CK_TOKEN_INFO says 4 to 8 characters; the longest, from 62 symbols: about 47 bits.
pin_length=8
# 2,048 private and 2,048 public objects per token (past it CKR_HOST_MEMORY); a key is one
# of each, and the audit and publication keys and reconcile's reservations need some: the
# appliance's own bound (1,000 active or retiring keys) fits below it.
object_limit=2048
state=/var/lib/opencryptoki
owner_file=$state/signd.owner
pid_file=/var/run/pkcsslotd.pid
socket=/var/run/pkcsslotd.socket

module=
for m in /usr/lib/*/pkcs11/libopencryptoki.so /usr/lib/pkcs11/libopencryptoki.so; do
	[ -e "$m" ] && module=$m && break
done

die() {
	echo "opencryptoki: $*" >&2
	exit 1
}

# "label|flags" of the soft token, read without a PIN (pkcsconf -t: token information).
token_info() {
	pkcsconf -t -c "$slot" 2>/dev/null | awk -F': ' '
		/^\tLabel:/ { sub(/[ \t]+$/, "", $2); l = $2 }
		/^\tFlags:/ { split($2, f, " "); fl = f[1] }
		END { print l "|" fl }'
}

initialised() { [ $(($1 & 0x400)) -ne 0 ]; } # CKF_TOKEN_INITIALIZED

slotd_pid() {
	local pid
	pid=$(cat "$pid_file" 2>/dev/null || true)
	[ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = pkcsslotd ] && echo "$pid"
}

start() {
	[ -n "$module" ] || die "libopencryptoki.so is not installed: make deps HSM=opencryptoki"
	command -v pkcsslotd >/dev/null || die "pkcsslotd is not installed: make deps HSM=opencryptoki"
	mkdir -p "$dir/hsm"
	dir=$(cd "$dir" && pwd)
	# Without systemd nothing created the lock and state folders the unit expects.
	if [ ! -d /var/lock/opencryptoki/swtok ] || [ ! -d "$state/swtok/TOK_OBJ" ]; then
		[ "$(id -u)" = 0 ] || die "run as root once: the daemon's folders are missing"
		systemd-tmpfiles --create /usr/lib/tmpfiles.d/opencryptoki.conf
	fi
	if [ -z "$(slotd_pid)" ]; then
		[ "$(id -u)" = 0 ] || die "pkcsslotd is not running, and only root may start it"
		# A daemon killed earlier leaves its pid file, which would stop a new one.
		rm -f "$pid_file"
		pkcsslotd # forks into the background once its socket listens; logs to syslog
		local i
		for i in $(seq 100); do
			[ -n "$(slotd_pid)" ] && [ -S "$socket" ] && break
			sleep 0.1
		done
		[ -n "$(slotd_pid)" ] || die "pkcsslotd did not start (see the system log)"
		slotd_pid >"$dir/hsm/pkcsslotd.pid"
		echo "init: started pkcsslotd (pid $(cat "$dir/hsm/pkcsslotd.pid"))"
	fi
	local info label flags mine=
	# One claim at a time (make bench and make test-modules may start together).
	exec 9>"$state/signd.lock"
	flock 9
	info=$(token_info)
	label=${info%%|*}
	flags=${info#*|}
	[ -n "$flags" ] || die "no token in slot $slot (pkcsconf -t -c $slot)"
	[ ! -e "$dir/hsm/token-label" ] || mine=$(cat "$dir/hsm/token-label")
	if initialised "$flags"; then
		if [ -n "$mine" ] && [ "$label" = "$mine" ]; then
			[ -e "$dir/pin" ] ||
				die "the soft token '$label' was initialised but not set up (no $dir/pin): $0 release $dir, then start again"
			return 0
		fi
		die "the machine's soft token (slot $slot, label '$label') was initialised by $(
			cat "$owner_file" 2>/dev/null || echo 'something else')$([ -n "$mine" ] &&
			echo ", not by $dir (which made '$mine')"): refusing to touch it, so that no key is lost. Use that data directory, or release it first ($0 release THAT_DATA_DIR)"
	fi
	[ -z "$mine" ] || die "$dir made the soft token '$mine', which is gone (slot $slot is not initialised): its keys are lost; use a new data directory"
	label=signd-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
	# Claimed before it is made: a set-up that fails half-way (initialised, PINs not set)
	# leaves a token this directory may still release.
	printf '%s\n' "$label" >"$dir/hsm/token-label"
	printf '%s %s\n' "$dir" "$label" >"$owner_file"
	chmod 0644 "$owner_file"
	rm -f "$dir/hsm/factory-so-pin"
	printf '%s' "$factory_so_pin" >"$dir/hsm/factory-so-pin"
	if ! "$bin/signd-provision" module-token "$dir" --module "$module" --slot "$slot" \
		--label "$label" --pin-length "$pin_length" \
		--factory-so-pin-file "$dir/hsm/factory-so-pin" >/dev/null; then
		rm -f "$dir/hsm/factory-so-pin"
		info=$(token_info)
		if [ "${info%%|*}" = "$label" ]; then
			die "the soft token '$label' was initialised but not set up: $0 release $dir, then start again"
		fi
		rm -f "$dir/hsm/token-label" "$owner_file"
		die "could not initialise the soft token (slot $slot)"
	fi
	rm -f "$dir/hsm/factory-so-pin"
	# The keeper's account opens pkcsslotd's socket and the token's files: group pkcs11
	# (provisioning/init-data-dir.sh adds it).
	echo pkcs11 >"$dir/hsm/keeper-groups"
	echo "init: initialised the opencryptoki soft token '$label' (slot $slot)"
}

conf() {
	[ -e "$dir/hsm/token-label" ] || die "$dir has no opencryptoki token: run start first"
	cat <<EOT
pkcs11_module = $module
token = $(cat "$dir/hsm/token-label")
pin_file = pin
softhsm2_conf =
max_active_keys = $((object_limit / 2 - 24 < 1000 ? object_limit / 2 - 24 : 1000))
EOT
}

stop() {
	local pid
	pid=$(cat "$dir/hsm/pkcsslotd.pid" 2>/dev/null || true)
	[ -n "$pid" ] || return 0
	if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = pkcsslotd ]; then
		kill "$pid"
		local i
		for i in $(seq 100); do
			[ -d /proc/"$pid" ] || break
			sleep 0.1
		done
	fi
	rm -f "$dir/hsm/pkcsslotd.pid"
}

release() {
	[ -e "$dir/hsm/token-label" ] || die "$dir initialised no opencryptoki token"
	dir=$(cd "$dir" && pwd)
	local info label
	[ -n "$(slotd_pid)" ] || die "pkcsslotd is not running: release before stop"
	info=$(token_info)
	label=${info%%|*}
	[ "$label" = "$(cat "$dir/hsm/token-label")" ] ||
		die "the soft token is '$label', not the one $dir made: leaving it alone"
	rm -f "$state/swtok/NVTOK.DAT" "$state/swtok/MK_SO" "$state/swtok/MK_USER"
	find "$state/swtok/TOK_OBJ" -mindepth 1 -maxdepth 1 -type f -delete
	rm -f "$owner_file" "$dir/hsm/token-label"
	echo "release: wiped the soft token '$label'"
}

case "$cmd" in
start | conf | stop | release) "$cmd" ;;
*)
	echo "usage: opencryptoki.sh start|conf|stop|release DATA_DIR" >&2
	exit 2
	;;
esac
