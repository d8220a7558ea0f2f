"""The IG pages for data governance: withdrawals confirmed or refused, erasures, the signed
certificates they produce, and subject access, by a signed-in IG lead (no API client), through
the same audited use cases as the API; on SQLite and PostgreSQL, local folder and S3."""

from __future__ import annotations

import csv
import io
import json
import re

from fastapi.testclient import TestClient

from services.platform import Platform
from services.retention import certificates
from services.retention.models import DataDeletion
from services.retention.subject_access import CSV_COLUMNS
from tests.fixtures.audit_events import POLICE
from tests.gateway.test_ig_pages import _csrf, _events_of, _sign_in, _user
from tests.ingestion.helpers import police_rows, to_csv
from tests.ingestion.test_uploads import push

DATASET = "police.occurrences"
FIRE = "hiwfrs"


def _loaded(api: TestClient, police_token: str) -> list[dict[str, str]]:
    rows = police_rows(80)
    assert push(api, police_token, to_csv(rows)).status_code == 201
    return rows


def _suspect(rows: list[dict[str, str]]) -> tuple[dict[str, str], int]:
    """The suspect named in the most rows, and how many."""
    counts: dict[str, int] = {}
    for row in rows:
        if row["suspect_nominal_ref"]:
            counts[row["suspect_nominal_ref"]] = counts.get(row["suspect_nominal_ref"], 0) + 1
    ref = max(counts, key=lambda r: counts[r])
    return next(row for row in rows if row["suspect_nominal_ref"] == ref), counts[ref]


def _keys(platform: Platform) -> dict[str, bytes]:
    return {k.key_id: k.raw for k in platform.audit_signer.published_keys()}


def _state(platform: Platform, deletion_id: str) -> str:
    with platform.sessions() as session:
        row = session.get(DataDeletion, deletion_id)
        assert row is not None
        return row.state


def test_the_governance_pages_need_a_session(api: TestClient) -> None:
    for path in ("/ig/deletions", "/ig/subject-access", f"/ig/deletions/{DATASET}/x"):
        response = api.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/ig/sign-in"
    refused = api.post("/ig/subject-access", data={"csrf": "x"}, follow_redirects=False)
    assert refused.status_code == 303


