#!/bin/bash
# usage: run.sh LABEL BIN RATE PAYMENTS TRICKLE(true|false)
label=$1; bin=$2; rate=$3; n=$4; trickle=$5
out=/tmp/ab/out/$label; mkdir -p $out
pkill -f "corepay[-a-z]* serve"; sleep 1
rm -rf /tmp/ab/data; cp -a /tmp/big/snap /tmp/ab/data; sync; echo 1 > /proc/sys/vm/drop_caches
{ cat /tmp/ab/base.toml; printf '\n[state]\ntrickle_writeback = %s\n' $trickle; } > $out/corepay.toml
env $6 $bin serve --config $out/corepay.toml > $out/gateway.log 2>&1 &
gw=$!
for i in $(seq 1 100); do curl -sf 127.0.0.1:29301/metrics >/dev/null && break; sleep 0.2; done
python3 /tmp/mon/mon.py $gw 127.0.0.1:29301 $out/mon.jsonl &
mon=$!
/work/main/target/release/corepay-perf soak --scenario /work/main/perf/scenarios/soak-http.toml --addr 127.0.0.1:29300 --admin-addr 127.0.0.1:29300 --metrics-addr 127.0.0.1:29301 --admin-key ak_corepay_perf_suite_0001 --core 0 --rate $rate --payments $n --cold-after 200000 --gateway-pid $gw --out $out > $out/soak.out 2>&1
kill $mon; kill -TERM $gw; wait $gw
grep -E "latency from|max latency|cold \(|answers" $out/soak.out
