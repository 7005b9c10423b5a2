"""The sandbox itself, checked against what docs/apis.md says of both APIs: if it lies, tests
lie."""
import base64
import json

import requests

import sandbox


def insales_get(box, path, **params):
    return requests.get(box.insales.url + path, params=params, timeout=10,
                        auth=(box.insales.key, box.insales.password))


def put_group(box, variants, **kwargs):
    return requests.put(box.insales.url + "/admin/products/variants_group_update.json",
                        auth=(box.insales.key, box.insales.password), timeout=10, **kwargs,
                        **({} if "data" in kwargs else {"json": {"variants": variants}}))


def test_insales_needs_basic_auth(box):
    """Answers 401 without the app's identifier and password."""
    answer = requests.get(box.insales.url + "/admin/products.json", timeout=10,
                          auth=(box.insales.key, "wrong"))
    assert answer.status_code == 401


def test_insales_keyset_walk_excludes_the_anchor_and_orders_by_time_then_id(box):
    """updated_since + from_id return what comes after the anchor, by updated_at then id."""
    sandbox.fill_sample(box, products=30, quirks=False, spread=1.0)
    first = insales_get(box, "/admin/products.json", updated_since="2000-01-01T00:00:00+00:00",
                        from_id=0, per_page=10).json()
    assert len(first) == 10
    anchor = first[-1]
    rest = insales_get(box, "/admin/products.json", updated_since=anchor["updated_at"],
                       from_id=anchor["id"], per_page=250).json()
    assert len(rest) == 20
    assert anchor["id"] not in {p["id"] for p in rest}
    keys = [(box.insales.updated_ms[p["id"]], p["id"]) for p in first + rest]
    assert keys == sorted(keys)


def test_insales_answers_400_to_an_unencoded_offset(box):
    """A raw '+' in updated_since reads as a space: the shop answers 400."""
    sandbox.fill_sample(box, products=3, quirks=False)
    url = box.insales.url + "/admin/products.json?updated_since=2026-11-28T10:00:00.000+03:00"
    answer = requests.get(url, auth=(box.insales.key, box.insales.password), timeout=10)
    assert answer.status_code == 400


def test_insales_per_page_is_capped_at_250_and_raised_to_10(box):
    """per_page above 250 gives 250; below 10 gives 10."""
    sandbox.fill_sample(box, products=300, sizes=1, quirks=False)
    assert len(insales_get(box, "/admin/products.json", per_page=1000).json()) == 250
    assert len(insales_get(box, "/admin/products.json", per_page=2).json()) == 10
    assert insales_get(box, "/admin/products/count.json").json() == {"count": 300}


def test_insales_group_update_checks_content_type_and_the_100_cap(box):
    """Without Content-Type JSON: 422; over 100 variants: 422; otherwise applied."""
    product = box.insales.add_product("P", [{"barcode": "A", "quantity": 1}])
    variant_id = product["variants"][0]["id"]
    body = json.dumps({"variants": [{"id": variant_id, "quantity": 5}]})
    assert put_group(box, None, data=body).status_code == 422
    assert put_group(box, [{"id": variant_id, "quantity": 5}] * 101).status_code == 422
    answer = put_group(box, [{"id": variant_id, "quantity": 5}])
    assert answer.json() == [{"id": variant_id, "status": "ok"}]
    assert box.insales.variant(variant_id)["quantity"] == 5
    box.insales.group_answer = "empty"
    assert put_group(box, [{"id": variant_id, "quantity_at_warehouse1": 2}]).json() == []
    assert box.insales.variant(variant_id)["quantity_at_warehouse1"] == "2.0"


def test_insales_rate_limit_answers_429_with_retry_after_and_usage(box):
    """Every answer carries API-Usage-Limit; over the limit: 429, Retry-After, empty body."""
    box.insales.rate_limit = 2
    answers = [insales_get(box, "/admin/products/count.json") for _ in range(3)]
    assert [a.headers["API-Usage-Limit"] for a in answers[:2]] == ["1/2", "2/2"]
    assert answers[2].status_code == 429
    assert int(answers[2].headers["Retry-After"]) > 0 and answers[2].content == b""
    box.insales.rate_status = 503
    assert insales_get(box, "/admin/products/count.json").status_code == 503


