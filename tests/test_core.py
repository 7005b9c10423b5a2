"""The pure core: barcodes, stock, holds, the decision per barcode, the plan and the guard."""
import base64
import itertools
import json
from datetime import datetime

import pytest

from sync_stock import (
    AUTO_RULES,
    KAKTUS_EXTRA_PAGES,
    ConfigError,
    InSalesCatalogue,
    KaktusIndex,
    PlanInputs,
    Publishing,
    Track,
    UpstreamError,
    Variant,
    check_guard,
    choose_stock_rule,
    decide,
    ends_fetching,
    follow_holds,
    index_kaktus,
    merge_insales_page,
    normalize_barcode,
    page_digest,
    parse_barcodes,
    parse_stock,
    parse_stock_expression,
    parse_usage,
    plan_updates,
    read_kaktus_pages,
    report_rows,
    show_stock_expression,
    stock_rule,
    to_quantity,
    token_expiry,
    walk_from,
)

TOTAL = stock_rule("stockTotal")
HOUR = 3600.0


def variant(id_, barcode, quantity, product_id=1, updated_at="T0"):
    return Variant(id_, product_id, normalize_barcode(barcode), quantity, f"title {id_}",
                   updated_at)


def stock(record, text="stockTotal"):
    """A Kaktus variant's stock as KAK2C_STOCK_FIELD=text reads it."""
    return parse_stock(record, stock_rule(text))[0]


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


def test_absurd_figures_are_unreadable_never_written():
    """A figure above 1,000,000,000 (10**30, 1e300, 2**63, inf) counts nothing: unreadable."""
    assert to_quantity(1_000_000_000) == 1_000_000_000
    huge = (10**30, 1e300, 2**63, float("inf"), "1e300", "9" * 400, -(10**30))
    assert [to_quantity(v) for v in huge] == [None] * len(huge)
    assert stock({"stock": [{"stockTotal": 10**30}]}) is None
    assert stock({"stock": [{"stockTotal": 6 * 10**8}] * 2}) is None


def test_barcodes_are_read_from_every_shape():
    """Accepts barcode, barcodes as strings, and barcodes as objects with barcode/value/code."""
    record = {"barcode": "1", "barcodes": ["2", {"barcode": "3"}, {"value": "4"},
                                           {"code": "5"}, {"other": "6"}, None, " "]}
    assert parse_barcodes(record) == {normalize_barcode(c) for c in "12345"}
    assert parse_barcodes({"barcodes": "not a list"}) == set()


def test_stock_entries_are_summed():
    """Sums the stock field over entries; negative totals are 0."""
    assert stock({"stock": [{"stockTotal": 2}, {"stockTotal": "3"}]}) == 5
    assert stock({"stock": [{"stockTotal": -4}, {"stockTotal": 1}]}) == 0
    assert stock({"stock": [{"free": 7, "stockTotal": 1}]}, "free") == 7
    assert stock({"stock": []}) == 0


def test_missing_or_unreadable_stock_is_unknown_never_zero():
    """A missing stock list, a missing field or a non-number makes the stock unknown."""
    assert stock({}) is None
    assert stock({"stock": None}) is None
    assert stock({"stock": [{"stockTotal": 1}, {"other": 2}]}) is None
    assert stock({"stock": [{"stockTotal": "many"}]}) is None
    assert stock({"stock": ["5"]}) is None


def test_stock_expression_is_computed_per_entry_and_summed():
    """stockTotal-stockReserved per entry, summed; a field missing in any entry is unknown."""
    terms = parse_stock_expression(" stockTotal - stockReserved + stockTransit ")
    assert terms == ((1, "stockTotal"), (-1, "stockReserved"), (1, "stockTransit"))
    assert show_stock_expression(terms) == "stockTotal-stockReserved+stockTransit"
    entries = [{"stockTotal": 10, "stockReserved": 3, "stockTransit": 1},
               {"stockTotal": "4", "stockReserved": 0, "stockTransit": 0.0}]
    assert stock({"stock": entries}, "stockTotal - stockReserved + stockTransit") == 12
    entries[1].pop("stockReserved")
    assert stock({"stock": entries}, "stockTotal-stockReserved+stockTransit") is None
    assert stock({"stock": [{"a": 1, "b": 5}]}, "a-b") == 0


