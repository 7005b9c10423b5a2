#!/usr/bin/env python3
"""Measure sync_stock against the sandbox: requests, writes, wall time, CPU and memory.

Not a test: it prints one table and asserts nothing about seconds. `--quick` (CI) uses small
catalogues so that it never rots; without it, the figures in docs/performance.md.

Scenarios:
- latency: 150 ms added to every request. The lower bound is the critical path of the reads
  at the concurrency we chose, plus the writes: max(InSales pages x L, Kaktus critical path)
  + write calls x L. InSales' keyset walk is sequential by design (each page starts where the
  last ended: that is what keeps it consistent while the shop changes); Kaktus pages are
  numbered, so once page 0 gives recordsTotal the rest go 4 at a time: 1 + ceil((pages-1)/4).
- naive: the original design on the same catalogue: page-numbered reads, one after another,
  and every matched variant written in one call, every run.
- scale: 25,000 products x 4 variants on each side, no latency, a full walk in steady state (a
  first run wrote what differed; the measured runs find nothing to write but load and save the
  state, holds included); the client's CPU time (in this process, best of three) against
  json.loads alone on the same response bodies, with the share of its HTTP client measured
  apart; its peak RSS; and the state file's load and save, against the same rows kept in SQLite
  (load them all, update the 1% that changed), which is how the state's format was chosen.
- budget: 30 simulated minutes (the sandbox clock moves 60 s a run, and so does the state's
  age) of a 100,000-variant shop in incremental mode, with Kaktus stock moving every minute;
  the share of InSales' 500 requests / 5 minutes used in the busiest 5-minute window.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import itertools
import json
import math
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sandbox  # noqa: E402
import sync_stock  # noqa: E402

LATENCY = 0.150
LAST_FIGURES = Path(__file__).with_name("benchmark_last.json")
COMPARED = {"insales": "InSales req", "kak2c": "Kaktus req", "wall": "wall s", "cpu": "CPU s",
            "rss": "peak RSS MB"}


# The child reports its own peak memory (VmHWM) as it ends: the ru_maxrss that wait4() gives
# would count the parent's peak too, as a child started with vfork() inherits it at exec().
CHILD = """import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    peak = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")]
    print("peak_rss_kb", *peak, file=sys.stderr)