def test_insales_unknown_path_is_an_html_404(box):
    """A wrong path answers 404 with an HTML body, as the real shop does."""
    answer = insales_get(box, "/admin/nothing.json")
    assert answer.status_code == 404 and answer.text.startswith("<html>")


def kaktus_login(box, **credentials):
    body = credentials or {"login": box.kak2c.login, "password": box.kak2c.password}
    return requests.post(box.kak2c.url + "/api/lite/auth", json=body, timeout=10)


def test_kaktus_login_issues_an_hs256_jwt_with_exp(box):
    """The login answers access_token (a JWT with exp), token_type and expires_in."""
    answer = kaktus_login(box).json()
    head, claims, _ = answer["access_token"].split(".")
    assert json.loads(base64.urlsafe_b64decode(head + "=="))["alg"] == "HS256"
    claims = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    assert claims["exp"] - claims["iat"] == answer["expires_in"] == 14400
    assert answer["token_type"] == "bearer"
    assert kaktus_login(box, login=box.kak2c.login, password="x").status_code == 401


def test_kaktus_pages_and_expiry_answers(box):
    """Pages from 0 with recordsTotal; an expired token gets the documented body, 401 or 200."""
    sandbox.fill_sample(box, products=250, sizes=1, quirks=False)
    token = kaktus_login(box).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    url = box.kak2c.url + "/api/lite/products"
    pages = [requests.get(url, params={"page": n}, headers=headers, timeout=10).json()
             for n in range(4)]
    assert [len(p["products"]) for p in pages] == [100, 100, 50, 0]
    assert {p["recordsTotal"] for p in pages} == {250}
    box.kak2c.expire_tokens()
    for status in (401, 200):
        box.kak2c.expired_status = status
        answer = requests.get(url, params={"page": 0}, headers=headers, timeout=10)
        assert answer.status_code == status
        assert answer.json()["success"] is False
        assert answer.json()["errors"][0]["code"] == 401
        assert answer.json()["errors"][0]["message"].startswith("JWT expired at")


def test_sample_shop_has_every_case_the_sync_must_handle(box):
    """The sample mixes both shapes, every barcode shape, duplicates and unknown stock."""
    sandbox.fill_sample(box, products=30)
    kaktus = box.kak2c.products
    assert any("variants" in p for p in kaktus) and any("variants" not in p for p in kaktus)
    variants = box.kak2c.variants()
    assert any("stock" not in v for v in variants)
    assert any(len(v["stock"]) > 1 for v in variants if "stock" in v)
    shapes = {json.dumps(sorted(b.keys())) if isinstance(b, dict) else type(b).__name__
              for v in variants for b in v.get("barcodes", [])}
    assert shapes == {"str", '["barcode"]', '["type", "value"]', '["code"]'}
    shop = [v["barcode"] for v in box.insales.all_variants()]
    assert None in shop and any(b and b != b.strip() for b in shop)
    assert len([b for b in shop if b]) > len({b for b in shop if b})


def test_a_sale_lowers_the_quantity_and_moves_updated_at(box):
    """InSales.sell() acts as an order: the quantity drops and the product comes up in the walk."""
    product = box.insales.add_product("P", [{"barcode": "S1", "quantity": 5}])
    before = product["updated_at"]
    box.advance(5)
    box.insales.sell(product["variants"][0]["id"], 2)
    assert product["variants"][0]["quantity"] == 3 and product["updated_at"] > before


def test_queued_writes_answer_empty_and_land_later(box):
    """With queue_writes the group update answers [] and applies only at apply_queued()."""
    product = box.insales.add_product("P", [{"barcode": "Q", "quantity": 1}])
    variant_id = product["variants"][0]["id"]
    box.insales.queue_writes = True
    assert put_group(box, [{"id": variant_id, "quantity": 9}]).json() == []
    assert box.insales.variant(variant_id)["quantity"] == 1
    box.insales.apply_queued()
    assert box.insales.variant(variant_id)["quantity"] == 9


