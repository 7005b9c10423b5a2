#!/usr/bin/env python3
"""Keep every InSales variant's stock equal to the Kaktus (kak2c.ru) stock for the same barcode.

One run, then exit: meant for a once-a-minute cron line. SPEC.md is the contract (flags, settings,
exit codes, summary keys). The module reads top to bottom as the pipeline it runs:
settings -> logging and lock -> HTTP -> Kaktus token -> the two reads -> pure join, plan and
guard -> write -> state, report and summary -> main().
"""
from __future__ import annotations

import argparse
import base64
import csv
import email.utils
import fcntl
import gc
import hashlib
import heapq
import io
import itertools
import json
import logging
import logging.handlers
import math
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import requests
from dotenv import dotenv_values

__version__ = "1.0.0"

HERE = Path(__file__).resolve().parent
log = logging.getLogger("sync_stock")

INSALES_PAGE = 250          # the documented per_page maximum
WRITE_BATCH = 100           # variants_group_update: keep to 100 variants a call
KAK2C_THREADS = 4           # Kaktus pages are numbered, so a few can be fetched at once
ATTEMPTS = 5                # per request, for transport errors, 5xx and rate limits
BACKOFF = 0.5               # seconds, doubled per attempt
TOKEN_MARGIN = 120          # renew the Kaktus token this many seconds before its exp
TOKEN_TTL = 14400           # when neither the JWT's exp nor expires_in can be read
RATE_WINDOW = 300           # InSales: 500 requests per 5 minutes
GUARD_MIN_ZEROED = 10       # the zeroing guard only speaks from this many zeroed variants
AUTO_INCREMENTAL_PRODUCTS = 12_500  # over 50 pages a full walk costs half the budget a minute
CURSOR_REWIND = timedelta(seconds=2)  # InSales times may have one-second resolution
WALK_START = "2000-01-01T00:00:00.000+00:00"
DRY_RUN_ROWS = 50
EXIT_OK, EXIT_PARTIAL, EXIT_CONFIG, EXIT_UPSTREAM, EXIT_REFUSED = 0, 1, 2, 3, 4


class SyncError(Exception):
    """A run that cannot go on: the message tells the operator what is wrong."""

    exit_code = EXIT_UPSTREAM
    status = "failed"


class ConfigError(SyncError):
    exit_code = EXIT_CONFIG


class UpstreamError(SyncError):
    exit_code = EXIT_UPSTREAM


class GuardRefused(SyncError):
    exit_code = EXIT_REFUSED
    status = "refused"


# --- settings ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    insales_url: str
    insales_key: str
    insales_password: str = field(repr=False)
    warehouse: int | None
    kak2c_url: str
    kak2c_credentials: bytes = field(repr=False)  # the login body, posted as-is
    token_file: Path
    stock_field: str
    lock_file: Path
    mode: str
    full_every: int
    state_file: Path
    max_wait: float
    timeout: float
    guard_zero_share: float
    log_file: Path | None
    healthcheck_url: str | None

    @property
    def quantity_field(self) -> str:
        if self.warehouse is None:
            return "quantity"
        return f"quantity_at_warehouse{self.warehouse}"

    @property
    def secrets(self) -> set:
        """What must never reach a log line: the passwords, whatever the credentials JSON holds."""
        try:
            fields = json.loads(self.kak2c_credentials)
        except ValueError:
            fields = {}
        hidden = {str(v) for k, v in fields.items() if k != "login" and isinstance(v, (str, int))}
        return {s for s in hidden | {self.insales_password} if s}


def read_environment(env_file: str | None = None) -> dict:
    """Merge the `.env` file (or --env-file) under the real environment, which always wins."""
    path = Path(env_file) if env_file else HERE / ".env"
    if env_file and not path.is_file():
        raise ConfigError(f"--env-file {env_file}: no such file")
    values = {}
    if path.is_file():
        try:
            values = {k: v for k, v in dotenv_values(path).items() if v is not None}
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read ({exc.__class__.__name__})") from None
    values.update(os.environ)
    return values


def load_settings(values: dict) -> Settings:
    """Build Settings from a mapping of variables, naming the first one that is missing or wrong."""
    def get(name, default=None):
        return (values.get(name) or "").strip() or default

    def number(name, default, kind=int, low=0.0, high=math.inf):
        raw = get(name)
        if raw is None:
            return default
        try:
            value = kind(raw)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            noun = "whole number" if kind is int else "number"
            bounds = f"of at least {low:g}" if high == math.inf else f"from {low:g} to {high:g}"
            raise ConfigError(f"{name}={raw!r} is not a {noun} {bounds}")
        return value

    mode = get("SYNC_MODE", "auto")
    if mode not in ("auto", "full", "incremental"):
        raise ConfigError(f"SYNC_MODE={mode!r} must be one of auto, full, incremental")
    log_file = get("LOG_FILE")
    return Settings(
        insales_url=_read_url(get, "INSALES_URL", required=True).removesuffix("/admin"),
        insales_key=_require(get, "INSALES_API_KEY"),
        insales_password=_require(get, "INSALES_API_PASSWORD"),
        warehouse=number("INSALES_WAREHOUSE", None),
        kak2c_url=_read_url(get, "KAK2C_URL", default="https://app.kak2c.ru"),
        kak2c_credentials=_read_kak2c_credentials(get),
        token_file=_path(get("KAK2C_TOKEN_FILE", "files/kak2c_token")),
        stock_field=get("KAK2C_STOCK_FIELD", "stockTotal"),
        lock_file=_path(get("SYNC_LOCK_FILE", "files/sync_stock.lock")),
        mode=mode,
        full_every=number("SYNC_FULL_EVERY", 60, low=1),
        state_file=_path(get("SYNC_STATE_FILE", "files/sync_state.json")),
        max_wait=number("SYNC_MAX_WAIT", 120.0, float),
        timeout=number("SYNC_TIMEOUT", 60.0, float, low=0.1),
        guard_zero_share=number("SYNC_GUARD_ZERO_SHARE", 0.5, float, high=1.0),
        log_file=_path(log_file) if log_file else None,
        healthcheck_url=_read_url(get, "HEALTHCHECK_URL"),
    )


