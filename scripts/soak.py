"""Helpers of scripts/soak.sh (standard library only): the NDJSON feed, the directory producer, the
ingest load, and the analysis of a finished run. Each writes what it did into the run directory so
that `analyse` can check that nothing was lost or counted twice.

    soak.py feed RUN PORT RATE          serve /feed?after=N, RATE new records per second
    soak.py producer RUN RATE SECS      write RATE files per second into RUN/inbox, like cp does
    soak.py ingest RUN URL RATE SECS    POST RATE V2 requests per second (keep-alive)
    soak.py analyse RUN                 check the run, print the figures, exit 1 on failure
"""

import http.client
import http.server
import json
import os
import random
import re
import struct
import sys
import threading
import time
import urllib.parse

SHAPE = (1, 1, 28, 28)
N = 784


def sample(rng):
    return [round(rng.random(), 3) for _ in range(N)]


def npy(values):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 28, 28), }"
    header += " " * (64 - (10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + struct.pack("<%df" % N, *values)


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def feed(run, port, rate):
    """Records f-1, f-2, … appear at `rate` per second until RUN/stop exists; every 97th has a
    wrong shape (rejected, still counted). GET /feed?after=N answers up to 200 records after N."""
    rng = random.Random(1)
    bodies = [json.dumps(sample(rng)) for _ in range(16)]
    start = time.time()
    state = {"produced": 0}
    lock = threading.Lock()

    def produced():
        with lock:
            if not os.path.exists(os.path.join(run, "stop")):
                state["produced"] = int((time.time() - start) * rate)
                write_json(os.path.join(run, "feed.json"), state)
            return state["produced"]

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            after = int(q.get("after", ["0"])[0])
            last = min(produced(), after + 200)
            lines = []
            for n in range(after + 1, last + 1):
                shape = [1, 1, 28, 28] if n % 97 else [1, 1, 27, 29]
                data = bodies[n % len(bodies)] if n % 97 else json.dumps([0.5] * (27 * 29))
                lines.append('{"id": "f-%d", "cursor": %d, "inputs": [{"name": "input", "shape": %s, '
                             '"datatype": "FP32", "data": %s}]}' % (n, n, json.dumps(shape), data))
            body = ("\n".join(lines) + "\n").encode() if lines else b""
            self.send_response(200 if lines else 204)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            # The agent's kill -9 resets its connection: an injected fault, not a feed failure.
            if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
                super().handle_error(request, client_address)

    Server(("127.0.0.1", port), Handler).serve_forever()


def producer(run, rate, secs):
    """Files d-000001.npy, …: most written in place in four chunks with pauses (as cp or scp of a
    slow source), every 10th as .tmp + rename, every 50th garbage (rejected)."""
    rng = random.Random(2)
    inbox = os.path.join(run, "inbox")
    written = []
    t0 = time.time()
    n = 0
    while time.time() - t0 < secs and not os.path.exists(os.path.join(run, "stop")):
        n += 1
        name = "d-%06d.npy" % n
        data = npy(sample(rng)) if n % 50 else b"not an npy file " * 40
        if n % 10 == 0:
            with open(os.path.join(inbox, name + ".tmp"), "wb") as f:
                f.write(data)
            os.rename(os.path.join(inbox, name + ".tmp"), os.path.join(inbox, name))
        else:
            with open(os.path.join(inbox, name), "wb") as f:
                q = len(data) // 4 + 1
                for i in range(0, len(data), q):
                    f.write(data[i:i + q])
                    f.flush()
                    time.sleep(0.02)
        written.append(name)
        if n % 20 == 0:
            write_json(os.path.join(run, "producer.json"), {"written": written})
        time.sleep(max(0.0, t0 + n / rate - time.time()))
    write_json(os.path.join(run, "producer.json"), {"written": written})


def ingest(run, url, rate, secs):
    """Paced POSTs of one digit each; answers counted by status (0 = connection failed)."""
    u = urllib.parse.urlparse(url)
    rng = random.Random(3)
    bodies = [json.dumps({"inputs": [{"name": "input", "shape": list(SHAPE), "datatype": "FP32",
                                      "data": sample(rng)}]}).encode() for _ in range(16)]
    counts = {}
    conn = None
    t0 = time.time()
    n = 0
    while time.time() - t0 < secs and not os.path.exists(os.path.join(run, "stop")):
        n += 1
        try:
            if conn is None:
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
            conn.request("POST", u.path, body=bodies[n % 16], headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            code = r.status
        except (OSError, http.client.HTTPException):
            code = 0
            conn = None
            time.sleep(0.2)
        counts[str(code)] = counts.get(str(code), 0) + 1
        if n % 500 == 0:
            write_json(os.path.join(run, "ingest.json"), counts)
        time.sleep(max(0.0, t0 + n / rate - time.time()))
    write_json(os.path.join(run, "ingest.json"), counts)


def slope(points):
    """Least-squares slope of (t, v) points, per minute."""
    if len(points) < 3:
        return float("nan")
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 60 * sum((t - mt) * (v - mv) for t, v in points) / den if den else float("nan")


def ledger_count(path, prefix):
    """Inputs counted by a dir ledger or feed journal: the T totals plus the S/R lines after them,
    and the ids of those lines (a repeated id would be a double count)."""
    total, ids = 0, []
    for line in open(path).read().splitlines():
        f = line.split("\t")
        if f[0] == "T":
            nums = [int(x) for x in f[1:]]
            total += nums[0] + sum(nums[2:])
        elif f[0] in ("S", "R"):
            total += 1
            ids.append(f[1])
        elif prefix and f[0] == "P":
            pass
    return total, ids


def analyse(run):
    ok = True
    report = {}

    def check(cond, what):
        nonlocal ok
        print(("PASS " if cond else "FAIL ") + what)
        ok &= bool(cond)

    # Every file in done/ or rejected/ exactly once.
    written = json.load(open(os.path.join(run, "producer.json")))["written"]
    inbox = os.path.join(run, "inbox")
    done = sorted(os.listdir(os.path.join(inbox, "done")))
    rejected = sorted(n for n in os.listdir(os.path.join(inbox, "rejected")) if not n.endswith(".reason.txt"))
    left = [n for n in os.listdir(inbox) if os.path.isfile(os.path.join(inbox, n))]
    processing = os.listdir(os.path.join(inbox, ".agent", "processing"))
    finished = done + rejected
    check(sorted(finished) == sorted(written),
          f"dir: {len(written)} files written, {len(done)} in done/, {len(rejected)} in rejected/, each once")
    check(not left and not processing, f"dir: inbox and processing/ empty ({len(left)}, {len(processing)} left)")
    garbage = {n for i, n in enumerate(written, 1) if i % 50 == 0}
    check(set(rejected) == garbage, f"dir: only the {len(garbage)} garbage files rejected")
    counted, _ = ledger_count(os.path.join(inbox, ".agent", "ledger"), False)
    check(counted == len(written), f"dir: the ledger counts {counted} files")
    report["dir"] = {"written": len(written), "done": len(done), "rejected": len(rejected)}

    # Every feed id counted once.
    produced = json.load(open(os.path.join(run, "feed.json")))["produced"]
    journal = os.path.join(run, "feed-state", "journal")
    counted, ids = ledger_count(journal, True)
    cursor = [l.split("\t")[1] for l in open(journal).read().splitlines() if l.startswith("P\t")]
    check(counted == produced, f"feed: {produced} records published, {counted} counted")
    check(len(ids) == len(set(ids)), "feed: no id counted twice in the journal")
    check(cursor and cursor[-1] == str(produced), f"feed: position {cursor[-1] if cursor else None} = last record")
    report["feed"] = {"published": produced, "counted": counted}

    # Ingest: above the scoring rate (503s), the only failures the injected ones.
    counts = json.load(open(os.path.join(run, "ingest.json")))
    report["ingest"] = counts
    check(counts.get("503", 0) > 0, f"ingest: load above the scoring rate ({counts})")
    bad = {k: v for k, v in counts.items() if k not in ("202", "503", "0")}
    check(not bad, f"ingest: no status besides 202, 503 and refused connections during the restart {bad}")

    # Logs: no error; warnings only of the injected kinds.
    levels, messages = {}, {}
    for log in sorted(f for f in os.listdir(run) if f.startswith("agent") and f.endswith(".log")):
        for line in open(os.path.join(run, log), errors="replace"):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            lvl = rec.get("level", "?")
            levels[lvl] = levels.get(lvl, 0) + 1
            if lvl in ("ERROR", "WARN"):
                msg = re.sub(r"\d+", "N", str(rec.get("fields", {}).get("message", "")))[:120]
                messages[(lvl, msg)] = messages.get((lvl, msg), 0) + 1
    report["log_levels"] = levels
    for (lvl, msg), n in sorted(messages.items()):
        print(f"     {lvl} x{n}: {msg}")
    expected_warn = re.compile(r"rejected|not a valid .npy|shape|reload|restart|processing|redeliver|leftover")
    unexpected = [m for (lvl, m) in messages if lvl == "ERROR" or not expected_warn.search(m)]
    check(not unexpected, f"logs: no error, warnings only for injected faults ({len(unexpected)} other)")

    # RSS and fds flat after warm-up, per process (the kill -9 starts a second one).
    rows = [l.split(",") for l in open(os.path.join(run, "samples.csv")).read().splitlines()[1:]]
    by_pid = {}
    for t, pid, rss, fds in rows:
        by_pid.setdefault(pid, []).append((float(t), int(rss), int(fds)))
    report["processes"] = []
    for pid, pts in by_pid.items():
        t0 = pts[0][0]
        warm = [p for p in pts if p[0] - t0 >= 180]
        if len(warm) < 6:
            continue
        rss_slope = slope([(t, r / 1024) for t, r, _ in warm])
        fd_slope = slope([(t, f) for t, _, f in warm])
        rss = [r / 1024 for _, r, _ in warm]
        fds = [f for _, _, f in warm]
        span_min = (warm[-1][0] - warm[0][0]) / 60
        entry = {"pid": pid, "minutes_after_warmup": round(span_min, 1), "rss_mib_min": round(min(rss), 1),
                 "rss_mib_max": round(max(rss), 1), "rss_slope_mib_per_min": round(rss_slope, 3),
                 "fds_min": min(fds), "fds_max": max(fds), "fd_slope_per_min": round(fd_slope, 3)}
        report["processes"].append(entry)
        print(f"     process {pid}: {entry}")
        # Flat: the fitted growth over the segment stays under 5 % of the mean RSS, fds within 8.
        mean = sum(rss) / len(rss)
        check(abs(rss_slope) * span_min < 0.05 * mean, f"rss flat after warm-up (pid {pid})")
        check(max(fds) - min(fds) <= 8, f"fds flat after warm-up (pid {pid})")
    check(report["processes"], "at least one process sampled past warm-up")
    write_json(os.path.join(run, "report.json"), report)
    print("SOAK " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "feed":
        feed(args[0], int(args[1]), float(args[2]))
    elif cmd == "producer":
        producer(args[0], float(args[1]), float(args[2]))
    elif cmd == "ingest":
        ingest(args[0], args[1], float(args[2]), float(args[3]))
    elif cmd == "analyse":
        sys.exit(analyse(args[0]))
    else:
        sys.exit(__doc__)
