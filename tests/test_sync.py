"""Whole runs through main() against the sandbox over real HTTP: the core sync."""
import json
import os
import re
import stat

import pytest

import sandbox
import sync_stock
from conftest import ROOT, add_pair, kaktus_quantities, refusal_of, shop_quantities, writes

FIGURE_KEYS = [figure.key for figure in sync_stock.FIGURES]


def readme_summary_keys() -> set:
    """The keys the README's "Run summary" table names, in its first column."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("\n## Run summary\n", 1)[1].split("\n## ", 1)[0]
    return {key for line in table.splitlines() if line.startswith("| `")
            for key in re.findall(r"`([a-z0-9_]+)`", line.split("|")[1])}


def test_the_summary_keys_are_figures_readme_and_json_alike(box, run):
    """The README's table names exactly the figures of FIGURES, and every --json summary,
    whatever the status, carries exactly those keys, in that order."""
    assert readme_summary_keys() == set(FIGURE_KEYS)
    add_pair(box, "K1", 0, 3)
    summaries = [run("--dry-run").summary, run().summary]
    box.kak2c.inject("page=0", status=400, body={"success": False})
    summaries.append(run().summary)
    assert [s["status"] for s in summaries] == ["dry-run", "ok", "failed"]
    assert all(list(summary) == FIGURE_KEYS for summary in summaries)


def test_full_sync_over_several_pages_makes_insales_equal_kaktus(box, run):
    """Walks 3 InSales pages (and the empty one that ends the walk) and 6 Kaktus pages, writes
    only what differs, and converges."""
    sandbox.fill_sample(box, products=600, sizes=2, quirks=False, differ=0.2)
    before = shop_quantities(box)
    expected = kaktus_quantities(box)
    changed = sum(before[b] != expected[b] for b in expected)
    result = run()
    assert result.code == 0
    assert shop_quantities(box) == expected
    summary = result.summary
    assert list(summary) == FIGURE_KEYS
    assert summary["status"] == "ok"
    assert (summary["matched"], summary["changed"], summary["updated"]) == (1200, changed, changed)
    assert summary["requests"] == {"insales": 4 + -(-changed // 100), "kak2c": 1 + 6}
    walk = box.insales.calls("GET", "/admin/products.json")
    assert [c["query"]["per_page"] for c in walk] == ["250"] * 4
    assert all("updated_since" in c["query"] and "from_id" in c["query"] for c in walk)
    assert all(c["query"]["page"] == "1" for c in walk)  # the keyset walk always asks page 1
    assert sorted(int(c["query"]["page"]) for c in box.kak2c.calls("GET")) == list(range(6))


def test_second_run_writes_nothing_and_reuses_the_token(box, run):
    """A run after a sync writes nothing and logs in to Kaktus no more."""
    sandbox.fill_sample(box, products=20, quirks=False, differ=0.5)
    assert run().code == 0
    again = run()
    assert again.code == 0
    assert (again.summary["changed"], again.summary["updated"]) == (0, 0)
    assert len(writes(box)) == 1
    assert len(box.kak2c.calls("POST", "/api/lite/auth")) == 1


def test_both_kaktus_shapes_and_every_barcode_shape_are_matched(box, run):
    """Syncs variants listed under products and products that are one variant, every shape."""
    shapes = [("4600000000017", {"barcode": "4600000000017"}),
              ("4600000000024", {"barcodes": ["4600000000024"]}),
              ("4600000000031", {"barcodes": [{"barcode": "4600000000031"}]}),
              ("X-4", {"barcodes": [{"value": "X-4"}]}),
              ("X-5", {"barcodes": [{"code": " X-5 "}]})]
    ids = []
    for n, (code, shape) in enumerate(shapes):
        product = box.insales.add_product(f"P{n}", [{"barcode": code, "quantity": 0}])
        ids.append(product["variants"][0]["id"])
        record = {"id": n, **shape, "stock": [{"stockTotal": n + 1}]}
        box.kak2c.add_product(record if n % 2 else {"id": 100 + n, "variants": [record]})
    result = run()
    assert result.code == 0
    assert [box.insales.variant(i)["quantity"] for i in ids] == [1, 2, 3, 4, 5]


def test_padded_gtin_matches_its_ean13(box, run):
    """An EAN-13 in InSales matches the same GTIN-14 with a leading zero in Kaktus."""
    variant_id = add_pair(box, "4600000000017", 1, 5)
    box.kak2c.products[0]["variants"][0]["barcode"] = "04600000000017"
    assert run().code == 0
    assert box.insales.variant(variant_id)["quantity"] == 5


def test_duplicates_and_variants_without_barcode_are_never_written(box, run):
    """Skips barcodes held twice on either side and variants with no barcode."""
    box.insales.add_product("dup", [{"barcode": "D1", "quantity": 1},
                                    {"barcode": "D1", "quantity": 1},
                                    {"barcode": None, "quantity": 1},
                                    {"barcode": "  ", "quantity": 1}])
    box.kak2c.add_product({"id": 1, "barcode": "D1", "stock": [{"stockTotal": 9}]})
    add_pair(box, "K1", 1, 9)
    box.kak2c.add_product({"id": 2, "barcode": "K1", "stock": [{"stockTotal": 8}]})
    add_pair(box, "OK1", 1, 1)  # one barcode matched, already right: the run has work to do
    result = run()
    assert (result.code, result.summary["matched"]) == (0, 1)
    assert writes(box) == []
    assert all(v["quantity"] == 1 for v in box.insales.all_variants())
    assert result.summary["insales_duplicate_barcodes"] == 1
    assert result.summary["kak2c_duplicate_barcodes"] == 1
    assert result.summary["insales_with_barcode"] == 4


def test_a_shop_whose_every_barcode_is_a_duplicate_is_refused(box, run):
    """Every barcode held twice on one side or the other: nothing can be synced, so the run is
    refused, saying so (not status ok with nothing done)."""
    box.insales.add_product("dup", [{"barcode": "D1", "quantity": 1},
                                    {"barcode": "D1", "quantity": 1}])
    box.kak2c.add_product({"id": 1, "barcode": "D1", "stock": [{"stockTotal": 9}]})
    add_pair(box, "K1", 1, 9)
    box.kak2c.add_product({"id": 2, "barcode": "K1", "stock": [{"stockTotal": 8}]})
    reason = refusal_of(run())
    assert "held twice on one side (1 in InSales, 1 in Kaktus" in reason
    assert writes(box) == []


def test_unknown_kaktus_stock_is_never_written_as_zero(box, run):
    """A Kaktus variant with no readable stock leaves the InSales quantity alone."""
    variant_id = add_pair(box, "U1", 7, None)
    result = run()
    assert box.insales.variant(variant_id)["quantity"] == 7
    assert result.summary["unknown_stock"] == 1
    assert writes(box) == []


def test_warehouse_setting_writes_quantity_at_warehouse(box, run):
    """With INSALES_WAREHOUSE=1, reads and writes quantity_at_warehouse1 and not quantity."""
    first = add_pair(box, "W1", 3, 5, warehouse1="2.0")
    second = add_pair(box, "W2", 3, 4, warehouse1="4.0")
    result = run(INSALES_WAREHOUSE=1)
    assert result.code == 0
    assert box.insales.variant(first)["quantity_at_warehouse1"] == "5.0"
    assert box.insales.variant(first)["quantity"] == 3
    [call] = writes(box)
    assert json.loads(call["body"]) == {"variants": [{"id": first, "quantity_at_warehouse1": 5}]}
    assert result.summary["updated"] == 1
    assert box.insales.variant(second)["quantity_at_warehouse1"] == "4.0"


def test_writes_go_100_variants_a_call_as_json(box, run):
    """Batches 250 changes into 3 calls of at most 100, each with Content-Type JSON."""
    for n in range(250):
        add_pair(box, f"B{n:04d}", 0, 1)
    result = run()
    assert result.summary["updated"] == 250
    calls = writes(box)
    assert len(calls) == 3
    assert all(c["headers"]["Content-Type"] == "application/json" for c in calls)
    assert all(v["quantity"] == 1 for v in box.insales.all_variants())


def test_queued_group_update_answer_counts_as_written(box, run):
    """An empty [] answer (update queued) is a success: per-item statuses are optional."""
    box.insales.group_answer = "empty"
    add_pair(box, "Q1", 0, 3)
    result = run()
    assert (result.code, result.summary["updated"], result.summary["failed"]) == (0, 1, 0)


def test_dry_run_prints_the_plan_and_writes_nothing(box, run):
    """--dry-run shows barcode, variant, title and old -> new, and sends no write."""
    variant_id = add_pair(box, "DRY1", 2, 6)
    result = run("--dry-run")
    assert result.code == 0
    assert result.summary["status"] == "dry-run"
    assert writes(box) == []
    line = next(line for line in result.err.splitlines() if "DRY1" in line)
    assert str(variant_id) in line and "Product DRY1" in line and "2 -> 6" in line


def test_token_is_cached_privately_and_reused_across_runs(box, run, env):
    """Writes the token cache with mode 0600 and logs in once for several runs."""
    add_pair(box, "T1", 0, 1)
    run()
    run()
    mode = stat.S_IMODE(os.stat(env["KAK2C_TOKEN_FILE"]).st_mode)
    assert mode == 0o600
    assert len(box.kak2c.calls("POST", "/api/lite/auth")) == 1


def test_credentials_file_is_posted_as_is(box, run, tmp_path):
    """Logs in with the credentials file's JSON body, unchanged, as application/json."""
    add_pair(box, "C1", 0, 1)
    body = json.dumps({"password": box.kak2c.password, "login": box.kak2c.login}, indent=1)
    (tmp_path / "creds").write_text(body)
    result = run(KAK2C_LOGIN=None, KAK2C_PASSWORD=None, KAK2C_CREDENTIALS_FILE=tmp_path / "creds")
    assert result.code == 0
    [login] = box.kak2c.calls("POST", "/api/lite/auth")
    assert login["body"] == body.encode()
    assert login["headers"]["Content-Type"] == "application/json"
    assert box.insales.variant(box.insales.all_variants()[0]["id"])["quantity"] == 1


