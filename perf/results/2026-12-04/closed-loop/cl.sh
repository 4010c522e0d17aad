#!/bin/bash
# usage: cl.sh TARGET(corepay|responder) PROTO(http|iso8583) OUT [conns] [window] — saturating load (closed loop in effect)
t=$1; proto=$2; out=$3; conns=${4:-64}; win=${5:-1}
cd /work/main
pkill -f "serve --config ${CFG:-/tmp/prof/gw.toml}"; pkill -f "corepay-perf responder"; sleep 0.5
rm -rf /tmp/prof/data /tmp/prof/rdata; mkdir -p $out /tmp/prof/rdata
if [ $t = corepay ]; then
  ${BIN:-./target/release/corepay} serve --config ${CFG:-/tmp/prof/gw.toml} > $out/gw-$t-$proto.log 2>&1 &
  gw=$!
  for i in $(seq 1 100); do curl -sf 127.0.0.1:28464/readyz >/dev/null && break; sleep 0.1; done
  extra="--admin-addr 127.0.0.1:28080 --metrics-addr 127.0.0.1:28464"
else
  ./target/release/corepay-perf responder --http 127.0.0.1:28080 --iso 127.0.0.1:28583 --durable /tmp/prof/rdata --core 1 > $out/gw-$t-$proto.log 2>&1 &
  gw=$!; sleep 1
  extra="--target responder"
fi
COREPAY_ADMIN_KEY=ak_corepay_perf_suite_0001 ./target/release/corepay-perf run \
  --scenario perf/scenarios/authorize-$proto.toml --addr 127.0.0.1:$([ $proto = http ] && echo 28080 || echo 28583) \
  $extra --core 0 --closed-loop --connections $conns --window $win --duration 10 --warmup 2 --no-check --label $t-$proto --out $out > $out/run-$t-$proto.txt 2>&1
kill -TERM $gw; wait $gw
grep -E "achieved|authorize|lag" $out/run-$t-$proto.txt