"""


def run_client(env: dict, *args: str) -> dict:
    """Run sync_stock.py in a child process; return its summary with its CPU and peak RSS."""
    empty = Path(env["SYNC_LOCK_FILE"]).with_name("empty.env")
    empty.write_text("")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(ROOT / "sync_stock.py"), "--env-file", str(empty),
         "--json", "-q", *args], env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = []
    reader = threading.Thread(target=lambda: out.append(child.stdout.read()))
    reader.start()
    _, status, usage = os.wait4(child.pid, 0)
    reader.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    err = child.stderr.read().decode()
    if child.returncode not in (0, 1):
        raise SystemExit(f"sync_stock exited {child.returncode}: {err}")
    summary = json.loads(out[0].decode().strip().splitlines()[-1])
    summary["cpu_s"] = usage.ru_utime + usage.ru_stime
    summary["rss_mb"] = int(err.split("peak_rss_kb")[-1]) / 1024
    return summary


def run_in_process(env: dict, *args: str) -> float:
    """Run main() here (the sandbox is another process); return the CPU seconds it used."""
    folder = Path(env["SYNC_LOCK_FILE"]).parent
    (folder / "empty.env").write_text("")
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        started = time.process_time()  # user + system, all threads of this process
        with contextlib.redirect_stdout(io.StringIO()):
            sync_stock.main(["--env-file", str(folder / "empty.env"), "-q", *args])
        return time.process_time() - started
    finally:
        os.environ.clear()
        os.environ.update(saved)


def row(name, summary, writes, bound=None, note="", variants=0):
    wall = summary["duration_s"]
    return {"scenario": name, "insales": summary["requests"]["insales"],
            "kak2c": summary["requests"]["kak2c"], "writes": writes, "wall": wall,
            "bound": bound, "ratio": wall / bound if bound else None,
            "cpu": summary.get("cpu_s"), "rss": summary.get("rss_mb"), "note": note,
            "variants": variants}


def scenario_latency(products: int, sizes: int, folder: str) -> tuple:
    """Our run and the naive one on the same catalogue, 150 ms a request."""
    with sandbox.Sandbox.sample(products=products, sizes=sizes, quirks=False, differ=0.1) as box:
        env = {**box.env(folder), "SYNC_MODE": "full"}
        run_client(env, "--dry-run")  # log in once: a cron run finds a cached token
        box.insales.latency = box.kak2c.latency = LATENCY
        box.insales.log.clear()
        box.kak2c.log.clear()
        ours = run_client(env)
        write_calls = len(box.insales.calls("PUT"))
        insales_pages = len(box.insales.calls("GET"))
        kak2c_pages = len(box.kak2c.calls("GET"))
        critical = max(insales_pages, 1 + math.ceil((kak2c_pages - 1) / sync_stock.KAKTUS_THREADS))
        bound = (critical + write_calls) * LATENCY
        mine = row("latency 150 ms", ours, f"{write_calls} ({ours['updated']} variants)", bound,
                   f"{products * sizes} variants", variants=ours["updated"])
        for variant in box.insales.all_variants()[::10]:  # undo some, so both runs have work
            variant["quantity"] += 1
        naive = run_naive(box)
    return mine, naive


def run_naive(box) -> dict:
    """The original design: page-numbered reads, every matched variant in one write call."""
    started = time.monotonic()
    auth = (box.insales.key, box.insales.password)
    counts = {"insales": 0, "kak2c": 0}
    variants, page = [], 1
    while True:
        counts["insales"] += 1
        chunk = requests.get(f"{box.insales.url}/admin/products.json", auth=auth, timeout=60,
                             params={"page": page, "per_page": 250}).json()
        variants += [v for p in chunk for v in sync_stock.parse_insales_product(
            p, ("quantity", "barcode", "sku"), [])]
        if len(chunk) < 250:
            break
        page += 1
    bodies = fetch_kak2c_bodies(box.kak2c.url, box.kak2c.login, box.kak2c.password)
    counts["kak2c"] += 1 + len(bodies)
    pages = [json.loads(body)["products"] for body in bodies]
    index = sync_stock.index_kaktus(pages, sync_stock.TOTAL)
    matched = [{"id": v.id, "quantity": index.quantities[v.barcode]} for v in variants
               if index.quantities.get(v.barcode) is not None]
    counts["insales"] += 1
    answer = requests.put(f"{box.insales.url}/admin/products/variants_group_update.json",
                          json={"variants": matched}, auth=auth, timeout=60)
    summary = {"requests": counts, "duration_s": time.monotonic() - started}
    return row("naive, same shop", summary, f"1 ({len(matched)} variants)",
               note=f"one call: HTTP {answer.status_code} (the 100-variant cap)",
               variants=len(matched))


@contextlib.contextmanager
def big_sandbox(products: int, sizes: int, folder: str, name: str):
    """A big, clean sample shop served by a process of its own; yield its settings, with files
    named after the scenario. Its Kaktus stock is stockTotal alone, the layout every round has
    measured, so that the figures compare (the sandbox's own default has all three figures)."""
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "sandbox.py"), "--products", str(products),
         "--sizes", str(sizes), "--plain", "--rate-limit", "1000000", "--kaktus-stock", "total"],
        stdout=subprocess.PIPE, text=True)
    try:
        env = json.loads(server.stdout.readline())
        env.update(KAK2C_TOKEN_FILE=f"{folder}/{name}_token",
                   SYNC_LOCK_FILE=f"{folder}/{name}.lock",
                   SYNC_STATE_FILE=f"{folder}/{name}_state.json")
        yield env
    finally:
        server.terminate()
        server.wait()