@pytest.mark.parametrize("record, expected", [
    ({"stock": [{"stockTotal": 9, "stockReserved": 2, "stockAvailable": 7},
                {"stockTotal": 1, "stockAvailable": "1"}]}, (8, "stockAvailable")),
    ({"stock": [{"stockTotal": 9, "stockReserved": 2, "stockAvailable": None}]},
     (7, "stockTotal-stockReserved")),
    ({"stock": [{"stockTotal": 9, "stockReserved": 2}, {"stockTotal": 3}]}, (12, "stockTotal")),
    ({"stock": [{"stockAvailable": 4}, {"stockTotal": 3}]}, (None, "stockTotal")),
    ({"id": "1044", "stockAvailable": 45, "barcodes": [{"value": "70100401010204"}]},
     (45, "stockAvailable")),
    ({"stock": {"stockTotal": 5, "stockReserved": 5}}, (0, "stockTotal-stockReserved")),
    ({"stock": []}, (0, "stockTotal")),
    ({"stock": "lots"}, (None, "stockTotal")),
    ({}, (None, "stockTotal")),
])
def test_auto_reads_what_kaktus_can_sell_per_variant(record, expected):
    """auto: stockAvailable in every entry, else stockTotal-stockReserved, else stockTotal; a
    variant without a stock list is its own entry."""
    assert parse_stock(record, None) == expected


@pytest.mark.parametrize("text", ["", "stock Total", "a--b", "a+", "-a", "a*b", "1a", "a-b-",
                                  "stóck", "a;b"])
def test_malformed_stock_expression_is_a_config_error(text):
    """Anything but `name (+|- name)...` is refused, naming KAK2C_STOCK_FIELD."""
    with pytest.raises(ConfigError, match="KAK2C_STOCK_FIELD"):
        parse_stock_expression(text)


def test_kaktus_index_covers_both_catalogue_shapes():
    """Indexes product->variants and one-variant-per-product alike."""
    pages = [[{"id": 1, "variants": [{"id": 11, "barcode": "A", "stock": [{"stockTotal": 1}]},
                                     {"id": 12, "barcode": "B", "stock": [{"stockTotal": 2}]}]},
              {"id": 2, "barcodes": ["C"], "stock": [{"stockTotal": 3}]}]]
    index = index_kaktus(pages, TOTAL)
    assert index.quantities == {"A": 1, "B": 2, "C": 3}
    assert (index.variants, index.with_barcode, index.unknown) == (3, 3, 0)


def test_kaktus_duplicates_are_dropped_but_a_variants_own_barcodes_are_not():
    """A barcode on two variants is a duplicate; two barcodes of one variant both match."""
    pages = [[{"id": 1, "barcode": "A", "barcodes": ["A", "B"], "stock": [{"stockTotal": 1}]},
              {"id": 2, "barcode": "C", "stock": [{"stockTotal": 1}]},
              {"id": 3, "barcode": "C", "stock": [{"stockTotal": 2}]},
              {"id": 4, "barcode": "C", "stock": [{"stockTotal": 3}]}]]
    index = index_kaktus(pages, TOTAL)
    assert index.quantities == {"A": 1, "B": 1}
    assert index.duplicates == {"C"}


def test_plan_writes_only_quantities_that_differ():
    """Plans an update where stock differs and leaves equal stock alone."""
    plan = plan_updates(PlanInputs([variant(1, "A", 5), variant(2, "B", 3)],
                                   kaktus(kA=5, kB=4)))
    assert [(v.id, d.publish) for v, d in plan.updates] == [(2, 4)]
    assert plan.counts["matched"] == 2
    assert plan.counts["changed"] == 1


def test_plan_skips_duplicates_unknown_stock_and_unmatched():
    """Never writes duplicates (either side), unknown stock, or barcodes only one side knows."""
    index = KaktusIndex({"A": 1, "C": None, "K": 9}, {"D"}, variants=5)
    variants = [variant(1, "A", 0), variant(2, "A", 0), variant(3, "C", 4),
                variant(4, "D", 2), variant(5, "E", 2), variant(6, None, 2)]
    plan = plan_updates(PlanInputs(variants, index))
    assert plan.updates == []
    rows = report_rows(PlanInputs(variants, index))
    reasons = {(barcode, v.id if v else None): d.reason for barcode, v, _, d in rows}
    assert reasons == {
        ("A", 1): "duplicate in InSales", ("A", 2): "duplicate in InSales",
        ("C", 3): "unknown stock", ("D", 4): "duplicate in Kaktus", ("E", 5): "not in Kaktus",
        ("K", None): "not in InSales"}
    counts = plan.counts
    assert (counts["insales_variants"], counts["insales_with_barcode"]) == (6, 5)
    assert (counts["insales_duplicate_barcodes"], counts["kak2c_duplicate_barcodes"]) == (1, 1)
    assert (counts["matched"], counts["unknown_stock"]) == (1, 1)
    assert (counts["unmatched_insales"], counts["unmatched_kak2c"]) == (1, 1)


