#!/usr/bin/env python3
"""Local emulators of the InSales and Kaktus APIs: real HTTP servers on 127.0.0.1.

One emulator, three users: `sync_stock.py --demo`, the tests and tests/benchmark.py. Both follow
what docs/apis.md ("What we know of the two APIs") says (Basic auth, the bare product array and its
keyset walk, `per_page` cap, `count.json`, warehouses, the group update with its 100 cap,
Content-Type check and both answer styles, `API-Usage-Limit` with a fixed-window 429/503 +
Retry-After, the walk's end on an empty page, the trash behind `with_deleted`, 504 on pages too
big; Kaktus login with a real HS256 JWT, expiry answered under HTTP 401 or 200, numbered pages
with `recordsTotal`, an optional `size`, the `Domain` header of multi-shop accounts, and the
barcode layouts of real accounts: barcode fields, or the variant id as the barcode; and the
stock layouts: stockTotal alone, with stockReserved, with stockAvailable too, or the wiki's item
with stockAvailable on the variant).

Knobs for the tests: `latency`, `inject()` for faults (among them `lose_answer`: a write that
lands but whose answer never comes back; a `body` that is a function of the request, to echo
what was sent; `drip`, an answer sent a byte at a time; `endless`, one that never ends; or
`rewrite`, a function over every answer), `start(tls=...)` to serve over TLS,
attributes such as `rate_limit`, `expired_status`, `inflate_total`, `domain`, `serve_at_most`,
`timeout_above`, `time_step_ms` or `queue_writes`, and `log`, the list of requests served.
`InSales.sell()` takes an order as a shop does, `InSales.trash_product()` deletes as a manager
does. `python sandbox.py` serves a sample shop and prints a matching `.env`.
"""
from __future__ import annotations

import argparse
import base64
import bisect
import hashlib
import hmac
import json
import math
import os
import random
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, NamedTuple
from urllib.parse import parse_qs, urlsplit

MSK = timezone(timedelta(hours=3))  # InSales answers times with the shop's offset
JSON = "application/json; charset=utf-8"


class Clock:
    """Wall time plus an offset that tests and the benchmark move forward."""

    def __init__(self):
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Fault:
    """An answer to give instead of the real one, to requests whose line contains `match`."""

    match: str                   # a substring of "METHOD /path?query"
    status: int | None = 500     # None: answer normally (after `run`)
    body: object = b""           # bytes or str as they are; a function of the Request (an
                                 # echo of what was sent); anything else as JSON
    headers: dict = field(default_factory=dict)
    times: int = 1               # how many matching requests get it
    after: int = 0               # let this many matching requests through first
    reset: bool = False          # drop the connection without answering
    lose_answer: bool = False    # serve the request (a write lands), then drop the answer
    hang: float = 0.0            # wait this long first (a read timeout)
    drip: float = 0.0            # send the answer a byte at a time, this many seconds apart,
    drip_after: int = 0          # after sending this many bytes at once (the headers, say)
    endless: bool = False        # after the headers, send 1 MiB chunks until the client goes
    run: Callable | None = None  # do this first (e.g. expire the tokens)


class Request(NamedTuple):
    method: str
    path: str
    query: dict
    headers: object
    body: bytes
    target: str  # as sent: a full URL when the client came through a proxy