def scenario_scale(products: int, sizes: int, folder: str) -> dict:
    """A big catalogue without latency: client CPU against json.loads alone, and peak RSS."""
    with big_sandbox(products, sizes, folder, "scale") as env:
        env["SYNC_MODE"] = "full"
        run_client(env)  # the first install: writes what differs, keeps the state
        ours = run_client(env)  # steady state, a child of its own for its peak RSS
        bodies, walk = fetch_bodies(env)
        # CPU time here, without interpreter start-up; the best of three, as this machine's
        # other work only ever adds to a figure
        cpu = min(run_in_process(env) for _ in range(3))
        http = min(http_client_cpu(env, walk, len(bodies) - len(walk)) for _ in range(3))
        settings = sync_stock.load_settings(env)
        # Pairs taken one right after the other, and the median of their ratios: whatever else
        # this machine does weighs on both halves of a pair alike.
        pairs = [(pipeline_cpu(settings, bodies[:len(walk)], bodies[len(walk):]),
                  json_loads_cpu(bodies)) for _ in range(7)]
        ratios = sorted(ours / theirs for ours, theirs in pairs)
        pipeline, loads = (min(side) for side in zip(*pairs))
        stores = compare_state_stores(settings)
    ours["cpu_s"] = cpu
    note = (f"{products * sizes} variants, {sum(map(len, bodies)) / 1e6:.0f} MB of JSON in "
            f"{len(bodies)} answers; json.loads alone {loads:.2f} s CPU; parse, index, join, "
            f"plan and state {pipeline:.2f} s: {statistics.median(ratios):.2f}x (median of 7 "
            f"pairs; {ratios[0]:.2f}-{ratios[-1]:.2f}); the whole run in this "
            f"process {cpu:.2f} s ({cpu / loads:.2f}x), of which the HTTP client (requests, "
            f"urllib3, its threads) {http:.2f} s; peak RSS {ours['rss_mb']:.0f} MB, "
            f"{ours['rss_mb'] / 400:.2f}x the 400 MB allowed; {stores}")
    return row("scale, no latency", ours, f"{ours['updated']} (steady state)", note=note)


def pipeline_cpu(settings, insales_bodies: list, kak2c_bodies: list) -> float:
    """CPU of parse, index, join, plan and state on bodies already received, in one thread as
    the run does them (cyclic GC paused): what the 2x json.loads target is about, free of the
    HTTP client's and the threads' share, which this machine's load makes vary most."""
    publishing = sync_stock.Publishing(settings.stock_buffer, settings.hold_minutes * 60)
    other_barcodes: list = []
    started = time.process_time()
    with sync_stock.paused_gc():
        variants = {variant.id: variant for body in insales_bodies for product in json.loads(body)
                    for variant in sync_stock.parse_insales_product(
                        product, settings.insales_fields, other_barcodes)}
        index = sync_stock.index_kaktus((json.loads(body)["products"] for body in kak2c_bodies),
                                       settings.stock_rule, settings.kaktus_barcode_field)
        state = sync_stock.load_state(settings)
        plan = sync_stock.plan_updates(sync_stock.PlanInputs(
            variants.values(), index, state.tracks, time.time(), publishing, state.read_at))
        read_at = {variant.id: variant.updated_at for variant, _ in plan.updates}
        sync_stock.write_state(settings, plan.tracks, read_at, None)
    return time.process_time() - started


def compare_state_stores(settings) -> str:
    """CPU of the state as kept (a JSON file, rewritten whole) against the same rows in SQLite
    (rows updated in place), each loading every track and writing the 1% that changed: what one
    run pays for each, best of three."""
    tracks = sync_stock.load_state(settings).tracks
    moved = {i: t._replace(seen=t.seen + 1) for i, t in list(tracks.items())[::100]}

    def as_json() -> float:
        started = time.process_time()
        loaded = sync_stock.load_state(settings)
        sync_stock.write_state(settings, {**loaded.tracks, **moved}, loaded.read_at, None)
        return time.process_time() - started

    with tempfile.TemporaryDirectory() as folder:
        database = sqlite3.connect(Path(folder) / "state.sqlite3")
        database.execute("CREATE TABLE tracks (id INTEGER PRIMARY KEY, seen INTEGER, "
                         "announced INTEGER, stock INTEGER, holds TEXT)")
        with database:
            database.executemany("INSERT INTO tracks VALUES (?, ?, ?, ?, '[]')",
                                 [(i, *t[:3]) for i, t in tracks.items()])

        def as_sqlite() -> float:
            started = time.process_time()
            loaded = {row[0]: sync_stock.Track(*row[1:4], tuple(json.loads(row[4])))
                      for row in database.execute("SELECT * FROM tracks")}
            changed = [(*t[:3], i) for i, t in moved.items() if loaded[i] != t]
            with database:
                database.executemany("UPDATE tracks SET seen = ?, announced = ?, stock = ? "
                                     "WHERE id = ?", changed)
            return time.process_time() - started

        json_cpu, sqlite_cpu = min(as_json() for _ in range(3)), min(as_sqlite() for _ in range(3))
        database.close()
    size = settings.state_file.stat().st_size / 1e6
    return (f"state of {len(tracks)} tracks, 1% changed: JSON file ({size:.1f} MB) load + "
            f"rewrite {json_cpu:.3f} s CPU, SQLite load + update in place {sqlite_cpu:.3f} s")


