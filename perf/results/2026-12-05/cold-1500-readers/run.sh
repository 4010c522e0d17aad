#!/bin/bash
# Cold reads at 1,500/s: the build before (readers at normal priority) and after (readers at SCHED_FIFO 1), alternately.
cd /work/main
for r in 1 2; do
for v in new readers; do
  pkill -f "serve --config"; sleep 1
  /tmp/prof/corepay-perf soak --scenario perf/scenarios/soak-http.toml --start-gateway --corepay /tmp/prof/corepay-$v \
    --rate 1500 --payments 300000 --window-payments 20000 --cold-after 100000 --baseline-payments 30000 \
    --out /tmp/cold/$v-$r > /tmp/cold/$v-$r.log 2>&1
  echo "$v $r rc=$?"
done
done
