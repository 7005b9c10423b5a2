"""What the operator sees: report, log file, health pings, progress, --check, --demo."""
import csv
import os
import pty
import re
import shutil
import subprocess
import sys

import pytest

import sandbox
import sync_stock
from conftest import ROOT, add_pair, quantity, refusal_of, start_monitor, warnings_of, writes

ISO_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) ")


def test_report_has_a_row_per_barcode_with_action_and_reason(box, run, tmp_path):
    """The CSV says, for every barcode seen on either side, what was done and why."""
    updated = add_pair(box, "R-UPDATE", 1, 2)
    add_pair(box, "R-SAME", 3, 3)
    add_pair(box, "R-UNKNOWN", 3, None)
    box.insales.add_product("dups", [{"barcode": "R-DUP-IS", "quantity": 1},
                                     {"barcode": "R-DUP-IS", "quantity": 1},
                                     {"barcode": "R-ONLY-IS", "quantity": 1}])
    for n in (1, 2):
        box.kak2c.add_product({"id": 50 + n, "barcode": "R-DUP-KK", "stock": [{"stockTotal": n}]})
    box.kak2c.add_product({"id": 60, "barcode": "R-ONLY-KK", "stock": [{"stockTotal": 1}]})
    report = tmp_path / "report.csv"
    assert run("--report", str(report)).code == 0
    with open(report, newline="", encoding="utf-8") as source:
        rows = list(csv.DictReader(source))
    assert list(rows[0]) == ["barcode", "insales_variant_id", "title", "insales_qty",
                             "kak2c_qty", "action", "reason"]
    found = {(r["barcode"], r["action"], r["reason"]) for r in rows}
    assert found == {
        ("R-UPDATE", "update", "stock differs"), ("R-SAME", "unchanged", "same stock"),
        ("R-UNKNOWN", "skip", "unknown stock"), ("R-DUP-IS", "skip", "duplicate in InSales"),
        ("R-ONLY-IS", "skip", "not in Kaktus"), ("R-DUP-KK", "skip", "duplicate in Kaktus"),
        ("R-ONLY-KK", "skip", "not in InSales")}
    assert len(rows) == 8
    row = next(r for r in rows if r["barcode"] == "R-UPDATE")
    assert (row["insales_variant_id"], row["insales_qty"], row["kak2c_qty"]) == (
        str(updated), "1", "2")


def test_report_marks_what_the_guard_held_back(box, run, tmp_path):
    """When the guard refuses, the planned updates appear as skipped for the guard."""
    for n in range(12):
        add_pair(box, f"G{n:02d}", 5, 0)
    report = tmp_path / "report.csv"
    assert run("--report", str(report)).code == 4
    with open(report, newline="", encoding="utf-8") as source:
        rows = list(csv.DictReader(source))
    assert {(r["action"], r["reason"]) for r in rows} == {("skip", "guard")}


def test_log_file_has_iso_timestamps_and_the_summary_line(box, run, tmp_path):
    """LOG_FILE gets the summary at INFO with ISO 8601 times; details only with -v."""
    add_pair(box, "LOG1", 0, 1)
    log_file = tmp_path / "logs" / "sync.log"
    result = run(LOG_FILE=log_file)
    lines = log_file.read_text().splitlines()
    assert lines and all(ISO_LINE.match(line) for line in lines)
    summary = [line for line in lines if "status=ok" in line]
    assert len(summary) == 1
    for key in ("matched=1", "changed=1", "updated=1", "failed=0", "requests.insales=3"):
        assert key in summary[0]
    assert result.summary["updated"] == 1
    assert not any(" DEBUG " in line for line in lines)
    run("-v", LOG_FILE=log_file)
    assert any(" DEBUG " in line for line in log_file.read_text().splitlines())


