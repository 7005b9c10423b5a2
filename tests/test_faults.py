"""Faults and bad input over real HTTP: a correct sync or a clean refusal, never a wrong write."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

import sandbox
import sync_stock
from conftest import ROOT, add_pair, kaktus_quantities, shop_quantities, writes

EXPIRED = {"errors": [{"code": 401, "message": "JWT expired at 2026-11-28T10:00:00Z"}],
           "success": False}


def plain_shop(box, products=350, differ=0.5):
    """A clean catalogue: 2 InSales pages, 4 Kaktus pages, half the stock differing."""
    sandbox.fill_sample(box, products=products, sizes=1, quirks=False, differ=differ)
    return kaktus_quantities(box)


def assert_clean_failure(result, box, code=3):
    assert result.code == code
    assert writes(box) == []
    assert "Traceback" not in result.err


# --- the Kaktus token -------------------------------------------------------------------------

@pytest.mark.parametrize("http_status", [401, 200])
def test_token_expiring_mid_walk_is_renewed_once(box, run, http_status):
    """The JWT expires on page 2 (answered as HTTP 401 or 200): log in again, finish the sync."""
    expected = plain_shop(box)
    box.kak2c.expired_status = http_status
    box.kak2c.inject("page=2", status=None, run=box.kak2c.expire_tokens)
    result = run()
    assert result.code == 0
    assert shop_quantities(box) == expected
    assert len(box.kak2c.calls("POST", "/api/lite/auth")) == 2
    page_2 = [c for c in box.kak2c.calls("GET") if c["query"]["page"] == "2"]
    assert len(page_2) == 2  # refused with the old token, then served with the new one
    assert page_2[0]["headers"]["Authorization"] != page_2[1]["headers"]["Authorization"]


def test_expiry_answer_body_under_http_200_is_not_read_as_a_catalogue(box, run):
    """The documented expiry body with HTTP 200 leads to a fresh login, not to an empty page."""
    expected = plain_shop(box, products=50)
    box.kak2c.inject("page=0", status=200, body=EXPIRED)
    result = run()
    assert result.code == 0
    assert shop_quantities(box) == expected


@pytest.mark.parametrize("tamper", ["expired", "garbage", "truncated", "not a jwt", "empty",
                                    "lone surrogate"])
def test_bad_cached_token_leads_to_a_fresh_login(box, run, env, tamper):
    """An expired, unreadable, truncated or non-JWT cached token is replaced by a new login."""
    add_pair(box, "T1", 0, 1)
    assert run().code == 0
    path = env["KAK2C_TOKEN_FILE"]
    with open(path) as cached:
        cache = json.load(cached)
    if tamper == "expired":
        cache["expires_at"] = cache["renew_at"] = 1.0
    elif tamper == "truncated":
        cache["access_token"] = cache["access_token"][:20]
    elif tamper == "not a jwt":
        cache["access_token"] = "hello"
    elif tamper == "lone surrogate":
        cache["access_token"] = "\ud800"
    text = {"garbage": "{not json", "empty": ""}.get(tamper, json.dumps(cache))
    with open(path, "w") as out:
        out.write(text)
    box.kak2c.products[0]["variants"][0]["stock"] = [{"stockTotal": 4}]
    result = run()
    assert result.code == 0
    assert box.insales.all_variants()[0]["quantity"] == 4
    assert len(box.kak2c.calls("POST", "/api/lite/auth")) == 2


def test_short_lived_tokens_are_reused_too(box, run):
    """A token that lives a minute is reused by the next run, not renewed before every call."""
    sandbox.fill_sample(box, products=350, sizes=1, quirks=False)
    box.kak2c.token_ttl = 60
    assert run().code == 0
    assert run().code == 0
    assert len(box.kak2c.calls("POST", "/api/lite/auth")) == 1


@pytest.mark.parametrize("status, body, words", [
    (401, {"success": False, "errors": [{"code": 401, "message": "Invalid login"}]},
     "rejected the credentials"),
    (403, "<html>Forbidden</html>", "rejected the credentials"),
    (200, "<html>maintenance</html>", "not JSON"),
    (200, {"token_type": "bearer", "expires_in": 14400}, "no access_token"),
    (200, '{"access_token": "\\ud800", "expires_in": 14400}', "no bearer token"),
    (200, {"access_token": "two words", "expires_in": 14400}, "no bearer token"),
    (200, {"access_token": "x" * 9000, "expires_in": 14400}, "no bearer token"),
    (200, {"success": False, "errors": [{"code": 400, "message": "blocked"}]}, "blocked"),
])
def test_failed_login_exits_3_with_a_clear_line(box, run, status, body, words):
    """A login refused or answered with garbage ends with exit 3, one clear line, no write."""
    add_pair(box, "L1", 0, 1)
    box.kak2c.inject("POST /api/lite/auth", status=status, body=body)
    result = run()
    assert_clean_failure(result, box)
    assert words in result.err
    assert result.summary["status"] == "failed"


# --- transport and rate limit -----------------------------------------------------------------

@pytest.mark.parametrize("api, match", [("insales", "GET /admin/products.json"),
                                        ("insales", "PUT /admin/products/variants_group"),
                                        ("kak2c", "page=0")])
@pytest.mark.parametrize("status", [429, 503])
def test_rate_limit_answers_are_waited_out(box, run, api, match, status):
    """429 and 503 with Retry-After, on reads and on writes: wait as told, then go on."""
    expected = plain_shop(box, products=30)
    getattr(box, api).inject(match, status=status, body=b"", headers={"Retry-After": "7"})
    result = run()
    assert result.code == 0
    assert shop_quantities(box) == expected
    assert "rate limit" in result.err
    assert result.waits == [7.0]  # as Retry-After says, not the backoff


def test_the_sandbox_rate_limiter_is_waited_out(box, run):
    """Running into the sandbox's real fixed-window limit, the run waits and completes."""
    expected = plain_shop(box, products=600, differ=0.1)
    box.insales.rate_window = 2.0
    box.insales.window_start, box.insales.used = box.clock(), 499
    result = run()
    assert result.code == 0
    assert shop_quantities(box) == expected
    assert any(c["status"] == 429 for c in box.insales.log)
    assert result.waits and all(0 < wait <= 2 for wait in result.waits)


