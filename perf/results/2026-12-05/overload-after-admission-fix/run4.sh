#!/bin/bash
# usage: run3.sh PROTO SUSTAINABLE OUTDIR — corepay-perf overload at 2x a given sustainable rate (admin on the operator listener)
proto=$1; sus=$2; out=$3
mkdir -p $out
pkill -f "serve --config" ; sleep 0.5
rm -rf /tmp/ov/data-on
/work/main/target/release/corepay serve --config /tmp/ov/corepay-on.toml > $out/gw-$proto.log 2>&1 &
gw=$!
for i in $(seq 1 100); do curl -sf 127.0.0.1:28464/readyz >/dev/null && break; sleep 0.1; done
cd /work/main
COREPAY_ADMIN_KEY=ak_corepay_perf_suite_0001 ./target/release/corepay-perf overload \
  --scenario perf/scenarios/overload-$proto.toml --addr 127.0.0.1:$([ $proto = http ] && echo 28080 || echo 28583) \
  --admin-addr 127.0.0.1:28464 --metrics-addr 127.0.0.1:28464 --core 0 --label overload-$proto --out $out
rc=$?
curl -s 127.0.0.1:28464/metrics | grep -E '^corepay_(shed_total|admission_|queue_delay|store_shed)' > $out/metrics-$proto.txt
kill -TERM $gw; wait $gw
echo "rc=$rc"