def _require(get, name):
    value = get(name)
    if value is None:
        raise ConfigError(f"{name} is not set (see .env.example)")
    return value


def _read_url(get, name, default=None, required=False):
    url = _require(get, name) if required else get(name, default)
    if url is None:
        return None
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https") or not rest:
        raise ConfigError(f"{name}={url!r} is not an http(s) URL")
    if "@" in rest.split("/", 1)[0]:
        raise ConfigError(f"{name} must not carry credentials; use the key and password settings")
    return url.rstrip("/")


def _read_kak2c_credentials(get) -> bytes:
    login, password = get("KAK2C_LOGIN"), get("KAK2C_PASSWORD")
    if login or password:
        if not (login and password):
            raise ConfigError("KAK2C_LOGIN and KAK2C_PASSWORD go together: set both or neither")
        return json.dumps({"login": login, "password": password}).encode()
    path = _path(get("KAK2C_CREDENTIALS_FILE", "files/kak2c_info"))
    try:
        body = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"KAK2C_CREDENTIALS_FILE {path}: cannot read ({exc.strerror}); "
                          "copy files/kak2c_info.example there or set KAK2C_LOGIN") from None
    try:
        valid = isinstance(json.loads(body), dict)
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError(f"KAK2C_CREDENTIALS_FILE {path}: not a JSON object like "
                          '{"login": ..., "password": ...}')
    return body


def _path(value: str) -> Path:
    """Resolve a settings path against the script's folder: cron starts in $HOME."""
    return HERE / Path(value).expanduser()


# --- logging, lock, small files ---------------------------------------------------------------

class RedactSecrets(logging.Filter):
    """Replace every known secret in a log record, whatever path it took to get there."""

    def __init__(self):
        super().__init__()
        self.secrets: set = set()

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "<hidden>")
        return text

    def filter(self, record):
        if self.secrets:
            record.msg, record.args = self.redact(record.getMessage()), None
        return True


redactor = RedactSecrets()


class IsoFormatter(logging.Formatter):
    def formatTime(self, record, datefmt=None):
        return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="seconds")


def configure_logging(verbosity: int) -> None:
    """Log to stderr: -v shows details, -q only warnings and errors."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(max(verbosity, -1), logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)
    _install_handler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False


def add_log_file(path: Path, verbose: bool) -> None:
    """Also log to a rotating file: the summary line at INFO, details with -v."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=1_000_000, backupCount=5, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"LOG_FILE {path}: cannot open ({exc.strerror})") from None
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    _install_handler(handler)


