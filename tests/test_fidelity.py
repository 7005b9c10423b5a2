"""Real accounts unlike our first notes, over real HTTP: Kaktus ids as barcodes, barcodes in the
InSales SKU, and InSales' keyset walk as its own docs describe it (empty page, trash, 504)."""
import json

import pytest

import sandbox
from conftest import add_pair, refusal_of, warnings_of, writes


def kaktus_stock_by_id(box) -> dict:
    """Kaktus stock by variant id, normalised as barcodes are, for the id layout."""
    return {str(v["id"]).zfill(14): v["stock"][0]["stockTotal"] for v in box.kak2c.variants()}


def shop_by_barcode(box, field="barcode") -> dict:
    return {v[field].zfill(14): v["quantity"] for v in box.insales.all_variants() if v[field]}


# --- Kaktus: where the barcode is -------------------------------------------------------------

@pytest.mark.parametrize("products", [40, 150])
def test_the_original_integrations_account_is_synced_by_variant_id(box, run, products):
    """No barcode field anywhere and the variant id is the barcode (text or number): every
    differing quantity is corrected, 100 a call, and the summary says `id`."""
    sandbox.fill_sample(box, products=products, sizes=1, quirks=False, differ=0.35,
                        kaktus_barcodes_in="id")
    truth = kaktus_stock_by_id(box)
    differing = sum(shop_by_barcode(box)[code] != qty for code, qty in truth.items())
    assert differing > 10
    result = run("-v")
    assert (result.code, result.summary["status"]) == (0, "ok")
    assert result.summary["kak2c_barcode_field"] == "id"
    assert (result.summary["matched"], result.summary["updated"]) == (products, differing)
    assert shop_by_barcode(box) == truth
    assert all(len(json.loads(call["body"])["variants"]) <= 100 for call in writes(box))
    assert "Kaktus barcodes read from the variant ids (KAK2C_BARCODE_FIELD=auto)" in result.err
    assert warnings_of(result) == []


def test_the_id_layout_with_every_quirk_still_converges(box, run):
    """Ids as barcodes with duplicates, unknown stock, padded GTINs and both shapes: a second
    run finds nothing to do."""
    sandbox.fill_sample(box, products=30, kaktus_barcodes_in="id")
    first = run()
    assert first.code == 0 and first.summary["updated"] > 0
    assert first.summary["kak2c_duplicate_barcodes"] == 1
    assert run().summary["changed"] == 0


def test_an_account_with_barcode_fields_never_has_its_ids_matched(box, run):
    """One variant with a barcode field anywhere: an id that equals an InSales barcode is no
    match, not even one."""
    synced = add_pair(box, "4600000000024", 1, 6)
    lookalike = box.insales.add_product("Lookalike", [{"barcode": "4600000000017",
                                                       "quantity": 1}])["variants"][0]["id"]
    box.kak2c.add_product({"id": "4600000000017", "stock": [{"stockTotal": 9}]})
    result = run()
    assert result.summary["kak2c_barcode_field"] == "barcode"
    assert box.insales.variant(synced)["quantity"] == 6
    assert box.insales.variant(lookalike)["quantity"] == 1
    assert (result.summary["matched"], result.summary["unmatched_insales"]) == (1, 1)


@pytest.mark.parametrize("field, value", [
    ("ean", "4600000000017"), ("ean", 4600000000017), ("ean", ["4600000000017"]),
    ("ean", [{"value": "4600000000017"}]), ("id", "04600000000017"), ("barcode", "4600000000017"),
])
def test_an_explicit_barcode_field_is_read_alone(box, run, field, value):
    """KAK2C_BARCODE_FIELD names the one field read: text, a number, a list, a list of objects;
    the barcode fields of other variants are then not read."""
    target = box.insales.add_product("T", [{"barcode": "4600000000017", "quantity": 0}])
    decoy = box.insales.add_product("D", [{"barcode": "4600000000031", "quantity": 0}])
    box.kak2c.add_product({"id": 1, "variants": [
        {"id": 11, field: value, "stock": [{"stockTotal": 5}]},
        {"id": 12, "barcodes": ["4600000000031"], "stock": [{"stockTotal": 7}]}]})
    result = run(KAK2C_BARCODE_FIELD=field)
    assert (result.code, result.summary["kak2c_barcode_field"]) == (0, field)
    assert box.insales.variant(target["variants"][0]["id"])["quantity"] == 5
    assert box.insales.variant(decoy["variants"][0]["id"])["quantity"] == 0


