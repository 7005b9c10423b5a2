"""What Kaktus can sell: KAK2C_STOCK_FIELD=auto per variant, in every layout Kaktus shows stock."""
import pytest

import sandbox
from conftest import add_pair, refusal_of, shop_quantities

LAYOUTS = ("total", "reserved", "available", "wiki")


def sellable(seed: int = 7, **options) -> dict:
    """What Kaktus can sell of each barcode in the sample: the stockTotal of its layout
    without reserves (the sample's figures are built from the same seed)."""
    truth = sandbox.Sandbox()
    sandbox.fill_sample(truth, seed=seed, kaktus_stock="total", **options)
    return {v["barcode"]: v["stock"][0]["stockTotal"] for v in truth.kak2c.variants()}


def add_reserved(box, barcode, shop_qty, total, reserved, available=True) -> int:
    """A pair whose Kaktus entry has `reserved` of `total` units reserved for other orders."""
    product = box.insales.add_product(f"Product {barcode}", [
        {"barcode": barcode, "quantity": shop_qty}])
    entry = {"stockTotal": total, "stockReserved": reserved}
    if available:
        entry["stockAvailable"] = total - reserved
    box.kak2c.add_product({"id": len(box.kak2c.products) + 1, "barcode": barcode,
                           "stock": [entry]})
    return product["variants"][0]["id"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_syncs_what_kaktus_can_sell_with_no_setting(box, run, layout):
    """stockAvailable, stockTotal-stockReserved, stockTotal alone and the wiki's item shape
    all publish what Kaktus can sell, with KAK2C_STOCK_FIELD unset."""
    sandbox.fill_sample(box, products=20, sizes=2, quirks=False, differ=0.5, kaktus_stock=layout)
    result = run()
    assert result.code == 0 and result.summary["unknown_stock"] == 0
    assert result.summary["matched"] == 40 and result.summary["updated"] > 0
    assert shop_quantities(box) == sellable(products=20, sizes=2, quirks=False, differ=0.5)
    expected = {"total": "stockTotal", "reserved": "stockTotal-stockReserved",
                "available": "stockAvailable", "wiki": "stockAvailable"}[layout]
    assert result.summary["kak2c_stock_field"] == expected


def test_the_wikis_item_shape_syncs_with_quirks_too(box, run):
    """Figures on the variant, ids as text and barcode objects, with every sample quirk: the
    shop ends equal to what Kaktus can sell, unknown stock never written."""
    sandbox.fill_sample(box, products=30, kaktus_stock="wiki")
    first = run()
    assert first.code == 0 and first.summary["unknown_stock"] > 0
    again = run()
    assert again.code == 0 and again.summary["changed"] == 0


def test_reserved_units_are_not_offered(box, run):
    """A unit Kaktus reserved for another channel's order is not offered in InSales."""
    both = add_reserved(box, "R1", 10, 10, 3)
    no_available = add_reserved(box, "R2", 10, 8, 5, available=False)
    result = run()
    assert result.code == 0
    assert (box.insales.variant(both)["quantity"], box.insales.variant(no_available)["quantity"]) \
        == (7, 3)


def test_the_rule_is_chosen_per_variant(box, run):
    """Variants with stockAvailable are read by it, those with stockTotal alone by that; the
    summary names the rule most variants used and the log counts each."""
    reserved = [add_reserved(box, f"A{n}", 9, 9, 2) for n in range(3)]
    plain = add_pair(box, "T1", 1, 6)
    mixed = add_reserved(box, "M1", 9, 9, 1)  # one entry with stockAvailable, one without
    box.kak2c.products[-1]["stock"].append({"stockTotal": 4})
    result = run("-v")
    assert result.code == 0
    assert [box.insales.variant(v)["quantity"] for v in reserved] == [7, 7, 7]
    assert box.insales.variant(plain)["quantity"] == 6
    assert box.insales.variant(mixed)["quantity"] == 13  # not every entry has one: stockTotal
    assert result.summary["kak2c_stock_field"] == "stockAvailable"
    assert "(KAK2C_STOCK_FIELD=auto): stockAvailable: 3, stockTotal: 2" in result.err


def test_reserved_alone_is_read_when_available_is_null(box, run):
    """stockAvailable null in an entry: stockTotal-stockReserved, when every entry has both."""
    variant = add_reserved(box, "N1", 0, 10, 4)
    box.kak2c.products[-1]["stock"][0]["stockAvailable"] = None
    result = run()
    assert box.insales.variant(variant)["quantity"] == 6
    assert result.summary["kak2c_stock_field"] == "stockTotal-stockReserved"


def test_an_explicit_stock_total_wins_over_reserved_units(box, run):
    """KAK2C_STOCK_FIELD=stockTotal is the operator's word: reserved units are offered."""
    variant = add_reserved(box, "X1", 0, 10, 3)
    result = run(KAK2C_STOCK_FIELD="stockTotal")
    assert box.insales.variant(variant)["quantity"] == 10
    assert result.summary["kak2c_stock_field"] == "stockTotal"
    expression = run(KAK2C_STOCK_FIELD="stockTotal - stockReserved")
    assert expression.summary["kak2c_stock_field"] == "stockTotal-stockReserved"
    assert box.insales.variant(variant)["quantity"] == 7


def test_stock_field_is_null_when_no_kaktus_catalogue_was_read(box, run):
    """A run that failed before Kaktus answered names no stock rule."""
    add_pair(box, "F1", 1, 2)
    box.kak2c.inject("page=0", status=500, times=10)
    result = run()
    assert result.code == 3 and result.summary["kak2c_stock_field"] is None


def test_check_counts_the_variants_each_rule_read(box, run):
    """--check prints, for page 0, how many variants each stock rule read."""
    for n in range(3):
        add_reserved(box, f"C{n}", 1, 5, 1)
    add_pair(box, "C9", 1, 5)
    result = run("--check")
    assert result.code == 0
    assert "KAK2C_STOCK_FIELD=auto" in result.out
    assert "stockAvailable: 3, stockTotal: 1" in result.out


def test_unknown_stock_on_variants_without_a_stock_list_names_their_keys(box, run):
    """Figures on the variant that no rule reads: the refusal names the variant's own keys."""
    for n in range(3):
        box.insales.add_product(f"P{n}", [{"barcode": f"W{n}", "quantity": 2}])
        box.kak2c.add_product({"id": str(n), "barcodes": [{"value": f"W{n}"}],
                               "freeStock": 4})
    result = run("-q")
    assert result.summary["unknown_stock"] == 3
    reason = refusal_of(result)
    assert "the variant (it has no stock list)" in reason and "freeStock" in reason
    assert "KAK2C_STOCK_FIELD='auto'" in reason and "stockAvailable" in reason
    assert shop_quantities(box) == {"W0": 2, "W1": 2, "W2": 2}
