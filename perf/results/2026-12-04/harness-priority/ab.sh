#!/bin/bash
cd /work/main
for r in ${RUNS:-a1 b1 a2 b2}; do
  extra=""; [[ $r == b* ]] && extra="--load-rt-priority 2"
  pkill -f "corepay[-a-z]* serve"; sleep 1
  ./target/release/corepay-perf soak --scenario perf/scenarios/soak-http.toml --start-gateway --rate 3000 --payments 240000 --baseline none $extra --out /tmp/lag/$r > /tmp/lag/$r.log 2>&1
  echo "$r $(grep -E 'latency from|dispatch lag' /tmp/lag/$r.log | tr '\n' ' ')"
done