def test_health_pings_follow_the_outcome(box, run):
    """Pings /start then the URL on success, /start then /fail on failure and on refusal."""
    endpoint = start_monitor()
    try:
        add_pair(box, "H1", 0, 1)
        assert run(HEALTHCHECK_URL=endpoint.url + "/uuid").code == 0
        box.kak2c.inject("GET /api", status=500, times=50)
        assert run(HEALTHCHECK_URL=endpoint.url + "/uuid").code == 3
        assert [c["path"] for c in endpoint.log] == ["/uuid/start", "/uuid",
                                                     "/uuid/start", "/uuid/fail"]
    finally:
        endpoint.stop()


def test_a_dead_monitor_never_fails_the_sync(box, run):
    """An unreachable HEALTHCHECK_URL is logged and the sync still succeeds."""
    endpoint = start_monitor()
    endpoint.stop()
    add_pair(box, "H2", 0, 1)
    result = run(HEALTHCHECK_URL=endpoint.url)
    assert (result.code, result.summary["updated"]) == (0, 1)
    assert "healthcheck ping" in result.err


def test_proxy_settings_of_the_environment_are_honoured(box, run):
    """HTTP_PROXY carries InSales' requests (here to the sandbox itself); NO_PROXY spares Kaktus."""
    add_pair(box, "P1", 0, 3)
    result = run(HTTP_PROXY=box.insales.url, NO_PROXY="localhost",
                 KAK2C_URL=box.kak2c.url.replace("127.0.0.1", "localhost"))
    assert (result.code, result.summary["updated"]) == (0, 1)
    assert box.insales.log and box.kak2c.log
    assert all(call["target"].startswith(box.insales.url + "/admin/") for call in box.insales.log)
    assert all(call["target"].startswith("/api/lite/") for call in box.kak2c.log)


def test_dry_run_table_is_sorted_and_capped_with_a_pointer_to_the_report(box, run):
    """Shows at most 50 rows, sorted by title, then says how many more and where to look."""
    for n in range(60):
        add_pair(box, f"C{n:03d}", 0, 1)
    result = run("--dry-run")
    lines = result.err.splitlines()
    table = [line for line in lines if line.startswith("C0")]
    assert len(table) == 50
    assert table == sorted(table)
    assert "... and 10 more" in result.err and "--report" in result.err
    assert "60 changes planned of 60 matched variants" in result.err


def test_progress_shows_on_a_terminal_and_never_under_cron(box, env, tmp_path, run):
    """Pages read are shown on stderr when it is a TTY, and not when it is a pipe or file."""
    sandbox.fill_sample(box, products=300, sizes=1, quirks=False)
    assert "pages" not in run().err
    main, follower = pty.openpty()
    (tmp_path / "empty.env").write_text("")
    child = subprocess.run(
        [sys.executable, str(ROOT / "sync_stock.py"), "--env-file", str(tmp_path / "empty.env")],
        env={**os.environ, **env}, stderr=follower, stdout=subprocess.DEVNULL, timeout=60)
    os.close(follower)
    shown = os.read(main, 65536).decode()
    os.close(main)
    assert child.returncode == 0
    assert "InSales: 2 pages" in shown and "Kaktus: 3/3 pages" in shown


def test_check_reports_what_it_found_and_writes_nothing(box, run):
    """--check prints counts, warehouses with array_index, and the Kaktus keys; no write."""
    sandbox.fill_sample(box, products=12)
    result = run("--check")
    assert result.code == 0
    assert writes(box) == []
    assert "12 products" in result.out
    assert "'Kaktus': array_index=1" in result.out
    assert "recordsTotal=" in result.out
    assert "barcodes" in result.out and "stockTotal" in result.out
    assert box.insales.calls("GET", "/admin/warehouses.json")


def test_check_with_bad_credentials_is_a_setup_problem(box, run):
    """--check with a wrong InSales password: Kaktus is still checked, and the verdict names
    the settings to fix; exit 2, no summary."""
    result = run("--check", INSALES_API_PASSWORD="wrong")
    assert result.code == 2
    assert "Kaktus " in result.out and "logged in" in result.out
    assert result.out.splitlines()[-2:] == [
        "not ready: 1 problem to fix",
        "  - InSales GET /admin/products/count.json: HTTP 401: {\"error\": \"Unauthorized\"}; "
        "check INSALES_API_KEY and INSALES_API_PASSWORD (the app's identifier and password)"]
    assert result.summary is None and "status=" not in result.err  # a summary is a sync's


