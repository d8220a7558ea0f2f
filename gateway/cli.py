"""`together`: every administrative task, from the command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from services.audit.service import RequestContext
from services.kit.settings import Settings, get_settings

if TYPE_CHECKING:
    from services.platform import Platform

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
    """Chain every committed audit event not yet sealed, sign a checkpoint, verify the log."""
    from services.admin import operations

    with _admin_platform() as platform:
        report = operations.seal_log(platform.admin)
    check, checkpoint, verification = report.chain, report.checkpoint, report.log
    typer.echo(f"sealed {report.sealed} event(s); chain of {check.checked} link(s) ", nl=False)
    if not check.ok:
        typer.echo(f"BROKEN at leaf {check.first_bad_leaf}: {check.reason}")
        raise typer.Exit(1)
    typer.echo("verified")
    if checkpoint is not None:
        typer.echo(
            f"checkpoint {checkpoint.seq}: {checkpoint.tree_size} leaves, "
            f"root {checkpoint.root_hash}, key {checkpoint.key_id}"
        )
    if not verification.ok:
        typer.echo(f"log BROKEN at {verification.failure}")
        raise typer.Exit(1)
    typer.echo(f"Merkle tree and {verification.checkpoints} signed checkpoint(s) verified")


def _parse_since(value: str) -> datetime:
    from datetime import UTC

    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter("--since takes an ISO 8601 date or date and time") from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@audit_app.command("export")
def audit_export(
    since: Annotated[
        str | None, typer.Option(help="Only events from this ISO time on (UTC without offset)")
    ] = None,
) -> None:
    """Write the audit log as NDJSON to standard output: events and the checkpoints covering
    them; seals and signs first, so everything exported is covered. The export is audited."""
    from services.admin import operations

    moment = _parse_since(since) if since else None
    with _admin_platform() as platform:
        summary = operations.export_log(
            platform.admin, _cli_context("audit-export"), sys.stdout.buffer, since=moment
        )
        sys.stdout.buffer.flush()
    typer.echo(
        f"exported {summary.events} event(s) (leaves {summary.first_leaf} to "
        f"{summary.tree_size - 1}) and {summary.checkpoints} checkpoint(s)",
        err=True,
    )


def _trusted_keys(values: list[str]) -> dict[str, bytes]:
    from services.audit.checkpoints import key_id, parse_public_key
    from services.audit.export import keys_from_jwks

    keys: dict[str, bytes] = {}
    for value in values:
        path = Path(value)
        text = path.read_text() if path.is_file() else value
        if text.lstrip().startswith(("{", "[")):
            found = keys_from_jwks(json.loads(text))
            if not found:
                raise ValueError(f"no public key in {value}")
            keys.update(found)
        else:
            raw = parse_public_key(text)
            keys[key_id(raw)] = raw
    return keys


@audit_app.command("verify")
def audit_verify(
    file: Annotated[Path, typer.Argument(help="An export from `together audit export`")],
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key",
            help="Published public key: base64, a PEM file, or a saved /v1/audit/checkpoints "
            "answer (repeatable)",
        ),
    ] = None,
    held: Annotated[
        Path | None,
        typer.Option(
            "--checkpoints", help="Checkpoints kept from before (a saved /v1/audit/checkpoints)"
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option(help="Also check every event is exactly RFC 8785 canonical")
    ] = False,
    allow_gaps: Annotated[
        bool,
        typer.Option(
            help="Report a silence between checkpoints longer than their signed cadence as a "
            "note (a known outage) instead of a failure"
        ),
    ] = False,
    witness_key: Annotated[
        list[str] | None,
        typer.Option(
            "--witness-key",
            help="A witness's public key (base64, or its `witness init` JSON); with "
            "--cosignatures, its cosignatures must match the export (repeatable)",
        ),
    ] = None,
    cosignatures: Annotated[
        Path | None,
        typer.Option(help="The witness's cosignatures.ndjson (from its folder)"),
    ] = None,
) -> None:
    """Verify an export offline (no database): exit 0 when intact, 1 naming the first bad
    position, 2 when the files cannot be read."""
    from services.audit.export import load_held, verify_export

    try:
        keys = _trusted_keys(key) if key else None
        held_checkpoints = load_held(json.loads(held.read_text())) if held else []
        # A large buffer: an export is read once, front to back (a third less time reading).
        with file.open("rb", buffering=1 << 20) as handle:
            result = verify_export(
                handle, keys=keys, held=held_checkpoints, strict=strict, allow_gaps=allow_gaps
            )
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for note in result.notes:
        typer.echo(f"note: {note}")
    if not result.ok:
        typer.echo(f"FAILED at {result.failure}")
        raise typer.Exit(1)
    if witness_key or cosignatures:
        _check_witness(result.bodies, witness_key or [], cosignatures)
    last = result.last_checkpoint or {}
    typer.echo(
        f"OK: {result.events} event(s) from leaf {result.first_leaf}, "
        f"{result.checkpoints} signed checkpoint(s), {result.held_checked} held checkpoint(s) "
        f"matched; latest checkpoint {last.get('seq')}: {last.get('tree_size')} leaves, root "
        f"{last.get('root_hash')}, {last.get('issued_at')}, key {last.get('key_id')}"
    )


def _check_witness(bodies: dict[int, Any], values: list[str], path: Path | None) -> None:
    """Exit 1 unless the witness's cosignatures match the verified export (2: unreadable)."""
    from services.audit.checkpoints import key_id, parse_public_key
    from services.audit.witness import check_cosignatures

    if not values or path is None:
        typer.echo("error: --witness-key and --cosignatures go together", err=True)
        raise typer.Exit(2)
    try:
        keys: dict[str, bytes] = {}
        for value in values:
            text = Path(value).read_text() if Path(value).is_file() else value
            if text.lstrip().startswith("{"):
                text = json.loads(text)["public_key"]
            raw = parse_public_key(text)
            keys[key_id(raw)] = raw
        items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError, KeyError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    matched, problem = check_cosignatures(bodies, items, keys)
    if problem is not None:
        typer.echo(f"FAILED: {problem}")
        raise typer.Exit(1)
    typer.echo(f"witness: {matched} checkpoint(s) cosigned")