def test_missing_setting_is_a_config_error_before_any_request(box, run):
    """Exits 2 naming the missing setting, and sends nothing to either API."""
    result = run(INSALES_URL=None)
    assert result.code == 2
    assert "INSALES_URL" in result.err
    assert box.insales.log == [] and box.kak2c.log == []
    assert "Traceback" not in result.err


@pytest.mark.parametrize("name, value", [
    ("INSALES_WAREHOUSE", "main"), ("SYNC_GUARD_ZERO_SHARE", "1.5"), ("SYNC_MODE", "sometimes"),
    ("INSALES_URL", "myshop.ru"), ("INSALES_URL", "https://app:secret@myshop.ru"),
    ("SYNC_MAX_WAIT", "-1"), ("SYNC_FULL_EVERY", "0"), ("KAK2C_PASSWORD", None),
    ("INSALES_URL", "https://shop:abc"), ("INSALES_URL", "https://[::1"),
    ("KAK2C_URL", "https://:99999"), ("KAK2C_URL", "http://127.0.0.1:0"),
    ("HEALTHCHECK_URL", "https://hc example/ping"), ("KAK2C_DOMAIN", "two\twords"),
    ("INSALES_API_PASSWORD", "пароль-приложения"), ("INSALES_API_KEY", "app:name"),
    ("KAK2C_PASSWORD", "cp1251-\udcef\udcf0"), ("SYNC_MODE", "\udcff")])
