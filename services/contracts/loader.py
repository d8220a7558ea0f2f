"""Reading contract files, with errors a data-protection officer can act on.

Every failure (unreadable file, YAML syntax, a key of the wrong type, a broken rule) becomes a
``ContractError`` whose text names the file, the place in the contract and, where it can be
found, the line: ``contracts/x.yaml: fields[3].type: 'int' is not one of string, ... (line 57)``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from services.contracts.model import CONTRACT_RULE, Contract, ContractField, PersonSpec
from services.kit.resources import resource_dir
from services.kit.yamlfile import StrictLoader

CONTRACT_SUFFIX = ".yaml"


@dataclass(frozen=True)
class ContractProblem:
    location: str | None
    message: str
    line: int | None = None

    def render(self) -> str:
        text = f"{self.location}: {self.message}" if self.location else self.message
        return f"{text} (line {self.line})" if self.line else text


class ContractError(Exception):
    """A contract that cannot be used. ``problems`` lists every problem found, first first."""

    def __init__(
        self,
        message: str,
        path: Path | None = None,
        location: str | None = None,
        *,
        line: int | None = None,
        problems: Sequence[ContractProblem] = (),
    ) -> None:
        self.message = message
        self.path = path
        self.location = location
        self.line = line
        self.problems: list[ContractProblem] = list(problems) or [
            ContractProblem(location, message, line)
        ]
        super().__init__(self._render())

    def _render(self) -> str:
        first = self.problems[0].render()
        text = f"{self.path}: {first}" if self.path is not None else first
        more = len(self.problems) - 1
        if more:
            text += f" (and {more} more problem{'s' if more > 1 else ''})"
        return text


def default_contracts_dir() -> Path:
    """The shipped ``contracts/`` folder (a checkout's, or an installed wheel's); callers with
    settings pass their own path."""
    return resource_dir("contracts")


def load_contract(path: Path) -> Contract:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError(f"the file is not UTF-8 text ({exc.reason})", path) from exc
    except OSError as exc:
        raise ContractError(f"cannot read the file: {exc.strerror or exc}", path) from exc
    data, root = _parse_yaml(text, path)
    if data is None:
        raise ContractError("the file is empty", path)
    if not isinstance(data, dict):
        raise ContractError(
            f"a contract must be a YAML mapping of keys, not a {type(data).__name__}", path, line=1
        )
    try:
        return Contract.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc, data, root)
        first = problems[0]
        raise ContractError(
            first.message, path, first.location, line=first.line, problems=problems
        ) from None


def load_contracts(directory: Path) -> dict[str, Contract]:
    """Every ``<id>.yaml`` in ``directory`` by id; the first bad file raises ``ContractError``."""
    if not directory.is_dir():
        raise ContractError("not a directory of contracts", directory)
    contracts: dict[str, Contract] = {}
    for path in contract_files(directory):
        contract = load_contract(path)
        check_file_name(path, contract)
        if contract.id in contracts:
            raise ContractError(f"contract id {contract.id!r} is declared twice", path, "id")
        contracts[contract.id] = contract
    return contracts


def contract_files(directory: Path) -> list[Path]:
    """The contract files of a directory, sorted; a ``.yml`` file is an error, not skipped."""
    strays = sorted(directory.glob("*.yml"))
    if strays:
        raise ContractError(
            f"contract files must end in {CONTRACT_SUFFIX} (this one would be ignored)", strays[0]
        )
    return sorted(p for p in directory.glob(f"*{CONTRACT_SUFFIX}") if p.is_file())


def check_file_name(path: Path, contract: Contract) -> None:
    # The id is how partners address a dataset; a file named differently would let two files
    # claim one id, or make the catalogue disagree with what is on disk.
    expected = f"{contract.id}{CONTRACT_SUFFIX}"
    if path.name != expected:
        raise ContractError(
            f"the file of contract {contract.id!r} must be named {expected!r}", path, "id"
        )


# YAML


def _parse_yaml(text: str, path: Path) -> tuple[Any, Node | None]:
    loader = StrictLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ContractError(
            f"YAML syntax error: {problem}{where}", path, line=mark.line + 1 if mark else None
        ) from None
    except yaml.YAMLError as exc:
        raise ContractError(f"YAML syntax error: {exc}", path) from None
    finally:
        loader.dispose()
    return data, root


def _node_at(root: Node | None, loc: Sequence[str | int]) -> Node | None:
    """The YAML node at a pydantic location, for line numbers; the key's node for a bad key."""
    node = root
    for part in loc:
        if isinstance(node, MappingNode):
            match = None
            for key_node, value_node in node.value:
                if isinstance(key_node, ScalarNode) and key_node.value == str(part):
                    match = value_node
                    if part == loc[-1]:
                        match = key_node if isinstance(value_node, MappingNode) else value_node
                    break
            if match is None:
                return node
            node = match
        elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node
    return node