def test_a_withdrawal_asked_over_the_api_is_confirmed_on_the_page_and_certified(
    api: TestClient, platform: Platform, police_token: str
) -> None:
    _loaded(api, police_token)
    asked = api.request(
        "DELETE",
        f"/v1/datasets/{DATASET}",
        json={"reason": "the sharing agreement ended"},
        headers={"Authorization": f"Bearer {police_token}"},
    )
    assert asked.status_code == 202, asked.text
    deletion_id = asked.json()["id"]
    decision = f"/ig/deletions/{DATASET}/withdrawals/{deletion_id}/decision"

    # Another organisation's IG lead sees only their own datasets, and may not decide.
    _user(platform, "fred", FIRE)
    assert _sign_in(api, "fred") == 303
    theirs = api.get("/ig/deletions")
    assert theirs.status_code == 200
    assert "fire.deliberate_fires" in theirs.text
    assert DATASET not in theirs.text and deletion_id not in theirs.text
    refused = api.post(decision, data={"decision": "confirm", "csrf": _csrf(theirs.text)})
    assert refused.status_code == 403 and 'role="alert"' in refused.text
    assert "not permitted" in refused.text
    assert api.get(f"/ig/deletions/{DATASET}/{deletion_id}.json").status_code == 403
    assert _state(platform, deletion_id) == "requested"

    _user(platform, "olga", POLICE)
    assert _sign_in(api, "olga") == 303
    page = api.get("/ig/deletions")
    assert page.status_code == 200
    assert 'href="/ig/deletions"' in page.text and 'href="/ig/subject-access"' in page.text
    assert f'id="withdrawal-{deletion_id}"' in page.text
    assert "Confirm withdrawal" in page.text and "Refuse" in page.text
    # A form without this session's token is refused, audited, and decides nothing.
    forged = api.post(decision, data={"decision": "confirm", "csrf": "forged"})
    assert forged.status_code == 403
    assert _events_of(platform, "ig.request_refused")[-1].actor == "user:olga"
    assert _state(platform, deletion_id) == "requested"

    confirmed = api.post(
        decision, data={"decision": "confirm", "csrf": _csrf(page.text)}, follow_redirects=False
    )
    assert confirmed.status_code == 303
    assert confirmed.headers["location"] == f"/ig/deletions/{DATASET}/{deletion_id}"
    result = api.get(confirmed.headers["location"])
    assert result.status_code == 200 and "Certified: 80 rows removed" in result.text
    assert _state(platform, deletion_id) == "certified"

    download = api.get(f"/ig/deletions/{DATASET}/{deletion_id}.json")
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("application/json")
    assert download.headers["content-disposition"] == (
        f'attachment; filename="deletion-certificate-{deletion_id}.json"'
    )
    document = json.loads(download.content)
    assert certificates.verify(document, _keys(platform)) == []
    body = document["certificate"]
    assert body["kind"] == "withdrawal" and body["rows_removed"] == 80
    assert body["confirmed_by"] == "user:olga"
    # The same document as the API serves.
    listed = api.get(
        f"/v1/datasets/{DATASET}/deletions", headers={"Authorization": f"Bearer {police_token}"}
    )
    assert listed.json()["deletions"][0] == document
    # Decided once: deciding again is the house error page, with the use case's 409.
    again = api.post(decision, data={"decision": "refuse", "csrf": _csrf(page.text)})
    assert again.status_code == 409 and 'role="alert"' in again.text
    listing = api.get("/ig/deletions").text
    assert "Confirm withdrawal" not in listing
    assert f'href="/ig/deletions/{DATASET}/{deletion_id}.json"' in listing
    [certified] = _events_of(platform, "deletion.certified")
    assert certified.actor == "user:olga" and certified.actor_org == POLICE


def test_a_refused_withdrawal_deletes_nothing(
    api: TestClient, platform: Platform, police_token: str
) -> None:
    _loaded(api, police_token)
    asked = api.delete(
        f"/v1/datasets/{DATASET}", headers={"Authorization": f"Bearer {police_token}"}
    )
    deletion_id = asked.json()["id"]
    _user(platform, "olga", POLICE)
    assert _sign_in(api, "olga") == 303
    page = api.get("/ig/deletions").text
    refused = api.post(
        f"/ig/deletions/{DATASET}/withdrawals/{deletion_id}/decision",
        data={"decision": "refuse", "csrf": _csrf(page)},
    )
    assert refused.status_code == 200 and "refused: nothing was deleted" in refused.text
    assert _state(platform, deletion_id) == "cancelled"
    assert api.get(f"/ig/deletions/{DATASET}/{deletion_id}.json").status_code == 404
    assert _events_of(platform, "dataset.withdrawal_refused")[-1].actor == "user:olga"


def test_an_erasure_through_the_form_is_certified(
    api: TestClient, platform: Platform, police_token: str
) -> None:
    rows = _loaded(api, police_token)
    suspect, held = _suspect(rows)
    ref = suspect["suspect_nominal_ref"]
    _user(platform, "olga", POLICE)
    assert _sign_in(api, "olga") == 303
    page = api.get("/ig/deletions").text
    url = f"/ig/deletions/{DATASET}/erasures"
    assert f'action="{url}"' in page and 'name="identifier_value"' in page
    form = {
        "identifier_name": "suspect_nominal_ref",
        "identifier_value": ref,
        "reason": "UK GDPR Art 17 request upheld",
        "case_reference": "SAR-2026-0042",
        "csrf": _csrf(page),
    }
    bad_date = api.post(url, data=form | {"surname": "X", "forename": "Y", "dob": "1/2/03"})
    assert bad_date.status_code == 400 and "YYYY-MM-DD" in bad_date.text
    no_reason = api.post(url, data=form | {"reason": " "})
    assert no_reason.status_code == 400 and "reason" in no_reason.text
    erased = api.post(url, data=form, follow_redirects=False)
    assert erased.status_code == 303, erased.text
    deletion_id = erased.headers["location"].rsplit("/", 1)[1]
    result = api.get(erased.headers["location"]).text
    assert f"Certified: {held} row" in result and "SAR-2026-0042" in result
    assert "suspect_nominal_ref" in result and ref not in result
    document = api.get(f"/ig/deletions/{DATASET}/{deletion_id}.json").json()
    assert certificates.verify(document, _keys(platform)) == []
    assert document["certificate"]["kind"] == "erasure"
    assert document["certificate"]["rows_removed"] == held
    assert ref not in json.dumps(document)
    # Erasing the same person again finds nobody, and that is certified too.
    again = api.post(url, data=form)
    assert again.status_code == 200 and "Certified: 0 rows removed" in again.text


