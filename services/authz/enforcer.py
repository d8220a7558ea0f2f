"""Casbin behind one module. Policies are files; role assignments come from the caller."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import casbin

from services.authz.vocabulary import Action, ResourceType, Role
from services.identity.schemas import Principal

DEFAULT_DENY_RULE = "default deny: no rule allows this"


@dataclass(frozen=True)
class Resource:
    type: ResourceType
    id: str
    owner: str | None = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str
    policy_version: str
    # The roles whose policy lines allowed the request (empty when denied).
    roles: tuple[str, ...] = ()


class PolicyEngine:
    def __init__(self, policies_dir: Path) -> None:
        model_path = policies_dir / "model.conf"
        policy_path = policies_dir / "policy.csv"
        digest = hashlib.sha256(model_path.read_bytes() + b"\0" + policy_path.read_bytes())
        self.version = "sha256:" + digest.hexdigest()[:16]
        # pycasbin logs every decision (denials as warnings); decisions are audited instead.
        logging.getLogger("casbin").setLevel(logging.ERROR)
        self._enforcer = casbin.Enforcer(str(model_path), str(policy_path))
        # Casbin's deny-override effect names the deny line that matched but not the allow
        # line: a twin enforcer with an allow-override effect finds that line for the record.
        # The decision itself is always the first enforcer's.
        model_text = model_path.read_text()
        effect = "e = some(where (p.eft == allow)) && !some(where (p.eft == deny))"
        if effect not in model_text:
            raise ValueError("the policy model must use the deny-override effect")
        twin = casbin.model.Model()
        twin.load_model_from_text(model_text.replace(effect, "e = some(where (p.eft == allow))"))
        self._explainer = casbin.Enforcer(
            twin, casbin.persist.adapters.FileAdapter(str(policy_path))
        )
        self._casbin_lock = threading.Lock()
        self._check_vocabulary()

    def _check_vocabulary(self) -> None:
        roles = {r.value for r in Role}
        actions = {a.value for a in Action}
        types = {t.value for t in ResourceType}
        for rule in self._enforcer.get_policy():
            role, rtype, _rid, act, scope, eft = rule
            if role not in roles or act not in actions or rtype not in types:
                raise ValueError(f"policy line {rule} uses a word outside the vocabulary")
            if scope not in {"any", "own_org"} or eft not in {"allow", "deny"}:
                raise ValueError(f"policy line {rule} has an unknown scope or effect")

    def decide(self, principal: Principal, action: Action, resource: Resource) -> Decision:
        # The policy files are read once and never change while the process runs, so a
        # decision depends only on these values: remember it (pycasbin compiles its matcher on
        # every call, about a third of a millisecond).
        return self._decide_cached(tuple(principal.roles), principal.organisation, action, resource)

    @lru_cache(maxsize=4096)  # noqa: B019 (one engine per process, lives as long as it)
    def _decide_cached(
        self, roles: tuple[str, ...], organisation: str, action: Action, resource: Resource
    ) -> Decision:
        # One decision at a time: pycasbin compiles its matcher with `ast.parse` on every call,
        # and CPython 3.11's AST constructor is not safe in two threads at once (an upload's
        # first decision beside another's raised "AST constructor recursion depth mismatch").
        with self._casbin_lock:
            return self._decide(roles, organisation, action, resource)

    def _decide(
        self, roles: tuple[str, ...], organisation: str, action: Action, resource: Resource
    ) -> Decision:
        allow_rule: str | None = None
        allowing: list[str] = []
        for role in roles:
            request = (
                role,
                organisation,
                resource.type.value,
                resource.id,
                resource.owner or "",
                action.value,
            )
            allowed, explain = self._enforcer.enforce_ex(*request)
            if explain and explain[-1] == "deny":
                return Decision(False, "deny: " + ", ".join(explain), self.version)
            if allowed:
                allowing.append(role)
                if allow_rule is None:
                    allow_rule = ", ".join(self._explainer.enforce_ex(*request)[1])
        if allow_rule is not None:
            return Decision(True, allow_rule, self.version, tuple(allowing))
        return Decision(False, DEFAULT_DENY_RULE, self.version)

    def policy_lines(self) -> list[list[str]]:
        return [list(rule) for rule in self._enforcer.get_policy()]
