#!/usr/bin/env python3
"""Keep every InSales variant's stock equal to what Kaktus (kak2c.ru) can sell of the same barcode.

One run, then exit (a once-a-minute cron line), or --watch: the same sync every few seconds in
one process. README.md is the user's contract (flags, settings, exit codes, summary keys).
Every name is defined before it is used, helpers first, in sections: the outcomes and errors
-> settings -> logging, lock and files -> the pure core (barcodes and stock, reading the
InSales answers, the Kaktus index, holds, one decision per barcode, the plan, the guard: plain
data in, plain data out) -> HTTP -> the Kaktus token -> the Kaktus walk (where it stops, and
fetching its pages) -> reading InSales -> writing InSales -> the state between runs -> output
-> the run: one sync in two steps (plan_sync, write_sync), a cron run, a watch, and main(), the
one place that turns errors that are no sync's into exit codes.
"""
from __future__ import annotations

import argparse
import base64
import csv
import difflib
import email.utils
import errno
import fcntl
import functools
import gc
import hashlib
import heapq
import html
import io
import ipaddress
import itertools
import json
import logging
import logging.handlers
import math
import operator
import os
import re
import signal
import socket
import ssl
import stat
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote, quote_plus, urlsplit

import requests
import requests.adapters
import urllib3
from dotenv import dotenv_values

__version__ = "1.1.0"

HERE = Path(__file__).resolve().parent
USER_AGENT = f"sync_stock/{__version__} (+InSales-Kaktus stock sync)"
log = logging.getLogger("sync_stock")

INSALES_PAGE = 250          # the documented per_page maximum
INSALES_MIN_PAGE = 10       # and its minimum: InSales raises anything below
WRITE_BATCH = 100           # variants_group_update: keep to 100 variants a call
TOKEN_MARGIN = 120          # renew the Kaktus token this many seconds before its exp
TOKEN_TTL = 14400           # when neither the JWT's exp nor expires_in can be read
RATE_WINDOW = 300           # InSales: 500 requests per 5 minutes
RATE_LIMIT = 500            # until API-Usage-Limit tells this shop's
KAKTUS_WINDOW = 60          # KAK2C_MAX_RPM counts the requests of any minute
WATCH_MAX_GAP = 60.0        # a watch is never slower than the once-a-minute cron run
WARN_EVERY = 3600           # a watch says a warning about one thing at most this often
MAX_COUNT = 1_000_000_000   # a stock figure above this counts nothing on a shelf
GUARD_MIN_ZEROED = 10       # the zeroing guard only speaks from this many zeroed variants
AUTO_INCREMENTAL_PRODUCTS = 12_500  # over 50 pages a full walk costs half the budget a minute
CURSOR_REWIND = timedelta(seconds=2)  # InSales times may have one-second resolution
CURSOR_RECENT = 60          # seconds: until then a walk looks again at the last second read
WALK_START = "2000-01-01T00:00:00.000+00:00"
STATE_VERSION = 4
DRY_RUN_ROWS = 50
WARN_MOST = 5               # malformed records named one by one in a run's log
EXIT_OK, EXIT_PARTIAL, EXIT_CONFIG, EXIT_UPSTREAM, EXIT_REFUSED = 0, 1, 2, 3, 4


class Status(Enum):
    """How a sync ended: the summary's `status`, and the exit code it gives."""

    OK = "ok", EXIT_OK
    DRY_RUN = "dry-run", EXIT_OK
    SKIPPED = "skipped", EXIT_OK          # another run held the lock
    PARTIAL = "partial", EXIT_PARTIAL
    FAILED = "failed", EXIT_UPSTREAM
    REFUSED = "refused", EXIT_REFUSED

    def __init__(self, label: str, exit_code: int):
        self.label, self.exit_code = label, exit_code


@dataclass
class SyncResult:
    """What a sync did: its status, its walk, and the figures of its summary as far as it got
    (the plan's counts, what the writes did, the guard's word, the error; see FIGURES)."""

    status: Status = Status.FAILED
    mode: str | None = None
    figures: dict = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        return self.figures.get("error")


class SyncError(Exception):
    """A run that cannot go on: the message tells the operator what is wrong.

    `result` carries what a sync had found before it stopped (its counts); None when no sync
    ran (a configuration error, a failed --check).
    """

    exit_code = EXIT_UPSTREAM
    status = Status.FAILED

    def __init__(self, message: str, result: SyncResult | None = None):
        super().__init__(message)
        self.result = result


class ConfigError(SyncError):
    exit_code = EXIT_CONFIG


class UpstreamError(SyncError):
    """An API failed: unreachable after the retries, a rejected login, a malformed answer."""


class CredentialsRejected(UpstreamError):
    """An API refused who we are (401, 403, a failed login): a setting to change."""


class GuardRefused(SyncError):
    exit_code = EXIT_REFUSED
    status = Status.REFUSED


# --- settings ---------------------------------------------------------------------------------

INSALES_BARCODE_FIELDS = {"barcode": "sku", "sku": "barcode"}  # each with the other one
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
STOCK_EXPRESSION = re.compile(r"\s*[A-Za-z_]\w*(\s*[+-]\s*[A-Za-z_]\w*)*\s*", re.ASCII)


def parse_stock_expression(text: str) -> tuple:
    """Read `stockTotal` or `stockTotal - stockReserved + ...` as ((sign, field), ...)."""
    if not STOCK_EXPRESSION.fullmatch(text):
        raise ConfigError(f"KAK2C_STOCK_FIELD={text!r} is not a field name or fields joined by "
                          "+ and -, e.g. stockTotal-stockReserved")
    signs = ["+"] + re.findall(r"[+-]", text)
    names = re.findall(r"[A-Za-z_]\w*", text, re.ASCII)
    return tuple((1 if sign == "+" else -1, name) for sign, name in zip(signs, names))


def show_stock_expression(terms: tuple) -> str:
    """KAK2C_STOCK_FIELD as read: `stockTotal-stockReserved`."""
    return "".join(("-" if sign < 0 else "+" if i else "") + name
                   for i, (sign, name) in enumerate(terms))


class StockRule(NamedTuple):
    """What a Kaktus variant's stock is read by: the summary's name for it, and its terms."""

    name: str     # e.g. stockTotal-stockReserved
    terms: tuple  # ((+1 or -1, field name), ...)


def stock_rule(text: str) -> StockRule:
    """Read a KAK2C_STOCK_FIELD that names its fields (not `auto`)."""
    terms = parse_stock_expression(text)
    return StockRule(show_stock_expression(terms), terms)


# KAK2C_STOCK_FIELD=auto, per variant, the first of these whose fields every one of its stock
# entries carries: what Kaktus can sell. It reserves stock for every order it accepts, of every
# channel it fulfils, and a reserved unit stays in stockTotal until it ships: published, it
# sells twice.
AUTO_RULES = tuple(map(stock_rule, ("stockAvailable", "stockTotal-stockReserved", "stockTotal")))
AVAILABLE, TOTAL_LESS_RESERVED, TOTAL = AUTO_RULES
AUTO_STOCK_TEXT = "auto reads " + ", else ".join(rule.name for rule in AUTO_RULES)


@dataclass(frozen=True)
class Settings:
    insales_url: str
    insales_key: str
    insales_password: str = field(repr=False)
    warehouse: int | None
    kaktus_url: str
    kaktus_credentials: bytes = field(repr=False)  # the login body, posted as-is
    kaktus_credentials_file: Path | None  # where it was read, unless KAK2C_LOGIN gave it
    kaktus_domain: str | None
    kaktus_page_size: int | None
    token_file: Path
    insales_barcode_field: str  # "barcode" or "sku"
    kaktus_barcode_field: str   # "auto", or the one variant field that holds the barcode
    stock_rule: StockRule | None  # KAK2C_STOCK_FIELD; None: auto, chosen per variant
    stock_buffer: int
    hold_minutes: float
    lock_file: Path
    mode: str
    full_every: int
    interval: float             # --watch: seconds between the starts of two syncs
    max_rpm: int                # --watch: the most Kaktus requests in any minute
    state_file: Path
    max_wait: float
    timeout: float
    guard_zero_share: float
    log_file: Path | None
    healthcheck_url: str | None
    metrics_file: Path | None

    @property
    def quantity_field(self) -> str:
        if self.warehouse is None:
            return "quantity"
        return f"quantity_at_warehouse{self.warehouse}"

    @property
    def insales_fields(self) -> tuple:
        """What an InSales variant is read by: (quantity, barcode, the other barcode field)."""
        field = self.insales_barcode_field
        return self.quantity_field, field, INSALES_BARCODE_FIELDS[field]

    @property
    def stock_setting(self) -> str:
        """KAK2C_STOCK_FIELD as read: auto, or the expression."""
        return self.stock_rule.name if self.stock_rule else "auto"

    @property
    def shop(self) -> str:
        """The shop's host: the metrics' `shop` label."""
        return urlsplit(self.insales_url).netloc

    @property
    def secrets(self) -> set:
        """What an API may echo back and no output may carry: the password values, and the
        Basic credential that carries the InSales one."""
        try:
            fields = json.loads(self.kaktus_credentials)
        except ValueError:
            fields = {}
        found = {str(value) for key, value in fields.items()
                 if "pass" in str(key).lower() and isinstance(value, (str, int, float))}
        basic = base64.b64encode(f"{self.insales_key}:{self.insales_password}".encode())
        return {s for s in found | {self.insales_password, basic.decode()} if s}


# How a setting is read: (its name, its text or None when unset) -> its value, or a
# ConfigError that names it.

def read_text(name: str, raw: str | None) -> str | None:
    return raw


def read_required(name: str, raw: str | None) -> str:
    if raw is None:
        raise ConfigError(f"{name} is not set (see .env.example)")
    return raw


VISIBLE_ASCII = re.compile(r"[!-~]+")  # what a header value or a credential InSales makes holds
NOT_UTF8 = re.compile("[\ud800-\udfff]")  # a byte of another encoding, as Python decodes it


def read_app_credential(name: str, raw: str | None) -> str:
    """An InSales app's identifier or password: InSales makes them of Latin letters and digits,
    so anything else (a Cyrillic look-alike, a space) was changed on its way here."""
    value = read_required(name, raw)
    if not VISIBLE_ASCII.fullmatch(value) or (name == "INSALES_API_KEY" and ":" in value):
        raise ConfigError(f"{name} has a character no InSales app credential has (only Latin "
                          "letters, digits and signs); copy it again from the app's page in "
                          "the InSales back office")
    return value


def read_header_value(name: str, raw: str | None) -> str | None:
    """A setting sent as a header's value: visible ASCII (a domain in its xn-- form)."""
    if raw is None or VISIBLE_ASCII.fullmatch(raw):
        return raw
    try:
        domain = raw.encode("idna").decode()
    except UnicodeError:
        domain = ""
    hint = f"; as a domain it is written {domain}" if VISIBLE_ASCII.fullmatch(domain) else ""
    raise ConfigError(f"{name}={raw!r} has characters a header cannot carry (only Latin "
                      f"letters, digits and signs){hint}")


def read_url(name: str, raw: str | None) -> str | None:
    if raw is None:
        return None
    scheme, _, rest = raw.partition("://")
    if scheme not in ("http", "https") or not rest:
        raise ConfigError(f"{name}={raw!r} is not an http(s) URL")
    if "@" in rest.split("/", 1)[0]:
        raise ConfigError(f"{name} must not carry credentials; use the key and password settings")
    try:  # urllib.parse and urllib3 raise ValueError on a port out of range or not a number
        parts, _ = urlsplit(raw), urllib3.util.parse_url(raw)
        valid = parts.port != 0 and re.fullmatch(r"[^\s<>\"{}|\\^`%]+", parts.hostname or "")
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError(f"{name}={raw!r} has no valid host and port, as in https://host "
                          "or https://host:port")
    return raw.rstrip("/")


def is_this_machine(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_api_url(name: str, raw: str | None) -> str:
    """An API's address: https, or http to this machine only (the sandbox): over http the app
    password and the Kaktus login would cross the network in clear."""
    url = read_url(name, raw)
    if url.startswith("http://") and not is_this_machine(url):
        raise ConfigError(f"{name}={raw!r}: http:// would send the passwords in clear; set it "
                          f"to {'https://' + url.removeprefix('http://')} (http:// is only for "
                          "this machine: localhost, 127.0.0.1, ::1)")
    return url


def read_shop_url(name: str, raw: str | None) -> str:
    return read_api_url(name, read_required(name, raw)).removesuffix("/admin")


def read_path(name: str, raw: str | None) -> Path | None:
    return HERE / Path(raw).expanduser() if raw else None  # cron starts in $HOME


def read_number(kind: type = int, low: float = 0.0, high: float = math.inf) -> Callable:
    def read(name: str, raw: str | None):
        if raw is None:
            return None
        try:
            value = kind(raw)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            noun = "whole number" if kind is int else "number"
            bounds = f"of at least {low:g}" if high == math.inf else f"from {low:g} to {high:g}"
            raise ConfigError(f"{name}={raw!r} is not a {noun} {bounds}")
        return value
    return read


def read_choice(*choices: str) -> Callable:
    def read(name: str, raw: str | None) -> str:
        if raw not in choices:
            raise ConfigError(f"{name}={raw!r} must be one of {', '.join(choices)}")
        return raw
    return read


def read_field_name(name: str, raw: str | None) -> str:
    if not FIELD_NAME.fullmatch(raw):
        raise ConfigError(f"{name}={raw!r} must be auto or the name of a Kaktus variant field, "
                          "e.g. barcode, id, ean, article")
    return raw


def read_stock_field(name: str, raw: str | None) -> StockRule | None:
    return None if raw == "auto" else stock_rule(raw)


def read_kaktus_credentials(raw: Mapping) -> tuple:
    """The Kaktus login body, from KAK2C_LOGIN and KAK2C_PASSWORD or KAK2C_CREDENTIALS_FILE as
    it is, and the file it was read from (None for the first)."""
    login, password = raw["KAK2C_LOGIN"], raw["KAK2C_PASSWORD"]
    if login or password:
        if not (login and password):
            raise ConfigError("KAK2C_LOGIN and KAK2C_PASSWORD go together: set both or neither")
        return json.dumps({"login": login, "password": password}).encode(), None
    source = read_path("KAK2C_CREDENTIALS_FILE", raw["KAK2C_CREDENTIALS_FILE"])
    try:
        body = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"KAK2C_CREDENTIALS_FILE {source}: cannot read ({exc.strerror}); "
                          "copy files/kak2c_info.example there or set KAK2C_LOGIN") from None
    try:
        valid = isinstance(json.loads(body), dict)
    except (ValueError, RecursionError):
        valid = False
    if not valid:
        raise ConfigError(f"KAK2C_CREDENTIALS_FILE {source}: not a JSON object like "
                          '{"login": ..., "password": ...}')
    return body, source


class Setting(NamedTuple):
    name: str
    default: str | None   # None: unset (or, for the first three, required)
    meaning: str
    field: str | None     # the Settings field it gives (None: read with others, see below)
    read: Callable = read_text


# Every setting, once: load_settings() reads each into its Settings field by its row, --help
# lists it, and the tests check that .env.example and README.md name exactly these. The Kaktus
# credentials come from three of them together (read_kaktus_credentials).
SETTINGS = (
    Setting("INSALES_URL", None, "shop base URL, e.g. https://myshop.myinsales.ru (required)",
            "insales_url", read_shop_url),
    Setting("INSALES_API_KEY", None, "the app identifier, the Basic auth user (required)",
            "insales_key", read_app_credential),
    Setting("INSALES_API_PASSWORD", None, "the app password (required)",
            "insales_password", read_app_credential),
    Setting("INSALES_WAREHOUSE", None, "warehouse array_index N: write quantity_at_warehouseN",
            "warehouse", read_number()),
    Setting("INSALES_BARCODE_FIELD", "barcode", "the variant field with the barcode: barcode, sku",
            "insales_barcode_field", read_choice(*INSALES_BARCODE_FIELDS)),
    Setting("KAK2C_URL", "https://app.kak2c.ru", "Kaktus base URL", "kaktus_url",
            read_api_url),
    Setting("KAK2C_CREDENTIALS_FILE", "files/kak2c_info", 'JSON {"login", "password"} to log in',
            None),
    Setting("KAK2C_LOGIN", None, "instead of the credentials file, with KAK2C_PASSWORD", None),
    Setting("KAK2C_PASSWORD", None, "instead of the credentials file, with KAK2C_LOGIN", None),
    Setting("KAK2C_TOKEN_FILE", "files/kak2c_token", "token cache (mode 0600)",
            "token_file", read_path),
    Setting("KAK2C_BARCODE_FIELD", "auto", "where a Kaktus variant's barcode is: auto, or a field",
            "kaktus_barcode_field", read_field_name),
    Setting("KAK2C_STOCK_FIELD", "auto", f"what Kaktus can sell ({AUTO_STOCK_TEXT}), or "
            "stock entry fields joined by + and -", "stock_rule", read_stock_field),
    Setting("KAK2C_PAGE_SIZE", None, "ask Kaktus pages of this many products (size=N)",
            "kaktus_page_size", read_number(low=1, high=10_000)),
    Setting("KAK2C_DOMAIN", None, "the Domain header of accounts with several shops",
            "kaktus_domain", read_header_value),
    Setting("SYNC_STOCK_BUFFER", "0", "units kept back from every variant",
            "stock_buffer", read_number(high=MAX_COUNT)),
    Setting("SYNC_HOLD_MINUTES", "60", "how long a sale Kaktus has not seen is held; 0: off",
            "hold_minutes", read_number(float, high=7 * 24 * 60)),
    Setting("SYNC_LOCK_FILE", "files/sync_stock.lock", "lock against overlapping runs",
            "lock_file", read_path),
    Setting("SYNC_MODE", "auto", "full, incremental, or auto (incremental for big shops)",
            "mode", read_choice("auto", "full", "incremental")),
    Setting("SYNC_FULL_EVERY", "60", "minutes between full walks in incremental mode",
            "full_every", read_number(low=1)),
    Setting("SYNC_INTERVAL", "10", "--watch: seconds between the starts of two syncs",
            "interval", read_number(float, low=0.001, high=WATCH_MAX_GAP)),
    Setting("KAK2C_MAX_RPM", "120", "--watch: the most Kaktus requests in any minute",
            "max_rpm", read_number(low=1, high=1_000_000)),
    Setting("SYNC_STATE_FILE", "files/sync_state.json", "state kept between runs",
            "state_file", read_path),
    Setting("SYNC_MAX_WAIT", "120", "longest Retry-After, and all usage pacing, in seconds",
            "max_wait", read_number(float, high=86_400)),
    Setting("SYNC_TIMEOUT", "60", "the most one request may take, its answer included (s)",
            "timeout", read_number(float, low=0.1, high=3600)),
    Setting("SYNC_GUARD_ZERO_SHARE", "0.5", "refuse zeroing more than this share of stocked",
            "guard_zero_share", read_number(float, high=1.0)),
    Setting("LOG_FILE", None, "also log here (rotating)", "log_file", read_path),
    Setting("HEALTHCHECK_URL", None, "ping URL/start, URL, URL/fail (healthchecks.io)",
            "healthcheck_url", read_url),
    Setting("METRICS_FILE", None, "the run's figures in the Prometheus text format",
            "metrics_file", read_path),
)


