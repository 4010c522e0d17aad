#!/bin/bash
# Restart after kill -9 under load, on the soak's data: start, load at 3000/s, kill -9 mid-run, time the restart.
cfg=/tmp/soak8/work/corepay/corepay.toml; bin=/work/main/target/release/corepay; out=/tmp/soak8/restart; mkdir -p $out
pkill -f "corepay serve"; sleep 1
$bin serve --config $cfg > $out/gw1.log 2>&1 &
gw=$!
for i in $(seq 1 200); do curl -sf 127.0.0.1:29002/readyz >/dev/null && break; sleep 0.1; done
/work/main/target/release/corepay-perf soak --scenario /work/main/perf/scenarios/soak-http.toml --addr 127.0.0.1:29000 --admin-addr 127.0.0.1:29000 --metrics-addr 127.0.0.1:29002 --admin-key ak_corepay_perf_suite_0001 --core 0 --rate 3000 --payments 150000 --gateway-pid $gw --no-check --out $out > $out/load.log 2>&1 &
load=$!
sleep ${KILL_AFTER:-27}
curl -s 127.0.0.1:29002/metrics | grep -E "^corepay_(wal_durable_lsn|store_checkpoint_lsn|store_applied_lsn)" > $out/before-kill.txt
kill -9 $gw; t0=$(date +%s.%N); wait $gw 2>/dev/null
$bin serve --config $cfg > $out/gw2.log 2>&1 &
gw2=$!
until curl -sf 127.0.0.1:29002/readyz >/dev/null; do sleep 0.005; done
t1=$(date +%s.%N)
echo "restart after kill -9 under load: $(echo "($t1 - $t0)*1000" | bc) ms to /readyz 200" | tee $out/restart.txt
kill $load 2>/dev/null; wait $load 2>/dev/null
grep -E "checkpoint at|recovered|replayed" $out/gw2.log | tee -a $out/restart.txt
cat $out/before-kill.txt >> $out/restart.txt
kill -TERM $gw2; wait $gw2
