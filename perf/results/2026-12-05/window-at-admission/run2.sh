#!/bin/bash
# usage: run2.sh BIN LABEL PROTO OUTDIR [extra corepay-perf flags...]
bin=$1; label=$2; proto=$3; out=$4; shift 4
mkdir -p $out
pkill -f "serve --config" ; sleep 0.5
rm -rf /tmp/ov/data-on
$bin serve --config /tmp/ov/corepay-on.toml > /tmp/ov/gw-$label.log 2>&1 &
gw=$!
for i in $(seq 1 100); do curl -sf 127.0.0.1:28464/readyz >/dev/null && break; sleep 0.1; done
cd /work/main
COREPAY_ADMIN_KEY=ak_corepay_perf_suite_0001 /tmp/ov/corepay-perf overload \
  --scenario perf/scenarios/overload-$proto.toml --addr 127.0.0.1:$([ $proto = http ] && echo 28080 || echo 28583) \
  --admin-addr 127.0.0.1:28080 --metrics-addr 127.0.0.1:28464 --core 0 --label overload-$proto-$label --out $out "$@"
rc=$?
curl -s 127.0.0.1:28464/metrics | grep -E '^corepay_(shed_total|admission_|queue_delay|store_shed)' > $out/metrics-$proto-$label.txt
kill -TERM $gw; wait $gw
echo "rc=$rc"
