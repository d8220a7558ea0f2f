"""`together`: every administrative task, from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from services.kit.settings import Settings, get_settings

app = typer.Typer(help="Together: governed, audited data sharing.", no_args_is_help=True)
db_app = typer.Typer(help="The metadata database.", no_args_is_help=True)
clients_app = typer.Typer(help="Partner systems and other API clients.", no_args_is_help=True)
contracts_app = typer.Typer(help="Data contracts.", no_args_is_help=True)
demo_app = typer.Typer(help="Synthetic demonstration data.", no_args_is_help=True)
keys_app = typer.Typer(help="Key material.", no_args_is_help=True)
storage_app = typer.Typer(help="Dataset storage.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(clients_app, name="clients")
app.add_typer(contracts_app, name="contracts")
app.add_typer(demo_app, name="demo")
app.add_typer(keys_app, name="keys")
app.add_typer(storage_app, name="storage")
audit_app = typer.Typer(help="The audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("seal")
def audit_seal() -> None:
    """Chain every committed audit event not yet sealed, then check the whole chain."""
    from gateway.platform import build_platform
    from services.audit import service as audit_service

    platform = build_platform(_settings())
    try:
        sealed = audit_service.seal_all(platform.sessions)
        with platform.sessions() as session:
            check = audit_service.verify_chain(session)
    finally:
        platform.close()
    typer.echo(f"sealed {sealed} event(s); chain of {check.checked} link(s) ", nl=False)
    if not check.ok:
        typer.echo(f"BROKEN at leaf {check.first_bad_leaf}: {check.reason}")
        raise typer.Exit(1)
    typer.echo("verified")


def _settings() -> Settings:
    try:
        return get_settings()
    except ValueError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _cli_context(name: str):  # type: ignore[no-untyped-def]
    from services.audit.service import RequestContext

    return RequestContext(actor=f"cli:{name}", actor_org="vru", actor_roles=["admin"])


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the migrations to the configured database."""
    from services.kit.migrate import upgrade

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url, revision)
    typer.echo(f"database at revision {revision}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes")] = 1,
) -> None:
    """Serve the API."""
    import uvicorn

    settings = _settings()
    from gateway.platform import build_platform

    build_platform(settings).close()  # fail fast on bad keys, contracts or policies
    uvicorn.run(
        "gateway.asgi:app",
        host=host,
        port=port,
        workers=workers,
        proxy_headers=False,
        server_header=False,
        limit_concurrency=1000,
        timeout_keep_alive=5,
        log_level="info",
        access_log=False,
    )


@clients_app.command("create")
def clients_create(
    name: str,
    org: Annotated[str, typer.Option("--org", help="Organisation id")],
    role: Annotated[list[str], typer.Option("--role", help="Role (repeatable)")],
    area: Annotated[
        list[str] | None,
        typer.Option("--area", help="Limit the roles to a CSP area (repeatable; all = every area)"),
    ] = None,
    output: Annotated[
        str, typer.Option("--format", help="json, or env (shell export lines)")
    ] = "json",
) -> None:
    """Create a client; prints its id and secret once (JSON, or shell exports with --format env)."""
    if output not in ("json", "env"):
        typer.echo("error: --format must be json or env", err=True)
        raise typer.Exit(2)
    from gateway.platform import build_platform
    from services.audit import service as audit_service
    from services.audit.catalogue import AuditAction, Outcome
    from services.audit.service import AuditRecord
    from services.authz.vocabulary import AREA_SCOPED_ROLES, ROLES
    from services.identity import service as identity_service
    from services.identity.schemas import RoleGrant
    from services.kit.errors import TogetherError

    platform = build_platform(_settings())
    areas = identity_service.expand_areas(area or [])
    grants = [RoleGrant(r, a) for r in role for a in areas]
    try:
        with platform.sessions() as session:
            created = identity_service.create_client(
                session,
                name=name,
                organisation=org,
                grants=grants,
                known_roles=ROLES,
                area_scoped_roles=AREA_SCOPED_ROLES,
            )
            audit_service.record(
                session,
                _cli_context("clients-create"),
                AuditRecord(
                    action=AuditAction.CLIENT_CREATED,
                    outcome=Outcome.SUCCESS,
                    resource_type="client",
                    resource=created.client_id,
                    resource_org=org,
                    details={"roles": [[g.role, g.area] for g in created.principal.grants]},
                ),
            )
            session.commit()
    except TogetherError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from exc
    finally:
        platform.close()
    if output == "env":
        typer.echo(f"export TOGETHER_CLIENT_ID={created.client_id}")
        typer.echo(f"export TOGETHER_CLIENT_SECRET={created.client_secret}")
        return
    typer.echo(
        json.dumps(
            {
                "client_id": created.client_id,
                "client_secret": created.client_secret,
                "organisation": org,
                "roles": [{"role": g.role, "area": g.area} for g in created.principal.grants],
            },
            indent=2,
        )
    )


