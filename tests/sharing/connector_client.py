"""Run in the connector's own environment (.venv-connector): the official connector, as an analyst.

Argument: a JSON job ``{"profile": PATH, "load": [share.schema.table, ...]}``. Prints a JSON
answer: the tables ``list_all_tables`` gives, the rows ``load_as_pandas`` gives for each table
to load (cells as the JSON API writes them), and every host the process resolved or connected
to (recorded by an audit hook installed before the connector is imported).
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

CONTACTED: set[str] = set()


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect":
        address = args[1]
        CONTACTED.add(str(address[0]) if isinstance(address, tuple) else str(address))
    elif event == "socket.getaddrinfo":
        CONTACTED.add(str(args[0]))


sys.addaudithook(_hook)

import delta_sharing  # noqa: E402 (after the hook, so that nothing it does goes unseen)


def _plain(value: Any) -> Any:
    """A pandas cell as JSON (NaN is null; numpy scalars and arrays become numbers and lists)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def main() -> None:
    job = json.loads(sys.argv[1])
    profile = job["profile"]
    client = delta_sharing.SharingClient(profile)
    tables = sorted(f"{t.share}.{t.schema}.{t.name}" for t in client.list_all_tables())
    rows = {}
    for key in job["load"]:
        frame = delta_sharing.load_as_pandas(f"{profile}#{key}")
        rows[key] = [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]
    print(json.dumps({"tables": tables, "rows": rows, "contacted": sorted(CONTACTED)}))


if __name__ == "__main__":
    main()
    # The answer is out; leave without the interpreter's teardown, where the connector's native
    # thread pools now and then abort the process after its work is done ("terminate called
    # without an active exception", SIGABRT; apache/arrow#34314). Any failure before this line
    # still exits non-zero with its traceback.
    sys.stdout.flush()
    os._exit(0)