@audit_app.command("keygen")
def audit_keygen(path: Path) -> None:
    """Write a new Ed25519 checkpoint signing key (PEM, mode 0600) for TOGETHER_AUDIT_KEY_FILE."""
    import base64

    from services.audit.checkpoints import write_signing_key

    try:
        signer = write_signing_key(path)
    except FileExistsError as exc:
        typer.echo(f"error: {path} exists; refusing to overwrite a key", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"wrote {path}")
    typer.echo(f"key id {signer.key_id}; public key {base64.b64encode(signer.public.raw).decode()}")


@db_app.command("grant-app-role")
def db_grant_app_role(role: str) -> None:
    """PostgreSQL, as the schema owner: give the app's role read/write on ordinary tables and
    only SELECT and INSERT on append-only (audit) tables."""
    from services.kit.app_role import grant_app_role
    from services.kit.db import make_engine
    from services.kit.errors import TogetherError

    engine = make_engine(_installed_settings().resolved_database_url)
    try:
        grants = grant_app_role(engine, role)
    except TogetherError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from exc
    finally:
        engine.dispose()
    typer.echo(
        f"role {grants.role} in schema {grants.schema}: read/write {len(grants.read_write)} "
        f"table(s); select and insert only on {', '.join(grants.append_only)}"
    )


def _settings() -> Settings:
    try:
        return get_settings()
    except ValueError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _installed_settings() -> Settings:
    """The settings of an existing installation; anything else ends the command before it
    creates a folder, a key or a database file in the wrong place."""
    from services.kit.installation import missing_installation

    settings = _settings()
    problem = missing_installation(settings)
    if problem is not None:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    return settings


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
    if revision == "head":
        # A fresh installation's first load makes the shipped contracts active; afterwards a
        # changed file becomes a draft waiting for sign-off (see `together contracts load`).
        from services.lifecycle.service import load_into_database

        results = load_into_database(
            settings.resolved_database_url, settings.contracts_dir, _cli_context("db-upgrade")
        )
        _echo_loaded(results)