def _install_handler(handler: logging.Handler) -> None:
    handler.setFormatter(IsoFormatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(redactor)
    log.addHandler(handler)


def reset_logging() -> None:
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    redactor.secrets.clear()


@contextmanager
def hold_lock(path: Path) -> Iterator[bool]:
    """Yield True while this process holds the run lock, False when another run has it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 - the with below closes it
    except OSError as exc:
        raise ConfigError(f"SYNC_LOCK_FILE {path}: cannot open ({exc.strerror})") from None
    with handle:
        try:
            # The kernel drops a flock when its holder dies, even by kill -9.
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def write_atomically(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a file so that a reader sees the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            out.write(text)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def read_json_file(path: Path):
    """Return a JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
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


# --- HTTP -------------------------------------------------------------------------------------

def make_session(base_url: str, timeout: float) -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = f"sync_stock/{__version__} (+InSales-Kaktus stock sync)"
    session.request_timeout = (min(10.0, timeout), timeout)
    # Proxies and CA bundle from the environment (HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE…),
    # read once for this API rather than again on each of its hundreds of requests.
    found = session.merge_environment_settings(base_url, {}, None, None, None)
    session.proxies, session.verify = found["proxies"], found["verify"]
    session.trust_env = False
    return session


class Api:
    """One upstream API: its session, base URL, request count and retry policy."""

    def __init__(self, name: str, base_url: str, settings: Settings, auth=None):
        self.name = name
        self.base_url = base_url
        self.max_wait = settings.max_wait
        self.session = make_session(base_url, settings.timeout)
        self.session.auth = auth
        self.requests = 0
        self._count = threading.Lock()

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        """Send one call; retry transport errors, 5xx and rate limits; return any other answer."""
        where = f"{self.name} {method} {path}"
        for attempt in range(1, ATTEMPTS + 1):
            with self._count:
                self.requests += 1
            try:
                response = self.session.request(method, self.base_url + path,
                                                timeout=self.session.request_timeout,
                                                stream=True, **kwargs)
                # The body in one read: requests' .content takes it 10 KB at a time, each a
                # trip through urllib3, which costs half as much CPU again on a big catalogue.
                response._content = b"".join(response.iter_content(None))
            except requests.RequestException as exc:
                problem, wait = exc.__class__.__name__, BACKOFF * 2 ** (attempt - 1)
            else:
                problem, wait = self._judge(response, where, attempt)
                log.debug("%s %s: HTTP %s in %.2f s", where, kwargs.get("params") or "",
                          response.status_code, response.elapsed.total_seconds())
                if problem is None:
                    return response
            if attempt < ATTEMPTS:
                log.warning("%s: %s; retrying in %.1f s", where, problem, wait)
                time.sleep(wait)
        raise UpstreamError(f"{where}: {problem}, {ATTEMPTS} attempts; giving up")

    def _judge(self, response, where, attempt):
        status = response.status_code
        if status in (429, 503):  # InSales said 503 for its rate limit before 2023
            wait = retry_after(response, BACKOFF * 2 ** (attempt - 1))
            if wait > self.max_wait:
                raise UpstreamError(f"{where}: rate limited for {wait:.0f} s, longer than "
                                    f"SYNC_MAX_WAIT={self.max_wait:g}; giving up")
            return f"HTTP {status} (rate limit)", wait
        if status >= 500:
            return f"HTTP {status}", BACKOFF * 2 ** (attempt - 1)
        self._slow_down(response)
        return None, 0

    def _slow_down(self, response):
        """Pace requests when API-Usage-Limit says the budget is nearly spent, before a 429."""
        used, _, limit = response.headers.get("API-Usage-Limit", "").partition("/")
        if not (used.isdigit() and limit.isdigit() and int(limit) > 0):
            return
        if int(limit) - int(used) <= max(5, int(limit) // 50):
            log.debug("%s: API-Usage-Limit %s/%s, slowing down", self.name, used, limit)
            time.sleep(RATE_WINDOW / int(limit))


def retry_after(response, default: float) -> float:
    """Read Retry-After as seconds or an HTTP date; fall back to the backoff."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return default


def read_json(response: requests.Response, where: str, kind: type):
    """Return the JSON body of a 200 answer if it is of the expected kind, else fail clearly."""
    if response.status_code != 200:
        raise UpstreamError(f"{where}: HTTP {response.status_code}{_error_detail(response)}")
    try:
        # json.loads on bytes: requests' .json() may guess the charset, slowly, on large bodies.
        body = json.loads(response.content)
    except ValueError:
        kind_seen = response.headers.get("Content-Type", "no Content-Type")
        raise UpstreamError(f"{where}: the answer is not JSON ({kind_seen})") from None
    if not isinstance(body, kind):
        raise UpstreamError(f"{where}: expected a JSON {_kind_name(kind)}, "
                            f"got {_kind_name(type(body))}")
    return body


def _kind_name(kind):
    return {list: "list", dict: "object"}.get(kind, kind.__name__)


def _error_detail(response) -> str:
    try:
        body = json.loads(response.content)
    except ValueError:
        return ""
    errors = body.get("errors", body) if isinstance(body, dict) else body
    return f": {json.dumps(errors, ensure_ascii=False)[:200]}"


# --- Kaktus token -----------------------------------------------------------------------------

class KaktusToken(requests.auth.AuthBase):
    """Bearer auth with the cached JWT: log in when it is missing, near its exp, or refused."""

    def __init__(self, api: Api, credentials: bytes, cache: Path):
        self.api = api
        self.credentials = credentials
        self.cache = cache
        self.account = hashlib.sha256(api.base_url.encode() + b"\0" + credentials).hexdigest()
        self.value: str | None = None
        self.renew_at = 0.0  # shortly before the token's exp
        self.lock = threading.Lock()

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self.current()}"
        return request

    def current(self) -> str:
        with self.lock:
            if self.value is None:
                self._load_cache()
            if self.value is None or self.renew_at <= time.time():
                self._log_in()
            return self.value

    def renew(self, refused_header: str) -> None:
        """Log in again, unless another thread already replaced the refused token."""
        with self.lock:
            if refused_header == f"Bearer {self.value}":
                log.info("Kaktus refused the token (expired?); logging in again")
                self._log_in()

    def _load_cache(self):
        cached = read_json_file(self.cache)
        if isinstance(cached, dict) and cached.get("account") == self.account:
            token, renew_at = cached.get("access_token"), cached.get("renew_at")
            if isinstance(token, str) and isinstance(renew_at, (int, float)):
                self.value, self.renew_at = token, float(renew_at)
                redactor.secrets.add(token)

    def _log_in(self):
        response = self.api.request("POST", "/api/lite/auth", data=self.credentials,
                                    headers={"Content-Type": "application/json"})
        if response.status_code in (401, 403):
            raise UpstreamError(f"Kaktus rejected the credentials (HTTP {response.status_code}); "
                                "check KAK2C_CREDENTIALS_FILE or KAK2C_LOGIN/KAK2C_PASSWORD")
        body = read_json(response, "Kaktus login", dict)
        token = body.get("access_token")
        if not isinstance(token, str) or not token.strip():
            if body.get("success") is False:
                raise UpstreamError(f"Kaktus rejected the credentials{_error_detail(response)}")
            raise UpstreamError("Kaktus login answer is malformed: no access_token")
        redactor.secrets.add(token)
        self.value, now = token, time.time()
        expires_at = token_expiry(token, body.get("expires_in"), now)
        # Renew TOKEN_MARGIN before exp, or a quarter of the lifetime for short-lived tokens.
        self.renew_at = expires_at - min(TOKEN_MARGIN, max(0.0, expires_at - now) / 4)
        try:
            write_atomically(self.cache, json.dumps({
                "account": self.account, "access_token": token, "expires_at": expires_at,
                "renew_at": self.renew_at}))
        except OSError as exc:
            raise ConfigError(f"KAK2C_TOKEN_FILE {self.cache}: cannot write ({exc.strerror})") \
                from None
        log.debug("Kaktus token cached until %s", datetime.fromtimestamp(expires_at))


def token_expiry(token: str, expires_in, now: float) -> float:
    """Take the JWT's exp claim as the truth; expires_in, then 4 hours, as fallbacks."""
    try:
        payload = token.split(".")[1]
        exp = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"]
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            return float(exp)
    except (IndexError, ValueError, KeyError, TypeError):
        pass
    if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) and expires_in > 0:
        return now + expires_in
    return now + TOKEN_TTL


def is_token_refused(response: requests.Response) -> bool:
    """Tell an expired or refused token; its answer may come as HTTP 401 or as 200."""
    if response.status_code == 401:
        return True
    if len(response.content) > 4096 or b"401" not in response.content:
        return False  # a catalogue page, not the short error body: don't parse it twice
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    errors = body.get("errors") if isinstance(body, dict) else None
    return isinstance(errors, list) and any(
        isinstance(e, dict) and str(e.get("code")) == "401" for e in errors)


# --- reading Kaktus ---------------------------------------------------------------------------

def fetch_kak2c_page(api: Api, token: KaktusToken, page: int) -> requests.Response:
    """Fetch one Kaktus page, logging in again once when the token is refused."""
    response = api.request("GET", "/api/lite/products", params={"page": page}, auth=token)
    if is_token_refused(response):
        token.renew(response.request.headers.get("Authorization", ""))
        response = api.request("GET", "/api/lite/products", params={"page": page}, auth=token)
        if is_token_refused(response):
            raise UpstreamError(f"Kaktus GET /api/lite/products?page={page}: "
                                "a fresh token was refused too (HTTP 401)")
    return response


def read_kak2c_page(response: requests.Response, page: int) -> tuple:
    """Return (products, recordsTotal) from a Kaktus page answer, or fail naming what is wrong."""
    where = f"Kaktus GET /api/lite/products?page={page}"
    body = read_json(response, where, dict)
    if body.get("success") is False:
        raise UpstreamError(f"{where}: error answer{_error_detail(response)}")
    products, total = body.get("products"), body.get("recordsTotal")
    if not isinstance(products, list):
        raise UpstreamError(f"{where}: no products list in the answer")
    if isinstance(total, str) and total.isdigit():
        total = int(total)
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise UpstreamError(f"{where}: recordsTotal is missing or not a count")
    return products, total


def walk_kak2c(api: Api, token: KaktusToken, progress: Progress,
               after: Future | None = None) -> Iterator[list]:
    """Yield Kaktus pages of new products until recordsTotal is held or a page comes back empty.

    Page 0 tells recordsTotal and the page size, so the remaining pages are fetched a few at a
    time. The threads only fetch; the pages are parsed here, and only once `after` is done: the
    InSales walk, which parses its own pages in its own thread. Two threads parsing at once take
    turns on the GIL and spoil each other's caches (6% more CPU at 100,000 variants). A full
    keyset walk is the longer read, so the Kaktus pages wait for it in memory, already fetched;
    an incremental one is short. A server that repeats itself or promises more than it holds
    ends the walk with an error rather than a loop or a partial catalogue.
    """
    first, total = read_kak2c_page(fetch_kak2c_page(api, token, 0), 0)
    seen: set = set()
    yield _new_products(first, seen)
    planned = math.ceil(total / len(first)) if first else 1
    last, number = first, 0

    def fetch(page: int) -> requests.Response:
        answer = fetch_kak2c_page(api, token, page)
        progress.update("Kaktus", page + 1, planned)
        return answer

    with ThreadPoolExecutor(KAK2C_THREADS) as pool:
        answers = pool.map(fetch, range(1, planned))
        try:
            if after is not None:
                after.result()  # an InSales failure stops the Kaktus pages still to come
            for number, answer in enumerate(answers, start=1):
                last, _ = read_kak2c_page(answer, number)
                yield _new_products(last, seen)
        except BaseException:
            # A page that failed after its retries ends the walk: don't retry all the others.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    # The catalogue may have grown while we read: go on, one page at a time, while pages are full.
    while len(seen) < total and len(last) >= len(first) > 0 and number < 2 * planned:
        number += 1
        last, _ = read_kak2c_page(fetch_kak2c_page(api, token, number), number)
        fresh = _new_products(last, seen)
        if not fresh:
            break
        yield fresh
    if len(seen) < total:
        raise UpstreamError(f"Kaktus catalogue is inconsistent: recordsTotal is {total} but "
                            f"{len(seen)} distinct products came in {number + 1} pages")


def _new_products(products: list, seen: set) -> list:
    """Keep the products not seen before, by id (a repeated page adds nothing)."""
    fresh = []
    for product in products:
        key = product.get("id") if isinstance(product, dict) else None
        key = json.dumps(product, sort_keys=True) if key is None else str(key)
        if key not in seen:
            seen.add(key)
            fresh.append(product)
    return fresh


# --- reading InSales --------------------------------------------------------------------------

def walk_insales(api: Api, since: str, from_id: int, progress: Progress) -> Iterator[tuple]:
    """Yield (page of products, cursor after it) along InSales' documented keyset walk."""
    seen = set()
    for number in itertools.count(1):
        params = {"updated_since": since, "from_id": from_id, "per_page": INSALES_PAGE, "page": 1}
        response = api.request("GET", "/admin/products.json", params=params)
        page = read_json(response, "InSales GET /admin/products.json", list)
        if page:
            cursor = _anchor(page[-1])
            if cursor in seen or cursor == (since, from_id):
                raise UpstreamError(f"InSales keyset walk does not advance: page {number} ends at "
                                    f"updated_at={cursor[0]} id={cursor[1]} again")
            seen.add(cursor)
            since, from_id = cursor
        progress.update("InSales", number)
        yield page, (since, from_id)
        if len(page) < INSALES_PAGE:
            return


def _anchor(product) -> tuple:
    if isinstance(product, dict):
        updated_at, product_id = product.get("updated_at"), product.get("id")
        if isinstance(updated_at, str) and isinstance(product_id, int):
            return updated_at, product_id
    raise UpstreamError("InSales GET /admin/products.json: the last product of a page has no "
                        "updated_at or id, so the walk cannot go on")


class Variant(NamedTuple):
    id: int
    product_id: int
    barcode: str | None
    quantity: int | None
    title: str


def read_insales_product(product, quantity_field: str) -> list | None:
    """Return a product's variants as Variant tuples, or None for a malformed product."""
    if not isinstance(product, dict) or not isinstance(product.get("id"), int):
        return None
    variants = product.get("variants")
    if not isinstance(variants, list):
        return None
    title = str(product.get("title") or "")
    result = []
    for variant in variants:
        if not isinstance(variant, dict) or not isinstance(variant.get("id"), int):
            return None
        name = variant.get("title")
        result.append(Variant(
            variant["id"], product["id"], normalize_barcode(variant.get("barcode")),
            to_quantity(variant.get(quantity_field)),
            f"{title} / {name}" if name and name != title else title))
    return result


@dataclass
class Catalogue:
    """InSales variants by id, with where the walk ended: the merged state of the shop."""

    variants: dict
    cursor: tuple
    full_walk_at: float
    skipped: int = 0
    products: int = 0


def fetch_insales_catalogue(api: Api, settings: Settings, state: Catalogue | None,
                            full: bool, progress: Progress) -> Catalogue:
    """Read the whole catalogue, or only what changed since the state's cursor."""
    if full or state is None:
        catalogue = Catalogue({}, (WALK_START, 0), time.time())
        since, from_id = WALK_START, 0
    else:
        catalogue = state
        since, from_id = rewind(state.cursor[0]), 0
    by_product: dict = {}  # product id -> its variants
    for variant in catalogue.variants.values():
        by_product.setdefault(variant.product_id, []).append(variant)
    quantity_field = settings.quantity_field
    for page, cursor in walk_insales(api, since, from_id, progress):
        if page:  # an empty page leaves the cursor where the last product was
            catalogue.cursor = cursor
        for product in page:
            variants = read_insales_product(product, quantity_field)
            if variants is None:
                catalogue.skipped += 1
                log.warning("InSales: skipped a malformed product (id %s)",
                            product.get("id") if isinstance(product, dict) else "?")
                continue
            for old in by_product.pop(product["id"], ()):
                del catalogue.variants[old.id]
            by_product[product["id"]] = variants
            catalogue.variants.update((v.id, v) for v in variants)
    catalogue.products = len(by_product)
    return catalogue


def rewind(updated_at: str) -> str:
    """Step a little before an InSales time, so that no change in the same second is lost."""
    try:
        moment = datetime.fromisoformat(updated_at.replace("Z", "+00:00"))
    except ValueError:
        return WALK_START
    return (moment - CURSOR_REWIND).isoformat(timespec="milliseconds")


# --- the pure core: barcodes, quantities, join, plan, guard -----------------------------------

def normalize_barcode(value) -> str | None:
    """Trim a barcode; pad a digits-only GTIN to 14 digits; None when there is none."""
    if type(value) is not str:  # noqa: E721 - exact types: bool is no barcode
        if type(value) is not int:  # noqa: E721
            return None
        value = str(value)
    text = value.strip()
    if not text:
        return None
    if text.isdigit() and text.isascii():
        return text.zfill(14)
    return text


def to_quantity(value) -> int | None:
    """Read a stock figure (int, float or numeric string) as a whole number; None if unreadable."""
    if type(value) is int:  # noqa: E721 - the common case first; bool is not a quantity
        return value
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, float):
        return math.floor(value) if math.isfinite(value) else None
    return None


