#!/usr/bin/python3
"""Proxy benchmark driver: direct vs pgwarden proxy vs PgBouncer vs HAProxy, one cluster, one run.

    BL_DIR=<baseline dir> BL_BASE=<state> BL_AGENT_CMD="<bin>/pgwarden agent" \\
        bench/proxy_bench.py run --results DIR [options]
    bench/proxy_bench.py teardown | preflight

Normally started by bench/proxy.sh, which installs packages, builds pgwarden and sets the environment.
The baseline harness (bl.py) is imported as a module through bench/blx.py and never copied: its etcd
start, cluster bootstrap, pgbouncer_start, haproxy_start, writer, kill_node and teardown are used as
they are.  Three of its module-level choices are adjusted at run time, each documented in the report:
max_connections in the generated agent configs (--max-connections), the pool sizes / max_client_conn /
auth_type in the PgBouncer ini files it writes, and HAProxy's per-server maxconn (kept equal to
max_connections, which is what bl.py's 200 mirrors).

Parts (--parts): pgbench (throughput/latency matrix), idle (memory per idle client), failover (write gap
through the pgwarden proxy and through HAProxy during one and the same failover).
Raw records go to DIR/*.jsonl; bench/proxy_report.py turns them into report.md.
"""
import argparse
import contextlib
import glob
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True   # the baseline dir is shared and read-only
sys.path.insert(0, HERE)
import blx  # noqa: E402  (patches bl's readiness check for pgwarden's member states, then exposes bl)

bl = blx.bl

PGW = os.environ.get('PROXY_BENCH_PGWARDEN') or (bl.AGENT_CMD[0] if bl.AGENT_CMD else '')
MARKER = '.pgwarden-proxy-bench'
# our own listeners, beside bl.py's (pgbouncer 6432/6433, haproxy 5000); pgwarden demo takes 16432-16434
PGW_PORTS = {'pgwarden_txn': 6442, 'pgwarden_session': 6443, 'pgwarden_idle': 6444}
PGB_IDLE = ('pgbouncer_idle_txn', 6445)   # the name's "txn" suffix makes bl.py write pool_mode transaction
TARGETS = ['direct', 'pgwarden_txn', 'pgwarden_session', 'pgbouncer_txn', 'pgbouncer_session', 'haproxy']
WORKLOADS = ['select', 'tpcb']


def all_ports():
    return sorted(set(blx.PORTS + list(bl.PGBOUNCER_PORTS.values()) + [bl.HAPROXY_PORT]
                      + list(PGW_PORTS.values()) + [PGB_IDLE[1]]))


def log(*a):
    bl.log(*a)


class Failure(Exception):
    pass


# ----------------------------------------------------------------------------- run-time adjustments of bl.py
def patch_max_connections(n):
    """bl.py writes max_connections 200 into bootstrap.dcs; 256 direct or session-pooled clients need more."""
    original = bl.ha_write_config

    def ha_write_config(node, profile):
        path = original(node, profile)
        with open(path) as f:
            text = f.read()
        new = re.sub(r'(\n\s+max_connections: )200\n', r'\g<1>%d\n' % n, text, count=1)
        if new == text and n != 200:
            raise Failure('bl.py no longer writes "max_connections: 200"; cannot set %d' % n)
        with open(path, 'w') as f:   # in place: keeps bl's owner and 0600 mode
            f.write(new)
        return path
    bl.ha_write_config = ha_write_config


@contextlib.contextmanager
def spawn_edit(edit):
    """While active, bl.spawn calls edit(name, argv) first: bl's starters write a config file and spawn
    right away, so this is the one point where the file can be adjusted before the process reads it."""
    original = bl.spawn

    def spawn(name, argv, **kw):
        edit(name, argv)
        return original(name, argv, **kw)
    bl.spawn = spawn
    try:
        yield
    finally:
        bl.spawn = original


def set_ini(path, settings):
    with open(path) as f:
        text = f.read()
    for k, v in settings.items():
        text, n = re.subn(r'(?m)^%s = .*$' % re.escape(k), '%s = %s' % (k, v), text)
        if n != 1:
            raise Failure('%s: no "%s = " line to set (bl.py changed?)' % (path, k))
    with open(path, 'w') as f:
        f.write(text)


# ----------------------------------------------------------------------------- process bookkeeping
EXPECT = {'pgwarden': 'pgwarden', 'pgbouncer': 'pgbouncer', 'haproxy': 'haproxy', 'writer': 'writer.py'}


