#!/bin/bash
# usage: ab.sh OUT ROUNDS PROTO — interleaved closed-loop runs: base, new, responder
out=$1; n=$2; proto=${3:-http}
mkdir -p $out
for i in $(seq 1 $n); do
  for v in base new; do
    BIN=/tmp/prof/corepay-$v ./cl.sh corepay $proto $out/$v-$i > /dev/null
    echo "$v $i $(grep -h 'closed loop' $out/$v-$i/run-corepay-$proto.txt) $(grep -h '^  latency' $out/$v-$i/run-corepay-$proto.txt | awk '{print "p50",$6,"p99",$10}')"
  done
  ./cl.sh responder $proto $out/resp-$i > /dev/null
  echo "resp $i $(grep -h 'closed loop' $out/resp-$i/run-responder-$proto.txt) $(grep -h '^  latency' $out/resp-$i/run-responder-$proto.txt | awk '{print "p50",$6,"p99",$10}')"
done