def read_barcodes(record: dict) -> Collection[str]:
    """Collect a Kaktus variant's barcodes from every shape it may use."""
    many = record.get("barcodes")
    if many is None:  # the common shape, one barcode string: the fast way
        code = normalize_barcode(record.get("barcode"))
        return (code,) if code else ()
    values = [record.get("barcode")]
    for item in many if isinstance(many, list) else []:
        if isinstance(item, dict):
            item = next((item[k] for k in ("barcode", "value", "code") if item.get(k)), None)
        values.append(item)
    return {code for code in map(normalize_barcode, values) if code}


def read_stock(record: dict, stock_field: str) -> int | None:
    """Sum a Kaktus variant's stock entries; None (unknown, never 0) if any is unreadable."""
    stock = record.get("stock")
    if isinstance(stock, dict):
        stock = [stock]
    if not isinstance(stock, list):
        return None
    total = 0
    for entry in stock:
        quantity = to_quantity(entry.get(stock_field)) if isinstance(entry, dict) else None
        if quantity is None:
            return None
        total += quantity
    return max(total, 0)


@dataclass
class KaktusIndex:
    """Kaktus quantity by barcode (None: unknown stock), and the barcodes held twice."""

    quantities: dict = field(default_factory=dict)
    duplicates: set = field(default_factory=set)
    variants: int = 0
    skipped: int = 0


