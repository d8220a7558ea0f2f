"""Products over the API: tiers, areas, formats, audit before data, and no person data at L1/L2."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from services.audit.models import AuditEvent
from services.demo.generate import write_dataset_csv
from services.platform import Platform
from services.products import service as product_service
from tests.fixtures.app import ClientCredentials
from tests.fixtures.audit_events import refuse_audit_inserts
from tests.fixtures.snapshots import Loading, Snapshot, Snapshots, starting_from
from tests.ingestion.helpers import police_rows, to_csv

PARAMS = {
    "sv-counts": {"from": "2023-01-01", "to": "2024-01-01", "by": "csp"},
    "sv-flags": {"from": "2023-01-01", "to": "2024-01-01"},
    "sv-rates": {"from": "2023-01-01", "to": "2024-01-01"},
    "hkc-summary": {"as_of": "2024-01-01"},
    "hotspots": {"from": "2023-01-01", "to": "2024-01-01"},
}
LEVEL = {"sv-counts": 1, "sv-flags": 1, "sv-rates": 1, "hkc-summary": 1, "hotspots": 2}

# role -> the product levels it may read (the tiers of domain.md); which products those are
# comes from the definitions, so adding a product's YAML needs no edit here.
READABLE = {
    "partner_system": set(),
    "l1_reader": {1},
    "l1_analyst": {1},
    "l2_reader": {2},
    "l3_practitioner": {3},
    "ig_lead": set(),
    "admin": set(),
}


def load_products_data(loading: Loading) -> dict[str, str]:
    """Police, population and IMD data pushed through the API; a token per role."""
    api, make_client, token_for = loading.api, loading.make_client, loading.token_for
    rows = police_rows(3000, seed=11)
    police = token_for(make_client())
    assert (
        api.post(
            "/v1/datasets/police.occurrences/uploads",
            params={"mode": "replace"},
            content=to_csv(rows),
            headers={
                "Authorization": f"Bearer {police}",
                "Content-Type": "text/csv",
                "Idempotency-Key": str(uuid.uuid4()),
            },
        ).status_code
        == 201
    )
    vru = token_for(make_client(org="vru"))
    for dataset in ("reference.population", "la.imd"):
        path = loading.folder / f"{dataset}.csv"
        write_dataset_csv(dataset, path)
        response = api.post(
            f"/v1/datasets/{dataset}/uploads",
            params={"mode": "replace"},
            content=path.read_bytes(),
            headers={
                "Authorization": f"Bearer {vru}",
                "Content-Type": "text/csv",
                "Idempotency-Key": str(uuid.uuid4()),
            },
        )
        assert response.status_code == 201, response.text
    tokens = {}
    for role in READABLE:
        areas = ("Southampton", "Portsmouth") if role in ("l2_reader", "l3_practitioner") else ()
        tokens[role] = token_for(make_client(org="vru", roles=(role,), areas=areas))
    tokens["_names"] = "|".join(
        {r["suspect_surname"] for r in rows if r["suspect_surname"]}
        | {r["suspect_forename"] for r in rows if r["suspect_forename"]}
    )
    tokens["_refs"] = "|".join({r["suspect_nominal_ref"] for r in rows if r["suspect_nominal_ref"]})
    tokens["_dobs"] = "|".join({r["suspect_dob"] for r in rows if r["suspect_dob"]})
    return tokens


@pytest.fixture(scope="session")
def products_data(snapshots: Snapshots) -> Snapshot[dict[str, str]]:
    return snapshots.take("products-api", load_products_data)


# The tests that read the loaded data start from a copy of it; the others from nothing.
initial_state = starting_from("products_data", when="loaded")


@pytest.fixture
def loaded(products_data: Snapshot[dict[str, str]], loading: Loading) -> dict[str, str]:
    return products_data.value_in(loading)


def count_events(platform: Platform, action: str) -> int:
    with platform.sessions() as session:
        return session.execute(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action)
        ).scalar_one()


@pytest.mark.parametrize("role", list(READABLE))
def test_tier_truth_table_over_the_api(
    api: TestClient, platform: Platform, loaded: dict[str, str], role: str
) -> None:
    headers = {"Authorization": f"Bearer {loaded[role]}"}
    readable = {
        product.id
        for product in platform.products.catalogue.values()
        if product.level in READABLE[role]
    }
    listed = api.get("/v1/products", headers=headers).json()["products"]
    assert {p["id"] for p in listed} == readable
    for product, params in PARAMS.items():
        reads = count_events(platform, "product.read")
        denials = count_events(platform, "access.denied")
        response = api.get(f"/v1/products/{product}", params=params, headers=headers)
        explain = api.get("/v1/access/explain", params={"product": product}, headers=headers)
        assert explain.status_code == 200
        if product in readable:
            assert response.status_code == 200, (role, product, response.text)
            body = response.json()
            assert body["product"] == product and body["level"] == LEVEL[product]
            assert set(body) >= {
                "parameters",
                "generated_at",
                "sources",
                "columns",
                "rows",
                "notes",
            }
            assert count_events(platform, "product.read") == reads + 1
            assert explain.json()["allowed"] is True
            assert explain.json()["rule"].startswith(role)
        else:
            assert response.status_code == 403, (role, product)
            assert "rows" not in response.json()
            assert count_events(platform, "access.denied") == denials + 1
            assert explain.json()["allowed"] is False
            assert explain.json()["rule"].startswith("default deny")


# Parameters for the Level 3 products (the others are in PARAMS), and the headers they need.
LEVEL3_PARAMS = {
    "repeat-suspects": {"as_of": "2024-01-01"},
    "habitual-knife-carriers": {"as_of": "2024-01-01"},
    "person-profile": {"person_id": "0" * 32},
}
JUSTIFIED = {"X-Purpose": "high-intensity-programme", "X-Case-Reference": "HIP-2024/0042"}


@pytest.mark.parametrize("role", list(READABLE))
def test_explain_reports_the_suppression_the_read_applies(
    api: TestClient, platform: Platform, loaded: dict[str, str], role: str
) -> None:
    """Explain, the list of products and the read agree, for every role and every product."""
    headers = {"Authorization": f"Bearer {loaded[role]}"}
    listed = {
        p["id"]: p["suppressed"]
        for p in api.get("/v1/products", headers=headers).json()["products"]
    }
    for product in platform.products.catalogue.values():
        explain = api.get("/v1/access/explain", params={"product": product.id}, headers=headers)
        assert explain.status_code == 200
        said = explain.json()["suppressed"]
        params = PARAMS.get(product.id) or LEVEL3_PARAMS[product.id]
        extra = JUSTIFIED if product.level == 3 else {}
        query = dict(params)
        if "person_id" in query:
            extra = extra | {"X-Person-Id": query.pop("person_id")}
        response = api.get(f"/v1/products/{product.id}", params=query, headers=headers | extra)
        if not explain.json()["allowed"]:
            assert response.status_code == 403, (role, product.id)
            assert said is False and product.id not in listed
            continue
        assert response.status_code == 200, (role, product.id, response.text)
        applied = response.json()["notes"]["suppression"]["applied"]
        assert said is applied, (role, product.id)
        assert listed[product.id] is applied, (role, product.id)


def test_suppression_depends_on_permission(api: TestClient, loaded: dict[str, str]) -> None:
    params = {"from": "2023-01-01", "to": "2024-01-01", "by": "csp,hmic_group"}
    reader = api.get(
        "/v1/products/sv-counts",
        params=params,
        headers={"Authorization": f"Bearer {loaded['l1_reader']}"},
    ).json()
    analyst = api.get(
        "/v1/products/sv-counts",
        params=params,
        headers={"Authorization": f"Bearer {loaded['l1_analyst']}"},
    ).json()
    raw = [r["count"] for r in analyst["rows"]]
    assert any(1 <= c <= 4 for c in raw), "the test data should hold small cells"
    assert not any("suppressed" in r and r["suppressed"] for r in analyst["rows"])
    shown = [r["count"] for r in reader["rows"]]
    assert all(c is None or c == 0 or c >= 5 for c in shown)
    assert any(r.get("suppressed") for r in reader["rows"])


@pytest.mark.parametrize("role", ["l1_reader", "l1_analyst"])
def test_counts_and_rates_show_the_same_groups(
    api: TestClient, loaded: dict[str, str], role: str
) -> None:
    """Every group of the grouping, zero included, in both products and for every reader."""
    headers = {"Authorization": f"Bearer {loaded[role]}"}
    period = {"from": "2023-01-01", "to": "2024-01-01"}
    zeros = 0
    for by in ("csp", "csp,hmic_group"):
        keys = by.split(",")
        counts = api.get("/v1/products/sv-counts", params=period | {"by": by}, headers=headers)
        rates = api.get(
            "/v1/products/sv-rates",
            params=period | ({"by": "hmic_group"} if "hmic_group" in keys else {}),
            headers=headers,
        )
        assert counts.status_code == rates.status_code == 200
        in_counts = {tuple(r[k] for k in keys): r for r in counts.json()["rows"]}
        in_rates = {tuple(r[k] for k in keys): r for r in rates.json()["rows"]}
        assert set(in_counts) == set(in_rates), by
        assert len(in_counts) == len(counts.json()["rows"])
        # The same count in both, withheld or not alike; a zero is shown to every reader.
        for group, row in in_counts.items():
            assert row["count"] == in_rates[group]["count"], (by, group)
            withheld = "count" in (row.get("suppressed") or [])
            assert withheld == ("count" in (in_rates[group].get("suppressed") or [])), group
        zeros += sum(row["count"] == 0 for row in in_counts.values())
    assert zeros, "the data should hold groups without offences"
    # A heat map has every cell, even for one small area.
    cells = api.get(
        "/v1/products/sv-counts",
        params=period | {"by": "weekday,hour", "csp": "Hart"},
        headers=headers,
    ).json()["rows"]
    assert len(cells) == 7 * 24


def test_level2_rows_limited_to_areas(api: TestClient, loaded: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {loaded['l2_reader']}"}
    body = api.get(
        "/v1/products/hotspots", params=PARAMS["hotspots"] | {"top": "500"}, headers=headers
    ).json()
    assert body["rows"]
    assert {r["csp"] for r in body["rows"]} <= {"Southampton", "Portsmouth"}
    outside = api.get(
        "/v1/products/hotspots", params=PARAMS["hotspots"] | {"csp": "Havant"}, headers=headers
    )
    assert outside.status_code == 403


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
def test_T9_no_person_data_in_level1_or_level2(
    api: TestClient, loaded: dict[str, str], fmt: str
) -> None:
    needles = [
        n
        for n in loaded["_names"].split("|")
        + loaded["_refs"].split("|")
        + loaded["_dobs"].split("|")
        if len(n) > 3
    ]
    for product, params in PARAMS.items():
        role = "l2_reader" if LEVEL[product] == 2 else "l1_analyst"
        response = api.get(
            f"/v1/products/{product}",
            params=params | {"format": fmt},
            headers={"Authorization": f"Bearer {loaded[role]}"},
        )
        assert response.status_code == 200, (product, response.text)
        text_body = response.content.decode("latin-1")
        if fmt == "parquet":
            table = pq.read_table(io.BytesIO(response.content))
            text_body = str(table.to_pylist()) + str(table.schema)
        lowered = text_body.lower()
        for needle in needles:
            assert needle.lower() not in lowered, (product, fmt)
        for column in (
            "person_id",
            "nominal",
            "forename",
            "surname",
            "dob",
            "pseudonym",
            "person_key",
        ):
            assert column not in lowered, (product, fmt, column)


def test_bad_parameters_are_400(api: TestClient, loaded: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {loaded['l1_analyst']}"}
    for params in (
        {"from": "2023-01-01"},
        {"from": "2023-13-01", "to": "2024-01-01"},
        {"from": "2023-01-01", "to": "2024-01-01", "by": "surname"},
        {"from": "2023-01-01", "to": "2024-01-01", "colour": "red"},
        {"from": "2023-01-01", "to": "2024-01-01", "format": "xml"},
        {"from": "2023-01-01", "to": "2024-01-01", "compare_from": "2022-01-01"},
    ):
        response = api.get("/v1/products/sv-counts", params=params, headers=headers)
        assert response.status_code == 400, params
        assert response.json()["code"] == "BAD_REQUEST"
        assert response.json()["detail"]
    assert api.get("/v1/products/nothing", headers=headers).status_code == 404


@pytest.mark.parametrize("cached", [False, True])
def test_no_audit_no_data(
    api: TestClient,
    platform: Platform,
    loaded: dict[str, str],
    cached: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the read cannot be audited, the caller gets 503 and no data (T25), whether the
    answer is computed or already held (then only the audit event is awaited)."""
    held: list[bool] = []
    original = product_service.read_if_cached

    def watched(*args: Any, **kwargs: Any) -> Any:
        found = original(*args, **kwargs)
        held.append(found is not None)
        return found

    monkeypatch.setattr(product_service, "read_if_cached", watched)
    headers = {"Authorization": f"Bearer {loaded['l1_analyst']}"}
    if cached:
        for _ in range(2):
            warm = api.get("/v1/products/sv-counts", params=PARAMS["sv-counts"], headers=headers)
            assert warm.status_code == 200
    refuse_audit_inserts(platform.engine, "product.read")
    reads = count_events(platform, "product.read")
    response = api.get("/v1/products/sv-counts", params=PARAMS["sv-counts"], headers=headers)
    assert response.status_code == 503
    assert response.json()["code"] == "AUDIT_UNAVAILABLE"
    assert "rows" not in response.text
    assert count_events(platform, "product.read") == reads
    assert held[-1] is cached  # the answer was held (or not), as this case means


