"""The contract linter: every load error, plus the rules of law and good practice.

Run it on a file or a directory (``python -m services.contracts.lint contracts/``); it exits
non-zero when any error is found, so CI can refuse a contract before it is deployed.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services.contracts.loader import (
    ContractError,
    check_file_name,
    contract_files,
    default_contracts_dir,
    load_contract,
)
from services.contracts.model import Classification, Contract, FieldType, Protection, Sector
from services.kit.partnership import ORGANISATIONS

Severity = Literal["error", "warning"]

S16_4 = (
    "PCSC Act 2022 s.16(4): the Serious Violence Duty's information gateway does not cover "
    "personal information from health or social care"
)
_NO_PERSONAL_DATA_SECTORS = frozenset({Sector.HEALTH, Sector.SOCIAL_CARE})


@dataclass(frozen=True)
class LintMessage:
    path: Path
    severity: Severity
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.severity}: {self.message}"


def lint_contract(path: Path, contract: Contract) -> list[LintMessage]:
    """The rules beyond the format, for a contract that loaded."""
    messages: list[LintMessage] = []
    if contract.owner not in ORGANISATIONS:
        # The owner decides who may upload (the policy's own_org scope) and whose IG lead sees
        # the dataset's audit: an unknown owner would make a dataset nobody can send or review.
        close = difflib.get_close_matches(contract.owner, list(ORGANISATIONS), n=1)
        suggestion = f"; did you mean {close[0]!r}?" if close else ""
        messages.append(
            LintMessage(
                path,
                "error",
                f"owner: {contract.owner!r} is not a known organisation of the partnership"
                f"{suggestion}",
            )
        )
    if contract.sector in _NO_PERSONAL_DATA_SECTORS:
        for index, spec in enumerate(contract.fields):
            if spec.protection is not Protection.NONE:
                messages.append(
                    LintMessage(
                        path,
                        "error",
                        f"fields[{index}] ({spec.name}): a {contract.sector} contract cannot "
                        f"declare a {spec.protection} field; {S16_4}",
                    )
                )
        if contract.person is not None:
            messages.append(
                LintMessage(
                    path,
                    "error",
                    f"person: a {contract.sector} contract cannot declare a person block; {S16_4}",
                )
            )
    for index, spec in enumerate(contract.fields):
        if spec.type is FieldType.STRING and spec.max_length is None:
            # Without a bound one cell can be megabytes: it is stored, encrypted and shown to
            # every reader of the dataset. The agreement should say how long a value can be.
            messages.append(
                LintMessage(
                    path,
                    "error",
                    f"fields[{index}] ({spec.name}): a string field needs a max_length "
                    "(names 100, free text a few thousand, codes their real length)",
                )
            )
        if spec.classification is Classification.LEVEL3 and spec.protection is Protection.NONE:
            messages.append(
                LintMessage(
                    path,
                    "warning",
                    f"fields[{index}] ({spec.name}): classification level3 but protection none; "
                    "an identifying value would be stored in clear (use identifier or "
                    "direct_identifier)",
                )
            )
    return messages


def _errors(error: ContractError, fallback: Path) -> list[LintMessage]:
    path = error.path or fallback
    return [LintMessage(path, "error", problem.render()) for problem in error.problems]


def lint_path(path: Path) -> list[LintMessage]:
    """Lint one contract file, or every ``*.yaml`` contract in a directory."""
    if path.is_dir():
        try:
            files = contract_files(path)
        except ContractError as exc:
            return _errors(exc, path)
        if not files:
            return [LintMessage(path, "warning", "no contract files (*.yaml) here")]
    elif path.exists():
        files = [path]
    else:
        return [LintMessage(path, "error", "no such file or directory")]
    messages: list[LintMessage] = []
    ids: dict[str, Path] = {}
    for file in files:
        try:
            contract = load_contract(file)
            check_file_name(file, contract)
        except ContractError as exc:
            messages.extend(_errors(exc, file))
            continue
        if contract.id in ids:
            messages.append(
                LintMessage(
                    file, "error", f"id: {contract.id!r} is also declared in {ids[contract.id]}"
                )
            )
        ids.setdefault(contract.id, file)
        messages.extend(lint_contract(file, contract))
    return messages


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    paths = [Path(argument) for argument in arguments] or [default_contracts_dir()]
    messages = [message for path in paths for message in lint_path(path)]
    for message in messages:
        print(message)
    errors = sum(message.severity == "error" for message in messages)
    warnings = len(messages) - errors
    print(f"{errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
