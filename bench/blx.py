#!/usr/bin/python3
"""Extensions to the baseline harness (bl.py), imported from the baseline directory, never copied.

    BL_DIR=<baseline dir> bench/blx.py <sub-command> [options]

Every sub-command of bl.py works unchanged (this file patches nothing but the profile table
and then calls bl.main()).  Added sub-commands:

  preflight                       refuse if any harness port is in use
  pgcrash  --profile P --runs N   SIGKILL only the leader's postmaster (agent stays alive) while the
                                  baseline writer runs; write-unavailability, leader / timeline change
  nofalse  --check C --profile P  "no false failover" checks on a ready cluster with the writer running:
                                  C = etcd-move-leader | etcd-member-restart | cpu-load
  meta     --out FILE             machine facts (nproc, kernel, CPU, package versions) as JSON

Extra timing profiles come from BENCH_EXTRA_PROFILES="name=ttl/loop_wait/retry_timeout[,...]"
(e.g. "pgw-fast=6/1/2"); they are added to bl.PROFILES before bl.py parses its arguments.
Results go to BL_RESULTS like bl.py's own (pgcrash.jsonl, nofalse.jsonl), tagged with BL_LABEL.
"""
import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import threading
import time

BL_DIR = os.environ.get('BL_DIR')
if not BL_DIR or not os.path.isfile(os.path.join(BL_DIR, 'bl.py')):
    sys.exit('blx.py: BL_DIR must point at the baseline harness directory (the one holding bl.py, writer.py); '
             'got %r' % BL_DIR)
sys.dont_write_bytecode = True   # never write into the (shared, read-only) baseline dir
sys.path.insert(0, BL_DIR)
import bl  # noqa: E402  (the baseline harness, driven as a module)


def _accept_patroni4_replica_states():
    """bl.py was written against Patroni 3.0.2, whose GET /cluster reports every
    running member as "running". Patroni 4.x (and pgwarden, which follows its
    format) reports a replica's replication state there instead ("streaming",
    "in archive recovery"). Readiness is the same fact in both formats, so the
    member table bl.py builds is normalised before its checks run."""
    original = bl.cluster_state

    def cluster_state():
        st = original()
        st['members'] = {name: (role, 'running' if state in ('streaming', 'in archive recovery') else state)
                         for name, (role, state) in st['members'].items()}
        return st
    bl.cluster_state = cluster_state


_accept_patroni4_replica_states()

PORTS = ([e['client'] for e in bl.ETCD] + [e['peer'] for e in bl.ETCD]
         + [n['pg'] for n in bl.NODES] + [n['api'] for n in bl.NODES])


def add_extra_profiles():
    spec = os.environ.get('BENCH_EXTRA_PROFILES', '').strip()
    for item in filter(None, (s.strip() for s in spec.split(','))):
        name, _, t = item.partition('=')
        try:
            # pgwarden accepts fractions of a second for loop_wait and retry_timeout
            ttl, lw, rt = (float(x) if '.' in x else int(x) for x in t.split('/'))
        except ValueError:
            sys.exit('BENCH_EXTRA_PROFILES: %r is not name=ttl/loop_wait/retry_timeout' % item)
        bl.PROFILES[name] = dict(ttl=ttl, loop_wait=lw, retry_timeout=rt)


def r3(x):
    return None if x is None else round(x, 3)


# ----------------------------------------------------------------------------- helpers
def leader_timeline(leader):
    """Current timeline of the primary (from its WAL file name), None if it cannot be read."""
    try:
        row = bl.pg_query(bl.BYNAME[leader]['pg'],
                          "select pg_is_in_recovery(), case when pg_is_in_recovery() then null else "
                          "substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) end", timeout=2)[0]
        return None if row[0] else int(row[1], 16)
    except Exception:
        return None


def member_timelines():
    c = bl.ha_cluster() or {}
    return {m.get('name'): m.get('timeline') for m in c.get('members', [])}


class LeaderWatch(threading.Thread):
    """Samples the DCS leader key every `interval` s (None = key absent or etcd unreachable)."""

    def __init__(self, interval=0.1):
        super().__init__(daemon=True)
        self.interval, self.samples, self.stop_ev = interval, [], threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            self.samples.append((time.time(), bl.ha_leader()))
            self.stop_ev.wait(self.interval)

    def stop(self):
        self.stop_ev.set()
        self.join(5)


