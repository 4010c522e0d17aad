#!/usr/bin/env python3
"""Per-second monitor: per-thread CPU and run-queue wait (schedstat), disk stats, gateway metrics."""
import os, sys, time, urllib.request, json
pid = int(sys.argv[1]); metrics = sys.argv[2]; out = open(sys.argv[3], 'w')
KEYS = ['corepay_wal_batches_total','corepay_wal_sync_micros_total','corepay_wal_records_total',
        'corepay_store_commits_total','corepay_store_commit_micros_total','corepay_store_checkpoints_total',
        'corepay_store_checkpoint_micros_total','corepay_store_lag_records','corepay_store_cold_reads_total',
        'corepay_http_requests_total','corepay_shed_total','corepay_store_shed_total','corepay_wal_segments_created_total']
def threads():
    d = {}
    for tid in os.listdir(f'/proc/{pid}/task'):
        try:
            st = open(f'/proc/{pid}/task/{tid}/stat').read()
            name = st[st.index('(')+1:st.rindex(')')]
            f = st[st.rindex(')')+2:].split()
            ss = open(f'/proc/{pid}/task/{tid}/schedstat').read().split()
            d[tid] = (name, int(ss[0]), int(ss[1]), int(f[36]), f[0])
        except Exception:
            pass
    return d
def disk():
    f = open('/sys/block/vda/stat').read().split()
    return [int(x) for x in f]
def cpustat():
    return [int(x) for x in open('/proc/stat').readline().split()[1:]]
def met():
    try:
        t = urllib.request.urlopen(f'http://{metrics}/metrics', timeout=2).read().decode()
    except Exception:
        return {}
    m = {}
    for line in t.splitlines():
        if line.startswith('#'): continue
        k = line.split('{')[0].split(' ')[0]
        if k in KEYS:
            m[k] = m.get(k, 0) + float(line.split()[-1])
    return m
def pio():
    d = {}
    for l in open(f'/proc/{pid}/io'):
        k, v = l.split(':'); d[k] = int(v)
    return d
prev = None
while True:
    t = time.time()
    try:
        cur = (t, threads(), disk(), met(), pio(), cpustat())
    except Exception as e:
        print('mon: stopped:', repr(e), file=sys.stderr)
        break
    if prev:
        dt = cur[0]-prev[0]
        th = {}
        for tid,(name,run,wait,cpu,state) in cur[1].items():
            if tid in prev[1]:
                p = prev[1][tid]
                r = (run-p[1])/1e9/dt; w = (wait-p[2])/1e9/dt
                if r > 0.005 or w > 0.005:
                    th[f'{name}/{tid}'] = [round(r,3), round(w,3), cpu]
        d0, d1 = prev[2], cur[2]
        dk = {'rd_ios': d1[0]-d0[0], 'rd_kb': (d1[2]-d0[2])/2, 'wr_ios': d1[4]-d0[4], 'wr_kb': (d1[6]-d0[6])/2,
              'inflight': d1[8], 'busy_ms': d1[9]-d0[9], 'wr_wait_ms': d1[7]-d0[7], 'flush_ios': (d1[15]-d0[15]) if len(d1)>15 else None,
              'flush_ms': (d1[16]-d0[16]) if len(d1)>16 else None}
        m = {k.replace('corepay_',''): cur[3].get(k,0)-prev[3].get(k,0) for k in KEYS if k in cur[3]}
        m['store_lag_records'] = cur[3].get('corepay_store_lag_records')
        io = {k: cur[4][k]-prev[4][k] for k in ('read_bytes','write_bytes')}
        c = [a-b for a,b in zip(cur[5], prev[5])]; tot = max(1, sum(c[:8]))
        cp = {'user': round(c[0]/tot,3), 'sys': round(c[2]/tot,3), 'idle': round(c[3]/tot,3), 'iowait': round(c[4]/tot,3), 'soft': round(c[6]/tot,3), 'steal': round(c[7]/tot,3)}
        out.write(json.dumps({'t': round(t,1), 'th': th, 'disk': dk, 'm': m, 'io': io, 'cpu': cp})+'\n'); out.flush()
    prev = cur
    time.sleep(max(0, 1-(time.time()-t)))
