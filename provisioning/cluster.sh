#!/usr/bin/env bash
# `make cluster`: NODES appliance nodes on one PostgreSQL server and one token, behind
# HAProxy, all on this machine and in the foreground (docs/cluster.md). Ctrl-C or SIGTERM
# stops everything; run again, it reuses DATA_DIR:
#   DATA_DIR/pg/            PostgreSQL 15 (data/ is the cluster, the Unix socket sits in
#                           pg/ itself: listen_addresses = '', no TCP), run as signd-pg
#   DATA_DIR/token/, softhsm2.conf, pin, so-pin
#                           ONE SoftHSM2 token every node's keeper opens: the stand-in for a
#                           network HSM partition (a Luna HA group, a CloudHSM cluster)
#   DATA_DIR/tls/           one certificate for 127.0.0.1 that every node serves
#   DATA_DIR/admin.credential  the bootstrap admin's secret (the credential is in the database)
#   DATA_DIR/nodeN/         node N: appliance.conf (port PORT+N, database = the server,
#                           node_name = nodeN, state_directory = this directory), signd.log
#   DATA_DIR/haproxy.cfg, haproxy.pid, haproxy.log   the load balancer on PORT
#
# Usage: cluster.sh                      (make cluster; DATA_DIR, PORT, NODES from the environment)
#        cluster.sh pg-init PGDIR ACCOUNT...
#            a PostgreSQL cluster in PGDIR/data owned by the server's account (signd-pg, or
#            the caller when not root), its socket in PGDIR, peer authentication with every
#            ACCOUNT mapped to the role signd; the files are rewritten every time
#        cluster.sh pg-server PGDIR
#            the server of PGDIR in the foreground, as its account, in a session of its own
#            (exec: the caller's "$!" is the server's PID; SIGINT stops it)
#        cluster.sh pg-db PGDIR [PID]
#            waits for the server on PGDIR's socket (fails at once if PID has exited), then
#            creates the role and the database signd when missing
#        cluster.sh node DATA_DIR N PORT PGDIR [PUBLIC_URL]
#            the shared token and certificate when missing, node N's directory and
#            configuration, and the admin credential when missing (the server must run)
#        cluster.sh haproxy-cfg DATA_DIR PORT NODE_PORT...
#            HAProxy's configuration (on stdout): 127.0.0.1:PORT to the nodes
# tests/blackbox/cluster.py runs pg-init, pg-db, node and haproxy-cfg, so that its nodes
# are the ones `make cluster` makes; the server itself it starts and stops on its own, for
# its fault tests. tests/bench/bench.sh (BENCH_ONLY=cluster) runs all five.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/provisioning/lib.sh"
bin="$top/${SIGND_BUILD:-build}/bin"
pgbin=/usr/lib/postgresql/15/bin
# The server's account when started as root (PostgreSQL refuses to run as root).
pg_account=signd-pg
group=signd-data

# The account the server runs as: signd-pg as root, else the caller.
pg_owner() { if [ "$(id -u)" = 0 ]; then echo "$pg_account"; else id -un; fi; }

# Runs a command as the server's account, with the server's directory as its working
# directory (one the account may enter), in a session of its own. exec, no fork: "$!" of a
# background call is the program's own PID.
as_pg() {
	local pgdir=$1
	shift
	cd "$pgdir"
	if [ "$(id -u)" = 0 ]; then
		exec setsid setpriv --reuid="$pg_account" --regid="$pg_account" --init-groups -- "$@"
	fi
	exec setsid "$@"
}