def test_admin_api_manages_roles_and_is_audited(
    api: TestClient,
    platform: Platform,
    make_client: Callable[..., ClientCredentials],
    token_for: Callable[[ClientCredentials], str],
) -> None:
    admin = {"Authorization": f"Bearer {token_for(make_client(org='vru', roles=('admin',)))}"}
    reader = {"Authorization": f"Bearer {token_for(make_client(org='vru', roles=('l1_reader',)))}"}
    assert api.get("/v1/admin/clients", headers=reader).status_code == 403
    created = api.post(
        "/v1/admin/clients",
        json={"name": "analyst", "organisation": "portsmouth-cc", "roles": [{"role": "l1_reader"}]},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    client_id = created.json()["client_id"]
    unscoped = api.put(
        f"/v1/admin/clients/{client_id}/roles",
        json={"roles": [{"role": "l2_reader"}]},
        headers=admin,
    )
    assert unscoped.status_code == 400
    changed = api.put(
        f"/v1/admin/clients/{client_id}/roles",
        json={"roles": [{"role": "l2_reader", "areas": ["Portsmouth"]}]},
        headers=admin,
    )
    assert changed.status_code == 200
    assert changed.json()["roles"] == [{"role": "l2_reader", "area": "Portsmouth"}]
    with platform.sessions() as session:
        event = session.execute(
            select(AuditEvent).where(AuditEvent.action == "client.roles_changed")
        ).scalar_one()
    assert event.details["before"] == [{"role": "l1_reader", "area": None}]
    assert event.details["after"] == [{"role": "l2_reader", "area": "Portsmouth"}]
    token = api.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": created.json()["client_secret"],
        },
    ).json()["access_token"]
    listed = api.get("/v1/products", headers={"Authorization": f"Bearer {token}"}).json()
    assert [p["id"] for p in listed["products"]] == ["hotspots"]
    assert (
        api.post(
            "/v1/admin/clients",
            json={
                "name": "x",
                "organisation": "vru",
                "roles": [{"role": "l1_reader"}],
                "disabled": False,
            },
            headers=admin,
        ).status_code
        == 400
    )
