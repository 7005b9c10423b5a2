"""The pure core: barcodes, quantities, the two indexes, the plan and the guard, on plain data."""
import base64
import json

from sync_stock import (
    KaktusIndex,
    Variant,
    check_guard,
    index_kak2c,
    normalize_barcode,
    plan_updates,
    read_barcodes,
    read_stock,
    rewind,
    to_quantity,
    token_expiry,
)


def variant(id_, barcode, quantity, product_id=1):
    return Variant(id_, product_id, normalize_barcode(barcode), quantity, f"title {id_}")


def kaktus(**quantities):
    return KaktusIndex({normalize_barcode(k[1:]): v for k, v in quantities.items()},
                       variants=len(quantities))


def test_barcode_is_trimmed_and_empty_means_none():
    """Trims whitespace; an empty or missing barcode is no barcode."""
    assert normalize_barcode("  ABC-1 ") == "ABC-1"
    assert normalize_barcode("   ") is None
    assert normalize_barcode("") is None
    assert normalize_barcode(None) is None
    assert normalize_barcode(True) is None


def test_gtin_is_padded_to_14_digits():
    """EAN-13 and its zero-padded GTIN-14 compare equal; other text stays as it is."""
    assert normalize_barcode("4600000000017") == normalize_barcode("04600000000017")
    assert normalize_barcode("4600000000017") == "04600000000017"
    assert normalize_barcode(4600000000017) == "04600000000017"
    assert normalize_barcode("46000-17") == "46000-17"
    assert normalize_barcode("１２３") == "１２３"  # full-width digits are text, not a GTIN


def test_quantities_accept_numbers_and_numeric_strings():
    """Reads ints, floats and numeric strings as whole numbers; anything else is unreadable."""
    assert [to_quantity(v) for v in (5, 5.9, "7", " 3.0 ", "-2")] == [5, 5, 7, 3, -2]
    assert [to_quantity(v) for v in ("abc", None, True, float("nan"), [], {})] == [None] * 6


def test_barcodes_are_read_from_every_shape():
    """Accepts barcode, barcodes as strings, and barcodes as objects with barcode/value/code."""
    record = {"barcode": "1", "barcodes": ["2", {"barcode": "3"}, {"value": "4"},
                                           {"code": "5"}, {"other": "6"}, None, " "]}
    assert read_barcodes(record) == {normalize_barcode(c) for c in "12345"}
    assert read_barcodes({"barcodes": "not a list"}) == set()


def test_stock_entries_are_summed():
    """Sums the stock field over entries; negative totals are 0."""
    assert read_stock({"stock": [{"stockTotal": 2}, {"stockTotal": "3"}]}, "stockTotal") == 5
    assert read_stock({"stock": [{"stockTotal": -4}, {"stockTotal": 1}]}, "stockTotal") == 0
    assert read_stock({"stock": [{"free": 7, "stockTotal": 1}]}, "free") == 7
    assert read_stock({"stock": []}, "stockTotal") == 0


def test_missing_or_unreadable_stock_is_unknown_never_zero():
    """A missing stock list, a missing field or a non-number makes the stock unknown."""
    assert read_stock({}, "stockTotal") is None
    assert read_stock({"stock": None}, "stockTotal") is None
    assert read_stock({"stock": [{"stockTotal": 1}, {"other": 2}]}, "stockTotal") is None
    assert read_stock({"stock": [{"stockTotal": "many"}]}, "stockTotal") is None
    assert read_stock({"stock": ["5"]}, "stockTotal") is None


def test_kaktus_index_covers_both_catalogue_shapes():
    """Indexes product->variants and one-variant-per-product alike."""
    pages = [[{"id": 1, "variants": [{"id": 11, "barcode": "A", "stock": [{"stockTotal": 1}]},
                                     {"id": 12, "barcode": "B", "stock": [{"stockTotal": 2}]}]},
              {"id": 2, "barcodes": ["C"], "stock": [{"stockTotal": 3}]}]]
    index = index_kak2c(pages, "stockTotal")
    assert index.quantities == {"A": 1, "B": 2, "C": 3}
    assert index.variants == 3


