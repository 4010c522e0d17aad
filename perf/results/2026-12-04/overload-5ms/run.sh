#!/bin/bash
# usage: run.sh MODE(on|off) PROTO(http|iso8583) OUTDIR [extra corepay-perf flags...]
mode=$1; proto=$2; out=$3; shift 3
cd /work/main
pkill -f "corepay serve" ; sleep 0.5
rm -rf /tmp/ov/data-$mode
./target/release/corepay serve --config /tmp/ov/corepay-$mode.toml > /tmp/ov/gw-$mode.log 2>&1 &
gw=$!
for i in $(seq 1 100); do curl -sf 127.0.0.1:28464/readyz >/dev/null && break; sleep 0.1; done
COREPAY_ADMIN_KEY=ak_corepay_perf_suite_0001 ./target/release/corepay-perf overload \
  --scenario perf/scenarios/overload-$proto.toml --addr 127.0.0.1:$([ $proto = http ] && echo 28080 || echo 28583) \
  --admin-addr 127.0.0.1:28080 --metrics-addr 127.0.0.1:28464 --core 0 --label overload-$proto-$mode --out $out "$@"
rc=$?
curl -s 127.0.0.1:28464/metrics | grep -E '^corepay_(shed_total|admission_|queue_delay)' > $out/metrics-$proto-$mode.txt
kill -TERM $gw; wait $gw
echo "rc=$rc"
