#!/usr/bin/env bash
# The TPM 2.0 module: tpm2-pkcs11 on swtpm, behind the tpm2-abrmd resource manager.
#
#   tpm2.sh start DATA_DIR   starts swtpm, a private D-Bus bus and tpm2-abrmd (each in
#                            DATA_DIR/hsm), sets the TPM's dictionary-lockout parameters and,
#                            when DATA_DIR has no token yet, initialises one through PKCS#11
#                            (signd-provision token: random PINs in DATA_DIR/pin and
#                            DATA_DIR/so-pin, 0600). Run again, it reuses what runs and exists.
#   tpm2.sh conf DATA_DIR    prints the appliance.conf lines for this module
#   tpm2.sh stop DATA_DIR    stops, by PID, every daemon start started
#
# DATA_DIR/hsm holds:
#   swtpm/        the TPM's state (its persistent primary key is there)
#   sock/         swtpm's command and control sockets (Unix, no TCP port: nobody else on
#                 the machine can send the TPM a command, as with /dev/tpmrm0's mode)
#   bus/          a D-Bus bus of this data directory alone (dbus.conf, the socket): tpm2-abrmd
#                 needs D-Bus, and a private bus needs no system dbus-daemon, no system
#                 policy and lets two data directories run side by side
#   tpm2/         the tpm2-pkcs11 store (TPM2_PKCS11_STORE: sqlite, wrapped key blobs)
#   *.pid, *.log  the three daemons'
# Run as root, the daemons and the store belong to the keeper's account (keeper_user, or
# `user`; signd-keeper by default), and hsm/ is 0700: no other account reaches the TPM.
# Exit 0, or 1 with one line on stderr.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/provisioning/lib.sh"
bin="$top/${SIGND_BUILD:-build}/bin"

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || {
	echo "usage: tpm2.sh start|conf|stop DATA_DIR" >&2
	exit 2
}
[ "$cmd" != start ] || mkdir -p "$dir"
# No data directory: nothing runs for it.
[ -d "$dir" ] || [ "$cmd" != stop ] || exit 0
[ -d "$dir" ] || {
	echo "tpm2: no data directory $dir" >&2
	exit 1
}
dir=$(cd "$dir" && pwd)
hsm="$dir/hsm"
sock="$hsm/sock/swtpm"
bus="$hsm/bus/socket"
# The bus name is tpm2-abrmd's default: the bus is this data directory's alone.
tcti="tabrmd:bus_type=session"
label=signd
# Wrong PINs count against the whole TPM (dictionary-attack protection): swtpm's defaults
# (3 tries, 1000 s each back) lock it for a quarter of an hour after one misconfiguration.
# The PINs are 120 random bits, so guessing is no threat at 32 tries and one back every 10 s.
da_max_tries=32
da_recovery_s=10
da_lockout_recovery_s=60
# tpm2-abrmd's bound on transient objects per connection (its largest accepted value). The
# keeper is one connection, and tpm2-pkcs11 keeps loaded every key it has used (one object)
# or made (two), destroyed ones included, until the module is finalised: measured, one
# keeper makes about 45 keys, or signs with about 95, then gets CKR_GENERAL_ERROR, which the
# keeper clears by re-opening the module (hsm/hsm.h, "Re-opening"). 40 active keys leave
# one module instance room to sign with all of them and to make about 25 more
# (docs/modules.md, "TPM 2.0").
max_transients=100
max_active_keys=40

die() {
	echo "tpm2: $*" >&2
	exit 1
}