def test_report_rows_and_plan_come_from_the_same_decision():
    """Every row the report shows as an update is one the plan writes, with the same figure."""
    variants = [variant(i, f"B{i}", i % 4) for i in range(40)]
    index = KaktusIndex({f"B{i}": (i * 7) % 5 for i in range(40)}, variants=40)
    previous = {i: Track(i % 4 + 1, i % 4 + 1, (i * 7) % 5, ()) for i in range(0, 40, 3)}
    inputs = PlanInputs(variants, index, previous, 1000.0, Publishing(hold_window=HOUR))
    plan, rows = plan_updates(inputs), report_rows(inputs)
    from_rows = sorted((v.id, d.publish) for _, v, _, d in rows if d.action == "update")
    assert from_rows == [(v.id, d.publish) for v, d in plan.updates]
    assert plan.counts["changed"] == len(from_rows) > 0


def test_buffer_keeps_units_back_never_below_zero():
    """SYNC_STOCK_BUFFER publishes max(0, stock - buffer)."""
    plan = plan_updates(PlanInputs([variant(1, "A", 9), variant(2, "B", 9)],
                                   kaktus(kA=10, kB=1), publishing=Publishing(buffer=2)))
    assert [(v.id, d.publish) for v, d in plan.updates] == [(1, 8), (2, 0)]


# --- holds: S is what the last run saw, R what it wrote or announced, Q what InSales says now ---

def hold(track, quantity, stock, now=1000.0, window=HOUR, moved=False):
    return follow_holds(track, quantity, stock, moved, now, window)


def test_a_sale_is_held_until_kaktus_catches_up():
    """Q < R and Q != S is a sale: R - Q units held; Kaktus falling by as much releases them."""
    holds, events = hold(Track(10, 10, 10, ()), 8, 10)
    assert holds == ((2, 1000.0),)
    assert [e.kind for e in events] == ["sale"]
    later, events = hold(Track(8, 8, 10, holds), 8, 8, now=1060.0)
    assert later == ()
    assert [(e.kind, e.units) for e in events] == [("caught up", 2)]


def test_our_write_not_landed_or_landed_is_no_sale():
    """Q = S (a write InSales queued, a run killed before writing) and Q = R are no sale."""
    assert hold(Track(7, 10, 10, ()), 7, 10) == ((), ())
    assert hold(Track(7, 10, 10, ()), 10, 10) == ((), ())


def test_a_sale_right_after_our_upward_write_is_a_sale():
    """We wrote 7 -> 10, a customer bought one: 9 is a sale of 1."""
    holds, _ = hold(Track(7, 10, 10, ()), 9, 10)
    assert holds == ((1, 1000.0),)


def test_insales_rising_by_itself_releases_the_newest_holds():
    """A cancelled order (Q > R, Q != S) releases up to Q - R units, newest first."""
    track = Track(6, 6, 10, ((2, 100.0), (2, 500.0)))
    holds, events = hold(track, 7, 10)
    assert holds == ((2, 100.0), (1, 500.0))
    assert [(e.kind, e.units) for e in events] == [("cancelled", 1)]


def test_holds_expire_after_the_window():
    """A hold older than SYNC_HOLD_MINUTES is dropped: Kaktus' figure wins again."""
    track = Track(8, 8, 10, ((2, 1000.0),))
    assert hold(track, 8, 10, now=1000.0 + HOUR - 1)[0] == ((2, 1000.0),)
    holds, events = hold(track, 8, 10, now=1000.0 + HOUR)
    assert holds == ()
    assert [(e.kind, e.units) for e in events] == [("expired", 2)]


def test_a_sale_kaktus_saw_in_the_same_minute_is_neither_held_nor_undone():
    """InSales 10 -> 8 and Kaktus 10 -> 8 in one minute: held first, then released."""
    track = Track(10, 10, 10, ())
    decision = decide(8, 8, track, False, 1000.0, Publishing(hold_window=HOUR))
    assert (decision.action, decision.publish, decision.track.holds) == ("unchanged", 8, ())


