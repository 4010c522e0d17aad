#!/usr/bin/env python3
import json, sys, statistics as st
for path in sys.argv[1:]:
    rows = [json.loads(l) for l in open(path)]
    rows = rows[5:-3]  # skip start and drain
    shard_wait = []; shard_run = []; store_on1 = 0; store_run = []
    sync = []; recs = []; wr_kb = []; wr_ios = []; flush_ms = []; ck = []; cm = []
    for r in rows:
        sw = sr = 0; st_r = 0
        for k, (run, wait, cpu) in r['th'].items():
            if k.startswith('corepay-shard-0') and cpu == 1:
                sw += wait; sr += run
            if k.startswith('corepay-store-0'):
                st_r += run
                if cpu == 1: store_on1 += 1
        shard_wait.append(sw); shard_run.append(sr); store_run.append(st_r)
        m = r['m']
        if m.get('wal_batches_total'):
            sync.append(m['wal_sync_micros_total'] / m['wal_batches_total'])
            recs.append(m['wal_records_total'] / m['wal_batches_total'])
        wr_kb.append(r['disk']['wr_kb']); wr_ios.append(r['disk']['wr_ios'])
        if m.get('store_checkpoints_total'):
            ck.append(m['store_checkpoint_micros_total'] / m['store_checkpoints_total'] / 1000)
        if m.get('store_commits_total'):
            cm.append(m['store_commit_micros_total'] / m['store_commits_total'] / 1000)
    q = lambda a, p: sorted(a)[int(p * (len(a) - 1))] if a else float('nan')
    print(f"{path}: {len(rows)} s; shard run {st.mean(shard_run):.3f} wait {st.mean(shard_wait):.3f} (p99 {q(shard_wait,.99):.3f}); "
          f"store thread cpu {st.mean(store_run):.3f}, seen on core 1 in {store_on1} s; "
          f"wal sync/batch mean {st.mean(sync)/1000:.2f} ms p99-of-seconds {q(sync,.99)/1000:.2f} max {max(sync)/1000:.2f}; recs/batch {st.mean(recs):.2f}; "
          f"disk wr {st.mean(wr_kb)/1024:.1f} MB/s {st.mean(wr_ios):.0f} io/s; "
          f"checkpoint ms mean-of-seconds {st.mean(ck) if ck else float('nan'):.1f} max {max(ck) if ck else float('nan'):.1f}; commit ms mean {st.mean(cm) if cm else float('nan'):.1f} max {max(cm) if cm else float('nan'):.1f}")