def json_loads_cpu(bodies: list) -> float:
    started = time.process_time()
    for body in bodies:
        json.loads(body)
    return time.process_time() - started


def fetch_bodies(env: dict) -> tuple:
    """Read once more what a full run reads: (raw bodies, InSales query parameters page by page)."""
    auth = (env["INSALES_API_KEY"], env["INSALES_API_PASSWORD"])
    bodies, walk, since, from_id = [], [], sync_stock.WALK_START, 0
    while True:
        walk.append({"updated_since": since, "from_id": from_id,
                     "per_page": sync_stock.INSALES_PAGE, "page": 1})
        body = requests.get(f"{env['INSALES_URL']}/admin/products.json", auth=auth, timeout=60,
                            params=walk[-1]).content
        bodies.append(body)
        page = json.loads(body)
        if not page:  # the walk ends on an empty page, as the run's does
            break
        since, from_id = page[-1]["updated_at"], page[-1]["id"]
    return bodies + fetch_kak2c_bodies(env["KAK2C_URL"], env["KAK2C_LOGIN"],
                                       env["KAK2C_PASSWORD"]), walk


def http_client_cpu(env: dict, walk: list, kak2c_pages: int) -> float:
    """CPU seconds of the run's requests alone, through sync_stock's Api as the run sends them
    (the InSales walk in one thread, Kaktus pages a few at a time): bodies received, not parsed."""
    settings = sync_stock.load_settings(env)
    insales, kak2c = sync_stock.make_apis(settings, sync_stock.RetryPolicy(), time.time)
    token = sync_stock.KaktusToken(kak2c, settings.kaktus_credentials, settings.token_file)
    token.current()  # the cached token of a cron run
    started = time.process_time()
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(sync_stock.KAKTUS_THREADS) as pool:
        walking = reader.submit(lambda: [insales.request("GET", "/admin/products.json", params=p)
                                         for p in walk])
        list(pool.map(functools.partial(sync_stock.fetch_kaktus_page, kak2c, token),
                      range(kak2c_pages)))
        walking.result()
    return time.process_time() - started


def fetch_kak2c_bodies(url: str, login: str, password: str) -> list:
    """Log in and read Kaktus pages one after another, as plain clients do; return the bodies."""
    token = requests.post(f"{url}/api/lite/auth", timeout=60, json={
        "login": login, "password": password}).json()["access_token"]
    bodies, held = [], 0
    for number in itertools.count():
        body = requests.get(f"{url}/api/lite/products", params={"page": number},
                            headers={"Authorization": f"Bearer {token}"}, timeout=60).content
        bodies.append(body)
        answer = json.loads(body)
        held += len(answer["products"])
        if not answer["products"] or held >= answer["recordsTotal"]:
            return bodies