def test_retry_after_beyond_max_wait_gives_up_with_exit_3(box, run):
    """A Retry-After longer than SYNC_MAX_WAIT ends the run at once, nothing written."""
    plain_shop(box, products=30)
    box.insales.inject("GET /admin/products.json", status=429, body=b"",
                       headers={"Retry-After": "3600"})
    result = run(SYNC_MAX_WAIT=5)
    assert_clean_failure(result, box)
    assert "SYNC_MAX_WAIT" in result.err
    assert result.waits == []


FAULTS = [
    {"status": 500, "body": "<html>Error</html>", "headers": {"Content-Type": "text/html"}},
    {"status": 502, "body": "<html>Bad gateway</html>", "headers": {"Content-Type": "text/html"}},
    {"status": 504, "body": ""},
    {"reset": True},
    {"hang": 1, "status": None},
]


# A 504 of an InSales products read asks fewer products instead (see test_fidelity.py).
@pytest.mark.parametrize("api, match, fault", [
    (api, match, fault) for api, match in (("insales", "GET /admin"), ("kak2c", "page=1"),
                                           ("insales", "PUT /admin"))
    for fault in FAULTS if (match, fault.get("status")) != ("GET /admin", 504)])
def test_passing_faults_are_retried(box, run, api, match, fault):
    """5xx with HTML, a connection reset and a read timeout are retried, and the sync finishes."""
    expected = plain_shop(box, products=150)
    getattr(box, api).inject(match, times=2, **fault)
    result = run(SYNC_TIMEOUT=0.15)  # the one real wait here: a read timeout is a clock
    assert result.code == 0, result.err
    assert shop_quantities(box) == expected
    assert "retrying" in result.err
    assert result.waits == [0.5, 1.0]