def write_gaps(rows, t_from, t_to):
    """Longest interval between consecutive acknowledged writes that ended inside [t_from, t_to]
    (the first one is measured from the last acknowledged write before t_from)."""
    ok = [r['t1'] for r in rows if r['ok']]
    prev = [t for t in ok if t < t_from]
    inside = [t for t in ok if t_from <= t <= t_to]
    seq = prev[-1:] + inside
    longest = max((b - a for a, b in zip(seq, seq[1:])), default=None)
    if seq and t_to - seq[-1] > (longest or 0):   # an outage still running at the end of the window
        longest = t_to - seq[-1]
    return longest


def outage(rows, t_fault):
    """bl.py's definition: last acknowledged write before the outage -> first acknowledged write after it.
    The outage starts with the first failed attempt that began at or after the fault (a write in flight at
    the fault may still be acknowledged by a backend that has not noticed yet); no failed attempt = no outage."""
    fails = [r for r in rows if not r['ok'] and r['t0'] >= t_fault - 0.2]
    if not fails:
        return None, None, None
    f = fails[0]
    before = [r for r in rows if r['ok'] and r['t1'] <= f['t0']]
    after = [r for r in rows if r['ok'] and r['t0'] >= f['t0']]
    if not before or not after:
        return None, (after[0] if after else None), f
    return after[0]['t1'] - before[-1]['t1'], after[0], f


def etcd_status():
    """[(member name, client port, member id int, leader id int)] from /v3/maintenance/status of each member."""
    out = []
    for e in bl.ETCD:
        try:
            j = bl._http().post('http://%s:%d/v3/maintenance/status' % (bl.HOST, e['client']), json={},
                                timeout=1).json()
            out.append((e['name'], e['client'], int(j['header']['member_id']), int(j['leader'])))
        except Exception:
            pass
    return out


def etcd_leader():
    st = etcd_status()
    for name, port, mid, lid in st:
        if mid == lid:
            return name, port, mid, st
    return None, None, None, st


# ----------------------------------------------------------------------------- pgcrash
def cmd_pgcrash(args):
    """PostgreSQL crash on the primary with the agent alive: SIGKILL the leader's postmaster only."""
    st = bl.wait_ready()
    bl.ensure_probe_table(st['leader'])
    for i in range(args.runs):
        st = bl.wait_ready()
        old = st['leader']
        node = bl.BYNAME[old]
        tl0 = leader_timeline(old)
        bl.log('pgcrash run %d/%d profile=%s leader=%s timeline=%s' % (i + 1, args.runs, args.profile, old, tl0))
        wpid, wpath = bl.start_writer('pgcrash-%s' % args.profile)
        if not bl.wait_writer_ok(wpath, node['pg']):
            bl.stop_pid(wpid)
            raise RuntimeError('writer not healthy before the postmaster kill')
        time.sleep(1 + random.random() * bl.PROFILES[args.profile].get('loop_wait', 2))
        agent = bl.ha_pid(node)
        pm = bl.postmaster_pid(node)
        if not pm or not agent:
            bl.stop_pid(wpid)
            raise RuntimeError('no postmaster (%s) or agent (%s) on %s' % (pm, agent, old))
        watch = LeaderWatch()
        watch.start()
        t_kill = time.time()
        os.kill(pm, signal.SIGKILL)
        m = {'pg_restarted': None, 'pg_accepts': None}
        end_row = None
        while time.time() - t_kill < args.timeout:
            if m['pg_restarted'] is None:
                npm = bl.postmaster_pid(node)   # a new postgres process (single-user recovery or postmaster)
                if npm and npm != pm:
                    m['pg_restarted'] = time.time() - t_kill
            if m['pg_accepts'] is None and m['pg_restarted'] is not None:
                try:
                    bl.pg_query(node['pg'], 'select 1', timeout=1)
                    m['pg_accepts'] = time.time() - t_kill
                except Exception:
                    pass
            _, end_row, ffail = outage(bl.read_writer(wpath), t_kill)
            if end_row is not None:
                break
            if ffail is None and m['pg_restarted'] and time.time() - t_kill > m['pg_restarted'] + 10:
                break   # restarted and the writer never failed: nothing to wait for
            time.sleep(0.05)
        time.sleep(1.0)
        bl.stop_pid(wpid)
        watch.stop()
        rows = bl.read_writer(wpath)
        unavail, first, first_fail = outage(rows, t_kill)
        leaders = [v for _, v in watch.samples]
        rec = dict(profile=args.profile, run=i + 1, old_leader=old, dcs_timings=bl.ha_config(),
                   killed_postmaster=pm, agent_pid=agent,
                   agent_alive_after=bl.alive(agent),
                   pg_restarted_same_node_s=r3(m['pg_restarted']),
                   pg_accepts_connections_same_node_s=r3(m['pg_accepts']),
                   first_write_after_kill_s=r3(first['t1'] - t_kill) if first else None,
                   first_write_port=first['port'] if first else None,
                   write_unavailability_s=r3(unavail),
                   no_outage_seen=first_fail is None,
                   failed_attempts=sum(1 for r in rows if not r['ok'] and r['t0'] >= t_kill),
                   leader_key_absent_samples=sum(1 for v in leaders if v is None),
                   leaders_seen=sorted({v for v in leaders if v}),
                   writer_log=wpath)
        try:
            st2 = bl.wait_ready(timeout=args.timeout)
            rec['all_ready_again_s'] = r3(time.time() - t_kill)
        except RuntimeError:
            st2 = bl.cluster_state()
            rec['all_ready_again_s'] = None
        new = st2.get('leader')
        rec.update(leader_after=new, leader_changed=bool(new) and new != old,
                   timeline_before=tl0, timeline_after=leader_timeline(new) if new in bl.BYNAME else None)
        rec['timeline_changed'] = (None if rec['timeline_after'] is None or tl0 is None
                                   else rec['timeline_after'] != tl0)
        if new in bl.BYNAME:
            n_acked, lost = bl.lost_acked(wpath, new)
            rec.update(acked_writes=n_acked, lost_acked_writes=len(lost), lost_acked_sample=lost[:10])
        bl.log('pgcrash', rec)
        bl.save_result('pgcrash', rec)
        if rec['all_ready_again_s'] is None:
            raise RuntimeError('cluster not ready again %ss after the postmaster kill' % args.timeout)
        time.sleep(args.pause)


