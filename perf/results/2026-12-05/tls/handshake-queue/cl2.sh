#!/bin/bash
# usage: cl.sh TARGET(corepay|responder) TLS(plain|tls) OUT — closed loop, HTTP 64 x 1, 10 s after 2 s warm-up
t=$1; mode=$2; out=$3
cd /work/main
pkill -f "serve --config /tmp/tlsb/gw-"; pkill -f "corepay-perf responder"; sleep 0.5
rm -rf /tmp/tlsb/data; mkdir -p $out
tlsflag=""; [ $mode = tls ] && tlsflag="--tls /tmp/tlsb/ca.pem"
if [ $t = corepay ]; then
  $GW serve --config /tmp/tlsb/gw-$mode.toml > $out/gw.log 2>&1 &
  gw=$!
  for i in $(seq 1 100); do curl -sf 127.0.0.1:28464/readyz >/dev/null && break; sleep 0.1; done
  extra="--admin-addr 127.0.0.1:28464 --metrics-addr 127.0.0.1:28464"
else
  rt=""; [ $mode = tls ] && rt="--tls-cert /tmp/tlsb/server.pem --tls-key /tmp/tlsb/server.key"
  /tmp/tlsb/new/corepay-perf responder --http 127.0.0.1:28080 --core 1 $rt > $out/gw.log 2>&1 &
  gw=$!; sleep 1
  extra="--target responder"
fi
COREPAY_ADMIN_KEY=ak_corepay_perf_suite_0001 /tmp/tlsb/new/corepay-perf run \
  --scenario perf/scenarios/authorize-http.toml --addr 127.0.0.1:28080 $tlsflag \
  $extra --core 0 --closed-loop --connections 64 --window 1 --duration 10 --warmup 2 --no-check --label $t-$mode --out $out > $out/run.txt 2>&1
kill -TERM $gw; wait $gw
echo "$t $mode $(grep -h 'closed loop' $out/run.txt) $(grep -h '^  latency' $out/run.txt | awk '{print "p50",$6,"p99",$10}')"
