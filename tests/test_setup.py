"""The first hour on a real account: every common setup mistake says "not working" on every
signal a person watches (exit code, summary, ping, metrics, --check), in a line that names the
setting to change; a good setup says ready."""
import json
import signal
import socket
import ssl
import stat
import subprocess
import sys

import pytest
import requests
import urllib3

import sandbox
import sync_stock
from conftest import ROOT, SETTINGS, said_at_error, start_monitor, warnings_of, writes

PRODUCTS = "GET /admin/products.json"


@pytest.fixture
def monitor():
    endpoint = start_monitor()
    yield endpoint
    endpoint.stop()


@pytest.fixture
def shop(box):
    """A small plain shop, in sync but for a few variants, so that a working setup writes."""
    sandbox.fill_sample(box, products=8, sizes=2, quirks=False, differ=0.5)
    return box


def signals(run, monitor, tmp_path, *args, **settings):
    """Run with a health check and a metrics file: (result, the pings' paths, the metrics)."""
    metrics = tmp_path / "sync.prom"
    result = run(*args, HEALTHCHECK_URL=monitor.url, METRICS_FILE=metrics, **settings)
    return result, [call["path"] for call in monitor.log], metrics.read_text()


def assert_not_working(run, monitor, tmp_path, code, *args, **settings) -> str:
    """The exit code, the summary's status, the last ping and the metrics all say the run did
    not work; return the summary's error, which tests check for the setting it names."""
    result, pings, metrics = signals(run, monitor, tmp_path, *args, **settings)
    assert result.code == code, result.err
    assert result.summary["status"] == {3: "failed", 4: "refused"}[code]
    assert pings[-1] == "/fail"
    assert metrics_exit_code(metrics) == code
    return said_at_error(result)


def metrics_exit_code(metrics: str) -> int:
    """The exit code a metrics file's sync_stock_last_exit_code gauge holds."""
    line = next(line for line in metrics.splitlines()
                if line.startswith("sync_stock_last_exit_code{"))
    return int(line.rsplit(" ", 1)[1])


def check(run, **settings):
    """Run --check: (exit code, its verdict lines: 'ready', or the problems)."""
    result = run("--check", **settings)
    lines = result.out.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(("ready", "not ready"))),
                 len(lines))
    return result.code, lines[start:]


# --- a good setup -----------------------------------------------------------------------------

def test_a_good_setup_checks_ready_and_syncs_ok(shop, run, monitor, tmp_path):
    """A working setup: --check ends with `ready` (exit 0); the run is ok, pinged as a
    success, its metrics' exit code 0; no warning."""
    assert check(run) == (0, ["ready"])
    result, pings, metrics = signals(run, monitor, tmp_path)
    assert (result.code, result.summary["status"], pings) == (0, "ok", ["/start", "/"])
    assert "sync_stock_last_exit_code" in metrics and warnings_of(result) == []


# --- misspelt settings ------------------------------------------------------------------------

def test_misspelt_settings_are_named_with_the_one_they_resemble(shop, run, tmp_path,
                                                                monkeypatch):
    """A name in the settings file that is no setting, or one in the environment with a
    setting's prefix: a WARNING naming it, where, and its likeliest setting; the run goes on;
    --check lists them and is not ready."""
    settings = tmp_path / "shop.env"
    settings.write_text("SYNC_HOLD_MINUTE=5\nKAK2C_STOCK_FEILD=stockTotal\nBARCODE=1\n")
    monkeypatch.setenv("SYNC_INTERVALL", "5")
    monkeypatch.setenv("HOME_DIR", "/home/x")  # no setting's prefix: not ours to judge
    result = run("--env-file", str(settings))
    assert result.code == 0 and result.summary["status"] == "ok"
    said = [line.split(" WARNING ", 1)[1] for line in warnings_of(result)]
    assert said == [
        f"SYNC_HOLD_MINUTE in {settings} is no setting; did you mean SYNC_HOLD_MINUTES?",
        f"KAK2C_STOCK_FEILD in {settings} is no setting; did you mean KAK2C_STOCK_FIELD?",
        f"BARCODE in {settings} is no setting; see .env.example for the settings",
        "SYNC_INTERVALL in the environment is no setting; did you mean SYNC_INTERVAL?"]
    code, verdict = check(run)  # with the fixture's empty settings file: the environment's
    assert code == 2 and verdict[0] == "not ready: 1 problem to fix"
    assert "SYNC_INTERVALL in the environment is no setting" in verdict[1]