@pytest.mark.parametrize("api, match", [("insales", "GET /admin"), ("kak2c", "GET /api")])
def test_a_fault_that_never_passes_exits_3_and_writes_nothing(box, run, api, match):
    """After bounded retries an API that stays down ends the run with exit 3."""
    plain_shop(box, products=30)
    getattr(box, api).inject(match, status=500, times=100, body="<html>down</html>")
    result = run()
    assert_clean_failure(result, box)
    assert "giving up" in result.err
    assert result.waits == [0.5, 1.0, 2.0, 4.0]  # 5 attempts, the backoff doubling


def test_writes_that_never_pass_exit_3_when_nothing_was_written(box, run):
    """An InSales that takes no write at all ends with exit 3: nothing was written."""
    plain_shop(box, products=30)
    box.insales.inject("PUT /admin", reset=True, times=100)
    result = run()
    assert result.code == 3
    assert result.summary["updated"] == 0
    assert all(c["status"] == 0 for c in writes(box))


def test_usage_limit_near_the_maximum_slows_down_before_a_429(box, run):
    """When API-Usage-Limit says the budget is nearly spent, requests are paced, and no 429."""
    expected = plain_shop(box, products=30)
    box.insales.window_start, box.insales.used = box.clock(), 492
    result = run("-v")
    assert result.code == 0
    assert shop_quantities(box) == expected
    assert "slowing down" in result.err
    assert not any(c["status"] == 429 for c in box.insales.log)
    assert result.waits and set(result.waits) == {300 / 500}  # 500 requests per 5 minutes


def with_usage(header):
    """A rewrite that puts this API-Usage-Limit header on every InSales answer."""
    def rewrite(request, status, headers, body):
        return status, {**headers, "API-Usage-Limit": header}, body
    return rewrite


@pytest.mark.parametrize("header", ["1/1", "0/0", "abc", "9/5", "1/99999999999"])
def test_an_insane_usage_header_is_ignored(box, run, header):
    """API-Usage-Limit that is not used/limit with a sane limit never makes the run wait."""
    expected = plain_shop(box, products=30)
    box.insales.rewrite = with_usage(header)
    result = run()
    assert (result.code, result.waits) == (0, [])
    assert shop_quantities(box) == expected


def test_usage_pacing_never_waits_longer_than_max_wait_in_a_run(box, run):
    """A budget that stays nearly spent paces the run for SYNC_MAX_WAIT at most, all told."""
    expected = plain_shop(box, products=30)
    for n in range(300):
        add_pair(box, f"U{n:03d}", 0, 1)
    box.insales.rewrite = with_usage("499/500")
    result = run(SYNC_MAX_WAIT=2)
    assert result.code == 0
    assert shop_quantities(box) == {**expected, **{f"U{n:03d}": 1 for n in range(300)}}
    assert result.waits == [0.6, 0.6, 0.6]  # then no more: 2.4 s would pass SYNC_MAX_WAIT


def test_retry_after_is_slept_for_real_by_default(box, env, tmp_path):
    """Without an injected sleep, a 429's Retry-After is waited out on the real clock."""
    plain_shop(box, products=5)
    box.insales.inject("GET /admin/products.json", status=429, headers={"Retry-After": "1"})
    (tmp_path / "empty.env").write_text("")
    started = time.monotonic()
    assert sync_stock.main(["--env-file", str(tmp_path / "empty.env"), "-q"]) == 0
    assert time.monotonic() - started >= 1.0


# --- bad answers ------------------------------------------------------------------------------