# libpq's URI of the database on the server whose socket is in PGDIR: the socket directory
# as the host parameter, percent-encoded.
db_uri() {
	local s=$1 out="" c i
	for ((i = 0; i < ${#s}; i++)); do
		c=${s:i:1}
		case "$c" in
		[A-Za-z0-9/._~-]) out+=$c ;;
		*) out+=$(printf '%%%02X' "'$c") ;;
		esac
	done
	echo "postgresql:///signd?host=$out&user=signd"
}

cmd_pg_init() {
	local pgdir=$1 owner
	shift
	owner=$(pg_owner)
	if [ "$(id -u)" = 0 ] && ! id -u "$pg_account" >/dev/null 2>&1; then
		useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
			"$pg_account" || [ $? = 9 ]
		echo "init: created the system account $pg_account"
	fi
	mkdir -p "$pgdir"
	pgdir=$(cd "$pgdir" && pwd)
	# A Unix socket's path holds at most 107 bytes.
	if [ ${#pgdir} -gt $((107 - 17)) ]; then
		echo "cluster: $pgdir/.s.PGSQL.5432 is longer than a Unix socket path may be (107 bytes): pick a shorter DATA_DIR" >&2
		return 1
	fi
	if [ "$(id -u)" = 0 ]; then
		chown "$owner:" "$pgdir"
	fi
	chmod 0755 "$pgdir"
	if [ ! -e "$pgdir/data/PG_VERSION" ]; then
		# No password anywhere: the superuser is the server's own account, by peer.
		(as_pg "$pgdir" "$pgbin/initdb" -D "$pgdir/data" -U "$owner" --encoding=UTF8 \
			--locale=C --auth-local=peer --auth-host=reject >"$pgdir/initdb.log" 2>&1) || {
			cat "$pgdir/initdb.log" >&2
			return 1
		}
		echo "init: created the PostgreSQL cluster in $pgdir/data"
	fi
	# Unix socket only, in pgdir; logs in pgdir/data/log. Written each time, read at start.
	cat >"$pgdir/data/signd.conf" <<EOF
# Written by provisioning/cluster.sh at every run; postgresql.conf includes it.
listen_addresses = ''
unix_socket_directories = '$pgdir'
unix_socket_permissions = 0777
logging_collector = on
log_directory = 'log'
EOF
	grep -qx "include_if_exists = 'signd.conf'" "$pgdir/data/postgresql.conf" ||
		echo "include_if_exists = 'signd.conf'" >>"$pgdir/data/postgresql.conf"
	# Peer authentication: the server asks the kernel which account holds the other end of
	# the socket (SO_PEERCRED), so there is no password to write anywhere; the map lets the
	# appliance's accounts (root for the supervisor and signd-provision, the keeper's and the
	# front's) log in as the one role signd that owns the appliance's tables.
	cat >"$pgdir/data/pg_hba.conf" <<EOF
# Written by provisioning/cluster.sh at every run. Unix socket only; peer, no password.
# TYPE  DATABASE  USER      METHOD
local   all       $owner    peer
local   signd     signd     peer map=signd
EOF
	{
		echo "# Written by provisioning/cluster.sh at every run: OS account -> role signd."
		echo "# MAPNAME  SYSTEM-USERNAME  PG-USERNAME"
		local a
		for a in "$@"; do echo "signd  $a  signd"; done
	} >"$pgdir/data/pg_ident.conf"
	if [ "$(id -u)" = 0 ]; then
		chown "$owner:" "$pgdir/data/signd.conf" "$pgdir/data/pg_hba.conf" \
			"$pgdir/data/pg_ident.conf"
	fi
}

cmd_pg_db() {
	local pgdir pid=${2:-} i
	pgdir=$(cd "$1" && pwd)
	for ((i = 0; i < 300; i++)); do
		pg_isready -q -h "$pgdir" -d postgres && break
		if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
			echo "cluster: PostgreSQL (pid $pid) exited; the end of $pgdir/postgres.log:" >&2
			tail -n 20 "$pgdir/postgres.log" >&2 || true
			return 1
		fi
		sleep 0.1
	done
	pg_isready -q -h "$pgdir" -d postgres || {
		echo "cluster: PostgreSQL does not answer on $pgdir (see $pgdir/postgres.log, $pgdir/data/log)" >&2
		return 1
	}
	(as_pg "$pgdir" psql -X -q -v ON_ERROR_STOP=1 -h "$pgdir" -U "$(pg_owner)" -d postgres <<'EOF'
SELECT 'CREATE ROLE signd LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'signd') \gexec
SELECT 'CREATE DATABASE signd OWNER signd' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'signd') \gexec
EOF
	)
}

cmd_node() {
	local dir=$1 n=$2 port=$3 pgdir=$4 public_url=${5:-} nd conf keeper front
	umask 077
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	pgdir=$(cd "$pgdir" && pwd)
	# The shared token and certificate, once.
	if [ ! -e "$dir/token" ]; then
		"$bin/signd-provision" token "$dir" >/dev/null
		echo "init: created the shared SoftHSM2 token in $dir/token"
	fi
	prov_tls_cert "$dir"
	nd="$dir/node$n"
	conf="$nd/appliance.conf"
	mkdir -p "$nd"
	if [ ! -e "$conf" ]; then
		"$bin/signd-provision" config "$nd" --port "$port" >/dev/null
		echo "init: wrote $conf"
	fi
	# What make cluster owns in a node's configuration, set at every run; the rest is the
	# operator's.
	prov_conf_set "$conf" port "$port"
	prov_conf_set "$conf" softhsm2_conf "$dir/softhsm2.conf"
	prov_conf_set "$conf" pin_file "$dir/pin"
	prov_conf_set "$conf" tls_certificate "$dir/tls/cert.pem"
	prov_conf_set "$conf" tls_private_key "$dir/tls/key.pem"
	prov_conf_set "$conf" database "$(db_uri "$pgdir")"
	prov_conf_set "$conf" node_name "node$n"
	prov_conf_set "$conf" state_directory "$nd"
	[ -z "$public_url" ] || prov_conf_set "$conf" public_url "$public_url"

	# Started as root: the node's keeper and front run as their own accounts (as make run's);
	# every keeper uses the one token, every front the one TLS key.
	if [ "$(id -u)" = 0 ] && [ -z "$(prov_conf_value "$conf" user)" ]; then
		keeper=$(prov_conf_value "$conf" keeper_user)
		front=$(prov_conf_value "$conf" front_user)
		prov_accounts "$group" $keeper $front
		# Every account passes through (the server's to pg/, the nodes' to their files),
		# none lists it; the secrets below are each one account's.
		chmod 0711 "$dir"
		chown root:"$group" "$nd"
		chmod 3770 "$nd"
		if [ -n "$keeper" ]; then
			chown -R "$keeper:$(id -gn "$keeper")" "$dir/token"
			chown "$keeper:$(id -gn "$keeper")" "$dir/softhsm2.conf" "$dir/pin"
		fi
		[ -z "$front" ] || chown -R "$front:$(id -gn "$front")" "$dir/tls"
	fi

	# The bootstrap admin, once for the cluster: credentials live in the shared database.
	if [ ! -e "$dir/admin.credential" ]; then
		"$bin/signd-provision" admin-credential "$nd" --label bootstrap \
			--out "$dir/admin.credential"
		echo "init: the bootstrap admin credential's secret is in $dir/admin.credential"
	fi
}

# The accounts that log in to the database: root (the supervisor, signd-provision), each
# node's keeper and front (or its one `user`), and the caller when not root.
db_accounts() {
	local dir=$1 nodes=$2 n conf
	{
		echo root
		id -un
		for ((n = 1; n <= nodes; n++)); do
			conf="$dir/node$n/appliance.conf"
			[ -e "$conf" ] || conf=/dev/null
			if [ -n "$(prov_conf_value "$conf" user)" ]; then
				prov_conf_value "$conf" user
			else
				prov_conf_value "$conf" keeper_user
				prov_conf_value "$conf" front_user
			fi
		done
		[ -e "$dir/node1/appliance.conf" ] || printf 'signd-keeper\nsignd-front\n'
	} | grep -v '^$' | sort -u
}

# The load balancer's configuration: on 127.0.0.1:PORT, to a node on each NODE_PORT.
cmd_haproxy_cfg() {
	local dir=$1 port=$2 n=0 p
	shift 2
	cat <<EOF
# Written by provisioning/cluster.sh at every run (make cluster).
global
    log stdout format raw local0
    maxconn 4096
$([ "$(id -u)" = 0 ] && id -u haproxy >/dev/null 2>&1 && printf '    user haproxy\n    group haproxy\n')

defaults
    log global
    # TCP: TLS passes through to the nodes, so a client certificate reaches the node that
    # checks it, and the one certificate of the cluster is the nodes' own.
    mode tcp
    option tcplog
    option redispatch
    retries 2
    timeout connect 2s
    # Longer than events_heartbeat_seconds: a revocation event stream stays open.
    timeout client 5m
    timeout server 5m

frontend signd
    bind 127.0.0.1:$port
    default_backend nodes

backend nodes
    balance leastconn
    # A node is in while GET /readyz answers 200 over TLS (its keeper, token and database
    # ready), checked every second; two failures take it out, two successes bring it back.
    option httpchk GET /readyz
    http-check expect status 200
    default-server check check-ssl verify required ca-file $dir/tls/cert.pem inter 1s fall 2 rise 2 on-marked-down shutdown-sessions
EOF
	for p in "$@"; do
		n=$((n + 1))
		echo "    server node$n 127.0.0.1:$p"
	done
}

pids=()
names=()
stopping=0

stop_all() {
	[ $stopping = 0 ] || return 0
	stopping=1
	# A second Ctrl-C (or timeout(1)'s TERM to the whole group) must not cut the stop short.
	trap '' INT TERM
	echo
	echo "cluster: stopping"
	local i t
	# The load balancer first, then the nodes, the database last (the nodes write to it as
	# they stop).
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill -0 "${pids[i]}" 2>/dev/null || continue
		case "${names[i]}" in postgres) kill -INT "${pids[i]}" ;; *) kill -TERM "${pids[i]}" ;; esac
		# At most 30 s each; then SIGKILL (a node's keeper and front follow their supervisor).
		for ((t = 0; t < 300; t++)); do
			kill -0 "${pids[i]}" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "${pids[i]}" 2>/dev/null; then
			kill -KILL "${pids[i]}" 2>/dev/null || true
			echo "cluster: ${names[i]} (pid ${pids[i]}) did not stop within 30 s: killed" >&2
		fi
		wait "${pids[i]}" 2>/dev/null || true
		echo "cluster: ${names[i]} (pid ${pids[i]}) stopped"
	done
	rm -f "$dir/haproxy.pid"
}