def scenario_budget(products: int, sizes: int, folder: str, runs: int = 30) -> dict:
    """Simulated minutes of incremental runs; InSales requests in the busiest 5 minutes."""
    # A shop already in sync (its first install was a run of its own: see the install note);
    # from then on 200 Kaktus stock figures move every minute.
    with sandbox.Sandbox.sample(products=products, sizes=sizes, quirks=False, differ=0,
                                spread=1.0) as box:
        env = {**box.env(folder), "SYNC_MODE": "incremental",
               "SYNC_STATE_FILE": f"{folder}/budget_state.json"}
        state = Path(env["SYNC_STATE_FILE"])
        kaktus = box.kak2c.variants()
        totals, wall = {"insales": 0, "kak2c": 0, "writes": 0}, 0.0
        started = box.clock()
        for minute in range(runs):
            for variant in kaktus[minute * 97 % len(kaktus):][:200]:  # 200 stock moves a minute
                variant["stock"][0]["stockTotal"] += 1
            summary = run_client(env)
            totals["insales"] += summary["requests"]["insales"]
            totals["kak2c"] += summary["requests"]["kak2c"]
            totals["writes"] += summary["updated"]
            wall += summary["duration_s"]
            box.advance(60)
            saved = json.loads(state.read_text())
            saved["catalogue"]["full_walk_at"] -= 60  # the state ages one simulated minute too
            state.write_text(json.dumps(saved))
        first = sum(1 for c in box.insales.log if c["at"] < started + 60)
        times = sorted(c["at"] for c in box.insales.log)
        busiest = max(sum(1 for t in times if start <= t < start + 300) for start in times)
        limited = sum(c["status"] == 429 for c in box.insales.log)
    summary = {"requests": {"insales": totals["insales"], "kak2c": totals["kak2c"]},
               "duration_s": wall}
    note = (f"{runs} runs, {products * sizes} variants: busiest 5 min = {busiest}/500 "
            f"({busiest / 5:.0f}% of the budget), {limited} x 429; the first run (full walk) "
            f"{first} requests, then {(totals['insales'] - first) / (runs - 1):.1f} a run")
    return row(f"budget, {runs} min", summary, f"{totals['writes']} variants", note=note)