@pytest.mark.parametrize("api, match, fault, words", [
    ("insales", "GET /admin", {"status": 200, "body": "[{"}, "not JSON"),
    ("insales", "GET /admin", {"status": 200, "body": "<html>login</html>",
                               "headers": {"Content-Type": "text/html"}}, "not JSON"),
    ("insales", "GET /admin", {"status": 200, "body": {"products": []}}, "expected a JSON list"),
    ("insales", "GET /admin", {"status": 404, "body": "<html>404</html>"}, "HTTP 404"),
    ("insales", "GET /admin", {"status": 200, "body": [{"id": 1}] * 250}, "no updated_at"),
    ("kak2c", "page=1", {"status": 200, "body": "{oops"}, "not JSON"),
    ("kak2c", "page=1", {"status": 200, "body": [1, 2]}, "expected a JSON object"),
    ("kak2c", "page=1", {"status": 200, "body": {"items": []}}, "no products list"),
    ("kak2c", "page=0", {"status": 200, "body": {"products": [], "recordsTotal": "many"}},
     "recordsTotal"),
    ("kak2c", "page=1", {"status": 400, "body": {"success": False, "errors": [
        {"code": 400, "message": "bad page"}]}}, "bad page"),
])
def test_malformed_answers_exit_3_naming_the_api(box, run, api, match, fault, words):
    """Malformed JSON, HTML, the wrong JSON kind or an error status: exit 3, a line, no write."""
    plain_shop(box)
    getattr(box, api).inject(match, **fault)
    result = run()
    assert_clean_failure(result, box)
    assert words in result.err
    assert ("InSales" if api == "insales" else "Kaktus") in result.err


def test_many_malformed_products_are_named_five_at_most(box, run):
    """Thousands of broken products make five warning lines and a total, not a flood."""
    add_pair(box, "G1", 0, 3)
    for n in range(40):
        box.insales.add_product(f"broken {n}", [{"barcode": f"X{n}"}]).pop("variants")
    result = run("-q")
    assert result.summary["skipped_records"] == 40
    lines = [line for line in result.err.splitlines() if "malformed product" in line]
    assert len(lines) == 6 and "40 malformed products skipped in all" in lines[-1]


def test_single_malformed_records_are_skipped_and_counted(box, run):
    """Products without variants, variants without id and non-numeric stock are skipped."""
    good = add_pair(box, "G1", 0, 3)
    broken = box.insales.add_product("no variants", [{"barcode": "X1", "quantity": 1}])
    broken.pop("variants")
    no_id = box.insales.add_product("no id", [{"barcode": "X2", "quantity": 1}])
    no_id["variants"][0].pop("id")
    box.kak2c.add_product({"id": 7, "barcode": "X1", "stock": [{"stockTotal": 5}]})
    box.kak2c.add_product({"id": 8, "barcode": "X2", "stock": [{"stockTotal": 5}]})
    text = add_pair(box, "N1", 2, None)
    box.kak2c.products[-1]["stock"] = [{"stockTotal": "lots"}]
    box.kak2c.add_product("not a product")
    result = run()
    assert result.code == 0
    assert result.summary["skipped_records"] == 3
    assert result.summary["unknown_stock"] == 1
    assert box.insales.variant(good)["quantity"] == 3
    assert box.insales.variant(text)["quantity"] == 2
    assert result.summary["updated"] == 1


@pytest.mark.parametrize("knob, value, words", [
    ("repeat_first_page", True, "page already read"),
    ("inflate_total", 500, "inconsistent"),
    ("inflate_total", 10**30, "inconsistent"),
    ("inflate_total", 10**400, "inconsistent"),
])
def test_inconsistent_kaktus_catalogue_is_noticed_within_a_few_requests(box, run, knob, value,
                                                                         words):
    """A Kaktus that repeats its pages or claims more than it holds (even 10**400): exit 3, no
    write, noticed within page 0 plus two rounds of the fetch threads of the first bad page."""
    plain_shop(box)
    setattr(box.kak2c, knob, value)
    result = run()
    assert_clean_failure(result, box)
    assert words in result.err
    first_bad = 1 if knob == "repeat_first_page" else 4  # 350 products: pages 0-3 are real
    assert len(box.kak2c.calls("GET")) <= first_bad + 2 * sync_stock.KAKTUS_THREADS


