"""Summary of the 10 M soak (issue 9) with the per-second /metrics samples (mon.jsonl) joined
to the slow 10 s buckets: was it a slow fdatasync, a shard that did not run, a new segment?"""
import json, statistics as st, sys, gzip
D = sys.argv[1] if len(sys.argv) > 1 else '/tmp/soak5'
op = lambda p: gzip.open(p) if p.endswith('.gz') else open(p)
c = json.load(op(f'{D}/soak-http-corepay-soak.json')); r = json.load(op(f'{D}/soak-http-durable-responder-soak.json'))
rmax = r['trends']['max_ms']; bound = 3 * rmax
t = c['trends']['max_ms_per_10s']; n = len(t)
print('responder max %.1f bound %.1f responder 10s-max median %.1f' % (rmax, bound, st.median(r['trends']['max_ms_per_10s'])))
print('corepay 10s buckets', n, 'median %.1f' % st.median(t), 'per fifth', [round(st.median(t[i*n//5:(i+1)*n//5]), 1) for i in range(5)])
w = c['windows']
mon = [json.loads(l) for l in op(f'{D}/mon.jsonl' if not D.endswith('gz') else D)]
t0 = c['run']['started_unix'] + c['run']['scenario'].get('warmup_s', 2.0)
def key(row, name, le=None):
    for k, v in row.items():
        if k.startswith(name) and (le is None or f'le="{le}"' in k):
            return v
    return None
def delta(a, b, name, le=None):
    x, y = key(a, name, le), key(b, name, le)
    return None if x is None or y is None else y - x
over = [i for i, x in enumerate(t) if x > bound]
print('buckets above bound', len(over))
for b in over:
    ws = [x for x in w if int(x['start_s'] // 10) == b]
    worst = max(ws, key=lambda x: x['max_ms'])
    lo, hi = t0 + worst['start_s'] - 2, t0 + worst['start_s'] + worst['duration_s'] + 2
    rows = [m for m in mon if lo <= m['t'] <= hi]
    line = '  bucket %d s max %.1f (window %d p50 %.2f p99 %.1f) steal max %.0f%% lag max %.1f' % (
        b*10, t[b], worst['index'], worst['p50_ms'], worst['p99_ms'], 100*max(x.get('steal') or 0 for x in ws),
        max(x['dispatch_lag_max_ms'] for x in ws))
    if len(rows) >= 2:
        a, z = rows[0], rows[-1]
        slow_sync = delta(a, z, 'corepay_wal_fsync_seconds_bucket', '+Inf') - delta(a, z, 'corepay_wal_fsync_seconds_bucket', '0.1')
        late = delta(a, z, 'corepay_shard_tick_lateness_seconds_bucket', '+Inf') - delta(a, z, 'corepay_shard_tick_lateness_seconds_bucket', '0.1')
        line += ' | over %.0f s: fsyncs > 100 ms %d, ticks late > 100 ms %d, segments created %s reused %s, checkpoints %s, spares %s' % (
            z['t'] - a['t'], slow_sync, late, delta(a, z, 'corepay_wal_segments_created_total'),
            delta(a, z, 'corepay_wal_segments_reused_total'), delta(a, z, 'corepay_store_checkpoints_total'),
            delta(a, z, 'corepay_wal_spares_prepared_total'))
    print(line)
# Over the whole run: slow fsyncs and late ticks.
a, z = mon[0], mon[-1]
for le in ('0.01', '0.05', '0.1', '0.25'):
    print('whole run: fsyncs above %s s: %d of %d; ticks late above %s s: %d of %d' % (
        le, key(z, 'corepay_wal_fsync_seconds_bucket', '+Inf') - key(z, 'corepay_wal_fsync_seconds_bucket', le),
        key(z, 'corepay_wal_fsync_seconds_bucket', '+Inf'), le,
        key(z, 'corepay_shard_tick_lateness_seconds_bucket', '+Inf') - key(z, 'corepay_shard_tick_lateness_seconds_bucket', le),
        key(z, 'corepay_shard_tick_lateness_seconds_bucket', '+Inf')))
print('segments created %s reused %s spares prepared %s deleted %s recycled %s' % tuple(key(z, k) for k in (
    'corepay_wal_segments_created_total', 'corepay_wal_segments_reused_total', 'corepay_wal_spares_prepared_total',
    'corepay_wal_segments_deleted_total', 'corepay_wal_segments_recycled_total')))
for k in ('p50', 'p90', 'p99', 'p999', 'max'):
    print(k, 'corepay %.2f' % (c['run']['latency'][k]/1000), 'responder %.2f' % (r['run']['latency'][k]/1000),
          'cold %.2f' % (c['cold'][k]/1000) if k in c['cold'] else '')
print('dispatch lag p99 corepay %.2f responder %.2f' % (c['run']['dispatch_lag']['p99']/1000, r['run']['dispatch_lag']['p99']/1000))
tr = c['trends']; print('rate first/last', tr['first_rate'], tr['last_rate'], tr['last_to_first_rate'])
for k in ('rss_first', 'rss_at_mark', 'rss_end'): print(k, tr[k]['processed'], round(tr[k]['bytes']/2**20, 1))
print('RSS diff %.1f MiB' % ((tr['rss_end']['bytes'] - tr['rss_at_mark']['bytes'])/2**20))
print('answers', c['run']['ok'], c['run']['shed'], c['run']['errors'], c['run']['declined'], 'check', c['run'].get('check'))
for k, v in c['run']['per_op'].items(): print(k, {q: round(v['latency'][q]/1000, 2) for q in ('p50', 'p99', 'max')}, v['latency']['count'])
print('cold reads from store', max(x.get('store_cold_reads_total') or 0 for x in w))
