# Shell functions shared by the provisioning scripts (sourced by init-data-dir.sh, run.sh
# and cluster.sh; not a program of its own).

# The first directory above $1 (which need not exist yet) that others may not enter, or
# nothing: the appliance's accounts are neither owner nor group of such a directory.
prov_closed_above() {
	local d
	d=$(realpath -m "$1")
	while [ "$d" != / ]; do
		d=$(dirname "$d")
		if [ -e "$d" ] && [ "$(stat -L -c %A "$d" | cut -c10)" != x ] &&
			[ "$(stat -L -c %A "$d" | cut -c10)" != t ]; then
			echo "$d"
			return
		fi
	done
}

# A self-signed certificate for localhost and 127.0.0.1 in DIR/tls (cert.pem 0644,
# key.pem 0600) when DIR/tls/cert.pem is missing.
prov_tls_cert() {
	local dir=$1
	[ ! -e "$dir/tls/cert.pem" ] || return 0
	mkdir -p "$dir/tls"
	(umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
		-subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
		-keyout "$dir/tls/key.pem" -out "$dir/tls/cert.pem" 2>/dev/null)
	chmod 0644 "$dir/tls/cert.pem"
	echo "init: created a self-signed TLS certificate in $dir/tls"
}

# Root only: the group GROUP and a system account for each further argument, in that
# group, created when missing (exit status 9: created meanwhile by another run).
prov_accounts() {
	local group=$1 account
	shift
	getent group "$group" >/dev/null || groupadd --system "$group" || [ $? = 9 ]
	for account in "$@"; do
		if ! id -u "$account" >/dev/null 2>&1; then
			useradd --system --no-create-home --home-dir /nonexistent \
				--shell /usr/sbin/nologin --groups "$group" "$account" || [ $? = 9 ]
			echo "init: created the system account $account"
		elif ! id -nG "$account" | tr ' ' '\n' | grep -qx "$group"; then
			usermod -a -G "$group" "$account"
		fi
	done
}

# The value of KEY in the configuration file FILE (the last one), or nothing.
prov_conf_value() { sed -n "s/^$2 = *//p" "$1" | tail -n 1; }

# Sets KEY = VALUE in the configuration file FILE: replaces the line when there is one,
# appends it otherwise (a repeated key would stop the appliance).
prov_conf_set() {
	local file=$1 key=$2 value=$3 tmp
	if grep -q "^$key =" "$file"; then
		[ "$(prov_conf_value "$file" "$key")" != "$value" ] || return 0
		tmp=$(mktemp "$file.XXXXXX")
		awk -v k="$key" -v v="$value" \
			'index($0, k " =") == 1 { print k " = " v; next } { print }' "$file" >"$tmp"
		chmod --reference="$file" "$tmp"
		mv -f "$tmp" "$file"
	else
		printf '%s = %s\n' "$key" "$value" >>"$file"
	fi
}

# Writes what `provisioning/hsm/NAME.sh conf DIR` prints (pkcs11_module, token, pin_file,
# ...) into the configuration file, one setting at a time: make run and the bench both
# point DIR's appliance at the module this way.
# Usage: prov_module_conf MODULE_SCRIPT DIR CONF
prov_module_conf() {
	local line key value
	"$1" conf "$2" | while IFS= read -r line; do
		key=${line%%=*}
		value=${line#*=}
		prov_conf_set "$3" "${key% }" "${value# }"
	done
}

# Waits until https://127.0.0.1:PORT/readyz answers 200 (trusting CAFILE), for at most
# 60 s; 1 with a line on stderr (WHO: WHAT ..., and the end of LOG) when the process PID
# ends first or the time runs out. make cluster and the cluster bench start nodes alike.
# Usage: prov_wait_ready WHO PORT CAFILE PID WHAT LOG
prov_wait_ready() {
	local who=$1 port=$2 ca=$3 pid=$4 what=$5 log=$6 i
	for ((i = 0; i < 600; i++)); do
		if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$ca" \
			"https://127.0.0.1:$port/readyz" 2>/dev/null)" = 200 ]; then
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "$who: $what exited; the end of $log:" >&2
			tail -n 20 "$log" >&2
			return 1
		fi
		sleep 0.1
	done
	echo "$who: $what is not ready after 60 s (see $log)" >&2
	return 1
}