def test_a_watch_names_a_misspelt_setting_once(shop, watch, monkeypatch):
    """In a watch, a misspelt setting is said once, not every sync."""
    monkeypatch.setenv("KAK2C_STOCK_FEILD", "stockTotal")
    result = watch(syncs=4)
    assert [w for w in warnings_of(result) if "KAK2C_STOCK_FEILD" in w] == [
        next(w for w in warnings_of(result) if "KAK2C_STOCK_FEILD" in w)]
    assert [s["status"] for s in result.summaries] == ["ok"] * 4


# --- a run that can sync nothing is not a success ---------------------------------------------

def test_a_stock_field_no_entry_carries_is_refused_everywhere(shop, run, monitor, tmp_path):
    """KAK2C_STOCK_FIELD=stockFree: refused (exit 4, /fail, metrics 4), naming the setting and
    the keys seen, --force or not; --check is not ready."""
    error = assert_not_working(run, monitor, tmp_path, 4, KAK2C_STOCK_FIELD="stockFree")
    assert "all 16 matched Kaktus variants have unknown stock" in error
    assert "KAK2C_STOCK_FIELD='stockFree'" in error and "stockTotal" in error
    assert run("--force", KAK2C_STOCK_FIELD="stockFree").code == 4 and writes(shop) == []
    code, verdict = check(run, KAK2C_STOCK_FIELD="stockFree")
    assert code == 2 and "all 16 Kaktus variants on page 0 have unknown stock" in verdict[1]


def test_barcodes_in_the_sku_with_the_default_field_are_refused_everywhere(box, run, monitor,
                                                                          tmp_path):
    """A shop with its barcodes in the SKU and INSALES_BARCODE_FIELD left at barcode: refused
    everywhere, suggesting sku; --check says the same of its first page."""
    sandbox.fill_sample(box, products=8, sizes=2, quirks=False, insales_barcodes_in="sku")
    error = assert_not_working(run, monitor, tmp_path, 4)
    assert "set INSALES_BARCODE_FIELD=sku" in error and writes(box) == []
    code, verdict = check(run)
    assert code == 2 and "none of the 16 InSales variants on the first page has a barcode " \
                         "in INSALES_BARCODE_FIELD=barcode" in verdict[1]
    assert "set INSALES_BARCODE_FIELD=sku" in verdict[1]


def test_a_kaktus_barcode_field_that_matches_nothing_is_refused_everywhere(shop, run, monitor,
                                                                           tmp_path):
    """KAK2C_BARCODE_FIELD naming a field no variant has: refused, naming it and the keys
    seen; --check is not ready."""
    error = assert_not_working(run, monitor, tmp_path, 4, KAK2C_BARCODE_FIELD="ean")
    assert "KAK2C_BARCODE_FIELD=ean" in error and "article, barcode, id, stock" in error
    code, verdict = check(run, KAK2C_BARCODE_FIELD="ean")
    assert code == 2 and "none of the 16 Kaktus variants on page 0 carries a barcode" in \
        verdict[1]


def test_a_warehouse_the_variants_do_not_carry_is_refused_and_nothing_sent(shop, run, monitor,
                                                                           tmp_path):
    """INSALES_WAREHOUSE=7 on a shop with warehouses 0 and 1: refused before any write, naming
    the setting and the warehouses the variants carry; --check names the shop's; 1 works."""
    error = assert_not_working(run, monitor, tmp_path, 4, INSALES_WAREHOUSE=7)
    assert error.startswith("safety guard: INSALES_WAREHOUSE=7: no InSales variant carries "
                            "quantity_at_warehouse7; the variants carry warehouses 0, 1")
    assert writes(shop) == []
    code, verdict = check(run, INSALES_WAREHOUSE=7)
    assert code == 2 and "INSALES_WAREHOUSE=7 is none of the shop's warehouses (array_index " \
                         "0, 1)" in verdict[1]
    assert check(run, INSALES_WAREHOUSE=1) == (0, ["ready"])
    assert run(INSALES_WAREHOUSE=1).summary["status"] == "ok"


def test_a_dry_run_says_what_the_guard_would_do_and_exits_0(shop, run):
    """A dry run of a setup that syncs nothing: exit 0, the refusal shown, nothing written."""
    result = run("--dry-run", KAK2C_STOCK_FIELD="stockFree")
    assert (result.code, result.summary["status"], writes(shop)) == (0, "dry-run", [])
    assert "The safety guard would refuse this plan (--force cannot override it): all 16 " \
           "matched Kaktus variants have unknown stock" in result.err


