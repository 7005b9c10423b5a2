"""The stock to publish over real HTTP: holds for sales in flight, buffer, stock expressions."""
import json
from pathlib import Path

import pytest

from conftest import add_pair, quantity, warnings_of, writes

MODES = pytest.mark.parametrize("mode", ["full", "incremental"])


def set_kaktus(box, stock, index=0):
    """Give the index-th Kaktus product of add_pair() a new stock figure."""
    box.kak2c.products[index]["variants"][0]["stock"] = [{"stockTotal": stock}]


def sold(box, run, mode, shop=10, stock=10, units=2):
    """A synced pair, then a sale of `units` in InSales; return the variant id."""
    variant = add_pair(box, "H1", shop, stock)
    assert run(SYNC_MODE=mode).code == 0
    box.advance(30)
    box.insales.sell(variant, units)
    box.advance(30)
    return variant


@MODES
def test_a_sale_is_held_not_undone(box, run, mode):
    """InSales 10 -> 8 by an order Kaktus has not seen: the next run keeps 8, holding 2."""
    variant = sold(box, run, mode)
    result = run("-v", SYNC_MODE=mode)
    assert result.code == 0
    assert quantity(box, variant) == 8
    assert writes(box) == []
    assert (result.summary["held_variants"], result.summary["held_units"]) == (1, 2)
    assert "hold sale: barcode H1" in result.err


@MODES
def test_kaktus_catching_up_releases_the_hold(box, run, mode):
    """When Kaktus falls by the units sold, the hold is released and nothing is written."""
    variant = sold(box, run, mode)
    run(SYNC_MODE=mode)
    set_kaktus(box, 8)
    result = run("-v", SYNC_MODE=mode)
    assert (result.summary["held_units"], quantity(box, variant)) == (0, 8)
    assert "hold caught up" in result.err
    assert writes(box) == []


@MODES
def test_a_cancelled_order_releases_the_hold(box, run, mode):
    """InSales rising by itself (8 -> 9) releases a held unit; 9 is then what Kaktus allows."""
    variant = sold(box, run, mode)
    run(SYNC_MODE=mode)
    box.insales.set_variant(variant, quantity=9)
    box.advance(30)
    result = run("-v", SYNC_MODE=mode)
    assert (result.summary["held_units"], quantity(box, variant)) == (1, 9)
    assert "hold cancelled" in result.err


def test_a_hold_expires_after_the_window_and_says_so(box, run, tmp_path):
    """After SYNC_HOLD_MINUTES Kaktus' figure wins again; the expired units are counted, warned
    about (even with -q) with a barcode and what to look at, and in the metrics."""
    variant = sold(box, run, "full")
    assert run().summary["held_units"] == 2
    box.advance(59 * 60)
    assert run().summary["held_units"] == 2
    box.advance(60)
    metrics = tmp_path / "m.prom"
    result = run("-q", METRICS_FILE=metrics)
    assert (result.summary["held_units"], quantity(box, variant)) == (0, 10)
    assert result.summary["expired_units"] == 2
    [warning] = warnings_of(result)
    assert "2 held units expired" in warning and "'H1'" in warning
    assert "SYNC_HOLD_MINUTES=60" in warning and "KAK2C_STOCK_FIELD" in warning
    assert "sync_stock_hold_expired_units{" in metrics.read_text()
    assert run().summary["expired_units"] == 0


def test_the_time_kaktus_takes_to_catch_up_is_measured(box, run, tmp_path):
    """The age of the oldest hold that Kaktus' fall released: caught_up_after_s and its metric;
    null when no hold was released."""
    sold(box, run, "full")
    first = run()
    assert (first.summary["held_units"], first.summary["caught_up_after_s"]) == (2, None)
    box.advance(150)
    set_kaktus(box, 8)
    metrics = tmp_path / "m.prom"
    result = run(METRICS_FILE=metrics)
    assert result.summary["held_units"] == 0
    assert 150 <= result.summary["caught_up_after_s"] < 155
    line = next(line for line in metrics.read_text().splitlines()
                if line.startswith("sync_stock_hold_caught_up_seconds{"))
    assert 150 <= float(line.split()[-1]) < 155


