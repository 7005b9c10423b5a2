"""Hostile and malformed answers over real HTTP: no traceback, no hang, valid output, no wrong
write. Ends with a seeded fuzz test that mutates the sandbox's answers."""
import base64
import copy
import json
import os
import random
import subprocess
import sys

import pytest

import sandbox
import sync_stock
from conftest import ROOT, add_pair, quantity, writes

# --- secrets ----------------------------------------------------------------------------------

@pytest.mark.parametrize("password", ["wow", "0", "1", "5", "e"])
def test_a_short_password_leaves_every_output_intact(box, run, password):
    """A one- to three-letter password rewrites nothing we print: the summary stays JSON with
    the right numbers and titles keep their letters; an echo of it in an error is hidden."""
    box.kak2c.password = password
    for n in range(15):
        add_pair(box, f"S{n:02d}", 0, 10 + n)
    box.insales.products[next(iter(box.insales.products))]["title"] = "wow 0 1 5 e"
    dry = run("--dry-run", KAK2C_PASSWORD=password)
    assert "wow 0 1 5 e" in dry.err and "<hidden>" not in dry.err
    result = run(KAK2C_PASSWORD=password)
    assert (result.code, result.summary["updated"], result.summary["matched"]) == (0, 15, 15)
    assert result.out.count("<hidden>") == 0
    box.kak2c.inject("page=0", status=400, body={"success": False, "errors": [
        {"code": 400, "message": f"bad login {box.kak2c.login}:{password}!"}]})
    failed = run(KAK2C_PASSWORD=password)
    assert failed.code == 3
    assert f":{password}!" not in failed.summary["error"] and "<hidden>" in failed.summary["error"]


def test_only_password_values_are_secrets():
    """The login and other figures of the credentials file are no secret; the passwords are,
    and so is the Basic credential that carries the InSales one (base64 of key:password)."""
    settings = sync_stock.load_settings({
        "INSALES_URL": "https://shop.example", "INSALES_API_KEY": "app",
        "INSALES_API_PASSWORD": "ins-pass", "KAK2C_CREDENTIALS_FILE": str(ROOT / "files" / "x")}
        | {"KAK2C_LOGIN": "user@example", "KAK2C_PASSWORD": "7"})
    assert settings.secrets == {"ins-pass", "7", base64.b64encode(b"app:ins-pass").decode()}


# --- malformed and absurd figures -------------------------------------------------------------

@pytest.mark.parametrize("figure", [10**30, 1e300, 2**63, "1e999", 1_000_000_001])
def test_an_absurd_stock_figure_is_unknown_and_never_written(box, run, figure):
    """A Kaktus figure above 1,000,000,000 counts nothing on a shelf: unknown, not written;
    the variant beside it is synced."""
    variant, plain = add_pair(box, "A1", 4, 0), add_pair(box, "A2", 4, 2)
    box.kak2c.products[0]["variants"][0]["stock"] = [{"stockTotal": figure}]
    result = run()
    assert (result.code, result.summary["unknown_stock"], quantity(box, variant)) == (0, 1, 4)
    assert quantity(box, plain) == 2 and result.summary["updated"] == 1


@pytest.mark.parametrize("api, match", [("kak2c", "page=0"), ("kak2c", "page=1"),
                                        ("insales", "GET /admin/products.json")])
def test_deeply_nested_json_is_a_malformed_answer(box, run, api, match):
    """An answer of thousands of nested brackets: exit 3, nothing written, no RecursionError."""
    sandbox.fill_sample(box, products=150, sizes=1, quirks=False)
    getattr(box, api).inject(match, status=200, body="[" * 100_000 + "]" * 100_000)
    result = run()
    assert (result.code, writes(box)) == (3, [])
    assert "nested too deep" in result.err and "Traceback" not in result.err


def test_nesting_inside_one_record_is_harmless(box, run):
    """A deep (but parseable) structure in a field we do not read changes nothing."""
    variant = add_pair(box, "N1", 0, 3)
    deep: list = []
    for _ in range(400):
        deep = [deep]
    box.kak2c.products[0]["extra"] = deep
    box.kak2c.products[0].pop("id")
    assert run().code == 0
    assert quantity(box, variant) == 3


@pytest.mark.parametrize("missing, skipped", [("updated_at", 0), ("id", 1)])
def test_a_short_last_insales_page_needs_no_anchor(box, run, missing, skipped):
    """The last page's last product without updated_at is still read; without id it is a
    skipped record; either way the run goes on to exit 0 (no further page was needed)."""
    variant = add_pair(box, "L1", 0, 2)
    broken = box.insales.add_product("broken", [{"barcode": "L2", "quantity": 1}])
    broken.pop(missing)
    box.kak2c.add_product({"id": 99, "barcode": "L2", "stock": [{"stockTotal": 6}]})
    result = run()
    assert (result.code, result.summary["skipped_records"], quantity(box, variant)) == (
        0, skipped, 2)
    assert broken["variants"][0]["quantity"] == (6 if missing == "updated_at" else 1)