cmd_run() {
	port=${PORT:-8443}
	nodes=${NODES:-3}
	case "$nodes" in '' | *[!0-9]* | 0) echo "cluster: NODES must be 1 or more" >&2 && exit 2 ;; esac
	case "$port" in '' | *[!0-9]*) echo "cluster: PORT must be a number" >&2 && exit 2 ;; esac
	[ $((port + nodes)) -le 65535 ] || { echo "cluster: PORT+NODES must be at most 65535" >&2 && exit 2; }
	dir=${DATA_DIR:-}
	if [ "$(id -u)" = 0 ]; then
		if [ -z "$dir" ]; then
			dir=./cluster
			closed=$(prov_closed_above "$dir")
			if [ -n "$closed" ]; then
				dir=/var/lib/signd-cluster
				echo "cluster: $closed is closed to others, so the appliance's accounts and PostgreSQL's could not reach ./cluster: using $dir"
			fi
		else
			closed=$(prov_closed_above "$dir")
			if [ -n "$closed" ]; then
				echo "cluster: $closed is closed to others, so the appliance's accounts and PostgreSQL's cannot reach $dir; pick a DATA_DIR they can reach (make cluster DATA_DIR=/var/lib/signd-cluster)" >&2
				exit 1
			fi
		fi
	fi
	dir=${dir:-./cluster}
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	pgdir="$dir/pg"
	trap stop_all EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM

	mapfile -t accounts < <(db_accounts "$dir" "$nodes")
	cmd_pg_init "$pgdir" "${accounts[@]}"
	(as_pg "$pgdir" "$pgbin/postgres" -D "$pgdir/data" >>"$pgdir/postgres.log" 2>&1) &
	pids+=($!)
	names+=(postgres)
	cmd_pg_db "$pgdir" "${pids[0]}"
	echo "cluster: PostgreSQL (pid ${pids[0]}) on $pgdir/.s.PGSQL.5432"

	for ((n = 1; n <= nodes; n++)); do
		cmd_node "$dir" "$n" $((port + n)) "$pgdir" "https://127.0.0.1:$port"
	done
	# The accounts the configurations name now (a first run made them just above).
	mapfile -t now < <(db_accounts "$dir" "$nodes")
	if [ "${now[*]}" != "${accounts[*]}" ]; then
		cmd_pg_init "$pgdir" "${now[@]}"
		kill -HUP "${pids[0]}"
	fi

	# Each child in a session of its own (setsid execs it, same PID): Ctrl-C reaches this
	# script alone, which stops them in order.
	for ((n = 1; n <= nodes; n++)); do
		setsid "$bin/signd" "$dir/node$n/appliance.conf" >/dev/null 2>>"$dir/node$n/signd.log" &
		pids+=($!)
		names+=("node$n")
	done
	for ((n = 1; n <= nodes; n++)); do
		prov_wait_ready cluster $((port + n)) "$dir/tls/cert.pem" "${pids[n]}" "node$n" "$dir/node$n/signd.log" || exit 1
		echo "cluster: node$n (pid ${pids[n]}) ready on https://127.0.0.1:$((port + n)), log $dir/node$n/signd.log"
	done

	cmd_haproxy_cfg "$dir" "$port" $(seq $((port + 1)) $((port + nodes))) >"$dir/haproxy.cfg"
	haproxy -c -q -f "$dir/haproxy.cfg"
	setsid haproxy -db -f "$dir/haproxy.cfg" >>"$dir/haproxy.log" 2>&1 &
	pids+=($!)
	names+=(haproxy)
	echo "${pids[-1]}" >"$dir/haproxy.pid"
	prov_wait_ready cluster "$port" "$dir/tls/cert.pem" "${pids[-1]}" haproxy "$dir/haproxy.log" || exit 1
	echo "cluster: haproxy (pid ${pids[-1]}) on https://127.0.0.1:$port, log $dir/haproxy.log"

	url="https://127.0.0.1:$port"
	auth="-H @<(printf 'Authorization: Bearer %s\\n' \"\$(cat $dir/admin.credential)\")"
	cat <<EOT

