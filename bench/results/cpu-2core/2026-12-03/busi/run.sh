#!/bin/bash
# BUSI evals, defaults only (each set: one `hepascope eval` with --data and --out alone).
# full: at 67f434e (its defaults are unchanged since: input 128, stem stride 4, no weight
#       average); roi64 and roi32: again on 2026-12-03 at 33f1241 (main before the layers merge)
#       with the stem stride the data chooses (64x64 input ->
#       a 3x3 stride-2 stem, datasets.probe.stem_stride), nice -n 2, the machine otherwise
#       running a test suite at nice 15 (roi64: 1131 s, roi32: 705 s).
for set in roi64 roi32 full; do
  hepascope eval --data /tmp/busi/sets/$set/manifest.csv --out out/busi-$set > $set.log 2>&1
done