def test_a_kaktus_that_ignores_page_with_a_huge_total_stops_at_once(box, run):
    """recordsTotal 1,000,000 and the same page whatever is asked: 9 requests at most, not
    10,000, and memory bounded by the look-ahead."""
    plain_shop(box)
    box.kak2c.repeat_first_page = True
    box.kak2c.inflate_total = 1_000_000
    result = run()
    assert_clean_failure(result, box)
    assert len(box.kak2c.calls("GET")) <= 1 + 2 * sync_stock.KAKTUS_THREADS


def test_insales_walk_that_does_not_advance_exits_3(box, run):
    """An InSales that answers the same full page again and again ends the walk, exit 3."""
    plain_shop(box, products=300)
    same = sorted(box.insales.products.values(), key=lambda p: p["id"])[:250]
    box.insales.inject("GET /admin/products.json", status=200, body=same, times=50)
    result = run()
    assert_clean_failure(result, box)
    assert "does not advance" in result.err
    assert len(box.insales.calls("GET")) == 2


# --- writes -----------------------------------------------------------------------------------

def test_a_rejected_batch_leaves_the_others_applied(box, run):
    """One batch of three answered 422: the other two are written, exit 1, ids logged."""
    for n in range(250):
        add_pair(box, f"B{n:04d}", 0, 1)
    box.insales.inject("PUT /admin", after=1, status=422,
                       body={"errors": {"quantity": ["is invalid"]}})
    result = run()
    assert result.code == 1
    assert result.summary["status"] == "partial"
    assert (result.summary["updated"], result.summary["failed"]) == (150, 100)
    rejected = json.loads(writes(box)[1]["body"])["variants"]
    assert str(rejected[0]["id"]) in result.err
    assert all(box.insales.variant(v["id"])["quantity"] == 0 for v in rejected)
    assert sum(v["quantity"] == 1 for v in box.insales.all_variants()) == 150
    assert run().summary["status"] == "ok"


def test_per_item_errors_are_counted_as_failed(box, run):
    """Items InSales marks as not ok in its answer count as failed, the rest as updated."""
    first = add_pair(box, "I1", 0, 1)
    add_pair(box, "I2", 0, 2)
    box.insales.inject("PUT /admin", status=200, body=[{"id": first, "status": "error"}])
    result = run()
    assert (result.code, result.summary["updated"], result.summary["failed"]) == (1, 1, 1)
    assert str(first) in result.err


def test_empty_kaktus_catalogue_is_refused_unless_forced(box, run):
    """Kaktus with no products while InSales has barcodes: exit 4, nothing written; --force."""
    box.insales.add_product("P", [{"barcode": "A1", "quantity": 5}])
    result = run()
    assert_clean_failure(result, box, code=4)
    assert result.summary["status"] == "refused"
    assert "no products" in result.err
    assert run("--force").code == 0


def test_mass_zeroing_is_refused_and_a_dry_run_says_so(box, run):
    """Zeroing over SYNC_GUARD_ZERO_SHARE of stocked variants: exit 4; dry run reports it."""
    for n in range(20):
        add_pair(box, f"Z{n:02d}", 5, 0 if n < 12 else 5)
    dry = run("--dry-run")
    assert dry.code == 0
    assert "guard would refuse" in dry.err
    assert "12 of 20" in dry.summary["guard"]
    result = run()
    assert_clean_failure(result, box, code=4)
    assert run(SYNC_GUARD_ZERO_SHARE=0.7).code == 0
    assert sum(v["quantity"] == 0 for v in box.insales.all_variants()) == 12


# --- process ----------------------------------------------------------------------------------