def test_pages_that_begin_and_end_alike_are_not_repeats(box, run):
    """Products wrapped in long identical text make pages of one length with the same first
    and last kilobytes: they are still different pages, read and synced."""
    ids = []
    for n in range(250):
        product = box.insales.add_product(f"P{n}", [{"barcode": f"B{n:04d}", "quantity": 0}])
        ids.append(product["variants"][0]["id"])
        box.kak2c.add_product({"notes": "x" * 5000, "id": 1000 + n, "barcode": f"B{n:04d}",
                               "stock": [{"stockTotal": 2}], "tail": "y" * 5000})
    result = run()
    assert (result.code, result.summary["updated"]) == (0, 250), result.err
    assert all(quantity(box, variant) == 2 for variant in ids)


SURROGATE = "\ud800"


def test_lone_surrogates_never_break_output(box, env, tmp_path):
    """`\\ud800` in a title, a barcode and an error message: every output stays valid UTF-8,
    and a sync that wrote keeps its exit code (the report once failed after the writes)."""
    variant = add_pair(box, "U1", 0, 3)
    box.insales.products[next(iter(box.insales.products))]["title"] = f"Shoe {SURROGATE}"
    box.insales.add_product("odd", [{"barcode": f"X{SURROGATE}", "quantity": 1}])
    box.kak2c.add_product({"id": 77, "barcode": f"X{SURROGATE}", "stock": [{"stockTotal": 5}]})
    (tmp_path / "empty.env").write_text("")
    base = [sys.executable, str(ROOT / "sync_stock.py"), "--env-file", str(tmp_path / "empty.env")]
    environment = {**os.environ, **env, "LOG_FILE": str(tmp_path / "sync.log")}
    outputs = []
    for args in (["--dry-run", "-v"], ["--json", "--report", str(tmp_path / "r.csv"), "-v"]):
        child = subprocess.run(base + args, env=environment, capture_output=True, timeout=60)
        assert child.returncode == 0, child.stderr
        outputs += [child.stdout, child.stderr]
    assert quantity(box, variant) == 3
    box.kak2c.inject("page=0", status=400, body={"success": False, "errors": [
        {"code": 400, "message": f"bad {SURROGATE} page"}]})
    child = subprocess.run(base + ["--json"], env=environment, capture_output=True, timeout=60)
    assert child.returncode == 3
    assert "bad ? page" in json.loads(child.stdout)["error"]
    outputs += [child.stdout, child.stderr, (tmp_path / "sync.log").read_bytes(),
                (tmp_path / "r.csv").read_bytes()]
    for output in outputs:
        output.decode("utf-8")  # strict: raises on anything that is not valid UTF-8
        assert b"Traceback" not in output and b"Logging error" not in output


# --- fuzz -------------------------------------------------------------------------------------

READ = {"id", "variants", "barcode", "barcodes", "quantity", "stock", "stockTotal", "products",
        "recordsTotal", "updated_at", "title", "access_token", "status", 0}
ODD_VALUES = (None, [], {}, True, "", "abc", 10**30, 1e300, -(2**63), SURROGATE, "x" * 100_000,
              [[[[1]]]], {"nested": {"deeper": [1, 2]}})


def mutate(rng: random.Random, status: int, headers: dict, body, history: list):
    """Break one thing in an answer, the way a hostile or broken server would."""
    kind = rng.choice(("remove", "retype", "retype", "repeat", "truncate", "nest", "headers",
                       "status", "oversize"))
    if kind == "repeat" and history:
        return status, headers, rng.choice(history)
    if kind == "truncate":
        text = json.dumps(body)
        return status, headers, text[:rng.randrange(len(text) + 1)]
    if kind == "nest":
        return status, headers, "[" * 5000 + json.dumps(body) + "]" * 5000
    if kind == "headers":
        odd = rng.choice(({"API-Usage-Limit": "1/1"}, {"API-Usage-Limit": "x"},
                          {"Content-Type": "text/html"}, {"Retry-After": "1e9"}))
        return status, {**headers, **odd}, body
    if kind == "status":
        return rng.choice((500, 429, 503, 404, 204)), {**headers, "Retry-After": "1"}, body
    body = copy.deepcopy(body)
    spots = list(containers(body))
    read = [spot for spot in spots if spot[1] in READ]
    spots = read if read and rng.random() < 0.8 else spots  # mostly what the sync reads
    if spots:
        holder, key = rng.choice(spots)
        if kind == "remove" and isinstance(holder, dict):
            del holder[key]
        elif kind == "oversize":
            holder[key] = "y" * 200_000
        else:
            holder[key] = rng.choice(ODD_VALUES)
    return status, headers, body


