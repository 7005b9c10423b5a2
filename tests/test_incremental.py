"""Incremental mode: read only what changed since the last walk, with a full walk now and then."""
import json
from pathlib import Path

import pytest

import sandbox
from conftest import add_pair, kaktus_quantities, shop_quantities, writes


def products_reads(box):
    return box.insales.calls("GET", "/admin/products.json")


def test_incremental_run_reads_only_what_changed(box, run, env):
    """Half a minute after the shop's last change, a quiet run costs two InSales reads (the
    last second's records again, then the empty page that ends every walk) and no write."""
    sandbox.fill_sample(box, products=300, sizes=2, quirks=False, differ=0)
    box.advance(600)  # the catalogue was made in one burst; a shop's last changes are few
    for variant in box.insales.all_variants()[:5]:
        box.insales.set_variant(variant["id"], sku="changed")
    first = run(SYNC_MODE="incremental")
    assert (first.code, first.summary["mode"]) == (0, "full")
    assert len(products_reads(box)) == 3
    box.advance(30)
    second = run(SYNC_MODE="incremental")
    assert (second.code, second.summary["mode"]) == (0, "incremental")
    assert len(products_reads(box)) == 5
    assert second.summary["requests"]["insales"] == 2
    assert second.summary["insales_variants"] == 600  # the summary covers the whole catalogue
    assert second.summary["changed"] == 0
    cursor = json.loads(Path(env["SYNC_STATE_FILE"]).read_text())["catalogue"]["cursor"]
    assert products_reads(box)[-2]["query"]["updated_since"] < cursor[0]  # rewound


def test_kaktus_changes_are_written_from_the_state(box, run):
    """A Kaktus stock change is planned against the stored quantities and written."""
    sandbox.fill_sample(box, products=300, sizes=1, quirks=False)
    run(SYNC_MODE="incremental")
    box.advance(60)
    variant = box.kak2c.products[123]["variants"][0]
    variant["stock"] = [{"stockTotal": 777}]
    result = run(SYNC_MODE="incremental")
    assert (result.code, result.summary["mode"], result.summary["updated"]) == (0, "incremental", 1)
    assert shop_quantities(box)[variant["barcode"]] == 777
    assert shop_quantities(box) == kaktus_quantities(box)


def test_changes_made_in_insales_are_seen_and_corrected(box, run):
    """A quantity changed by hand in InSales moves its product's updated_at and is set back."""
    sandbox.fill_sample(box, products=300, sizes=1, quirks=False)
    run(SYNC_MODE="incremental")
    box.advance(60)
    variant = box.insales.all_variants()[42]
    box.insales.set_variant(variant["id"], quantity=variant["quantity"] + 5)
    box.advance(60)
    result = run(SYNC_MODE="incremental")
    assert (result.summary["mode"], result.summary["updated"]) == ("incremental", 1)
    assert shop_quantities(box) == kaktus_quantities(box)


def test_full_walk_every_full_every_minutes_drops_deleted_products(box, run, env):
    """Once SYNC_FULL_EVERY minutes have passed, a full walk forgets deleted products."""
    sandbox.fill_sample(box, products=300, sizes=1, quirks=False)
    run(SYNC_MODE="incremental")
    box.insales.delete_product(next(iter(box.insales.products)))
    box.advance(60)
    assert run(SYNC_MODE="incremental").summary["insales_variants"] == 300
    path = env["SYNC_STATE_FILE"]
    state = json.loads(Path(path).read_text())
    state["catalogue"]["full_walk_at"] -= 61 * 60
    with open(path, "w") as out:
        json.dump(state, out)
    result = run(SYNC_MODE="incremental", SYNC_FULL_EVERY=60)
    assert (result.summary["mode"], result.summary["insales_variants"]) == ("full", 299)


def test_missing_corrupt_old_or_foreign_state_means_a_full_walk(box, run, env):
    """A state that is unreadable, of an older version or of another shop is not trusted."""
    add_pair(box, "S1", 0, 1)
    path = Path(env["SYNC_STATE_FILE"])
    assert run(SYNC_MODE="incremental").summary["mode"] == "full"
    good = json.loads(path.read_text())
    foreign = {**good, "settings": {**good["settings"], "INSALES_URL": "https://other.example"}}
    old = {"shop": "https://other.example#quantity", "variants": [[1, 2, "S1", 0, "t"]],
           "cursor": ["x", 0],
           "full_walk_at": 0, "walked_at": 0, "products": 1}  # version 1, without a version
    wrong_types = json.loads(json.dumps(good))
    wrong_types["catalogue"]["variants"]["quantity"] = ["seven"]
    odd_settings = {**good, "settings": {name: [value] for name, value in good["settings"].items()}}
    for content in ("{broken", "[" * 5000, json.dumps(foreign), json.dumps(old),
                    json.dumps(wrong_types), json.dumps(odd_settings), ""):
        path.write_text(content)
        result = run(SYNC_MODE="incremental")
        assert (result.code, result.summary["mode"]) == (0, "full")
        assert "Traceback" not in result.err
    assert shop_quantities(box) == {"S1": 1}


