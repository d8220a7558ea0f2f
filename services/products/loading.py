"""The product catalogue: every definition file of the folder, read and checked at start-up.

Each file is typed and checked (``definition``), then its SQL is run on empty tables for every
choice (``compute.check_definition``), so that a definition that would fail, or leak, on a
reader's request stops the platform instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from services.contracts.model import Contract
from services.products.compute import check_definition
from services.products.config import PartnershipConfig, describe_validation_error, read_yaml
from services.products.definition import (
    ProductConfigError,
    ProductDefinition,
    ProductSpec,
    build_definition,
)

DEFINITION_SUFFIX = ".yaml"


def load_catalogue(
    definitions_dir: Path, contracts: dict[str, Contract], partnership: PartnershipConfig
) -> dict[str, ProductDefinition]:
    """Every ``<id>.yaml`` of the folder, checked; the first bad one raises ProductConfigError."""
    if not definitions_dir.is_dir():
        raise ProductConfigError(f"{definitions_dir}: not a directory of product definitions")
    strays = sorted(definitions_dir.glob("*.yml"))
    if strays:
        raise ProductConfigError(f"{strays[0]}: product files must end in {DEFINITION_SUFFIX}")
    catalogue: dict[str, ProductDefinition] = {}
    for path in sorted(definitions_dir.glob(f"*{DEFINITION_SUFFIX}")):
        definition = load_definition(path, contracts, partnership)
        if definition.id in catalogue:
            raise ProductConfigError(f"{path}: product {definition.id!r} is defined twice")
        catalogue[definition.id] = definition
    return catalogue


def load_definition(
    path: Path, contracts: Mapping[str, Contract], partnership: PartnershipConfig
) -> ProductDefinition:
    try:
        data = read_yaml(path)
    except ValueError as exc:
        raise ProductConfigError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise ProductConfigError(f"{path}: a product definition must be a YAML mapping")
    label = data.get("id") if isinstance(data.get("id"), str) else path.stem
    try:
        spec = ProductSpec.model_validate(data)
    except ValidationError as exc:
        raise ProductConfigError(
            f"product {label!r} ({path.name}): {describe_validation_error(exc)}"
        ) from None
    if path.stem != spec.id:
        raise ProductConfigError(f"product {spec.id!r} must be in a file named {spec.id}.yaml")
    definition = build_definition(spec, contracts, partnership)
    check_definition(definition)
    return definition
