#!/bin/bash
# usage: burst.sh OUT BURST(yes|no) — open-loop HTTPS authorizations at 2,000/s over 16 connections
# for 30 s; with BURST=yes, 10 s in, a burst of 3,000 fresh TLS handshakes from 4 clients.
out=$1; burst=$2
cd /work/main
pkill -f "serve --config /tmp/tlsb/gw-"; sleep 0.5
rm -rf /tmp/tlsb/data; mkdir -p $out
$GW serve --config /tmp/tlsb/gw-tls.toml > $out/gw.log 2>&1 &
gw=$!
for i in $(seq 1 100); do curl -sf 127.0.0.1:28464/readyz >/dev/null && break; sleep 0.1; done
COREPAY_ADMIN_KEY=ak_corepay_perf_suite_0001 /tmp/tlsb/new/corepay-perf run \
  --scenario perf/scenarios/authorize-http.toml --addr 127.0.0.1:28080 --tls /tmp/tlsb/ca.pem \
  --admin-addr 127.0.0.1:28464 --metrics-addr 127.0.0.1:28464 --core 0 --rate 2000 \
  --connections 16 --window 1 --duration 30 --warmup 2 --label burst-$burst --out $out > $out/run.txt 2>&1 &
run=$!
if [ $burst = yes ]; then
  sleep 14
  /tmp/tlsb/new/corepay-perf handshakes --addr 127.0.0.1:28080 --tls /tmp/tlsb/ca.pem --count 3000 --threads 4 --core 0 > $out/handshakes.txt 2>&1
  cat $out/handshakes.txt
fi
wait $run
kill -TERM $gw; wait $gw
echo "burst=$burst $(grep -h '^  latency' $out/run.txt)"
grep -h "tls_handshakes_failed\|check" $out/run.txt | head -3
