"""--watch: one process syncing again and again, paced, backing off, stopped by a signal."""
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import sandbox
from conftest import ROOT, add_pair, quantity, start_monitor, warnings_of, writes

AUTH = ("POST", "/api/lite/auth")


def set_kaktus(box, index, stock):
    box.kak2c.products[index]["variants"][0]["stock"] = [{"stockTotal": stock}]


def test_a_watch_syncs_again_and_again_on_one_login(box, watch):
    """Each sync is a whole run: a Kaktus change and a sale between syncs are synced and held;
    one login, a full walk first and then only what changed, counts per sync."""
    first = add_pair(box, "W1", 3, 5)
    second = add_pair(box, "W2", 7, 7)

    def between(done):
        if done == 1:
            set_kaktus(box, 0, 9)
        if done == 2:
            box.insales.sell(second, 2)

    result = watch(syncs=4, between=between)
    assert result.code == 0 and len(result.summaries) == 4
    assert [s["status"] for s in result.summaries] == ["ok"] * 4
    assert [s["mode"] for s in result.summaries] == ["full"] + ["incremental"] * 3
    assert [s["updated"] for s in result.summaries] == [1, 1, 0, 0]
    assert (quantity(box, first), quantity(box, second)) == (9, 5)
    assert result.summaries[-1]["held_units"] == 2  # the sale is held, not undone
    assert len(box.kak2c.calls(*AUTH)) == 1
    # per sync, not since the watch began: an incremental walk that finds nothing is 2 pages
    assert [s["requests"]["insales"] for s in result.summaries[2:]] == [2, 2]
    assert all(s["requests"]["kak2c"] == 1 for s in result.summaries[1:])
    incremental = box.insales.calls("GET", "/admin/products.json")[-1]["query"]
    assert incremental["with_deleted"] == "true"


def test_syncs_start_sync_interval_apart(box, watch):
    """A sync starts SYNC_INTERVAL after the last one started; the metrics say the pace."""
    add_pair(box, "P1", 1, 1)
    result = watch(syncs=3, SYNC_INTERVAL="4.5")
    assert all(4.0 < wait <= 4.5 for wait in result.waits)


def test_kaktus_max_rpm_stretches_the_interval(box, watch, tmp_path):
    """Three Kaktus pages a sync at KAK2C_MAX_RPM=12: a sync every 15 s, and never more than
    12 Kaktus requests in any minute."""
    sandbox.fill_sample(box, products=250, sizes=1, quirks=False)
    metrics = tmp_path / "metrics.prom"
    result = watch(syncs=6, SYNC_INTERVAL=1, KAK2C_MAX_RPM=12, METRICS_FILE=metrics)
    assert all(s["requests"]["kak2c"] == 3 for s in result.summaries[1:])
    assert 14.0 < result.waits[-1] <= 15.0
    assert "sync_stock_interval_seconds{" in metrics.read_text()
    assert metrics.read_text().rstrip().endswith(" 15.0")
    times = [call["at"] for call in box.kak2c.log]
    assert max(sum(t <= at < t + 60 for at in times) for t in times) <= 12


def test_half_the_insales_budget_is_kept_and_never_a_429(box, watch):
    """With a shop limit of 40 requests per 5 minutes, a watch keeps to 20 in any 5 minutes
    (a quiet shop's walk is one read: a sync every 15 s) and is never answered 429."""
    add_pair(box, "B1", 1, 1)
    box.insales.rate_limit = 40
    result = watch(syncs=20, SYNC_INTERVAL=1)
    assert result.summaries[-1]["requests"]["insales"] == 1
    assert 14.0 < result.waits[-1] <= 15.0
    assert all(call["status"] != 429 for call in box.insales.log)
    times = [call["at"] for call in box.insales.log]
    assert max(sum(t <= at < t + 300 for at in times) for t in times) <= 20


def test_never_more_than_a_minute_between_two_syncs(box, watch):
    """A budget that asks for more than a minute is held to a minute: never slower than cron."""
    sandbox.fill_sample(box, products=250, sizes=1, quirks=False)
    result = watch(syncs=3, KAK2C_MAX_RPM=1)
    assert all(59.0 < wait <= 60.0 for wait in result.waits)