def test_a_watch_refused_by_its_setup_says_so_once_and_pings_fail(shop, watch, monitor,
                                                                  tmp_path):
    """A watch whose setup syncs nothing: one ERROR line with the reason, /fail pinged once,
    every sync refused, the metrics' exit code 4."""
    metrics = tmp_path / "watch.prom"
    result = watch(syncs=3, KAK2C_BARCODE_FIELD="ean", HEALTHCHECK_URL=monitor.url,
                   METRICS_FILE=metrics)
    errors = [line for line in result.err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "KAK2C_BARCODE_FIELD=ean" in errors[0]
    assert [s["status"] for s in result.summaries] == ["refused"] * 3
    assert [call["path"] for call in monitor.log] == ["/start", "/fail"]
    assert metrics_exit_code(metrics.read_text()) == 4


# --- errors that name the fix -----------------------------------------------------------------

def test_a_wrong_insales_password_names_the_settings_everywhere(shop, run, watch, monitor,
                                                                 tmp_path):
    """A wrong app password: the same line in a run, in the summary's error, in --check and in
    a watch's spell line, naming INSALES_API_KEY and INSALES_API_PASSWORD."""
    fix = "check INSALES_API_KEY and INSALES_API_PASSWORD (the app's identifier and password)"
    error = assert_not_working(run, monitor, tmp_path, 3, INSALES_API_PASSWORD="wrong")
    assert error.endswith(fix)
    code, verdict = check(run, INSALES_API_PASSWORD="wrong")
    assert code == 2 and verdict[1].endswith(f'HTTP 401: {{"error": "Unauthorized"}}; {fix}')
    spell = watch(syncs=2, INSALES_API_PASSWORD="wrong")
    assert any(" ERROR " in line and line.endswith(error) for line in spell.err.splitlines())


def test_an_app_without_access_rights_is_told_so(shop, run, monitor, tmp_path):
    """InSales answering 403: the line names the app's access rights."""
    shop.insales.inject(PRODUCTS, status=403, body={"errors": ["Forbidden"]})
    error = assert_not_working(run, monitor, tmp_path, 3)
    assert "the app lacks an access right: in the shop's admin, give it access to products" \
        in error


@pytest.mark.parametrize("setting", ["INSALES_URL", "KAK2C_URL"])
def test_a_host_that_refuses_is_named_with_its_setting(shop, run, monitor, tmp_path, setting):
    """An address where nothing listens: the host and port, 'refused the connection', and the
    setting; --check fails the same way (exit 3)."""
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    error = assert_not_working(run, monitor, tmp_path, 3, **{setting: url})
    assert f"127.0.0.1:{port} refused the connection, 5 attempts; giving up (check " \
           f"{setting}={url})" in error
    result = run("--check", **{setting: url})
    assert result.code == 3 and f"refused the connection, 5 attempts; giving up (check " \
                                f"{setting}" in result.err


def test_a_name_that_is_not_resolved_is_said_in_words():
    """The cause under requests' ConnectionError, as urllib3 wraps a failed name lookup."""
    url = "https://myshop.myinsales.example"
    lookup = urllib3.exceptions.NameResolutionError(
        "myshop.myinsales.example", None, socket.gaierror(-2, "Name or service not known"))
    failed = requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, url, lookup))
    assert sync_stock.transport_problem(failed, url, 60, 0.1) == \
        "the name myshop.myinsales.example is not resolved"


@pytest.mark.parametrize("fault, words", [
    ({"status": 200, "body": "<html>Welcome!</html>", "headers": {"Content-Type": "text/html"}},
     "the answer is not JSON (text/html); "),
    ({"status": 404, "body": "<html>Not Found</html>", "headers": {"Content-Type": "text/html"}},
     "HTTP 404, no such API path; "),
    ({"status": 200, "body": {"status": "ok"}}, "expected a JSON list, got object; ")],
    ids=["a web page", "a 404", "JSON of another shape"])
def test_an_address_that_is_not_the_api_is_asked_about(shop, run, monitor, tmp_path, env,
                                                       fault, words):
    """INSALES_URL answering like some other web site: the line asks whether INSALES_URL is
    the shop's address, in a run and in --check (exit 3: the API could not be read)."""
    shop.insales.inject(PRODUCTS, **fault)
    error = assert_not_working(run, monitor, tmp_path, 3)
    asked = f"is INSALES_URL={env['INSALES_URL']} the shop's address (https://myshop.myinsales.ru)?"
    assert f"{words}{asked}" in error
    shop.insales.inject(PRODUCTS, **fault)
    checked = run("--check")
    assert checked.code == 3 and asked in checked.err


