#!/bin/bash
cd /tmp/ab
for r in 1 2; do
  for t in false true; do
    echo "== $t$r $(date +%T)"
    /tmp/mon/run.sh tr-$t$r /tmp/ab/corepay-trickle 3000 600000 $t
  done
done
echo DONE
