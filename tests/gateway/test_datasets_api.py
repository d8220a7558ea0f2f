"""What a partner can see of its datasets: its own uploads, and a dataset's current version."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from fastapi.testclient import TestClient

from services.platform import Platform
from tests.fixtures.app import ClientCredentials
from tests.fixtures.audit_events import events
from tests.ingestion.helpers import police_rows, to_csv

POLICE = "police.occurrences"
MakeClient = Callable[..., ClientCredentials]
TokenFor = Callable[[ClientCredentials], str]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def push(api: TestClient, token: str, body: bytes, dataset: str = POLICE) -> str:
    response = api.post(
        f"/v1/datasets/{dataset}/uploads",
        params={"mode": "replace"},
        content=body,
        headers=bearer(token) | {"Content-Type": "text/csv", "Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code in (201, 422), response.text
    upload_id: str = response.json()["upload_id"]
    return upload_id


def test_a_client_lists_its_own_uploads_newest_first(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    mine = token_for(make_client())
    colleague = token_for(make_client(name="another system of the same force"))
    bad = police_rows(20, seed=3)
    bad[0]["csp"] = "Atlantis"
    sent = [
        push(api, mine, to_csv(police_rows(20, seed=1))),
        push(api, mine, to_csv(bad)),  # rejected: listed too, with its report
        push(api, mine, to_csv(police_rows(30, seed=2))),
    ]
    theirs = push(api, colleague, to_csv(police_rows(10, seed=4)))

    listed = api.get("/v1/uploads", headers=bearer(mine))
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert [u["upload_id"] for u in body["uploads"]] == sent[::-1]
    assert theirs not in {u["upload_id"] for u in body["uploads"]}
    assert body["next_before"] is None
    # Each as the upload's own status shows it.
    for upload in body["uploads"]:
        status = api.get(f"/v1/uploads/{upload['upload_id']}", headers=bearer(mine))
        assert upload == status.json()
    assert [u["status"] for u in body["uploads"]] == ["accepted", "rejected", "accepted"]

    # Pages: `before` continues from the last upload of the previous page.
    first = api.get("/v1/uploads", params={"limit": 2}, headers=bearer(mine)).json()
    assert [u["upload_id"] for u in first["uploads"]] == [sent[2], sent[1]]
    assert first["next_before"] == sent[1]
    second = api.get(
        "/v1/uploads", params={"limit": 2, "before": first["next_before"]}, headers=bearer(mine)
    ).json()
    assert [u["upload_id"] for u in second["uploads"]] == [sent[0]]
    assert second["next_before"] is None

    # A filter by dataset; another client's upload is no cursor.
    assert (
        api.get("/v1/uploads", params={"dataset": "la.imd"}, headers=bearer(mine)).json()["uploads"]
        == []
    )
    for params in ({"before": theirs}, {"limit": 0}, {"limit": 201}, {"limit": "x"}):
        refused = api.get("/v1/uploads", params=params, headers=bearer(mine))
        assert refused.status_code == 400, params
        assert refused.json()["code"] == "BAD_REQUEST"
    assert api.get("/v1/uploads").status_code == 401

    listed_events = events(platform, "upload.listed")
    assert [e.rows for e in listed_events] == [3, 2, 1, 0]
    assert listed_events[1].parameters == {"dataset": None, "before": None, "limit": 2}


def test_a_dataset_shows_its_contract_and_current_version(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    police = token_for(make_client())
    before_any = api.get(f"/v1/datasets/{POLICE}", headers=bearer(police))
    assert before_any.status_code == 200, before_any.text
    assert before_any.json()["current_version"] is None

    push(api, police, to_csv(police_rows(20, seed=1)))
    latest = push(api, police, to_csv(police_rows(25, seed=2)))
    contract = platform.contracts[POLICE]
    shown = api.get(f"/v1/datasets/{POLICE}", headers=bearer(police))
    assert shown.status_code == 200
    body = shown.json()
    assert body["dataset"] == POLICE and body["owner"] == "hampshire-constabulary"
    assert body["contract"] == {"id": POLICE, "version": contract.version, "status": "active"}
    current = body["current_version"]
    assert current["version"] == 2
    assert current["rows"] == 25
    assert current["upload_id"] == latest
    assert current["contract_version"] == contract.version
    assert current["mode"] == "replace"
    upload = api.get(f"/v1/uploads/{latest}", headers=bearer(police)).json()
    assert upload["version"] == current["version"]
    assert current["created_at"][:10] == upload["received_at"][:10]

    viewed = events(platform, "dataset.viewed")
    assert viewed[-1].resource == POLICE
    assert viewed[-1].resource_org == "hampshire-constabulary"
    assert viewed[-1].details == {"basis": "uploader"}


def test_who_may_see_a_dataset(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    """The owner's systems and IG leads, administrators, and readers of products made from
    it; anyone else gets the 404 of a dataset that does not exist, and the refusal is audited."""
    police = token_for(make_client())
    push(api, police, to_csv(police_rows(20, seed=1)))

    def status(org: str, role: str, areas: tuple[str, ...] = ()) -> int:
        token = token_for(make_client(org=org, roles=(role,), areas=areas))
        return api.get(f"/v1/datasets/{POLICE}", headers=bearer(token)).status_code

    assert status("hampshire-constabulary", "ig_lead") == 200
    assert status("vru", "admin") == 200
    assert status("portsmouth-cc", "l1_reader") == 200
    assert status("portsmouth-cc", "l2_reader", ("Portsmouth",)) == 200
    assert status("vru", "l3_practitioner", ("Portsmouth",)) == 200
    denials = len(events(platform, "access.denied"))
    assert status("hiwfrs", "partner_system") == 404
    assert status("hiwfrs", "ig_lead") == 404
    refused = events(platform, "access.denied")[denials:]
    assert [e.resource for e in refused] == [POLICE, POLICE]
    assert all(e.reason == "may not see this dataset" for e in refused)
    # Unknown and invisible look alike.
    unknown = api.get("/v1/datasets/nothing.here", headers=bearer(police))
    invisible = api.get(
        f"/v1/datasets/{POLICE}",
        headers=bearer(token_for(make_client(org="hiwfrs"))),
    )
    assert unknown.status_code == invisible.status_code == 404
    assert unknown.json()["code"] == invisible.json()["code"] == "NOT_FOUND"
    # A partner system sees its own organisation's datasets, not another's.
    fire = token_for(make_client(org="hiwfrs"))
    assert api.get("/v1/datasets/fire.deliberate_fires", headers=bearer(fire)).status_code == 200