class Emulator:
    """What both emulators share: the server thread, latency, faults and the request log."""

    name = "emulator"

    def __init__(self, clock: Clock):
        self.clock = clock
        self.latency = 0.0
        self.faults: list = []
        self.log: list = []
        self.lock = threading.RLock()
        self.url = ""
        # (request, status, headers, body) -> the same, changed: every answer goes through it
        self.rewrite: Callable | None = None

    def start(self, tls: ssl.SSLContext | None = None) -> None:
        """Serve on a free port of 127.0.0.1; over TLS with `tls` (a server context holding
        the certificate), as the real APIs do."""
        handler = type("Handler", (_Handler,), {"emulator": self})
        self.server = _Server(("127.0.0.1", 0), handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        # A short poll: shutdown() waits for it, once per emulator per test.
        threading.Thread(target=self.server.serve_forever, args=(0.005,), daemon=True).start()
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def inject(self, match: str, **kwargs) -> Fault:
        fault = Fault(match, **kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def take_fault(self, line: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.match in line:
                    if fault.after > 0:
                        fault.after -= 1
                        continue
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def record(self, request: Request, status: int) -> None:
        with self.lock:
            self.log.append({"method": request.method, "path": request.path,
                             "query": request.query, "status": status, "at": self.clock(),
                             "headers": dict(request.headers), "body": request.body,
                             "target": request.target})

    def calls(self, method: str | None = None, path: str | None = None) -> list:
        """The logged requests with this method and path."""
        return [e for e in self.log if (method is None or e["method"] == method)
                and (path is None or e["path"] == path)]

    def handle(self, request: Request) -> tuple:
        raise NotImplementedError


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """Stay quiet when a client gave up on an answer (a timeout test does that)."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs
    emulator: Emulator

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.serve()

    do_POST = do_PUT = do_DELETE = do_GET

    def setup(self):
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm holds the
        # second until the client's delayed ACK, 40 ms later. Real front ends set it too.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        request = Request(self.command, split.path, query, self.headers, self.rfile.read(length),
                          self.path)
        emulator = self.emulator
        if emulator.latency:
            time.sleep(emulator.latency)
        fault = emulator.take_fault(f"{self.command} {self.path}")
        if fault and fault.run:
            fault.run()
        if fault and fault.hang:
            time.sleep(fault.hang)
        if fault and fault.reset:
            emulator.record(request, 0)
            self.drop_connection()
            return
        if fault and fault.status is not None:
            headers = {"Content-Type": JSON, **fault.headers}
            status, body = fault.status, fault.body
            if callable(body):
                body = body(request)
        else:
            status, headers, body = emulator.handle(request)
        if fault and fault.lose_answer:
            emulator.record(request, 0)
            self.drop_connection()
            return
        if emulator.rewrite is not None:
            status, headers, body = emulator.rewrite(request, status, headers, body)
        emulator.record(request, status)
        if fault and fault.endless:
            self.answer_endlessly(status, headers)
        elif fault and fault.drip:
            self.drip(status, headers, body, fault)
        else:
            self.answer(status, headers, body)

    def answer(self, status: int, headers: dict, body) -> None:
        payload = self.payload(body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    @staticmethod
    def payload(body) -> bytes:
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body, ensure_ascii=False)
        try:
            return body.encode() if isinstance(body, str) else body
        except UnicodeEncodeError:  # a lone surrogate: sent as the JSON escape it came from
            return json.dumps(json.loads(body)).encode()

    def drip(self, status: int, headers: dict, body, fault: Fault) -> None:
        """Send the whole answer, status line included, a byte at a time after the first
        `drip_after` bytes, as a server or proxy that has all but stalled."""
        payload = self.payload(body)
        head = "".join(f"{name}: {value}\r\n" for name, value in
                       {**headers, "Content-Length": len(payload)}.items())
        raw = f"HTTP/1.1 {status} Slow\r\n{head}\r\n".encode() + payload
        self.wfile.write(raw[:fault.drip_after])
        for at in range(fault.drip_after, len(raw)):
            time.sleep(fault.drip)
            self.wfile.write(raw[at:at + 1])
            self.wfile.flush()
        self.close_connection = True

    def answer_endlessly(self, status: int, headers: dict) -> None:
        """Send the headers, then 1 MiB chunks of a JSON array that never closes, until the
        client hangs up."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"[" + b"1," * (2**19 - 1)
        try:
            while True:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            self.close_connection = True

    def drop_connection(self) -> None:
        """Close with a TCP reset, as a crashed proxy does."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, *args):
        pass


# --- InSales ----------------------------------------------------------------------------------

def insales_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, MSK).isoformat(timespec="milliseconds")


class InSales(Emulator):
    """The InSales admin API of one shop."""

    name = "insales"

    def __init__(self, clock: Clock, key: str = "sandbox-app", password: str = "sandbox-secret"):
        super().__init__(clock)
        self.key, self.password = key, password
        self.products: dict = {}        # id -> product, exactly as served
        self.updated_ms: dict = {}      # id -> updated_at in milliseconds
        self.variant_product: dict = {}  # variant id -> product id
        self.warehouses = [{"id": 11, "title": "Основной склад", "array_index": 0},
                           {"id": 12, "title": "Kaktus", "array_index": 1}]
        self.rate_limit, self.rate_window, self.rate_status = 500, 300.0, 429
        self.window_start, self.used = 0.0, 0
        self.time_step_ms = 1                   # the resolution of updated_at
        self.serve_at_most: int | None = None   # a shop that serves fewer a page than asked
        self.timeout_above: int | None = None   # answer 504 to pages of more products than this
        self.group_answer = "statuses"  # or "empty": the update was queued
        self.queue_writes = False       # answer [] and apply the writes only at apply_queued()
        self.queued: list = []
        self._ids = iter(range(100_001, 10**9))
        self._order: list | None = None  # sorted (updated_ms, id), rebuilt after changes

    # building the shop

    def add_product(self, title: str, variants: list, **extra) -> dict:
        """Add a product; each variant dict may set barcode, quantity, title, warehouse stock."""
        with self.lock:
            product_id = next(self._ids)
            now = self.clock()
            product = {
                "id": product_id, "title": title, "category_id": 7, "is_hidden": False,
                "available": True, "archived": False, "unit": "pce", "sort_weight": None,
                "permalink": f"product-{product_id}", "html_title": None,
                "short_description": f"<p>{title}: a fine thing from the sandbox shop.</p>",
                "description": f"<p>{title}. Cotton 100%. Machine wash at 30°C. "
                               "Made for the sandbox; ships from the Kaktus warehouse.</p>",
                "created_at": insales_time(int(now * 1000)), "updated_at": "",
                "variants": [], **extra}
            for number, spec in enumerate(variants, start=1):
                variant_id = next(self._ids)
                quantity = spec.get("quantity", 0)
                product["variants"].append({
                    "id": variant_id, "product_id": product_id,
                    "title": spec.get("title", f"size {number}"),
                    "sku": spec.get("sku", f"SKU-{variant_id}"),
                    "barcode": spec.get("barcode"),
                    "quantity": quantity,
                    "quantity_at_warehouse0": spec.get("warehouse0", f"{quantity or 0}.0"),
                    "quantity_at_warehouse1": spec.get("warehouse1", "0.0"),
                    "price": "1990.0", "old_price": "2490.0", "cost_price": "800.0",
                    "price_in_site_currency": "1990.0", "weight": "0.35", "available": True,
                    "image_id": None, "option_values": [{"id": number, "title": str(number)}],
                    "created_at": product["created_at"], "updated_at": product["created_at"]})
                self.variant_product[variant_id] = product_id
            self.products[product_id] = product
            self.touch(product_id)
            return product

    def touch(self, product_id: int) -> None:
        """Move a product's updated_at to now, as any change of it or its variants does (in
        steps of `time_step_ms`: a shop whose times have one-second resolution, or coarser)."""
        ms = int(self.clock() * 1000) // self.time_step_ms * self.time_step_ms
        self.updated_ms[product_id] = ms
        self.products[product_id]["updated_at"] = insales_time(ms)
        self._order = None

    def variant(self, variant_id: int) -> dict:
        product = self.products[self.variant_product[variant_id]]
        return next(v for v in product["variants"] if v["id"] == variant_id)

    def sell(self, variant_id: int, units: int) -> None:
        """Take an order, as the shop does: the quantity drops at once, updated_at moves."""
        with self.lock:
            variant = self.variant(variant_id)
            variant["quantity"] -= units
            self.touch(self.variant_product[variant_id])

    def set_variant(self, variant_id: int, **fields) -> None:
        """Change a variant as a shop manager would (its product's updated_at moves)."""
        with self.lock:
            self.variant(variant_id).update(fields)
            self.touch(self.variant_product[variant_id])

    def trash_product(self, product_id: int) -> None:
        """Move a product to the trash, as a manager's delete does: it leaves the plain list and
        comes back, marked archived, only to `with_deleted` (and `deleted`) walks."""
        with self.lock:
            self.products[product_id]["archived"] = True
            self.touch(product_id)

    def delete_product(self, product_id: int) -> None:
        with self.lock:
            for variant in self.products.pop(product_id)["variants"]:
                del self.variant_product[variant["id"]]
            del self.updated_ms[product_id]
            self._order = None

    def all_variants(self) -> list:
        return [v for p in self.products.values() for v in p["variants"]]

    # serving

    def handle(self, request: Request) -> tuple:
        with self.lock:
            limited = self._count_request()
            usage = {"API-Usage-Limit": f"{self.used}/{self.rate_limit}"}
            if limited:
                return self.rate_status, {**usage, "Retry-After": str(limited)}, b""
            if not self._authorized(request.headers.get("Authorization", "")):
                return 401, {**usage, "Content-Type": JSON}, {"error": "Unauthorized"}
            route = {("GET", "/admin/products.json"): self._products,
                     ("GET", "/admin/products/count.json"): self._count,
                     ("GET", "/admin/warehouses.json"): self._warehouses,
                     ("PUT", "/admin/products/variants_group_update.json"): self._group_update,
                     }.get((request.method, request.path))
            if route is None:
                return 404, {**usage, "Content-Type": "text/html"}, "<html>Not Found</html>"
            status, body = route(request)
            return status, {**usage, "Content-Type": JSON}, body

    def _count_request(self) -> int:
        """Count a request in the fixed window; return the Retry-After seconds when over."""
        now = self.clock()
        if now - self.window_start >= self.rate_window:
            self.window_start, self.used = now, 0
        if self.used >= self.rate_limit:
            return max(1, math.ceil(self.window_start + self.rate_window - now))
        self.used += 1
        return 0

    def _authorized(self, header: str) -> bool:
        expected = base64.b64encode(f"{self.key}:{self.password}".encode()).decode()
        return hmac.compare_digest(header, f"Basic {expected}")

    def _products(self, request: Request) -> tuple:
        query = request.query
        try:
            per_page = min(250, max(10, int(query.get("per_page", 100))))
            page = max(1, int(query.get("page", 1)))
            from_id = int(query["from_id"]) if query.get("from_id") else None
            since = query.get("updated_since")
            since_ms = round(datetime.fromisoformat(since).timestamp() * 1000) if since else None
        except ValueError:
            return 400, {"errors": ["invalid parameters"]}
        if self.timeout_above is not None and per_page > self.timeout_above:
            return 504, ""  # "the request took over 50 s": too much data at once
        per_page = min(per_page, self.serve_at_most or per_page)
        if since_ms is None:  # from_id alone is ignored: a page-numbered walk by id
            ids = sorted(self.products)
        else:
            if self._order is None:
                self._order = sorted((ms, pid) for pid, ms in self.updated_ms.items())
            # From the anchor on, the anchor itself excluded; without from_id, from the time on.
            start = bisect.bisect_right(self._order, (since_ms, from_id if from_id else -1))
            ids = [pid for _, pid in self._order[start:]]
        # The trash: only with_deleted shows it along with the rest, deleted shows it alone.
        if query.get("with_deleted") not in ("true", "1"):
            trashed = query.get("deleted") in ("true", "1")
            ids = [pid for pid in ids if self.products[pid]["archived"] is trashed]
        chosen = ids[(page - 1) * per_page: page * per_page]
        return 200, [self.products[pid] for pid in chosen]

    def _count(self, request: Request) -> tuple:
        return 200, {"count": len(self.products)}

    def _warehouses(self, request: Request) -> tuple:
        return 200, self.warehouses

    def _group_update(self, request: Request) -> tuple:
        if not request.headers.get("Content-Type", "").startswith("application/json"):
            return 422, {"errors": {"base": ["Content-Type must be application/json"]}}
        try:
            variants = json.loads(request.body)["variants"]
        except (ValueError, KeyError, TypeError):
            return 400, {"errors": ["malformed JSON"]}
        if not isinstance(variants, list) or len(variants) > 100:
            return 422, {"errors": {"variants": ["at most 100 variants a call"]}}
        answer = []
        for item in variants:
            ok = isinstance(item, dict) and item.get("id") in self.variant_product
            fields = {k: v for k, v in item.items() if k != "id"} if ok else {}
            ok = ok and fields and all(self._valid_field(k, v) for k, v in fields.items())
            if ok and self.queue_writes:
                self.queued.append((item["id"], fields))
            elif ok:
                self._apply(item["id"], fields)
            answer.append({"id": item.get("id") if isinstance(item, dict) else None,
                           "status": "ok" if ok else "error"})
        return 200, answer if self.group_answer == "statuses" and not self.queue_writes else []

    def _apply(self, variant_id: int, fields: dict) -> None:
        variant = self.variant(variant_id)
        for key, value in fields.items():
            variant[key] = value if key == "quantity" else f"{value}.0"
        self.touch(variant["product_id"])

    def apply_queued(self, only: set | None = None) -> None:
        """Apply the writes InSales queued, as it does a little later (`only` these variants';
        the others are dropped, as a write lost on the way)."""
        with self.lock:
            for variant_id, fields in self.queued:
                if only is None or variant_id in only:
                    self._apply(variant_id, fields)
            self.queued.clear()

    def _valid_field(self, key: str, value) -> bool:
        indexes = {f"quantity_at_warehouse{w['array_index']}" for w in self.warehouses}
        return (key == "quantity" or key in indexes) and isinstance(value, int) \
            and not isinstance(value, bool)


# --- Kaktus -----------------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Kaktus(Emulator):
    """The Kaktus "lite" API of one fulfillment account."""

    name = "kak2c"

    def __init__(self, clock: Clock, login: str = "sandbox@kak2c.example",
                 password: str = "sandbox-kaktus-pass"):
        super().__init__(clock)
        self.login, self.password = login, password
        self.products: list = []
        self.page_size = 100
        self.token_ttl = 14400
        self.expired_status = 401       # the expiry answer's HTTP status is undocumented: or 200
        self.inflate_total = 0          # claim more products than there are
        self.repeat_first_page = False  # answer page 0 whatever page is asked
        self.honour_size = True         # `size` is seen in public clients, not confirmed
        self.domain = None              # when set, the Domain header every call must carry
        self.generation = 0             # tokens of an older generation have expired
        self.secret = os.urandom(16)

    def add_product(self, product: dict) -> dict:
        with self.lock:
            self.products.append(product)
        return product

    def expire_tokens(self) -> None:
        """Make every token issued so far expired, as time passing beyond their exp would."""
        with self.lock:
            self.generation += 1

    def issue_token(self, ttl: float | None = None) -> str:
        now = self.clock()
        claims = {"sub": self.login, "iat": int(now), "exp": int(now + (ttl or self.token_ttl)),
                  "gen": self.generation}
        head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64(json.dumps(claims).encode())
        signature = hmac.new(self.secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{_b64(signature)}"

    def set_stock(self, barcode: str, total: int, reserved: int = 0) -> None:
        """Set the stock of the variant with this barcode, as its layout shows it: one stock
        entry with the figures its entries carried (stockTotal; stockReserved; stockAvailable,
        total less reserved), or stockAvailable on the variant itself (the wiki's items)."""
        figures = {"stockTotal": total, "stockReserved": reserved,
                   "stockAvailable": total - reserved}
        with self.lock:
            for variant in self.variants():
                if barcode not in variant_codes(variant):
                    continue
                if isinstance(variant.get("stock"), list):
                    keys = {"stockTotal"}.union(*variant["stock"])
                    variant["stock"] = [{"warehouse": "MSK", **{
                        key: value for key, value in figures.items() if key in keys}}]
                else:
                    variant["stockAvailable"] = figures["stockAvailable"]

    def handle(self, request: Request) -> tuple:
        if self.domain is not None and request.headers.get("Domain") != self.domain:
            return self._error(403, "Domain header required for this account")
        if request.method == "POST" and request.path == "/api/lite/auth":
            return self._auth(request)
        if request.method == "GET" and request.path == "/api/lite/products":
            return self._products(request)
        return self._error(404, "Not found")

    def _error(self, status: int, message: str, code: int | None = None) -> tuple:
        body = {"errors": [{"code": code or status, "message": message}], "success": False}
        return status, {"Content-Type": JSON}, body

    def _auth(self, request: Request) -> tuple:
        if not request.headers.get("Content-Type", "").startswith("application/json"):
            return self._error(400, "Content-Type must be application/json")
        try:
            credentials = json.loads(request.body)
        except ValueError:
            return self._error(400, "Malformed JSON")
        if not (isinstance(credentials, dict) and credentials.get("login") == self.login
                and credentials.get("password") == self.password):
            return self._error(401, "Invalid login or password")
        return 200, {"Content-Type": JSON}, {
            "access_token": self.issue_token(), "token_type": "bearer",
            "expires_in": self.token_ttl, "success": True}

    def _token_problem(self, header: str) -> tuple | None:
        """Check the bearer JWT: None when valid, else the error answer."""
        try:
            head, body, signature = header.removeprefix("Bearer ").split(".")
            expected = hmac.new(self.secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(_b64(expected), signature):
                raise ValueError
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return self._error(401, "Unauthorized")
        if claims["exp"] <= self.clock() or claims.get("gen") != self.generation:
            expired = datetime.fromtimestamp(claims["exp"], timezone.utc).isoformat()
            return self._error(self.expired_status, f"JWT expired at {expired}", code=401)
        return None

    def _products(self, request: Request) -> tuple:
        problem = self._token_problem(request.headers.get("Authorization", ""))
        if problem:
            return problem
        try:
            page = int(request.query.get("page", 0))
            size = int(request.query.get("size", self.page_size)) if self.honour_size \
                else self.page_size
        except ValueError:
            return self._error(400, "page and size must be numbers")
        if page < 0 or not 1 <= size <= 1000:
            return self._error(400, "page and size must be numbers")
        if self.repeat_first_page:
            page = 0
        with self.lock:
            chosen = self.products[page * size:(page + 1) * size]
            total = len(self.products) + self.inflate_total
        return 200, {"Content-Type": JSON}, {"products": chosen, "recordsTotal": total,
                                             "success": True}

    def variants(self) -> list:
        """Every variant record, in both catalogue shapes."""
        return [v for p in self.products
                for v in (p["variants"] if isinstance(p.get("variants"), list) else [p])]


def variant_codes(variant: dict) -> set:
    """Every text a Kaktus variant may be known by: its id and its barcodes, in any shape."""
    codes = {str(variant.get("id")), str(variant.get("barcode"))}
    for item in variant.get("barcodes") or ():
        codes.add(str(item.get("value") or item.get("barcode") or item.get("code"))
                  if isinstance(item, dict) else str(item))
    return codes


# --- both, and a sample shop ------------------------------------------------------------------

class Sandbox:
    """Both emulators on one clock: `with Sandbox() as box: ... box.env(folder)`."""

    def __init__(self):
        self.clock = Clock()
        self.insales = InSales(self.clock)
        self.kak2c = Kaktus(self.clock)

    def __enter__(self) -> Sandbox:
        self.insales.start()
        self.kak2c.start()
        return self

    def __exit__(self, *exc) -> None:
        self.insales.stop()
        self.kak2c.stop()

    @classmethod
    def sample(cls, **options) -> Sandbox:
        box = cls()
        fill_sample(box, **options)
        return box

    def advance(self, seconds: float) -> None:
        self.clock.offset += seconds

    def add_demo_pair(self, barcode: str = "4600000000994", stock: int = 5,
                      shown: int | None = None) -> int:
        """Add one plain pair for the demo's story: Kaktus holds `stock`, InSales shows `shown`
        (`stock` when None); return the InSales variant id."""
        product = self.insales.add_product("Sneakers (demo)", [{
            "barcode": barcode, "quantity": stock if shown is None else shown, "title": "42"}])
        self.kak2c.add_product({"id": 4242, "name": "Sneakers (demo)", "barcode": barcode,
                                "stock": [{"warehouse": "MSK", "stockTotal": stock,
                                           "stockReserved": 0, "stockAvailable": stock}]})
        return product["variants"][0]["id"]

    def env(self, folder) -> dict:
        """Settings for sync_stock that point at this sandbox, with files in `folder`."""
        folder = Path(folder)
        return {
            "INSALES_URL": self.insales.url, "INSALES_API_KEY": self.insales.key,
            "INSALES_API_PASSWORD": self.insales.password, "KAK2C_URL": self.kak2c.url,
            "KAK2C_LOGIN": self.kak2c.login, "KAK2C_PASSWORD": self.kak2c.password,
            "KAK2C_TOKEN_FILE": str(folder / "kak2c_token"),
            "SYNC_LOCK_FILE": str(folder / "sync_stock.lock"),
            "SYNC_STATE_FILE": str(folder / "sync_state.json"),
        }


def ean13(number: int) -> str:
    """A valid EAN-13 in the 460 (Russia) range."""
    digits = f"460{number % 10**9:09d}"
    check = (10 - sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits)) % 10) % 10
    return digits + str(check)


NAMES = ("T-shirt", "Hoodie", "Jeans", "Sneakers", "Cap", "Dress", "Jacket", "Socks")
SIZES = ("XS", "S", "M", "L", "XL", "XXL")
BARCODE_SHAPES = (
    lambda code: {"barcode": code},
    lambda code: {"barcodes": [code]},
    lambda code: {"barcodes": [{"barcode": code}]},
    lambda code: {"barcodes": [{"value": code, "type": "EAN13"}]},
    lambda code: {"barcodes": [{"code": code}]},
)


def fill_sample(box: Sandbox, products: int = 30, sizes: int = 3, seed: int = 7,
                quirks: bool = True, differ: float = 0.3, spread: float = 0.0,
                kaktus_barcodes_in: str = "fields", insales_barcodes_in: str = "barcode",
                kaktus_stock: str = "total") -> None:
    """Fill both sides with one shop: matching barcodes, some stock differing.

    With quirks (the default), every third product is "one variant = one product" in Kaktus,
    barcodes come in every shape, and the catalogue holds each case the sync must handle: a
    padded GTIN, whitespace, a variant without barcode, duplicates on both sides, barcodes
    known to one side only, unknown and negative stock, quantities as strings. `spread` moves
    the clock that many seconds between products, as a shop built over time has them.

    The layouts real accounts use: `kaktus_barcodes_in="id"` is the original integration's
    account, where a Kaktus variant's id is its barcode (as text or a number) and no barcode
    field is there; `insales_barcodes_in="sku"` a shop that keeps barcodes in the SKU, with
    `"barcode": null` on every variant.

    `kaktus_stock` is how Kaktus shows a variant's stock (what it can sell is the sample's
    figure either way): "total", entries with stockTotal alone (the original integration's
    account); "reserved", entries with stockTotal and stockReserved, some units reserved for
    marketplace orders; "available", entries with all three; "wiki", stockAvailable on the
    variant itself with no stock list, every product one variant, ids as text and barcodes as
    objects, as the Kaktus wiki prints an item.
    """
    rng = random.Random(seed)
    kaktus_ids = iter(range(5001, 10**9))
    for p in range(products):
        title = f"{NAMES[p % len(NAMES)]} #{p + 1}"
        flat = quirks and p % 3 == 2
        shop_variants, kaktus_variants = [], []
        for s in range(sizes):
            n = p * sizes + s
            code = ean13(seed * 10**6 + n)
            stock = rng.randint(0, 25)
            shop_qty = stock + rng.randint(1, 5) if rng.random() < differ else stock
            figures = stock_figures(kaktus_stock, stock, reserved=n % 3)
            entries = [{"warehouse": "MSK", **figures}]
            kaktus_code = code
            if quirks:
                if n % 4 == 1:  # two warehouses, summed; figures as strings and floats
                    entries = [{"warehouse": "MSK", **{k: str(v - v // 2) for k, v in
                                                       figures.items()}},
                               {"warehouse": "SPB", **{k: float(v // 2) for k, v in
                                                       figures.items()}}]
                kaktus_code = "0" + code if n % 7 == 3 else code  # GTIN-14 for an EAN-13
            shop_variants.append({"title": SIZES[s % len(SIZES)], "barcode": code,
                                  "quantity": shop_qty})
            if kaktus_barcodes_in == "id":
                fields = {"id": kaktus_code if n % 2 else int(kaktus_code)}
            else:
                fields = {"id": next(kaktus_ids),
                          **BARCODE_SHAPES[n % len(BARCODE_SHAPES) if quirks else 0](kaktus_code)}
            if kaktus_stock == "wiki":
                if kaktus_barcodes_in != "id":
                    fields = {"id": str(fields["id"]), "barcodes": [
                        {"value": kaktus_code, "isDefault": True, "type": "COMMON"}]}
                kaktus_variants.append({**fields, "article": f"A{n:06d}",
                                        "shortName": title, "price": "1990.00", **figures})
            else:
                kaktus_variants.append({**fields, "article": f"A{n:06d}", "stock": entries})
        if quirks:
            _add_quirks(p, shop_variants, kaktus_variants)
        if insales_barcodes_in == "sku":
            for variant in shop_variants:
                variant["sku"], variant["barcode"] = variant["barcode"], None
        box.insales.add_product(title, shop_variants)
        box.advance(spread)
        if flat or kaktus_stock == "wiki":
            for variant in kaktus_variants:
                box.kak2c.add_product({**variant, "name": f"{title} {variant['article']}"})
        else:
            box.kak2c.add_product({"id": next(kaktus_ids), "name": title,
                                   "variants": kaktus_variants})
    if quirks and products > 6:
        first = list(box.insales.products.values())[3]["variants"][0]
        extra = (("Duplicate in Kaktus", first["barcode"] or first["sku"], 1),
                 ("Only in Kaktus", ean13(999_999), 4))
        for name, code, stock in extra:
            fields = {"id": code} if kaktus_barcodes_in == "id" else \
                {"id": next(kaktus_ids), "barcode": code}
            figures = stock_figures(kaktus_stock, stock, reserved=1)
            box.kak2c.add_product({**fields, "name": name, **(
                figures if kaktus_stock == "wiki" else {"stock": [figures]})})


def stock_figures(layout: str, sellable: int, reserved: int) -> dict:
    """A variant's stock figures as the `layout` of fill_sample shows `sellable` units."""
    total = {"stockTotal": sellable + reserved}
    return {"total": {"stockTotal": sellable},
            "reserved": {**total, "stockReserved": reserved},
            "available": {**total, "stockReserved": reserved, "stockAvailable": sellable},
            "wiki": {"stockAvailable": sellable}}[layout]


def _add_quirks(p: int, shop: list, kaktus: list) -> None:
    """Give product p of the sample one of the cases the sync must handle."""
    case = p % 7
    if case == 0:
        shop[0]["barcode"] = f"  {shop[0]['barcode']} "        # whitespace around
    elif case == 1:
        shop[-1]["barcode"] = None                            # no barcode: never touched
    elif case == 2 and len(shop) > 1:
        shop[1]["barcode"] = shop[0]["barcode"]               # duplicate in InSales
    elif case == 4:
        for key in ("stock", "stockAvailable"):               # unknown stock: never 0
            kaktus[-1].pop(key, None)
    elif case == 5:
        shop[-1]["barcode"] = ean13(900_000 + p)              # only in InSales
    elif case == 6:
        kaktus[0]["stock"] = [{"stockTotal": -2}]             # negative: 0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Serve the sandbox InSales and Kaktus APIs.")
    parser.add_argument("--products", type=int, default=30)
    parser.add_argument("--sizes", type=int, default=3)
    parser.add_argument("--plain", action="store_true", help="no quirks: a big, clean catalogue")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--rate-limit", type=int, default=500)
    parser.add_argument("--kaktus-barcodes-in", choices=("fields", "id"), default="fields",
                        help="id: the original integration's account, its variant ids barcodes")
    parser.add_argument("--insales-barcodes-in", choices=("barcode", "sku"), default="barcode",
                        help="sku: a shop with barcode null and the barcodes in the SKU")
    parser.add_argument("--kaktus-stock", choices=("total", "reserved", "available", "wiki"),
                        default="available", help="how Kaktus shows stock: stockTotal alone; "
                        "with stockReserved; with stockAvailable too (the default: what "
                        "KAK2C_STOCK_FIELD=auto reads first); stockAvailable on the variant")
    parser.add_argument("--env-file", metavar="PATH", help="also write the settings there "
                        "(mode 0600), for sync_stock.py --env-file PATH")
    args = parser.parse_args(argv)
    with Sandbox.sample(products=args.products, sizes=args.sizes, quirks=not args.plain,
                        kaktus_barcodes_in=args.kaktus_barcodes_in,
                        insales_barcodes_in=args.insales_barcodes_in,
                        kaktus_stock=args.kaktus_stock) as box:
        box.insales.latency = box.kak2c.latency = args.latency
        box.insales.rate_limit = args.rate_limit
        with tempfile.TemporaryDirectory(prefix="sync_stock_sandbox_") as folder:
            lines = "".join(f"{key}={value}\n" for key, value in box.env(folder).items())
            if args.env_file:
                handle = os.open(args.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.fchmod(handle, 0o600)  # a file left from an earlier rehearsal too
                with open(handle, "w") as out:
                    out.write(lines)
            print(json.dumps(box.env(folder)), flush=True)
            print(f"# settings for sync_stock.py{' in ' + args.env_file if args.env_file else ''}"
                  " (Ctrl-C stops the sandbox):", flush=True)
            print(lines, end="", flush=True)
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":
    main()
