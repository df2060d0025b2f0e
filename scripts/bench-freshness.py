#!/usr/bin/env python3
"""Publish -> live aggregate latency, as a dashboard sees it (issue #14, item 4).

Starts a private redis-server and `eventide run` (the repository's pipelines, the ops API on a
free port), puts a background load on the stream with `eventide gen --rate`, and meanwhile
publishes marker events one at a time: each marker is an `order.*` event with an event type of
its own, so it is a new group of `revenue_per_minute`'s open window. After its `XADD` the
aggregates API is polled (`--poll-ms` apart, back to back by default) until the marker's group
shows; the time from just before the `XADD` to the answer that shows it is its latency.

    scripts/bench-freshness.py --eventide target/release/eventide --rate 100000 --markers 300

Prints p50/p90/p99/max per run. Standard library only (a RESP client and http.client).
"""

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Resp:
    """A minimal RESP2 client: enough for XADD and PING."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def command(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind in (b"+", b":"):
            return rest
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(65536)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        raise RuntimeError(f"unexpected reply {line!r}")


def wait_port(port, what, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port}")


def stop(procs):
    """Terminates the processes, last started first; kills one that does not exit in 20 s."""
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def marker_event(n, run_tag):
    now = datetime.now(timezone.utc)
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": f"order.marker.m{run_tag}x{n}",
        "timestamp": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "version": "1.0",
        "data": {"order_id": f"marker-{n}", "customer_id": "marker", "amount": 1.0},
        "metadata": {"correlation_id": str(uuid.uuid4()), "source": "freshness-bench"},
    }


def percentile(sorted_ms, p):
    if not sorted_ms:
        return float("nan")
    k = min(len(sorted_ms) - 1, max(0, round(p / 100 * (len(sorted_ms) - 1))))
    return sorted_ms[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eventide", default="target/release/eventide")
    ap.add_argument("--gen", help="the eventide binary whose `gen` makes the load (default: --eventide)")
    ap.add_argument("--rate", type=float, default=0, help="background load, entries/s (0: none)")
    ap.add_argument("--markers", type=int, default=300)
    ap.add_argument("--poll-ms", type=float, default=0, help="pause between polls (0: back to back)")
    ap.add_argument("--poll-every", type=float, default=0,
                    help="ms: a poll starts every this often, as a dashboard's timer does (one that took "
                         "longer is followed at once); instead of --poll-ms")
    ap.add_argument("--warmup", type=float, default=3, help="seconds of load before the first marker")
    ap.add_argument("--run-arg", action="append", default=[], help="extra argument for eventide run")
    ap.add_argument("--keep-log", help="copy eventide's log here at the end (its checkpoint timings)")
    ap.add_argument("--stages", action="store_true",
                    help="split each marker's latency into stages (eventide's per-batch stage log, "
                         "target eventide::stages) and print their percentiles and the slowest markers' splits")
    ap.add_argument("--log", default="", help="with --stages: more log directives, e.g. ',eventide::window=debug'")
    a = ap.parse_args()

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tmp = tempfile.mkdtemp(prefix="eventide-freshness-")
    rport, hport = free_port(), free_port()
    procs = []
    try:
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", tmp], stdout=subprocess.DEVNULL))
        wait_port(rport, "redis-server")
        url = f"redis://127.0.0.1:{rport}"
        run = subprocess.Popen(
            [a.eventide, "run", "--config", "/dev/null", "--redis-url", url, "--stream", "events",
             "--pipelines", os.path.join(repo, "pipelines"), "--lake", os.path.join(tmp, "lake"),
             "--http-addr", f"127.0.0.1:{hport}", "--block", "100ms", *a.run_arg,
             *(["--log-format", "json", "--log", "info,eventide::stages=trace" + a.log] if a.stages else [])],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "run.log"), "w"))
        procs.append(run)
        wait_port(hport, "eventide's API")
        redis = Resp(rport)
        api = http.client.HTTPConnection("127.0.0.1", hport)
        api.sock = None

        load = None
        if a.rate > 0:
            # Event times are the clock's (a live service's events), so the load is in the same
            # open windows as the markers and the watermark follows the clock.
            load = subprocess.Popen(
                [a.gen or a.eventide, "gen", "--redis-url", url, "--stream", "events", "--events", str(int(a.rate * 3600)),
                 "--rate", str(a.rate), "--live-times", "--seed", "7"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(load)
        time.sleep(a.warmup)

        tag = random.randrange(1 << 30)
        lat = []
        marks = []  # (entry id, unix s before the XADD, unix s of the answer that showed it)
        polls = 0
        added0, t_start = int(redis.command("XLEN", "events")), time.perf_counter()
        for n in range(a.markers):
            ev = marker_event(n, tag)
            minute = ev["timestamp"][:16] + ":00Z"
            path = f"/api/pipelines/revenue_per_minute/windows?from={minute}&limit=100000"
            body = json.dumps(ev, separators=(",", ":"))
            t0, wall0 = time.perf_counter(), time.time()
            entry_id = redis.command("XADD", "events", "*", "data", body)
            want = ev["event_type"].encode()
            # The timer's phase is the marker's: a dashboard's is unrelated to when events come.
            next_poll = t0 + random.uniform(0, a.poll_every / 1000)
            while True:
                if a.poll_every:
                    pause = next_poll - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    next_poll = max(next_poll + a.poll_every / 1000, time.perf_counter())
                api.request("GET", path)
                resp = api.getresponse()
                data = resp.read()
                polls += 1
                if resp.status == 200 and want in data:
                    lat.append((time.perf_counter() - t0) * 1000)
                    marks.append((entry_id.decode(), wall0, time.time()))
                    break
                if time.perf_counter() - t0 > 10:
                    sys.exit(f"marker {n} not visible after 10 s (status {resp.status})")
                if a.poll_ms:
                    time.sleep(a.poll_ms / 1000)
            time.sleep(random.uniform(0.01, 0.03))
        achieved = (int(redis.command("XLEN", "events")) - added0 - a.markers) / (time.perf_counter() - t_start)
        lat.sort()
        if load and load.poll() is not None:
            print("warning: the background load ended before the markers did", file=sys.stderr)
        print(
            f"rate {a.rate:.0f}/s (published {achieved:.0f}/s), {len(lat)} markers, {polls / len(lat):.1f} polls each: "
            f"p50 {percentile(lat, 50):.1f} ms, p90 {percentile(lat, 90):.1f} ms, "
            f"p99 {percentile(lat, 99):.1f} ms, max {lat[-1]:.1f} ms"
        )
    finally:
        stop(procs)
        if a.stages and lat:
            print_stages(os.path.join(tmp, "run.log"), marks)
        if a.keep_log:
            shutil.copy(os.path.join(tmp, "run.log"), a.keep_log)
        shutil.rmtree(tmp, ignore_errors=True)


def parse_id(text):
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def print_stages(log_path, marks):
    """Splits each marker's latency (XADD -> the answer that showed it) into: until its read
    returned, waiting in the reader's channel, its batch's processing, and until the live
    request that showed it reached the processor (poll wait), then that request and the HTTP
    answer. Times from eventide's stage log (unix µs) and this client's clock (same machine)."""
    batches, answers, turns = [], [], []
    with open(log_path) as f:
        for line in f:
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            if rec.get("message") == "Batch processed.":
                batches.append((parse_id(rec["first"]), parse_id(rec["last"]), rec["read_returned_us"],
                                rec["dequeued_us"], rec["done_us"], rec["entries"]))
            elif rec.get("message") == "Live request answered.":
                answers.append((rec["got_us"], rec["us"]))
            elif rec.get("message") in ("Loop turn.", "Lake query."):
                turns.append((rec["what"], rec["started_us"], rec["started_us"] + rec["us"]))
            elif rec.get("message") == "Window job.":
                turns.append(("window:" + rec["what"], rec["started_us"], rec["started_us"] + rec["us"]))
    answers.sort()
    got = [g for g, _ in answers]
    import bisect
    spans = sorted([(a, z, w) for w, a, z in turns] + [(bb[3], bb[4], "batches") for bb in batches]
                   + [(g, g + u, "answers") for g, u in answers])
    span_starts = [a for a, _, _ in spans]
    rows = []
    for entry_id, wall0, wall1 in marks:
        key = parse_id(entry_id)
        b = next((b for b in batches if b[0] <= key <= b[1]), None)
        if b is None:
            continue
        xadd_us, seen_us = wall0 * 1e6, wall1 * 1e6
        read_ret, deq, done, n = b[2], b[3], b[4], b[5]
        k = bisect.bisect_left(got, done)
        got_us, ans_us = answers[k] if k < len(answers) else (seen_us, 0)
        # What kept the loop busy while this marker was on its way (ms of overlap).
        busy = {}
        lo = bisect.bisect_left(span_starts, xadd_us - 1e6)
        hi = bisect.bisect_right(span_starts, seen_us)
        for a, z, what in spans[lo:hi]:
            if what == "batches" and (a, z) == (deq, done):
                continue  # the marker's own batch
            o = min(z, seen_us) - max(a, xadd_us)
            if o > 0:
                busy[what] = busy.get(what, 0) + o / 1e3
        rows.append({
            "busy": busy,
            "total": (seen_us - xadd_us) / 1e3,
            "read": (read_ret - xadd_us) / 1e3 if read_ret else float("nan"),
            "queued": (deq - read_ret) / 1e3 if read_ret else float("nan"),
            "process": (done - deq) / 1e3,
            "poll_wait": (got_us - done) / 1e3,
            "answer": ans_us / 1e3,
            "http": (seen_us - got_us - ans_us) / 1e3,
            "batch": n,
        })
    if not rows:
        print("stages: no marker matched a logged batch")
        return
    keys = ["total", "read", "queued", "process", "poll_wait", "answer", "http", "batch"]
    print(f"stages of {len(rows)} markers (ms; batch = entries in the marker's batch):")
    for p in (50, 90, 99):
        vals = [percentile(sorted(r[k] for r in rows), p) for k in keys]
        print(f"  p{p}: " + ", ".join(f"{k} {v:.1f}" for k, v in zip(keys, vals)))
    print("  the slowest 5%, stage by stage (mean):")
    slow = sorted(rows, key=lambda r: r["total"])[-max(1, len(rows) // 20):]
    print("    " + ", ".join(f"{k} {sum(r[k] for r in slow) / len(slow):.1f}" for k in keys))
    kinds = sorted({k for r in rows for k in r["busy"]})
    jobs = {}
    for what, a, z in turns:
        if what.startswith("window:"):
            jobs.setdefault(what[7:], []).append((z - a) / 1e3)
    if jobs:
        print("  window thread jobs (ms): " + "; ".join(
            f"{k} n={len(v)} p50 {percentile(sorted(v), 50):.1f} p90 {percentile(sorted(v), 90):.1f} max {max(v):.1f}"
            for k, v in sorted(jobs.items())))
    print("  busy while a marker was on its way, mean ms (all / the slowest 5%; window:* is the window thread, "
          "the rest the loop):")
    print("    " + ", ".join(
        f"{k} {sum(r['busy'].get(k, 0) for r in rows) / len(rows):.1f} / "
        f"{sum(r['busy'].get(k, 0) for r in slow) / len(slow):.1f}" for k in kinds))


if __name__ == "__main__":
    main()