def index_kak2c(pages: Iterable[list], stock_field: str) -> KaktusIndex:
    """Index Kaktus variants by barcode, in both shapes: product->variants and one per product."""
    index = KaktusIndex()
    quantities, duplicates = index.quantities, index.duplicates
    for products in pages:
        for product in products:
            if not isinstance(product, dict):
                index.skipped += 1
                continue
            variants = product.get("variants")
            for variant in variants if isinstance(variants, list) else [product]:
                if not isinstance(variant, dict):
                    index.skipped += 1
                    continue
                index.variants += 1
                quantity = read_stock(variant, stock_field)
                for barcode in read_barcodes(variant):
                    if barcode in quantities:  # it stays there until all pages are in
                        duplicates.add(barcode)
                    quantities[barcode] = quantity
    for barcode in duplicates:
        quantities.pop(barcode, None)
    return index


class Row(NamedTuple):
    """One barcode's fate: the report's row, and a planned write when action is 'update'."""

    barcode: str
    variant: Variant | None
    kak2c_qty: int | None
    action: str
    reason: str


@dataclass
class Plan:
    """What to write, the counts of the summary, and what is needed to explain every barcode."""

    updates: list       # Rows with action "update", by variant id
    counts: dict
    stocked: int        # matched variants that have stock in InSales now
    zeroed: int         # of those, how many the plan sets to 0
    unique: dict        # barcode -> the one InSales variant holding it
    shared: dict        # barcode -> the InSales variants holding it together
    kak2c: KaktusIndex

    def rows(self) -> Iterator[Row]:
        """Yield every barcode's fate, for the report: built only when it is asked for."""
        quantities, duplicates = self.kak2c.quantities, self.kak2c.duplicates
        for barcode, held in self.shared.items():
            for variant in held:
                yield Row(barcode, variant, quantities.get(barcode), "skip", "duplicate in InSales")
        for barcode, variant in self.unique.items():
            quantity = quantities.get(barcode)
            if barcode in duplicates:
                yield Row(barcode, variant, None, "skip", "duplicate in Kaktus")
            elif barcode not in quantities:
                yield Row(barcode, variant, None, "skip", "not in Kaktus")
            elif quantity is None:
                yield Row(barcode, variant, None, "skip", "unknown stock")
            elif quantity != variant.quantity:
                yield Row(barcode, variant, quantity, "update", "stock differs")
            else:
                yield Row(barcode, variant, quantity, "unchanged", "same stock")
        for barcode, quantity in quantities.items():
            if barcode not in self.unique and barcode not in self.shared:
                yield Row(barcode, None, quantity, "skip", "not in InSales")
        for barcode in duplicates - self.unique.keys() - self.shared.keys():
            yield Row(barcode, None, None, "skip", "duplicate in Kaktus")