# ----------------------------------------------------------------------------- nofalse
def _inject_move_leader(args, rec):
    moves = []
    for k in range(args.moves):
        name, port, mid, st = etcd_leader()
        if not name:
            moves.append(dict(ok=False, err='no etcd leader found'))
        else:
            target = random.choice([s for s in st if s[2] != mid])
            p = subprocess.run(['etcdctl', '--endpoints=http://%s:%d' % (bl.HOST, port), '--dial-timeout=2s',
                                '--command-timeout=5s', 'move-leader', '%x' % target[2]],
                               capture_output=True, text=True, timeout=30)
            moves.append(dict(t=r3(time.time() - rec['_t0']), from_=name, to=target[0], rc=p.returncode,
                              out=(p.stdout + p.stderr).strip()[-160:]))
            bl.log('etcd move-leader %s -> %s rc=%d' % (name, target[0], p.returncode))
        time.sleep(args.interval)
    rec['injections'] = moves
    rec['etcd_leader_after'] = etcd_leader()[0]


def _inject_member_restart(args, rec):
    acts = []
    for k in range(args.moves):
        lname, _, _, st = etcd_leader()
        names = [s[0] for s in st]
        if args.victim == 'leader':
            victim = lname
        else:
            victim = next((n for n in names if n != lname), None)
        if not victim:
            acts.append(dict(ok=False, err='no victim found (etcd status %s)' % st))
            time.sleep(args.interval)
            continue
        pid = bl.read_pid('etcd-' + victim)
        t_k = time.time()
        os.kill(pid, signal.SIGKILL)
        bl.log('etcd member %s (pid %d, was %s) SIGKILLed' % (victim, pid, 'leader' if victim == lname else 'follower'))
        deadline = time.time() + 10
        while bl.alive(pid) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(args.down)
        bl.etcd_start()   # restarts the dead member with the same data dir and flags, waits for health
        acts.append(dict(t=r3(t_k - rec['_t0']), member=victim, was_leader=victim == lname,
                         healthy_again_s=r3(time.time() - t_k), etcd_leader_after=etcd_leader()[0]))
        time.sleep(args.interval)
    rec['injections'] = acts