def test_an_explicit_field_no_variant_has_is_refused_naming_it(box, run):
    """KAK2C_BARCODE_FIELD=ean on an account without `ean`: refused (exit 4, even with -q),
    naming the setting and the keys seen, said once; nothing written."""
    add_pair(box, "B1", 0, 5)
    result = run("-q", KAK2C_BARCODE_FIELD="ean")
    reason = refusal_of(result)
    assert "none of the 1 Kaktus variants carries a barcode" in reason
    assert "KAK2C_BARCODE_FIELD=ean" in reason and "barcode, id, stock" in reason
    assert warnings_of(result) == [] and writes(box) == []


@pytest.mark.parametrize("value", ["bar-code", "1st", "a.b", "ean code"])
def test_a_malformed_barcode_field_name_exits_2(box, run, value):
    """A name that is not [A-Za-z_][A-Za-z0-9_]* is a configuration error: one line, nothing
    sent."""
    result = run(KAK2C_BARCODE_FIELD=value)
    assert result.code == 2 and "KAK2C_BARCODE_FIELD" in result.err
    assert box.insales.log == [] and box.kak2c.log == []


def test_ids_that_match_nothing_say_where_to_look(box, run):
    """Ids taken as barcodes but none in InSales: refused, saying ids were used, naming
    KAK2C_BARCODE_FIELD and the keys seen."""
    for n in range(5):
        box.insales.add_product(f"P{n}", [{"barcode": f"B{n}", "quantity": 1}])
        box.kak2c.add_product({"id": n, "ean": f"B{n}", "stock": [{"stockTotal": 2}]})
    result = run("-q")
    reason = refusal_of(result)
    assert "not one barcode matches" in reason and "ids were taken as barcodes" in reason
    assert "KAK2C_BARCODE_FIELD" in reason and "ean" in reason
    assert result.summary["kak2c_barcode_field"] == "id" and writes(box) == []


def test_check_says_where_barcodes_are_read_on_both_sides(box, run):
    """--check names the resolved Kaktus field and INSALES_BARCODE_FIELD with their counts."""
    sandbox.fill_sample(box, products=12, sizes=1, quirks=False, kaktus_barcodes_in="id")
    result = run("--check")
    assert result.code == 0
    assert "barcodes read from id (KAK2C_BARCODE_FIELD=auto, as resolved on page 0): " \
           "12 of 12 variants on page 0 carry one" in result.out
    assert "barcodes read from barcode (INSALES_BARCODE_FIELD): 10 of 10 variants" in result.out


# --- InSales: barcodes in the SKU -------------------------------------------------------------

def test_barcodes_kept_in_the_sku_are_synced_with_insales_barcode_field(box, run):
    """A shop with "barcode": null and the barcodes in `sku`: by default refused (exit 4, even
    with -q), suggesting sku, nothing matched; with INSALES_BARCODE_FIELD=sku, synced."""
    sandbox.fill_sample(box, products=30, sizes=2, quirks=False, differ=0.5,
                        insales_barcodes_in="sku")
    plain = run("-q")
    reason = refusal_of(plain)
    assert (plain.summary["matched"], writes(box)) == (0, [])
    assert "none of the 60 InSales variants has a barcode in INSALES_BARCODE_FIELD=barcode" in \
        reason and "set INSALES_BARCODE_FIELD=sku" in reason
    result = run(INSALES_BARCODE_FIELD="sku")
    assert (result.code, result.summary["matched"]) == (0, 60)
    kaktus = {v["barcode"]: v["stock"][0]["stockTotal"] for v in box.kak2c.variants()}
    assert {v["sku"]: v["quantity"] for v in box.insales.all_variants()} == kaktus
    assert warnings_of(result) == []


def test_a_shop_without_barcodes_and_no_likely_sku_is_refused(box, run):
    """No barcodes and SKUs on few variants: the refusal names the setting, suggests nothing."""
    box.insales.add_product("P", [{"barcode": None, "sku": None, "quantity": 1}] * 3)
    box.kak2c.add_product({"id": 1, "barcode": "X", "stock": [{"stockTotal": 1}]})
    reason = refusal_of(run("-q"))
    assert "INSALES_BARCODE_FIELD=barcode" in reason and "sku" not in reason


def test_an_unknown_insales_barcode_field_exits_2(box, run):
    """INSALES_BARCODE_FIELD takes barcode or sku, nothing else."""
    result = run(INSALES_BARCODE_FIELD="ean")
    assert result.code == 2 and "INSALES_BARCODE_FIELD" in result.err
    assert box.insales.log == []


