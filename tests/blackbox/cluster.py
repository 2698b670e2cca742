"""Cluster mode for the black-box tests: N appliance nodes on one PostgreSQL server and one
SoftHSM2 token, optionally behind HAProxy (issue 20; docs/cluster.md).

Everything is provisioned by provisioning/cluster.sh, the script of `make cluster`: its
`pg-init` and `pg-db` steps make the server's files, role and database, its `node` step
each node's directory and configuration (database = the server's Unix socket, node_name,
state_directory, the shared token, PIN file and certificate) and the one bootstrap admin
credential, its `haproxy-cfg` step the load balancer's configuration. So the nodes under
test are configured as `make cluster` configures them; only their ports are picked at run
time, from this xdist worker's range (conftest.free_port), and the server listens on no
TCP port at all.

The server, the nodes and HAProxy are started here, each in a session of its own, and
stopped by PID: Postgres.stop()/start() and Cluster.kill9(i)/restart(i) are the faults.

    c = Cluster(nodes=3, haproxy=True)
    try:
        c.start()                  # on a failure, stops what it had started
        c.node(1).create_key()     # a conftest.Appliance, one per node
        c.balancer.get("/readyz", auth=False)
    finally:
        c.stop()
"""
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile

import requests

from conftest import APPLIANCE_PORTS, TOP, Appliance, free_port, machine_lock, reachable
from procs import stop_process, wait_for

CLUSTER_SH = os.path.join(TOP, "provisioning", "cluster.sh")
PG_BIN = "/usr/lib/postgresql/15/bin"
# The server's account as root (PostgreSQL refuses root): the one cluster.sh creates.
PG_ACCOUNT = "signd-pg"
# The accounts that log in to the database (cluster.sh maps each to the role signd): root
# (the supervisor, signd-provision) and each node's keeper and front.
DB_ACCOUNTS = ("root", "signd-keeper", "signd-front")


def _as_root_locked():
    """cluster.sh creates system accounts (useradd) when run as root: under the lock."""
    return machine_lock() if os.geteuid() == 0 else contextlib.nullcontext()


def _run_script(*args):
    """Runs a cluster.sh step; its output is in the exception when it fails."""
    with _as_root_locked():
        r = subprocess.run([CLUSTER_SH, *args], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    out = r.stdout.decode(errors="replace")
    if r.returncode != 0:
        raise RuntimeError("cluster.sh %s failed (%d):\n%s" % (" ".join(args), r.returncode, out))
    return out


class Postgres:
    """One PostgreSQL 15 server in DIR: its cluster in DIR/data, its Unix socket in DIR,
    run as signd-pg when the tests run as root (as the caller otherwise). start() again
    after stop() is the same server with the same data."""

    def __init__(self, pgdir, accounts=DB_ACCOUNTS):
        self.dir = reachable(pgdir)
        self.proc = None
        _run_script("pg-init", pgdir, *accounts)
        self.log_path = os.path.join(pgdir, "postgres.log")
        self.uri = "postgresql:///signd?host=%s&user=signd" % pgdir

    def start(self):
        argv = [os.path.join(PG_BIN, "postgres"), "-D", os.path.join(self.dir, "data")]
        if os.geteuid() == 0:
            argv = ["setpriv", "--reuid=" + PG_ACCOUNT, "--regid=" + PG_ACCOUNT,
                    "--init-groups", "--"] + argv
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=self.dir, stdout=log, stderr=log,
                                         start_new_session=True)
        # Waits for the socket; makes the role and the database the first time.
        _run_script("pg-db", self.dir, str(self.proc.pid))
        return self

    def stop(self, sig=signal.SIGINT, timeout=30):
        """SIGINT: PostgreSQL's fast shutdown (clients are disconnected, nothing waits on
        them); SIGKILL: a crash (the next start recovers from the WAL)."""
        if self.proc is None:
            return None
        _, rc = stop_process(self.proc, sig, timeout)
        self.proc = None
        return rc

    def kill9(self):
        return self.stop(signal.SIGKILL)


class Node(Appliance):
    """A conftest.Appliance whose data directory is node N's of a cluster, provisioned by
    cluster.sh's node step instead of init-data-dir.sh."""

    def __init__(self, cluster, n, public_url="", extra_conf=None):
        self.cluster = cluster
        self.n = n
        self.public_url = public_url
        super().__init__(os.path.join(cluster.dir, "node%d" % n), extra_conf)

    def provision(self, data_dir):
        _run_script("node", self.cluster.dir, str(self.n), str(self.port),
                    self.cluster.pg.dir, self.public_url)
        return os.path.join(self.cluster.dir, "admin.credential")