def _echo_loaded(results: list[Any]) -> int:
    """Print what loading the contracts did; the number refused."""
    refused = 0
    for result in results:
        if result.outcome == "unchanged" and not result.detail:
            continue
        detail = f": {result.detail}" if result.detail else ""
        typer.echo(f"contract {result.dataset} {result.version or ''} {result.outcome}{detail}")
        refused += result.outcome == "refused"
    return refused


# Where `together serve` listens unless told otherwise.
_SERVE_HOST, _SERVE_PORT = "127.0.0.1", 8000


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = _SERVE_HOST,
    port: Annotated[int, typer.Option(help="Port")] = _SERVE_PORT,
    workers: Annotated[int, typer.Option(help="Worker processes")] = 1,
) -> None:
    """Serve the API, with the limits of `gateway.server` (TOGETHER_HTTP_* settings)."""
    from gateway import server

    settings = _installed_settings()
    from services.platform import build_platform

    build_platform(settings).close()  # fail fast on bad keys, contracts or policies
    server.run(settings, host=host, port=port, workers=workers)


_AREA_HELP = "Limit the roles to a CSP area (repeatable; all = every area)"
_EXPIRES_HELP = (
    "End the roles at this time (ISO 8601 with an offset) or after this date (2027-06-30)"
)


@contextmanager
def _admin_platform() -> Iterator[Platform]:
    """The platform for one administrative command; domain errors end it with status 2."""
    from services.kit.errors import TogetherError
    from services.platform import build_platform

    platform = build_platform(_installed_settings())
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
    expires: Annotated[str | None, typer.Option("--expires", help=_EXPIRES_HELP)] = None,
) -> None:
    """Create a client; prints its id and secret once (JSON, or shell exports with --format env)."""
    if output not in ("json", "env"):
        typer.echo("error: --format must be json or env", err=True)
        raise typer.Exit(2)
    from services.admin import principals

    with _admin_platform() as platform:
        created = principals.create_client(
            platform.admin,
            _cli_context("clients-create"),
            name=name,
            organisation=org,
            grants=principals.grants_for(role, area or [], principals.parse_expiry(expires)),
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
    from services.admin import principals

    with _admin_platform() as platform:
        rows = principals.list_clients(platform.admin, org)
    typer.echo(json.dumps(rows, indent=2))


@clients_app.command("disable")
def clients_disable(client_id: str) -> None:
    """Disable a client: its tokens stop working at once."""
    from services.admin import principals

    with _admin_platform() as platform:
        principals.disable_client(platform.admin, _cli_context("clients-disable"), client_id)
    typer.echo(f"client {client_id} disabled")


@clients_app.command("roles")
def clients_roles(
    client_id: str,
    role: Annotated[list[str], typer.Option("--role", help="Role (repeatable)")],
    area: Annotated[list[str] | None, typer.Option("--area", help=_AREA_HELP)] = None,
    expires: Annotated[str | None, typer.Option("--expires", help=_EXPIRES_HELP)] = None,
) -> None:
    """Replace a client's roles and areas, until --expires when given (audited with before
    and after)."""
    from services.admin import principals

    with _admin_platform() as platform:
        after = principals.set_roles(
            platform.admin,
            _cli_context("clients-roles"),
            client_id,
            principals.grants_for(role, area or [], principals.parse_expiry(expires)),
        )
    typer.echo(json.dumps(principals.grants_json(after), indent=2))


users_app = typer.Typer(help="People who sign in to the review pages.", no_args_is_help=True)
app.add_typer(users_app, name="users")


@users_app.command("create")
def users_create(
    name: str,
    org: Annotated[str, typer.Option("--org", help="Organisation id")],
    role: Annotated[str, typer.Option("--role", help="ig_lead or admin")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
    oidc: Annotated[
        bool, typer.Option("--oidc", help="No password: signs in through OpenID Connect only")
    ] = False,
) -> None:
    """Create a person's account; the password is prompted for (or read from stdin)."""
    from services.admin import accounts

    password: str | None = None
    if oidc and password_stdin:
        typer.echo("error: --oidc accounts have no password", err=True)
        raise typer.Exit(2)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not oidc:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    with _admin_platform() as platform:
        accounts.create_user(
            platform.admin,
            _cli_context("users-create"),
            username=name,
            organisation=org,
            role=role,
            password=password,
        )
    typer.echo(f"user {name} created ({role}, {org})")


@users_app.command("list")
def users_list(org: Annotated[str | None, typer.Option("--org")] = None) -> None:
    """List accounts (never password hashes)."""
    from services.admin import accounts

    with _admin_platform() as platform:
        rows = accounts.list_users(platform.admin, _cli_context("users-list"), org)
    typer.echo(json.dumps(rows, indent=2))


@users_app.command("disable")
def users_disable(name: str) -> None:
    """Disable an account: its session ends at its next request."""
    from services.admin import accounts

    with _admin_platform() as platform:
        accounts.disable_user(platform.admin, _cli_context("users-disable"), name)
    typer.echo(f"user {name} disabled")


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


@contracts_app.command("load")
def contracts_load() -> None:
    """Record each new or changed contract file as a draft (the first load of an installation
    makes them active); exit status 1 when a file is refused."""
    from services.lifecycle import service as lifecycle

    with _admin_platform() as platform:
        results = lifecycle.load_directory(
            platform.lifecycle, _cli_context("contracts-load"), platform.settings.contracts_dir
        )
    if _echo_loaded(results):
        raise typer.Exit(1)
    typer.echo(f"{len(results)} contract file(s) read")


@contracts_app.command("signoff")
def contracts_signoff(
    dataset: str,
    version: str,
    as_org: Annotated[str, typer.Option("--as-org", help="The owner's organisation, or vru")],
) -> None:
    """Sign off a draft for an organisation as the installation (audited with its hash)."""
    from services.lifecycle import service as lifecycle

    with _admin_platform() as platform:
        signed = lifecycle.sign_off(
            platform.lifecycle, None, _cli_context("contracts-signoff"), dataset, version, as_org
        )
    typer.echo(json.dumps(signed, indent=2))


@contracts_app.command("activate")
def contracts_activate(dataset: str, version: str) -> None:
    """Make an approved version active as the installation; the active one is retired."""
    from services.lifecycle import service as lifecycle

    with _admin_platform() as platform:
        active = lifecycle.activate(
            platform.lifecycle, None, _cli_context("contracts-activate"), dataset, version
        )
    typer.echo(json.dumps(active, indent=2))


@contracts_app.command("versions")
def contracts_versions(dataset: str) -> None:
    """The changelog of a contract: each version, its state, changes and sign-offs."""
    from services.lifecycle import service as lifecycle

    with _admin_platform() as platform:
        versions = lifecycle.changelog(platform.lifecycle, dataset)
    typer.echo(json.dumps(versions, indent=2))


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
    """Remove dataset files that no version references, and staging files that no live upload
    holds (both left by a crash; staged bodies are encrypted under keys that died with it), and
    at once any file a deletion certified gone that a restored backup brought back."""
    from services.admin import operations
    from services.storage import staging

    with _admin_platform() as platform:
        removed = operations.sweep_storage(platform.admin, older_than_seconds=older_than)
        settings = platform.settings
        # A live upload holds a lock on its staging file; the lease is only a grace period.
        grace = min(older_than, settings.idempotency_lease_seconds)
        staged = staging.sweep(settings.staging_dir, older_than_seconds=grace)
    typer.echo(f"removed {len(removed)} orphan file(s)")
    typer.echo(f"removed {len(staged)} staging file(s)")


@storage_app.command("check")
def storage_check(
    checksums: Annotated[
        bool, typer.Option(help="Read every object to compare its SHA-256 (sizes always)")
    ] = True,
) -> None:
    """List every dataset version whose stored object is missing or differs from its record
    (size or SHA-256), and every file a deletion removed that is back in the store (`purged`:
    a restored backup; `together storage sweep` deletes it again); exit 1 when any is found."""
    with _admin_platform() as platform, platform.sessions() as session:
        problems = platform.storage.check(session, checksums=checksums)
    for problem in problems:
        typer.echo(f"{problem.dataset_id} v{problem.version}: {problem.path} {problem.problem}")
    if problems:
        typer.echo(f"{len(problems)} problem(s)", err=True)
        raise typer.Exit(1)
    typer.echo("every stored version is whole")


retention_app = typer.Typer(
    help="Retention: rows past their contract's retention.", no_args_is_help=True
)
app.add_typer(retention_app, name="retention")
deletions_app = typer.Typer(help="Deletion certificates.", no_args_is_help=True)
app.add_typer(deletions_app, name="deletions")


@retention_app.command("run")
def retention_run(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be removed; change nothing")
    ] = False,
    today: Annotated[
        str | None,
        typer.Option(help="Count retention back from this day (YYYY-MM-DD) instead of today"),
    ] = None,
) -> None:
    """Remove every row past its contract's retention (a new version without them, the older
    files that hold them deleted), each dataset with a signed certificate; finishes any
    deletion a process left half done. Exit 3 when another process is running it now."""
    from datetime import date

    from services.retention import service as retention_service

    try:
        day = date.fromisoformat(today) if today else None
    except ValueError as exc:
        typer.echo(f"error: --today {today!r} is not a date (YYYY-MM-DD)", err=True)
        raise typer.Exit(2) from exc
    with _admin_platform() as platform:
        outcomes = retention_service.run_retention(
            platform.governance, dry_run=dry_run, today=day, ctx=_cli_context("retention")
        )
    if outcomes is None:
        typer.echo("another process is running retention now; nothing done", err=True)
        raise typer.Exit(3)
    verb = "would remove" if dry_run else "removed"
    for outcome in outcomes:
        if "skipped" in outcome.detail:
            typer.echo(f"{outcome.dataset}: skipped: {outcome.detail['skipped']}")
            continue
        cutoff = outcome.detail.get("cutoff")
        certificate = f", certificate {outcome.certificate}" if outcome.certificate else ""
        typer.echo(
            f"{outcome.dataset}: {verb} {outcome.rows_removed} row(s) dated before "
            f"{cutoff}{certificate}"
        )


@deletions_app.command("list")
def deletions_list(dataset: str) -> None:
    """Every deletion of a dataset with its signed certificate, as JSON (newest first)."""
    from services.retention.service import certificates_of

    with _admin_platform() as platform:
        found = certificates_of(platform.governance, dataset)
    typer.echo(json.dumps(found, indent=2))


@deletions_app.command("verify")
def deletions_verify(
    file: Annotated[
        Path, typer.Argument(help="A certificate saved from a dataset's /deletions answer")
    ],
    key: Annotated[
        list[str],
        typer.Option(
            "--key",
            help="Published audit public key: base64, a PEM file, or a saved "
            "/v1/audit/checkpoints answer (repeatable)",
        ),
    ],
) -> None:
    """Verify a deletion certificate offline: exit 0 when intact and signed by a given key,
    1 naming what is wrong, 2 when the files cannot be read."""
    from services.retention.certificates import verify

    try:
        keys = _trusted_keys(key)
        document = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    problems = verify(document, keys)
    if problems:
        for problem in problems:
            typer.echo(f"FAILED: {problem}")
        raise typer.Exit(1)
    body = document["certificate"]
    typer.echo(
        f"OK: {body['kind']} of {body['dataset']}, certificate {body['certificate_id']}: "
        f"{body['rows_removed']} row(s), {len(body['files_deleted'])} file(s) deleted, "
        f"audit events {body['audit_seq_start']} to {body['audit_seq_end']}, "
        f"certified {body['certified_at']}, key {body['key_id']}"
    )


sharing_app = typer.Typer(help="Delta Sharing: the published tables.", no_args_is_help=True)
app.add_typer(sharing_app, name="sharing")


@sharing_app.command("refresh")
def sharing_refresh() -> None:
    """Materialise every published table whose sources have a new version (for each variant)."""
    from services.sharing import materialise

    with _admin_platform() as platform:
        deps = platform.sharing
        snapshots = materialise.refresh_all(deps.products, deps.store, deps.config)
    for snapshot in snapshots:
        variant = "suppressed" if snapshot.variant.suppressed else "unsuppressed"
        areas = ",".join(snapshot.variant.areas) if snapshot.variant.areas is not None else "all"
        typer.echo(
            f"{snapshot.table_key} version {snapshot.version} ({variant}, areas {areas}): "
            f"{snapshot.row_count} row(s)"
        )


def _public_url(settings: Settings, url: str | None) -> str:
    """The address clients reach the server at: the one given, else the public address the
    sharing endpoint is configured with, else where `together serve` listens by default."""
    if url:
        return url.rstrip("/")
    endpoint = (settings.sharing_endpoint or "").rstrip("/")
    if endpoint.endswith("/delta-sharing"):
        return endpoint.removesuffix("/delta-sharing")
    return f"http://{_SERVE_HOST}:{_SERVE_PORT}"


@demo_app.command("load")
def demo_load(
    force: Annotated[bool, typer.Option(help="Load again even if already loaded")] = False,
    url: Annotated[
        str | None,
        typer.Option(
            help="Address the server is reached at, for the printed instructions "
            "(default: from TOGETHER_SHARING_ENDPOINT, else http://127.0.0.1:8000)"
        ),
    ] = None,
) -> None:
    """Generate the synthetic demo data set and push it through the ingestion service."""
    from services.demo import load
    from services.platform import build_platform

    settings = _installed_settings()
    base = _public_url(settings, url)
    credentials = load.credentials_path(settings.data_dir)
    if credentials.exists() and not force:
        typer.echo(
            f"demo data already loaded (credentials in {credentials}); use --force to reload"
        )
    else:
        platform = build_platform(settings)
        try:
            load.load_demo(platform.ingestion, platform.admin, settings.data_dir, echo=typer.echo)
        finally:
            platform.close()
        typer.echo(f"demo clients and their secrets: {credentials} (development only)")
    typer.echo(
        "get a token:  curl -s -u CLIENT_ID:CLIENT_SECRET -d grant_type=client_credentials "
        f"{base}/oauth/token"
    )
    if url is None and base == f"http://{_SERVE_HOST}:{_SERVE_PORT}":
        typer.echo(
            "(the address `together serve` listens on by default; give `--url` to print the "
            "one your server is reached at)"
        )


witness_app = typer.Typer(
    help="An independent witness of the audit checkpoints: run it where the server cannot "
    "reach its key (a partner's machine).",
    no_args_is_help=True,
)
audit_app.add_typer(witness_app, name="witness")


@witness_app.command("init")
def witness_init(
    folder: Annotated[Path, typer.Argument(help="The witness's own folder (key and state)")],
    name: Annotated[str, typer.Option(help="Who runs this witness")] = "witness",
) -> None:
    """Make a witness: an Ed25519 key (mode 0600) and an empty state; prints its public key."""
    from services.audit.witness import Witness

    try:
        witness = Witness.create(folder, name)
    except FileExistsError as exc:
        typer.echo(f"error: a witness exists in {folder}; refusing to overwrite it", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(witness.public.document()))


@witness_app.command("cosign")
def witness_cosign(
    folder: Annotated[Path, typer.Argument(help="The witness's folder")],
    checkpoints_file: Annotated[
        Path,
        typer.Option(
            "--checkpoints", help="A saved /v1/audit/checkpoints answer: its latest is cosigned"
        ),
    ],
    log_key: Annotated[
        list[str],
        typer.Option("--log-key", help="The platform's published key the witness trusts"),
    ],
    proof: Annotated[
        Path | None,
        typer.Option(
            help="A saved /v1/audit/checkpoints/consistency answer from the witness's last "
            "cosigned size to the new one"
        ),
    ] = None,
) -> None:
    """Cosign the latest checkpoint if it is consistent with the last one this witness
    cosigned; prints the cosignature. Exit 1 with the reason when refused (equivocation,
    rollback, a failed consistency proof, an untrusted signature), 2 when unreadable."""
    from services.audit.export import load_held
    from services.audit.witness import Witness, WitnessRefused

    try:
        keys = _trusted_keys(log_key)
        held = load_held(json.loads(checkpoints_file.read_text()))
        nodes = None
        if proof is not None:
            nodes = [bytes.fromhex(node) for node in json.loads(proof.read_text())["proof"]]
        witness = Witness(folder)
    except (OSError, ValueError, KeyError, WitnessRefused) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not held:
        typer.echo("error: no checkpoint to cosign", err=True)
        raise typer.Exit(2)
    latest = max(held, key=lambda item: int(item.body.get("seq", -1)))
    try:
        cosignature = witness.cosign(
            {"body": latest.body, "signature": latest.signature}, keys, nodes
        )
    except WitnessRefused as exc:
        typer.echo(f"REFUSED: {exc}")
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(cosignature, sort_keys=True))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