def test_failures_back_off_and_are_said_once_per_spell(box, watch):
    """A Kaktus outage: the wait doubles up to 60 s, one ERROR for the spell and one WARNING
    when it ends; /fail pinged once, success at once after, then at most once a minute."""
    add_pair(box, "F1", 1, 2)
    endpoint = start_monitor()

    def between(done):
        if done == 1:
            box.kak2c.inject("GET /api/lite/products", status=500, times=5 * 4)

    try:
        result = watch(syncs=8, between=between, SYNC_INTERVAL=10,
                       HEALTHCHECK_URL=endpoint.url + "/u")
        pings = [call["path"] for call in endpoint.log]
    finally:
        endpoint.stop()
    assert [s["status"] for s in result.summaries] == ["ok"] + ["failed"] * 4 + ["ok"] * 3
    # starts 20, 40, 60, 60 s apart, less the 0.5 + 1 + 2 + 4 s each failed sync's retries took
    assert result.waits[1:6] == pytest.approx([12.5, 32.5, 52.5, 52.5, 10], abs=0.5)
    errors = [line for line in result.err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "HTTP 500" in errors[0]
    assert result.err.count("failed again") == 3
    assert len([w for w in warnings_of(result) if "recovered after 4 failed syncs" in w]) == 1
    # start, success, fail, success at recovery; the last two syncs are 10 s apart: no ping
    assert pings == ["/u/start", "/u", "/u/fail", "/u"]


def test_a_refused_plan_backs_off_like_a_failure(box, watch):
    """The guard refusing: nothing written, the wait doubles, one ERROR for the spell."""
    for n in range(12):
        add_pair(box, f"G{n}", 5, 5)

    def between(done):
        if done == 1:
            for product in box.kak2c.products:
                product["variants"][0]["stock"] = [{"stockTotal": 0}]

    result = watch(syncs=4, between=between, SYNC_INTERVAL=5)
    assert [s["status"] for s in result.summaries] == ["ok", "refused", "refused", "refused"]
    assert [round(wait) for wait in result.waits[1:]] == [10, 20, 40]
    assert len([line for line in result.err.splitlines() if " ERROR " in line]) == 1
    assert writes(box) == []


@pytest.mark.parametrize("extra", [["--dry-run"], ["--force"], ["--report", "r.csv"],
                                   ["--check"], ["--demo"]])
def test_watch_with_a_one_run_option_is_a_usage_error(box, env, extra, capsys):
    """--watch with --dry-run, --force, --report, --check or --demo: exit 2, nothing sent."""
    import sync_stock

    with pytest.raises(SystemExit) as done:
        sync_stock.main(["--watch", *extra])
    assert done.value.code == 2
    assert "--watch cannot go with" in capsys.readouterr().err
    assert box.insales.log == [] and box.kak2c.log == []


@pytest.mark.parametrize("name, value", [
    ("SYNC_INTERVAL", "0"), ("SYNC_INTERVAL", "-1"), ("SYNC_INTERVAL", "soon"),
    ("SYNC_INTERVAL", "61"), ("KAK2C_MAX_RPM", "0"), ("KAK2C_MAX_RPM", "1.5"),
])
def test_a_malformed_pace_setting_exits_2(box, run, name, value):
    """A malformed SYNC_INTERVAL or KAK2C_MAX_RPM is named, exit 2, nothing sent."""
    result = run("--watch", **{name: value})
    assert result.code == 2 and name in result.err
    assert box.insales.log == [] and box.kak2c.log == []


def test_data_warnings_are_said_once_an_hour(box, watch):
    """A warning that holds sync after sync is said once, and again an hour later."""
    add_pair(box, "X-1", 1, 2)
    box.insales.add_product("shared", [{"barcode": "S-1", "quantity": 1}] * 2)  # 2 of 3 share

    def between(done):
        if done == 3:
            box.advance(3600)

    result = watch("-v", syncs=5, between=between)
    matching = [w for w in warnings_of(result) if "share their barcode" in w]
    assert len(matching) == 2
    assert result.err.count("Kaktus barcodes read from") == 2


def test_nothing_piles_up_from_sync_to_sync(box, watch):
    """Twelve syncs, each a full walk, every other one failing on reset connections: no cycle
    is frozen for good, and a malformed product is counted once a walk."""
    for n in range(20):
        add_pair(box, f"M{n}", 1, 1)
    box.insales.add_product("broken", [{"barcode": "M-X", "quantity": 1}])
    broken = list(box.insales.products.values())[-1]
    broken["variants"] = "not a list"
    frozen = []

    def between(done):
        box.advance(61)  # SYNC_FULL_EVERY=1: a full walk every sync
        box.insales.log.clear()  # the sandbox's, in this same process
        box.kak2c.log.clear()
        frozen.append(gc.get_freeze_count())
        if done % 2:  # every other sync fails: urllib3's errors on a reset connection are cycles
            box.kak2c.inject("GET /api/lite/products", reset=True, times=5)

    result = watch(syncs=12, between=between, SYNC_FULL_EVERY=1)
    assert {s["skipped_records"] for s in result.summaries[::2]} == {1}
    assert {s["status"] for s in result.summaries[1::2]} == {"failed"}
    assert frozen[-1] - frozen[3] < 300  # without a collection each failed sync adds ~400


def test_runs_in_one_process_freeze_nothing(box, run):
    """main() called again and again in one process (as the tests and a wrapper do), failing
    on reset connections: it leaves no object frozen, so the garbage of its runs is
    collected."""
    add_pair(box, "F1", 1, 1)
    before = gc.get_freeze_count()
    for _ in range(3):
        box.kak2c.inject("GET /api/lite/products", reset=True, times=5)
        assert run().code == 3
    assert gc.get_freeze_count() <= before  # objects frozen earlier may die meanwhile


def test_the_state_is_kept_in_memory_and_in_the_file(box, watch, env):
    """A hold outlives its state file being deleted mid-watch, and the file comes back."""
    variant = add_pair(box, "S1", 10, 10)
    state = env["SYNC_STATE_FILE"]

    def between(done):
        if done == 1:
            box.insales.sell(variant, 2)
        if done == 2:
            os.remove(state)
            box.insales.set_variant(add_pair(box, "S2", 1, 3), quantity=1)

    result = watch(syncs=3, between=between)
    assert [s["held_units"] for s in result.summaries] == [0, 2, 2]
    assert quantity(box, variant) == 8
    holds = json.loads(Path(state).read_text())["holds"]  # written again after it was deleted
    assert list(holds) == [str(variant)] and holds[str(variant)][0][0] == 2


def test_the_token_is_kept_and_renewed_before_it_expires(box, watch):
    """The token lives in memory and is renewed before its exp: never refused by Kaktus."""
    add_pair(box, "T1", 1, 1)
    box.kak2c.token_ttl = 100
    result = watch(syncs=8, SYNC_INTERVAL=30)
    assert result.code == 0
    assert "refused the token" not in result.err
    assert len(box.kak2c.calls(*AUTH)) == 3  # at 0 s, then about every 75 s
    assert all(call["status"] == 200 for call in box.kak2c.log)


def test_usage_pacing_is_a_budget_of_every_sync(box, watch):
    """API-Usage-Limit near its end slows every sync down, each within SYNC_MAX_WAIT."""
    add_pair(box, "U1", 1, 1)

    def nearly_spent(request, status, headers, body):
        return status, {**headers, "API-Usage-Limit": "498/500"}, body

    box.insales.rewrite = nearly_spent
    result = watch(syncs=3, SYNC_MAX_WAIT=1)
    assert result.sleeps == [0.6] * 3  # one per sync at most, every sync


def test_metrics_are_those_of_each_sync(box, watch, tmp_path):
    """METRICS_FILE is rewritten after every sync with that sync's requests and duration."""
    add_pair(box, "Q1", 1, 1)
    metrics = tmp_path / "metrics.prom"
    texts = []
    result = watch(syncs=3, between=lambda done: texts.append(metrics.read_text()),
                   METRICS_FILE=metrics)
    assert result.code == 0 and len(texts) == 3
    assert 'api="insales"} 2' in texts[-1] and 'api="kak2c"} 1' in texts[-1]
    assert len(set(texts)) == 3  # a new file each sync


# --- a real process -----------------------------------------------------------------------------

def start_watch(box, env, tmp_path, *args, **settings):
    """A watch in a process of its own, at a fast pace: neither budget holds it back."""
    box.insales.rate_limit = 100_000
    settings = {"SYNC_INTERVAL": "0.2", "KAK2C_MAX_RPM": "100000", **settings}
    (tmp_path / "empty.env").write_text("")
    return subprocess.Popen(
        [sys.executable, str(ROOT / "sync_stock.py"), "--env-file", str(tmp_path / "empty.env"),
         "--json", "--watch", *args], env={**os.environ, **env, **settings},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_lets_the_sync_finish_its_writes_and_exits_0(box, env, tmp_path):
    """SIGTERM in the middle of a write: the write lands, the state is kept, exit 0; JSON
    lines come one per sync, flushed as they happen."""
    variant = add_pair(box, "K1", 1, 1)
    child = start_watch(box, env, tmp_path)
    try:
        assert json.loads(child.stdout.readline())["status"] == "ok"  # flushed at once
        writing = threading.Event()
        box.insales.inject("PUT /admin", status=None, hang=0.3, run=writing.set)
        set_kaktus(box, 0, 6)
        assert writing.wait(20)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=20)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert "Traceback" not in err and "stopped after" in err
    assert quantity(box, variant) == 6
    assert json.loads(out.splitlines()[-1])["updated"] == 1
    state = json.loads(Path(env["SYNC_STATE_FILE"]).read_text())
    assert dict(zip(state["tracks"]["id"], state["tracks"]["announced"])) == {variant: 6}


def test_a_second_signal_ends_the_watch_at_once(box, env, tmp_path):
    """A sync stuck on a slow answer: the second SIGINT ends the process at once."""
    add_pair(box, "K2", 1, 1)
    child = start_watch(box, env, tmp_path)
    try:
        assert json.loads(child.stdout.readline())["status"] == "ok"
        stuck = threading.Event()
        box.kak2c.inject("GET /api/lite/products", status=None, hang=30, run=stuck.set)
        assert stuck.wait(20)
        child.send_signal(signal.SIGINT)
        time.sleep(0.2)
        assert child.poll() is None  # the first signal lets the sync finish
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=5)
    finally:
        child.kill()
    assert child.returncode == 128 + signal.SIGINT
    assert "Traceback" not in err