def containers(value, depth=0):
    """Yield (container, key) for every dict key and list index inside a JSON value."""
    if depth > 6:
        return
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield value, key
        yield from containers(item, depth + 1)


@pytest.mark.parametrize("seed", range(30))
def test_fuzzed_answers_never_crash_hang_or_write_wrong(box, run, seed, tmp_path):
    """Seeded mutations of both APIs' answers: exit 0/1/3/4, valid output, and every quantity
    in InSales afterwards is either untouched or Kaktus' true figure for its barcode (or 0,
    where the answer said its variant had no stock entries at all: `"stock": []`)."""
    rng = random.Random(seed)
    sandbox.fill_sample(box, products=260, sizes=1, quirks=False, differ=0.5, seed=seed + 1)
    before = {v["id"]: v["quantity"] for v in box.insales.all_variants()}
    truth = {v["barcode"]: v["stock"][0]["stockTotal"] for v in box.kak2c.variants()}
    barcodes = {v["id"]: v["barcode"] for v in box.insales.all_variants()}
    histories = []
    for emulator in (box.insales, box.kak2c):
        history: list = []
        histories.append(history)

        def rewrite(request, status, headers, body, history=history):
            if rng.random() < 0.3 and not isinstance(body, (bytes, str)):
                status, headers, body = mutate(rng, status, headers, body, history)
            history.append(body)
            return status, headers, body

        emulator.rewrite = rewrite
    result = run("--report", str(tmp_path / "report.csv"))
    assert result.code in (0, 1, 3, 4), result.err
    assert "Traceback" not in result.err
    (result.out + result.err).encode("utf-8")
    assert result.summary is not None and result.summary["status"] in (
        "ok", "partial", "failed", "refused")
    none_stocked = {variant.get("barcode") for body in histories[1]
                    for variant in variant_records(body) if variant.get("stock") == []}
    for variant in box.insales.all_variants():
        barcode = barcodes[variant["id"]]
        allowed = {before[variant["id"]], truth[barcode]}
        if barcode in none_stocked:
            allowed.add(0)
        assert variant["quantity"] in allowed


def variant_records(body) -> list:
    """The variant records of an InSales page or a Kaktus page (products with variants)."""
    def listed(value) -> list:
        return value if isinstance(value, list) else []

    products = body.get("products") if isinstance(body, dict) else body
    return [variant for product in listed(products) if isinstance(product, dict)
            for variant in listed(product.get("variants")) if isinstance(variant, dict)]


@pytest.mark.parametrize("seed", range(8))
def test_fuzz_that_breaks_no_whole_answer_writes_what_it_should(box, run, seed):
    """Mutations of single records (a barcode, a quantity, a stock list retyped or removed)
    and passing 5xx answers: the run exits 0 and every variant no mutation touched ends at
    Kaktus' figure. The check that the fuzz above can fail: a run that gives up is caught."""
    rng = random.Random(seed)
    sandbox.fill_sample(box, products=260, sizes=1, quirks=False, differ=0.5, seed=seed + 1)
    truth = {v["barcode"]: v["stock"][0]["stockTotal"] for v in box.kak2c.variants()}
    touched: set = set()
    for emulator in (box.insales, box.kak2c):
        failed: set = set()

        def rewrite(request, status, headers, body, failed=failed):
            if request.method != "GET" or isinstance(body, (bytes, str)) or status != 200:
                return status, headers, body
            if request.target not in failed and rng.random() < 0.2:
                failed.add(request.target)  # a 5xx once; its retry gets the real answer
                return 500, headers, b""
            body = copy.deepcopy(body)
            records = variant_records(body)
            for record in rng.sample(records, min(len(records), rng.randint(1, 3))):
                touched.add(record.get("barcode"))
                key = rng.choice(sorted({"barcode", "quantity", "stock", "title"} & set(record)))
                if rng.random() < 0.3:
                    del record[key]
                else:
                    record[key] = rng.choice(ODD_VALUES)
            return status, headers, body

        emulator.rewrite = rewrite
    result = run()
    assert result.code == 0, result.err
    assert touched and result.summary["updated"] > 50
    for variant in box.insales.all_variants():
        if variant["barcode"] not in touched:
            assert variant["quantity"] == truth[variant["barcode"]], variant["barcode"]
