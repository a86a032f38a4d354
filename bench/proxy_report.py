#!/usr/bin/python3
"""Markdown report of one bench/proxy.sh run.

    python3 bench/proxy_report.py bench/results/<timestamp>-proxy > .../report.md

Reads setup/pgbench/idle_clients/failover.jsonl, meta.json and failures.txt from the directory.
Figures are "median (min – max, n)" over the repetitions; ratios are ratios of medians.
"""
import json
import os
import statistics
import sys

TARGET_NAMES = {
    'direct': 'direct (primary)',
    'pgwarden_txn': 'pgwarden proxy, transaction',
    'pgwarden_session': 'pgwarden proxy, session',
    'pgbouncer_txn': 'PgBouncer, transaction',
    'pgbouncer_session': 'PgBouncer, session',
    'haproxy': 'HAProxy (TCP, httpchk /primary)',
}
WORKLOAD_NAMES = {'select': 'select-only (-S)', 'tpcb': 'TPC-B-like (default script)'}


def load(d, name):
    path = os.path.join(d, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=0):
    if x is None:
        return '–'
    return ('{:,.%df}' % nd).format(x)


def spread(xs, nd=0):
    xs = [x for x in xs if x is not None]
    if not xs:
        return '–'
    return '%s (%s – %s, n=%d)' % (fmt(statistics.median(xs), nd), fmt(min(xs), nd), fmt(max(xs), nd), len(xs))


def ratio(a, b):
    return '×%.2f' % (a / b) if a is not None and b else '–'


def failure_reason(runs):
    text = ' '.join(' '.join(r.get('stderr_tail') or []) + ' ' + (r.get('error') or '') for r in runs)
    if 'too many clients' in text or 'remaining connection slots' in text or 'max_connections' in text:
        return 'n/a (max_connections)'
    if 'no more connections allowed' in text or 'max_client_conn' in text:
        return 'n/a (max_client_conn)'
    first = next((r for r in runs if not r.get('ok')), {})
    msg = first.get('error') or ' / '.join((first.get('stderr_tail') or [])[-2:])
    return 'failed: %s' % msg[:160].replace('|', '/')