# --- InSales: the walk as the docs describe it ------------------------------------------------

def test_a_shop_serving_fewer_than_asked_is_walked_to_the_empty_page(box, run):
    """100 products a page when 250 are asked: the walk goes on until an empty page, every
    product is read and every difference written."""
    sandbox.fill_sample(box, products=330, sizes=1, quirks=False, differ=0.35)
    box.insales.serve_at_most = 100
    truth = {v["barcode"]: v["stock"][0]["stockTotal"] for v in box.kak2c.variants()}
    result = run()
    assert (result.code, result.summary["insales_variants"]) == (0, 330)
    assert {v["barcode"]: v["quantity"] for v in box.insales.all_variants()} == truth
    assert len(box.insales.calls("GET", "/admin/products.json")) == 5  # 100, 100, 100, 30, 0


def test_a_504_halves_per_page_for_the_rest_of_the_walk(box, run):
    """A shop that answers 504 to pages over 100: per_page 250, 125, then 62 for the rest, no
    backoff, logged once, and the whole catalogue synced."""
    sandbox.fill_sample(box, products=330, sizes=1, quirks=False, differ=0.35)
    box.insales.timeout_above = 100
    truth = {v["barcode"]: v["stock"][0]["stockTotal"] for v in box.kak2c.variants()}
    result = run()
    assert result.code == 0 and result.waits == []
    asked = [call["query"]["per_page"] for call in box.insales.calls("GET")]
    assert asked == ["250", "125"] + ["62"] * 7  # 6 pages of 62 or fewer, then the empty one
    assert result.err.count("asking fewer products a page") == 1
    assert {v["barcode"]: v["quantity"] for v in box.insales.all_variants()} == truth


def test_504s_down_to_the_smallest_page_give_up_with_exit_3(box, run):
    """504 to every page size: halved down to 10, then retried as any 5xx, and exit 3."""
    sandbox.fill_sample(box, products=30, sizes=1, quirks=False)
    box.insales.timeout_above = 5
    result = run()
    assert (result.code, writes(box)) == (3, [])
    asked = [call["query"]["per_page"] for call in box.insales.calls("GET")]
    assert asked == ["250", "125", "62", "31", "15"] + ["10"] * 5
    assert result.waits == [0.5, 1.0, 2.0, 4.0]


def test_a_product_trashed_and_recreated_is_forgotten_by_an_incremental_walk(box, run):
    """Incremental walks ask with_deleted: the trashed product's variant leaves the state (no
    duplicate barcode, never written) and its re-created twin is synced in the same run."""
    sandbox.fill_sample(box, products=30, sizes=1, quirks=False, differ=0)
    first = run(SYNC_MODE="incremental")
    assert first.summary["mode"] == "full"
    old = next(iter(box.insales.products.values()))
    barcode, old_quantity = old["variants"][0]["barcode"], old["variants"][0]["quantity"]
    box.advance(60)
    box.insales.trash_product(old["id"])
    new = box.insales.add_product("Re-created", [{"barcode": barcode, "quantity": 0}])
    box.kak2c.set_stock(barcode, old_quantity + 3)
    box.advance(60)
    result = run(SYNC_MODE="incremental")
    assert (result.code, result.summary["mode"]) == (0, "incremental")
    assert result.summary["insales_duplicate_barcodes"] == 0
    assert result.summary["insales_variants"] == 30
    assert box.insales.variant(new["variants"][0]["id"])["quantity"] == old_quantity + 3
    assert old["variants"][0]["quantity"] == old_quantity
    walks = box.insales.calls("GET", "/admin/products.json")
    assert [c["query"].get("with_deleted") for c in walks] == [None] * 2 + ["true"] * 2


# --- a hostile write answer -------------------------------------------------------------------

@pytest.mark.parametrize("answer", [
    [{"id": [1], "status": {"x": 1}}], [{"id": {"a": 1}, "status": "error"}],
    [{"id": 1.5, "status": []}], [None, "x", 7], {"variants": "?"}])
def test_any_json_in_a_write_answer_is_no_traceback(box, run, answer):
    """Ids that are not integers of the batch are not ours: the write counts as made, exit 0."""
    variant = add_pair(box, "W1", 0, 4)
    box.insales.inject("PUT /admin", status=200, body=answer)
    result = run()
    assert (result.code, result.summary["updated"], result.summary["failed"]) == (0, 1, 0)
    assert "Traceback" not in result.err
    assert box.insales.variant(variant)["quantity"] == 0  # the fault answered in its place