@pytest.mark.parametrize("answer", ["statuses", "empty"])
def test_a_sale_of_exactly_what_our_write_added_is_held(box, run, answer):
    """We wrote 12 -> 14 (a restock) and it landed; a customer buys 2, back to 12: a sale,
    whether InSales confirmed the write ("ok") or queued it ([]: the product's updated_at
    moved)."""
    variant = add_pair(box, "X1", 12, 12)
    run()
    box.insales.group_answer = answer
    set_kaktus(box, 14)
    box.advance(60)
    assert run().summary["updated"] == 1
    assert quantity(box, variant) == 14
    box.advance(30)
    box.insales.sell(variant, 2)
    box.advance(30)
    result = run()
    assert (result.summary["held_units"], quantity(box, variant)) == (2, 12)
    assert writes(box)[-1]["at"] < box.clock() - 50  # nothing written back


def test_a_confirmed_write_tells_a_sale_even_when_updated_at_does_not_move(box, run):
    """InSales answered "ok" for our 12 -> 14: a sale back to 12 is held even in a shop whose
    updated_at did not move (here: times in steps of an hour, so write and sale share one)."""
    box.insales.time_step_ms = 3_600_000
    box.advance(3600 - box.clock() % 3600 + 1)  # just past the hour: the test stays within it
    variant = add_pair(box, "X2", 12, 14)
    assert run().summary["updated"] == 1
    before = box.insales.products[box.insales.variant_product[variant]]["updated_at"]
    box.insales.sell(variant, 2)
    assert box.insales.products[box.insales.variant_product[variant]]["updated_at"] == before
    result = run()
    assert (result.summary["held_units"], quantity(box, variant)) == (2, 12)


def test_a_cancel_both_sides_counted_frees_no_other_orders_hold(box, run):
    """Order X (3) held, then seen by Kaktus; order Y (1) held; X cancelled on both sides: Y's
    unit stays held."""
    variant = add_pair(box, "C1", 10, 10)
    run()
    box.insales.sell(variant, 3)                     # X
    assert run().summary["held_units"] == 3
    set_kaktus(box, 7)                               # Kaktus sees X
    assert run().summary["held_units"] == 0
    box.insales.sell(variant, 1)                     # Y
    assert run().summary["held_units"] == 1
    box.insales.set_variant(variant, quantity=9)     # X cancelled: InSales +3 ...
    set_kaktus(box, 10)                              # ... and Kaktus +3
    result = run()
    assert (result.summary["held_units"], quantity(box, variant)) == (1, 9)


def test_a_write_whose_answer_was_lost_stays_announced(box, run):
    """A write that landed but whose answers never came back (exit 3) is not InSales rising by
    itself: the next run releases no hold and puts nothing sold back on sale."""
    variant = sold(box, run, "full")                 # 10 -> 8, Kaktus 10
    assert run().summary["held_units"] == 2
    set_kaktus(box, 20)                              # a delivery: publish 20 - 2 = 18
    box.insales.inject("PUT /admin", status=None, lose_answer=True, times=5)
    assert run().code == 3
    assert quantity(box, variant) == 18              # it landed all the same
    result = run()
    assert (result.code, result.summary["held_units"], quantity(box, variant)) == (0, 2, 18)


def test_restock_during_a_hold_publishes_stock_less_the_hold(box, run):
    """10 -> 8 sold, Kaktus restocked 10 -> 20: InSales gets 18."""
    variant = sold(box, run, "full")
    set_kaktus(box, 20)
    assert run().summary["held_units"] == 2
    assert quantity(box, variant) == 18


def test_published_stock_never_goes_below_zero(box, run):
    """Held units and the buffer together beyond the stock publish 0."""
    variant = sold(box, run, "full", shop=2, stock=2, units=2)
    result = run(SYNC_STOCK_BUFFER=1)
    assert (result.code, quantity(box, variant)) == (0, 0)
    assert writes(box) == []


def test_our_own_queued_write_is_not_a_sale(box, run):
    """A write InSales queued and applies a minute late (Q = S meanwhile) holds nothing."""
    box.insales.queue_writes = True
    variant = add_pair(box, "Q1", 7, 10)
    first = run()
    assert (first.summary["updated"], quantity(box, variant)) == (1, 7)
    second = run()  # the write has not landed yet: InSales still shows 7, the S of the first run
    assert second.summary["held_units"] == 0
    box.insales.apply_queued()
    third = run()
    assert (third.summary["held_units"], third.summary["changed"]) == (0, 0)
    assert quantity(box, variant) == 10


