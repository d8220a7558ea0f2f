"""`together`: every administrative task, from the command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from services.audit.service import RequestContext
from services.kit.settings import Settings, get_settings

if TYPE_CHECKING:
    from gateway.platform import Platform

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
    from services.audit import service as audit_service

    with _admin_platform() as platform:
        sealed = audit_service.seal_all(platform.sessions)
        with platform.sessions() as session:
            check = audit_service.verify_chain(session)
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


def _cli_context(name: str) -> RequestContext:
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


_AREA_HELP = "Limit the roles to a CSP area (repeatable; all = every area)"


@contextmanager
def _admin_platform() -> Iterator[Platform]:
    """The platform for one administrative command; domain errors end it with status 2."""
    from gateway.platform import build_platform
    from services.kit.errors import TogetherError

    platform = build_platform(_settings())
    try:
        yield platform
    except TogetherError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from exc
    finally:
        platform.close()


@clients_app.command("create")
def clients_create(
    name: str,
    org: Annotated[str, typer.Option("--org", help="Organisation id")],
    role: Annotated[list[str], typer.Option("--role", help="Role (repeatable)")],
    area: Annotated[list[str] | None, typer.Option("--area", help=_AREA_HELP)] = None,
    output: Annotated[
        str, typer.Option("--format", help="json, or env (shell export lines)")
    ] = "json",
) -> None:
    """Create a client; prints its id and secret once (JSON, or shell exports with --format env)."""
    if output not in ("json", "env"):
        typer.echo("error: --format must be json or env", err=True)
        raise typer.Exit(2)
    from gateway import principals

    with _admin_platform() as platform:
        created = principals.create_client(
            platform,
            _cli_context("clients-create"),
            name=name,
            organisation=org,
            grants=principals.grants_for(role, area or []),
        )
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
                "roles": principals.grants_json(created.principal),
            },
            indent=2,
        )
    )


@clients_app.command("list")
def clients_list(org: Annotated[str | None, typer.Option("--org")] = None) -> None:
    """List clients (never their secrets)."""
    from gateway import principals

    with _admin_platform() as platform:
        rows = principals.list_clients(platform, org)
    typer.echo(json.dumps(rows, indent=2))


@clients_app.command("disable")
def clients_disable(client_id: str) -> None:
    """Disable a client: its tokens stop working at once."""
    from gateway import principals

    with _admin_platform() as platform:
        principals.disable_client(platform, _cli_context("clients-disable"), client_id)
    typer.echo(f"client {client_id} disabled")


@clients_app.command("roles")
def clients_roles(
    client_id: str,
    role: Annotated[list[str], typer.Option("--role", help="Role (repeatable)")],
    area: Annotated[list[str] | None, typer.Option("--area", help=_AREA_HELP)] = None,
) -> None:
    """Replace a client's roles and areas (audited with before and after)."""
    from gateway import principals

    with _admin_platform() as platform:
        after = principals.set_roles(
            platform,
            _cli_context("clients-roles"),
            client_id,
            principals.grants_for(role, area or []),
        )
    typer.echo(json.dumps(principals.grants_json(after), indent=2))


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
    with _admin_platform() as platform, platform.sessions() as session:
        removed = platform.storage.sweep_orphans(session, older_than_seconds=older_than)
    typer.echo(f"removed {len(removed)} orphan file(s)")


sharing_app = typer.Typer(help="Delta Sharing: the published tables.", no_args_is_help=True)
app.add_typer(sharing_app, name="sharing")


@sharing_app.command("refresh")
def sharing_refresh() -> None:
    """Materialise every published table whose sources have a new version (for each variant)."""
    from services.sharing import materialise

    with _admin_platform() as platform:
        deps = platform.sharing
        snapshots = materialise.refresh_all(deps.products, deps.folder, deps.config)
    for snapshot in snapshots:
        variant = "suppressed" if snapshot.variant.suppressed else "unsuppressed"
        areas = ",".join(snapshot.variant.areas) if snapshot.variant.areas is not None else "all"
        typer.echo(
            f"{snapshot.table_key} version {snapshot.version} ({variant}, areas {areas}): "
            f"{snapshot.row_count} row(s)"
        )


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