class Watch:
    """sync_stock.py --watch in a child process; its JSON lines as they come, with the time."""

    def __init__(self, env: dict, **settings):
        empty = Path(env["SYNC_LOCK_FILE"]).with_name("empty.env")
        empty.write_text("")
        self.child = subprocess.Popen(
            [sys.executable, str(ROOT / "sync_stock.py"), "--env-file", str(empty), "--json",
             "-q", "--watch"], env={**os.environ, **env, **settings},
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.lines: list = []  # (time.time(), summary)
        self.synced = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.child.stdout:
            with self.synced:
                self.lines.append((time.time(), json.loads(line)))
                self.synced.notify_all()

    def wait_for(self, syncs: int, timeout: float = 600) -> None:
        with self.synced:
            if not self.synced.wait_for(lambda: len(self.lines) >= syncs, timeout):
                raise SystemExit(f"the watch made {len(self.lines)} syncs, not {syncs}")

    def cpu(self) -> float:
        """The child's CPU seconds so far (user + system)."""
        fields = Path(f"/proc/{self.child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.child.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("VmRSS:"))) / 1024

    def stop(self) -> None:
        self.child.terminate()
        self.child.wait(timeout=120)


def percentiles(values: list) -> tuple:
    """The 50th and 95th percentiles."""
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return cuts[9], cuts[18]


def scenario_staleness(products: int, sizes: int, folder: str, seconds: float) -> dict:
    """A watch at the default pace, 150 ms a request, Kaktus figures moving at random: how long
    a change takes to reach InSales; and the once-a-minute run's figure on the same shop."""
    rng = random.Random(5)
    with sandbox.Sandbox.sample(products=products, sizes=sizes, quirks=False, differ=0) as box:
        env = {**box.env(folder), "SYNC_STATE_FILE": f"{folder}/stale_state.json"}
        box.insales.latency = box.kak2c.latency = LATENCY
        by_barcode = {v["barcode"]: v["id"] for v in box.insales.all_variants()}
        kaktus = box.kak2c.variants()
        watcher = Watch(env)
        try:
            watcher.wait_for(1)
            started, changes = time.time(), []
            while time.time() - started < seconds:
                time.sleep(rng.expovariate(1 / 1.5))
                variant = rng.choice(kaktus)
                stock = max(0, variant["stock"][0]["stockTotal"] + rng.choice((-2, -1, 1, 3)))
                box.kak2c.set_stock(variant["barcode"], stock)
                changes.append((time.time(), by_barcode[variant["barcode"]], stock))
            time.sleep(15)  # the last changes land
            ended = time.time()
        finally:
            watcher.stop()
        stale = staleness(changes, box.insales.calls("PUT"))
        minutes = (ended - started) / 60
        rates = [sum(started <= c["at"] < ended for c in api.log) / minutes
                 for api in (box.insales, box.kak2c)]
        # The once-a-minute run on the same shop: a change waits for the next minute's start
        # (the sandbox's clock plays the minute), then for the run to write it.
        box.insales.latency = box.kak2c.latency = LATENCY
        box.kak2c.set_stock(kaktus[0]["barcode"], kaktus[0]["stock"][0]["stockTotal"] + 1)
        box.insales.log.clear()
        run_started = time.time()
        run_client(env)
        write = box.insales.calls("PUT")[0]["at"] - run_started
        minute = [60 * math.ceil(t / 60) - t + write for t in (rng.uniform(0, 3600)
                                                               for _ in range(1000))]
    watch_p50, watch_p95 = percentiles(stale)
    cron_p50, cron_p95 = percentiles(minute)
    note = (f"{products * sizes} variants, SYNC_INTERVAL=10 (default), {len(stale)} Kaktus "
            f"changes over {minutes:.1f} min: a change reached InSales in {watch_p50:.1f} s "
            f"(p50), {watch_p95:.1f} s (p95); the once-a-minute run {cron_p50:.1f} s (p50), "
            f"{cron_p95:.1f} s (p95), its write landing {write:.2f} s after it starts; the "
            f"watch sent {rates[0]:.1f} InSales and {rates[1]:.1f} Kaktus requests a minute")
    summary = {"requests": {"insales": round(rates[0], 1), "kak2c": round(rates[1], 1)},
               "duration_s": None}
    return row("watch staleness", summary, "per minute", note=note)


def staleness(changes: list, puts: list) -> list:
    """Seconds from each Kaktus change to the write that put its figure in InSales; a change
    overtaken by the next one on the same variant before it landed is not counted."""
    landed = [(call["at"], item["id"], item["quantity"]) for call in puts
              for item in json.loads(call["body"])["variants"]]
    result = []
    for number, (at, variant, stock) in enumerate(changes):
        overtaken = next((t for t, v, _ in changes[number + 1:] if v == variant), math.inf)
        write = next((t for t, v, q in landed if v == variant and q == stock and at <= t),
                     math.inf)
        if write < overtaken:
            result.append(write - at)
    return result


def scenario_watch_cpu(products: int, sizes: int, folder: str, syncs: int,
                       quiet: float) -> dict:
    """A watch of a big shop in steady state, its syncs back to back: CPU per sync, and the
    share of one core at the pace it keeps by default (the Kaktus pages at KAK2C_MAX_RPM=120).
    A run first writes what differs; `quiet` seconds later, when InSales' last change is old
    enough that a walk no longer looks at it again, the watch starts."""
    with big_sandbox(products, sizes, folder, "cpu") as env:
        run_client(env)  # the install: what differs is written
        time.sleep(quiet)
        watcher = Watch(env, SYNC_INTERVAL="0.001", KAK2C_MAX_RPM="1000000")
        try:
            watcher.wait_for(2)  # the watch's first full walk, and one sync more
            cpu, since = watcher.cpu(), time.time()
            watcher.wait_for(2 + syncs)
            per_sync = (watcher.cpu() - cpu) / syncs
            wall = (time.time() - since) / syncs
            last = watcher.lines[-1][1]
        finally:
            watcher.stop()
    pages = last["requests"]["kak2c"]
    # the defaults: SYNC_INTERVAL=10, KAK2C_MAX_RPM=120, never past a minute
    pace = min(sync_stock.WATCH_MAX_GAP, max(10.0, pages * 60 / 120))
    note = (f"{products * sizes} variants, {pages} Kaktus pages a sync: {per_sync:.2f} s CPU a "
            f"sync back to back ({wall:.2f} s wall); at its default pace of a sync every "
            f"{pace:g} s, {per_sync / pace:.1%} of one core")
    summary = {"requests": last["requests"], "duration_s": wall}
    return row(f"watch CPU, {products * sizes // 1000}k", summary, "steady state", note=note)


def scenario_watch_memory(folder: str, counts: tuple) -> dict:
    """A small shop watched back to back: the process's RSS after each count of syncs."""
    with sandbox.Sandbox.sample(products=50, sizes=2, quirks=False) as box:
        box.insales.rate_limit = 10**6
        env = {**box.env(folder), "SYNC_STATE_FILE": f"{folder}/memory_state.json"}
        watcher = Watch(env, SYNC_INTERVAL="0.001", KAK2C_MAX_RPM="1000000")
        try:
            rss = []
            for count in counts:
                watcher.wait_for(count)
                rss.append(watcher.rss_mb())
        finally:
            watcher.stop()
    note = ", ".join(f"after {count} syncs {mb:.1f} MB" for count, mb in zip(counts, rss))
    return row("watch memory", {"requests": {"insales": "-", "kak2c": "-"}, "duration_s": None},
               "RSS", note=f"100 variants, syncs back to back: {note}")


def print_table(rows: list) -> None:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    header = ("scenario", "InSales req", "Kaktus req", "writes", "wall s", "bound s", "ratio",
              "CPU s", "peak RSS MB")
    lines = [header] + [
        (r["scenario"], str(r["insales"]), str(r["kak2c"]), r["writes"], fmt(r["wall"], ".2f"),
         fmt(r["bound"], ".2f"), fmt(r["ratio"], ".2f"), fmt(r["cpu"], ".2f"), fmt(r["rss"], ".0f"))
        for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)))
    for r in rows:
        if r["note"]:
            print(f"- {r['scenario']}: {r['note']}")