def test_dry_run_refused_and_failed_runs_change_no_state(box, run, env):
    """Only a run that wrote (or had nothing to write) updates the state file."""
    sandbox.fill_sample(box, products=30, sizes=1, quirks=False)
    run(SYNC_MODE="incremental")
    before = Path(env["SYNC_STATE_FILE"]).read_text()
    writes_before = len(writes(box))
    box.advance(60)
    box.kak2c.products[0]["variants"][0]["stock"] = [{"stockTotal": 99}]
    assert run("--dry-run", SYNC_MODE="incremental").summary["changed"] == 1
    box.kak2c.inject("GET /api", status=500, times=50)
    assert run(SYNC_MODE="incremental").code == 3
    assert Path(env["SYNC_STATE_FILE"]).read_text() == before
    assert len(writes(box)) == writes_before


def test_written_quantities_are_recorded_in_the_state(box, run, env):
    """After a write, the state holds the quantity InSales accepted."""
    variant_id = add_pair(box, "W1", 0, 6)
    run(SYNC_MODE="incremental")
    variants = json.loads(Path(env["SYNC_STATE_FILE"]).read_text())["catalogue"]["variants"]
    assert variants["quantity"][variants["id"].index(variant_id)] == 6


def test_auto_mode_keeps_small_shops_on_full_walks_without_a_catalogue(box, run, env):
    """SYNC_MODE=auto walks a small shop whole every run; its state keeps holds, no catalogue."""
    sandbox.fill_sample(box, products=30, quirks=False)
    assert run().summary["mode"] == "full"
    assert run().summary["mode"] == "full"
    state = json.loads(Path(env["SYNC_STATE_FILE"]).read_text())
    assert state["catalogue"] is None
    assert len(state["tracks"]["id"]) == 90


def test_a_change_in_the_second_already_read_is_not_lost(box, run):
    """InSales times of one-second resolution: a product of a lower id changed in the second
    the last walk ended on is read by the next walk all the same."""
    box.insales.time_step_ms = 1000
    second = int(box.clock()) + 1.05

    def back_to_that_second():  # each step starts there, however slow this machine is
        box.advance(second - box.clock())

    back_to_that_second()
    low = add_pair(box, "C1", 1, 1)
    high = add_pair(box, "C2", 1, 1)
    assert run(SYNC_MODE="incremental").code == 0
    back_to_that_second()
    box.insales.set_variant(high, quantity=5)
    assert run(SYNC_MODE="incremental").summary["updated"] == 1
    back_to_that_second()
    box.insales.set_variant(low, quantity=7)  # stamped the same second as `high`, a lower id
    result = run(SYNC_MODE="incremental")
    assert result.summary["updated"] == 1
    assert shop_quantities(box) == {"C1": 1, "C2": 1}


def test_a_quiet_shop_costs_one_read_once_its_last_change_is_a_minute_old(box, run):
    """While the last change is recent the walk looks at it again (two reads); a minute later
    only the empty page that ends the walk is read."""
    add_pair(box, "Q1", 1, 1)
    assert run(SYNC_MODE="incremental").code == 0
    box.advance(10)
    assert run(SYNC_MODE="incremental").summary["requests"]["insales"] == 2
    box.advance(61)
    assert run(SYNC_MODE="incremental").summary["requests"]["insales"] == 1


@pytest.mark.parametrize("setting, value", [
    ("INSALES_BARCODE_FIELD", "sku"), ("INSALES_WAREHOUSE", "0"),
    ("KAK2C_BARCODE_FIELD", "barcode"), ("KAK2C_STOCK_FIELD", "stockTotal")])
def test_a_setting_that_changes_what_the_state_means_starts_it_afresh(box, run, setting, value):
    """The state is keyed by every setting that changes what a stored variant means: changing
    one walks the shop whole at once (not SYNC_FULL_EVERY minutes later) and says so."""
    for n in range(6):  # the barcode field matches one variant, the SKU all six
        box.insales.add_product(f"P{n}", [{"barcode": "B0" if n == 0 else f"X{n}",
                                           "sku": f"B{n}", "quantity": 0}])
        box.kak2c.add_product({"id": n, "barcode": f"B{n}", "stock": [{"stockTotal": 3}]})
    first = run(SYNC_MODE="incremental")
    assert (first.summary["mode"], first.summary["matched"]) == ("full", 1)
    assert run(SYNC_MODE="incremental").summary["mode"] == "incremental"
    changed = run(SYNC_MODE="incremental", **{setting: value})
    assert changed.summary["mode"] == "full"
    assert f"was kept with other settings ({setting}" in changed.err
    if setting == "INSALES_WAREHOUSE":
        assert "(INSALES_WAREHOUSE was unset, now 0)" in changed.err
    if setting == "INSALES_BARCODE_FIELD":
        assert (changed.summary["matched"], changed.summary["updated"]) == (6, 5)
        assert {v["sku"]: v["quantity"] for v in box.insales.all_variants()} == {
            f"B{n}": 3 for n in range(6)}


def test_the_state_file_holds_what_a_queued_write_set(box, run, env):
    """A write InSales only queued (it answered []): the state file's catalogue holds the
    quantity written as soon as the run ends, whatever the product's updated_at does."""
    variant = add_pair(box, "Q1", 0, 5)
    box.insales.queue_writes = True
    assert run(SYNC_MODE="incremental").summary["updated"] == 1
    columns = json.loads(Path(env["SYNC_STATE_FILE"]).read_text())["catalogue"]["variants"]
    assert columns["quantity"][columns["id"].index(variant)] == 5
