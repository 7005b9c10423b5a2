"""The stock to publish over real HTTP: holds for sales in flight, buffer, stock expressions."""
import json
import time
from pathlib import Path

import pytest

from conftest import add_pair, writes

MODES = pytest.mark.parametrize("mode", ["full", "incremental"])


def quantity(box, variant_id):
    return box.insales.variant(variant_id)["quantity"]


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


def test_a_hold_expires_after_the_window(box, run):
    """After SYNC_HOLD_MINUTES (here 0.3 s on the real clock) Kaktus' figure wins again."""
    variant = sold(box, run, "full")
    assert run(SYNC_HOLD_MINUTES=0.005).summary["held_units"] == 2
    time.sleep(0.35)  # the hold's clock is the real one: the thing under test
    result = run("-v", SYNC_HOLD_MINUTES=0.005)
    assert (result.summary["held_units"], quantity(box, variant)) == (0, 10)
    assert "hold expired" in result.err


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


def test_a_state_of_another_quantity_field_has_no_holds(box, run):
    """Switching INSALES_WAREHOUSE starts afresh: the state's figures were of another field."""
    sold(box, run, "full")
    assert run(INSALES_WAREHOUSE=0).summary["held_units"] == 0


def test_a_killed_run_leaves_announced_writes_not_sales(box, run, env):
    """State written before the writes: whether they landed (Q = R) or not (Q = S), no hold."""
    first = add_pair(box, "K1", 3, 5)
    second = add_pair(box, "K2", 4, 6)
    result = run()
    assert result.summary["updated"] == 2
    state = json.loads(Path(env["SYNC_STATE_FILE"]).read_text())
    announced = dict(zip(state["tracks"]["id"], state["tracks"]["announced"]))
    assert (announced[first], announced[second]) == (5, 6)
    box.insales.set_variant(second, quantity=4)  # as if that write had never landed
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
    """A field the entries lack makes the stock unknown: never written as 0, and warned about."""
    variant = add_pair(box, "E2", 4, 10)
    result = run(KAK2C_STOCK_FIELD="stockTotal-stockReserved")
    assert (result.code, result.summary["unknown_stock"], quantity(box, variant)) == (0, 1, 4)
    assert "KAK2C_STOCK_FIELD" in result.err and "stockTotal" in result.err


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
