#!/bin/bash
# usage: cpuab.sh OUT — shard-thread CPU per request in a closed loop: corepay, then the durable responder
out=$1; mkdir -p $out
for t in corepay responder; do
  (BIN=/tmp/prof/corepay-new ./cl.sh $t http $out/$t > /dev/null &)
  sleep 6
  if [ $t = corepay ]; then pid=$(pgrep -f "serve --config /tmp/prof/gw.toml"); else pid=$(pgrep -f "corepay-perf responder"); fi
  ./cpu.sh $pid 4 > $out/$t-cpu.txt
  sleep 10
  rate=$(grep -h 'closed loop' $out/$t/run-$t-http.txt | sed 's/.*achieved \([0-9]*\)\/s.*/\1/')
  echo "== $t: achieved $rate/s; per request over 4 s (us):"
  awk -v r=$rate '{split($3,u,"=");split($4,s,"="); printf "  %-18s user %.1f sys %.1f\n", $2, u[2]*1000/(r*4), s[2]*1000/(r*4)}' $out/$t-cpu.txt
done
