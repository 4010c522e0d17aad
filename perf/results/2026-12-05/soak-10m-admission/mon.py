#!/usr/bin/env python3
"""Samples the gateway's /metrics once a second into JSON lines (time, selected series)."""
import json, sys, time, urllib.request
addr = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:29002"
out = open(sys.argv[2] if len(sys.argv) > 2 else "/tmp/mon/mon.jsonl", "a")
KEEP = ("corepay_wal_segments_", "corepay_wal_spares_", "corepay_wal_fsync_seconds_bucket",
        "corepay_wal_fsync_seconds_count", "corepay_shard_tick_lateness_seconds_bucket",
        "corepay_store_checkpoint", "corepay_store_commit", "corepay_wal_batches_total",
        "corepay_wal_records_total", "corepay_store_lag_records", "corepay_store_cold_reads_total",
        "corepay_payments_in_memory", "corepay_wal_sync_micros_max", "corepay_store_shed_total", "corepay_admission_", "corepay_shed_total", "corepay_queue_delay")
WANT_LE = ('le="0.01"', 'le="0.05"', 'le="0.1"', 'le="0.25"', 'le="+Inf"')
while True:
    t = time.time()
    try:
        body = urllib.request.urlopen(f"http://{addr}/metrics", timeout=2).read().decode()
        row = {"t": round(t, 3)}
        for line in body.splitlines():
            if line.startswith("#") or not line.startswith(KEEP):
                continue
            if "_bucket" in line and not any(w in line for w in WANT_LE):
                continue
            k, v = line.rsplit(" ", 1)
            row[k] = float(v)
        out.write(json.dumps(row) + "\n"); out.flush()
    except Exception as e:
        pass
    time.sleep(max(0.0, 1.0 - (time.time() - t)))
