#!/bin/bash
# usage: cpu.sh PID SECONDS — per-thread user/sys CPU (ms) over the interval
pid=$1; s=$2
declare -A u0 s0
for t in /proc/$pid/task/*; do id=${t##*/}; read -r u y < <(awk '{print $14,$15}' $t/stat); u0[$id]=$u; s0[$id]=$y; done
sleep $s
for t in /proc/$pid/task/*; do id=${t##*/}; read -r u y < <(awk '{print $14,$15}' $t/stat); c=$(cat $t/comm); echo "$id $c user_ms=$(( (u-${u0[$id]:-0})*10 )) sys_ms=$(( (y-${s0[$id]:-0})*10 ))"; done | grep -v "user_ms=0 sys_ms=0"
