import json,sys,statistics as st
for lab in sys.argv[1:]:
    d=json.load(open(f'/tmp/ab/out/{lab}/soak-http-soak.json'))
    w=[x for x in d['windows'] if x['start_s']>=90 and x['answered']>0]
    t=d['trends']['max_ms_per_10s'][9:-1]
    p99=[x['p99_ms'] for x in w]; mx=[x['max_ms'] for x in w]
    q=lambda a,p: sorted(a)[int(p*(len(a)-1))]
    rows=[json.loads(l) for l in open(f'/tmp/ab/out/{lab}/mon.jsonl')][5:-3]
    ck=[]; prev=None
    for r in rows:
        m=r['m']
        if prev and m.get('store_checkpoints_total',0)>prev.get('store_checkpoints_total',0):
            ck.append((m['store_checkpoint_micros_total']-prev['store_checkpoint_micros_total'])/(m['store_checkpoints_total']-prev['store_checkpoints_total'])/1000)
        prev=m
    steal=[x.get('steal') or 0 for x in w]
    lat=d['run']['latency']
    print(f"{lab:10s} 10s-max median {st.median(t):6.1f} p90 {q(t,.9):6.1f} max {max(t):6.1f} | win p99 median {st.median(p99):5.2f} p90 {q(p99,.9):6.2f} | run p50 {lat['p50']/1000:.2f} p99 {lat['p99']/1000:.2f} p999 {lat['p999']/1000:.2f} | ckpt ms median {st.median(ck) if ck else 0:.0f} max {max(ck) if ck else 0:.0f} | steal mean {st.mean(steal):.1f}")