class Environment(NamedTuple):
    """Where the settings come from: the settings file under the process environment."""

    values: dict          # what a setting reads: the environment's value, else the file's
    file: Path | None     # the settings file read, if there was one
    file_names: tuple     # the names it sets
    shown_as: str = ".env"  # how the messages name it


def load_environment(env_file: str | None = None) -> Environment:
    """Merge the settings file (the .env beside sync_stock.py, or --env-file) under the real
    environment, which always wins."""
    path = Path(env_file) if env_file else HERE / ".env"
    if env_file and not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "no such file"
        raise ConfigError(f"--env-file {env_file}: {what}")
    found: dict = {}
    if path.is_file():
        try:
            found = dotenv_values(path)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text; save it in UTF-8") from None
    values = {name: value for name, value in found.items() if value is not None}
    values.update(os.environ)
    return Environment(values, path if path.is_file() else None, tuple(found),
                       env_file or ".env")


def load_settings(values: Mapping) -> Settings:
    """Build Settings from a mapping of variables, naming the first one that is missing or wrong."""
    raw = {setting.name: (values.get(setting.name) or "").strip() or setting.default
           for setting in SETTINGS}
    for name, text in raw.items():
        if text and NOT_UTF8.search(text):
            raise ConfigError(f"{name} is not UTF-8 text; write it again in UTF-8")
    fields = {setting.field: setting.read(setting.name, raw[setting.name])
              for setting in SETTINGS if setting.field}
    body, source = read_kaktus_credentials(raw)
    return Settings(kaktus_credentials=body, kaktus_credentials_file=source, **fields)


SETTING_PREFIXES = ("INSALES_", "KAK2C_", "SYNC_")
PASSWORD_SETTINGS = ("INSALES_API_PASSWORD", "KAK2C_PASSWORD")


def misspelt_settings(environment: Environment, environ: Collection[str]) -> list:
    """Name each setting that is none, as a misspelt one until shown otherwise: any name of
    the settings file, and the names of the process environment with a setting's prefix;
    where it was found, and the setting it most resembles."""
    names = [setting.name for setting in SETTINGS]
    found = [(name, environment.shown_as) for name in environment.file_names
             if name not in names]
    found += [(name, "the environment") for name in sorted(environ)
              if name.startswith(SETTING_PREFIXES) and name not in names]
    lines = []
    for name, where in found:
        like = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f"did you mean {like[0]}?" if like else "see .env.example for the settings"
        lines.append(f"{name} in {where} is no setting; {hint}")
    return lines


def readable_by_others(path: Path | None, what: str) -> list:
    """Say so when a file with a password can be read by group or others."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode) if path else 0
    except OSError:
        return []
    if not mode & 0o044:
        return []
    return [f"{what} {path} holds a password and can be read by group or others (mode "
            f"{mode:04o}); run: chmod 600 {path}"]


def setup_warnings(environment: Environment, settings: Settings,
                   environ: Collection[str]) -> list:
    """What in the operator's own setup looks wrong but need not stop a run."""
    lines = misspelt_settings(environment, environ)
    if set(PASSWORD_SETTINGS) & set(environment.file_names):
        lines += readable_by_others(environment.file, "the settings file")
    lines += readable_by_others(settings.kaktus_credentials_file, "KAK2C_CREDENTIALS_FILE")
    url = settings.healthcheck_url
    if url and url.startswith("http://") and not is_this_machine(url):
        lines.append(f"HEALTHCHECK_URL={url} is http://: its pings cross the network in clear "
                     "and can be forged or read on the way; use https://")
    return lines


# --- logging, lock and files ------------------------------------------------------------------

class Secrets:
    """What no output may carry: the passwords, the InSales Basic credential, the Kaktus token,
    in every form an API may echo them. Every output passes through hide(): the log lines
    (Formatter), the summary, the dry-run table, the report, --check (see clean())."""

    SHORTEST = 6  # a shorter password is hidden only in text from outside (see outside())

    def __init__(self):
        self.values: set = set()
        self.forms: tuple = ()      # how the secrets of SHORTEST characters or more are written
        self.all_forms: tuple = ()  # and the shorter ones too, longest first

    def add(self, *values: str) -> None:
        self.values.update(value for value in values if value)
        self._build()

    def discard(self, *values: str) -> None:
        self.values.difference_update(values)
        self._build()

    def clear(self) -> None:
        self.values = set()
        self._build()

    def _build(self) -> None:
        long = {form for value in self.values if len(value) >= self.SHORTEST
                for form in written_forms(value)}
        every = long.union(*map(written_forms, self.values))
        self.forms, self.all_forms = (tuple(sorted(forms, key=len, reverse=True))
                                      for forms in (long, every))

    def hide(self, text: str, short_too: bool = False) -> str:
        """Replace every secret in `text` with <hidden>; `short_too` for text from outside,
        where even a one-letter password echoed back is worth hiding."""
        for form in self.all_forms if short_too else self.forms:
            if form in text:
                text = text.replace(form, "<hidden>")
        return text


def written_forms(secret: str) -> set:
    """The ways an answer may carry a secret: as it is, JSON-escaped (with \\uXXXX or not, with
    \\/ or not), URL- and HTML-encoded."""
    forms = {secret, html.escape(secret), quote(secret, safe="", errors="surrogatepass"),
             quote_plus(secret, errors="surrogatepass")}
    for ascii_only in (True, False):
        escaped = json.dumps(secret, ensure_ascii=ascii_only)[1:-1]
        forms.update((escaped, escaped.replace("/", "\\/")))
    return forms


SECRETS = Secrets()  # one per process, as the log is: main() empties it, the settings fill it


def outside(value, most: int = 200, echo: bool = False) -> str:
    """Text from an API fit to show: the secrets hidden before it is cut to `most` characters
    (cut first, half a secret would show); in an `echo` (an error body, a redirect), short
    passwords too."""
    return SECRETS.hide(str(value), short_too=echo)[:most]


CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """Replace what UTF-8 cannot carry (a lone surrogate from a JSON escape) with '?'."""
    return text.encode("utf-8", "replace").decode("utf-8")


def clean(text: str) -> str:
    """A line fit for a log or a terminal: secrets hidden, control characters shown escaped
    (an API's newline cannot forge a log line, nor its escape codes drive a terminal), valid
    UTF-8."""
    return printable(CONTROL.sub(lambda found: repr(found[0])[1:-1], SECRETS.hide(text)))


def json_line(value) -> str:
    """One JSON line for stdout: secrets hidden, no raw control character (JSON escapes C0
    itself; DEL, C1 and the line separators are escaped here), valid UTF-8."""
    text = CONTROL.sub(lambda found: f"\\u{ord(found[0]):04x}",
                       json.dumps(value, ensure_ascii=False))
    return printable(SECRETS.hide(text))


class Formatter(logging.Formatter):
    """ISO 8601 local times; every line clean(): no secret, no control character, UTF-8."""

    def formatTime(self, record, datefmt=None):  # noqa: N802 - logging's naming
        return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="seconds")

    def format(self, record):
        return clean(super().format(record))


def _add_handler(handler: logging.Handler, level: int) -> None:
    handler.setLevel(level)
    handler.setFormatter(Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)


def configure_logging(verbosity: int) -> None:
    """Log to stderr: -v shows details, -q only warnings and errors."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    level = {-1: logging.WARNING, 0: logging.INFO}.get(max(verbosity, -1), logging.DEBUG)
    _add_handler(logging.StreamHandler(sys.stderr), level)
    log.setLevel(logging.DEBUG)
    log.propagate = False


def open_private(path: Path, flags: int, setting: str) -> int:
    """Open (or create, mode 0600) a file the tool writes, never through a symbolic link: one
    planted there by another local user would have us write to their target."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{setting} {path} is a symbolic link; the tool never writes "
                              "through one: point the setting at a plain file") from None
        raise ConfigError(f"{setting} {path}: cannot open ({exc.strerror})") from None


class PrivateLog(logging.handlers.RotatingFileHandler):
    """A rotating log file opened by open_private(), at start and after each rotation."""

    def _open(self):
        fd = open_private(Path(self.baseFilename), os.O_WRONLY | os.O_APPEND, "LOG_FILE")
        return open(fd, "a", encoding=self.encoding)


def add_log_file(path: Path, verbose: bool) -> None:
    """Also log to a rotating file: the summary line at INFO, details with -v."""
    handler = PrivateLog(path, maxBytes=1_000_000, backupCount=5, encoding="utf-8")
    _add_handler(handler, logging.DEBUG if verbose else logging.INFO)


def check_writable(setting: str, path: Path) -> None:
    """Fail before the first request when a file the run must write cannot be written."""
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "it is a folder; name a file in it")
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise ConfigError(f"{setting} {path}: cannot write there ({exc.strerror})") from None


@contextmanager
def hold_lock(path: Path) -> Iterator[bool]:
    """Yield True while this process holds the run lock, False when another run has it."""
    with open(open_private(path, os.O_RDWR, "SYNC_LOCK_FILE"), "r+b") as handle:
        try:
            # The kernel drops a flock when its holder dies, even by kill -9.
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            locked = False
        yield locked