$nodes nodes on one PostgreSQL and one token, behind $url (data in $dir;
docs/cluster.md). Try, from another shell (bash):

  # create a key through the load balancer, then list it on every node
  curl --cacert $dir/tls/cert.pem $auth \\
       -H 'Content-Type: application/json' -d '{"bits":2048,"label":"demo"}' $url/v1/keys
  for p in $(seq -s ' ' $((port + 1)) $((port + nodes))); do curl -s --cacert $dir/tls/cert.pem $auth https://127.0.0.1:\$p/v1/keys; echo; done
  # the JWKS, through the load balancer
  curl --cacert $dir/tls/cert.pem $url/.well-known/jwks.json
  # take a node away (the load balancer routes around it within 2 s)
  kill -9 ${pids[1]}

Stop everything with Ctrl-C.
EOT
	# Until a signal: a node that ends is reported, the others keep serving.
	while :; do
		local_rc=0
		wait -n "${pids[@]}" || local_rc=$?
		for ((i = 0; i < ${#pids[@]}; i++)); do
			if [ -n "${pids[i]}" ] && ! kill -0 "${pids[i]}" 2>/dev/null; then
				echo "cluster: ${names[i]} (pid ${pids[i]}) ended (status $local_rc); the others keep running, Ctrl-C stops them" >&2
				[ "${names[i]}" != postgres ] || echo "cluster: without PostgreSQL the nodes answer 503 storage_unavailable" >&2
				wait "${pids[i]}" 2>/dev/null || true
				unset 'pids[i]' 'names[i]'
				pids=("${pids[@]}")
				names=("${names[@]}")
				break
			fi
		done
		[ ${#pids[@]} -gt 0 ] || exit 1
	done
}

case "${1:-}" in
pg-init) shift && cmd_pg_init "$@" ;;
pg-server)
	[ $# = 2 ] || { echo "usage: cluster.sh pg-server PGDIR" >&2 && exit 2; }
	pgdir=$(cd "$2" && pwd)
	as_pg "$pgdir" "$pgbin/postgres" -D "$pgdir/data"
	;;
pg-db) shift && cmd_pg_db "$@" ;;
haproxy-cfg) shift && cmd_haproxy_cfg "$@" ;;
node) shift && cmd_node "$@" ;;
'') cmd_run ;;
*)
	echo "usage: cluster.sh [pg-init PGDIR ACCOUNT... | pg-server PGDIR | pg-db PGDIR [PID] | node DATA_DIR N PORT PGDIR [PUBLIC_URL] | haproxy-cfg DATA_DIR PORT NODE_PORT...]" >&2
	exit 2
	;;
esac