grants_app = typer.Typer(
    help="Roles that need a second person (Level 3, ig_lead, admin): pending requests.",
    no_args_is_help=True,
)
app.add_typer(grants_app, name="grants")


@grants_app.command("list")
def grants_list(
    state: Annotated[
        str | None, typer.Option("--state", help="pending, approved or refused")
    ] = None,
) -> None:
    """List grant requests (audited)."""
    from services.admin import grants

    with _admin_platform() as platform:
        rows = grants.list_requests(platform.admin, None, _cli_context("grants-list"), state=state)
    typer.echo(json.dumps(rows, indent=2))


@grants_app.command("expiring")
def grants_expiring(
    days: Annotated[int, typer.Option("--days", help="The window, in days")] = 30,
) -> None:
    """List time-bound role grants ending within --days (audited)."""
    from services.admin import grants

    with _admin_platform() as platform:
        rows = grants.list_expiring(
            platform.admin, None, _cli_context("grants-expiring"), days=days
        )
    typer.echo(json.dumps(rows, indent=2))


@grants_app.command("approve")
def grants_approve(request_id: str) -> None:
    """Approve a pending grant as the installation (the operator at the server's shell)."""
    from services.admin import grants

    with _admin_platform() as platform:
        decided = grants.decide(
            platform.admin, _cli_context("grants-approve"), request_id, approve=True
        )
    typer.echo(json.dumps(decided, indent=2))