def test_a_sale_right_after_our_upward_write_is_held(box, run):
    """We wrote 7 -> 10 and a customer bought one: 9 is a sale of 1, not undone."""
    variant = add_pair(box, "W1", 7, 10)
    run()
    box.insales.sell(variant, 1)
    result = run()
    assert (result.summary["held_units"], quantity(box, variant)) == (1, 9)


def test_holds_off_puts_kaktus_figure_back(box, run, env):
    """SYNC_HOLD_MINUTES=0 syncs plainly, and still keeps the state for later."""
    variant = sold(box, run, "full")
    result = run(SYNC_HOLD_MINUTES=0)
    assert (result.summary["held_units"], quantity(box, variant)) == (0, 10)
    assert Path(env["SYNC_STATE_FILE"]).exists()


def test_buffer_keeps_units_back(box, run):
    """SYNC_STOCK_BUFFER=2 publishes Kaktus' figure less 2."""
    variant = add_pair(box, "B1", 0, 10)
    assert run(SYNC_STOCK_BUFFER=2).code == 0
    assert quantity(box, variant) == 8


def test_dry_run_shows_holds_and_changes_no_state(box, run, env):
    """The dry-run table marks the held variant; the state file is left as it was."""
    variant = sold(box, run, "full")
    before = Path(env["SYNC_STATE_FILE"]).read_bytes()
    result = run("--dry-run")
    line = next(line for line in result.err.splitlines() if "H1" in line)
    assert str(variant) in line and "8 -> 8" in line and "held 2 until " in line
    assert result.summary["held_units"] == 2
    assert Path(env["SYNC_STATE_FILE"]).read_bytes() == before


def test_report_says_held_with_until(box, run, tmp_path):
    """The report's reason for a held variant is `held: sale in flight (2 until HH:MM)`."""
    sold(box, run, "full")
    report = tmp_path / "report.csv"
    run("--report", str(report))
    row = next(line for line in report.read_text().splitlines() if line.startswith("H1,"))
    assert ",8,10,unchanged,held: sale in flight (2 until " in row


@pytest.mark.parametrize("content", ["lost", "{broken", '{"version": 1}'])
def test_a_lost_or_old_state_syncs_plainly(box, run, env, content):
    """Without a readable state of this version, the run has no holds: Kaktus' figure."""
    variant = sold(box, run, "full")
    path = Path(env["SYNC_STATE_FILE"])
    if content == "lost":
        path.unlink()
    else:
        path.write_text(content)
    result = run()
    assert (result.code, result.summary["held_units"], quantity(box, variant)) == (0, 0, 10)
    if content.startswith('{"version"'):
        assert "written by another version of sync_stock (state version 1" in result.err


def test_a_state_of_another_quantity_field_has_no_holds(box, run):
    """Switching INSALES_WAREHOUSE starts afresh: the state's figures were of another field."""
    sold(box, run, "full")
    assert run(INSALES_WAREHOUSE=0).summary["held_units"] == 0


def test_unconfirmed_writes_landed_or_not_are_no_sales(box, run, env):
    """Writes InSales answered [] stay announced: the one that landed (Q = R) and the one that
    never does (Q = S, the product unchanged) are no sale."""
    first = add_pair(box, "K1", 3, 5)
    second = add_pair(box, "K2", 4, 6)
    box.insales.queue_writes = True
    result = run()
    assert result.summary["updated"] == 2
    state = json.loads(Path(env["SYNC_STATE_FILE"]).read_text())
    tracks = state["tracks"]
    assert dict(zip(tracks["id"], zip(tracks["seen"], tracks["announced"]))) == {
        first: (3, 5), second: (4, 6)}
    box.insales.apply_queued(only={first})  # the other write is lost
    box.insales.queue_writes = False
    again = run()
    assert again.summary["held_units"] == 0
    assert (quantity(box, first), quantity(box, second)) == (5, 6)


def test_stock_expression_subtracts_reserved_units(box, run):
    """KAK2C_STOCK_FIELD=stockTotal-stockReserved is computed per entry and summed."""
    variant = add_pair(box, "E1", 0, 10)
    box.kak2c.products[0]["variants"][0]["stock"] = [
        {"stockTotal": 10, "stockReserved": 3}, {"stockTotal": "2", "stockReserved": 0}]
    assert run(KAK2C_STOCK_FIELD="stockTotal - stockReserved").code == 0
    assert quantity(box, variant) == 9