def plan_updates(variants: Collection[Variant], kak2c: KaktusIndex) -> Plan:
    """Join both sides by barcode and plan a write for every matched quantity that differs."""
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
    quantities = kak2c.quantities
    updates, matched, unknown, stocked, zeroed = [], 0, 0, 0, 0
    # One pass in the catalogue's own order: walking a set of barcodes instead jumps around
    # memory, and at 100,000 variants that alone cost more than this whole loop.
    for barcode, variant in unique.items():
        if barcode not in quantities:
            continue
        matched += 1
        quantity = quantities[barcode]
        has_stock = variant.quantity is not None and variant.quantity > 0
        stocked += has_stock
        if quantity is None:
            unknown += 1
        elif quantity != variant.quantity:
            updates.append(Row(barcode, variant, quantity, "update", "stock differs"))
            zeroed += has_stock and quantity == 0
    updates.sort(key=lambda row: row.variant.id)
    counts = {
        "insales_variants": len(variants),
        "insales_with_barcode": len(coded),
        "insales_duplicate_barcodes": len(shared),
        "kak2c_variants": kak2c.variants,
        "kak2c_duplicate_barcodes": len(kak2c.duplicates),
        "matched": matched,
        "changed": len(updates),
        "unmatched_insales": len(unique) - matched - len(kak2c.duplicates & unique.keys()),
        "unmatched_kak2c": len(quantities.keys() - unique.keys() - shared.keys()),
        "unknown_stock": unknown,
    }
    return Plan(updates, counts, stocked, zeroed, unique, shared, kak2c)


def check_guard(plan: Plan, share: float) -> str | None:
    """Say why the plan must not be written (a Kaktus glitch must never empty a shop), or None."""
    if plan.counts["kak2c_variants"] == 0 and plan.counts["insales_with_barcode"] > 0:
        return (f"Kaktus answered no products at all while InSales has "
                f"{plan.counts['insales_with_barcode']} variants with barcodes")
    if plan.zeroed >= GUARD_MIN_ZEROED and plan.zeroed > share * plan.stocked:
        return (f"the plan would set {plan.zeroed} of {plan.stocked} stocked variants to 0, more "
                f"than SYNC_GUARD_ZERO_SHARE={share:g}; run with --force if Kaktus is right")
    return None


# --- writing InSales --------------------------------------------------------------------------

def apply_plan(api: Api, updates: list, quantity_field: str) -> tuple:
    """Write the planned quantities 100 at a time.

    Return (written ids, failed ids, why the writing stopped or None). A rejected batch does not
    stop the others; an API that stays down after the retries does.
    """
    written, failed = [], []
    for start in range(0, len(updates), WRITE_BATCH):
        batch = updates[start:start + WRITE_BATCH]
        body = {"variants": [{"id": r.variant.id, quantity_field: r.kak2c_qty} for r in batch]}
        ids = [r.variant.id for r in batch]
        try:
            response = api.request("PUT", "/admin/products/variants_group_update.json", json=body)
        except UpstreamError as exc:
            rest = [r.variant.id for r in updates[start:]]
            log.error("%s; not written: %d variants (ids %s)", exc, len(rest), _ids(rest))
            return written, failed + rest, str(exc)
        rejected = sorted(rejected_ids(response, ids))
        if rejected:
            log.error("InSales rejected %d of %d variants (HTTP %s%s): ids %s", len(rejected),
                      len(ids), response.status_code, _error_detail(response), _ids(rejected))
        failed.extend(rejected)
        written.extend(i for i in ids if i not in rejected)
    return written, failed, None


def rejected_ids(response: requests.Response, ids: list) -> set:
    """Tell which ids of a batch InSales refused: all on an error status, else those it marks.

    The answer may be per-item statuses or [] (queued): never count on statuses being there.
    """
    if response.status_code != 200:
        return set(ids)
    try:
        items = json.loads(response.content)
    except ValueError:
        return set()
    return {item.get("id") for item in items if isinstance(item, dict)
            and item.get("status") not in (None, "ok") and item.get("id") in ids} \
        if isinstance(items, list) else set()


def _ids(ids: list, most: int = 20) -> str:
    shown = ", ".join(map(str, ids[:most]))
    return shown + (f" and {len(ids) - most} more" if len(ids) > most else "")


# --- state between runs (incremental mode) ----------------------------------------------------

def shop_key(settings: Settings) -> str:
    return f"{settings.insales_url}#{settings.quantity_field}"


def load_state(settings: Settings) -> Catalogue | None:
    """Return the last walk's catalogue; None if it is missing, unreadable or of another shop."""
    data = read_json_file(settings.state_file)
    try:
        if data["shop"] != shop_key(settings):
            return None
        variants = {row[0]: Variant(*row) for row in data["variants"]}
        return Catalogue(variants, tuple(data["cursor"]), float(data["full_walk_at"]),
                         products=int(data["products"]))
    except (TypeError, KeyError, ValueError, IndexError):
        if data is not None:
            log.warning("%s is not a state this version wrote; walking the whole shop",
                        settings.state_file)
        return None


def save_state(settings: Settings, catalogue: Catalogue, written: dict) -> None:
    """Keep the catalogue with the quantities InSales accepted, for the next incremental run."""
    variants = catalogue.variants
    for variant_id, quantity in written.items():
        variants[variant_id] = variants[variant_id]._replace(quantity=quantity)
    write_atomically(settings.state_file, json.dumps({
        "shop": shop_key(settings), "cursor": list(catalogue.cursor),
        "full_walk_at": catalogue.full_walk_at, "walked_at": time.time(),
        "products": catalogue.products, "variants": [list(v) for v in variants.values()],
    }, ensure_ascii=False, separators=(",", ":")))


def needs_full_walk(settings: Settings, state: Catalogue | None) -> bool:
    if settings.mode == "full" or state is None:
        return True
    if settings.mode == "auto" and state.products <= AUTO_INCREMENTAL_PRODUCTS:
        return True
    return time.time() - state.full_walk_at >= settings.full_every * 60


def keeps_state(settings: Settings, catalogue: Catalogue) -> bool:
    return settings.mode == "incremental" or (
        settings.mode == "auto" and catalogue.products > AUTO_INCREMENTAL_PRODUCTS)


# --- output: dry-run table, report, summary, health pings -------------------------------------

def print_plan(plan: Plan, refusal: str | None, report: str | None, out) -> None:
    """Print the planned changes as an aligned table, capped on screen."""
    updates = plan.updates
    shown = heapq.nsmallest(DRY_RUN_ROWS, updates, key=lambda r: (r.variant.title, r.barcode))
    lines = [(r.barcode, str(r.variant.id), r.variant.title[:50],
              f"{_qty(r.variant.quantity)} -> {r.kak2c_qty}") for r in shown]
    header = ("barcode", "variant id", "title", "old -> new")
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(4)]
    for line in [header, *lines] if lines else []:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip(), file=out)
    if len(updates) > DRY_RUN_ROWS:
        hint = f"see {report}" if report else "use --report PATH"
        print(f"... and {len(updates) - DRY_RUN_ROWS} more ({hint} for the full list)", file=out)
    print(f"{len(updates)} changes planned of {plan.counts['matched']} matched variants", file=out)
    if refusal:
        print(f"The safety guard would refuse this plan: {refusal}", file=out)