def test_kaktus_size_and_domain(box):
    """`size` sets the page length (when honoured); an account with a domain needs the header."""
    sandbox.fill_sample(box, products=30, sizes=1, quirks=False)
    token = kaktus_login(box).json()["access_token"]
    url, headers = box.kak2c.url + "/api/lite/products", {"Authorization": f"Bearer {token}"}
    sized = requests.get(url, params={"page": 1, "size": 7}, headers=headers, timeout=10).json()
    assert len(sized["products"]) == 7 and sized["recordsTotal"] == 30
    box.kak2c.domain = "shop123"
    assert requests.get(url, headers=headers, timeout=10).status_code == 403
    answer = requests.get(url, headers={**headers, "Domain": "shop123"}, timeout=10)
    assert answer.status_code == 200


def test_insales_trash_shows_only_to_with_deleted_walks(box):
    """A trashed product leaves the plain walk; with_deleted shows it marked archived, and
    deleted shows it alone."""
    sandbox.fill_sample(box, products=3, sizes=1, quirks=False)
    trashed = next(iter(box.insales.products))
    box.insales.trash_product(trashed)
    since = {"updated_since": "2000-01-01T00:00:00+00:00", "from_id": 0}
    plain = insales_get(box, "/admin/products.json", **since).json()
    assert trashed not in {p["id"] for p in plain} and len(plain) == 2
    every = insales_get(box, "/admin/products.json", with_deleted="true", **since).json()
    assert [p["archived"] for p in every if p["id"] == trashed] == [True] and len(every) == 3
    only = insales_get(box, "/admin/products.json", deleted="true", **since).json()
    assert [p["id"] for p in only] == [trashed]


def test_insales_can_serve_fewer_than_asked_and_time_out_on_big_pages(box):
    """serve_at_most caps a page below per_page; timeout_above answers 504 to bigger pages."""
    sandbox.fill_sample(box, products=300, sizes=1, quirks=False)
    box.insales.serve_at_most = 100
    assert len(insales_get(box, "/admin/products.json", per_page=250).json()) == 100
    box.insales.timeout_above = 50
    assert insales_get(box, "/admin/products.json", per_page=100).status_code == 504
    assert len(insales_get(box, "/admin/products.json", per_page=50).json()) == 50


def test_sample_layouts_of_real_accounts(box):
    """kaktus_barcodes_in="id": ids are the barcodes (text and numbers), no barcode field;
    insales_barcodes_in="sku": barcode null, the code in sku."""
    sandbox.fill_sample(box, products=10, kaktus_barcodes_in="id", insales_barcodes_in="sku")
    variants = box.kak2c.variants()
    assert not any("barcode" in v or "barcodes" in v for v in variants)
    assert {type(v["id"]) for v in variants} == {int, str}
    shop = box.insales.all_variants()
    assert all(v["barcode"] is None for v in shop)
    codes = {str(v["id"]).strip().lstrip("0") for v in variants}
    assert sum((v["sku"] or "").strip().lstrip("0") in codes for v in shop) > len(shop) // 2


def test_sample_stock_layouts_and_set_stock(box):
    """Each layout shows its figures (entries with stockTotal; with stockReserved; with all
    three; stockAvailable on a wiki item with string ids and barcode objects), and set_stock
    keeps a variant in its layout."""
    for layout, keys in (("total", {"stockTotal"}), ("reserved", {"stockTotal", "stockReserved"}),
                         ("available", {"stockTotal", "stockReserved", "stockAvailable"})):
        fresh = sandbox.Sandbox()
        sandbox.fill_sample(fresh, products=3, sizes=1, quirks=False, kaktus_stock=layout)
        variant = fresh.kak2c.variants()[0]
        assert set(variant["stock"][0]) == keys | {"warehouse"}
        fresh.kak2c.set_stock(variant["barcode"], 9, reserved=4)
        figures = {"stockTotal": 9, "stockReserved": 4, "stockAvailable": 5}
        assert variant["stock"] == [{"warehouse": "MSK",
                                     **{key: figures[key] for key in keys}}]
    sandbox.fill_sample(box, products=3, sizes=2, quirks=False, kaktus_stock="wiki")
    item = box.kak2c.variants()[0]
    assert "stock" not in item and "variants" not in box.kak2c.products[0]
    assert isinstance(item["id"], str) and item["barcodes"][0]["isDefault"] is True
    assert item["barcodes"][0]["type"] == "COMMON" and isinstance(item["price"], str)
    box.kak2c.set_stock(item["barcodes"][0]["value"], 7, reserved=2)
    assert item["stockAvailable"] == 5 and "stock" not in item