def test_restock_during_a_hold_publishes_stock_less_the_hold():
    """10 -> 8 sold, Kaktus 10 -> 20 restocked: publish 18."""
    decision = decide(8, 20, Track(10, 10, 10, ()), False, 1000.0,
                      Publishing(hold_window=HOUR))
    assert (decision.action, decision.publish) == ("update", 18)
    assert decision.reason.startswith("held: sale in flight (2 until ")
    assert decision.track == Track(8, 18, 20, ((2, 1000.0),))


def test_published_stock_is_never_below_zero():
    """Holds larger than the stock publish 0, never a negative figure."""
    decision = decide(0, 1, Track(5, 5, 5, ((4, 900.0),)), False, 1000.0,
                      Publishing(hold_window=HOUR))
    assert decision.publish == 0


def test_holds_off_syncs_plainly_but_keeps_following():
    """SYNC_HOLD_MINUTES=0: Kaktus' figure every run; the track is still kept."""
    decision = decide(8, 10, Track(10, 10, 10, ((1, 1.0),)), False, 1000.0,
                      Publishing(hold_window=0))
    assert (decision.action, decision.publish) == ("update", 10)
    assert decision.track == Track(8, 10, 10, ())


def test_a_first_run_has_no_holds():
    """Without a previous track nothing is a sale."""
    decision = decide(3, 10, None, False, 1000.0, Publishing(hold_window=HOUR))
    assert (decision.publish, decision.track) == (10, Track(3, 10, 10, ()))


def test_guard_counts_a_hold_that_zeroes_a_variant():
    """The guard looks at the final plan: holds that take variants to 0 count as zeroing."""
    variants = [variant(i, f"B{i}", 1) for i in range(12)]
    index = KaktusIndex({f"B{i}": 2 for i in range(12)}, variants=12)
    previous = {i: Track(2, 2, 2, ()) for i in range(12)}  # each sold one: Q=1, held 1 -> 1
    plan = plan_updates(PlanInputs(variants, index, previous, 1000.0,
                                   Publishing(hold_window=HOUR, buffer=1)))
    assert plan.zeroed == 12
    assert "12 of 12" in check_guard(plan, 0.5)


def test_guard_refuses_an_empty_kaktus_catalogue():
    """Refuses when Kaktus has no products while InSales has barcodes."""
    plan = plan_updates(PlanInputs([variant(1, "A", 5)], KaktusIndex()))
    assert "no products" in check_guard(plan, 0.5)


def test_guard_refuses_mass_zeroing_above_the_share():
    """Refuses zeroing more than the share of stocked variants, from 10 zeroed variants on."""
    variants = [variant(i, f"B{i}", 5) for i in range(20)]
    zero_11 = KaktusIndex({f"B{i}": 0 if i < 11 else 5 for i in range(20)}, variants=20)
    assert "11 of 20" in check_guard(plan_updates(PlanInputs(variants, zero_11)), 0.5)
    zero_10 = KaktusIndex({f"B{i}": 0 if i < 10 else 5 for i in range(20)}, variants=20)
    assert check_guard(plan_updates(PlanInputs(variants, zero_10)), 0.5) is None


def test_guard_lets_a_small_shop_sell_out():
    """Does not refuse when fewer than 10 variants would be zeroed, whatever the share."""
    variants = [variant(i, f"B{i}", 5) for i in range(9)]
    index = KaktusIndex({f"B{i}": 0 for i in range(9)}, variants=9)
    assert check_guard(plan_updates(PlanInputs(variants, index)), 0.5) is None


def test_token_expiry_prefers_the_jwt_exp_claim():
    """Reads exp from the JWT; falls back to expires_in, then to four hours."""
    claims = base64.urlsafe_b64encode(json.dumps({"exp": 2_000_000_000}).encode()).rstrip(b"=")
    assert token_expiry(f"h.{claims.decode()}.s", 60, 1000.0) == 2_000_000_000
    assert token_expiry("not-a-jwt", 60, 1000.0) == 1060.0
    assert token_expiry("not-a-jwt", None, 1000.0) == 1000.0 + 14400


def test_usage_header_is_read_only_when_sane():
    """`used/limit` with a limit from 10 on; anything else is ignored."""
    assert parse_usage("12/500") == (12, 500)
    assert parse_usage(" 499 / 500 ") == (499, 500)
    for header in (None, "", "1/1", "5/0", "abc", "600/500", "1/" + "9" * 30, "-1/500"):
        assert parse_usage(header) is None