def test_kaktus_duplicates_are_dropped_but_a_variants_own_barcodes_are_not():
    """A barcode on two variants is a duplicate; two barcodes of one variant both match."""
    pages = [[{"id": 1, "barcode": "A", "barcodes": ["A", "B"], "stock": [{"stockTotal": 1}]},
              {"id": 2, "barcode": "C", "stock": [{"stockTotal": 1}]},
              {"id": 3, "barcode": "C", "stock": [{"stockTotal": 2}]},
              {"id": 4, "barcode": "C", "stock": [{"stockTotal": 3}]}]]
    index = index_kak2c(pages, "stockTotal")
    assert index.quantities == {"A": 1, "B": 1}
    assert index.duplicates == {"C"}


def test_plan_writes_only_quantities_that_differ():
    """Plans an update where stock differs and leaves equal stock alone."""
    plan = plan_updates([variant(1, "A", 5), variant(2, "B", 3)], kaktus(kA=5, kB=4))
    assert [(r.variant.id, r.kak2c_qty) for r in plan.updates] == [(2, 4)]
    assert plan.counts["matched"] == 2
    assert plan.counts["changed"] == 1


def test_plan_skips_duplicates_unknown_stock_and_unmatched():
    """Never writes duplicates (either side), unknown stock, or barcodes only one side knows."""
    index = KaktusIndex({"A": 1, "C": None, "K": 9}, {"D"}, variants=5)
    variants = [variant(1, "A", 0), variant(2, "A", 0), variant(3, "C", 4),
                variant(4, "D", 2), variant(5, "E", 2), variant(6, None, 2)]
    plan = plan_updates(variants, index)
    assert plan.updates == []
    reasons = {(r.barcode, r.variant.id if r.variant else None): r.reason for r in plan.rows()}
    assert reasons == {
        ("A", 1): "duplicate in InSales", ("A", 2): "duplicate in InSales",
        ("C", 3): "unknown stock", ("D", 4): "duplicate in Kaktus", ("E", 5): "not in Kaktus",
        ("K", None): "not in InSales"}
    counts = plan.counts
    assert (counts["insales_variants"], counts["insales_with_barcode"]) == (6, 5)
    assert (counts["insales_duplicate_barcodes"], counts["kak2c_duplicate_barcodes"]) == (1, 1)
    assert (counts["matched"], counts["unknown_stock"]) == (1, 1)
    assert (counts["unmatched_insales"], counts["unmatched_kak2c"]) == (1, 1)


def test_guard_refuses_an_empty_kaktus_catalogue():
    """Refuses when Kaktus has no products while InSales has barcodes."""
    plan = plan_updates([variant(1, "A", 5)], KaktusIndex())
    assert "no products" in check_guard(plan, 0.5)


def test_guard_refuses_mass_zeroing_above_the_share():
    """Refuses zeroing more than the share of stocked variants, from 10 zeroed variants on."""
    variants = [variant(i, f"B{i}", 5) for i in range(20)]
    zero_11 = KaktusIndex({f"B{i}": 0 if i < 11 else 5 for i in range(20)}, variants=20)
    assert "11 of 20" in check_guard(plan_updates(variants, zero_11), 0.5)
    zero_10 = KaktusIndex({f"B{i}": 0 if i < 10 else 5 for i in range(20)}, variants=20)
    assert check_guard(plan_updates(variants, zero_10), 0.5) is None


def test_guard_lets_a_small_shop_sell_out():
    """Does not refuse when fewer than 10 variants would be zeroed, whatever the share."""
    variants = [variant(i, f"B{i}", 5) for i in range(9)]
    index = KaktusIndex({f"B{i}": 0 for i in range(9)}, variants=9)
    assert check_guard(plan_updates(variants, index), 0.5) is None


def test_token_expiry_prefers_the_jwt_exp_claim():
    """Reads exp from the JWT; falls back to expires_in, then to four hours."""
    claims = base64.urlsafe_b64encode(json.dumps({"exp": 2_000_000_000}).encode()).rstrip(b"=")
    assert token_expiry(f"h.{claims.decode()}.s", 60, 1000.0) == 2_000_000_000
    assert token_expiry("not-a-jwt", 60, 1000.0) == 1060.0
    assert token_expiry("not-a-jwt", None, 1000.0) == 1000.0 + 14400


def test_cursor_is_rewound_a_little():
    """Steps two seconds back from an InSales time, keeping its offset."""
    assert rewind("2026-11-28T10:00:00.500+03:00") == "2026-11-28T09:59:58.500+03:00"
    assert rewind("garbage") == "2000-01-01T00:00:00.000+00:00"
