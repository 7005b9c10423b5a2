"""Fixtures: a fresh sandbox per test, and `run` to call sync_stock.main() against it.

`run` injects the retry policy's sleep: it records each wait (`Result.waits`) and moves the
sandbox's clock instead of sleeping, so backoff, Retry-After and pacing are asserted, not slept;
and the sandbox's clock as the run's, so that `box.advance()` ages and expires holds too.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sandbox  # noqa: E402
import sync_stock  # noqa: E402

SETTINGS = (
    *(setting.name for setting in sync_stock.SETTINGS),
    # and a proxy of the machine that runs the tests, which must not come before the sandbox
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
    "http_proxy", "https_proxy", "all_proxy", "no_proxy",
)


class Result(NamedTuple):
    code: int
    summary: dict | None
    out: str
    err: str
    waits: list  # the seconds the run would have slept, in order


@pytest.fixture
def box():
    with sandbox.Sandbox() as box:
        yield box


@pytest.fixture
def env(box, tmp_path, monkeypatch):
    """Point every setting at the sandbox, with files in tmp_path; return the settings dict."""
    for key in SETTINGS:
        monkeypatch.delenv(key, raising=False)
    settings = box.env(tmp_path)
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    return settings


@pytest.fixture
def run(box, env, tmp_path, monkeypatch, capsys):
    """Run sync_stock.main(--json ...) in-process; extra settings as keyword arguments."""
    env_file = tmp_path / "test.env"
    env_file.write_text("")

    def run(*args, **settings) -> Result:
        for key, value in settings.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, str(value))
        waits = []

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            box.advance(seconds)

        code = sync_stock.main(["--env-file", str(env_file), "--json", *args], sleep=sleep,
                               clock=box.clock)
        captured = capsys.readouterr()
        lines = captured.out.strip().splitlines()
        summary = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
        return Result(code, summary, captured.out, captured.err, waits)

    return run


class Watched(NamedTuple):
    code: int
    summaries: list  # the JSON line of every sync, in order
    err: str
    waits: list      # what the watch waited between its syncs
    sleeps: list     # what the retry policy would have slept


@pytest.fixture
def watch(box, env, tmp_path, monkeypatch, capsys):
    """Run sync_stock.main(--watch --json ...) in-process for `syncs` syncs, in simulated time:
    each wait between two syncs moves the sandbox's clock and calls `between(number of syncs
    done)`; extra settings as keyword arguments."""
    env_file = tmp_path / "test.env"
    env_file.write_text("")

    def watch(*args, syncs=3, between=None, **settings) -> Watched:
        for key, value in settings.items():
            monkeypatch.setenv(key, str(value))
        waits, sleeps = [], []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            box.advance(seconds)

        def wait(seconds: float) -> bool:
            waits.append(seconds)
            box.advance(seconds)
            if between is not None:
                between(len(waits))
            return len(waits) >= syncs

        code = sync_stock.main(["--env-file", str(env_file), "--json", "--watch", *args],
                               sleep=sleep, clock=box.clock, wait=wait)
        captured = capsys.readouterr()
        summaries = [json.loads(line) for line in captured.out.splitlines()
                     if line.startswith("{")]
        return Watched(code, summaries, captured.err, waits, sleeps)

    return watch


class Monitor(sandbox.Emulator):
    """A healthchecks.io-style endpoint that records its pings."""

    def handle(self, request):
        return 200, {"Content-Type": "text/plain"}, "OK"


def start_monitor() -> Monitor:
    endpoint = Monitor(sandbox.Clock())
    endpoint.start()
    return endpoint


def add_pair(box, barcode, shop_qty, stock, shape="variants", **shop_fields) -> int:
    """Add one InSales variant and its Kaktus twin; return the InSales variant id."""
    product = box.insales.add_product(f"Product {barcode}", [
        {"barcode": barcode, "quantity": shop_qty, **shop_fields}])
    record = {"id": len(box.kak2c.products) + 1, "barcode": barcode}
    if stock is not None:  # None: no stock at all, which Kaktus means as unknown
        record["stock"] = [{"stockTotal": stock}]
    if shape == "variants":
        box.kak2c.add_product({"id": 90000 + record["id"], "name": "P", "variants": [record]})
    else:
        box.kak2c.add_product(record)
    return product["variants"][0]["id"]


def quantity(box, variant_id) -> int:
    """What InSales shows of one variant now."""
    return box.insales.variant(variant_id)["quantity"]


def shop_quantities(box, field="quantity") -> dict:
    """InSales stock by barcode, as the shop now holds it."""
    return {v["barcode"]: v[field] for v in box.insales.all_variants() if v["barcode"]}


def kaktus_quantities(box) -> dict:
    """Kaktus stock by barcode for a plain catalogue (one barcode, one stock entry)."""
    return {v["barcode"]: v["stock"][0]["stockTotal"] for v in box.kak2c.variants()}


def warnings_of(result) -> list:
    """The WARNING lines of a run's log: what cron mails."""
    return [line for line in result.err.splitlines() if " WARNING " in line]


def writes(box) -> list:
    return box.insales.calls("PUT", "/admin/products/variants_group_update.json")


def said_at_error(result) -> str:
    """The summary's error, checked to be in an ERROR line of the log (cron mails it even with
    -q)."""
    error = result.summary["error"]
    assert any(" ERROR " in line and error in line for line in result.err.splitlines())
    return error


def refusal_of(result) -> str:
    """The reason a run was refused for (exit 4, status refused, said at ERROR), which tests
    check for the setting it names."""
    assert (result.code, result.summary["status"]) == (4, "refused"), result.err
    return said_at_error(result)