@grants_app.command("refuse")
def grants_refuse(request_id: str) -> None:
    """Refuse a pending grant; the client's roles stay as they are."""
    from services.admin import grants

    with _admin_platform() as platform:
        decided = grants.decide(
            platform.admin, _cli_context("grants-refuse"), request_id, approve=False
        )
    typer.echo(json.dumps(decided, indent=2))


@clients_app.command("create-with-key")
def clients_create_with_key(
    name: str,
    org: Annotated[str, typer.Option("--org", help="Organisation id")],
    role: Annotated[list[str], typer.Option("--role", help="Role (repeatable)")],
    jwk: Annotated[Path, typer.Option("--jwk", help="File holding the client's public JWK")],
    area: Annotated[list[str] | None, typer.Option("--area", help=_AREA_HELP)] = None,
) -> None:
    """Create a client that authenticates with signed assertions (private_key_jwt, RFC 7523):
    it has a public key and no secret. Prints its id and the key's SHA-256."""
    from services.admin import client_keys, principals

    text = jwk.read_text(encoding="utf-8")
    with _admin_platform() as platform:
        created = principals.create_client(
            platform.admin,
            _cli_context("clients-create-with-key"),
            name=name,
            organisation=org,
            grants=principals.grants_for(role, area or []),
        )
        fingerprint = client_keys.register_key(
            platform.admin, _cli_context("clients-create-with-key"), created.client_id, text
        )
    typer.echo(
        json.dumps(
            {
                "client_id": created.client_id,
                "token_endpoint_auth_method": "private_key_jwt",
                "key_sha256": fingerprint,
                "organisation": org,
                "roles": principals.grants_json(created.principal),
            },
            indent=2,
        )
    )