def test_a_walk_starts_a_little_before_a_recent_cursor():
    """Two seconds back from a recent InSales time, keeping its offset; right after an old one."""
    cursor = ("2026-11-28T10:00:00.500+03:00", 7)
    at = datetime.fromisoformat(cursor[0]).timestamp()
    assert walk_from(cursor, at + 30) == ("2026-11-28T09:59:58.500+03:00", 0)
    assert walk_from(cursor, at + 61) == cursor  # that second is long past: no second look
    assert walk_from(("garbage", 7), at) == ("2000-01-01T00:00:00.000+00:00", 0)
    assert walk_from(("0001-01-01T00:00:00+00:00", 7), at) == ("0001-01-01T00:00:00+00:00", 7)


def test_q_equal_s_is_a_sale_once_the_product_moved():
    """We wrote 12 -> 14 unconfirmed; Q = 12 = S: not landed if the product is unchanged, a
    sale of 2 if its updated_at moved (our write landed, a customer bought it back)."""
    track = Track(12, 14, 14, ())
    assert hold(track, 12, 14) == ((), ())
    holds, events = hold(track, 12, 14, moved=True)
    assert holds == ((2, 1000.0),) and [e.kind for e in events] == ["sale"]


def test_a_rise_kaktus_shows_too_releases_nothing():
    """InSales +3 with Kaktus +3 (a cancel both sides counted) leaves other holds alone;
    InSales +3 with Kaktus +1 releases 2."""
    track = Track(6, 6, 7, ((1, 500.0), (2, 600.0)))
    assert hold(track, 9, 10)[0] == ((1, 500.0), (2, 600.0))
    assert hold(track, 9, 8)[0] == ((1, 500.0),)


def test_kaktus_catching_up_reports_the_age_of_the_oldest_hold_released():
    """The caught-up event carries how long the oldest released hold had waited."""
    track = Track(7, 7, 10, ((2, 400.0), (1, 900.0)))
    holds, events = hold(track, 7, 8)
    assert holds == ((1, 900.0),)
    assert [(e.kind, e.units, e.age) for e in events] == [("caught up", 2, 600.0)]


def test_plan_counts_expired_units_and_the_catch_up_time():
    """The plan's counts carry expired_units and caught_up_after_s (the oldest, across
    variants; None when no hold was released)."""
    variants = [variant(1, "A", 8), variant(2, "B", 5), variant(3, "C", 5)]
    previous = {1: Track(8, 8, 10, ((2, 100.0),)), 2: Track(5, 5, 7, ((2, 3000.0),)),
                3: Track(5, 5, 9, ((4, 2000.0),))}
    plan = plan_updates(PlanInputs(variants, kaktus(kA=10, kB=5, kC=5), previous, 1000.0 + HOUR,
                                   Publishing(hold_window=HOUR), {i: "T0" for i in previous}))
    assert plan.counts["expired_units"] == 2
    assert plan.counts["caught_up_after_s"] == 2600.0
    quiet = plan_updates(PlanInputs(variants, kaktus(kA=8, kB=5, kC=5)))
    assert (quiet.counts["expired_units"], quiet.counts["caught_up_after_s"]) == (0, None)


# --- Kaktus pages: where the walk ends, and whether it adds up --------------------------------

def page(ids, total):
    return json.dumps({"products": [{"id": i} for i in ids], "recordsTotal": total}).encode()


def read_ids(bodies):
    return [[p["id"] for p in products] for products in read_kaktus_pages(bodies)]


def test_kaktus_pages_are_read_up_to_records_total():
    """Three pages of 2, 2 and 1 for recordsTotal 5: read, and not one page more asked."""
    bodies = iter([page([1, 2], 5), page([3, 4], 5), page([5], 5), page([9], 5)])
    assert read_ids(bodies) == [[1, 2], [3, 4], [5]]
    assert next(bodies) == page([9], 5)  # never pulled


def test_an_empty_page_ends_the_walk_and_a_short_total_fails():
    """An empty page ends it; fewer distinct products than recordsTotal is inconsistent."""
    assert read_ids([page([1, 2], 3), page([3], 3), page([], 3)]) == [[1, 2], [3]]
    with pytest.raises(UpstreamError, match="recordsTotal is 9 but 3 distinct products"):
        read_ids([page([1, 2], 9), page([3], 9), page([], 9)])


