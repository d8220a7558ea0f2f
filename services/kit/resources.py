"""Where the files shipped beside the code are: migrations, the default contracts, policies,
configuration and product definitions.

In a checkout, migrations, contracts, policies and config are the repository's top-level
folders (docs/architecture.md). An installed wheel carries them as package data under
``together_resources`` (pyproject.toml maps the folders there), so that nothing with a generic
name lands in site-packages. Product definitions live inside the ``services`` package in both.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

Resource = Literal["migrations", "contracts", "policies", "config"]

_PACKAGE = "together_resources"
_SERVICES = Path(__file__).resolve().parents[1]


def resource_dir(name: Resource) -> Path:
    """The folder ``name`` of the code that is running.

    A checkout's own folder comes first: its migrations are the ones that match its code, even
    when a wheel of another version is installed in the same environment.
    """
    checkout = _SERVICES.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / name).is_dir():
        return checkout / name
    try:
        spec = importlib.util.find_spec(f"{_PACKAGE}.{name}")
    except ModuleNotFoundError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if Path(location).is_dir():
                return Path(location)
    raise FileNotFoundError(
        f"the platform's {name} folder is missing: this is neither a checkout of the "
        f"repository nor an installed wheel (no {_PACKAGE}.{name} package)"
    )


def products_dir() -> Path:
    """The product definitions shipped with the code."""
    return _SERVICES / "products" / "definitions"