def test_demo_runs_without_any_account_or_env(tmp_path):
    """--demo runs a dry run and a real sync against the bundled sandbox and exits 0."""
    child = subprocess.run([sys.executable, str(ROOT / "sync_stock.py"), "--demo"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120,
                           env={"PATH": os.environ["PATH"]})
    assert child.returncode == 0, child.stderr
    assert "status=dry-run" in child.stdout and "status=ok" in child.stdout
    assert "changes planned" in child.stdout
    assert "0 changes planned" in child.stdout  # the third run: nothing left to do
    # a marketplace order reserved in Kaktus: those units are not offered
    assert "InSales shows 1 for barcode 4600000000994: the 4 pairs reserved" in child.stdout


def test_env_example_and_readme_name_every_setting_exactly():
    """.env.example and the README's settings table list the settings sync_stock reads, no
    more, no fewer."""
    names = {setting.name for setting in sync_stock.SETTINGS}
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    assert set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", example, re.MULTILINE)) == names
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    assert {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row)} == names


def test_version_and_help(capsys):
    """--version prints the version; --help lists every option and every setting."""
    for flag in ("--version", "--help"):
        with pytest.raises(SystemExit) as done:
            sync_stock.main([flag])
        assert done.value.code == 0
    out = capsys.readouterr().out
    assert sync_stock.__version__ in out
    for option in ("--dry-run", "--env-file", "--json", "--report", "--force", "--check",
                   "--demo", "-v", "-q", "METRICS_FILE", "SYNC_HOLD_MINUTES", "KAK2C_PAGE_SIZE"):
        assert option in out
    assert re.search(r"KAK2C_STOCK_FIELD .*what Kaktus can sell.* \[auto\]", out)
    assert "\n#KAK2C_STOCK_FIELD=auto\n" in (ROOT / ".env.example").read_text()


# --- warnings about the data ------------------------------------------------------------------

def test_a_healthy_catalogue_warns_of_nothing(box, run):
    """A plain shop with every barcode matched: not one warning, even with -v."""
    sandbox.fill_sample(box, products=40, sizes=2, quirks=False)
    assert warnings_of(run("-v")) == []


def test_refuses_when_no_kaktus_variant_has_a_barcode(box, run):
    """Barcodes in a field we do not read, and no ids: refused, naming the setting and the
    keys seen, even with -q."""
    for n in range(5):
        box.insales.add_product(f"P{n}", [{"barcode": f"B{n}", "quantity": 1}])
        box.kak2c.add_product({"sku": n, "ean": f"B{n}", "stock": [{"stockTotal": 2}]})
    reason = refusal_of(run("-q"))
    assert "none of the 5 Kaktus variants carries a barcode" in reason
    assert "KAK2C_BARCODE_FIELD=auto" in reason
    assert "ean" in reason and "barcodes" in reason and writes(box) == []


def test_refuses_when_every_matched_stock_is_unknown(box, run):
    """KAK2C_STOCK_FIELD naming a field the account does not send: refused, even with --force,
    naming the setting and the keys seen; nothing written."""
    for n in range(4):
        add_pair(box, f"K{n}", 1, 3)
    for args in (["-q"], ["-q", "--force"]):
        result = run(*args, KAK2C_STOCK_FIELD="stockFree")
        reason = refusal_of(result)
        assert "all 4 matched Kaktus variants have unknown stock" in reason
        assert "KAK2C_STOCK_FIELD='stockFree'" in reason and "stockTotal" in reason
        assert warnings_of(result) == [] and writes(box) == []