@clients_app.command("set-key")
def clients_set_key(
    client_id: str,
    jwk: Annotated[Path, typer.Option("--jwk", help="File holding the client's public JWK")],
) -> None:
    """Switch a client to signed assertions (private_key_jwt) with this public key: its secret
    stops working at once."""
    from services.admin import client_keys

    text = jwk.read_text(encoding="utf-8")
    with _admin_platform() as platform:
        fingerprint = client_keys.register_key(
            platform.admin, _cli_context("clients-set-key"), client_id, text
        )
    typer.echo(json.dumps({"client_id": client_id, "key_sha256": fingerprint}, indent=2))


@clients_app.command("unlock")
def clients_unlock(client_id: str) -> None:
    """Lift a client's token-endpoint lockout before it lapses (audited)."""
    from services.admin import client_keys

    with _admin_platform() as platform:
        cleared = client_keys.lift_lockout(
            platform.admin, _cli_context("clients-unlock"), client_id
        )
    typer.echo(json.dumps({"client_id": client_id, "windows_cleared": cleared}, indent=2))


def _key_file(settings: Settings) -> Path:
    from services.kit.keys import key_file_path

    path = key_file_path(settings)
    if path is None or not path.exists():
        typer.echo("error: no key file (set TOGETHER_KEY_FILE); keys from variables stay", err=True)
        raise typer.Exit(2)
    return path


