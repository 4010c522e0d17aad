#!/bin/bash
cd /work/main
python3 /tmp/mon/mon.py 127.0.0.1:29002 /tmp/soak8/mon.jsonl &
mon=$!
./target/release/corepay-perf soak --scenario perf/scenarios/soak-http.toml --start-gateway --rate 3000 --payments 10000000 --baseline-payments 1000000 --out /tmp/soak8 > /tmp/soak8/soak.log 2>&1
echo "SOAK EXIT $?" >> /tmp/soak8/soak.log
kill $mon
/tmp/soak8/restart.sh > /tmp/soak8/restart1.log 2>&1
KILL_AFTER=20 /tmp/soak8/restart.sh > /tmp/soak8/restart2.log 2>&1
echo DONE >> /tmp/soak8/soak.log