def _qty(value) -> str:
    return "" if value is None else str(value)


def write_report(path: Path, plan: Plan, outcome: dict) -> None:
    """Write one CSV row per barcode seen, saying what was done and why."""
    rows = sorted(plan.rows(), key=lambda r: (r.barcode, r.variant.id if r.variant else 0))
    lines = [("barcode", "insales_variant_id", "title", "insales_qty", "kak2c_qty",
              "action", "reason")]
    for row in rows:
        variant = row.variant
        action, reason = row.action, row.reason
        if variant and variant.id in outcome:
            action, reason = outcome[variant.id]
        lines.append((row.barcode, variant.id if variant else "", variant.title if variant else "",
                      _qty(variant.quantity) if variant else "", _qty(row.kak2c_qty),
                      action, reason))
    buffer = io.StringIO()
    csv.writer(buffer).writerows(lines)
    write_atomically(path, buffer.getvalue(), mode=0o644)


def ping_healthcheck(url: str | None, suffix: str = "") -> None:
    """Tell a healthchecks.io-style monitor how the run went; never let it fail the run."""
    if not url:
        return
    try:
        requests.get(url + suffix, timeout=5,
                     headers={"User-Agent": f"sync_stock/{__version__}"})
    except requests.RequestException as exc:
        log.warning("healthcheck ping %s failed: %s", suffix or "success", exc.__class__.__name__)


SUMMARY_KEYS = ("status", "mode", "insales_variants", "insales_with_barcode",
                "insales_duplicate_barcodes", "kak2c_variants", "kak2c_duplicate_barcodes",
                "matched", "changed", "updated", "failed", "unmatched_insales", "unmatched_kak2c",
                "unknown_stock", "skipped_records", "guard")


def new_summary() -> dict:
    summary = dict.fromkeys(SUMMARY_KEYS, 0)
    summary.update(status="failed", mode=None, guard=None, error=None,
                   requests={"insales": 0, "kak2c": 0}, duration_s=0.0)
    return summary


def summary_line(summary: dict) -> str:
    parts = [f"{key}={summary[key]}" for key in SUMMARY_KEYS if summary[key] is not None
             and key != "guard"]
    parts += [f"requests.{k}={v}" for k, v in summary["requests"].items()]
    return " ".join(parts + [f"duration_s={summary['duration_s']}"])


# --- the run ----------------------------------------------------------------------------------

def make_apis(settings: Settings) -> tuple:
    """The InSales API (Basic auth, never in the URL) and the Kaktus API (bearer, per call)."""
    return (Api("InSales", settings.insales_url, settings,
                auth=(settings.insales_key, settings.insales_password)),
            Api("Kaktus", settings.kak2c_url, settings))


def run_sync(settings: Settings, args: argparse.Namespace, summary: dict) -> int:
    """Read both catalogues, plan, guard and write: one whole sync. Return the exit code."""
    insales, kak2c = make_apis(settings)
    # The catalogue is hundreds of thousands of small acyclic objects: the cyclic collector,
    # rescanning them as they pile up, cost a third of the CPU of a 100,000-variant run.
    gc.disable()
    try:
        return _sync(settings, args, summary, insales, kak2c)
    finally:
        gc.enable()
        summary["requests"] = {"insales": insales.requests, "kak2c": kak2c.requests}


def _sync(settings, args, summary, insales, kak2c) -> int:
    token = KaktusToken(kak2c, settings.kak2c_credentials, settings.token_file)
    state = None if settings.mode == "full" else load_state(settings)
    full = needs_full_walk(settings, state)
    summary["mode"] = "full" if full else "incremental"
    progress = Progress(sys.stderr.isatty() and not args.quiet)
    try:
        with ThreadPoolExecutor(1) as pool:  # the two catalogues are independent: read both at once
            reading = pool.submit(fetch_insales_catalogue, insales, settings, state, full, progress)
            pages = walk_kak2c(kak2c, token, progress, after=reading)
            kak2c_index = index_kak2c(pages, settings.stock_field)
            catalogue = reading.result()
    finally:
        progress.close()
    plan = plan_updates(catalogue.variants.values(), kak2c_index)
    summary.update(plan.counts, skipped_records=catalogue.skipped + kak2c_index.skipped)
    refusal = summary["guard"] = check_guard(plan, settings.guard_zero_share)
    report = Path(args.report) if args.report else None
    if args.dry_run:
        print_plan(plan, refusal, args.report, sys.stderr if args.json else sys.stdout)
        summary["status"] = "dry-run"
        _write_report(report, plan, {})
        return EXIT_OK
    if refusal and not args.force:
        _write_report(report, plan, {r.variant.id: ("skip", "guard") for r in plan.updates})
        raise GuardRefused(f"safety guard: {refusal}; nothing written")
    if refusal:
        log.warning("safety guard overridden by --force: %s", refusal)
    updates = plan.updates
    written, failed, stopped = apply_plan(insales, updates, settings.quantity_field)
    summary.update(updated=len(written), failed=len(failed))
    _write_report(report, plan, {i: ("update", "write failed") for i in failed})
    if stopped and not written:
        raise UpstreamError(f"{stopped}; nothing written")
    if keeps_state(settings, catalogue):
        quantities = {r.variant.id: r.kak2c_qty for r in updates}
        try:
            save_state(settings, catalogue, {i: quantities[i] for i in written})
        except OSError as exc:  # what was written stays written; the next run walks in full
            log.error("SYNC_STATE_FILE %s: cannot write (%s)", settings.state_file, exc.strerror)
    summary["status"] = "partial" if failed else "ok"
    return EXIT_PARTIAL if failed else EXIT_OK


def _write_report(path: Path | None, plan: Plan, outcome: dict) -> None:
    if path is None:
        return
    try:
        write_report(path, plan, outcome)
    except OSError as exc:
        log.error("--report %s: cannot write (%s)", path, exc.strerror)


