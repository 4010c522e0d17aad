"""Per fifth of the soak: mean cores used per thread group (the sampler's per-thread CPU),
mean VM steal, and the median of the 1 s maxima. Usage: python3 cpu.py soak-http-corepay-soak.json.gz"""
import gzip, json, statistics as st, sys
p = sys.argv[1]
c = json.load(gzip.open(p) if p.endswith('.gz') else open(p))
w = c['windows']; n = len(w)
def grp(k):
    if k.startswith('gw:corepay-shard'): return 'shard (executor + WAL sync thread)'
    if k.startswith('gw:corepay-store'): return 'store (writer + readers)'
    if k.startswith('load:'): return 'load generator'
    return 'other'
for i in range(5):
    part = w[i * n // 5:(i + 1) * n // 5]
    agg = {}
    for x in part:
        for k, v in (x.get('cpu') or {}).items():
            agg[grp(k)] = agg.get(grp(k), 0) + v
    print('fifth %d: ' % (i + 1) + ', '.join('%s %.3f' % (k, v / len(part)) for k, v in sorted(agg.items()) if k != 'other')
          + '; steal %.1f%%; median 1 s max %.1f ms' % (100 * st.mean([x.get('steal') or 0 for x in part]), st.median([x['max_ms'] for x in part])))
