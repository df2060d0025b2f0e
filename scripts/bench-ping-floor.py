#!/usr/bin/env python3
"""The floor under the freshness figures (issue #14, item 4): how long a bare Redis `PING`
round trip takes from the same kind of client as `bench-freshness.py`, on this machine, with
Redis alone, with the generator's background load, and with the load and `eventide run`.

    scripts/bench-ping-floor.py --eventide target/release/eventide --rate 65000

Each setting starts its own redis-server on a free port and sends 2,000 PINGs 1-5 ms apart;
prints p50/p90/p99/max per setting. Standard library only (the RESP client of
bench-freshness.py).
"""

import argparse
import importlib.util
import os
import random
import shutil
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("freshness", os.path.join(HERE, "bench-freshness.py"))
fresh = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fresh)


def measure(a, with_load, with_eventide):
    tmp = tempfile.mkdtemp(prefix="eventide-ping-")
    port = fresh.free_port()
    procs = [subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)]
    try:
        fresh.wait_port(port, "redis-server")
        url = f"redis://127.0.0.1:{port}"
        if with_eventide:
            hport = fresh.free_port()
            procs.append(subprocess.Popen(
                [a.eventide, "run", "--config", "/dev/null", "--redis-url", url, "--stream", "events",
                 "--pipelines", os.path.join(os.path.dirname(HERE), "pipelines"), "--lake", os.path.join(tmp, "lake"),
                 "--http-addr", f"127.0.0.1:{hport}", "--block", "100ms"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            fresh.wait_port(hport, "eventide's API")
        if with_load:
            procs.append(subprocess.Popen(
                [a.eventide, "gen", "--redis-url", url, "--stream", "events", "--events", str(int(a.rate * 3600)),
                 "--rate", str(a.rate), "--live-times", "--seed", "7"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(a.warmup)
        redis = fresh.Resp(port)
        lat = []
        for _ in range(a.pings):
            t = time.perf_counter()
            redis.command("PING")
            lat.append((time.perf_counter() - t) * 1000)
            time.sleep(random.uniform(0.001, 0.005))
        lat.sort()
        return lat
    finally:
        fresh.stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eventide", default="target/release/eventide")
    ap.add_argument("--rate", type=float, default=65000, help="background load, entries/s")
    ap.add_argument("--pings", type=int, default=2000)
    ap.add_argument("--warmup", type=float, default=3)
    a = ap.parse_args()
    for name, load, ev in [("redis alone", False, False), (f"+ gen {a.rate:.0f}/s", True, False),
                           (f"+ gen {a.rate:.0f}/s + eventide run", True, True)]:
        lat = measure(a, load, ev)
        p = lambda q: fresh.percentile(lat, q)  # noqa: E731
        print(f"{name}: PING p50 {p(50):.2f} ms, p90 {p(90):.2f} ms, p99 {p(99):.2f} ms, max {lat[-1]:.2f} ms")


if __name__ == "__main__":
    main()