def run_check(settings: Settings) -> int:
    """Log in to both APIs, read one page of each and print what was found; write nothing."""
    insales, kak2c = make_apis(settings)
    token = KaktusToken(kak2c, settings.kak2c_credentials, settings.token_file)
    count = read_json(insales.request("GET", "/admin/products/count.json"),
                      "InSales GET /admin/products/count.json", dict).get("count")
    warehouses = read_json(insales.request("GET", "/admin/warehouses.json"),
                           "InSales GET /admin/warehouses.json", list)
    page = read_json(insales.request("GET", "/admin/products.json", params={"per_page": 10}),
                     "InSales GET /admin/products.json", list)
    products, total = read_kak2c_page(fetch_kak2c_page(kak2c, token, 0), 0)
    print(f"InSales {settings.insales_url}: {count} products; first page read "
          f"({len(page)} products); writing {settings.quantity_field}")
    for house in warehouses:
        if isinstance(house, dict):
            print(f"  warehouse {house.get('title')!r}: array_index={house.get('array_index')} "
                  f"(INSALES_WAREHOUSE={house.get('array_index')} writes "
                  f"quantity_at_warehouse{house.get('array_index')})")
    print(f"Kaktus {settings.kak2c_url}: logged in; recordsTotal={total}, "
          f"{len(products)} products on page 0")
    variant_keys, stock_keys = set(), set()
    for product in products:
        variants = product.get("variants") if isinstance(product, dict) else None
        for variant in variants if isinstance(variants, list) else [product]:
            if isinstance(variant, dict):
                variant_keys.update(variant)
                for entry in variant.get("stock") or []:
                    stock_keys.update(entry if isinstance(entry, dict) else {})
    nested = sum(isinstance(p, dict) and isinstance(p.get("variants"), list) for p in products)
    print(f"  catalogue shape on page 0: {nested} products with a variants list, "
          f"{len(products) - nested} that are one variant each")
    print(f"  variant keys: {', '.join(sorted(variant_keys)) or '-'}")
    print(f"  stock entry keys: {', '.join(sorted(stock_keys)) or '-'} "
          f"(KAK2C_STOCK_FIELD={settings.stock_field})")
    index = index_kak2c([products], settings.stock_field)
    unknown = sum(q is None for q in index.quantities.values())
    print(f"  on page 0: {len(index.quantities)} barcodes, {len(index.duplicates)} duplicated, "
          f"{unknown} with unreadable stock")
    return EXIT_OK


def run_demo(args: argparse.Namespace) -> int:
    """Run a dry run, a real sync and a check run against the bundled sandbox."""
    import sandbox

    with sandbox.Sandbox.sample() as box, tempfile.TemporaryDirectory() as folder:
        settings = load_settings(box.env(folder))
        redactor.secrets.update(settings.secrets)
        print(f"Demo: InSales sandbox at {box.insales.url}, Kaktus sandbox at {box.kak2c.url}\n")
        code = EXIT_OK
        for title, dry_run in (("1. Dry run: what would change", True),
                               ("2. Real sync", False),
                               ("3. Dry run again: nothing left to change", True)):
            print(f"== {title}")
            run_args = argparse.Namespace(**{**vars(args), "dry_run": dry_run, "report": None})
            summary, started = new_summary(), time.monotonic()
            code = max(code, run_sync(settings, run_args, summary))
            summary["duration_s"] = round(time.monotonic() - started, 3)
            print(summary_line(summary) + "\n")
        writes = sum(1 for entry in box.insales.log if entry["method"] == "PUT")
        print(f"InSales received {writes} variants_group_update call(s); "
              f"its stock now matches Kaktus for every uniquely matched barcode.")
    return code


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sync_stock.py",
        description="Set every InSales variant's stock to the Kaktus (kak2c.ru) stock of the same "
                    "barcode. One run, then exit: put it in a crontab.")
    parser.add_argument("--dry-run", action="store_true", help="plan and print, write nothing")
    parser.add_argument("--env-file", metavar="PATH", help="settings file instead of ./.env")
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON")
    parser.add_argument("--report", metavar="PATH", help="write a CSV row per barcode seen")
    parser.add_argument("--force", action="store_true", help="write even if the guard refuses")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less logging")
    parser.add_argument("--check", action="store_true",
                        help="log in to both APIs, read one page of each, print what was found")
    parser.add_argument("--demo", action="store_true",
                        help="dry run and real sync against the bundled local sandbox")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def run_guarded(settings: Settings, args: argparse.Namespace, summary: dict) -> int:
    """Run one sync between health pings, turning a SyncError into its status and exit code."""
    ping_healthcheck(settings.healthcheck_url, "/start")
    try:
        code = run_sync(settings, args, summary)
    except ConfigError:
        raise
    except SyncError as exc:
        log.error("%s", exc)
        summary.update(status=exc.status, error=redactor.redact(str(exc)))
        code = exc.exit_code
    ping_healthcheck(settings.healthcheck_url, "" if code == EXIT_OK else "/fail")
    return code


def main(argv=None) -> int:
    args = parse_args(argv)
    reset_logging()
    configure_logging(args.verbose - args.quiet)
    if args.demo:
        return run_demo(args)
    started = time.monotonic()
    summary = new_summary()
    try:
        settings = load_settings(read_environment(args.env_file))
        redactor.secrets.update(settings.secrets)
        if settings.log_file:
            add_log_file(settings.log_file, args.verbose > 0)
        with hold_lock(settings.lock_file) as locked:
            if not locked:
                log.info("another run holds %s; skipped", settings.lock_file)
                summary["status"] = "skipped"
                code = EXIT_OK
            elif args.check:
                return run_check(settings)
            else:
                code = run_guarded(settings, args, summary)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG
    except UpstreamError as exc:  # only --check gets here
        log.error("%s", exc)
        return exc.exit_code
    summary["duration_s"] = round(time.monotonic() - started, 3)
    log.info("%s", summary_line(summary))
    if args.json:
        print(redactor.redact(json.dumps(summary, ensure_ascii=False)))
    return code


if __name__ == "__main__":
    sys.exit(main())