class Balancer(Appliance):
    """HAProxy in front of the nodes, spoken to as an appliance (the HTTP helpers of
    conftest.Appliance, with the cluster's certificate, admin and signer)."""

    def __init__(self, cluster, port):
        self.cluster_nodes = cluster.nodes
        self.port = port
        APPLIANCE_PORTS.add(port)
        self.dir = cluster.dir
        self.url = "https://127.0.0.1:%d" % port
        self.cacert = cluster.node(1).cacert
        self.admin = cluster.node(1).admin
        self.signer = cluster.node(1).signer
        self.client_cert = None
        self.conf = None
        self.proc = None
        self.log_path = os.path.join(cluster.dir, "haproxy.log")
        self.session = requests.Session()
        self.session.verify = self.cacert

    def start(self, env_extra=None, wait=True):
        cfg = os.path.join(self.dir, "haproxy.cfg")
        ports = [str(node.port) for node in self.cluster_nodes]
        with open(cfg, "w") as f:
            f.write(_run_script("haproxy-cfg", self.dir, str(self.port), *ports))
        subprocess.run(["haproxy", "-c", "-q", "-f", cfg], check=True)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=self.log,
                                     stderr=self.log, start_new_session=True)
        if wait:
            wait_for(lambda: self._ready(), timeout=30, interval=0.1,
                     message="haproxy on %d to pass /readyz" % self.port)
        return self

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError("haproxy exited %s:\n%s" % (self.proc.returncode, self.read_log()))
        try:
            return self.get("/readyz", auth=False, timeout=2).status_code == 200
        except requests.exceptions.RequestException:
            return False

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc is None:
            return None
        _, rc = stop_process(self.proc, sig, timeout)
        self.log.close()
        self.proc = None
        return rc


class Cluster:
    """PostgreSQL, one shared token and N nodes (conftest.Appliance each), and HAProxy in
    front when haproxy=True. Nothing runs before start(); stop() stops all by PID and
    removes the directory. extra_conf: settings for every node's configuration."""

    def __init__(self, nodes=3, haproxy=False, extra_conf=None):
        self.count = nodes
        self.want_haproxy = haproxy
        self.extra_conf = extra_conf
        # Short: the server's socket path must fit in 107 bytes.
        self.dir = reachable(tempfile.mkdtemp(prefix="signd-cluster-"))
        self.pg = None
        self.nodes = []
        self.balancer = None

    def start(self):
        """Starts the server, provisions the nodes (the first makes the token, the
        certificate and the admin credential), starts them all at once and waits for each,
        then HAProxy. On any failure it stops what it had started, then raises."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self):
        self.pg = Postgres(os.path.join(self.dir, "pg"))
        self.pg.start()
        lb_port = free_port() if self.want_haproxy else None
        public_url = "https://127.0.0.1:%d" % lb_port if lb_port else ""
        for n in range(1, self.count + 1):
            self.nodes.append(Node(self, n, public_url, self.extra_conf))
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_started()
        if lb_port:
            self.balancer = Balancer(self, lb_port)
            self.balancer.start()
        return self

    def node(self, i):
        """Node i, counted from 1 as the configurations name them (node1, node2, ...)."""
        return self.nodes[i - 1]

    def kill9(self, i):
        """A crash of node i: its supervisor, keeper and front at once."""
        return self.node(i).kill9()

    def restart(self, i, **kw):
        """Node i stopped (if it runs) and started again; waits until it listens."""
        node = self.node(i)
        if node.proc is not None:
            node.stop()
        return node.start(**kw)

    def wait_ready(self, i, timeout=30):
        """Waits until node i's /readyz answers 200."""
        def ready():
            try:
                return self.node(i).get("/readyz", auth=False, timeout=2).status_code == 200
            except requests.exceptions.RequestException:
                return False
        wait_for(ready, timeout=timeout, interval=0.1, message="node%d ready" % i)

    def stop(self):
        """Stops HAProxy, every node, then the server (each by PID), and removes the
        directory. Safe after a failed start."""
        errors = []
        if self.balancer is not None:
            self.balancer.stop()
        for node in self.nodes:
            try:
                node.stop()
            except AssertionError as e:  # a node that did not exit 0 on SIGTERM
                errors.append(str(e))
        if self.pg is not None:
            self.pg.stop()
        # The server's files belong to its account; root removes them.
        shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise AssertionError("\n".join(errors))
