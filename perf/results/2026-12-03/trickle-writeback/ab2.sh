#!/bin/bash
cd /tmp/ab
for r in 1 2; do
  echo "== fg$r $(date +%T)"; /tmp/mon/run.sh bg-fg$r /tmp/ab/corepay-bg 3000 600000 true COREPAY_AB_FG=1
  echo "== bg$r $(date +%T)"; /tmp/mon/run.sh bg-bg$r /tmp/ab/corepay-bg 3000 600000 true X=1
done
echo DONE