def _cmdline(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return f.read().replace(b'\0', b' ').decode(errors='replace')
    except OSError:
        return ''


def stop_service(name, timeout=15):
    """Stop one process we started, by its recorded PID, after checking the PID is still that program
    (a stale pid file must not make us signal whatever reused the number)."""
    pid = bl.read_pid(name)
    if not pid:
        return
    want = next((v for k, v in EXPECT.items() if name.startswith(k)), None)
    if bl.alive(pid) and want and want not in _cmdline(pid):
        log('pid %d of %s is now %r, not signalling it' % (pid, name, _cmdline(pid)[:80]))
        os.unlink(bl.pidfile(name))
        return
    bl.stop_named(name, timeout=timeout)


def own_service_names():
    try:
        names = [f[:-4] for f in os.listdir(os.path.join(bl.BASE, 'pids')) if f.endswith('.pid')]
    except OSError:
        return []
    return [n for n in names if not n.startswith(('agent-', 'etcd-'))]


def teardown():
    """Everything we (or bl.py on our behalf) started, by PID: services, then agents, then etcd."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)   # a second Ctrl-C must not cut the teardown short
    # writers first (they would log errors into the gap data), then poolers
    for n in sorted(own_service_names(), key=lambda n: not n.startswith('writer')):
        try:
            stop_service(n)
        except Exception as e:
            log('stopping %s: %s' % (n, e))
    try:
        bl.cluster_stop()
    except Exception as e:
        log('cluster_stop: %s' % e)
    try:
        bl.etcd_stop()
    except Exception as e:
        log('etcd_stop: %s' % e)
    left = []
    pdir = os.path.join(bl.BASE, 'pids')
    for f in (os.listdir(pdir) if os.path.isdir(pdir) else []):
        pid = bl.read_pid(f[:-4])
        if pid and bl.alive(pid):
            left.append('%s pid %d' % (f[:-4], pid))
    for n in bl.NODES:
        pm = bl.postmaster_pid(n)
        if pm:
            left.append('postmaster of %s pid %d' % (n['name'], pm))
    busy = [p for p in all_ports() if bl.port_in_use(p)]
    if left or busy:
        log('teardown: still running: %s; ports busy: %s' % (left, busy))
        return False
    log('teardown complete: no process left, ports free')
    return True


def _raise_exit(signum, _frame):
    raise SystemExit(128 + signum)


# ----------------------------------------------------------------------------- starting the services
def userlist(path):
    """The same user and secret bl.py's pgbouncer_start puts in its userlist (plain password)."""
    uid, gid, _ = bl.pw_ids(bl.RUN_AS)
    with open(path, 'w') as f:
        f.write('"postgres" "%s"\n' % bl.SUPERPW)
    os.chown(path, uid, gid)
    os.chmod(path, 0o600)


def proxy_start(name, port, mode, pool, auth, max_client, threads):
    d = os.path.join(bl.BASE, 'proxy')
    os.makedirs(d, exist_ok=True)
    uid, gid, _ = bl.pw_ids(bl.RUN_AS)
    os.chown(d, uid, gid)
    ul = os.path.join(d, 'userlist.txt')
    userlist(ul)
    cfg = """scope: {scope}
namespace: {ns}
etcd3:
  hosts:
{hosts}
proxy:
  listen: {host}:{port}
  pool_mode: {mode}
  default_pool_size: {pool}
  max_client_conn: {maxc}
  auth_type: {auth}
  auth_file: {ul}
  admin_users: [postgres]
  worker_threads: {threads}
""".format(scope=bl.SCOPE, ns=bl.NAMESPACE, host=bl.HOST, port=port, mode=mode, pool=pool, maxc=max_client,
           auth=auth, ul=ul, threads=threads,
           hosts='\n'.join('  - %s:%d' % (bl.HOST, e['client']) for e in bl.ETCD))
    path = os.path.join(d, name + '.yml')
    with open(path, 'w') as f:
        f.write(cfg)
    os.chown(path, uid, gid)
    os.chmod(path, 0o600)
    p = subprocess.run(['runuser', '-u', bl.RUN_AS, '--', PGW, 'proxy', '--check', path],
                       capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise Failure('pgwarden proxy --check %s: %s' % (path, (p.stdout + p.stderr).strip()[-300:]))
    if bl.port_in_use(port):
        raise Failure('port %d in use' % port)
    return bl.spawn(name, [PGW, 'proxy', path], user=bl.RUN_AS)


def pgbouncer_start(name, port, primary_port, settings):
    """One PgBouncer instance through bl.pgbouncer_start (its ini, userlist, auth), with `settings`
    replacing the matching lines of the ini it writes."""
    saved = bl.PGBOUNCER_PORTS
    bl.PGBOUNCER_PORTS = {name: port}

    def edit(n, argv):
        if n == name:
            set_ini(argv[-1], settings)
    try:
        with spawn_edit(edit):
            bl.pgbouncer_start(primary_port)
    except SystemExit as e:   # bl.py exits when the port is taken
        raise Failure('pgbouncer %s: %s' % (name, e))
    finally:
        bl.PGBOUNCER_PORTS = saved
    return bl.read_pid(name)


def haproxy_start(maxconn, primary_port, timeout=120):
    """bl.py's HAProxy (inter 3s fall 3 rise 2, httpchk GET /primary), per-server maxconn = max_connections;
    returns once it routes to the primary only (it starts with every server UP)."""
    def edit(n, argv):
        if n == 'haproxy':
            path = argv[argv.index('-f') + 1]
            with open(path) as f:
                text = f.read()
            new, k = re.subn(r' maxconn 200 check ', ' maxconn %d check ' % maxconn, text)
            if k != len(bl.NODES):
                raise Failure('%s: expected %d "maxconn 200 check" server lines' % (path, len(bl.NODES)))
            with open(path, 'w') as f:
                f.write(new)
    try:
        with spawn_edit(edit):
            bl.haproxy_start()
    except SystemExit as e:
        raise Failure('haproxy: %s' % e)
    t0 = time.time()
    if not bl.wait_port_sql(bl.HAPROXY_PORT, timeout=30):
        raise Failure('haproxy on %d does not answer SQL' % bl.HAPROXY_PORT)
    while True:
        time.sleep(1)
        try:
            ports = [bl.pg_query(bl.HAPROXY_PORT, 'select inet_server_port()')[0][0] for _ in range(6)]
        except Exception:
            ports = []
        # fall 3 x inter 3s: the replicas stay UP for up to ~9 s after the start
        if time.time() - t0 > 10 and ports and all(p == primary_port for p in ports):
            return bl.read_pid('haproxy')
        if time.time() - t0 > timeout:
            raise Failure('haproxy does not route to the primary only after %d s (saw %s)' % (timeout, ports))


def client_backends(port):
    """Client backends that came in over TCP as user postgres from the harness side (poolers, pgbench);
    the agents' own sessions are not counted."""
    return bl.pg_query(port, "select count(*) from pg_stat_activity where backend_type = 'client backend' "
                             "and pid <> pg_backend_pid() and client_addr is not null "
                             "and application_name not like 'pgwarden%'", timeout=5)[0][0]


BACKEND_SLACK = 2   # the agents or a health check may hold a TCP session for a moment


def wait_backends_gone(port, timeout=30):
    """A stopped pooler's server connections must be gone before the next run needs the slots."""
    t0 = time.time()
    n = None
    while time.time() - t0 < timeout:
        n = client_backends(port)
        if n <= BACKEND_SLACK:
            return n
        time.sleep(0.2)
    raise Failure('%s client backends still on port %d after %d s' % (n, port, timeout))


# ----------------------------------------------------------------------------- measuring
def cpu_ticks(pid):
    try:
        return bl.proc_stat(pid)[0] if pid else None
    except OSError:
        return None


def machine_busy():
    with open('/proc/stat') as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v[:8]) - idle, time.time()


def busy_cores(a, b):
    hz = os.sysconf('SC_CLK_TCK')
    return (b[0] - a[0]) / hz / max(b[1] - a[1], 1e-6)


def percentile(sorted_vals, q):
    """Nearest-rank percentile."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q * len(sorted_vals)) - 1))
    return sorted_vals[k]


def tx_latencies(prefix):
    """Per-transaction latencies (µs) from pgbench -l files (one per thread); failed ones are counted apart."""
    lat, failed = [], 0
    for path in glob.glob(prefix + '.*'):
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) < 3:
                    continue
                try:
                    lat.append(int(p[2]))
                except ValueError:
                    failed += 1   # "failed" / "skipped" in place of the time
    lat.sort()
    return lat, failed


def run_pgbench(port, workload, clients, a, tag, pooler_pid):
    d = os.path.join(bl.BASE, 'txlogs', tag)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    prefix = os.path.join(d, 'tx')
    argv = [bl.PGBENCH, '-h', bl.HOST, '-p', str(port), '-U', 'postgres', '-c', str(clients), '-j', str(a.jobs),
            '-T', str(a.seconds), '-l', '--log-prefix=' + prefix]
    if a.sampling_rate < 1:
        argv.append('--sampling-rate=%g' % a.sampling_rate)
    if workload == 'select':
        argv.append('-S')
    argv.append('postgres')
    env = dict(os.environ, PGPASSWORD=bl.SUPERPW, PGCONNECT_TIMEOUT='10')
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    c0, m0 = cpu_ticks(pooler_pid), machine_busy()
    t0 = time.time()
    try:
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=a.seconds + 120, cwd=d)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors='replace') if isinstance(e.stdout, bytes) else (e.stdout or '')
        rc, err = None, 'pgbench did not finish within %d s' % (a.seconds + 120)
    wall = time.time() - t0
    m1, c1 = machine_busy(), cpu_ticks(pooler_pid)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    both = (out or '') + (err or '')
    g = lambda rx, conv=float: (lambda m: conv(m.group(1)) if m else None)(re.search(rx, both))
    tps = g(r'tps = ([\d.]+) \(without initial connection time\)')
    tx = g(r'number of transactions actually processed: (\d+)', int)
    lat, failed_logged = tx_latencies(prefix)
    hz = os.sysconf('SC_CLK_TCK')
    rec = dict(rc=rc, ok=rc == 0 and tps is not None and 'aborted' not in both, tps=tps,
               latency_avg_ms=g(r'latency average = ([\d.]+) ms'),
               initial_connection_ms=g(r'initial connection time = ([\d.]+) ms'),
               tx=tx, failed_tx=g(r'number of failed transactions: (\d+)', int),
               logged_tx=len(lat), logged_failed=failed_logged, sampling_rate=a.sampling_rate,
               p50_ms=round(percentile(lat, 0.50) / 1000, 3) if lat else None,
               p99_ms=round(percentile(lat, 0.99) / 1000, 3) if lat else None,
               max_ms=round(lat[-1] / 1000, 3) if lat else None,
               mean_ms_log=round(sum(lat) / len(lat) / 1000, 3) if lat else None,
               wall_s=round(wall, 2),
               cpu_pgbench_cores=round((ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / wall, 3),
               cpu_pooler_cores=round((c1 - c0) / hz / wall, 3) if c0 is not None and c1 is not None else None,
               cpu_machine_busy_cores=round(busy_cores(m0, m1), 3))
    if rec['cpu_pooler_cores'] is not None and tx:
        rec['pooler_cpu_us_per_tx'] = round((c1 - c0) / hz / tx * 1e6, 1)
    if not rec['ok']:
        rec['stderr_tail'] = [l for l in both.strip().splitlines() if l.strip()][-8:]
        if rc == 0 and not tx:
            # pgbench's -T window includes connecting: 256 SCRAM logins can take several seconds
            rec['error'] = ('pgbench completed no transaction in -T %d s (initial connection time %s ms)'
                            % (a.seconds, rec['initial_connection_ms']))
        fdir = os.path.join(a.results, 'pgbench-failed')
        os.makedirs(fdir, exist_ok=True)
        with open(os.path.join(fdir, tag + '.txt'), 'w') as f:
            f.write(' '.join(argv) + '\n\n' + both)
        rec['output_file'] = os.path.join('pgbench-failed', tag + '.txt')
    shutil.rmtree(d, ignore_errors=True)   # up to a few 10 MB per run; the figures are in the record
    return rec


def quiet_sample(seconds=1.0):
    """Busy cores while nothing of ours runs: foreign load on the shared machine shows up here."""
    a = machine_busy()
    time.sleep(seconds)
    return round(busy_cores(a, machine_busy()), 3)


# ----------------------------------------------------------------------------- part: pgbench
def part_pgbench(a, pport, leader, rng, fails):
    log('pgbench: pgbench -i -s %d on %s:%d' % (a.scale, leader, pport))
    env = dict(os.environ, PGPASSWORD=bl.SUPERPW)
    p = subprocess.run([bl.PGBENCH, '-i', '-q', '-s', str(a.scale), '-h', bl.HOST, '-p', str(pport),
                        '-U', 'postgres', 'postgres'], env=env, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise Failure('pgbench -i failed: %s' % (p.stdout + p.stderr).strip()[-400:])
    bl.pg_query(pport, 'checkpoint', timeout=300)
    bl.wait_ready(timeout=180)
    session_pool = a.session_pool or max(a.clients)
    need_hap = 'haproxy' in a.targets
    hap_pid = haproxy_start(a.max_connections, pport) if need_hap else None
    ports = {'direct': pport, 'pgwarden_txn': PGW_PORTS['pgwarden_txn'],
             'pgwarden_session': PGW_PORTS['pgwarden_session'],
             'pgbouncer_txn': bl.PGBOUNCER_PORTS['pgbouncer_txn'],
             'pgbouncer_session': bl.PGBOUNCER_PORTS['pgbouncer_session'], 'haproxy': bl.HAPROXY_PORT}

    def start(t):
        """Poolers start fresh for each run (empty pool) and stop after it, so no run inherits another
        target's server connections and max_connections only has to fit one target at a time."""
        if t == 'pgwarden_txn':
            return proxy_start(t, ports[t], 'transaction', a.txn_pool, 'scram-sha-256', 1000, a.proxy_threads)
        if t == 'pgwarden_session':
            return proxy_start(t, ports[t], 'session', session_pool, 'scram-sha-256', 1000, a.proxy_threads)
        if t == 'pgbouncer_txn':
            return pgbouncer_start(t, ports[t], pport, {'default_pool_size': a.txn_pool})
        if t == 'pgbouncer_session':
            return pgbouncer_start(t, ports[t], pport, {'default_pool_size': session_pool})
        return hap_pid if t == 'haproxy' else None

    combos = [(w, c) for w in a.workloads for c in a.clients]
    total = a.reps * len(combos) * len(a.targets)
    k = 0
    for rep in range(1, a.reps + 1):
        for workload, clients in combos:
            order = list(a.targets)
            rng.shuffle(order)
            log('rep %d %s c=%d order %s' % (rep, workload, clients, ' '.join(order)))
            for t in order:
                k += 1
                rec = dict(rep=rep, target=t, port=ports[t], workload=workload, clients=clients, jobs=a.jobs,
                           seconds=a.seconds, scale=a.scale, primary=leader, order=order)
                pid = None
                try:
                    pid = start(t)
                    if t != 'direct' and not bl.wait_port_sql(ports[t], timeout=30):
                        raise Failure('%s on port %d does not answer SQL' % (t, ports[t]))
                    bl.pg_query(pport, 'checkpoint', timeout=120)
                    rec['quiet_busy_cores_before'] = quiet_sample()
                    rec.update(run_pgbench(ports[t], workload, clients, a, '%s-%s-%d-%d' % (t, workload, clients, rep),
                                           pid))
                except Failure as e:
                    rec.update(ok=False, error=str(e))
                finally:
                    if t not in ('direct', 'haproxy') and pid:
                        stop_service(t)
                try:
                    wait_backends_gone(pport)
                except Exception as e:
                    rec.setdefault('error', str(e))
                    rec['ok'] = False
                log('[%d/%d] %s %s c=%d: %s' % (k, total, t, workload, clients,
                                               'tps %.0f avg %.2f ms p99 %.2f ms' % (rec['tps'], rec['latency_avg_ms'] or 0, rec['p99_ms'] or 0)
                                               if rec.get('ok') else 'FAILED %s' % (rec.get('error') or rec.get('stderr_tail'))))
                bl.save_result('pgbench', rec)
                if not rec.get('ok'):
                    fails.append('pgbench %s %s c=%d rep %d: %s' % (t, workload, clients, rep,
                                 (rec.get('error') or ' '.join(rec.get('stderr_tail') or [])[-200:])))
                # a cluster that broke under the load would make every later figure meaningless
                st = bl.cluster_state()
                if st.get('leader') != leader:
                    raise Failure('the leader changed during the pgbench matrix (%s -> %s)' % (leader, st.get('leader')))
    if need_hap:
        stop_service('haproxy')


# ----------------------------------------------------------------------------- part: idle clients
def part_idle(a, pport, rng, fails):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < a.idle_clients + 1000:
        raise Failure('file descriptor limit %d is below %d idle clients + 1000 (proxy.sh raises it with ulimit)'
                      % (hard, a.idle_clients))
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # inherited by the poolers spawned below
    maxc = a.idle_clients + 100
    for rep in range(1, a.idle_reps + 1):
        order = ['pgwarden', 'pgbouncer']
        rng.shuffle(order)
        for which in order:
            name, port = (('pgwarden_idle', PGW_PORTS['pgwarden_idle']) if which == 'pgwarden' else PGB_IDLE)
            rec = dict(rep=rep, pooler=which, clients=a.idle_clients, port=port, auth_type='trust',
                       pool_mode='transaction', max_client_conn=maxc)
            try:
                # a fresh instance per repetition: memory freed by an earlier batch would be reused
                if which == 'pgwarden':
                    pid = proxy_start(name, port, 'transaction', a.txn_pool, 'trust', maxc, a.proxy_threads)
                else:
                    pid = pgbouncer_start(name, port, pport, {'default_pool_size': a.txn_pool,
                                                              'max_client_conn': maxc, 'auth_type': 'trust'})
                if not bl.wait_port_sql(port, timeout=30):
                    raise Failure('%s on port %d does not answer SQL' % (which, port))
                rec['pid'] = pid
                try:
                    with open('/proc/%d/limits' % pid) as f:
                        rec['pooler_nofile'] = next((l.split()[3] for l in f if l.startswith('Max open files')), None)
                except OSError:
                    pass
                argv = [sys.executable, os.path.join(HERE, 'proxy_idle_clients.py'), '--port', str(port),
                        '--pid', str(pid), '--clients', str(a.idle_clients), '--timeout', str(a.idle_timeout)]
                t0 = time.time()
                p = subprocess.run(argv, capture_output=True, text=True, timeout=a.idle_timeout + 60)
                out = (p.stdout + p.stderr).strip()
                m = dict(re.findall(r'(\w+)=([\d.]+)', p.stdout))
                rec.update(rc=p.returncode, seconds=round(time.time() - t0, 1), output=out.splitlines()[-3:])
                if p.returncode == 0 and 'bytes_per_idle_client' in m:
                    rec.update(ok=True, bytes_per_idle_client=int(float(m['bytes_per_idle_client'])),
                               rss_before_kib=int(m['rss_before_kib']), rss_after_kib=int(m['rss_after_kib']),
                               clients_held=int(m['clients']), login_seconds=float(m['login_seconds']))
                else:
                    rec['ok'] = False
            except subprocess.TimeoutExpired:
                rec.update(ok=False, error='proxy_idle_clients.py did not finish within %d s' % (a.idle_timeout + 60))
            except Failure as e:
                rec.update(ok=False, error=str(e))
            finally:
                stop_service(name)
            try:
                wait_backends_gone(pport)
            except Exception as e:
                rec.setdefault('error', str(e))
            log('idle %s rep %d: %s' % (which, rep, '%d B per idle client (%d clients)' % (
                rec['bytes_per_idle_client'], rec['clients_held']) if rec.get('ok') else
                'FAILED %s' % (rec.get('error') or rec.get('output'))))
            bl.save_result('idle_clients', rec)
            if not rec.get('ok'):
                fails.append('idle %s rep %d: %s' % (which, rep, rec.get('error') or rec.get('output')))


# ----------------------------------------------------------------------------- part: failover write gap
def path_gap(rows, t_kill, t_killed):
    """Last OK write that started before the kill -> first OK write that started after every process of the
    old primary was dead (so it can only have been served by the new primary)."""
    before = [r for r in rows if r['ok'] and r['t0'] < t_kill]
    after = [r for r in rows if r['ok'] and r['t0'] >= t_killed]
    res = dict(failed_attempts=sum(1 for r in rows if not r['ok'] and r['t0'] >= t_kill),
               errors_sample=sorted({r['err'] for r in rows if not r['ok'] and r['t0'] >= t_kill})[:4])
    if before and after:
        res.update(write_gap_s=round(after[0]['t1'] - before[-1]['t1'], 3),
                   first_ok_after_kill_s=round(after[0]['t1'] - t_kill, 3),
                   last_ok_before_kill_s=round(before[-1]['t1'] - t_kill, 3))
    return res


def part_failover(a, rng, fails):
    st = bl.wait_ready(timeout=300)
    bl.ensure_probe_table(st['leader'])
    proxy_start('pgwarden_txn', PGW_PORTS['pgwarden_txn'], 'transaction', a.txn_pool, 'scram-sha-256', 1000,
                a.proxy_threads)
    if not bl.wait_port_sql(PGW_PORTS['pgwarden_txn'], timeout=30):
        raise Failure('pgwarden proxy does not answer SQL')
    haproxy_start(a.max_connections, bl.BYNAME[st['leader']]['pg'])
    paths = {'pgwarden_proxy': PGW_PORTS['pgwarden_txn'], 'haproxy': bl.HAPROXY_PORT}
    loop_wait = bl.PROFILES[a.profile].get('loop_wait', 2)
    for run in range(1, a.failover_runs + 1):
        st = bl.wait_ready(timeout=300)
        old = st['leader']
        node = bl.BYNAME[old]
        log('failover run %d/%d: leader %s' % (run, a.failover_runs, old))
        writers = {}
        try:
            for pth, port in paths.items():
                writers[pth] = bl.start_writer('fo-%s-%d' % (pth, run), port=port)
            for pth, (wpid, wpath) in writers.items():
                if not bl.wait_writer_ok(wpath, paths[pth], n=5, timeout=60):
                    raise Failure('writer through %s not healthy before the kill' % pth)
            # the kill lands at a random point of the lease-refresh and health-check cycles
            time.sleep(1 + rng.random() * max(loop_wait, 3))
            _, lease = bl.dcs_get(bl.LEADER_KEY)
            ttl_left = bl.lease_ttl(lease) if lease else None
            t_kill, hp, pm, nkids = bl.kill_node(node)
            t_killed = time.time()
            m = {'leader_key_gone_s': None, 'new_leader_key_s': None}
            new = None
            done = False
            while time.time() - t_kill < a.failover_timeout:
                lv = bl.ha_leader()
                now = round(time.time() - t_kill, 3)
                if lv != old and m['leader_key_gone_s'] is None:
                    m['leader_key_gone_s'] = now
                if lv and lv != old and m['new_leader_key_s'] is None:
                    m['new_leader_key_s'], new = now, lv
                if all(any(r['ok'] and r['t0'] >= t_killed for r in bl.read_writer(wp)) for _, wp in writers.values()):
                    done = True
                    break
                time.sleep(0.05)
            time.sleep(1.0)
        finally:
            for wpid, _ in writers.values():
                bl.stop_pid(wpid, timeout=10)
        rec = dict(run=run, profile=a.profile, dcs_timings=bl.ha_config(), old_leader=old, new_leader=new,
                   lease_ttl_left_at_kill=ttl_left, killed_agent=hp, killed_postmaster=pm, killed_pg_children=nkids,
                   **m)
        for pth, (wpid, wpath) in writers.items():
            rec[pth] = dict(port=paths[pth], writer_log=os.path.basename(wpath),
                            **path_gap(bl.read_writer(wpath), t_kill, t_killed))
        g1, g2 = rec['pgwarden_proxy'].get('write_gap_s'), rec['haproxy'].get('write_gap_s')
        rec['haproxy_minus_proxy_s'] = round(g2 - g1, 3) if g1 is not None and g2 is not None else None
        # rejoin: the killed node's agent comes back, the cluster must be whole before the next run
        t_r = time.time()
        bl.ha_start_node(node)
        try:
            st2 = bl.wait_ready(timeout=300)
            rec['rejoin_ready_s'] = round(time.time() - t_r, 3)
            for pth, (_, wpath) in writers.items():
                n_acked, lost = bl.lost_acked(wpath, st2['leader'])
                rec[pth].update(acked_writes=n_acked, lost_acked_writes=len(lost))
        except RuntimeError as e:
            rec['rejoin_ready_s'] = None
            rec['error'] = 'cluster not ready again: %s' % str(e)[:300]
        rec['ok'] = done and g1 is not None and g2 is not None and rec['rejoin_ready_s'] is not None
        if not done:
            rec['error'] = 'a path had no successful write within %d s of the kill' % a.failover_timeout
        log('failover run %d: proxy gap %s s, haproxy gap %s s, new leader %s' % (run, g1, g2, new))
        bl.save_result('failover', rec)
        if not rec['ok']:
            fails.append('failover run %d: %s' % (run, rec.get('error')))
            if rec['rejoin_ready_s'] is None:
                raise Failure('cluster did not recover after failover run %d' % run)
        time.sleep(a.pause)
    stop_service('pgwarden_txn')
    stop_service('haproxy')


# ----------------------------------------------------------------------------- the run
def fresh_base():
    b = bl.BASE
    if os.path.exists(b):
        if not os.path.exists(os.path.join(b, MARKER)):
            if os.listdir(b):
                raise SystemExit('%s exists and was not created by the proxy benchmark; remove it or pass --state'
                                 % b)
        else:
            shutil.rmtree(b)
    os.makedirs(b, exist_ok=True)
    open(os.path.join(b, MARKER), 'w').close()
    os.chmod(b, 0o755)


def preflight():
    busy = [p for p in all_ports() if bl.port_in_use(p)]
    if busy:
        sys.exit('ports in use on %s: %s - another cluster, pooler or system service is running; stop it '
                 '(for a run of this benchmark: "bench/proxy.sh --teardown-only" with the same --state) and retry'
                 % (bl.HOST, ' '.join(map(str, busy))))


def cmd_run(a):
    if not PGW or not os.access(PGW, os.X_OK):
        sys.exit('pgwarden binary %r not executable (set BL_AGENT_CMD="<bin>/pgwarden agent")' % PGW)
    preflight()
    os.makedirs(a.results, exist_ok=True)
    bl.RESULTS = a.results
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1, 2 ** 31)
    rng = random.Random(seed)
    log('seed %d (shuffles target order, idle order, kill delays; --seed %d repeats them)' % (seed, seed))
    session_pool = a.session_pool or max(a.clients)
    settings = dict(seed=seed, seconds=a.seconds, reps=a.reps, clients=a.clients, workloads=a.workloads,
                    targets=a.targets, scale=a.scale, jobs=a.jobs, sampling_rate=a.sampling_rate,
                    idle_clients=a.idle_clients, idle_reps=a.idle_reps, failover_runs=a.failover_runs,
                    profile=a.profile, max_connections=a.max_connections, txn_pool=a.txn_pool,
                    session_pool=session_pool, proxy_threads=a.proxy_threads, parts=a.parts,
                    auth='scram-sha-256 for both poolers (same userlist line "postgres" with its plain password, '
                         'as bl.py\'s pgbouncer_start writes); trust for the idle-client part',
                    haproxy_server_maxconn=a.max_connections, pgbouncer_max_client_conn=1000,
                    proxy_max_client_conn=1000)
    extra = json.loads(os.environ.get('BENCH_META_EXTRA') or '{}')
    extra.update(settings=settings)
    os.environ['BENCH_META_EXTRA'] = json.dumps(extra)
    try:
        pv = subprocess.run([bl.PGBENCH, '--version'], capture_output=True, text=True, timeout=10).stdout.strip()
        extra['pgbench'] = pv
        extra['pgwarden_version'] = subprocess.run([PGW, '--version'], capture_output=True, text=True,
                                                   timeout=10).stdout.strip()
        os.environ['BENCH_META_EXTRA'] = json.dumps(extra)
    except Exception:
        pass
    with contextlib.redirect_stdout(open(os.devnull, 'w')):
        blx.cmd_meta(argparse.Namespace(out=os.path.join(a.results, 'meta.json')))

    fails = []
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGHUP, _raise_exit)
    ok = False
    try:
        fresh_base()
        bl.ensure_dirs()
        patch_max_connections(a.max_connections)
        bl.etcd_start()
        bl.dcs_wipe()
        log('bootstrap (profile %s, max_connections %d)' % (a.profile, a.max_connections))
        t0 = bl.cluster_fresh_start(a.profile)
        st = bl.wait_ready(timeout=240)
        leader = st['leader']
        pport = bl.BYNAME[leader]['pg']
        mc = bl.pg_query(pport, 'show max_connections')[0][0]
        setup = dict(kind='setup', bootstrap_s=round(time.time() - t0, 2), leader=leader,
                     max_connections_in_effect=int(mc), dcs_timings=bl.ha_config(), seed=seed)
        bl.save_result('setup', setup)
        log('cluster ready: %s' % setup)
        if int(mc) != a.max_connections:
            fails.append('max_connections in effect is %s, not %d' % (mc, a.max_connections))
        bl.ensure_probe_table(leader)
        for part, fn in (('pgbench', lambda: part_pgbench(a, pport, leader, rng, fails)),
                         ('idle', lambda: part_idle(a, bl.BYNAME[bl.wait_ready()['leader']]['pg'], rng, fails)),
                         ('failover', lambda: part_failover(a, rng, fails))):
            if part not in a.parts:
                continue
            log('==== part %s' % part)
            t_p = time.time()
            try:
                fn()
            except Exception as e:   # one broken part must not cost the others (or the teardown)
                fails.append('part %s aborted: %s' % (part, e))
                log('part %s aborted: %s' % (part, e))
                for n in own_service_names():
                    stop_service(n)
            bl.save_result('parts', dict(part=part, seconds=round(time.time() - t_p, 1)))
        ok = True
    except KeyboardInterrupt:
        fails.append('interrupted (Ctrl-C)')
        raise
    except SystemExit as e:
        fails.append('stopped: %s' % (e.code if not isinstance(e.code, int) else 'signal %d' % (e.code - 128)))
        raise
    finally:
        clean = teardown()
        if not clean:
            fails.append('teardown left processes or busy ports (see run.log)')
        if os.path.isdir(os.path.join(bl.BASE, 'logs')):
            dst = os.path.join(a.results, 'logs')
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(os.path.join(bl.BASE, 'logs'), dst)   # PgBouncer's logfile is the same as its stderr here
        with open(os.path.join(a.results, 'failures.txt'), 'w') as f:
            f.write(''.join(x.rstrip() + '\n' for x in fails))
    if fails:
        log('%d failure(s), see %s' % (len(fails), os.path.join(a.results, 'failures.txt')))
    return 0 if ok and not fails else 1