@clients_app.command("list")
def clients_list(org: Annotated[str | None, typer.Option("--org")] = None) -> None:
    """List clients (never their secrets)."""
    from gateway.platform import build_platform
    from services.identity import service as identity_service

    platform = build_platform(_settings())
    try:
        with platform.sessions() as session:
            rows = [
                {
                    "client_id": c.client_id,
                    "name": c.name,
                    "organisation": c.organisation,
                    "disabled": c.disabled,
                    "roles": [{"role": r.role, "area": r.area} for r in c.roles],
                    "created_at": c.created_at.isoformat(),
                }
                for c in identity_service.list_clients(session, org)
            ]
    finally:
        platform.close()
    typer.echo(json.dumps(rows, indent=2))


@clients_app.command("disable")
def clients_disable(client_id: str) -> None:
    """Disable a client: its tokens stop working at once."""
    from gateway.platform import build_platform
    from services.audit import service as audit_service
    from services.audit.catalogue import AuditAction, Outcome
    from services.audit.service import AuditRecord
    from services.identity import service as identity_service
    from services.kit.errors import TogetherError

    platform = build_platform(_settings())
    try:
        with platform.sessions() as session:
            principal = identity_service.disable_client(session, client_id)
            audit_service.record(
                session,
                _cli_context("clients-disable"),
                AuditRecord(
                    action=AuditAction.CLIENT_DISABLED,
                    outcome=Outcome.SUCCESS,
                    resource_type="client",
                    resource=client_id,
                    resource_org=principal.organisation,
                ),
            )
            session.commit()
    except TogetherError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from exc
    finally:
        platform.close()
    typer.echo(f"client {client_id} disabled")


@clients_app.command("roles")
def clients_roles(
    client_id: str,
    role: Annotated[list[str], typer.Option("--role", help="Role (repeatable)")],
    area: Annotated[
        list[str] | None,
        typer.Option("--area", help="Limit the roles to a CSP area (repeatable; all = every area)"),
    ] = None,
) -> None:
    """Replace a client's roles and areas (audited with before and after)."""
    from gateway.platform import build_platform
    from services.audit import service as audit_service
    from services.audit.catalogue import AuditAction, Outcome
    from services.audit.service import AuditRecord
    from services.authz.vocabulary import AREA_SCOPED_ROLES, ROLES
    from services.identity import service as identity_service
    from services.identity.schemas import RoleGrant
    from services.kit.errors import TogetherError

    grants = [RoleGrant(r, a) for r in role for a in identity_service.expand_areas(area or [])]
    platform = build_platform(_settings())
    try:
        with platform.sessions() as session:
            before, after = identity_service.set_grants(
                session, client_id, grants, ROLES, AREA_SCOPED_ROLES
            )
            audit_service.record(
                session,
                _cli_context("clients-roles"),
                AuditRecord(
                    action=AuditAction.CLIENT_ROLES_CHANGED,
                    outcome=Outcome.SUCCESS,
                    resource_type="client",
                    resource=client_id,
                    resource_org=after.organisation,
                    details={
                        "before": [{"role": g.role, "area": g.area} for g in before.grants],
                        "after": [{"role": g.role, "area": g.area} for g in after.grants],
                    },
                ),
            )
            session.commit()
    except TogetherError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from exc
    finally:
        platform.close()
    typer.echo(json.dumps([{"role": g.role, "area": g.area} for g in after.grants], indent=2))


@contracts_app.command("lint")
def contracts_lint(
    path: Annotated[Path | None, typer.Argument(help="A contract file or folder")] = None,
) -> None:
    """Check contracts; exit status 1 when any has an error."""
    from services.contracts.lint import lint_path

    target = path or _settings().contracts_dir
    messages = lint_path(target)
    errors = 0
    for message in messages:
        typer.echo(f"{message.path}: {message.severity}: {message.message}")
        errors += message.severity == "error"
    if errors:
        typer.echo(f"{errors} error(s)", err=True)
        raise typer.Exit(1)
    typer.echo(f"{target}: contracts OK")


@keys_app.command("generate")
def keys_generate(path: Path) -> None:
    """Write a new key file (mode 0600) for TOGETHER_KEY_FILE."""
    from services.kit.keys import write_key_file

    try:
        write_key_file(path)
    except FileExistsError as exc:
        typer.echo(f"error: {path} exists; refusing to overwrite keys", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"wrote {path}")


@storage_app.command("sweep")
def storage_sweep(
    older_than: Annotated[int, typer.Option(help="Minimum age in seconds")] = 3600,
) -> None:
    """Remove dataset files that no version references (left by a crash)."""
    from gateway.platform import build_platform

    platform = build_platform(_settings())
    try:
        with platform.sessions() as session:
            removed = platform.storage.sweep_orphans(session, older_than_seconds=older_than)
    finally:
        platform.close()
    typer.echo(f"removed {len(removed)} orphan file(s)")


@demo_app.command("load")
def demo_load(
    force: Annotated[bool, typer.Option(help="Load again even if already loaded")] = False,
) -> None:
    """Generate the synthetic demo data set and push it through the ingestion service."""
    from gateway.demo import load_demo

    settings = _settings()
    load_demo(settings, force=force, echo=typer.echo)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