@keys_app.command("list")
def keys_list() -> None:
    """The data encryption keys of the key file (ids, created, which is current; no secrets)."""
    from services.kit.errors import ConfigurationError
    from services.kit.keys import key_file_ids

    try:
        rows = key_file_ids(_key_file(_installed_settings()))
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(rows, indent=2))


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Add a new data encryption key and make it current; prints its id. Earlier keys stay for
    reading. Running servers write with the new key after they restart."""
    from services.admin import data_keys
    from services.kit.errors import ConfigurationError

    path = _key_file(_installed_settings())
    try:
        with _admin_platform() as platform:
            new_id = data_keys.rotate(platform.admin, _cli_context("keys-rotate"), path)
    except FileExistsError as exc:
        typer.echo("error: another rotation of this key file is under way", err=True)
        raise typer.Exit(2) from exc
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps({"encryption_key_id": new_id, "restart": "servers"}))


@keys_app.command("retire")
def keys_retire(key_id: int) -> None:
    """Remove a data encryption key that no stored file holds ciphertext under (every Parquet
    object of the store is read); refuses while any does, and for the current key."""
    from services.admin import data_keys
    from services.ingestion.key_usage import encryption_keys_in_use
    from services.kit.errors import ConfigurationError

    settings = _installed_settings()
    path = _key_file(settings)
    from services.platform import build_store

    files = encryption_keys_in_use(build_store(settings))[key_id]
    if files:
        typer.echo(
            f"error: {files} stored file(s) hold ciphertext under key {key_id}; it stays until "
            "they are re-written or removed by retention",
            err=True,
        )
        raise typer.Exit(2)
    try:
        with _admin_platform() as platform:
            data_keys.retire(platform.admin, _cli_context("keys-retire"), path, key_id)
    except FileExistsError as exc:
        typer.echo("error: another change of this key file is under way", err=True)
        raise typer.Exit(2) from exc
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps({"retired": key_id}))