def test_a_repeated_page_or_one_with_nothing_new_fails():
    """A body seen before is a server ignoring ?page=; a page of old products repeats itself."""
    with pytest.raises(UpstreamError, match="page 1 is a page already read"):
        read_ids([page([1, 2], 6), page([1, 2], 6)])
    with pytest.raises(UpstreamError, match="page 1 brings no new product"):
        read_ids([page([1, 2], 6), page([2, 1], 6)])


def test_a_growing_catalogue_is_read_past_records_total_while_pages_come_full():
    """A product added at the front shifts the pages: one page more is read to reach
    recordsTotal; pages that stay full and new are read KAKTUS_EXTRA_PAGES past it at most."""
    assert read_ids([page([1, 2], 4), page([2, 3], 4), page([4, 5], 4)]) == [[1, 2], [3], [4, 5]]
    shifted = [page([1, 2], 20)] + [page([k + 1, k + 2], 20) for k in range(1, 30)]
    pulled = []

    def bodies():
        for body in shifted:
            pulled.append(body)
            yield body

    with pytest.raises(UpstreamError, match="inconsistent"):
        read_ids(bodies())
    assert len(pulled) == 10 + KAKTUS_EXTRA_PAGES


def test_fetching_ends_at_a_repeated_or_empty_page():
    """ends_fetching tells, without parsing big bodies, the pages after which none is needed."""
    digests = {page_digest(page([1, 2], 4))}
    assert not ends_fetching(page([3, 4], 4), 1, digests)
    assert ends_fetching(page([1, 2], 4), 1, digests)
    assert ends_fetching(page([], 4), 2, digests)
    assert not ends_fetching(page(range(500), 900), 3, digests)
    assert digests == {page_digest(page([1, 2], 4))}  # it only answers


@pytest.mark.parametrize("entries, expected", [
    ([{"stockTotal": -600_000_000, "stockFree": 0}] * 2, 0),
    ([{"stockTotal": 600_000_000, "stockFree": 0}] * 2, None),
    ([{"stockTotal": "3", "stockFree": 0}, {"stockTotal": 2.5, "stockFree": 0}], 5),
    ([{"stockTotal": -2, "stockFree": 0}, {"stockTotal": 1, "stockFree": 0}], 0),
    ([{"stockTotal": None, "stockFree": 0}], None),
])
def test_one_field_and_an_expression_follow_one_rule(entries, expected):
    """`stockTotal` and `stockTotal+stockFree` (stockFree 0) agree on every table row."""
    for text in ("stockTotal", "stockTotal+stockFree"):
        assert stock({"stock": entries}, text) == expected


def product(id_, *variants, **extra):
    return {"id": id_, "title": f"P{id_}", "updated_at": "T1", **extra,
            "variants": [{"id": v, "barcode": f"B{v}", "quantity": 1} for v in variants]}


def test_an_insales_page_is_merged_into_the_catalogue():
    """A product read again replaces its variants; a trashed one leaves; a malformed one is
    counted and named."""
    catalogue = InSalesCatalogue({}, ("T0", 0), 0.0)
    fields = ("quantity", "barcode", "sku")
    assert merge_insales_page(catalogue, [product(1, 11, 12), product(2, 21)], fields) == []
    assert sorted(catalogue.variants) == [11, 12, 21] and catalogue.products == 2
    broken = {"id": 9, "title": "no variants"}
    assert merge_insales_page(catalogue, [product(1, 13), product(2, archived=True), broken],
                              fields) == ["9"]
    assert sorted(catalogue.variants) == [13]
    assert (catalogue.products, catalogue.skipped) == (1, 1)


def test_auto_is_the_first_of_auto_rules_every_entry_carries():
    """choose_stock_rule, written out for speed, reads AUTO_RULES in order: the first whose
    fields every entry carries, not null; the last when none does, or an entry is no object."""
    fields = ("stockAvailable", "stockReserved", "stockTotal")
    shapes = [{name: value for name, value in zip(fields, values) if value != "absent"}
              for values in itertools.product((None, 1, "absent"), repeat=3)]
    for entries in [*([shape] for shape in shapes), *itertools.product(shapes, repeat=2),
                    [], [7], [shapes[0], "x"]]:
        entries = list(entries)
        expected = next((rule for rule in AUTO_RULES[:-1] if all(
            isinstance(entry, dict) and all(entry.get(name) is not None
                                            for _, name in rule.terms)
            for entry in entries) and entries), AUTO_RULES[-1])
        assert choose_stock_rule(entries) is expected, entries