def test_malformed_settings_are_named(box, run, name, value):
    """Exits 2 with one line naming the malformed setting, before any request; bytes that are
    not UTF-8 (lone surrogates in the environment) and an app password InSales cannot have
    are malformed too, and never echoed."""
    result = run(**{name: value})
    assert result.code == 2
    assert name in result.err and "пароль" not in result.err and "cp1251" not in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert box.insales.log == [] and box.kak2c.log == []


def test_a_credentials_file_with_an_escaped_lone_surrogate_is_sent_as_it_is(box, run, tmp_path):
    """A password written as a JSON escape no text can hold (\\ud800): the file is sent as it
    is; Kaktus rejects it, and the run ends in one clear line, the escape hidden."""
    path = tmp_path / "kak2c_info"
    path.write_text('{"login": "demo", "password": "secret\\ud800secret"}')
    result = run(KAK2C_LOGIN=None, KAK2C_PASSWORD=None, KAK2C_CREDENTIALS_FILE=path)
    assert result.code == 3 and "Traceback" not in result.err
    assert "Kaktus rejected the credentials" in result.err and "secret" not in result.err


def test_a_domain_in_cyrillic_is_named_with_its_xn_form(box, run):
    """KAK2C_DOMAIN goes in a header, which carries ASCII only: the line gives the xn-- form."""
    result = run(KAK2C_DOMAIN="магазин.рф")
    assert result.code == 2 and box.kak2c.log == []
    assert "KAK2C_DOMAIN" in result.err and "written xn--80aairftm.xn--p1ai" in result.err


