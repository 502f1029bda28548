#!/bin/bash
# BUSI evals on main's code (worktree evalrun), defaults only
source <a venv with hepascope at 67f434e>
cd /work/busi
for set in roi64 roi32 full; do
  echo "start $set $(date -Is) $(cat /proc/loadavg)" >> runs.log
  /usr/bin/time -f "%e s wall" nice -n 5 hepascope eval --data /tmp/busi/sets/$set/manifest.csv --out /work/busi/$set > /work/busi/$set.log 2>&1
  echo "end $set rc=$? $(date -Is) $(cat /proc/loadavg)" >> runs.log
done