def test_warns_when_most_kaktus_stock_is_unknown_and_syncs_the_rest(box, run):
    """Most entries lack the field KAK2C_STOCK_FIELD names: a warning with the keys seen, and
    the variant that has it is synced."""
    for n in range(3):
        add_pair(box, f"K{n}", 1, 3)
    known = add_pair(box, "K3", 1, 3)
    box.kak2c.products[-1]["variants"][0]["stock"] = [{"stockTotal": 3, "stockFree": 2}]
    result = run("-q", KAK2C_STOCK_FIELD="stockFree")
    warnings = warnings_of(result)
    assert (result.code, quantity(box, known), len(warnings)) == (0, 2, 1)
    assert "3 of 4 Kaktus variants have unknown stock" in warnings[0]
    assert "KAK2C_STOCK_FIELD='stockFree'" in warnings[0] and "stockTotal" in warnings[0]


def test_warns_when_not_one_barcode_matches(box, run):
    """Both sides have barcodes but none in common: refused, with one of each side,
    normalised."""
    box.insales.add_product("P", [{"barcode": "4600000000017", "quantity": 1}])
    box.kak2c.add_product({"id": 1, "barcode": "X-1", "stock": [{"stockTotal": 2}]})
    reason = refusal_of(run("-q"))
    assert "'04600000000017'" in reason and "'X-1'" in reason


def test_warns_when_many_insales_barcodes_are_duplicated(box, run):
    """Over 10% of InSales variants sharing a barcode: pointed to --report."""
    for n in range(8):
        add_pair(box, f"D{n}", 1, 1)
    box.insales.add_product("twins", [{"barcode": "D0", "quantity": 1}])
    [warning] = warnings_of(run("-q"))
    assert "2 of 9 InSales variants share their barcode" in warning and "--report" in warning


# --- metrics ----------------------------------------------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
                    r',?)*)\} (-?[0-9.e+]+|NaN)$')


def parse_metrics(text):
    """Check every line is a comment or a sample; return {name{labels}: value}."""
    samples, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
        elif not line.startswith("# HELP "):
            found = SAMPLE.match(line)
            assert found, line
            assert found[1] in typed, line  # HELP and TYPE come before the samples
            samples[f"{found[1]}{{{found[2]}}}"] = float(found[3])
    return samples


def test_metrics_file_is_prometheus_text_and_keeps_last_success(box, run, tmp_path):
    """METRICS_FILE parses as the text format with a shop label; a failed run keeps the last
    success time and says exit 3."""
    add_pair(box, "M1", 0, 4)
    path = tmp_path / "textfile" / "sync_stock.prom"
    assert run(METRICS_FILE=path).code == 0
    shop = box.insales.url.split("//")[1]
    first = parse_metrics(path.read_text())
    label = f'shop="{shop}"'
    assert first[f"sync_stock_last_exit_code{{{label}}}"] == 0
    assert first[f'sync_stock_variants{{{label},kind="updated"}}'] == 1
    assert first[f'sync_stock_requests{{{label},api="kak2c"}}'] == 2
    assert 0 < first[f"sync_stock_insales_api_usage_ratio{{{label}}}"] < 1
    success = first[f"sync_stock_last_success_timestamp_seconds{{{label}}}"]
    assert success == first[f"sync_stock_last_run_timestamp_seconds{{{label}}}"]
    box.kak2c.inject("GET /api", status=500, times=50)
    assert run(METRICS_FILE=path).code == 3
    second = parse_metrics(path.read_text())
    assert second[f"sync_stock_last_exit_code{{{label}}}"] == 3
    assert second[f"sync_stock_last_success_timestamp_seconds{{{label}}}"] == success
    assert second[f"sync_stock_last_run_timestamp_seconds{{{label}}}"] > success
    assert {k.split("{")[0] for k in second} >= {
        "sync_stock_duration_seconds", "sync_stock_held_units", "sync_stock_variants"}


def test_an_unwritable_metrics_file_is_named_before_any_request(box, run, tmp_path):
    """A metrics file that cannot be written, seen at the start: exit 2 naming METRICS_FILE,
    nothing sent (the monitoring asked for cannot be given)."""
    add_pair(box, "M2", 0, 4)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    result = run(METRICS_FILE=blocker / "m.prom")
    assert result.code == 2 and "METRICS_FILE" in result.err
    assert box.insales.log == [] and box.kak2c.log == []