@pytest.mark.parametrize("name", ["KAK2C_TOKEN_FILE", "SYNC_STATE_FILE", "METRICS_FILE"])
def test_a_folder_where_a_file_is_written_is_named_before_any_request(box, run, tmp_path, name):
    """A file setting that names a folder: exit 2 naming the setting, nothing sent."""
    result = run(**{name: tmp_path})
    assert result.code == 2 and f"{name} {tmp_path}: cannot write there" in result.err
    assert "it is a folder" in result.err
    assert box.insales.log == [] and box.kak2c.log == []


@pytest.mark.parametrize("content", [None, "not json", '["login", "password"]'])
def test_unreadable_credentials_file_is_a_config_error(box, run, tmp_path, content):
    """A missing or malformed credentials file exits 2 naming KAK2C_CREDENTIALS_FILE."""
    path = tmp_path / "kak2c_info"
    if content is not None:
        path.write_text(content)
    result = run(KAK2C_LOGIN=None, KAK2C_PASSWORD=None, KAK2C_CREDENTIALS_FILE=path)
    assert result.code == 2
    assert "KAK2C_CREDENTIALS_FILE" in result.err
    assert box.kak2c.log == []


def test_env_file_is_read_and_the_environment_wins(box, env, tmp_path, monkeypatch, capsys):
    """Reads settings from --env-file; a variable set in the environment overrides it."""
    import sync_stock

    add_pair(box, "E1", 0, 2)
    lines = [f"{k}={v}" for k, v in env.items()] + ["SYNC_MODE=bogus"]
    (tmp_path / "shop.env").write_text("\n".join(lines))
    for key in env:
        monkeypatch.delenv(key)
    assert sync_stock.main(["--env-file", str(tmp_path / "shop.env")]) == 2
    monkeypatch.setenv("SYNC_MODE", "full")
    assert sync_stock.main(["--env-file", str(tmp_path / "shop.env")]) == 0
    assert box.insales.all_variants()[0]["quantity"] == 2
    assert sync_stock.main(["--env-file", str(tmp_path / "nope.env")]) == 2
    assert "nope.env: no such file" in capsys.readouterr().err
    assert sync_stock.main(["--env-file", str(tmp_path)]) == 2
    assert f"{tmp_path}: a folder, not a file" in capsys.readouterr().err
    (tmp_path / "cp1251.env").write_bytes("SYNC_MODE=полный\n".encode("cp1251"))
    assert sync_stock.main(["--env-file", str(tmp_path / "cp1251.env")]) == 2
    assert "cp1251.env: not UTF-8 text; save it in UTF-8" in capsys.readouterr().err


def test_rejected_kaktus_login_exits_3_and_writes_nothing(box, run):
    """A wrong Kaktus password ends with exit 3, a clear line, and no write."""
    add_pair(box, "L1", 0, 1)
    result = run(KAK2C_PASSWORD="wrong")
    assert result.code == 3
    assert result.summary["status"] == "failed"
    assert "Kaktus rejected the credentials" in result.err
    assert writes(box) == []


def test_a_run_holding_the_lock_makes_the_next_skip(box, run, env):
    """While another process holds the lock, a run makes no request and exits 0 as skipped."""
    import fcntl

    add_pair(box, "K1", 0, 1)
    with open(env["SYNC_LOCK_FILE"], "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = run()
    assert (result.code, result.summary["status"]) == (0, "skipped")
    assert box.insales.log == [] and box.kak2c.log == []
    assert "skipped" in result.err
    assert run().summary["status"] == "ok"
