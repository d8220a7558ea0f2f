"""A contract's life: loaded as a draft, classified, signed off by two IG leads, activated by
its owner; uploads always validate against the active version's stored text."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from gateway.app import create_app
from services.audit.models import AuditEvent
from services.lifecycle.models import ContractVersion
from services.platform import build_platform
from tests.fixtures.app import client_maker, token_issuer
from tests.ingestion.helpers import police_rows, to_csv
from tests.ingestion.test_uploads import push
from tests.lifecycle.conftest import POLICE, POLICE_FILE, World

MINOR_FIELD = """  - name: weather
    type: string
    max_length: 20
    required: false
    classification: level1
"""


def _minor(text: str) -> str:
    return text.replace("version: 1.0.0", "version: 1.1.0") + MINOR_FIELD


def _major(text: str) -> str:
    # A narrower domain: victims over 60 would be refused.
    text = text.replace("version: 1.0.0", "version: 2.0.0")
    return text.replace("    minimum: 0\n    maximum: 120\n", "    minimum: 0\n    maximum: 60\n")


def _events(world: World, action: str) -> list[AuditEvent]:
    with world.platform.sessions() as session:
        return list(
            session.execute(select(AuditEvent).where(AuditEvent.action == action)).scalars()
        )


def _partner(world: World) -> str:
    return world.token_for(world.make())


def test_the_shipped_contracts_are_active_and_an_unchanged_load_does_nothing(
    world: World,
) -> None:
    versions = world.versions()
    assert [(v["version"], v["state"]) for v in versions] == [("1.0.0", "active")]
    assert versions[0]["activated_by"] == "cli:db-upgrade"
    before = len(_events(world, "contract.loaded"))
    assert {r.outcome for r in world.load()} == {"unchanged"}
    assert len(_events(world, "contract.loaded")) == before


def test_the_first_load_of_an_installation_makes_the_shipped_contracts_active_audited(
    world: World,
) -> None:
    with world.platform.sessions() as session:
        session.execute(delete(ContractVersion))
        session.commit()
    results = world.load()
    shipped = sorted(path.stem for path in world.contracts.glob("*.yaml"))
    assert sorted(r.dataset for r in results if r.outcome == "installed") == shipped
    events = _events(world, "contract.loaded")
    assert sorted(str(e.resource) for e in events) == shipped
    assert all(e.details["installed"] and e.details["state"] == "active" for e in events)
    assert all(e.actor == "cli:contracts-load" for e in events)
    # Once installed, a change is a draft, never active at once.
    world.edit(POLICE_FILE, _minor)
    assert next(r for r in world.load() if r.dataset == POLICE).outcome == "draft"


def test_a_changed_file_becomes_a_draft_classified_minor(world: World) -> None:
    world.edit(POLICE_FILE, _minor)
    results = {r.dataset: r for r in world.load()}
    assert results[POLICE].outcome == "draft"
    draft, active = world.versions()
    assert (draft["version"], draft["state"], draft["classification"]) == (
        "1.1.0",
        "draft",
        "minor",
    )
    assert draft["against"] == "1.0.0"
    assert {"kind": "minor", "where": "field weather", "what": "new optional field"} in draft[
        "changes"
    ]
    assert active["state"] == "active"
    event = _events(world, "contract.loaded")[-1]
    assert event.details["state"] == "draft"
    assert event.details["content_sha256"] == draft["content_sha256"]


def test_a_major_change_is_classified_and_checked_against_the_data_held(world: World) -> None:
    rows = police_rows(200)
    old = [i for i, row in enumerate(rows) if row["victim_age"] and int(row["victim_age"]) > 60]
    assert old, "the sample holds victims over 60"
    assert push(world.api, _partner(world), to_csv(rows)).status_code == 201
    world.edit(POLICE_FILE, _major)
    world.load()
    draft = world.versions()[0]
    assert (draft["version"], draft["classification"]) == ("2.0.0", "major")
    assert {"kind": "major", "where": "field victim_age", "what": "maximum 120 -> 60"} in draft[
        "changes"
    ]
    # The check is made when the draft is first shown for sign-off (the IG page), or signed.
    lead = world.token("hampshire-constabulary")
    assert world.sign(lead, "2.0.0").status_code == 200
    validation = world.versions()[0]["validation"]
    assert validation["checked"] is True and validation["dataset_version"] == 1
    assert validation["ok"] is False
    assert validation["report"]["totals"] == {"maximum": len(old)}
    assert "suspect_surname" in validation["not_rechecked"]


def test_a_version_number_that_does_not_say_the_change_is_refused(world: World) -> None:
    world.edit(POLICE_FILE, lambda t: _major(t).replace("version: 2.0.0", "version: 1.1.0"))
    result = next(r for r in world.load() if r.dataset == POLICE)
    assert result.outcome == "refused"
    assert "major change" in result.detail
    assert [v["version"] for v in world.versions()] == ["1.0.0"]


def test_both_organisations_sign_off_then_the_owner_activates_and_the_old_retires(
    world: World,
) -> None:
    world.edit(POLICE_FILE, _minor)
    world.load()
    owner, vru = world.token("hampshire-constabulary"), world.token("vru")
    first = world.sign(owner, "1.1.0")
    assert first.status_code == 200, first.text
    assert first.json()["state"] == "draft"
    # Not yet approved: activation waits.
    refused = world.activate(owner, "1.1.0")
    assert refused.status_code == 409 and refused.json()["code"] == "CONTRACT_VERSION_STATE"
    second = world.sign(vru, "1.1.0")
    assert second.status_code == 200, second.text
    assert second.json()["state"] == "approved"
    signoffs = second.json()["signoffs"]
    assert [s["organisation"] for s in signoffs] == ["hampshire-constabulary", "vru"]
    assert {s["content_sha256"] for s in signoffs} == {second.json()["content_sha256"]}
    # Only the owner activates.
    assert world.activate(vru, "1.1.0").status_code == 403
    active = world.activate(owner, "1.1.0")
    assert active.status_code == 200, active.text
    states = {v["version"]: v["state"] for v in world.versions()}
    assert states == {"1.1.0": "active", "1.0.0": "retired"}
    assert [e.details["capacity"] for e in _events(world, "contract.signed_off")] == [
        "owner",
        "vru",
    ]
    assert len(_events(world, "contract.approved")) == 1
    assert _events(world, "contract.activated")[-1].details["retired"] == "1.0.0"
    # Uploads now validate against 1.1.0, which knows the new field.
    rows = police_rows(50)
    response = push(world.api, _partner(world), to_csv(rows, {"weather": "rain"}))
    assert response.status_code == 201, response.text
    assert response.json()["contract_version"] == "1.1.0"


def test_the_same_principal_cannot_sign_twice_nor_for_both(world: World) -> None:
    world.edit(POLICE_FILE, _minor)
    world.edit("la.imd.yaml", _minor)
    world.load()
    owner = world.token("hampshire-constabulary")
    assert world.sign(owner, "1.1.0").status_code == 200
    again = world.sign(owner, "1.1.0")
    assert again.status_code == 409, again.text
    assert again.json()["code"] == "ALREADY_SIGNED_OFF"
    # Nor for the VRU: the policy lets a lead sign only for their own organisation.
    assert world.sign(owner, "1.1.0", organisation="vru").status_code == 403
    # The VRU's own contract needs two VRU leads: one cannot give both sign-offs.
    vru = world.token("vru")
    assert world.sign(vru, "1.1.0", dataset="la.imd").status_code == 200
    twice = world.sign(vru, "1.1.0", dataset="la.imd")
    assert twice.status_code == 409 and "another person" in twice.json()["detail"]
    other = world.token("vru")
    assert world.sign(other, "1.1.0", dataset="la.imd").json()["state"] == "approved"
    denied = [e for e in _events(world, "access.denied") if e.resource_type == "contract"]
    assert [e.reason for e in denied].count("signed off twice") == 2


def test_a_stale_content_hash_is_refused(world: World) -> None:
    world.edit(POLICE_FILE, _minor)
    world.load()
    response = world.sign(world.token("hampshire-constabulary"), "1.1.0", content_sha256="0" * 64)
    assert response.status_code == 409
    assert "content hash" in response.json()["detail"]


def test_a_client_without_ig_lead_is_refused_and_audited(world: World) -> None:
    world.edit(POLICE_FILE, _minor)
    world.load()
    response = world.sign(_partner(world), "1.1.0")
    assert response.status_code == 403, response.text
    assert world.activate(_partner(world), "1.0.0").status_code == 403
    denied = [e for e in _events(world, "access.denied") if e.resource_type == "contract"]
    assert [e.details["action"] for e in denied] == ["contract:signoff", "contract:activate"]
    assert world.versions()[0]["signoffs"] == []


def test_an_upload_validates_against_the_active_version_not_the_file(world: World) -> None:
    # The file on disk now refuses victims over 60, and asks for a new required field.
    world.edit(
        POLICE_FILE,
        lambda t: (
            _major(t) + "  - name: beat\n    type: string\n    max_length: 10\n    required: true\n"
            "    classification: level1\n"
        ),
    )
    world.load()
    rows = police_rows(200)
    response = push(world.api, _partner(world), to_csv(rows))
    assert response.status_code == 201, response.text
    assert response.json()["contract_version"] == "1.0.0"
    listed = world.api.get("/v1/contracts", headers=world.bearer(_partner(world))).json()
    police = next(c for c in listed["contracts"] if c["id"] == POLICE)
    assert police["active_version"] == "1.0.0"


def test_an_upload_to_a_contract_with_no_active_version_is_refused(
    world: World, tmp_path: Path
) -> None:
    with world.platform.sessions() as session:
        row = session.execute(
            select(ContractVersion).where(ContractVersion.dataset_id == POLICE)
        ).scalar_one()
        row.state = "retired"
        session.commit()
    response = push(world.api, _partner(world), to_csv(police_rows(20)))
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "CONTRACT_NOT_ACTIVE"
    assert "1.0.0 is retired" in response.json()["detail"]
    refused = _events(world, "dataset.rejected")[-1]
    assert refused.reason == "contract not active"


def test_a_new_contract_is_a_draft_and_takes_no_upload(world: World, tmp_path: Path) -> None:
    text = (world.contracts / POLICE_FILE).read_text(encoding="utf-8")
    (world.contracts / "police.stops.yaml").write_text(
        text.replace("id: police.occurrences", "id: police.stops"), encoding="utf-8"
    )
    results = {r.dataset: r for r in world.load()}
    assert results["police.stops"].outcome == "draft"
    platform = build_platform(world.settings)
    try:
        with TestClient(create_app(world.settings, platform)) as api:
            token = token_issuer(api)(client_maker(platform)())
            response = push(
                api, token, to_csv(police_rows(20)), url="/v1/datasets/police.stops/uploads"
            )
            assert response.status_code == 409, response.text
            assert "version 1.0.0 is draft" in response.json()["detail"]
    finally:
        platform.close()