def test_stock_expression_naming_a_missing_field_is_unknown_stock(box, run):
    """A field the entries lack makes the stock unknown: never written as 0, and warned about;
    a variant whose entries carry both is synced."""
    variant, other = add_pair(box, "E2", 4, 10), add_pair(box, "E3", 4, 10)
    carried = add_pair(box, "E4", 4, 10)
    box.kak2c.products[-1]["variants"][0]["stock"] = [{"stockTotal": 10, "stockReserved": 3}]
    result = run(KAK2C_STOCK_FIELD="stockTotal-stockReserved")
    assert (result.code, result.summary["unknown_stock"], quantity(box, variant)) == (0, 2, 4)
    assert (quantity(box, other), quantity(box, carried)) == (4, 7)
    [warning] = warnings_of(result)
    assert "KAK2C_STOCK_FIELD" in warning and "stockTotal" in warning


@pytest.mark.parametrize("name, value", [
    ("KAK2C_STOCK_FIELD", "stockTotal -"), ("KAK2C_STOCK_FIELD", "stockTotal*2"),
    ("SYNC_STOCK_BUFFER", "-1"), ("SYNC_STOCK_BUFFER", "1.5"), ("SYNC_HOLD_MINUTES", "soon"),
    ("SYNC_HOLD_MINUTES", "-5"), ("KAK2C_PAGE_SIZE", "0"), ("KAK2C_PAGE_SIZE", "many"),
    ("METRICS_FILE", None)])
def test_malformed_stock_settings_exit_2_before_any_request(box, run, name, value, tmp_path):
    """Each malformed value is named on one line, exit 2, and nothing is sent."""
    if value is None:  # a metrics file is no configuration error: a run that cannot write it
        value = tmp_path / "no-such-dir" / "deeper" / "m.prom"  # only logs it (see operations)
        result = run(**{name: value})
        assert result.code == 0
        return
    result = run(**{name: value})
    assert result.code == 2
    assert name in result.err and len(result.err.strip().splitlines()) == 1
    assert box.insales.log == [] and box.kak2c.log == []


@pytest.mark.parametrize("domain", [None, "shop123"])
def test_domain_header_goes_with_every_kaktus_call(box, run, domain):
    """KAK2C_DOMAIN is sent as `Domain` on the login and every page; unset, it is not sent."""
    variant = add_pair(box, "D1", 0, 3)
    box.kak2c.domain = domain
    result = run(KAK2C_DOMAIN=domain)
    assert (result.code, quantity(box, variant)) == (0, 3)
    assert [call["headers"].get("Domain") for call in box.kak2c.log] == [domain] * 2


def test_an_account_that_needs_domain_fails_clearly_without_it(box, run):
    """Without KAK2C_DOMAIN, an account that needs it answers 403: exit 3, nothing written."""
    add_pair(box, "D2", 0, 3)
    box.kak2c.domain = "shop123"
    result = run()
    assert (result.code, writes(box)) == (3, [])
    assert "Domain header required" in result.err


@pytest.mark.parametrize("honoured", [True, False])
def test_page_size_is_asked_and_a_server_that_ignores_it_still_works(box, run, honoured):
    """KAK2C_PAGE_SIZE=40 asks size=40; the walk plans from page 0's length either way."""
    for n in range(130):
        add_pair(box, f"P{n:03d}", 0, 1, shape="flat")
    box.kak2c.honour_size = honoured
    result = run(KAK2C_PAGE_SIZE=40)
    assert (result.code, result.summary["updated"]) == (0, 130)
    pages = box.kak2c.calls("GET")
    assert all(call["query"]["size"] == "40" for call in pages)
    assert len(pages) == (4 if honoured else 2)


def test_a_refused_write_is_not_taken_for_ours(box, run):
    """InSales refused our 10 -> 7; a customer then buys 1 (9): a sale, held, so 6 is written."""
    variant = add_pair(box, "R1", 10, 7)
    box.insales.inject("PUT /admin", status=422, body={"errors": {"quantity": ["locked"]}})
    assert run().code == 1
    assert quantity(box, variant) == 10
    box.insales.sell(variant, 1)
    result = run()
    assert (result.code, result.summary["held_units"], quantity(box, variant)) == (0, 1, 6)