def test_subject_access_answers_as_tables_and_downloads_the_csv(
    api: TestClient, platform: Platform, police_token: str
) -> None:
    rows = _loaded(api, police_token)
    suspect, held = _suspect(rows)
    ref = suspect["suspect_nominal_ref"]
    _user(platform, "olga", POLICE)
    assert _sign_in(api, "olga") == 303
    form_page = api.get("/ig/subject-access")
    assert form_page.status_code == 200
    assert re.search(r'<form method="post" action="/ig/subject-access"', form_page.text)
    asked = {
        "identifier_name": "suspect_nominal_ref",
        "identifier_value": ref,
        "csrf": _csrf(form_page.text),
    }
    answer = api.post("/ig/subject-access", data=asked)
    assert answer.status_code == 200, answer.text
    html = answer.text
    assert f"{held} stored row(s) about this person in 1 dataset(s)" in html
    datasets = re.search(r'<table class="sar-datasets">.*?</table>', html, re.S)
    assert datasets and DATASET in datasets.group(0) and "(current)" in datasets.group(0)
    fields = re.search(
        r'<table class="sar-fields" data-dataset="police.occurrences">.*?</table>', html, re.S
    )
    assert fields and suspect["suspect_surname"] in fields.group(0)
    assert "Download CSV" in html and "sar-products" in html
    # The person's values are in the form bodies only, never in an address on the page.
    addresses = re.findall(r'(?:href|action)="([^"]*)"', html)
    assert addresses and not any(ref in a or suspect["suspect_surname"] in a for a in addresses)
    [event] = _events_of(platform, "subject_access.answered")
    assert event.actor == "user:olga" and event.rows == held
    assert event.parameters["identifiers"] == ["suspect_nominal_ref"]
    assert ref not in event.canonical

    exported = api.post("/ig/subject-access", data=asked | {"format": "csv"})
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    lines = list(csv.reader(io.StringIO(exported.text)))
    assert tuple(lines[0]) == CSV_COLUMNS
    assert any(suspect["suspect_surname"] in line[CSV_COLUMNS.index("values")] for line in lines)
    assert _events_of(platform, "subject_access.answered")[-1].parameters["format"] == "csv"

    # Nobody: answered, and said so.
    nobody = api.post("/ig/subject-access", data=asked | {"identifier_value": "NOBODY-1"})
    assert "the platform holds no rows about this person" in nobody.text.lower()
    missing = api.post("/ig/subject-access", data={"csrf": asked["csrf"]})
    assert missing.status_code == 400 and "surname, forename and date of birth" in missing.text


def test_only_an_ig_lead_sees_the_governance_links_and_may_ask(
    api: TestClient, platform: Platform
) -> None:
    _user(platform, "adam", POLICE, role="admin")
    assert _sign_in(api, "adam") == 303
    page = api.get("/ig/subject-access")
    assert 'href="/ig/subject-access"' not in page.text
    assert 'href="/ig/deletions"' not in page.text
    refused = api.post(
        "/ig/subject-access",
        data={
            "identifier_name": "suspect_nominal_ref",
            "identifier_value": "N1",
            "csrf": _csrf(page.text),
        },
    )
    assert refused.status_code == 403 and "answered by an IG lead" in refused.text
    assert api.get("/ig/deletions").status_code == 403
    assert _events_of(platform, "subject_access.answered") == []