def test_a_metrics_file_that_fails_mid_run_is_logged_and_the_run_keeps_its_outcome(box, run,
                                                                                  tmp_path):
    """A disk that fails after the start (here: a folder appears where the metrics file goes):
    an error line naming METRICS_FILE, and the sync's own exit code."""
    add_pair(box, "M2", 0, 4)
    path = tmp_path / "m.prom"

    def block_the_metrics_file(request, status, headers, body):
        path.mkdir(exist_ok=True)
        return status, headers, body

    box.kak2c.rewrite = block_the_metrics_file
    result = run(METRICS_FILE=path)
    assert (result.code, result.summary["updated"]) == (0, 1)
    assert f"METRICS_FILE {path}: cannot write" in result.err


def test_no_metrics_for_a_run_that_did_not_get_past_the_lock(box, run, env, tmp_path):
    """A skipped run leaves the metrics file as the run that held the lock will write it."""
    import fcntl

    path = tmp_path / "m.prom"
    with open(env["SYNC_LOCK_FILE"], "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert run(METRICS_FILE=path).summary["status"] == "skipped"
    assert not path.exists()


def test_a_config_error_pings_nothing(box, run, tmp_path):
    """Exit 2 sends nothing at all, monitor included: no /start without its closing ping."""
    endpoint = start_monitor()
    try:
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("")
        result = run(HEALTHCHECK_URL=endpoint.url, KAK2C_TOKEN_FILE=blocker / "token")
        assert result.code == 2
        assert endpoint.log == [] and box.kak2c.log == []
    finally:
        endpoint.stop()


def test_a_refused_plan_pings_fail(box, run):
    """Exit 4 (the guard) closes with /fail after /start."""
    endpoint = start_monitor()
    try:
        for n in range(12):
            add_pair(box, f"G{n:02d}", 5, 0)
        assert run(HEALTHCHECK_URL=endpoint.url).code == 4
        assert [c["path"] for c in endpoint.log] == ["/start", "/fail"]
    finally:
        endpoint.stop()


# --- systemd units ----------------------------------------------------------------------------

def readme_units():
    """The unit files the README shows, in order: the service, the timer, the watch's service."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```ini\n(.*?)```", text.split("<!-- units:", 1)[1], re.DOTALL)
    return blocks[:3]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_readme_systemd_units_verify(tmp_path):
    """The README's sync-stock@.service and .timer pass systemd-analyze verify as shop-a."""
    service, timer, watch = readme_units()
    assert "Type=oneshot" in service and "OnCalendar=minutely" in timer
    assert "Type=simple" in watch
    for name, unit in (("sync-stock@shop-a.service", service), ("sync-stock@shop-a.timer", timer),
                       ("sync-stock-watch@shop-a.service", watch)):
        unit = unit.replace("/opt/sync_stock/.venv/bin/python", sys.executable)
        (tmp_path / name).write_text(unit.replace("/opt/sync_stock", str(ROOT)))
    checked = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "sync-stock@shop-a.service",
         "sync-stock@shop-a.timer", "sync-stock-watch@shop-a.service"], cwd=tmp_path,
        capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.strip() == ""


def test_readme_units_carry_what_a_shop_instance_needs():
    """The service runs -q with the instance's env file, sandboxed, files/ writable; the watch's
    restarts, and leaves a stop time for the sync in progress to finish."""
    service, timer, watch = readme_units()
    for line in ("Type=oneshot", "--env-file /etc/sync-stock/%i.env", " -q ", "User=",
                 "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ReadWritePaths=/opt/sync_stock/files", "TimeoutStartSec="):
        assert line in service
    for line in ("OnCalendar=minutely", "AccuracySec=1s", "Persistent=false"):
        assert line in timer
    for line in ("Type=simple", " --watch ", "--env-file /etc/sync-stock/%i.env", "Restart=always",
                 "RestartSec=5", "TimeoutStopSec=", "User=", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "ReadWritePaths=/opt/sync_stock/files",
                 "WantedBy=multi-user.target"):
        assert line in watch
