"""The partnership's fixed vocabulary: organisations and Community Safety Partnership areas."""

from __future__ import annotations

import difflib

from services.kit.errors import BadRequest

ORGANISATIONS: dict[str, str] = {
    "vru": "Violence Reduction Unit",
    "hampshire-constabulary": "Hampshire & Isle of Wight Constabulary",
    "hiwfrs": "Hampshire & Isle of Wight Fire and Rescue Service",
    "hiow-icb": "Hampshire & Isle of Wight Integrated Care Board",
    "hampshire-cc": "Hampshire County Council",
    "portsmouth-cc": "Portsmouth City Council",
    "southampton-cc": "Southampton City Council",
    "iow-council": "Isle of Wight Council",
    "probation-south-central": "Probation Service, South Central",
    "yjs-hampshire": "Hampshire Youth Justice Service",
    "yjs-portsmouth": "Portsmouth Youth Justice Service",
    "yjs-southampton": "Southampton Youth Justice Service",
    "yjs-iow": "Isle of Wight Youth Justice Service",
    "basingstoke-deane-bc": "Basingstoke and Deane Borough Council",
    "east-hampshire-dc": "East Hampshire District Council",
    "eastleigh-bc": "Eastleigh Borough Council",
    "fareham-bc": "Fareham Borough Council",
    "gosport-bc": "Gosport Borough Council",
    "hart-dc": "Hart District Council",
    "havant-bc": "Havant Borough Council",
    "new-forest-dc": "New Forest District Council",
    "rushmoor-bc": "Rushmoor Borough Council",
    "test-valley-bc": "Test Valley Borough Council",
    "winchester-cc": "Winchester City Council",
}

CSP_AREAS: tuple[str, ...] = (
    "Basingstoke and Deane",
    "East Hampshire",
    "Eastleigh",
    "Fareham",
    "Gosport",
    "Hart",
    "Havant",
    "Isle of Wight",
    "New Forest",
    "Portsmouth",
    "Rushmoor",
    "Southampton",
    "Test Valley",
    "Winchester",
)


def require_organisation(organisation: str) -> None:
    """Refuse an organisation the partnership does not have, saying which ones it has."""
    if organisation in ORGANISATIONS:
        return
    close = difflib.get_close_matches(organisation, list(ORGANISATIONS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise BadRequest(
        f"unknown organisation {organisation!r}{hint}; the known organisations are: "
        + ", ".join(sorted(ORGANISATIONS))
    )