def main(d):
    meta = {}
    if os.path.exists(os.path.join(d, 'meta.json')):
        with open(os.path.join(d, 'meta.json')) as f:
            meta = json.load(f)
    st = meta.get('settings', {})
    setup = (load(d, 'setup.jsonl') or [{}])[-1]
    pgb = load(d, 'pgbench.jsonl')
    idle = load(d, 'idle_clients.jsonl')
    fo = load(d, 'failover.jsonl')
    fails = []
    if os.path.exists(os.path.join(d, 'failures.txt')):
        fails = [l.rstrip('\n') for l in open(os.path.join(d, 'failures.txt')) if l.strip()]
    out = []
    w = out.append
    w('# Proxy benchmark: direct, pgwarden proxy, PgBouncer, HAProxy')
    w('')
    w('Run of %s UTC on %s CPU(s) (%s), %s (commit %s). Format: **median (min – max, n)** over the '
      'repetitions; ratios are ratios of medians. Raw records: `pgbench.jsonl`, `idle_clients.jsonl`, '
      '`failover.jsonl` in this directory.' % (meta.get('date_utc', '?'), meta.get('nproc', '?'), meta.get('cpu', '?'),
                                                meta.get('pgwarden_version', '?'), meta.get('repo_commit', '?')))
    w('')
    w('Command: `%s`' % meta.get('command', '?'))
    w('')

    # ------------------------------------------------------------------ pgbench aggregation
    cells = {}
    for r in pgb:
        cells.setdefault((r['workload'], r['clients'], r['target']), []).append(r)

    def ok_runs(key):
        return [r for r in cells.get(key, []) if r.get('ok')]

    def m_tps(key):
        return med([r['tps'] for r in ok_runs(key)])

    def m_p99(key):
        return med([r.get('p99_ms') for r in ok_runs(key)])

    # ------------------------------------------------------------------ targets
    w('## Targets')
    w('')
    w('| target | measured | met |')
    w('|---|---|---|')
    for (wl, c) in sorted({(k[0], k[1]) for k in cells}, key=lambda x: (x[0], x[1])):
        if c < 64:
            continue
        a, b = m_tps((wl, c, 'pgwarden_txn')), m_tps((wl, c, 'pgbouncer_txn'))
        pa, pb = m_p99((wl, c, 'pgwarden_txn')), m_p99((wl, c, 'pgbouncer_txn'))
        if a is not None and b:
            w('| transaction mode ≥ 1.1× PgBouncer TPS, %s, %d clients | %s vs %s TPS = ×%.2f | %s |'
              % (WORKLOAD_NAMES.get(wl, wl), c, fmt(a), fmt(b), a / b, 'yes' if a / b >= 1.1 else '**no**'))
        else:
            w('| transaction mode ≥ 1.1× PgBouncer TPS, %s, %d clients | no successful runs of both | – |'
              % (WORKLOAD_NAMES.get(wl, wl), c))
        if pa is not None and pb is not None:
            w('| p99 no worse than PgBouncer, %s, %d clients | %.2f vs %.2f ms | %s |'
              % (WORKLOAD_NAMES.get(wl, wl), c, pa, pb, 'yes' if pa <= pb else '**no**'))
    ip = [r for r in idle if r.get('ok') and r['pooler'] == 'pgwarden']
    if ip:
        held = min(r['clients_held'] for r in ip)
        b = med([r['bytes_per_idle_client'] for r in ip])
        w('| ≤ 10 kB (10,000 B) per idle client, 10,000 clients held | %s B per client, %s clients held | %s |'
          % (fmt(b), fmt(held), 'yes' if b <= 10000 and held >= 10000 else '**no**'))
    elif idle:
        w('| ≤ 10 kB per idle client, 10,000 clients held | no successful run | **no** |')
    diffs = [r.get('haproxy_minus_proxy_s') for r in fo if r.get('haproxy_minus_proxy_s') is not None]
    if diffs:
        w('| failover write gap through the proxy ≥ 5 s shorter than HAProxy (inter 3s fall 3 rise 2) | '
          'HAProxy − proxy: %s s | %s |' % (spread(diffs, 2), 'yes' if med(diffs) >= 5 else '**no**'))
    w('')

    # ------------------------------------------------------------------ pgbench tables
    if pgb:
        w('## pgbench (scale %s, -j %s, -T %s s, %s repetition(s), target order shuffled per workload and client count)'
          % (st.get('scale', '?'), st.get('jobs', '?'), st.get('seconds', '?'), st.get('reps', '?')))
        w('')
        w('TPS excludes connection time. Average latency is pgbench\'s "latency average"; p99 is the 99th '
          'percentile (nearest rank) of the per-transaction times in pgbench\'s `-l` log (sampling rate %s). '
          'CPU columns are cores in use during the run: pgbench (its rusage), the pooler process (utime+stime '
          'from /proc) and the whole machine (/proc/stat); the rest of the machine\'s load is PostgreSQL, '
          'the agents and etcd.' % st.get('sampling_rate', '?'))
        w('')
        for wl in [x for x in ('select', 'tpcb') if any(k[0] == x for k in cells)]:
            w('### %s' % WORKLOAD_NAMES.get(wl, wl))
            w('')
            w('| clients | target | TPS | avg latency ms | p99 ms | vs direct | vs PgBouncer txn | pooler CPU µs/tx | '
              'cores pgbench / pooler / machine |')
            w('|---|---|---|---|---|---|---|---|---|')
            for c in sorted({k[1] for k in cells if k[0] == wl}):
                for t in TARGET_NAMES:
                    runs = cells.get((wl, c, t))
                    if not runs:
                        continue
                    ok = ok_runs((wl, c, t))
                    nfail = len(runs) - len(ok)
                    if not ok:
                        w('| %d | %s | %s (%d of %d runs) | | | | | | |'
                          % (c, TARGET_NAMES[t], failure_reason(runs), nfail, len(runs)))
                        continue
                    tps = m_tps((wl, c, t))
                    note = ' (+%d failed run(s))' % nfail if nfail else ''
                    w('| %d | %s | %s%s | %s | %s | %s | %s | %s | %s / %s / %s |' % (
                        c, TARGET_NAMES[t], spread([r['tps'] for r in ok]), note,
                        fmt(med([r.get('latency_avg_ms') for r in ok]), 2), fmt(m_p99((wl, c, t)), 2),
                        ratio(tps, m_tps((wl, c, 'direct'))) if t != 'direct' else '–',
                        ratio(tps, m_tps((wl, c, 'pgbouncer_txn'))) if t != 'pgbouncer_txn' else '–',
                        fmt(med([r.get('pooler_cpu_us_per_tx') for r in ok]), 1) if t != 'direct' else '–',
                        fmt(med([r.get('cpu_pgbench_cores') for r in ok]), 2),
                        fmt(med([r.get('cpu_pooler_cores') for r in ok]), 2) if t != 'direct' else '–',
                        fmt(med([r.get('cpu_machine_busy_cores') for r in ok]), 2)))
            w('')
        ftx = sum(r.get('failed_tx') or 0 for r in pgb)
        q = [r.get('quiet_busy_cores_before') for r in pgb if r.get('quiet_busy_cores_before') is not None]
        w('Failed runs: %d of %d. Failed transactions in successful runs: %d. Busy cores in the 1 s before each '
          'run (foreign load on the machine): median %s, max %s.'
          % (sum(1 for r in pgb if not r.get('ok')), len(pgb), ftx, fmt(med(q), 2), fmt(max(q) if q else None, 2)))
        if q and med(q) > 0.3:
            w('')
            w('**Warning: the machine was not quiet.** Between runs, with only this benchmark\'s idle cluster running, %s of '
              '%s cores were busy (median). Other work shared the cores, so these figures are not comparable '
              'with a run on a quiet machine.' % (fmt(med(q), 2), meta.get('nproc', '?')))
        w('')

    # ------------------------------------------------------------------ idle
    if idle:
        w('## Memory per idle client (`bench/proxy_idle_clients.py`)')
        w('')
        w('Each repetition starts a fresh pooler (auth_type trust, transaction mode, max_client_conn = clients + 100), '
          'opens the clients, waits until every one got ReadyForQuery, and reads the pooler\'s VmRSS: '
          '(RSS with the clients − RSS before) ÷ clients.')
        w('')
        w('| pooler | bytes per idle client | clients held | RSS before → with clients (MiB) | time to log all in (s) | failed |')
        w('|---|---|---|---|---|---|')
        for p, name in (('pgwarden', 'pgwarden proxy'), ('pgbouncer', 'PgBouncer')):
            rs = [r for r in idle if r['pooler'] == p]
            ok = [r for r in rs if r.get('ok')]
            if not rs:
                continue
            if not ok:
                w('| %s | failed: %s | | | | %d of %d |' % (name, (rs[0].get('error') or ' '.join(rs[0].get('output') or []))[:160],
                                                           len(rs), len(rs)))
                continue
            w('| %s | %s | %s | %s → %s | %s | %d of %d |' % (
                name, spread([r['bytes_per_idle_client'] for r in ok]), fmt(min(r['clients_held'] for r in ok)),
                fmt(med([r['rss_before_kib'] / 1024 for r in ok]), 1), fmt(med([r['rss_after_kib'] / 1024 for r in ok]), 1),
                fmt(med([r['login_seconds'] for r in ok]), 1), len(rs) - len(ok), len(rs)))
        w('')

    # ------------------------------------------------------------------ failover
    if fo:
        w('## Failover write gap (node loss: agent + postmaster + backends SIGKILLed)')
        w('')
        w('Two writers (bl.py\'s `writer.py`: one INSERT every 100 ms, autocommit, reconnect after an error, '
          '2 s client-side bound per attempt) run at the same time, one through the pgwarden proxy\'s read-write '
          'port (transaction mode), one through HAProxy, in front of the same cluster; the same kill is seen by both. '
          'Write gap = last successful write that started before the kill → first successful write that started '
          'after every process of the old primary was dead. DCS timings: %s.'
          % json.dumps((fo[0].get('dcs_timings') or {})))
        w('')
        w('| path | write gap s | kill → first write OK s | failed attempts | acknowledged writes lost |')
        w('|---|---|---|---|---|')
        for p, name in (('pgwarden_proxy', 'pgwarden proxy'), ('haproxy', 'HAProxy inter 3s fall 3 rise 2')):
            rs = [r.get(p) or {} for r in fo]
            w('| %s | %s | %s | %s | %s |' % (name, spread([x.get('write_gap_s') for x in rs], 2),
                                              spread([x.get('first_ok_after_kill_s') for x in rs], 2),
                                              spread([x.get('failed_attempts') for x in rs]),
                                              spread([x.get('lost_acked_writes') for x in rs])))
        w('| HAProxy − proxy | %s | | | |' % spread(diffs, 2))
        w('')
        w('| run | old → new leader | lease TTL left at kill | new leader key s | proxy gap s | HAProxy gap s | '
          'difference s | rejoin → ready s |')
        w('|---|---|---|---|---|---|---|---|')
        for r in fo:
            w('| %d | %s → %s | %s | %s | %s | %s | %s | %s |' % (
                r['run'], r.get('old_leader'), r.get('new_leader'), fmt(r.get('lease_ttl_left_at_kill')),
                fmt(r.get('new_leader_key_s'), 2), fmt((r.get('pgwarden_proxy') or {}).get('write_gap_s'), 2),
                fmt((r.get('haproxy') or {}).get('write_gap_s'), 2), fmt(r.get('haproxy_minus_proxy_s'), 2),
                fmt(r.get('rejoin_ready_s'), 1)))
        errs = sorted({e for r in fo for p in ('pgwarden_proxy', 'haproxy') for e in (r.get(p) or {}).get('errors_sample', [])})
        if errs:
            w('')
            w('Errors the writers saw during the gaps: %s.' % '; '.join('`%s`' % e for e in errs[:8]))
        w('')

    # ------------------------------------------------------------------ failures
    w('## Failed steps')
    w('')
    if fails:
        for f in fails:
            w('- %s' % f.replace('|', '/'))
    else:
        w('None.')
    w('')

    # ------------------------------------------------------------------ method
    w('## Setup and method')
    w('')
    w('- **Cluster**: bl.py\'s 3 etcd members and 3 pgwarden agents (`BL_AGENT_CMD="<bin>/pgwarden agent"`), '
      'profile `%s` (timings in effect: %s), asynchronous replication, leader %s. max_connections **%s** '
      '(bl.py writes 200; raised for this run so that 256 direct and session-pooled clients fit; in effect: %s). '
      'pgbench is initialised once (`pgbench -i -s %s`); a CHECKPOINT and a 1 s idle sample precede every run.'
      % (st.get('profile', '?'), json.dumps(setup.get('dcs_timings')), setup.get('leader', '?'),
         st.get('max_connections', '?'), setup.get('max_connections_in_effect', '?'), st.get('scale', '?')))
    w('- **Authentication**: %s. Server side: pg_hba scram-sha-256 for every pooler.' % st.get('auth', '?'))
    w('- **Pools**: transaction mode default_pool_size %s for both poolers; session mode default_pool_size %s for '
      'both (at least the largest client count). max_client_conn 1000 for both (bl.py\'s PgBouncer value). '
      'Each pooler is started fresh (empty pool) for each pgbench run and stopped after it, so no run inherits '
      'server connections from another. pgwarden proxy `worker_threads: %s`; PgBouncer is single-threaded; '
      'HAProxy 2.6 runs one thread per CPU.'
      % (st.get('txn_pool', '?'), st.get('session_pool', '?'), st.get('proxy_threads', '?')))
    w('- **HAProxy**: bl.py\'s configuration (`mode tcp`, `option httpchk GET /primary`, `inter 3s fall 3 rise 2 '
      'on-marked-down shutdown-sessions`), with the per-server `maxconn` raised from 200 to %s to match '
      'max_connections. Benchmarks start once it routes to the primary only.' % st.get('haproxy_server_maxconn', '?'))
    w('- **Cores**: nothing is pinned. pgbench (%s threads), the pooler, the primary\'s backends, the two '
      'replicas applying WAL, 3 agents and 3 etcd members share the %s cores under the Linux scheduler; the '
      'CPU columns above show how they were split. A pooler on the hot path competes with PostgreSQL for the '
      'same cores, so ratios here differ from a deployment with separate hosts.'
      % (st.get('jobs', '?'), meta.get('nproc', '?')))
    w('- **Seed** %s: shuffles the target order in each (workload, clients) block, the pooler order in the idle '
      'part and the kill delays.' % st.get('seed', '?'))
    w('')
    w('## Machine')
    w('')
    w('| item | value |')
    w('|---|---|')
    for k in ('date_utc', 'nproc', 'cpu', 'mem', 'kernel', 'os', 'python', 'postgres', 'pgbench', 'pgwarden_version',
              'repo_commit', 'pgwarden_sha256_16', 'baseline_dir'):
        if k in meta:
            w('| %s | %s |' % (k, meta[k]))
    for k, v in sorted((meta.get('packages') or {}).items()):
        w('| package %s | %s |' % (k, v))
    w('')
    print('\n'.join(out))


if __name__ == '__main__':
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.exit('usage: proxy_report.py RESULTS_DIR')
    main(sys.argv[1])