def _inject_cpu_load(args, rec):
    leader = rec['leader_before']
    port = bl.BYNAME[leader]['pg']
    env = dict(os.environ, PGPASSWORD=bl.SUPERPW)
    base = ['-h', bl.HOST, '-p', str(port), '-U', 'postgres']
    bl.log('cpu-load: pgbench -i -s %d on %s' % (args.scale, leader))
    subprocess.run([bl.PGBENCH, '-i', '-q', '-s', str(args.scale)] + base + ['postgres'], env=env, check=True,
                   capture_output=True, timeout=600)
    argv = [bl.PGBENCH, '-c', str(args.clients), '-j', str(args.jobs), '-T', str(args.seconds)] + base + ['postgres']
    bl.log('cpu-load: %s' % ' '.join(argv[:7]))
    t_s = time.time()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = p.communicate(timeout=args.seconds + 120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    import re
    tps = re.search(r'tps = ([\d.]+) \(without initial connection time\)', out or '')
    rec['injections'] = [dict(t=r3(t_s - rec['_t0']), pgbench=' '.join(os.path.basename(a) for a in argv[:7]),
                              rc=p.returncode, seconds=r3(time.time() - t_s),
                              tps=float(tps.group(1)) if tps else None,
                              tail=(out or '').strip().splitlines()[-2:] if p.returncode else None)]
    try:
        la = open('/proc/loadavg').read().split()[:3]
    except OSError:
        la = None
    rec['loadavg_after'] = la


INJECT = {'etcd-move-leader': _inject_move_leader, 'etcd-member-restart': _inject_member_restart,
          'cpu-load': _inject_cpu_load}


def cmd_nofalse(args):
    st = bl.wait_ready()
    bl.ensure_probe_table(st['leader'])
    leader = st['leader']
    tl0 = leader_timeline(leader)
    mtl0 = member_timelines()
    bl.log('nofalse %s profile=%s leader=%s timeline=%s' % (args.check, args.profile, leader, tl0))
    wpid, wpath = bl.start_writer('nofalse-%s-%s' % (args.check, args.profile))
    rec = dict(check=args.check, profile=args.profile, dcs_timings=bl.ha_config(), leader_before=leader,
               timeline_before=tl0, member_timelines_before=mtl0, writer_log=wpath)
    try:
        if not bl.wait_writer_ok(wpath, bl.BYNAME[leader]['pg']):
            raise RuntimeError('writer not healthy before the check')
        watch = LeaderWatch()
        watch.start()
        time.sleep(args.settle)
        t0 = rec['_t0'] = time.time()
        try:
            INJECT[args.check](args, rec)
            bl.log('nofalse: injection done, observing %.0f s more' % args.observe)
            time.sleep(args.observe)
        finally:
            t1 = time.time()
            watch.stop()
    finally:
        bl.stop_pid(wpid)
    rows = bl.read_writer(wpath)
    leaders = [v for ts, v in watch.samples if ts >= t0]
    try:
        st2 = bl.wait_ready(timeout=args.observe + 60)
    except RuntimeError:
        st2 = bl.cluster_state()
    new = st2.get('leader')
    tl1 = leader_timeline(new) if new in bl.BYNAME else None
    rec.pop('_t0', None)
    rec.update(window_s=r3(t1 - t0), leader_after=new,
               leaders_seen=sorted({v for v in leaders if v}),
               leader_key_absent_samples=sum(1 for v in leaders if v is None), leader_samples=len(leaders),
               leader_changed=(new != leader) or any(v and v != leader for v in leaders),
               timeline_after=tl1, member_timelines_after=member_timelines(),
               timeline_changed=None if tl1 is None or tl0 is None else tl1 != tl0,
               longest_write_gap_s=r3(write_gaps(rows, t0, t1)),
               failed_attempts=sum(1 for r in rows if not r['ok'] and t0 <= r['t0'] <= t1),
               ok_writes=sum(1 for r in rows if r['ok'] and t0 <= r['t1'] <= t1),
               errors_sample=sorted({r['err'] for r in rows if not r['ok'] and t0 <= r['t0'] <= t1})[:5],
               ready_after=bl.is_ready(st2))
    if new in bl.BYNAME:
        n_acked, lost = bl.lost_acked(wpath, new)
        rec.update(acked_writes=n_acked, lost_acked_writes=len(lost))
    bl.log('nofalse', rec)
    bl.save_result('nofalse', rec)


# ----------------------------------------------------------------------------- preflight / meta
def cmd_preflight(args):
    busy = [p for p in PORTS if bl.port_in_use(p)]
    if busy:
        sys.exit('ports in use on %s: %s - another cluster (or a system PostgreSQL/etcd) is running; stop it '
                 '(e.g. "pg_ctlcluster 15 main stop", or "%s teardown" with the same BL_BASE) and retry'
                 % (bl.HOST, ' '.join(map(str, busy)), os.path.abspath(__file__)))
    print('ports free: %s' % ' '.join(map(str, PORTS)))


def _run(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as e:
        return 'n/a (%s)' % type(e).__name__


def cmd_meta(args):
    pk = ['postgresql-15', 'etcd-server', 'etcd-client', 'patroni', 'python3-psycopg2', 'python3-requests',
          'pgbouncer', 'haproxy']
    vers = {}
    for p in pk:
        v = _run(['dpkg-query', '-W', '-f=${Version}', p])
        vers[p] = v or 'not installed'
    cpu = ''
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    mem = ''
    try:
        mem = '%.1f GiB' % (int(open('/proc/meminfo').readline().split()[1]) / 1024 / 1024)
    except (OSError, ValueError):
        pass
    meta = dict(date_utc=time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime()), nproc=os.cpu_count(),
                kernel=platform.release(), cpu=cpu, mem=mem, os=_run(['sh', '-c', '. /etc/os-release; echo "$PRETTY_NAME"']),
                packages=vers, python=platform.python_version(),
                patroni=_run(['patroni', '--version']), etcd=_run(['etcd', '--version']).splitlines()[:1],
                postgres=_run([os.path.join(bl.PGBIN, 'postgres'), '--version']),
                baseline_dir=BL_DIR)
    for k, v in (os.environ.get('BENCH_META_EXTRA') and json.loads(os.environ['BENCH_META_EXTRA']) or {}).items():
        meta[k] = v
    with open(args.out, 'w') as f:
        json.dump(meta, f, indent=1)
    print(json.dumps(meta, indent=1))


def main():
    add_extra_profiles()
    ours = {'pgcrash', 'nofalse', 'preflight', 'meta'}
    if len(sys.argv) < 2 or sys.argv[1] not in ours:
        return bl.main()          # every bl.py sub-command, with the extra profiles known
    ap = argparse.ArgumentParser(prog='blx.py')
    sub = ap.add_subparsers(dest='cmd', required=True)
    sub.add_parser('preflight').set_defaults(f=cmd_preflight)
    p = sub.add_parser('meta')
    p.add_argument('--out', required=True)
    p.set_defaults(f=cmd_meta)
    p = sub.add_parser('pgcrash')
    p.add_argument('--profile', default='native', choices=bl.PROFILES)
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--pause', type=float, default=5)
    p.add_argument('--timeout', type=float, default=180)
    p.set_defaults(f=cmd_pgcrash)
    p = sub.add_parser('nofalse')
    p.add_argument('--check', required=True, choices=sorted(INJECT))
    p.add_argument('--profile', default='native', choices=bl.PROFILES)
    p.add_argument('--settle', type=float, default=3, help='seconds of writer baseline before the injection')
    p.add_argument('--observe', type=float, default=None,
                   help='seconds to keep watching after the injection (default: 2 x ttl in effect)')
    p.add_argument('--moves', type=int, default=5, help='etcd-move-leader / etcd-member-restart: repetitions')
    p.add_argument('--interval', type=float, default=3, help='seconds between repetitions')
    p.add_argument('--victim', default='leader', choices=['leader', 'follower'],
                   help='etcd-member-restart: which etcd member is killed')
    p.add_argument('--down', type=float, default=2, help='etcd-member-restart: seconds the member stays dead')
    p.add_argument('--seconds', type=int, default=300, help='cpu-load: pgbench duration')
    p.add_argument('--clients', type=int, default=4)
    p.add_argument('--jobs', type=int, default=2)
    p.add_argument('--scale', type=int, default=10)
    p.set_defaults(f=cmd_nofalse)
    a = ap.parse_args()
    if a.cmd in ('pgcrash', 'nofalse'):
        bl.ensure_dirs()
    if a.cmd == 'nofalse' and a.observe is None:
        a.observe = 2.0 * float((bl.ha_config() or {}).get('ttl') or 30)
    a.f(a)


if __name__ == '__main__':
    main()