# Pydantic errors to sentences


def format_location(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _listed(expected: str) -> str:
    # pydantic writes "'a', 'b' or 'c'"; a contract author wants "a, b, c".
    names = re.findall(r"'([^']*)'", expected)
    return ", ".join(names) if names else expected


_PATTERN_HINTS: dict[str, str] = {
    "id": "must look like sector.dataset, lower-case letters and underscores",
    "name": "must start with a lower-case letter and hold only a-z, 0-9 and _",
    "owner": "must be an organisation id such as hampshire-constabulary",
    "version": "must be a semantic version such as 1.0.0",
    "purposes": "must be a purpose code such as strategic-needs-assessment",
}


def _model_for(loc: Sequence[str | int]) -> type[BaseModel]:
    if len(loc) >= 2 and loc[0] == "fields" and isinstance(loc[1], int):
        return ContractField
    if loc and loc[0] == "person":
        return PersonSpec
    return Contract


def _describe(error: Any) -> str:
    kind: str = error["type"]
    value = error.get("input")
    ctx: dict[str, Any] = error.get("ctx") or {}
    loc: tuple[str | int, ...] = tuple(error["loc"])
    if kind in ("enum", "literal_error"):
        return f"{value!r} is not one of {_listed(str(ctx.get('expected', '')))}"
    if kind == "extra_forbidden":
        model = _model_for(loc)
        known = list(model.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        suggestion = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown key {loc[-1]!r} (allowed: {', '.join(known)}){suggestion}"
    if kind == "missing":
        return "is required"
    if kind == "string_type":
        return (
            f"expected text, got {type(value).__name__} {value!r}; "
            "quote it in the YAML (e.g. '2' or 'yes')"
        )
    if kind == "string_pattern_mismatch":
        name = next((p for p in reversed(loc) if isinstance(p, str)), "")
        hint = _PATTERN_HINTS.get(name, f"must match {ctx.get('pattern')}")
        return f"{value!r} {hint}"
    if kind == "too_short":
        return "must not be empty"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {value!r}"
    if kind in ("list_type",):
        return f"expected a list, got {type(value).__name__}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of keys, got {type(value).__name__}"
    message: str = error["msg"]
    return message.removeprefix("Value error, ")


def _field_name(data: Any, loc: Sequence[str | int]) -> str | None:
    if len(loc) >= 2 and loc[0] == "fields" and isinstance(loc[1], int):
        fields = data.get("fields") if isinstance(data, dict) else None
        if isinstance(fields, list) and loc[1] < len(fields) and isinstance(fields[loc[1]], dict):
            name = fields[loc[1]].get("name")
            return name if isinstance(name, str) else None
    return None


_UNION_TAGS = frozenset({"int", "float", "str"})


def _problems(exc: ValidationError, data: Any, root: Node | None) -> list[ContractProblem]:
    problems: list[ContractProblem] = []
    seen_locations: set[tuple[str | int, ...]] = set()
    for error in exc.errors():
        base: tuple[str | int, ...] = tuple(error["loc"])
        if error["type"] == CONTRACT_RULE:
            entries = [(base + tuple(rel), msg) for rel, msg in error["ctx"]["problems"]]
        elif base and base[-1] in _UNION_TAGS:
            # Pydantic reports a failure per member of the bound's union; one sentence will do.
            entries = [
                (base[:-1], "must be a number, or for a date or timestamp a 'YYYY-MM-DD' text")
            ]
        else:
            entries = [(base, _describe(error))]
        for loc, message in entries:
            if loc in seen_locations and error["type"] != CONTRACT_RULE:
                continue
            seen_locations.add(loc)
            node = _node_at(root, loc)
            line = node.start_mark.line + 1 if node is not None else None
            name = _field_name(data, loc)
            if name and not (len(loc) == 3 and loc[2] == "name"):
                message = f"{message} [field {name!r}]"
            problems.append(ContractProblem(format_location(loc) or None, message, line))
    return problems