def test_cron_as_a_supervisor_finds_the_watch_and_says_nothing(box, env, tmp_path):
    """While a watch holds the lock, cron's `-q --watch` prints nothing and exits 0."""
    add_pair(box, "K3", 1, 1)
    child = start_watch(box, env, tmp_path)
    try:
        assert json.loads(child.stdout.readline())["status"] == "ok"
        cron = subprocess.run(
            [sys.executable, str(ROOT / "sync_stock.py"), "--env-file",
             str(tmp_path / "empty.env"), "-q", "--watch"], env={**os.environ, **env},
            capture_output=True, text=True, timeout=30)
    finally:
        child.send_signal(signal.SIGTERM)
        child.communicate(timeout=20)
    assert (cron.returncode, cron.stdout, cron.stderr) == (0, "", "")
    assert child.returncode == 0


def test_a_watch_walks_whole_until_it_kept_a_state_of_its_own(box, watch, run):
    """A watch started over an old state walks InSales whole, and again when that first sync
    failed; then only what changed."""
    add_pair(box, "V1", 1, 1)
    assert run(SYNC_MODE="incremental").code == 0  # a state with a catalogue, from cron
    box.kak2c.inject("GET /api/lite/products", status=500, times=5)
    result = watch(syncs=3)
    assert [s["status"] for s in result.summaries] == ["failed", "ok", "ok"]
    assert [s["mode"] for s in result.summaries] == ["full", "full", "incremental"]
