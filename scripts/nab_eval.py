#!/usr/bin/env python3
"""NAB-style evaluation of herd's single-series detection.

Each labelled series becomes one single-replica image in herd's native line format
(metric `value`), all series are replayed together through `herd replay`, and the
opening line of every incident (seq 0) is a detection. Scoring follows the Numenta
Anomaly Benchmark's standard profile: the first 15 % of each file (at most 750 rows) is
probation; in a window only the earliest detection counts, rewarded by a scaled sigmoid
from ~+1 at the window's start to 0 at its end; a detection outside every window costs
0.11 (less shortly after a window); a missed window costs 1. Scores are normalised so
that 0 is a detector that never fires and 100 one that detects every window at its start.

The data is not part of the project (its README forbids copying it in); point --data at
it. `--split` reports the even- and odd-numbered series apart, so figures can be read
on series that were not looked at while tuning.

    python3 scripts/nab_eval.py --data ../shared/data/nab-tuning --herd target/release/herd
"""
import argparse
import csv
import datetime as dt
import json
import math
import os
import subprocess
import sys
import tempfile

TP, FP, FN = 1.0, 0.11, 1.0


def parse_ts(s):
    return dt.datetime.strptime(s, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def scaled_sigmoid(y):
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def score_series(times, windows, detections):
    """NAB's sweep over one file. times: row timestamps; windows: [(start, end)]."""
    n = len(times)
    probation = min(int(math.floor(0.15 * n)), 750)
    idx = {t: i for i, t in enumerate(times)}
    win_idx = []
    for s, e in windows:
        si = min(range(n), key=lambda i: abs((times[i] - s).total_seconds()))
        ei = min(range(n), key=lambda i: abs((times[i] - e).total_seconds()))
        win_idx.append((si, ei))
    det_rows = sorted({idx[t] for t in detections if t in idx})
    raw = 0.0
    hit = [False] * len(win_idx)
    for i in det_rows:
        if i < probation:
            continue
        inside = [k for k, (s, e) in enumerate(win_idx) if s <= i <= e]
        if inside:
            k = inside[0]
            if hit[k]:
                continue
            hit[k] = True
            s, e = win_idx[k]
            width = e - s + 1
            pos = -(e - i + 1) / width
            raw += scaled_sigmoid(pos) * TP
        else:
            before = [(s, e) for (s, e) in win_idx if e < i]
            if before:
                s, e = before[-1]
                width = max(e - s, 1)
                raw += scaled_sigmoid(abs(e - i) / width) * FP
            else:
                raw += -1.0 * FP
    raw -= FN * sum(1 for h in hit if not h)
    perfect = sum(scaled_sigmoid(-1.0) * TP for _ in win_idx)
    null = -FN * len(win_idx)
    return raw, perfect, null, sum(hit), len(win_idx), sum(1 for i in det_rows if i >= probation)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--herd", default="target/release/herd")
    ap.add_argument("--config", help="herd configuration file")
    ap.add_argument("--split", action="store_true", help="also report even/odd series apart")
    ap.add_argument("--json", help="write per-series results here")
    args = ap.parse_args()

    windows = json.load(open(os.path.join(args.data, "windows.json")))
    series = sorted(windows)
    tmp = tempfile.mkdtemp(prefix="herd-nab-")
    native = os.path.join(tmp, "nab.jsonl")
    times_of = {}
    with open(native, "w") as out:
        for name in series:
            cid = "nab-" + name.replace("/", "-").replace(".csv", "")
            ts = []
            with open(os.path.join(args.data, "data", name)) as f:
                for row in csv.DictReader(f):
                    t = parse_ts(row["timestamp"])
                    ts.append(t)
                    out.write(json.dumps({
                        "ts": iso(t), "container_id": cid, "container_name": cid,
                        "image": "nab/" + cid, "metrics": {"value": float(row["value"])},
                    }) + "\n")
            times_of[cid] = (name, ts)
    cmd = [args.herd, "replay", "--quiet", native]
    if args.config:
        cmd[2:2] = ["--config", args.config]
    alerts = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    det = {}
    for line in alerts.splitlines():
        a = json.loads(line)
        if a["seq"] == 0:
            t = dt.datetime.fromisoformat(a["ts"].replace("Z", "+00:00")).replace(microsecond=0)
            det.setdefault(a["container_id"], []).append(t)

    rows = []
    for cid, (name, ts) in times_of.items():
        wins = [(dt.datetime.fromisoformat(s.replace(" ", "T")).replace(tzinfo=dt.timezone.utc),
                 dt.datetime.fromisoformat(e.replace(" ", "T")).replace(tzinfo=dt.timezone.utc))
                for s, e in windows[name]]
        raw, perfect, null, hits, nwin, ndet = score_series(ts, wins, det.get(cid, []))
        rows.append({"series": name, "raw": raw, "perfect": perfect, "null": null,
                     "windows": nwin, "detected": hits, "detections": ndet})

    def total(rs):
        raw = sum(r["raw"] for r in rs)
        perfect = sum(r["perfect"] for r in rs)
        null = sum(r["null"] for r in rs)
        score = 100.0 * (raw - null) / (perfect - null) if perfect != null else 0.0
        return score, sum(r["detected"] for r in rs), sum(r["windows"] for r in rs), sum(r["detections"] for r in rs)

    print(f"{'series':58} {'windows':>7} {'hit':>4} {'dets':>5} {'raw':>7}")
    for r in rows:
        print(f"{r['series']:58} {r['windows']:7d} {r['detected']:4d} {r['detections']:5d} {r['raw']:7.2f}")
    s, hit, win, dets = total(rows)
    print(f"\nNAB standard-profile score, all {len(rows)} series: {s:.1f}  ({hit}/{win} windows detected, {dets} detections after probation)")
    if args.split:
        for parity, label in ((0, "even"), (1, "odd")):
            part = [r for i, r in enumerate(rows) if i % 2 == parity]
            s, hit, win, dets = total(part)
            print(f"  {label}-numbered series ({len(part)}): {s:.1f}  ({hit}/{win} windows, {dets} detections)")
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    sys.exit(main())