def write_atomically(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a file so that a reader sees the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", errors="replace", newline="") as out:
            out.write(text)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def load_json_file(path: Path):
    """Return a JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        if path.exists():
            log.warning("%s is unreadable (%s); ignoring it", path, exc.__class__.__name__)
        return None


class Progress:
    """Show pages read on stderr when a person is watching; print nothing under cron."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.counts: dict = {}  # name -> (pages done, pages in all or None)
        self.lock = threading.Lock()

    def update(self, name: str, done: int, total: int | None = None) -> None:
        """Show `done` pages of `name` read; from any thread, and never going back."""
        if not self.enabled:
            return
        with self.lock:
            done = max(done, self.counts.get(name, (0, None))[0])
            self.counts[name] = (done, total)
            line = ", ".join(f"{k}: {d}/{t} pages" if t else f"{k}: {d} pages"
                             for k, (d, t) in self.counts.items())
            sys.stderr.write(f"\r{line} ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.counts:
            sys.stderr.write("\n")


# --- the pure core: barcodes and stock --------------------------------------------------------

def normalize_barcode(value) -> str | None:
    """Trim a barcode; pad a digits-only GTIN to 14 digits; None when there is none."""
    if type(value) is not str:  # noqa: E721 - exact types: bool is no barcode
        if type(value) is not int:  # noqa: E721
            return None
        value = str(value)
    if value.isdigit() and value.isascii():  # a clean GTIN, the common case
        return value.zfill(14)
    text = value.strip()
    if not text:
        return None
    if text.isdigit() and text.isascii():
        return text.zfill(14)
    return text


def to_quantity(value) -> int | None:
    """Read a stock figure (int, float or numeric string) as a whole number; None if it is
    unreadable or beyond any real count."""
    if type(value) is int:  # noqa: E721 - the common case first; bool is not a quantity
        return value if -MAX_COUNT <= value <= MAX_COUNT else None
    if isinstance(value, str) and len(value) < 40:
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, float) and -MAX_COUNT <= value <= MAX_COUNT:  # NaN fails both
        return math.floor(value)
    return None


BARCODE_KEYS = ("barcode", "value", "code")  # where an object in a list of barcodes holds one


def read_codes(value) -> Collection[str]:
    """Read one barcode field: text or a number, or a list of them or of objects with one of
    the BARCODE_KEYS."""
    if not isinstance(value, list):
        code = normalize_barcode(value)
        return (code,) if code else ()
    codes = set()
    for item in value:
        if isinstance(item, dict):
            item = next((item[k] for k in BARCODE_KEYS if item.get(k)), None)
        code = normalize_barcode(item)
        if code:
            codes.add(code)
    return codes


def parse_barcodes(record: dict) -> Collection[str]:
    """Collect a Kaktus variant's barcodes from the barcode fields: `barcode`, `barcodes`."""
    many = record.get("barcodes")
    if many is None:  # the common shape, one barcode string: the fast way
        return read_codes(record.get("barcode"))
    codes = set(read_codes(record.get("barcode")))
    if isinstance(many, list):
        codes.update(read_codes(many))
    return codes


def stock_entries(record: dict) -> list | None:
    """A Kaktus variant's stock entries: its `stock` list, or the variant itself when it has
    none (its figures on it, as the Kaktus wiki shows an item); None when `stock` is neither."""
    stock = record.get("stock")
    if stock is None:
        return [record]
    if isinstance(stock, dict):
        return [stock]
    return stock if isinstance(stock, list) else None


def choose_stock_rule(entries: list | None) -> StockRule:
    """KAK2C_STOCK_FIELD=auto for one variant: the first of AUTO_RULES whose fields every entry
    carries (not null). Written out for speed, as it runs for every variant; a test holds it to
    AUTO_RULES."""
    if not entries:
        return TOTAL
    available = reserved = True  # loops, not all(): this runs for every variant
    for entry in entries:
        if type(entry) is not dict:  # noqa: E721
            return TOTAL
        available = available and entry.get("stockAvailable") is not None
        reserved = reserved and entry.get("stockReserved") is not None \
            and entry.get("stockTotal") is not None
    return AVAILABLE if available else TOTAL_LESS_RESERVED if reserved else TOTAL


def parse_stock(record: dict, rule: StockRule | None) -> tuple:
    """Return (stock, the rule's name) of a Kaktus variant: its entries summed by `rule`
    (None: auto). The stock is None (unknown, never 0) when an entry lacks a named field or
    holds an unreadable figure, or the sum is beyond any real count; a negative sum is 0."""
    stock = record.get("stock")
    entries = stock if type(stock) is list else stock_entries(record)  # noqa: E721 - fast path
    rule = rule or choose_stock_rule(entries)
    if entries is None:
        return None, rule.name
    total = 0
    for entry in entries:
        if not isinstance(entry, dict):
            return None, rule.name
        for sign, field_name in rule.terms:
            quantity = to_quantity(entry.get(field_name))
            if quantity is None:
                return None, rule.name
            total += sign * quantity
    return (None if total > MAX_COUNT else max(total, 0)), rule.name


def kaktus_variants(product) -> list:
    """A Kaktus product's variants: its `variants` list, or itself (1 variant = 1 product)."""
    if not isinstance(product, dict):
        return []
    variants = product.get("variants")
    return variants if isinstance(variants, list) else [product]


def stock_entry_keys(variant: dict) -> set:
    """The keys seen on a Kaktus variant's stock entries (the variant's own when it has no
    stock list): what KAK2C_STOCK_FIELD may name."""
    entries = stock_entries(variant) or ()
    return {str(key) for entry in entries if isinstance(entry, dict) for key in entry}


# --- the pure core: reading answers -----------------------------------------------------------

def _kind_name(kind):
    return {list: "list", dict: "object"}.get(kind, kind.__name__)


def decode_json(body: bytes, where: str, kind: type, content_type: str | None = None,
                ask: str = ""):
    """Return a body's JSON if it is of the expected kind, else fail naming what is wrong and
    asking `ask` (is the address setting that of the API?)."""
    try:
        value = json.loads(body)  # bytes: no charset guessing on a big body
    except (ValueError, RecursionError) as exc:
        deep = isinstance(exc, RecursionError)  # hostile, not the address of something else
        nested = " (nested too deep)" if deep else ""
        seen = f" ({outside(content_type, 60)})" if content_type else ""
        hint = f"; {ask}" if ask and not deep else ""
        raise UpstreamError(f"{where}: the answer is not JSON{nested}{seen}{hint}") from None
    if not isinstance(value, kind):
        hint = f"; {ask}" if ask else ""
        raise UpstreamError(f"{where}: expected a JSON {_kind_name(kind)}, got "
                            f"{_kind_name(type(value))}{hint}")
    return value


def error_detail(body: bytes) -> str:
    """The errors an API answered with, short, an echoed secret hidden first (see outside)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    errors = value.get("errors", value) if isinstance(value, dict) else value
    try:
        text = json.dumps(errors, ensure_ascii=False)
    except (ValueError, RecursionError):
        return ""
    return f": {outside(text, echo=True)}"


class Variant(NamedTuple):
    id: int
    product_id: int
    barcode: str | None
    quantity: int | None
    title: str
    updated_at: str | None   # the product's, as read: tells a sale from our write not landed


def tuple_maker(kind: type) -> Callable:
    """Build `kind` tuples from plain ones at C speed (a NamedTuple's own __new__ is Python)."""
    return functools.partial(tuple.__new__, kind)


new_variant = tuple_maker(Variant)


def parse_insales_product(product, fields: tuple, other_barcodes: list) -> list | None:
    """Return a product's variants as Variant tuples, or None for a malformed product.

    `fields` names the quantity field, the barcode field and the other one (barcode or sku);
    each variant without a barcode but with the other field filled is added to
    `other_barcodes`.
    """
    if not isinstance(product, dict) or type(product.get("id")) is not int:  # noqa: E721
        return None
    variants = product.get("variants")
    if not isinstance(variants, list):
        return None
    quantity_field, barcode_field, other_field = fields
    title, updated_at = product.get("title"), product.get("updated_at")
    title = title if isinstance(title, str) else ""
    updated_at = updated_at if isinstance(updated_at, str) else None
    result = []
    for variant in variants:
        if not isinstance(variant, dict) or type(variant.get("id")) is not int:  # noqa: E721
            return None
        name = variant.get("title")
        barcode = normalize_barcode(variant.get(barcode_field))
        if barcode is None and normalize_barcode(variant.get(other_field)) is not None:
            other_barcodes.append(variant[other_field])
        result.append(new_variant((
            variant["id"], product["id"], barcode, to_quantity(variant.get(quantity_field)),
            f"{title} / {name}" if isinstance(name, str) and name and name != title else title,
            updated_at)))
    return result


@dataclass
class InSalesCatalogue:
    """InSales variants by id, with where the walk ended: the merged state of the shop."""

    variants: dict
    cursor: tuple
    full_walk_at: float
    skipped: int = 0
    products: int = 0
    # what this walk read of the other barcode field (sku or barcode) where the set one is empty
    other_barcodes: list = field(default_factory=list)
    variant_keys: tuple = ()  # the keys of a variant this walk read: the warehouses it carries
    revision: int = 0         # bumped by every change of its variants (see keep_state)
    by_product: dict = field(default_factory=dict)  # product id -> its variants, while merging


def merge_insales_page(catalogue: InSalesCatalogue, page: list, fields: tuple) -> list:
    """Merge a page of InSales products into the catalogue, in place: a product's variants
    replace what was known of it, and one in the trash leaves it. Return the ids (as text) of
    the malformed products skipped. `fields`: see parse_insales_product. A product read again
    as it was (an incremental walk looks at its last second twice) changes no revision."""
    if not catalogue.by_product and catalogue.variants:
        for variant in catalogue.variants.values():
            catalogue.by_product.setdefault(variant.product_id, []).append(variant)
    malformed = []
    for product in page:
        variants = parse_insales_product(product, fields, catalogue.other_barcodes)
        if variants is None:
            malformed.append(outside(product.get("id"), 40) if isinstance(product, dict) else "?")
            continue
        if variants and not catalogue.variant_keys:
            catalogue.variant_keys = tuple(map(str, product["variants"][0]))
        known = catalogue.by_product.pop(product["id"], None)
        for old in known or ():
            catalogue.variants.pop(old.id, None)
        if product.get("archived") is True:  # in the trash: never written, forgotten
            catalogue.revision += known is not None
            continue
        catalogue.revision += known != variants
        catalogue.by_product[product["id"]] = variants
        catalogue.variants.update((v.id, v) for v in variants)
    catalogue.skipped += len(malformed)
    catalogue.products = len(catalogue.by_product)
    return malformed


def last_anchor(page: list) -> tuple | None:
    """Return (position, (updated_at, id)) of a page's last product with both, or None."""
    for position in range(len(page) - 1, -1, -1):
        product = page[position]
        if isinstance(product, dict):
            updated_at, product_id = product.get("updated_at"), product.get("id")
            if isinstance(updated_at, str) and type(product_id) is int:  # noqa: E721
                return position, (updated_at, product_id)
    return None


def walk_from(cursor: tuple, now: float) -> tuple:
    """Where a walk for what changed starts, (updated_at, id): right after the last product
    read, or CURSOR_REWIND before it while that product changed less than CURSOR_RECENT ago:
    InSales times may have one-second resolution, and a change stamped in the second already
    read, to a product of a lower id, shows only after it. Once that second is long past, the
    walk needs no second look, and a quiet shop costs one read (the empty page)."""
    try:
        moment = datetime.fromisoformat(cursor[0].replace("Z", "+00:00"))
        if now - moment.timestamp() > CURSOR_RECENT:
            return cursor
        return (moment - CURSOR_REWIND).isoformat(timespec="milliseconds"), 0
    except (ValueError, OverflowError):
        return WALK_START, 0


# --- the pure core: the Kaktus index ----------------------------------------------------------

@dataclass
class KaktusIndex:
    """Kaktus quantity by barcode (None: unknown stock), the barcodes held twice, where the
    barcodes were read, and what the data warnings need."""

    quantities: dict = field(default_factory=dict)
    duplicates: set = field(default_factory=set)
    barcode_field: str = "barcode"   # the barcode fields, "id", or KAK2C_BARCODE_FIELD's name
    variants: int = 0
    with_barcode: int = 0
    unknown: int = 0
    skipped: int = 0
    stock_rules: Counter = field(default_factory=Counter)  # rule name -> variants read by it
    first_variant: dict | None = None   # for the warnings: the first without a barcode,
    first_unknown: dict | None = None   # the first with unknown stock: keys actually seen

    @property
    def stock_field(self) -> str | None:
        """The stock rule most variants were read by (the summary's kak2c_stock_field)."""
        return self.stock_rules.most_common(1)[0][0] if self.stock_rules else None

    def stock_rules_text(self) -> str:
        """`stockAvailable: 97, stockTotal: 3`: how many variants each rule read."""
        return ", ".join(f"{name}: {count}" for name, count in self.stock_rules.most_common())


def _read_field(name: str, variant: dict) -> Collection[str]:
    return read_codes(variant.get(name))


def index_kaktus(pages: Iterable[list], rule: StockRule | None,
                 barcode_field: str = "auto") -> KaktusIndex:
    """Index Kaktus variants by barcode, in both shapes: product->variants and one per product.

    With `auto`, the barcode fields; when not one variant of the whole catalogue has one, the
    variant ids (the original integration's account uses its barcodes as ids). Ids are only
    gathered until the first barcode shows, so an account with barcode fields never has its ids
    matched. Another name reads that field alone.
    """
    index = KaktusIndex()
    if barcode_field == "auto":
        read = parse_barcodes
    else:
        index.barcode_field = barcode_field
        read = functools.partial(_read_field, barcode_field)
    by_id: dict | None = {} if barcode_field == "auto" else None
    by_id_twice: set = set()
    variants = without_barcode = with_id = 0  # locals: the loop runs 100,000 times
    rules = []  # each variant's stock rule, counted at C speed once the loop is done
    for products in pages:
        for product in products:
            if not isinstance(product, dict):
                index.skipped += 1
                continue
            for variant in kaktus_variants(product):
                if not isinstance(variant, dict):
                    index.skipped += 1
                    continue
                variants += 1
                quantity, rule_name = parse_stock(variant, rule)
                rules.append(rule_name)
                if quantity is None:
                    index.unknown += 1
                    index.first_unknown = index.first_unknown or variant
                codes = read(variant)
                if codes:
                    by_id, quantities, duplicates = None, index.quantities, index.duplicates
                else:
                    without_barcode += 1
                    index.first_variant = index.first_variant or variant
                    if by_id is None:
                        continue
                    codes = read_codes(variant.get("id"))
                    quantities, duplicates = by_id, by_id_twice
                    with_id += bool(codes)
                for barcode in codes:
                    if barcode in quantities:  # it stays there until all pages are in
                        duplicates.add(barcode)
                    quantities[barcode] = quantity
    index.variants, index.with_barcode = variants, variants - without_barcode
    if by_id:  # not one barcode field anywhere: the ids are the barcodes
        index.quantities, index.duplicates, index.barcode_field = by_id, by_id_twice, "id"
        index.with_barcode = with_id
    index.stock_rules.update(rules)
    for barcode in index.duplicates:
        index.quantities.pop(barcode, None)
    return index


# --- the pure core: holds ---------------------------------------------------------------------

class Track(NamedTuple):
    """A matched variant as the last run that kept its state left it (see follow_holds)."""

    seen: int        # S: the InSales quantity it read (R once InSales confirmed our write)
    announced: int   # R: what it wrote or announced it would write there, or S
    stock: int       # the Kaktus stock it read
    holds: tuple     # ((units, seen at), ...), oldest first: sales Kaktus has not seen yet


def held_units(holds: Iterable) -> int:
    """How many units `holds` ((units, seen at), ...) keep back."""
    return sum(units for units, _ in holds)


class HoldEvent(NamedTuple):
    kind: str        # "sale", "caught up", "cancelled", "expired"
    units: int
    age: float = 0.0  # "caught up": how long the oldest hold it released had waited


def _release(holds: list, units: int, newest_first: bool) -> int:
    """Take up to `units` held units off `holds` (in place); return how many were released."""
    released = 0
    while holds and released < units:
        at = -1 if newest_first else 0
        held, seen_at = holds[at]
        take = min(held, units - released)
        released += take
        if take == held:
            holds.pop(at)
        else:
            holds[at] = (held - take, seen_at)
    return released


def follow_holds(track: Track | None, quantity: int, stock: int, moved: bool, now: float,
                 window: float) -> tuple:
    """Carry a variant's holds one run on; return (new holds, events).

    Q is `quantity`, S and R the track's; `moved`: the product's updated_at is not the one
    read with S. When in doubt a rule holds rather than releases: a unit shown too few costs a
    sale, a unit sold twice costs a customer.
    - A sale: Q below R, and Q not S, or Q = S while the product moved (our write landed and a
      customer bought back what it added). Q = S unmoved: our write has not landed; Q = R: it
      landed.
    - InSales rising by itself (Q above R, not S: a cancel, a return) releases the newest holds,
      less what Kaktus rose by too: a cancel both sides counted frees no other order's hold.
    - Kaktus falling (it has seen the orders) releases the oldest, after this run's sale is
      held; a hold expires `window` seconds after it was seen.
    """
    if track is None or window <= 0:
        return (), ()
    holds = [hold for hold in track.holds if now - hold[1] < window]
    events = []
    expired = held_units(track.holds) - held_units(holds)
    if expired:
        events.append(HoldEvent("expired", expired))
    seen, announced = track.seen, track.announced
    if quantity < announced and (quantity != seen or moved):
        holds.append((announced - quantity, now))
        events.append(HoldEvent("sale", announced - quantity))
    elif quantity > announced and quantity != seen:
        released = _release(holds, quantity - announced - max(0, stock - track.stock),
                            newest_first=True)
        if released:
            events.append(HoldEvent("cancelled", released))
    if stock < track.stock and holds:
        age = now - holds[0][1]
        released = _release(holds, track.stock - stock, newest_first=False)
        events.append(HoldEvent("caught up", released, age))
    return tuple(holds), tuple(events)


def has_moved(variant: Variant, track: Track | None, read_at: Mapping) -> bool:
    """Whether the variant's product changed since the last run read it (T' is not T), where
    that tells a sale from our own write not landed yet: the last run wrote there, unconfirmed.
    `read_at`: by variant id, the updated_at its product was read with."""
    return track is not None and track.announced != track.seen \
        and read_at.get(variant.id) != variant.updated_at


def settle_tracks(tracks: dict, refused: Collection[int], confirmed: Collection[int]) -> dict:
    """The tracks after the writes that announced them (R) were sent: a write InSales refused,
    or never sent, was not made (R = S again); one it confirmed with "ok" shows in InSales now
    (S = R); one queued, or of a call that failed for good, stays announced, and the next run
    tells by the quantity and has_moved()."""
    tracks = dict(tracks)
    for variant_id in tracks.keys() & refused:
        tracks[variant_id] = tracks[variant_id]._replace(announced=tracks[variant_id].seen)
    for variant_id in tracks.keys() & confirmed:
        tracks[variant_id] = tracks[variant_id]._replace(seen=tracks[variant_id].announced)
    return tracks


# --- the pure core: one decision per barcode, the plan, the guard -----------------------------

class Publishing(NamedTuple):
    """What turns Kaktus' stock into the figure to publish."""

    buffer: int = 0          # SYNC_STOCK_BUFFER
    hold_window: float = 0   # SYNC_HOLD_MINUTES, in seconds; 0: no holds


AS_IS = Publishing()  # Kaktus' figure as it is


UPDATE, SAME = "update", "same"  # the tallies of the barcodes decided on their figures


class Decision(NamedTuple):
    """One barcode's fate: what to do, why, the figure to publish, and what to keep."""

    tally: str                 # what the summary counts it as
    action: str                # "update", "unchanged" or "skip"
    reason: str                # the report's words
    publish: int | None = None
    track: Track | None = None   # kept for the next run: matched, known stock, readable quantity
    events: tuple = ()
    matched: bool = True       # unique on both sides (the summary's `matched`)


DUPLICATE_IN_INSALES = Decision("duplicate_insales", "skip", "duplicate in InSales",
                                matched=False)
DUPLICATE_IN_KAKTUS = Decision("duplicate_kak2c", "skip", "duplicate in Kaktus", matched=False)
NOT_IN_KAKTUS = Decision("not_in_kak2c", "skip", "not in Kaktus", matched=False)
NOT_IN_INSALES = Decision("not_in_insales", "skip", "not in InSales", matched=False)
UNKNOWN_STOCK = Decision("unknown", "skip", "unknown stock")
MISSING = object()


def hold_text(holds: tuple, publishing: Publishing) -> str:
    """'2 until 13:04': the units held and when the last of them expires, local time."""
    until = datetime.fromtimestamp(max(at for _, at in holds) + publishing.hold_window)
    return f"{held_units(holds)} until {until:%H:%M}"


def decide(quantity: int | None, stock: int | None, track: Track | None, moved: bool,
           now: float, publishing: Publishing) -> Decision:
    """Decide a barcode that one InSales variant and one Kaktus variant hold, from all it
    depends on: the InSales `quantity`, the Kaktus `stock` (None: unknown), the last run's
    `track`, whether the product `moved` (see has_moved); `now` and `publishing` are the
    run's.

    Unknown stock is skipped; otherwise publish max(0, Kaktus stock - held - buffer), an update
    where InSales shows another figure.
    """
    if stock is None:
        return UNKNOWN_STOCK
    if quantity is None:  # unreadable in InSales: Kaktus' figure, nothing to follow
        publish = max(0, stock - publishing.buffer)
        return Decision(UPDATE, "update", "stock differs", publish)
    holds, events = follow_holds(track, quantity, stock, moved, now, publishing.hold_window)
    publish = max(0, stock - held_units(holds) - publishing.buffer)
    tally, action = (SAME, "unchanged") if publish == quantity else (UPDATE, "update")
    if holds:
        reason = f"held: sale in flight ({hold_text(holds, publishing)})"
    else:
        reason = "same stock" if tally == SAME else "stock differs"
    announced = publish if tally == UPDATE else quantity
    return Decision(tally, action, reason, publish, Track(quantity, announced, stock, holds),
                    events)


class PlanInputs(NamedTuple):
    """What a plan is made from: both catalogues, what the last run left, the time, and how to
    publish. plan_updates() and report_rows() take the same, so they cannot disagree."""

    variants: Collection[Variant]   # InSales', as walked (and merged)
    kaktus: KaktusIndex
    previous: Mapping = {}          # the last run's Track by variant id
    now: float = 0.0
    publishing: Publishing = AS_IS
    read_at: Mapping = {}           # by variant id, the updated_at its product was read with,
                                    # where the last run announced a write (see has_moved)


def decide_unique(inputs: PlanInputs, unique: dict) -> Iterator[tuple]:
    """Yield (Variant, Decision) for every barcode one InSales variant holds (`unique`), in the
    catalogue's own order (walking a set of barcodes instead jumps around memory, which at
    100,000 variants costs more than the whole loop).

    A barcode Kaktus holds twice or not at all is skipped; the others are decide()d, each
    answer looked up by decide()'s own inputs: a catalogue has few distinct ones.
    """
    quantities, duplicates = inputs.kaktus.quantities, inputs.kaktus.duplicates
    previous, read_at, now, publishing = (inputs.previous, inputs.read_at, inputs.now,
                                          inputs.publishing)
    table: dict = {}
    for variant in unique.values():
        stock = quantities.get(variant.barcode, MISSING)
        if stock is MISSING:
            yield variant, DUPLICATE_IN_KAKTUS if variant.barcode in duplicates else NOT_IN_KAKTUS
            continue
        track = previous.get(variant.id)
        key = (variant.quantity, stock, track, has_moved(variant, track, read_at))
        decision = table.get(key)
        if decision is None:
            decision = table[key] = decide(*key, now, publishing)
        yield variant, decision


@dataclass
class Plan:
    """What to write, the summary's counts, and what the warnings look at."""

    updates: list       # (Variant, Decision) with action "update", by variant id
    counts: dict
    stocked: int        # matched variants that have stock in InSales now
    zeroed: int         # of those, how many the plan sets to 0
    tracks: dict        # variant id -> Track, for the next run
    held: list          # (Variant, Decision) of the variants with a hold after this run
    events: list        # (Variant, HoldEvent), for the log
    unique: dict        # barcode -> the one InSales variant holding it
    shared: dict        # barcode -> the InSales variants holding it together
    kaktus: KaktusIndex


def split_duplicates(variants: Collection[Variant]) -> tuple:
    """Return ({barcode: its one variant}, {barcode: the variants sharing it}, barcoded count)."""
    coded = [variant for variant in variants if variant.barcode is not None]
    unique = {variant.barcode: variant for variant in coded}
    shared: dict = {}
    if len(unique) < len(coded):  # some barcode is held twice: set all its holders aside
        held = Counter(variant.barcode for variant in coded)
        for variant in coded:
            if held[variant.barcode] > 1:
                shared.setdefault(variant.barcode, []).append(variant)
        for barcode in shared:
            del unique[barcode]
    return unique, shared, len(coded)


def plan_updates(inputs: PlanInputs) -> Plan:
    """Join both sides by barcode, decide every barcode, and plan the writes."""
    variants, kaktus = inputs.variants, inputs.kaktus
    unique, shared, coded = split_duplicates(variants)
    tally: Counter = Counter()
    updates, tracks, held, events, matched, stocked, zeroed = [], {}, [], [], 0, 0, 0
    for variant, decision in decide_unique(inputs, unique):
        tally[decision.tally] += 1
        if decision.track is not None:
            tracks[variant.id] = decision.track
            if decision.track.holds:
                held.append((variant, decision))
        if decision.events:
            events.extend((variant, event) for event in decision.events)
        if decision.matched:
            has_stock = variant.quantity is not None and variant.quantity > 0
            matched += 1
            stocked += has_stock
            if decision.action == "update":
                updates.append((variant, decision))
                zeroed += has_stock and decision.publish == 0
    updates.sort(key=lambda update: update[0].id)
    counts = {
        "insales_variants": len(variants),
        "insales_with_barcode": coded,
        "insales_duplicate_barcodes": len(shared),
        "kak2c_variants": kaktus.variants,
        "kak2c_duplicate_barcodes": len(kaktus.duplicates),
        "matched": matched,
        "changed": tally[UPDATE],
        "unmatched_insales": tally[NOT_IN_KAKTUS.tally],
        "unmatched_kak2c": len(kaktus.quantities.keys() - unique.keys() - shared.keys()),
        "unknown_stock": tally[UNKNOWN_STOCK.tally],
        "held_variants": len(held),
        "held_units": sum(held_units(d.track.holds) for _, d in held),
        "expired_units": sum(e.units for _, e in events if e.kind == "expired"),
        "caught_up_after_s": max((round(e.age, 1) for _, e in events if e.kind == "caught up"),
                                 default=None),
        "kak2c_barcode_field": kaktus.barcode_field,
        "kak2c_stock_field": kaktus.stock_field,
    }
    return Plan(updates, counts, stocked, zeroed, tracks, held, events, unique, shared, kaktus)


def report_rows(inputs: PlanInputs) -> Iterator[tuple]:
    """Yield (barcode, Variant or None, Kaktus stock, Decision) for every barcode seen, from the
    same inputs and by the same decide_unique() as plan_updates(): built only when a report is
    asked."""
    unique, shared, _ = split_duplicates(inputs.variants)
    quantities, duplicates = inputs.kaktus.quantities, inputs.kaktus.duplicates
    for barcode, held in shared.items():
        for variant in held:
            yield barcode, variant, quantities.get(barcode), DUPLICATE_IN_INSALES
    for variant, decision in decide_unique(inputs, unique):
        yield variant.barcode, variant, quantities.get(variant.barcode), decision
    for barcode, quantity in quantities.items():
        if barcode not in unique and barcode not in shared:
            yield barcode, None, quantity, NOT_IN_INSALES
    for barcode in duplicates - unique.keys() - shared.keys():
        yield barcode, None, None, DUPLICATE_IN_KAKTUS


def check_guard(plan: Plan, share: float) -> str | None:
    """Say why the plan must not be written (a Kaktus glitch must never empty a shop), or None."""
    if plan.counts["kak2c_variants"] == 0 and plan.counts["insales_with_barcode"] > 0:
        return (f"Kaktus answered no products at all while InSales has "
                f"{plan.counts['insales_with_barcode']} variants with barcodes")
    if plan.zeroed >= GUARD_MIN_ZEROED and plan.zeroed > share * plan.stocked:
        return (f"the plan would set {plan.zeroed} of {plan.stocked} stocked variants to 0, more "
                f"than SYNC_GUARD_ZERO_SHARE={share:g}; run with --force if Kaktus is right")
    return None


KAKTUS_SHAPES = (f"barcode (text), barcodes (a list of texts, or of objects with "
                 f"{', '.join(BARCODE_KEYS)}), and the variant id when no variant has either")


def variant_keys(variant: Mapping | None) -> str:
    return ", ".join(sorted(map(str, variant or {}))) or "-"


def kaktus_barcodes_missing(kaktus: KaktusIndex, settings: Settings, where: str = "") -> str:
    """No Kaktus variant (`where`: of page 0) carries a barcode where KAK2C_BARCODE_FIELD reads
    it: say so, with the keys seen on one."""
    return (f"none of the {kaktus.variants} Kaktus variants{where} carries a barcode where "
            f"KAK2C_BARCODE_FIELD={settings.kaktus_barcode_field} reads it; keys seen on a "
            f"variant: {variant_keys(kaktus.first_variant)}; understood with auto: "
            f"{KAKTUS_SHAPES}; or set the one field that holds it")


def insales_barcodes_missing(variants: int, other_barcodes: list, settings: Settings,
                             where: str = "") -> str:
    """No InSales variant (`where`: of the first page) has a barcode in INSALES_BARCODE_FIELD:
    say so, and suggest the other field when it is filled on most (`other_barcodes`: its
    values)."""
    field, other = settings.insales_fields[1:]
    hint = ""
    if len(other_barcodes) * 2 > variants:
        hint = (f"; {other} is filled on {len(other_barcodes)} of them (e.g. "
                f"{outside(other_barcodes[0], 40)!r}): if it holds the barcodes, set "
                f"INSALES_BARCODE_FIELD={other}")
    return (f"none of the {variants} InSales variants{where} has a barcode in "
            f"INSALES_BARCODE_FIELD={field}{hint}")


def stock_unknown(kaktus: KaktusIndex, settings: Settings, which: str) -> str:
    """`which` Kaktus variants have unknown stock: name KAK2C_STOCK_FIELD and the keys seen
    where it reads."""
    unknown = kaktus.first_unknown or {}
    where = ("the variant (it has no stock list)" if stock_entries(unknown) == [unknown]
             else "a stock entry")
    stock_keys = ", ".join(sorted(stock_entry_keys(unknown))) or "-"
    read = "" if settings.stock_rule else f" ({AUTO_STOCK_TEXT})"
    return (f"{which} have unknown stock; check KAK2C_STOCK_FIELD={settings.stock_setting!r}"
            f"{read} against the keys seen on {where}: {stock_keys}")


def data_warnings(plan: Plan, settings: Settings, other_barcodes: list) -> dict:
    """Say what in the data looks unlike a working setup, naming what to look at: {what it is
    about: the warning}.

    `other_barcodes`: the other InSales barcode field's values, where the set one was empty.
    """
    kaktus, counts, warnings = plan.kaktus, plan.counts, {}
    if kaktus.variants and not kaktus.with_barcode:
        warnings["kaktus barcodes"] = kaktus_barcodes_missing(kaktus, settings)
    if counts["insales_variants"] and not counts["insales_with_barcode"]:
        warnings["insales barcodes"] = insales_barcodes_missing(counts["insales_variants"],
                                                                other_barcodes, settings)
    if kaktus.unknown * 2 > kaktus.variants:
        warnings["unknown stock"] = stock_unknown(
            kaktus, settings, f"{kaktus.unknown} of {kaktus.variants} Kaktus variants")
    if counts["matched"] == 0 and plan.unique and kaktus.quantities and not (
            (kaktus.duplicates | plan.shared.keys())  # held twice: a duplicate, not a mismatch
            & (plan.unique.keys() | kaktus.quantities.keys())):
        hint = ""
        if kaktus.barcode_field == "id" and settings.kaktus_barcode_field == "auto":
            hint = (f"; no Kaktus variant has a barcode field, so their ids were taken as "
                    f"barcodes: if the barcodes sit elsewhere, set KAK2C_BARCODE_FIELD to that "
                    f"field (keys seen on a variant: {variant_keys(kaktus.first_variant)})")
        warnings["no match"] = (
            f"not one barcode matches: InSales has e.g. {outside(next(iter(plan.unique)), 40)!r},"
            f" Kaktus e.g. {outside(next(iter(kaktus.quantities)), 40)!r} (both normalised)"
            f"{hint}")
    expired = [(variant, event) for variant, event in plan.events if event.kind == "expired"]
    if expired:
        warnings["expired holds"] = (
            f"{counts['expired_units']} held units expired in this run before Kaktus' stock fell "
            f"(e.g. barcode {expired[0][0].barcode!r}), so they are on sale again: this Kaktus "
            f"may count orders later than SYNC_HOLD_MINUTES={settings.hold_minutes:g} (at "
            f"shipment rather than at reservation?; its stock was read as "
            f"{kaktus.stock_field}); set SYNC_HOLD_MINUTES longer, or KAK2C_STOCK_FIELD to "
            "the figure that falls when Kaktus reserves an order")
    sharing = sum(map(len, plan.shared.values()))
    if sharing * 10 > counts["insales_with_barcode"]:
        warnings["shared barcodes"] = (
            f"{sharing} of {counts['insales_with_barcode']} InSales variants share "
            "their barcode with another and are never synced; --report PATH lists them")
    return warnings


class Refusal(NamedTuple):
    """Why the guard refuses a plan, and whether --force may override it."""

    reason: str
    forceable: bool = True  # the data looks wrong, but Kaktus may be right: --force writes


def warehouses_carried(keys: Iterable[str]) -> str:
    """The warehouse indexes an InSales variant's keys carry: `0, 1`."""
    found = sorted(int(key[21:]) for key in keys
                   if key.startswith("quantity_at_warehouse") and key[21:].isdigit())
    return ", ".join(map(str, found)) or "none"


def refuse_setup(plan: Plan, settings: Settings, catalogue: InSalesCatalogue,
                 warnings: dict) -> Refusal | None:
    """Say why this run can sync nothing right, naming the setting to look at, or None: no
    InSales quantity readable where INSALES_WAREHOUSE points, not one barcode matched while
    both sides have variants, or the stock of every matched variant unknown. --force cannot
    override it: there is nothing right to write. The warnings it says again are taken out of
    `warnings`, so that each is said once."""
    counts, kaktus = plan.counts, plan.kaktus
    if settings.warehouse is not None and catalogue.variants and not any(
            variant.quantity is not None for variant in catalogue.variants.values()):
        return Refusal(f"INSALES_WAREHOUSE={settings.warehouse}: no InSales variant carries "
                       f"{settings.quantity_field}; the variants carry warehouses "
                       f"{warehouses_carried(catalogue.variant_keys)} (--check lists them "
                       "by title)", forceable=False)
    if counts["insales_variants"] and kaktus.variants and not counts["matched"]:
        found = [warnings.pop(topic) for topic in ("insales barcodes", "kaktus barcodes",
                                                   "no match") if topic in warnings]
        duplicates = (f"the barcodes both sides hold are each held twice on one side "
                      f"({counts['insales_duplicate_barcodes']} in InSales, "
                      f"{counts['kak2c_duplicate_barcodes']} in Kaktus; --report lists them)")
        return Refusal("nothing can be synced: " + ("; ".join(found) or duplicates)
                       + "; check INSALES_BARCODE_FIELD and KAK2C_BARCODE_FIELD",
                       forceable=False)
    if counts["matched"] and counts["unknown_stock"] == counts["matched"]:
        warnings.pop("unknown stock", None)
        return Refusal(stock_unknown(kaktus, settings,
                                     f"all {counts['matched']} matched Kaktus variants"),
                       forceable=False)
    return None


# --- HTTP -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a request, and the sleep that waits for it, injected so
    that tests record the waits (a watch waits between its syncs through its own wait())."""

    attempts: int = 5           # per request, for transport errors, 5xx and rate limits
    backoff: float = 0.5        # seconds, doubled per attempt: 0.5, 1, 2, 4
    max_wait: float = 120.0     # SYNC_MAX_WAIT: longest Retry-After, and all pacing of a sync
    sleep: Callable[[float], None] = time.sleep

    def delay(self, attempt: int) -> float:
        return self.backoff * 2 ** (attempt - 1)


class Answer(NamedTuple):
    """An HTTP answer, its body read whole."""

    status: int
    headers: Mapping
    body: bytes


MAX_ANSWER = 32 * 2**20   # bytes: far above a real page (250 InSales products: about 1 MB)
BODY_CHUNK = 2**20        # read a body in large reads: a 10 KB trip through urllib3 each costs
PING_DEADLINE = 5.0       # seconds a health-check ping may take, its answer included
_thread = threading.local()  # .deadline: when the request this thread is sending must be done


class AnswerTooBig(Exception):
    """An answer that runs past the size any real one has."""


class _DeadlineReader(io.RawIOBase):
    """The reading side of a connection, giving up at the deadline of the request its thread is
    sending: urllib3's timeouts bound each read, so an answer that drips a byte a second, in its
    headers or its body, would otherwise never end."""

    def __init__(self, sock):
        # The socket's own reader: it keeps the socket open while an answer is read, as
        # http.client counts on when it closes the connection of a `Connection: close` answer.
        self.sock, self.reader = sock, sock.makefile("rb", buffering=0)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        deadline = getattr(_thread, "deadline", None)
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("the request's deadline passed")
            self.sock.settimeout(left)
        return self.reader.readinto(buffer)

    def close(self) -> None:
        self.reader.close()
        super().close()


class _DeadlineSocket:
    """A connected socket whose answers are read through a _DeadlineReader; the rest is the
    socket's own."""

    def __init__(self, sock):
        self._sock = sock

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def makefile(self, *args, **kwargs):  # http.client reads every answer through this
        return io.BufferedReader(_DeadlineReader(self._sock))


def _deadlined(connection: type) -> type:
    """urllib3's `connection` class, reading its answers within each request's deadline."""
    class Connection(connection):
        def connect(self):
            super().connect()
            self.sock = _DeadlineSocket(self.sock)
    return Connection


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _deadlined(urllib3.connection.HTTPConnection)


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _deadlined(urllib3.connection.HTTPSConnection)


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter, with connections that keep each request's deadline (see send)."""

    POOLS = {"http": _HTTPPool, "https": _HTTPSPool}

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self.POOLS

    def proxy_manager_for(self, proxy, **kwargs):
        manager = super().proxy_manager_for(proxy, **kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS brings pool classes of its own
            manager.pool_classes_by_scheme = self.POOLS
        return manager


def make_session(base_url: str, headers: Mapping | None = None) -> requests.Session:
    """A session with our User-Agent, deadlined connections, and the environment's proxy and CA
    settings, read once."""
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    session.headers.update(headers or {})
    for scheme in ("http://", "https://"):
        session.mount(scheme, _Adapter())
    # HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE…: read once for this API rather than again on
    # each of its hundreds of requests.
    found = session.merge_environment_settings(base_url, {}, None, None, None)
    session.proxies, session.verify = found["proxies"], found["verify"]
    session.trust_env = False
    return session


def read_body(response: requests.Response, most: int) -> bytes:
    """Read a body whole, in large reads (requests' .content takes 10 KB at a time, each a trip
    through urllib3: on a big catalogue a good share of the run's CPU), and no more than `most`
    bytes of it."""
    with response:
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > most:
            raise AnswerTooBig
        chunks, size = [], 0
        for chunk in response.iter_content(BODY_CHUNK):
            size += len(chunk)
            if size > most:
                raise AnswerTooBig
            chunks.append(chunk)
        return b"".join(chunks)


def send(session: requests.Session, method: str, url: str, seconds: float,
         most: int = MAX_ANSWER, **kwargs) -> Answer:
    """Send one request and read its whole answer within `seconds` of wall-clock time and `most`
    bytes; a redirect is never followed (it is the answer)."""
    _thread.deadline = time.monotonic() + seconds
    try:
        response = session.request(method, url, timeout=(min(10.0, seconds), seconds),
                                   stream=True, allow_redirects=False, **kwargs)
        return Answer(response.status_code, response.headers, read_body(response, most))
    finally:
        _thread.deadline = None


def causes(exc: BaseException) -> Iterator[BaseException]:
    """An exception and what it wraps: requests wraps urllib3's, which wraps the socket's."""
    seen: set = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((arg for arg in exc.args if isinstance(arg, BaseException)), None)
        exc = inner or exc.__cause__ or exc.__context__


def transport_problem(exc: BaseException, url: str, seconds: float, took: float,
                      limit: str = "SYNC_TIMEOUT") -> str:
    """Say in words why a request got no answer: refused, not resolved, timed out (`seconds`,
    as `limit` sets them), a TLS certificate not trusted."""
    where = urlsplit(url)
    host = f"{where.hostname}:{where.port or (443 if where.scheme == 'https' else 80)}"
    chain = list(causes(exc))
    if any(isinstance(e, (ssl.SSLCertVerificationError, requests.exceptions.SSLError))
           for e in chain):
        return (f"the TLS certificate of {host} is not trusted (a private CA? set "
                "REQUESTS_CA_BUNDLE to its file)")
    if any(isinstance(e, (socket.gaierror, urllib3.exceptions.NameResolutionError))
           for e in chain):
        return f"the name {where.hostname} is not resolved"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return f"{host} refused the connection"
    if took >= seconds * 0.95 or any(isinstance(e, (socket.timeout, requests.Timeout))
                                     for e in chain):
        return f"{host} gave no whole answer within {seconds:g} s ({limit})"
    return f"{host}: {exc.__class__.__name__} (the connection failed)"


USAGE = re.compile(r"\s*(\d{1,9})\s*/\s*(\d{1,9})\s*")


def parse_usage(header: str | None) -> tuple | None:
    """Read `API-Usage-Limit: used/limit`; None unless it is that with a sane limit."""
    found = USAGE.fullmatch(header or "")
    if not found:
        return None
    used, limit = int(found[1]), int(found[2])
    return (used, limit) if 10 <= limit <= 1_000_000 and used <= limit else None


def retry_after(headers: Mapping, default: float, now: float) -> float:
    """Read Retry-After as seconds or an HTTP date (from `now`); fall back to the backoff."""
    value = headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return default


class Service(NamedTuple):
    """What the failure lines say of one API: its name, the setting of its address, what that
    address looks like, and what to change when it refuses us (by HTTP status)."""

    name: str
    setting: str
    address: str
    refused: dict

    def ask(self, url: str | None = None) -> str:
        return f"is {self.setting}{'=' + url if url else ''} {self.address}?"


KAKTUS_LOGIN_FIX = "check KAK2C_CREDENTIALS_FILE or KAK2C_LOGIN/KAK2C_PASSWORD (and KAK2C_DOMAIN)"
INSALES = Service("InSales", "INSALES_URL", "the shop's address (https://myshop.myinsales.ru)", {
    401: "check INSALES_API_KEY and INSALES_API_PASSWORD (the app's identifier and password)",
    403: "the app lacks an access right: in the shop's admin, give it access to products (and, "
         "for --check, to warehouses)"})
KAKTUS = Service("Kaktus", "KAK2C_URL", "the Kaktus API's address (https://app.kak2c.ru)", {
    401: KAKTUS_LOGIN_FIX,
    403: "check KAK2C_DOMAIN (an account with several shops needs it) and the account's rights"})


class Api:
    """One upstream API: its session, timeout, request count, retry policy and usage pacing."""

    def __init__(self, service: Service, base_url: str, timeout: float, policy: RetryPolicy,
                 clock: Callable[[], float], auth=None, headers: Mapping | None = None):
        self.service = service
        self.name, self.setting = service.name, service.setting  # for the messages
        self.base_url = base_url
        self.timeout = timeout            # the most one request may take, its answer included
        self.policy = policy
        self.session = make_session(base_url, headers)
        self.session.auth = auth
        self.requests = 0                 # sent in this sync
        self.usage: float | None = None   # the last API-Usage-Limit seen, used/limit
        self.limit: int | None = None     # and its limit
        self.paced = 0.0                  # seconds waited for the usage limit in this sync
        self.clock = clock                # the job's: when requests went, for a watch's pace
        self.sent: deque = deque()        # when the requests of the last RATE_WINDOW were sent
        self._count = threading.Lock()

    def start_sync(self) -> None:
        """Count a new sync's requests and pacing afresh (a watch runs many)."""
        self.requests, self.paced = 0, 0.0

    def sent_within(self, window: float) -> list:
        """When the requests of the last `window` seconds were sent, oldest first."""
        since = self.clock() - window
        with self._count:
            return [at for at in self.sent if at > since]

    def request(self, method: str, path: str, give_back: Collection[int] = (),
                **kwargs) -> Answer:
        """Send one call; retry transport errors, 5xx and rate limits; return any other answer,
        and those of the statuses in `give_back`, which the caller handles itself."""
        where = f"{self.name} {method} {path}"
        policy = self.policy
        for attempt in range(1, policy.attempts + 1):
            with self._count:
                self.requests += 1
                now = self.clock()
                self.sent.append(now)
                while self.sent[0] <= now - RATE_WINDOW:  # the longest window any pace looks at
                    self.sent.popleft()
            started = time.monotonic()
            try:
                answer = send(self.session, method, self.base_url + path, self.timeout, **kwargs)
            except AnswerTooBig:
                raise UpstreamError(f"{where}: the answer runs past {MAX_ANSWER // 2**20} MiB, "
                                    f"more than any real one; {self.is_it_the_api()}") from None
            except requests.RequestException as exc:
                problem = transport_problem(exc, self.base_url, self.timeout,
                                            time.monotonic() - started)
                wait = policy.delay(attempt)
            else:
                log.debug("%s %s: HTTP %s", where, kwargs.get("params") or "", answer.status)
                if 300 <= answer.status < 400:
                    raise UpstreamError(self.redirected(where, answer))
                problem, wait = (None, 0) if answer.status in give_back else \
                    self.classify(answer, where, attempt)
                if problem is None:
                    self.pace(answer)
                    return answer
            if attempt < policy.attempts:
                log.warning("%s: %s; retrying in %.1f s", where, problem, wait)
                policy.sleep(wait)
        raise UpstreamError(f"{where}: {problem}, {policy.attempts} attempts; giving up "
                            f"(check {self.setting}={self.base_url})")

    def is_it_the_api(self) -> str:
        return self.service.ask(self.base_url)

    def expect_ok(self, answer: Answer, where: str) -> None:
        """Fail on any answer but 200, naming what to change where the status tells it."""
        if answer.status == 200:
            return
        detail = error_detail(answer.body)
        if answer.status in self.service.refused:
            raise CredentialsRejected(f"{where}: HTTP {answer.status}{detail}; "
                                      f"{self.service.refused[answer.status]}")
        if answer.status == 404:
            raise UpstreamError(f"{where}: HTTP 404, no such API path; {self.is_it_the_api()}")
        raise UpstreamError(f"{where}: HTTP {answer.status}{detail}")

    def parse_json(self, answer: Answer, where: str, kind: type):
        """Return the JSON body of a 200 answer if it is of the expected kind, else fail
        clearly."""
        self.expect_ok(answer, where)
        return decode_json(answer.body, where, kind,
                           answer.headers.get("Content-Type", "no Content-Type"),
                           self.is_it_the_api())

    def redirected(self, where: str, answer: Answer) -> str:
        """Say where a redirect pointed, and what to set: calls never follow one (a login
        posted to wherever a redirect says would take the password along)."""
        location = outside(answer.headers.get("Location", "(no Location)"), echo=True)
        secure = "https://" + self.base_url.removeprefix("http://")
        fix = (f"set {self.setting} to {secure}" if self.base_url.startswith("http://")
               and location.startswith(secure) else self.is_it_the_api())
        return f"{where}: HTTP {answer.status}, a redirect to {location}, never followed; {fix}"

    def classify(self, answer: Answer, where: str, attempt: int) -> tuple:
        """Say what is wrong with an answer worth retrying, and how long to wait; (None, 0) if
        the answer is final."""
        if answer.status in (429, 503):  # InSales said 503 for its rate limit before 2023
            wait = retry_after(answer.headers, self.policy.delay(attempt), self.clock())
            if wait > self.policy.max_wait:
                raise UpstreamError(f"{where}: rate limited for {wait:.0f} s, longer than "
                                    f"SYNC_MAX_WAIT={self.policy.max_wait:g}; giving up")
            return f"HTTP {answer.status} (rate limit)", wait
        if answer.status >= 500:
            return f"HTTP {answer.status}", self.policy.delay(attempt)
        return None, 0

    def pace(self, answer: Answer) -> None:
        """Slow down when API-Usage-Limit says the budget is nearly spent, before a 429; never
        for longer than SYNC_MAX_WAIT in a whole run."""
        usage = parse_usage(answer.headers.get("API-Usage-Limit"))
        if usage is None:
            return
        used, limit = usage
        self.usage, self.limit = used / limit, limit
        if limit - used > max(5, limit // 50):
            return
        wait = RATE_WINDOW / limit
        if self.paced + wait > self.policy.max_wait:
            return  # the 429s, if they come, are waited out one by one
        log.debug("%s: API-Usage-Limit %s/%s, slowing down", self.name, used, limit)
        self.paced += wait
        self.policy.sleep(wait)


def make_apis(settings: Settings, policy: RetryPolicy, clock: Callable[[], float]) -> tuple:
    """The InSales API (Basic auth, never in the URL) and the Kaktus API (bearer, per call)."""
    domain = {"Domain": settings.kaktus_domain} if settings.kaktus_domain else {}
    return (Api(INSALES, settings.insales_url, settings.timeout, policy, clock,
                auth=(settings.insales_key, settings.insales_password)),
            Api(KAKTUS, settings.kaktus_url, settings.timeout, policy, clock, headers=domain))


# --- Kaktus token -----------------------------------------------------------------------------

def token_expiry(token: str, expires_in, now: float) -> float:
    """Take the JWT's exp claim as the truth; expires_in, then 4 hours, as fallbacks."""
    try:
        payload = token.split(".")[1]
        exp = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"]
        if isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp < 1e11:
            return float(exp)
    except (IndexError, ValueError, KeyError, TypeError, RecursionError):
        pass
    if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) \
            and 0 < expires_in < 1e9:
        return now + expires_in
    return now + TOKEN_TTL


def is_bearer_token(value) -> bool:
    """A token fit for the Authorization header: visible ASCII, of a sane length."""
    return isinstance(value, str) and len(value) <= 8192 and bool(VISIBLE_ASCII.fullmatch(value))


def token_forms(token: str) -> tuple:
    """A token and its long parts: an echo cut short by the server still hides its signature."""
    return (token, *(part for part in token.split(".") if len(part) >= 16))


def is_token_refused(answer: Answer) -> bool:
    """Tell an expired or refused token; its answer may come as HTTP 401 or as 200."""
    if answer.status == 401:
        return True
    if len(answer.body) > 4096 or b"401" not in answer.body:
        return False  # a catalogue page, not the short error body: don't parse it twice
    try:
        body = json.loads(answer.body)
    except (ValueError, RecursionError):
        return False
    errors = body.get("errors") if isinstance(body, dict) else None
    return isinstance(errors, list) and any(
        isinstance(e, dict) and str(e.get("code")) == "401" for e in errors)


class KaktusToken:
    """The cached JWT: log in when it is missing, near its exp, or refused."""

    def __init__(self, api: Api, credentials: bytes, cache: Path,
                 clock: Callable[[], float] = time.time):
        self.api = api
        self.clock = clock
        self.credentials = credentials
        self.cache = cache
        self.account = hashlib.sha256(api.base_url.encode() + b"\0" + credentials).hexdigest()
        self.value: str | None = None
        self.renew_at = 0.0  # shortly before the token's exp
        self.lock = threading.Lock()

    def current(self) -> str:
        with self.lock:
            if self.value is None:
                self._load_cache()
            if self.value is None or self.renew_at <= self.clock():
                self._log_in()
            return self.value

    def renew(self, refused: str) -> None:
        """Log in again, unless another thread already replaced the refused token."""
        with self.lock:
            if refused == self.value:
                log.info("Kaktus refused the token (expired?); logging in again")
                self._log_in()

    def _load_cache(self):
        cached = load_json_file(self.cache)
        if isinstance(cached, dict) and cached.get("account") == self.account:
            token, renew_at = cached.get("access_token"), cached.get("renew_at")
            if is_bearer_token(token) and isinstance(renew_at, (int, float)):
                self.value, self.renew_at = token, float(renew_at)
                SECRETS.add(*token_forms(token))

    def _log_in(self):
        answer = self.api.request("POST", "/api/lite/auth", data=self.credentials,
                                  headers={"Content-Type": "application/json"})
        if answer.status in (401, 403):
            raise CredentialsRejected(f"Kaktus rejected the credentials (HTTP {answer.status}"
                                      f"{error_detail(answer.body)}); {KAKTUS_LOGIN_FIX}")
        body = self.api.parse_json(answer, "Kaktus login", dict)
        token = body.get("access_token")
        if not isinstance(token, str) or not token.strip():
            if body.get("success") is False:
                raise CredentialsRejected(f"Kaktus rejected the credentials"
                                          f"{error_detail(answer.body)}; {KAKTUS_LOGIN_FIX}")
            raise UpstreamError("Kaktus login answer is malformed: no access_token")
        if not is_bearer_token(token):
            raise UpstreamError("Kaktus login answer is malformed: its access_token is no "
                                "bearer token (visible ASCII, at most 8192 characters)")
        if self.value:  # a watch renews it again and again
            SECRETS.discard(*token_forms(self.value))
        SECRETS.add(*token_forms(token))
        self.value, now = token, self.clock()
        expires_at = token_expiry(token, body.get("expires_in"), now)
        # Renew TOKEN_MARGIN before exp, or a quarter of the lifetime for short-lived tokens.
        self.renew_at = expires_at - min(TOKEN_MARGIN, max(0.0, expires_at - now) / 4)
        try:
            write_atomically(self.cache, json.dumps({
                "account": self.account, "access_token": token, "expires_at": expires_at,
                "renew_at": self.renew_at}))
        except OSError as exc:  # checked before the first request: the disk changed since
            log.warning("KAK2C_TOKEN_FILE %s: cannot write (%s)", self.cache, exc.strerror)


# --- the Kaktus walk: where it stops, and fetching its pages ----------------------------------

KAKTUS_THREADS = 4           # Kaktus pages are numbered, so a few can be fetched at once
LOOKAHEAD = 2 * KAKTUS_THREADS  # Kaktus pages asked ahead of the last one checked
KAKTUS_EXTRA_PAGES = 4       # pages read past recordsTotal's count while the catalogue grows


def parse_kaktus_page(body: bytes, page: int) -> tuple:
    """Return (products, recordsTotal) from a Kaktus page body, or fail naming what is wrong."""
    where = f"Kaktus GET /api/lite/products?page={page}"
    value = decode_json(body, where, dict, ask=KAKTUS.ask())
    if value.get("success") is False:
        raise UpstreamError(f"{where}: error answer{error_detail(body)}")
    products, total = value.get("products"), value.get("recordsTotal")
    if not isinstance(products, list):
        raise UpstreamError(f"{where}: no products list in the answer; {KAKTUS.ask()}")
    if isinstance(total, str) and total.isdigit() and len(total) < 19:
        total = int(total)
    if type(total) is not int or total < 0:  # noqa: E721 - bool is no count
        raise UpstreamError(f"{where}: recordsTotal is missing or not a count")
    return products, total


def planned_pages(total: int, page_length: int) -> int:
    """How many pages hold recordsTotal products, page 0 being this long (integers: a total of
    10**400 is legal JSON)."""
    return -(-total // page_length) if page_length else 1


def page_digest(body: bytes) -> tuple:
    """What tells a repeated page: its length and a 64-bit hash of every byte (pages of products
    that begin and end alike must not look the same). Python's own hash of bytes is much
    cheaper than hashlib's, and a repeat only has to be told within a run."""
    return len(body), hash(body)


def ends_fetching(body: bytes, page: int, digests: Collection) -> bool:
    """Whether no page after this one need be fetched: it repeats an earlier one (its digest
    is among `digests`), or it holds no products (only short bodies are parsed for that). It
    is read_kaktus_pages()'s rule told from the bodies alone, for the pages fetched ahead."""
    return page_digest(body) in digests or (
        len(body) < 1024 and not parse_kaktus_page(body, page)[0])


def new_products(products: list, seen: set) -> list:
    """Keep the products not seen before, by id (a repeated page adds nothing)."""
    fresh = []
    for product in products:
        key = product.get("id") if isinstance(product, dict) else None
        if key is None:
            try:
                key = json.dumps(product, sort_keys=True)
            except (ValueError, TypeError, RecursionError):
                key = object()  # cannot be compared: count it as new
        elif not isinstance(key, (int, str)):
            key = repr(key)
        if key not in seen:
            seen.add(key)
            fresh.append(product)
    return fresh


def read_kaktus_pages(bodies: Iterable[bytes], page0: tuple | None = None) -> Iterator[list]:
    """Yield each Kaktus page's new products, page 0 first, for as long as the walk needs
    pages; fail when they do not add up. This is where the walk stops. `page0`: page 0 as
    parse_kaktus_page() read it, when the fetching did already.

    The walk ends on an empty page, or once the pages recordsTotal needs are read; past them it
    asks for more (KAKTUS_EXTRA_PAGES at most) only while they come full and new, as they do
    while the catalogue grows. A page that repeats an earlier one (a server that ignores
    ?page=), or brings no new product, or a catalogue short of its recordsTotal is an error,
    never a loop or a partial catalogue.
    """
    bodies = iter(bodies)
    body = next(bodies)
    first, total = page0 or parse_kaktus_page(body, 0)
    planned, digests, seen = planned_pages(total, len(first)), {page_digest(body)}, set()
    yield new_products(first, seen)
    number, last = 0, first
    while number + 1 < planned or (
            number + 1 < planned + KAKTUS_EXTRA_PAGES and len(seen) < total
            and len(last) >= len(first) > 0):
        number, body = number + 1, next(bodies, None)
        if body is None:  # no more pages to be had
            break
        body_print = page_digest(body)
        if body_print in digests:
            raise UpstreamError(f"Kaktus page {number} is a page already read: the server "
                                "does not move on with ?page=; nothing written")
        digests.add(body_print)
        last, _ = parse_kaktus_page(body, number)
        fresh = new_products(last, seen)
        if not fresh and number < planned and last:
            raise UpstreamError(f"Kaktus page {number} brings no new product: the server "
                                "repeats itself; nothing written")
        if not fresh:
            break
        yield fresh
    if len(seen) < total:
        raise UpstreamError(f"Kaktus catalogue is inconsistent: recordsTotal is {total} but "
                            f"{len(seen)} distinct products came in {number + 1} pages")


def fetch_kaktus_page(api: Api, token: KaktusToken, page: int,
                     size: int | None = None) -> bytes:
    """Fetch one Kaktus page's body, logging in again once when the token is refused."""
    params = {"page": page} if size is None else {"page": page, "size": size}
    where = f"Kaktus GET /api/lite/products?page={page}"
    for attempt in (1, 2):
        sent = token.current()
        answer = api.request("GET", "/api/lite/products", params=params,
                             headers={"Authorization": f"Bearer {sent}"})
        if not is_token_refused(answer):
            api.expect_ok(answer, where)
            return answer.body
        if attempt == 1:
            token.renew(sent)
    raise CredentialsRejected(f"{where}: a fresh token was refused too (HTTP 401); "
                              f"{KAKTUS_LOGIN_FIX}")


def fetch_kaktus_pages(api: Api, token: KaktusToken, size: int | None, progress: Progress,
                      stop: threading.Event) -> tuple:
    """Fetch the Kaktus catalogue's page bodies, page 0 first, until one ends the fetching;
    return (page 0 parsed, the bodies).

    Page 0 tells how many pages there are; the rest are fetched KAKTUS_THREADS at a time, at
    most LOOKAHEAD ahead of the last one checked, so that a page that repeats an earlier one
    or comes back empty (see ends_fetching) stops the fetching within a few requests, as does
    `stop` (the other catalogue failed). The pages are not parsed here: read_kaktus_pages does
    that, and says whether they add up.
    """
    body = fetch_kaktus_page(api, token, 0, size)
    page0 = parse_kaktus_page(body, 0)
    planned = planned_pages(page0[1], len(page0[0]))
    bodies, digests = [body], {page_digest(body)}
    numbers = iter(range(1, planned))

    def fetch(page: int) -> bytes:
        body = fetch_kaktus_page(api, token, page, size)
        progress.update("Kaktus", page + 1, planned)
        return body

    with ThreadPoolExecutor(KAKTUS_THREADS) as pool:
        pending = deque((n, pool.submit(fetch, n)) for n in itertools.islice(numbers, LOOKAHEAD))
        try:
            while pending and not stop.is_set():
                number, future = pending.popleft()
                bodies.append(future.result())
                if ends_fetching(bodies[-1], number, digests):
                    break
                digests.add(page_digest(bodies[-1]))
                following = next(numbers, None)
                if following is not None:
                    pending.append((following, pool.submit(fetch, following)))
        finally:
            # A page that failed for good, or a fetch that ends: don't fetch what is queued.
            for _, future in pending:
                future.cancel()
    return page0, bodies


def more_kaktus_pages(api: Api, token: KaktusToken, size: int | None,
                     fetched: list) -> Iterator[bytes]:
    """Yield the bodies fetched, freeing each, then fetch the pages after them one by one for
    as long as the reader asks (the catalogue grew while it was read)."""
    queue, following = deque(fetched), len(fetched)
    fetched.clear()
    while queue:
        yield queue.popleft()
    for number in itertools.count(following):
        yield fetch_kaktus_page(api, token, number, size)


# --- reading InSales --------------------------------------------------------------------------

def walk_insales(api: Api, since: str, from_id: int, progress: Progress,
                 stop: threading.Event | None = None,
                 with_deleted: bool = False) -> Iterator[tuple]:
    """Yield (page of products, cursor after it) along InSales' documented keyset walk, until a
    page comes back empty.

    Each page is asked as page 1 from the last product read (its updated_at and id); a page
    shorter than per_page is not the end, as a shop may serve fewer than asked. A 504 ("over
    50 s, perhaps too much data at once") halves per_page for the rest of the walk.
    """
    where = "InSales GET /admin/products.json"
    per_page, seen, tail = INSALES_PAGE, set(), None
    extra = {"with_deleted": "true"} if with_deleted else {}
    for number in itertools.count(1):
        if stop is not None and stop.is_set():
            return
        params = {"updated_since": since, "from_id": from_id, "per_page": per_page, "page": 1,
                  **extra}
        answer = api.request("GET", "/admin/products.json", params=params,
                             give_back=(504,) if per_page > INSALES_MIN_PAGE else ())
        if answer.status == 504:
            if per_page == INSALES_PAGE:
                log.info("%s: HTTP 504 (too much at once?); asking fewer products a page", where)
            per_page = max(INSALES_MIN_PAGE, per_page // 2)
            continue
        page = api.parse_json(answer, where, list)
        if not page:
            return
        found = last_anchor(page)
        if found is None:
            if page == tail:  # the products after the last anchor, served again: the end
                return
            raise UpstreamError(f"{where}: page {number} ends in products with no updated_at "
                                "or id, so the walk cannot go on")
        position, cursor = found
        if cursor in seen or cursor == (since, from_id):
            raise UpstreamError(f"InSales keyset walk does not advance: page {number} ends at "
                                f"updated_at={cursor[0]} id={cursor[1]} again")
        seen.add(cursor)
        since, from_id = cursor
        tail = page[position + 1:]
        progress.update("InSales", number)
        yield page, cursor


def fetch_insales_catalogue(api: Api, fields: tuple, known: InSalesCatalogue | None,
                            progress: Progress, stop: threading.Event,
                            now: float) -> InSalesCatalogue:
    """Read the whole catalogue, or (given the last one) only what changed since its cursor.

    `fields`: the quantity field, the barcode field and the other one (see
    parse_insales_product). An incremental walk asks for trashed products too, to forget them.
    `now` dates a full walk.
    """
    if known is None:
        catalogue, start = InSalesCatalogue({}, (WALK_START, 0), now), (WALK_START, 0)
    else:
        catalogue, start = known, walk_from(known.cursor, now)
        # this walk's, not the last one's too
        catalogue.skipped, catalogue.other_barcodes, catalogue.variant_keys = 0, [], ()
    try:
        for page, cursor in walk_insales(api, *start, progress, stop,
                                         with_deleted=known is not None):
            catalogue.cursor = cursor
            named = catalogue.skipped  # a cron mail, not a flood: WARN_MOST named one by one
            for product_id in merge_insales_page(catalogue, page,
                                                 fields)[:max(0, WARN_MOST - named)]:
                log.warning("InSales: skipped a malformed product (id %s)", product_id)
    finally:
        catalogue.by_product = {}  # only needed while merging: built again by the next walk
    if catalogue.skipped > WARN_MOST:
        log.warning("InSales: %d malformed products skipped in all", catalogue.skipped)
    return catalogue


# --- writing InSales --------------------------------------------------------------------------

class Writes(NamedTuple):
    """What became of the planned writes, by variant id."""

    written: list     # accepted by InSales
    confirmed: set    # of those, the ones it answered "ok" for (the rest were queued: [])
    refused: list     # refused by InSales, or never sent: not made
    unsure: list      # sent in a call that failed for good: they may have landed or not
    stopped: str | None  # why the writing stopped before the end

    @property
    def failed(self) -> list:
        return self.refused + self.unsure


def read_statuses(answer: Answer, ids: list) -> tuple:
    """Tell (the ids InSales refused, those it answered "ok" for) of one batch: all refused on
    an error status, else by the statuses it gives.

    The answer may be per-item statuses or [] (queued): never count on statuses being there.
    """
    if answer.status != 200:
        return set(ids), set()
    try:
        items = json.loads(answer.body)
    except (ValueError, RecursionError):
        return set(), set()
    if not isinstance(items, list):
        return set(), set()
    asked = set(ids)
    # Any value may be any JSON: an id that is not an integer of this batch is not one of ours.
    ours = [item for item in items if isinstance(item, dict)
            and type(item.get("id")) is int and item["id"] in asked]  # noqa: E721
    rejected = {item["id"] for item in ours if item.get("status") not in (None, "ok")}
    return rejected, {item["id"] for item in ours if item.get("status") == "ok"} - rejected


def _ids(ids: list, most: int = 20) -> str:
    shown = ", ".join(map(str, ids[:most]))
    return shown + (f" and {len(ids) - most} more" if len(ids) > most else "")


def apply_plan(api: Api, updates: list, quantity_field: str) -> Writes:
    """Write the planned quantities 100 at a time.

    A rejected batch does not stop the others; an API that stays down after the retries does.
    Retrying a call is safe: it sets absolute quantities, so one applied twice is applied once.
    """
    outcome = Writes([], set(), [], [], None)
    for start in range(0, len(updates), WRITE_BATCH):
        batch = updates[start:start + WRITE_BATCH]
        body = {"variants": [{"id": v.id, quantity_field: d.publish} for v, d in batch]}
        ids = [variant.id for variant, _ in batch]
        try:
            answer = api.request("PUT", "/admin/products/variants_group_update.json", json=body)
        except UpstreamError as exc:
            rest = [variant.id for variant, _ in updates[start + WRITE_BATCH:]]
            log.error("%s; not known to be written: %d variants (ids %s)", exc,
                      len(ids) + len(rest), _ids(ids + rest))
            outcome.unsure.extend(ids)
            outcome.refused.extend(rest)
            return outcome._replace(stopped=str(exc))
        rejected, confirmed = read_statuses(answer, ids)
        if rejected:
            log.error("InSales rejected %d of %d variants (HTTP %s%s): ids %s", len(rejected),
                      len(ids), answer.status, error_detail(answer.body),
                      _ids(sorted(rejected)))
        outcome.refused.extend(i for i in ids if i in rejected)
        outcome.written.extend(i for i in ids if i not in rejected)
        outcome.confirmed.update(confirmed)
    return outcome


# --- state between runs -----------------------------------------------------------------------

@dataclass
class State:
    """What the last run that kept its state left: per matched variant its Track, the
    updated_at its product was read with where that run announced a write (read_at, the T
    of has_moved), and (for incremental mode) the InSales catalogue as walked, merged and
    written."""

    tracks: dict
    read_at: dict
    catalogue: InSalesCatalogue | None


class BadState(ValueError):
    """A state file that this version cannot read: the run starts afresh."""


def state_key(settings: Settings) -> dict:
    """The settings a stored variant's meaning depends on: its shop, the quantity field, where
    barcodes are read on each side, the Kaktus figure. A state kept with others starts afresh."""
    return {"INSALES_URL": settings.insales_url, "INSALES_WAREHOUSE": settings.warehouse,
            "INSALES_BARCODE_FIELD": settings.insales_barcode_field,
            "KAK2C_BARCODE_FIELD": settings.kaktus_barcode_field,
            "KAK2C_STOCK_FIELD": settings.stock_setting}


ANNOTATED = {"int": int, "str": str, "None": type(None)}


def columns_of(kind: type, fields: Iterable[str]) -> dict:
    """The state's columns for these fields of a NamedTuple, in its order, with the types each
    may hold, read from its annotations (`str | None`)."""
    texts = {name: getattr(hint, "__forward_arg__", hint)  # NamedTuple wraps them in ForwardRef
             for name, hint in kind.__annotations__.items()}
    return {name: {ANNOTATED[part.strip()] for part in texts[name].split("|")} for name in fields}


# The state's tables as named columns: a track's are its variant id and its fields but its
# holds (kept apart, for the few that have some); a variant's are its fields.
TRACK_COLUMNS = {"id": {int}, **columns_of(Track, (f for f in Track._fields if f != "holds"))}
VARIANT_COLUMNS = columns_of(Variant, Variant._fields)


NUMBER = (int, float)


def _get(table: dict, key: str, kind):
    value = table.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadState(f"{key} is missing or of the wrong type")
    return value


def _read_columns(table, columns: dict) -> list:
    """The columns of a table stored by name, each checked for length and the types of its
    values."""
    if not isinstance(table, dict):
        raise BadState("a table is missing")
    values = [table.get(name) for name in columns]
    if not all(isinstance(column, list) and len(column) == len(values[0]) for column in values):
        raise BadState("columns missing or of different lengths")
    for name, column, kinds in zip(columns, values, columns.values()):
        if not set(map(type, column)) <= kinds:
            raise BadState(f"a {name} of the wrong type")
    return values


def _read_holds(value) -> tuple:
    if not isinstance(value, list) or not all(
            isinstance(hold, list) and len(hold) == 2 and type(hold[0]) is int and hold[0] > 0
            and type(hold[1]) in (int, float) and math.isfinite(hold[1]) for hold in value):
        raise BadState("holds")
    return tuple((units, float(at)) for units, at in value)


def _tracked(key: str, tracks: dict) -> int:
    """The variant id a state's key names, which must be one of the tracks'."""
    variant_id = int(key) if key.isdigit() else None
    if variant_id not in tracks:
        raise BadState("a key of an unknown variant")
    return variant_id


def read_state(data: dict) -> State:
    """Build a State from the file's JSON, checking every value it takes; raise BadState."""
    ids, *columns = _read_columns(_get(data, "tracks", dict), TRACK_COLUMNS)
    tracks = dict(zip(ids, map(tuple_maker(Track), zip(*columns, itertools.repeat(())))))
    for key, value in _get(data, "holds", dict).items():
        variant_id = _tracked(key, tracks)
        tracks[variant_id] = tracks[variant_id]._replace(holds=_read_holds(value))
    read_at = {}
    for key, value in _get(data, "read_at", dict).items():
        if not isinstance(value, (str, type(None))):
            raise BadState("read_at")
        read_at[_tracked(key, tracks)] = value
    catalogue = data.get("catalogue")
    if catalogue is not None:
        variants = _read_columns(_get(data, "catalogue", dict).get("variants"), VARIANT_COLUMNS)
        cursor = _get(catalogue, "cursor", list)
        if len(cursor) != 2 or not isinstance(cursor[0], str) or type(cursor[1]) is not int:
            raise BadState("cursor")
        catalogue = InSalesCatalogue(dict(zip(variants[0], map(new_variant, zip(*variants)))),
                                     tuple(cursor), float(_get(catalogue, "full_walk_at", NUMBER)),
                                     products=_get(catalogue, "products", int))
    return State(tracks, read_at, catalogue)


def load_state(settings: Settings) -> State | None:
    """Return the last run's state; None (a plain run, a full walk) when it is missing,
    unreadable, of another version or of another shop."""
    path = settings.state_file
    data = load_json_file(path)
    if data is None:
        return None
    version = data.get("version") if isinstance(data, dict) else None
    if version != STATE_VERSION:
        log.warning("%s was written by another version of sync_stock (state version %s, this "
                    "one reads %s); starting afresh: no holds this run, a full walk",
                    path, str(version)[:20], STATE_VERSION)
        return None
    kept, key = data.get("settings"), state_key(settings)
    if kept != key:
        kept = kept if isinstance(kept, dict) else {}
        def shown(value) -> str:
            return "unset" if value is None else outside(value, 80)

        changed = ", ".join(f"{name} was {shown(kept.get(name))}, now {shown(value)}"
                            for name, value in key.items() if kept.get(name) != value)
        log.warning("%s was kept with other settings (%s); starting afresh: no holds this run, "
                    "a full walk", path, changed)
        return None
    try:
        return read_state(data)
    except BadState as exc:
        log.warning("%s is not a state this version can read (%s); starting afresh: no holds "
                    "this run, a full walk", path, exc)
        return None


def write_state(settings: Settings, tracks: dict, read_at: Mapping,
               catalogue: InSalesCatalogue | None) -> None:
    """Keep the tracks (and the catalogue, in incremental mode) for the next run, atomically.

    `read_at`: by variant id, the updated_at its product was read with, for the variants with
    a write announced (the only ones where the next run needs it).
    """
    rows = tracks.values()
    state = {
        "version": STATE_VERSION, "settings": state_key(settings),
        "tracks": {"id": list(tracks), **{name: list(map(operator.attrgetter(name), rows))
                                          for name in list(TRACK_COLUMNS)[1:]}},
        "holds": {str(i): [list(hold) for hold in t.holds] for i, t in tracks.items() if t.holds},
        "read_at": {str(i): at for i, at in read_at.items() if i in tracks},
        "catalogue": None,
    }
    if catalogue is not None:
        columns = list(zip(*catalogue.variants.values())) or [[]] * len(VARIANT_COLUMNS)
        state["catalogue"] = {
            "cursor": list(catalogue.cursor), "full_walk_at": catalogue.full_walk_at,
            "products": catalogue.products,
            "variants": {name: list(column) for name, column in zip(VARIANT_COLUMNS, columns)}}
    text = json.dumps(state, ensure_ascii=False, separators=(",", ":"))
    write_atomically(settings.state_file, SECRETS.hide(text))  # titles are an API's text


def note_written(catalogue: InSalesCatalogue, updates: list, written: Collection[int]) -> None:
    """Put in the catalogue (in place) the quantities InSales accepted."""
    publish = {variant.id: decision.publish for variant, decision in updates}
    for variant_id in written:
        old = catalogue.variants.get(variant_id)
        if old is not None:
            catalogue.variants[variant_id] = old._replace(quantity=publish[variant_id])
            catalogue.revision += 1


def walks_incrementally(settings: Settings, catalogue: InSalesCatalogue, watching: bool) -> bool:
    """Whether the catalogue is kept between syncs and walked for what changed (SYNC_MODE):
    `auto` picks it for a big shop, and always in a watch."""
    return settings.mode == "incremental" or settings.mode == "auto" and (
        watching or catalogue.products > AUTO_INCREMENTAL_PRODUCTS)


def needs_full_walk(settings: Settings, state: State | None, now: float, watching: bool) -> bool:
    if state is None or state.catalogue is None \
            or not walks_incrementally(settings, state.catalogue, watching):
        return True
    return now - state.catalogue.full_walk_at >= settings.full_every * 60


# --- output: dry-run table, report, summary, metrics, health pings ----------------------------

def _qty(value) -> str:
    return "" if value is None else str(value)


def _hold_note(decision: Decision, publishing: Publishing) -> str:
    holds = decision.track.holds if decision.track else ()
    return f"held {hold_text(holds, publishing)}" if holds else ""


def print_plan(plan: Plan, publishing: Publishing, refusal: Refusal | None,
               report: Path | None, out) -> None:
    """Print the planned changes, and the variants held, as an aligned table capped on screen."""
    shown = {variant.id: (variant, decision) for variant, decision in plan.updates}
    shown.update((variant.id, (variant, decision)) for variant, decision in plan.held)
    rows = heapq.nsmallest(DRY_RUN_ROWS, shown.values(),
                           key=lambda row: (row[0].title, row[0].barcode))
    lines = [(clean(outside(variant.barcode, 40)), str(variant.id),
              clean(outside(variant.title, 50)),
              f"{_qty(variant.quantity)} -> {decision.publish}",
              _hold_note(decision, publishing))
             for variant, decision in rows]
    header = ("barcode", "variant id", "title", "old -> new", "")
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    for line in [header, *lines] if lines else []:
        text = "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
        print(clean(text), file=out)
    if len(shown) > DRY_RUN_ROWS:
        hint = f"see {report}" if report else "use --report PATH"
        print(f"... and {len(shown) - DRY_RUN_ROWS} more ({hint} for the full list)", file=out)
    print(f"{len(plan.updates)} changes planned of {plan.counts['matched']} matched variants"
          + (f"; {plan.counts['held_units']} units held for sales in flight"
             if plan.counts["held_units"] else ""), file=out)
    if refusal:
        final = "" if refusal.forceable else " (--force cannot override it)"
        print(clean(f"The safety guard would refuse this plan{final}: {refusal.reason}"),
              file=out)


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def as_data(text: str) -> str:
    """A report cell a spreadsheet shows as text: one that would begin a formula (CSV
    injection: `=HYPERLINK(...)` in a title) gets a leading '."""
    return "'" + text if text.startswith(FORMULA_START) else text


def write_report(path: Path, rows: Iterable[tuple], outcome: dict) -> None:
    """Write one CSV row per barcode seen (see report_rows), saying what was done and why;
    `outcome` overrides the plan's word for variants whose writes went otherwise. The text
    cells are data, never formulas; the figures stay numbers."""
    rows = sorted(rows, key=lambda row: (row[0], row[1].id if row[1] else 0))
    lines = [("barcode", "insales_variant_id", "title", "insales_qty", "kak2c_qty",
              "action", "reason")]
    for barcode, variant, stock, decision in rows:
        action, reason = outcome.get(variant.id if variant else None,
                                     (decision.action, decision.reason))
        lines.append((as_data(barcode), variant.id if variant else "",
                      as_data(variant.title) if variant else "",
                      _qty(variant.quantity) if variant else "", _qty(stock), action, reason))
    buffer = io.StringIO()
    csv.writer(buffer).writerows(lines)
    write_atomically(path, SECRETS.hide(buffer.getvalue()), mode=0o644)


def write_report_or_log(path: Path | None, rows: Iterable[tuple], outcome: dict) -> None:
    """Write the report if asked; a report that fails is logged, and never fails the sync."""
    if path is None:
        return
    try:
        write_report(path, rows, outcome)
    except (OSError, ValueError) as exc:
        log.error("--report %s: cannot write (%s)", path, getattr(exc, "strerror", None) or exc)


class Figure(NamedTuple):
    """A key of the run summary, and how the metrics show it."""

    key: str
    default: object = 0        # when no sync counted it; None: null (a choice not made)
    kind: str | None = None    # shown as sync_stock_variants{kind=...}
    gauge: str | None = None   # or as a gauge of its own (omitted while null),
    help: str = ""             # with this help
    in_line: bool = True       # in the summary line too (not the guard's and error's prose)


# Every figure of the summary, once: make_summary(), summary_line() and format_metrics() are
# built from here, the README's table and --json are checked against it; plan_updates()
# counts most of them, write_sync() and sync_once() add what the writes did and the error.
FIGURES = (
    Figure("status", None), Figure("mode", None),
    Figure("insales_variants", kind="insales"),
    Figure("insales_with_barcode", kind="insales_with_barcode"),
    Figure("insales_duplicate_barcodes", kind="duplicates_insales"),
    Figure("kak2c_variants", kind="kak2c"),
    Figure("kak2c_duplicate_barcodes", kind="duplicates_kak2c"),
    Figure("matched", kind="matched"), Figure("changed", kind="changed"),
    Figure("updated", kind="updated"), Figure("failed", kind="failed"),
    Figure("unmatched_insales", kind="unmatched_insales"),
    Figure("unmatched_kak2c", kind="unmatched_kak2c"),
    Figure("unknown_stock", kind="unknown_stock"),
    Figure("skipped_records"), Figure("held_variants"),
    Figure("held_units", gauge="sync_stock_held_units",
           help="Units held back for sales Kaktus has not seen yet."),
    Figure("expired_units", gauge="sync_stock_hold_expired_units",
           help="Held units that expired in the last run before Kaktus' stock fell (see "
                "SYNC_HOLD_MINUTES)."),
    Figure("caught_up_after_s", None, gauge="sync_stock_hold_caught_up_seconds",
           help="Age of the oldest hold that Kaktus' stock falling released in the last run: "
                "how long Kaktus takes to count an order."),
    Figure("kak2c_barcode_field", None), Figure("kak2c_stock_field", None),
    Figure("guard", None, in_line=False), Figure("error", None, in_line=False),
    Figure("requests", None), Figure("duration_s", 0.0),
)


def make_summary(result: SyncResult, requests_sent: dict, duration: float) -> dict:
    """The run summary: every figure of FIGURES, from what the sync found, or its default."""
    known = {**result.figures, "status": result.status.label, "mode": result.mode,
             "requests": requests_sent, "duration_s": round(duration, 3)}
    return {figure.key: known.get(figure.key, figure.default) for figure in FIGURES}


def summary_line(summary: dict) -> str:
    """`status=ok matched=79 ... requests.insales=2 requests.kak2c=2 duration_s=0.4`."""
    parts = []
    for figure in FIGURES:
        value = summary[figure.key]
        if figure.in_line and isinstance(value, dict):
            parts += [f"{figure.key}.{key}={item}" for key, item in value.items()]
        elif figure.in_line and value is not None:
            parts.append(f"{figure.key}={value}")
    return " ".join(parts)


LAST_SUCCESS = "sync_stock_last_success_timestamp_seconds"
EXIT_CODES = ", ".join(f"{code} {label}" for code, label in reversed(
    {status.exit_code: status.label for status in reversed(Status)}.items()))


def format_metrics(shop: str, summary: dict, exit_code: int, now: float,
                   last_success: float | None, usage: float | None,
                   interval: float | None = None) -> str:
    """The run's figures in Prometheus' text format, for node_exporter's textfile collector;
    `interval`: the pace a watch keeps now."""
    label = 'shop="' + shop.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    lines = []

    def metric(name, text, samples):
        lines.extend((f"# HELP {name} {text}", f"# TYPE {name} gauge"))
        lines.extend(f"{name}{{{label}{extra}}} {value}" for extra, value in samples)

    metric("sync_stock_last_run_timestamp_seconds", "When the last run ended, Unix time.",
           [("", round(now, 3))])
    if last_success is not None:
        metric(LAST_SUCCESS, "When the last successful run (exit 0) ended, Unix time.",
               [("", round(last_success, 3))])
    metric("sync_stock_last_exit_code", f"Exit code of the last run ({EXIT_CODES}).",
           [("", exit_code)])
    metric("sync_stock_duration_seconds", "How long the last run took.",
           [("", float(summary["duration_s"]))])
    metric("sync_stock_variants", "Variant counts of the last run, by kind.",
           [(f',kind="{f.kind}"', summary[f.key]) for f in FIGURES if f.kind])
    for figure in FIGURES:
        if figure.gauge and summary[figure.key] is not None:
            metric(figure.gauge, figure.help, [("", summary[figure.key])])
    metric("sync_stock_requests", "HTTP requests the last run sent, by API.",
           [(f',api="{api}"', count) for api, count in summary["requests"].items()])
    if usage is not None:
        metric("sync_stock_insales_api_usage_ratio", "The last API-Usage-Limit InSales sent, "
               "used/limit.", [("", round(usage, 4))])
    if interval is not None:
        metric("sync_stock_interval_seconds", "The seconds a watch now keeps between the starts "
               "of two syncs.", [("", round(interval, 3))])
    return "\n".join(lines) + "\n"


def read_last_success(path: Path) -> float | None:
    """The last success an earlier run wrote into the metrics file, if it did."""
    try:
        found = re.search(rf"^{LAST_SUCCESS}{{[^}}]*}} (\S+)$", path.read_text("utf-8"),
                          re.MULTILINE)
        return float(found[1]) if found else None
    except (OSError, ValueError):
        return None


def write_metrics(path: Path, text: str) -> None:
    """Rewrite the metrics file atomically; a disk that fails is logged, never the run's fault."""
    try:
        write_atomically(path, text, mode=0o644)
    except OSError as exc:
        log.error("METRICS_FILE %s: cannot write (%s)", path, exc.strerror)


def ping_healthcheck(settings: Settings, suffix: str = "") -> None:
    """Tell a healthchecks.io-style monitor (HEALTHCHECK_URL) how the run went, within
    PING_DEADLINE (or SYNC_TIMEOUT, if shorter) all told; never let it fail the run, nor hold
    it."""
    url, seconds = settings.healthcheck_url, min(PING_DEADLINE, settings.timeout)
    if not url:
        return
    what = f"healthcheck ping {suffix or 'success'} (HEALTHCHECK_URL)"
    started = time.monotonic()
    try:
        with make_session(url) as session:
            answer = send(session, "GET", url + suffix, seconds, most=2**16)
    except AnswerTooBig:
        log.warning("%s: the answer runs past 64 KiB", what)
    except requests.RequestException as exc:
        log.warning("%s failed: %s", what, transport_problem(
            exc, url, seconds, time.monotonic() - started, "a ping's limit"))
    else:
        if answer.status >= 300:
            where = answer.headers.get("Location")
            log.warning("%s: HTTP %s%s", what, answer.status,
                        f", a redirect to {outside(where, echo=True)}, never followed" if where
                        else "")


# --- the run ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    """What the command line asks of one sync."""

    dry_run: bool = False
    force: bool = False
    report: Path | None = None
    plan_to_stderr: bool = False   # --json keeps stdout for the summary
    progress: bool = False


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic collector: the catalogue is hundreds of thousands of small acyclic
    objects, and rescanning them again and again as they pile up is a big run's largest waste.
    Nothing is frozen on the way out: by then the run's catalogue is freed, and what is left of
    it, its cycles, is the next collection's to take (a watch collects and freezes per sync)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(frozen=True)
class Job:
    """A command's settings, the two APIs it talks to and the Kaktus token: one per process."""

    settings: Settings
    insales: Api
    kaktus: Api
    token: KaktusToken
    clock: Callable[[], float]  # the one time of the process: holds, pace, durations, metrics
    setup: tuple = ()  # what looks wrong in the operator's setup (setup_warnings), said at start

    def requests_sent(self) -> dict:
        return {"insales": self.insales.requests, "kak2c": self.kaktus.requests}


def make_job(settings: Settings, sleep: Callable[[float], None],
             clock: Callable[[], float] = time.time, setup: tuple = ()) -> Job:
    SECRETS.add(*settings.secrets)
    insales, kaktus = make_apis(settings, RetryPolicy(max_wait=settings.max_wait, sleep=sleep),
                                clock)
    return Job(settings, insales, kaktus,
               KaktusToken(kaktus, settings.kaktus_credentials, settings.token_file, clock),
               clock, setup)


class Memory:
    """What a process keeps from one sync to the next: a watch's many, a single run's one."""

    def __init__(self, watching: bool = False, last_success: float | None = None):
        self.watching = watching
        self.syncs = 0
        self.state: State | None = None   # as last kept; None: read SYNC_STATE_FILE
        self.saved: tuple | None = None    # what the state file holds now, in short
        self.said: dict = {}               # what a log line is about -> when it was said
        self.last_success = last_success   # for the metrics

    def say(self, level: int, about: str, text: str, now: float) -> None:
        """Log `text`, unless something `about` the same was said within WARN_EVERY."""
        said = self.said.get(about)
        if said is not None and now - said < WARN_EVERY:
            return
        self.said[about] = now
        log.log(level, "%s", text)


def fetch_catalogues(job: Job, known: InSalesCatalogue | None, progress: Progress,
                     now: float) -> tuple:
    """Read both catalogues at once (they are independent); return (InSales, Kaktus index).

    The InSales walk runs in a thread of its own, parsing as it goes, while Kaktus pages are
    fetched as bodies; they are parsed once the walk is done, since two threads parsing at
    once take turns on the interpreter lock and spoil each other's caches. Either side
    failing stops the other.
    """
    settings, token, size = job.settings, job.token, job.settings.kaktus_page_size
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(fetch_insales_catalogue, job.insales, settings.insales_fields,
                              known, progress, stop, now)
        reading.add_done_callback(lambda done: done.exception() and stop.set())
        try:
            page0, fetched = fetch_kaktus_pages(job.kaktus, token, size, progress, stop)
        except BaseException:
            stop.set()
            raise
        catalogue = reading.result()  # an InSales failure is the run's failure
    pages = read_kaktus_pages(more_kaktus_pages(job.kaktus, token, size, fetched), page0)
    return catalogue, index_kaktus(pages, settings.stock_rule, settings.kaktus_barcode_field)


def keep_state(settings: Settings, memory: Memory, state: State) -> None:
    """Keep the state for the next sync, in memory and in the file; a file that would not
    change is not written again (a watch's quiet syncs: the tracks, the announced writes and
    the catalogue's revision as they were), and a disk that fails now is logged (the next run
    starts afresh)."""
    catalogue = state.catalogue
    saving = (state.tracks, state.read_at, catalogue and (
        catalogue.revision, catalogue.cursor, catalogue.full_walk_at))
    memory.state = state
    if saving == memory.saved:
        return
    try:
        write_state(settings, state.tracks, state.read_at, catalogue)
        memory.saved = saving
    except OSError as exc:  # checked before the first request: the disk changed since
        log.error("SYNC_STATE_FILE %s: cannot write (%s)", settings.state_file, exc.strerror)
        memory.saved = None


class Planned(NamedTuple):
    """A sync's first step done: what it read, what it plans, what the guard says."""

    result: SyncResult   # the counts, the guard's word; a dry run's outcome
    plan: Plan
    catalogue: InSalesCatalogue
    inputs: PlanInputs   # what the plan was made from, for report_rows()
    refusal: Refusal | None


def plan_sync(job: Job, options: Options, memory: Memory) -> Planned:
    """Read both catalogues, decide every barcode, say what looks wrong, ask the guard. A
    SyncError it lets out carries a result, for sync_once to summarise."""
    settings, now = job.settings, job.clock()
    state = memory.state if memory.state is not None else load_state(settings)
    # a watch walks whole until it keeps a state of its own, then as SYNC_FULL_EVERY says
    full = memory.watching and memory.state is None or needs_full_walk(settings, state, now,
                                                                       memory.watching)
    mode = "full" if full else "incremental"
    progress = Progress(options.progress)
    try:
        catalogue, index = fetch_catalogues(job, None if full else state.catalogue, progress,
                                            now)
    except SyncError as exc:
        exc.result = SyncResult(Status.FAILED, mode)
        raise
    finally:
        progress.close()
    inputs = PlanInputs(catalogue.variants.values(), index, state.tracks if state else {},
                        job.clock(), Publishing(settings.stock_buffer,
                                                settings.hold_minutes * 60),
                        state.read_at if state else {})
    plan = plan_updates(inputs)
    for variant, event in plan.events:
        log.debug("hold %s: barcode %s, variant %s (%s): %d units", event.kind, variant.barcode,
                  variant.id, outside(variant.title, 50), event.units)
    where = ("the variant ids" if index.barcode_field == "id" else
             "barcode, barcodes" if index.barcode_field == "barcode" else index.barcode_field)
    memory.say(logging.DEBUG, "barcode field", f"Kaktus barcodes read from {where} "
               f"(KAK2C_BARCODE_FIELD={settings.kaktus_barcode_field})", now)
    memory.say(logging.DEBUG, "stock field", f"Kaktus variants by the stock figure read "
               f"(KAK2C_STOCK_FIELD={settings.stock_setting}): "
               f"{index.stock_rules_text() or 'none'}", now)
    warnings = data_warnings(plan, settings, catalogue.other_barcodes)
    zeroing = check_guard(plan, settings.guard_zero_share)
    refusal = refuse_setup(plan, settings, catalogue, warnings) or (
        Refusal(zeroing) if zeroing else None)
    for about, warning in warnings.items():
        memory.say(logging.WARNING, about, warning, now)
    figures = {**plan.counts, "skipped_records": catalogue.skipped + index.skipped,
               "guard": refusal and refusal.reason}
    return Planned(SyncResult(Status.DRY_RUN, mode, figures), plan, catalogue, inputs, refusal)


def write_sync(job: Job, options: Options, memory: Memory, planned: Planned) -> SyncResult:
    """Write the plan, unless it is a dry run or the guard refuses: announce the writes in the
    state, send them, settle what InSales made of them. A SyncError it lets out carries the
    result."""
    settings, (result, plan, catalogue, inputs, refusal) = job.settings, planned
    if options.dry_run:
        print_plan(plan, inputs.publishing, refusal, options.report,
                   sys.stderr if options.plan_to_stderr else sys.stdout)
        write_report_or_log(options.report, report_rows(inputs), {})
        return result
    if refusal and not (options.force and refusal.forceable):
        write_report_or_log(options.report, report_rows(inputs),
                            {v.id: ("skip", "guard") for v, _ in plan.updates})
        final = "" if refusal.forceable else " (--force cannot override it: nothing right to write)"
        raise GuardRefused(f"safety guard: {refusal.reason}; nothing written{final}", result)
    if refusal:
        log.warning("safety guard overridden by --force: %s", refusal.reason)
    kept = catalogue if walks_incrementally(settings, catalogue, memory.watching) else None
    # Announce the writes before sending them (each Track's R): a sale is never mistaken for
    # our own write, even one InSales applies late or one of a run killed half-way.
    read_at = {variant.id: variant.updated_at for variant, _ in plan.updates}
    keep_state(settings, memory, State(plan.tracks, read_at, kept))
    writes = apply_plan(job.insales, plan.updates, settings.quantity_field)
    result.figures.update(updated=len(writes.written), failed=len(writes.failed))
    if plan.updates:
        if kept is not None:
            note_written(kept, plan.updates, writes.written)
        keep_state(settings, memory, State(
            settle_tracks(plan.tracks, writes.refused, writes.confirmed), read_at, kept))
    write_report_or_log(options.report, report_rows(inputs),
                        {i: ("update", "write failed") for i in writes.failed})
    if writes.stopped and not writes.written:
        raise UpstreamError(f"{writes.stopped}; no write was confirmed", result)
    result.status = Status.PARTIAL if writes.failed else Status.OK
    return result


def sync_once(job: Job, options: Options, memory: Memory) -> SyncResult:
    """Run one sync with its own request counts; a failure becomes the result it carries."""
    job.insales.start_sync()
    job.kaktus.start_sync()
    try:
        result = write_sync(job, options, memory, plan_sync(job, options, memory))
    except SyncError as exc:
        known = exc.result or SyncResult()
        result = SyncResult(exc.status, known.mode, {**known.figures, "error": str(exc)})
    memory.syncs += 1
    return result


def report_sync(args: argparse.Namespace, job: Job, memory: Memory, result: SyncResult,
                duration: float, interval: float | None = None) -> None:
    """A sync's summary line (and JSON line), and its metrics."""
    settings, code = job.settings, result.status.exit_code
    summary = make_summary(result, job.requests_sent(), duration)
    log.info("%s", summary_line(summary))
    if args.json:
        print(json_line(summary), flush=True)
    if settings.metrics_file and result.status is not Status.SKIPPED:
        now = job.clock()
        memory.last_success = now if code == EXIT_OK else memory.last_success
        write_metrics(settings.metrics_file, format_metrics(
            settings.shop, summary, code, now, memory.last_success, job.insales.usage, interval))


def run_once(args: argparse.Namespace, job: Job, options: Options, memory: Memory) -> int:
    """One sync, as cron runs it: pings around it, its error logged, its summary; the exit code."""
    started = job.clock()
    ping_healthcheck(job.settings, "/start")
    result = sync_once(job, options, memory)
    if result.error:
        log.error("%s", result.error)
    code = result.status.exit_code
    ping_healthcheck(job.settings, "" if code == EXIT_OK else "/fail")
    report_sync(args, job, memory, result, job.clock() - started)
    return code


def budget_wait(sent: list, window: float, budget: int, need: int, now: float) -> float:
    """Seconds from `now` until `need` more requests fit `budget` in any `window` seconds,
    `sent` being when the requests of the last window went, oldest first; a second more, as
    the API counts by its own clock, from when each request reached it."""
    excess = len(sent) + need - budget
    if excess <= 0 or not sent:
        return 0.0
    return max(0.0, sent[min(excess, len(sent)) - 1] + window + 1 - now)


def insales_budget(api: Api) -> int:
    """A watch's own InSales requests in any RATE_WINDOW: half of what the shop allows, the
    other half left to whatever else uses the same app."""
    return (api.limit or RATE_LIMIT) // 2


def watch_pace(job: Job, needs: tuple) -> float:
    """The seconds between the starts of two syncs that keep `needs` (the InSales and Kaktus
    requests of a sync) within the InSales budget and KAK2C_MAX_RPM, from SYNC_INTERVAL to
    WATCH_MAX_GAP."""
    settings, (insales, kaktus) = job.settings, needs
    return min(WATCH_MAX_GAP, max(settings.interval,
                                  insales * RATE_WINDOW / insales_budget(job.insales),
                                  kaktus * KAKTUS_WINDOW / settings.max_rpm))


def next_wait(job: Job, needs: tuple, started: float, delay: float, now: float) -> float:
    """How long to wait for the next sync: `delay` after the last one started, longer while
    the requests of the last minutes leave no room for `needs`, never past WATCH_MAX_GAP."""
    wait = max(started + delay - now,
               budget_wait(job.insales.sent_within(RATE_WINDOW), RATE_WINDOW,
                           insales_budget(job.insales), needs[0], now),
               budget_wait(job.kaktus.sent_within(KAKTUS_WINDOW), KAKTUS_WINDOW,
                           job.settings.max_rpm, needs[1], now))
    return max(0.0, min(wait, started + WATCH_MAX_GAP - now))


class FailureSpell:
    """A watch's failures in a row: said once at ERROR when they begin and once at WARNING when
    they end, pinged /fail once and success at once after; success pings at most a minute."""

    def __init__(self, settings: Settings):
        self.settings, self.failures, self.pinged = settings, 0, -math.inf

    def follow(self, result: SyncResult, now: float) -> None:
        if result.status.exit_code != EXIT_OK:
            why = result.error or (f"{result.figures['failed']} writes failed (status "
                                   f"{result.status.label})")
            self.failures += 1
            if self.failures == 1:
                log.error("%s", why)
                ping_healthcheck(self.settings, "/fail")
            else:
                log.info("failed again (%d syncs in a row): %s", self.failures, why)
            return
        if self.failures:
            log.warning("recovered after %d failed syncs", self.failures)
        if self.failures or now - self.pinged >= 60:
            ping_healthcheck(self.settings)
            self.pinged = now
        self.failures = 0


def watch(args: argparse.Namespace, job: Job, memory: Memory,
          wait: Callable[[float], bool]) -> int:
    """Sync again and again until `wait` says stop: each sync a whole run, paced by
    SYNC_INTERVAL and the budgets, backing off while syncs fail; exit 0."""
    settings, spell, clock = job.settings, FailureSpell(job.settings), job.clock
    log.info("watching: a sync every %g s (SYNC_INTERVAL) or as the budgets allow",
             settings.interval)
    ping_healthcheck(settings, "/start")
    needs, delay = (2, 1), settings.interval  # a quiet shop's incremental walk: 2 pages at most
    while True:
        started = clock()
        result = sync_once(job, Options(), memory)
        gc.collect()  # this sync's cycles; then what lives on is not scanned again
        gc.freeze()
        spell.follow(result, clock())
        if result.status.exit_code in (EXIT_UPSTREAM, EXIT_REFUSED):
            delay = min(WATCH_MAX_GAP, 2 * delay)
        else:
            # a full walk says little of the next sync's InSales reads: the last incremental does
            insales = job.insales.requests if result.mode == "incremental" else needs[0]
            needs = (insales, job.kaktus.requests)
            delay = watch_pace(job, needs)
        report_sync(args, job, memory, result, clock() - started, delay)
        if wait(next_wait(job, needs, started, delay, clock())):
            break
    log.info("stopped after %d %s", memory.syncs, "sync" if memory.syncs == 1 else "syncs")
    return EXIT_OK


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """Yield an event that SIGTERM or SIGINT sets (the sync in progress finishes); a second
    signal ends the process at once: the state is safe at every point by design."""
    stop = threading.Event()

    def handle(signum, frame):
        if stop.is_set():
            os._exit(128 + signum)
        stop.set()

    previous = {number: signal.signal(number, handle)
                for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def check_insales(job: Job, problems: list) -> list:
    """Read InSales' count, warehouses and first page: return the lines --check prints of
    them, adding to `problems` what would keep a sync from working."""
    settings, insales = job.settings, job.insales
    count = insales.parse_json(insales.request("GET", "/admin/products/count.json"),
                               "InSales GET /admin/products/count.json", dict).get("count")
    warehouses = insales.parse_json(insales.request("GET", "/admin/warehouses.json"),
                                    "InSales GET /admin/warehouses.json", list)
    page = insales.parse_json(
        insales.request("GET", "/admin/products.json", params={"per_page": 10}),
        "InSales GET /admin/products.json", list)
    other_barcodes: list = []
    shop_variants = [v for product in page for v in parse_insales_product(
        product, settings.insales_fields, other_barcodes) or ()]
    field, other = settings.insales_fields[1:]
    coded = sum(v.barcode is not None for v in shop_variants)
    lines = [f"InSales {settings.insales_url}: {count} products; first page read "
             f"({len(page)} products); writing {settings.quantity_field}",
             f"  barcodes read from {field} (INSALES_BARCODE_FIELD): {coded} of "
             f"{len(shop_variants)} variants on that page carry one; {len(other_barcodes)} "
             f"without one have {other} filled"]
    houses = [house for house in warehouses if isinstance(house, dict)]
    for house in houses:
        index = house.get("array_index")
        lines.append(f"  warehouse {house.get('title')!r}: array_index={index} "
                     f"(INSALES_WAREHOUSE={index} writes quantity_at_warehouse{index})")
    indexes = [house.get("array_index") for house in houses]
    if settings.warehouse is not None and settings.warehouse not in indexes:
        problems.append(f"INSALES_WAREHOUSE={settings.warehouse} is none of the shop's "
                        f"warehouses (array_index {', '.join(map(str, indexes)) or 'none'}): "
                        "set it to one of them, or unset it to write quantity")
    if shop_variants and not coded:
        problems.append(insales_barcodes_missing(len(shop_variants), other_barcodes, settings,
                                                 " on the first page"))
    return lines


def check_kaktus(job: Job, problems: list) -> list:
    """Log in to Kaktus and read page 0: return the lines --check prints of it, adding to
    `problems` what would keep a sync from working."""
    settings = job.settings
    products, total = parse_kaktus_page(
        fetch_kaktus_page(job.kaktus, job.token, 0, settings.kaktus_page_size), 0)
    variants = [v for product in products for v in kaktus_variants(product) if isinstance(v, dict)]
    nested = sum(isinstance(p, dict) and isinstance(p.get("variants"), list) for p in products)
    stock_keys = set().union(*map(stock_entry_keys, variants))
    index = index_kaktus([products], settings.stock_rule, settings.kaktus_barcode_field)
    if index.variants and not index.with_barcode:
        problems.append(kaktus_barcodes_missing(index, settings, " on page 0"))
    if index.variants and index.unknown == index.variants:
        problems.append(stock_unknown(index, settings,
                                      f"all {index.variants} Kaktus variants on page 0"))
    return [
        f"Kaktus {settings.kaktus_url}: logged in; recordsTotal={total}, "
        f"{len(products)} products on page 0",
        f"  catalogue shape on page 0: {nested} products with a variants list, "
        f"{len(products) - nested} that are one variant each",
        f"  variant keys: {', '.join(sorted({str(k) for v in variants for k in v})) or '-'}",
        f"  stock entry keys (a variant's own where it has no stock list): "
        f"{', '.join(sorted(stock_keys)) or '-'}",
        f"  stock read (KAK2C_STOCK_FIELD={settings.stock_setting}), variants on page 0 by "
        f"figure: {index.stock_rules_text() or '-'}",
        f"  barcodes read from {index.barcode_field} (KAK2C_BARCODE_FIELD="
        f"{settings.kaktus_barcode_field}, as resolved on page 0): {index.with_barcode} of "
        f"{index.variants} variants on page 0 carry one",
        f"  on page 0: {len(index.quantities)} barcodes, {len(index.duplicates)} duplicated, "
        f"{index.unknown} variants with unreadable stock"]


def run_check(job: Job) -> int:
    """Log in to both APIs, read one page of each, print what was found, then a verdict:
    `ready`, or each problem found with its fix; write nothing. Exit 0 when ready, 2 (a setup
    to fix) when not; an API that fails otherwise is exit 3, as in a run."""
    problems = list(job.setup)
    for check in (check_insales, check_kaktus):
        try:
            lines = check(job, problems)
        except CredentialsRejected as exc:
            problems.append(str(exc))
            continue
        for line in lines:
            print(clean(line))
    if not problems:
        print("ready")
        return EXIT_OK
    print(f"not ready: {len(problems)} {'problem' if len(problems) == 1 else 'problems'} to fix")
    for problem in problems:
        print(clean(f"  - {problem}"))
    return EXIT_CONFIG


def run_demo(options: Options, sleep: Callable[[float], None]) -> None:
    """Play the whole story against the bundled sandbox: plan, sync, a sale held, released."""
    import sandbox

    with sandbox.Sandbox.sample(kaktus_stock="available") as box, \
            tempfile.TemporaryDirectory() as folder:
        job = make_job(load_settings(box.env(folder)), sleep, box.clock)
        print(f"Demo: InSales sandbox at {box.insales.url}, Kaktus sandbox at {box.kak2c.url}\n")

        def step(title: str, dry_run: bool = False) -> None:
            print(f"== {title}")
            started = box.clock()
            result = sync_once(job, Options(dry_run=dry_run, progress=options.progress),
                               Memory())  # each step a cron run of its own
            summary = make_summary(result, job.requests_sent(), box.clock() - started)
            caught_up = summary["caught_up_after_s"]
            print(f"status={summary['status']} matched={summary['matched']} "
                  f"changed={summary['changed']} updated={summary['updated']} "
                  f"held_units={summary['held_units']}"
                  + (f" caught_up_after_s={caught_up:g}" if caught_up is not None else "")
                  + f"; requests: InSales {summary['requests']['insales']}, Kaktus "
                  f"{summary['requests']['kak2c']}; {summary['duration_s']:.2f} s\n")

        barcode, stock, before = "4600000000994", 5, 3
        variant = box.add_demo_pair(barcode, stock, shown=before)
        step("1. Dry run: what would change", dry_run=True)
        step(f"2. Real sync (barcode {barcode} among them: {before} -> {stock})")
        box.advance(60)
        box.insales.sell(variant, 2)
        print(f"-- A customer buys 2 pairs of barcode {barcode} in InSales: {stock} -> "
              f"{stock - 2}, the very figure it showed before our write. Kaktus has not seen "
              f"the order yet: it still says {stock}.")
        step("3. The next run: the sale is held, not undone", dry_run=True)
        step(f"4. Real sync: InSales keeps {stock - 2}")
        box.advance(60)
        box.kak2c.set_stock(barcode, stock, reserved=2)
        print(f"-- The order reaches Kaktus, which reserves 2 pairs for it: what it can sell "
              f"(stockAvailable) {stock} -> {stock - 2}.")
        step("5. Kaktus caught up: the hold is released, nothing to write")
        print(f"InSales shows {box.insales.variant(variant)['quantity']} for barcode {barcode}: "
              "the sold pairs were never put back on sale.\n")
        box.advance(60)
        box.kak2c.set_stock(barcode, stock, reserved=4)
        print(f"-- A marketplace order (OZON, say) reserves 2 more pairs in Kaktus: stockAvailable "
              f"{stock - 2} -> {stock - 4}, while stockTotal stays {stock} until both ship.")
        step("6. Real sync: InSales offers only what Kaktus can sell")
        print(f"InSales shows {box.insales.variant(variant)['quantity']} for barcode {barcode}: "
              "the 4 pairs reserved in Kaktus are not offered (KAK2C_STOCK_FIELD=auto).")


def parse_args(argv) -> argparse.Namespace:
    settings = "\n".join(f"  {s.name:<23} {s.meaning}" + (f" [{s.default}]" if s.default else "")
                         for s in SETTINGS)
    parser = argparse.ArgumentParser(
        prog="sync_stock.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Set every InSales variant's stock to what Kaktus (kak2c.ru) can sell of the "
                    "same barcode, less the sales Kaktus has not seen yet. One run, then exit: put "
                    "it in a crontab; or --watch: sync every few seconds until stopped.",
        epilog="settings, from the environment and .env (see .env.example and README.md):\n"
               + settings)
    parser.add_argument("--dry-run", action="store_true", help="plan and print, write nothing")
    parser.add_argument("--env-file", metavar="PATH",
                        help="settings file instead of the .env beside sync_stock.py")
    parser.add_argument("--json", action="store_true",
                        help="print the run summary as JSON (with --watch: a line per sync)")
    parser.add_argument("--report", metavar="PATH", help="write a CSV row per barcode seen")
    parser.add_argument("--force", action="store_true",
                        help="write even if the guard finds too many zeroes (never a setup that "
                             "can sync nothing)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less logging")
    parser.add_argument("--check", action="store_true",
                        help="log in to both APIs, read one page of each, print what was "
                             "found, then `ready` (exit 0) or each problem with its fix (exit 2)")
    parser.add_argument("--demo", action="store_true",
                        help="dry run and real sync against the bundled local sandbox")
    parser.add_argument("--watch", action="store_true",
                        help="keep syncing, one sync every SYNC_INTERVAL seconds, until stopped")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    clashing = [flag for flag, given in (("--dry-run", args.dry_run), ("--force", args.force),
                                         ("--report", args.report), ("--check", args.check),
                                         ("--demo", args.demo)) if given]
    if args.watch and clashing:
        parser.error(f"--watch cannot go with {', '.join(clashing)}")
    return args


def open_job(args: argparse.Namespace, sleep: Callable[[float], None],
             clock: Callable[[], float]) -> Job:
    """Read the settings, open the log file, say what looks wrong in the setup, check the
    files a run writes; send nothing."""
    environment = load_environment(args.env_file)
    settings = load_settings(environment.values)
    if settings.log_file:
        add_log_file(settings.log_file, args.verbose > 0)
    setup = tuple(setup_warnings(environment, settings, os.environ))
    for warning in setup:
        log.warning("%s", warning)
    for name, path in (("KAK2C_TOKEN_FILE", settings.token_file),
                       ("SYNC_STATE_FILE", settings.state_file),
                       ("METRICS_FILE", settings.metrics_file)):
        if path:
            check_writable(name, path)
    return make_job(settings, sleep, clock, setup)


def dispatch(args: argparse.Namespace, job: Job, wait: Callable[[float], bool] | None) -> int:
    """Do what the command line asks under the lock: a check, one sync, or a watch; the exit
    code."""
    with hold_lock(job.settings.lock_file) as locked:
        if not locked:  # a run or a watch is at work: cron's minute passes quietly
            log.info("another run holds %s; skipped", job.settings.lock_file)
            report_sync(args, job, Memory(), SyncResult(Status.SKIPPED), 0.0)
            return EXIT_OK
        if args.check:
            return run_check(job)
        metrics = job.settings.metrics_file
        memory = Memory(args.watch, read_last_success(metrics) if metrics else None)
        if not args.watch:
            options = Options(report=Path(args.report) if args.report else None,
                              dry_run=args.dry_run, force=args.force, plan_to_stderr=args.json,
                              progress=sys.stderr.isatty() and not args.quiet)
            return run_once(args, job, options, memory)
        if wait is not None:
            return watch(args, job, memory, wait)
        with stop_on_signals() as stop:
            return watch(args, job, memory, stop.wait)


def main(argv=None, sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.time,
         wait: Callable[[float], bool] | None = None) -> int:
    """Run the command line; the one place that turns errors into exit codes.

    `sleep` is every wait of the retry policy, `clock` the time that dates and expires holds
    and paces a watch, `wait(seconds)` a watch's wait between syncs, True to stop (by default
    the wait that SIGTERM and SIGINT end): tests pass their own to run in simulated time.
    """
    args = parse_args(argv)
    SECRETS.clear()
    configure_logging(args.verbose - args.quiet)
    job = None
    try:
        with paused_gc():
            if args.demo:
                run_demo(Options(progress=sys.stderr.isatty() and not args.quiet), sleep)
                return EXIT_OK
            job = open_job(args, sleep, clock)
            return dispatch(args, job, wait)
    except SyncError as exc:  # no sync began: a configuration error, a failed --check
        log.error("configuration error: %s" if exc.exit_code == EXIT_CONFIG else "%s", exc)
        return exc.exit_code
    except BaseException:
        if job is not None:  # a bug: the monitor hears of it too, and the traceback shows
            ping_healthcheck(job.settings, "/fail")
        raise


if __name__ == "__main__":
    sys.exit(main())