def compare_with_last(rows: list, mode: str) -> None:
    """Print each row's change against the figures the last run in this mode kept beside this
    file, then keep these: a regression shows the day it lands. Never a test: these machines
    are noisy, and a row moves by 10% from one run to the next."""
    try:
        kept = json.loads(LAST_FIGURES.read_text())
    except (OSError, ValueError):
        kept = {}
    last = kept.setdefault(mode, {})
    for r in rows:
        before, changes = last.get(r["scenario"]), []
        for key, name in COMPARED.items():
            new, old = r.get(key), (before or {}).get(key)
            if isinstance(new, (int, float)) and isinstance(old, (int, float)) and new != old:
                share = f" ({(new - old) / old:+.0%})" if old else ""
                changes.append(f"{name} {old:g} -> {new:.3g}{share}")
        said = ", ".join(changes) or "the same" if before else "no earlier figures"
        print(f"- {r['scenario']}, against the last {mode} run: {said}")
        last[r["scenario"]] = {key: round(r[key], 3) if isinstance(r[key], float) else r[key]
                               for key in COMPARED}
    LAST_FIGURES.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small catalogues (CI smoke run)")
    parser.add_argument("--scale-only", action="store_true",
                        help="the 100,000-variant row alone, to compare two versions")
    args = parser.parse_args()
    big = (2_500, 4) if args.quick else (25_000, 4)
    with tempfile.TemporaryDirectory() as folder:
        scale = scenario_scale(*big, folder)  # first, while this process is fresh
        if args.scale_only:
            print_table([scale])
            compare_with_last([scale], "full")
            return
        mine, naive = scenario_latency(*((300, 2) if args.quick else (2_500, 4)), folder)
        rows = [mine, naive, scale, scenario_budget(*big, folder, runs=5 if args.quick else 30),
                scenario_staleness(250, 4, folder, seconds=12 if args.quick else 240)]
        rows += [scenario_watch_cpu(products, 4, folder, syncs=2 if args.quick else 3,
                                    quiet=0 if args.quick else 61)
                 for products in ((2_500,) if args.quick else (2_500, 25_000))]
        rows.append(scenario_watch_memory(folder, (10, 100) if args.quick else (10, 1000)))
    print_table(rows)
    compare_with_last(rows, "quick" if args.quick else "full")
    ours, theirs = rows[0], rows[1]
    print(f"- ours / naive: requests {ours['insales'] + ours['kak2c']} / "
          f"{theirs['insales'] + theirs['kak2c']}, variants written {ours['variants']} / "
          f"{theirs['variants']} ({ours['variants'] / theirs['variants']:.2f}x; on a run with "
          f"nothing changed: 0 / {theirs['variants']}), wall {ours['wall'] / theirs['wall']:.2f}x")


if __name__ == "__main__":
    main()