def csv_list(kind, choices=None):
    def parse(s):
        items = [x.strip() for x in s.split(',') if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError('empty list')
        out = []
        for x in items:
            v = kind(x) if kind is not str else x
            if choices and v not in choices:
                raise argparse.ArgumentTypeError('%r is not one of %s' % (x, ','.join(choices)))
            if kind is int and v < 1:
                raise argparse.ArgumentTypeError('%r must be at least 1' % x)
            out.append(v)
        return out
    return parse


def pos_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError('must be at least 1')
    return v


def nonneg_int(s):
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError('must be 0 or more')
    return v


def rate(s):
    v = float(s)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError('must be in (0, 1]')
    return v


def main():
    ap = argparse.ArgumentParser(prog='proxy_bench.py', description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='cmd', required=True)
    sub.add_parser('preflight').set_defaults(f=lambda a: (preflight(), print('ports free: %s' % ' '.join(map(str, all_ports()))), 0)[2])
    sub.add_parser('teardown').set_defaults(f=lambda a: 0 if teardown() else 1)
    p = sub.add_parser('run')
    p.add_argument('--results', required=True)
    p.add_argument('--seconds', '-T', type=pos_int, default=15)
    p.add_argument('--reps', type=pos_int, default=3)
    p.add_argument('--clients', type=csv_list(int), default=[16, 64, 256])
    p.add_argument('--workloads', type=csv_list(str, WORKLOADS), default=list(WORKLOADS))
    p.add_argument('--targets', type=csv_list(str, TARGETS), default=list(TARGETS))
    p.add_argument('--scale', type=pos_int, default=10)
    p.add_argument('--jobs', type=pos_int, default=2)
    p.add_argument('--sampling-rate', type=rate, default=1.0)
    p.add_argument('--seed', type=int, default=None)
    p.add_argument('--idle-clients', type=pos_int, default=10000)
    p.add_argument('--idle-reps', type=pos_int, default=3)
    p.add_argument('--idle-timeout', type=pos_int, default=300)
    p.add_argument('--failover-runs', type=pos_int, default=5)
    p.add_argument('--failover-timeout', type=pos_int, default=120)
    p.add_argument('--pause', type=float, default=3.0)
    p.add_argument('--profile', default='tuned', choices=sorted(bl.PROFILES))
    p.add_argument('--max-connections', type=pos_int, default=300)
    p.add_argument('--txn-pool', type=pos_int, default=20)
    p.add_argument('--session-pool', type=nonneg_int, default=0, help='0: the largest --clients value')
    p.add_argument('--proxy-threads', type=nonneg_int, default=1)
    p.add_argument('--parts', type=csv_list(str, ['pgbench', 'idle', 'failover']),
                   default=['pgbench', 'idle', 'failover'])
    p.set_defaults(f=cmd_run)
    a = ap.parse_args()
    if a.cmd == 'run':
        if a.jobs > min(a.clients):
            ap.error('--jobs %d is more than the smallest --clients value %d' % (a.jobs, min(a.clients)))
        if a.session_pool and a.session_pool < max(a.clients):
            ap.error('--session-pool %d is below the largest --clients value: session-mode clients beyond the '
                     'pool would wait, not run' % a.session_pool)
    try:
        sys.exit(a.f(a))
    except KeyboardInterrupt:   # the teardown already ran in cmd_run's finally
        log('interrupted')
        sys.exit(130)


if __name__ == '__main__':
    main()
