#!/usr/bin/env bash
# `make run`: prepares DATA_DIR and runs the appliance on PORT (8443). DATA_DIR defaults to
# ./data, or, run as root when ./data sits below a directory others may not enter (a clone
# in /root, 0700), to /var/lib/signd: the keeper and the front run as accounts of their own
# (signd-keeper, signd-front), which must reach their data directory.
# HSM (softhsm2 by default; opencryptoki, tpm2) picks the PKCS#11 module: its
# provisioning/hsm/HSM.sh starts the module's daemons and makes the token (start), gives the
# appliance.conf lines (conf), and stops what it started (stop) when signd exits.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/provisioning/lib.sh"
port=${PORT:-8443}

dir=${DATA_DIR:-}
if [ "$(id -u)" = 0 ]; then
	if [ -z "$dir" ]; then
		dir=./data
		closed=$(prov_closed_above "$dir")
		if [ -n "$closed" ]; then
			dir=/var/lib/signd
			echo "run: $closed is closed to others, so signd-keeper and signd-front could not reach ./data: using $dir"
		fi
	else
		closed=$(prov_closed_above "$dir")
		if [ -n "$closed" ]; then
			echo "run: $closed is closed to others, so signd-keeper and signd-front cannot reach $dir; pick a DATA_DIR they can reach (make run DATA_DIR=/var/lib/signd)" >&2
			exit 1
		fi
	fi
fi
dir=${dir:-./data}
hsm=${HSM:-softhsm2}
module_sh="$top/provisioning/hsm/$hsm.sh"
if ! [[ $hsm =~ ^[a-z0-9]+$ ]] || [ ! -x "$module_sh" ]; then
	echo "run: HSM=$hsm: no such module; pick one of: $(cd "$top/provisioning/hsm" && ls ./*.sh | sed 's|./||; s|\.sh$||' | tr '\n' ' ')" >&2
	exit 2
fi
if [ "$hsm" != softhsm2 ]; then
	mkdir -p "$dir"
	"$module_sh" start "$dir"
fi
SIGND_HSM=$hsm "$top/provisioning/init-data-dir.sh" "$dir" "$port"
dir=$(cd "$dir" && pwd)
conf="$dir/appliance.conf"
# The module's lines (pkcs11_module, token, pin_file, ...) into the configuration file.
if [ "$hsm" != softhsm2 ]; then
	prov_module_conf "$module_sh" "$dir" "$conf"
fi
# The configuration file is the one source of settings; PORT given to make run updates it.
if ! grep -qE "^port = $port\$" "$conf"; then
	sed -i -E "s/^port = [0-9]+\$/port = $port/" "$conf"
	echo "run: set port = $port in $conf"
fi
url="https://127.0.0.1:$port"
# The bearer header is built by bash's printf (a builtin), so the secret never
# appears in any process's argv.
auth="-H @<(printf 'Authorization: Bearer %s\\n' \"\$(cat $dir/admin.credential)\")"
signer="-H @<(printf 'Authorization: Bearer %s\\n' \"\$(sed -n 's/.*\"secret\":\"\\([^\"]*\\)\".*/\\1/p' $dir/demo-signer.json)\")"
cat <<EOT

The appliance is starting on $url (data in $dir).

Web console: $url/console/ (the certificate is $dir/tls/cert.pem; sign in with the
admin secret in $dir/admin.credential, or an auditor's; docs/console.md)

Or try, from another shell (bash):

  # create a key
  curl --cacert $dir/tls/cert.pem $auth \\
       -H 'Content-Type: application/json' -d '{"bits":2048,"label":"demo"}' $url/v1/keys
  # an app server's credential: a signer for every kid (admins do not sign); the
  # secret is shown once, so keep the answer in a 0600 file
  (umask 077; curl -s --cacert $dir/tls/cert.pem $auth \\
       -H 'Content-Type: application/json' -d '{"role":"signer","kids":"all","label":"demo"}' \\
       $url/v1/credentials > $dir/demo-signer.json)
  # mint a token as that signer (newest active key)
  curl --cacert $dir/tls/cert.pem $signer \\
       -H 'Content-Type: application/json' -d '{"sub":"video-42","ttl":600,"claims":{"downloadable":false}}' $url/v1/tokens
  # fetch the JWKS
  curl --cacert $dir/tls/cert.pem $url/.well-known/jwks.json

Stop it with Ctrl-C.
EOT
if [ "$hsm" = softhsm2 ]; then
	exec "$top/build/bin/signd" "$conf"
fi
# Another module's daemons are stopped after signd: no exec, a trap instead.
"$top/build/bin/signd" "$conf" &
signd_pid=$!
stopping() { kill -TERM "$signd_pid" 2>/dev/null || true; }
trap stopping INT TERM
rc=0
wait "$signd_pid" || rc=$?
# wait returns early when a trapped signal arrives: wait again for signd to finish.
while kill -0 "$signd_pid" 2>/dev/null; do
	rc=0
	wait "$signd_pid" || rc=$?
done
"$module_sh" stop "$dir"
exit "$rc"