def test_a_kaktus_address_that_is_some_other_site_is_asked_about(shop, run, monitor, tmp_path):
    """KAK2C_URL pointing at a site that answers anything with a page: the login line asks
    whether KAK2C_URL is the Kaktus API's address."""
    elsewhere = start_monitor()
    try:
        error = assert_not_working(run, monitor, tmp_path, 3, KAK2C_URL=elsewhere.url)
    finally:
        elsewhere.stop()
    assert f"the answer is not JSON (text/plain); is KAK2C_URL={elsewhere.url} the Kaktus " \
           "API's address (https://app.kak2c.ru)?" in error


# --- TLS --------------------------------------------------------------------------------------

@pytest.fixture
def tls_shop(box, tmp_path):
    """The shop served over TLS with a certificate of its own for 127.0.0.1; yields the
    certificate's file."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    shop = sandbox.InSales(box.clock)
    shop.start(tls=context)
    for n in range(3):
        shop.add_product(f"P{n}", [{"barcode": f"T{n}", "quantity": 0}])
        box.kak2c.add_product({"id": n, "barcode": f"T{n}", "stock": [{"stockTotal": 4}]})
    yield shop, cert
    shop.stop()


def test_an_untrusted_certificate_names_requests_ca_bundle(tls_shop, run, monitor, tmp_path):
    """A shop whose certificate no known CA signed: the line says so and names
    REQUESTS_CA_BUNDLE; with it set to the certificate, the run syncs over TLS."""
    shop, cert = tls_shop
    error = assert_not_working(run, monitor, tmp_path, 3, INSALES_URL=shop.url)
    assert f"the TLS certificate of 127.0.0.1:{shop.url.rsplit(':', 1)[1]} is not trusted " \
           "(a private CA? set REQUESTS_CA_BUNDLE to its file)" in error
    assert "INSALES_URL" in error
    result = run(INSALES_URL=shop.url, REQUESTS_CA_BUNDLE=cert)
    assert (result.code, result.summary["updated"]) == (0, 3)
    assert [v["quantity"] for v in shop.all_variants()] == [4, 4, 4]


def test_a_dripping_answer_over_tls_is_given_up_at_the_deadline(tls_shop, run):
    """The deadline holds over TLS too: a dripping products page is given up at SYNC_TIMEOUT
    and retried."""
    shop, cert = tls_shop
    shop.inject(PRODUCTS, status=None, drip=0.05, drip_after=300)
    result = run(INSALES_URL=shop.url, REQUESTS_CA_BUNDLE=cert, SYNC_TIMEOUT=0.2)
    assert (result.code, result.summary["updated"], result.waits) == (0, 3, [0.5])
    assert "gave no whole answer within 0.2 s (SYNC_TIMEOUT)" in result.err


# --- the rehearsal the README starts with -----------------------------------------------------

def test_the_rehearsal_against_python_sandbox_py(tmp_path, monkeypatch, capsys):
    """`python sandbox.py`, its printed settings saved as a file, then --check (ready),
    --dry-run, a run and a watch against it, as the README's first screens tell a newcomer."""
    for key in SETTINGS:
        monkeypatch.delenv(key, raising=False)
    settings = tmp_path / "sandbox.env"
    settings.write_text("# left from an earlier rehearsal\n")
    settings.chmod(0o644)
    server = subprocess.Popen([sys.executable, str(ROOT / "sandbox.py"), "--products", "12",
                               "--env-file", str(settings)], stdout=subprocess.PIPE, text=True)
    try:
        server.stdout.readline()  # the settings as one JSON line, for scripts
        assert server.stdout.readline().startswith(f"# settings for sync_stock.py in {settings}")
        assert stat.S_IMODE(settings.stat().st_mode) == 0o600
        base = ["--env-file", str(settings)]
        assert sync_stock.main([*base, "--check"]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == "ready"
        assert sync_stock.main([*base, "--dry-run"]) == 0
        assert "changes planned" in capsys.readouterr().out
        assert sync_stock.main([*base, "--json"]) == 0
        first = json.loads(capsys.readouterr().out)
        assert (first["status"], first["kak2c_stock_field"]) == ("ok", "stockAvailable")
        assert first["updated"] > 0
        syncs = iter(range(2))
        assert sync_stock.main([*base, "--watch", "--json"],
                               wait=lambda seconds: next(syncs) == 1) == 0
        watched = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(s["status"], s["changed"]) for s in watched] == [("ok", 0), ("ok", 0)]
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=10)