def test_killed_run_releases_the_lock_and_the_next_converges(box, run, env, tmp_path):
    """A run killed by SIGKILL in the middle of its writes leaves no lock and no false sale;
    the next converges."""
    for n in range(300):
        add_pair(box, f"K{n:04d}", 5, 5)
    assert run().summary["changed"] == 0  # in sync, and a state to compare with
    # A buffer of 2 lowers every variant 5 -> 3 while Kaktus stays at 5: had the killed run not
    # announced its writes, the next would take each landed 3 for a sale of 2.
    second_write = threading.Event()
    box.insales.inject("PUT /admin", status=None, after=1, hang=60, run=second_write.set)
    (tmp_path / "empty.env").write_text("")
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "sync_stock.py"), "--env-file", str(tmp_path / "empty.env")],
        env={**os.environ, **env, "SYNC_STOCK_BUFFER": "2"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert second_write.wait(30)
        assert run().summary["status"] == "skipped"
    finally:
        child.kill()
        child.wait()
    assert sum(v["quantity"] == 3 for v in box.insales.all_variants()) == 100
    result = run(SYNC_STOCK_BUFFER=2)
    assert (result.code, result.summary["status"]) == (0, "ok")
    assert (result.summary["updated"], result.summary["held_units"]) == (200, 0)
    assert all(v["quantity"] == 3 for v in box.insales.all_variants())


def test_secrets_never_reach_any_output(box, run, env, tmp_path):
    """Passwords and the JWT appear in no stdout, stderr, log file, report or error message."""
    plain_shop(box, products=150)
    log_file, report = tmp_path / "sync.log", tmp_path / "report.csv"
    box.kak2c.inject("page=1", status=400, body={"success": False, "errors": [
        {"code": 400, "message": f"echo {box.kak2c.password} {box.insales.password}"}]})
    outputs = []
    for args in (["-v", "-v"], ["-v", "--dry-run"], ["-v"]):
        result = run(*args, "--report", str(report), LOG_FILE=log_file)
        outputs += [result.out, result.err]
    with open(env["KAK2C_TOKEN_FILE"]) as cached:
        token = json.load(cached)["access_token"]
    outputs += [log_file.read_text(), report.read_text()]
    assert "<hidden>" in log_file.read_text()
    for secret in (box.kak2c.password, box.insales.password, token):
        assert not any(secret in text for text in outputs)


def test_a_kaktus_outage_mid_walk_does_not_retry_every_remaining_page(box, run):
    """When a page fails for good, the pages not yet fetched are dropped, not retried."""
    sandbox.fill_sample(box, products=3000, sizes=1, quirks=False)
    box.kak2c.inject("page=", status=500, after=1, times=10_000)
    result = run()
    assert_clean_failure(result, box)
    # page 0; then, of the 30, the pages in the threads' hands when page 1 failed for good and
    # the next one each thread took up as it came free: no more, each tried 5 times
    threads, attempts = sync_stock.KAKTUS_THREADS, sync_stock.RetryPolicy().attempts
    assert len(box.kak2c.calls("GET")) <= 1 + 2 * threads * attempts  # of 1 + 30 x 5


def test_an_insales_failure_stops_the_kaktus_pages_still_to_come(box, run):
    """Kaktus pages wait for the InSales walk; when it fails, the rest are not fetched."""
    sandbox.fill_sample(box, products=3000, sizes=1, quirks=False)
    box.kak2c.latency = 0.05
    box.insales.inject("GET /admin", status=403, body={"errors": ["forbidden"]})
    result = run()
    assert_clean_failure(result, box)
    assert "InSales" in result.err and "HTTP 403" in result.err
    assert len(box.kak2c.calls("GET")) < 30 // 2  # of the 30 pages


@pytest.mark.parametrize("setting", ["KAK2C_TOKEN_FILE", "SYNC_STATE_FILE"])
def test_an_unwritable_file_is_a_config_error_before_any_request(box, run, tmp_path, setting):
    """A token cache or state in a folder that cannot be written: exit 2, nothing sent."""
    add_pair(box, "TC1", 0, 1)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    result = run(**{setting: blocker / "file"})
    assert result.code == 2
    assert setting in result.err and "Traceback" not in result.err
    assert box.insales.log == [] and box.kak2c.log == []
