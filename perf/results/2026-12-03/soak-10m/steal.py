import json, sys, statistics as st
soak = json.load(open(sys.argv[1])); mon = [json.loads(l) for l in open(sys.argv[2])]
t0 = soak['run']['started_unix'] + soak['run']['scenario']['warmup_s']
wins = soak['windows']
by10 = {}
for w in wins:
    k = int(w['start_s'] // 10); by10.setdefault(k, []).append(w['max_ms'])
steal = {}
for r in mon:
    k = int((r['t'] - t0) // 10)
    if 'cpu' in r: steal.setdefault(k, []).append(r['cpu']['steal'])
rows = [(k, max(v), st.mean(steal[k])) for k, v in by10.items() if k in steal]
for lo, hi in [(0, .05), (.05, .1), (.1, .2), (.2, .3), (.3, 1)]:
    g = [m for k, m, s in rows if lo <= s < hi]
    if g:
        g.sort()
        print(f"steal {lo:.2f}-{hi:.2f}: {len(g):4d} windows of 10 s, median max {st.median(g):8.1f} ms, worst {g[-1]:8.1f} ms")