module_path() {
	local m
	for m in /usr/lib/*/pkcs11/libtpm2_pkcs11.so /usr/lib/pkcs11/libtpm2_pkcs11.so; do
		[ -e "$m" ] && { echo "$m"; return; }
	done
	die "libtpm2_pkcs11.so not found: run 'make deps HSM=tpm2'"
}

# The account the keeper runs as (and the daemons, when root): `user`, else keeper_user
# (signd-keeper when appliance.conf does not exist yet); empty: root.
keeper_account() {
	local conf="$dir/appliance.conf" u
	[ "$(id -u)" = 0 ] || return 0
	if [ -e "$conf" ]; then
		u=$(prov_conf_value "$conf" user)
		[ -n "$u" ] || u=$(prov_conf_value "$conf" keeper_user)
		echo "$u"
	else
		echo signd-keeper
	fi
}

# PID in FILE when that process runs and is NAME (a recycled PID is not ours).
alive() {
	local file=$1 name=$2 pid
	[ -s "$file" ] || return 1
	pid=$(cat "$file")
	[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
	# A zombie (exited, not yet reaped) serves nothing.
	[ "$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)" != Z ] ||
		return 1
	echo "$pid"
}

# Runs "$@" detached (own session, no terminal), as the daemons' account, pid in FILE.
spawn() {
	local file=$1 log=$2
	shift 2
	if [ -n "$owner" ] && [ "$owner" != root ]; then
		setsid setpriv --reuid="$owner" --regid="$(id -g "$owner")" --init-groups -- "$@" \
			</dev/null >>"$log" 2>&1 &
	else
		setsid "$@" </dev/null >>"$log" 2>&1 &
	fi
	echo $! >"$file"
}

# Waits up to 10 s for the command "$@" to succeed.
wait_for() {
	local i
	for i in $(seq 100); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}

bus_has_abrmd() {
	dbus-send --bus="unix:path=$bus" --reply-timeout=2000 --print-reply=literal --dest=org.freedesktop.DBus \
		/org/freedesktop/DBus org.freedesktop.DBus.NameHasOwner string:com.intel.tss2.Tabrmd |
		grep -q true
}

tpm_env() {
	export DBUS_SESSION_BUS_ADDRESS="unix:path=$bus" TPM2TOOLS_TCTI="$tcti" \
		TPM2_PKCS11_TCTI="$tcti" TPM2_PKCS11_STORE="$hsm/tpm2"
}

start() {
	local keeper module
	keeper=$(keeper_account)
	owner=$keeper
	module=$(module_path)
	command -v swtpm >/dev/null && command -v tpm2-abrmd >/dev/null &&
		command -v dbus-daemon >/dev/null && command -v tpm2_dictionarylockout >/dev/null ||
		die "swtpm, tpm2-abrmd, dbus-daemon or tpm2-tools missing: run 'make deps HSM=tpm2'"
	# A PIN without a store is another module's token (a SoftHSM2 data directory): its keys
	# are not in this TPM, and a new token would need the PIN file that holds the old PIN.
	if [ -e "$dir/pin" ] && [ ! -s "$hsm/tpm2/tpm2_pkcs11.sqlite3" ]; then
		die "$dir has a token's PIN but no tpm2-pkcs11 store: it belongs to another module; use a new data directory for HSM=tpm2"
	fi
	# sun_path is 108 bytes: swtpm's control socket is the longest path.
	[ ${#sock} -le 100 ] || die "$dir is too long a path for the TPM's Unix sockets (at most $((100 - ${#sock} + ${#dir})) bytes)"
	if [ -n "$keeper" ] && [ "$keeper" != root ]; then
		id -u "$keeper" >/dev/null 2>&1 || prov_accounts signd-data "$keeper"
	fi
	(umask 077 && mkdir -p "$hsm/swtpm" "$hsm/sock" "$hsm/bus" "$hsm/tpm2")
	chmod 0700 "$hsm"
	if [ -n "$owner" ] && [ "$owner" != root ]; then
		chown -R "$owner:$(id -g "$owner")" "$hsm"
	fi

	if ! alive "$hsm/swtpm.pid" swtpm >/dev/null; then
		rm -f "$sock" "$sock.ctrl"
		spawn "$hsm/swtpm.pid" "$hsm/swtpm.log" swtpm socket --tpm2 \
			--tpmstate dir="$hsm/swtpm" \
			--server type=unixio,path="$sock" --ctrl type=unixio,path="$sock.ctrl" \
			--flags not-need-init,startup-clear
		wait_for test -S "$sock.ctrl" || die "swtpm did not start (see $hsm/swtpm.log)"
		echo "tpm2: swtpm $(cat "$hsm/swtpm.pid") serves $sock"
	fi

	if ! alive "$hsm/dbus.pid" dbus-daemon >/dev/null; then
		rm -f "$bus"
		# Who may connect: the daemons' account (tpm2-abrmd, the keeper) and root
		# (signd-provision at set-up); the front's account may not.
		local allow="" u
		for u in root "${owner:-$(id -un)}"; do allow="$allow    <allow user=\"$u\"/>"$'\n'; done
		cat >"$hsm/bus/dbus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<!-- The bus of $dir alone, written by provisioning/hsm/tpm2.sh: tpm2-abrmd and its clients. -->
<busconfig>
  <type>session</type>
  <listen>unix:path=$bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
$allow    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="com.intel.tss2.Tabrmd"/>
  </policy>
</busconfig>
EOF
		[ -z "$owner" ] || [ "$owner" = root ] || chown "$owner" "$hsm/bus/dbus.conf"
		spawn "$hsm/dbus.pid" "$hsm/dbus.log" dbus-daemon --config-file="$hsm/bus/dbus.conf" \
			--nofork --nopidfile --nosyslog
		wait_for dbus-send --bus="unix:path=$bus" --reply-timeout=2000 --print-reply \
			--dest=org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus.GetId ||
			die "dbus-daemon did not start (see $hsm/dbus.log)"
		echo "tpm2: dbus-daemon $(cat "$hsm/dbus.pid") serves $bus"
	fi

	if ! alive "$hsm/abrmd.pid" tpm2-abrmd >/dev/null; then
		local root_flag=()
		# tpm2-abrmd refuses root unless told: only when the keeper itself stays root.
		if [ "$(id -u)" = 0 ] && { [ -z "$owner" ] || [ "$owner" = root ]; }; then
			root_flag=(--allow-root)
		fi
		DBUS_SESSION_BUS_ADDRESS="unix:path=$bus" spawn "$hsm/abrmd.pid" "$hsm/abrmd.log" \
			tpm2-abrmd --session --tcti="swtpm:path=$sock" --flush-all \
			--max-transients="$max_transients" "${root_flag[@]}"
		wait_for bus_has_abrmd || die "tpm2-abrmd did not start (see $hsm/abrmd.log)"
		echo "tpm2: tpm2-abrmd $(cat "$hsm/abrmd.pid") on $bus"
	fi

	tpm_env
	# No lockout authorisation is set on this TPM (swtpm starts with none), so no secret is
	# needed; a TPM whose lockout auth was set keeps its own parameters.
	tpm2_dictionarylockout --setup-parameters --max-tries="$da_max_tries" \
		--recovery-time="$da_recovery_s" --lockout-recovery-time="$da_lockout_recovery_s" \
		>/dev/null 2>>"$hsm/abrmd.log" ||
		echo "tpm2: could not set the dictionary-lockout parameters (lockout auth set?)" >&2

	if [ ! -e "$dir/pin" ]; then
		# C_InitToken and C_InitPIN through the module: it makes the persistent primary key
		# and the token in the store; the PINs go to files, never to argv.
		"$bin/signd-provision" module-token "$dir" --module "$module" --label "$label" \
			--pin-length 30 >/dev/null ||
			die "cannot initialise the token in $hsm/tpm2"
		echo "tpm2: created the token '$label' in $hsm/tpm2"
	fi
	if [ -n "$owner" ] && [ "$owner" != root ]; then
		chown -R "$owner:$(id -g "$owner")" "$hsm/tpm2"
		chown "$owner:$(id -g "$owner")" "$dir/pin"
	fi
}

conf() {
	local module
	module=$(module_path)
	cat <<EOF
pkcs11_module = $module
token = $label
pin_file = pin
softhsm2_conf =
pkcs11_env = TPM2_PKCS11_STORE=$hsm/tpm2,TPM2_PKCS11_TCTI=$tcti,DBUS_SESSION_BUS_ADDRESS=unix:path=$bus
max_active_keys = $max_active_keys
EOF
}

# SIGTERM, then SIGKILL after 5 s, to the daemon in FILE when it is NAME.
stop_one() {
	local file=$1 name=$2 pid i
	if pid=$(alive "$file" "$name"); then
		kill -TERM "$pid" 2>/dev/null || true
		for i in $(seq 50); do
			alive "$file" "$name" >/dev/null || break
			sleep 0.1
		done
		! alive "$file" "$name" >/dev/null || kill -KILL "$pid" 2>/dev/null || true
		echo "tpm2: stopped $name $pid"
	fi
	rm -f "$file"
}

stop() {
	stop_one "$hsm/abrmd.pid" tpm2-abrmd
	stop_one "$hsm/dbus.pid" dbus-daemon
	stop_one "$hsm/swtpm.pid" swtpm
}

case "$cmd" in
start) start ;;
conf) conf ;;
stop) stop ;;
*)
	echo "usage: tpm2.sh start|conf|stop DATA_DIR" >&2
	exit 2
	;;
esac
