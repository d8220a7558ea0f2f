"""The composition root: wires the services together once per process, from the settings, and
is the one place where a server process's background threads start and stop."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from pydantic import SecretStr
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from services.admin.deps import AdminDeps
from services.audit import service as audit_service
from services.audit.async_writer import AsyncAuditWriter
from services.audit.checkpoints import CheckpointSigner, load_signer
from services.audit.freshness import SealerWatch
from services.audit.sealer import Sealer
from services.authz.enforcer import PolicyEngine
from services.contracts.loader import load_contracts
from services.contracts.model import Contract
from services.contracts.protection import Protector
from services.identity.schemas import Principal
from services.identity.tokens import TokenService
from services.ingestion.service import IngestionDeps
from services.kit import metrics
from services.kit.background import PeriodicThread
from services.kit.db import make_engine, session_factory
from services.kit.epochs import EpochCache, EpochReader
from services.kit.errors import ConfigurationError, TogetherError
from services.kit.keys import load_keys
from services.kit.migrate import schema_problem
from services.kit.settings import Settings
from services.lifecycle import service as lifecycle_service
from services.lifecycle.service import LifecycleDeps
from services.products import service as products_service
from services.products.config import PartnershipConfig, load_partnership
from services.products.loading import load_catalogue
from services.products.people import person_ids
from services.products.service import ProductDeps
from services.retention import service as retention_service
from services.retention.rewrite import DeletedCopies, DeletionDeps
from services.retention.service import GovernanceDeps
from services.retention.subject_access import SubjectAccessDeps
from services.review import service as review_service
from services.review.service import ReviewDeps
from services.sharing import materialise
from services.sharing.service import SharingDeps, build_sharing
from services.storage import staging
from services.storage.inputs import InputLimits
from services.storage.objects import ObjectStore, open_store
from services.storage.service import Prefetcher, Storage

# How often a server process looks for new versions to fetch into its cache (S3 only).
PREFETCH_SECONDS = 1.0


class NotReady(TogetherError):
    """What `/readyz` answers when this process must not take traffic, saying why."""

    code = "NOT_READY"
    status = 503
    title = "Not ready"


@dataclass
class Background:
    """The threads a server process runs beside its requests (none in a command or a test)."""

    sealer: Sealer | None = None
    # Whether the sealer keeps up; refuses Level 2 and 3 reads when not (audit/freshness.py).
    sealer_watch: SealerWatch | None = None
    refresher: materialise.Refresher | None = None
    retention: PeriodicThread | None = None
    deleted_copies: PeriodicThread | None = None
    prefetcher: PeriodicThread | None = None
    watching_epochs: bool = False


@dataclass
class Platform:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    tokens: TokenService
    contracts: dict[str, Contract]
    policy: PolicyEngine
    storage: Storage
    ingestion: IngestionDeps
    partnership: PartnershipConfig
    products: ProductDeps
    # Principals by client id, valid while the principals epoch is unchanged (services/kit/epochs).
    epochs: EpochReader
    principal_cache: EpochCache[str, Principal | None]
    audit_signer: CheckpointSigner
    sharing: SharingDeps
    admin: AdminDeps
    review: ReviewDeps
    lifecycle: LifecycleDeps
    governance: GovernanceDeps
    subject_access: SubjectAccessDeps
    background: Background = field(default_factory=Background)

    def start_background(self) -> None:
        """Start the threads of a server process: the audit sealer (chain links and signed
        checkpoints), the cache-epoch watcher, and the refresh of shared tables when switched
        on. Every server process runs them; they are safe to run side by side."""
        settings = self.settings
        sealer = Sealer(
            self.sessions,
            settings.audit_seal_interval_seconds,
            self.audit_signer,
            settings.audit_checkpoint_interval_seconds,
        )
        sealer.start()
        self.background.sealer = sealer
        self.watch_sealer()
        # Requests then find the cache epochs in memory (see services/kit/epochs.py).
        self.epochs.start()
        self.background.watching_epochs = True
        # A version uploaded through another replica: fetch its files before a reader asks.
        epochs = self.epochs
        prefetcher = PeriodicThread(
            "prefetch",
            Prefetcher(
                self.sessions,
                self.storage,
                lambda: reading.datasets if (reading := epochs.recent()) is not None else None,
            ),
            PREFETCH_SECONDS,
        )
        prefetcher.start()
        self.background.prefetcher = prefetcher
        metrics.read_at_scrape(
            "together_cache_epoch_age_seconds",
            "Seconds since this process last read the cache epochs (how far its cached "
            "principals and versions may lag a change made by another replica)",
            self.epochs.age,
        )
        interval = settings.sharing_refresh_seconds
        if interval > 0 and self.sharing.config.tables:
            deps = self.sharing
            refresher = materialise.Refresher(
                lambda: materialise.refresh_all(deps.products, deps.store, deps.config), interval
            )
            refresher.start()
            self.background.refresher = refresher
        if settings.retention_interval_seconds > 0:
            # Every server runs it; the lease lets one replica at a time do the work.
            governance = self.governance
            retention = PeriodicThread(
                "retention",
                lambda: retention_service.run_retention(governance),
                settings.retention_interval_seconds,
            )
            retention.start()
            self.background.retention = retention
        # A deletion made by another replica: forget this process's copies of what it deleted.
        deleted_copies = PeriodicThread(
            "deleted-copies",
            DeletedCopies(self.governance.deletion),
            settings.deleted_copies_interval_seconds,
            run_at_start=True,
        )
        deleted_copies.start()
        self.background.deleted_copies = deleted_copies

    def watch_sealer(self) -> SealerWatch:
        """Refuse Level 2 and 3 reads (and answer 503 at /readyz) whenever the audit sealer
        falls behind by more than the policy window; part of `start_background`."""
        settings = self.settings
        watch = SealerWatch(
            self.sessions,
            window_seconds=settings.audit_stall_window_seconds,
            cadence_seconds=settings.audit_checkpoint_interval_seconds,
        )
        audit_service.set_read_gate(self.engine, watch.check)
        if self.products.async_audit is not None:
            self.products.async_audit.gate = watch.check
        self.background.sealer_watch = watch
        metrics.read_at_scrape(
            "together_audit_sealer_lag_seconds",
            "Age of the oldest committed audit event not yet sealed into the chain (0: none)",
            watch.lag_seconds,
        )
        return watch

    def stop_background(self) -> None:
        """Stop what `start_background` started, the newest first."""
        running, self.background = self.background, Background()
        if running.sealer_watch is not None:
            audit_service.set_read_gate(self.engine, None)
            if self.products.async_audit is not None:
                self.products.async_audit.gate = None
        if running.prefetcher is not None:
            running.prefetcher.stop()
        if running.deleted_copies is not None:
            running.deleted_copies.stop()
        if running.retention is not None:
            running.retention.stop()
        if running.refresher is not None:
            running.refresher.stop()
        if running.sealer is not None:
            running.sealer.stop()
        if running.watching_epochs:
            self.epochs.stop()

    def ready(self) -> None:
        """Raise `NotReady`, saying why, unless this process can serve: the metadata database
        answers, it is at this code's schema revision, and (in a server process) the audit
        sealer keeps up. What a load balancer's probe asks."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            problem = schema_problem(self.engine)
            watch = self.background.sealer_watch
            if problem is None and watch is not None:
                problem = watch.problem()
        except SQLAlchemyError as exc:
            # The driver's message may quote the URL: say only what failed.
            raise NotReady("the metadata database does not answer") from exc
        if problem is not None:
            raise NotReady(problem)

    def close(self) -> None:
        self.engine.dispose()


def async_audit_writer(engine: Engine) -> AsyncAuditWriter | None:
    """On PostgreSQL, held reads write their audit events from the event loop."""
    if engine.dialect.name != "postgresql":
        return None
    return AsyncAuditWriter(
        engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    )


def _schema_problem_or_unreachable(engine: Engine) -> str | None:
    """The schema check at start: a database at another revision refuses the start (T36). A
    database that cannot be reached is not decided here: readiness reports it, and the
    process serves once it answers."""
    try:
        return schema_problem(engine)
    except SQLAlchemyError:
        return None


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def build_store(settings: Settings) -> ObjectStore:
    """The object store of dataset versions and sharing files (TOGETHER_STORAGE_URL)."""
    try:
        return open_store(
            settings.storage_url,
            default_root=settings.storage_dir,
            cache_dir=settings.data_dir / "cache",
            cache_max_bytes=settings.storage_cache_max_bytes,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=_secret(settings.s3_access_key_id),
            secret_access_key=_secret(settings.s3_secret_access_key),
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def build_platform(settings: Settings) -> Platform:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    keys = load_keys(settings)
    audit_signer = load_signer(settings)
    engine = make_engine(settings.resolved_database_url)
    problem = _schema_problem_or_unreachable(engine)
    if problem is not None:
        engine.dispose()
        raise ConfigurationError(problem)
    sessions = session_factory(engine)
    tokens = TokenService(
        keys.jwt_private_key_pem,
        issuer=settings.issuer,
        audience=settings.audience,
        lifetime=settings.token_lifetime_seconds,
        leeway=settings.token_leeway_seconds,
    )
    contracts = load_contracts(settings.contracts_dir)
    policy = PolicyEngine(settings.policies_dir)
    storage = Storage(build_store(settings))
    settings.staging_dir.mkdir(parents=True, exist_ok=True)
    # Bodies left by a process that died mid-upload: unreadable ciphertext, removed at start.
    staging.sweep(settings.staging_dir, older_than_seconds=settings.idempotency_lease_seconds)
    ingestion = IngestionDeps(
        sessions=sessions,
        contracts=contracts,
        storage=storage,
        protector=Protector(keys.hmac_key, keys.encryption_key),
        policy=policy,
        limits=InputLimits(
            max_rows=settings.upload_max_rows,
            max_decompressed_bytes=settings.upload_max_decompressed_bytes,
        ),
        lease_seconds=settings.idempotency_lease_seconds,
        parse_memory_bytes=settings.upload_parse_memory_bytes,
        parse_silence_seconds=settings.upload_parse_silence_seconds,
    )
    # Uploads validate against each contract's active version, stored in the database.
    lifecycle = LifecycleDeps(
        sessions=sessions, policy=policy, storage=storage, protector=ingestion.protector
    )
    ingestion.active_contract = partial(lifecycle_service.active_contract, lifecycle)
    partnership = load_partnership(settings.partnership_file, contracts)
    epochs = EpochReader(engine)
    products = ProductDeps(
        sessions=sessions,
        catalogue=load_catalogue(settings.products_dir, contracts, partnership),
        contracts=contracts,
        policy=policy,
        storage=storage,
        protector=ingestion.protector,
        k=partnership.k,
        epochs=epochs,
        audit_disabled_for_benchmark=settings.benchmark_only_skip_audit,
        async_audit=async_audit_writer(engine),
    )
    sharing = build_sharing(settings, products, tokens, keys)
    admin = AdminDeps(
        sessions=sessions,
        policy=policy,
        tokens=tokens,
        storage=storage,
        audit_signer=audit_signer,
        lockout_attempts=settings.ig_lockout_attempts,
        lockout_seconds=settings.ig_lockout_seconds,
    )
    review = ReviewDeps(
        sessions=sessions,
        policy=policy,
        contracts=contracts,
        settings=settings,
        audit_signer=audit_signer,
    )
    deletion = DeletionDeps(
        sessions=sessions,
        storage=storage,
        signer=audit_signer,
        rebuild_sharing=(
            (lambda: materialise.refresh_all(sharing.products, sharing.store, sharing.config))
            if sharing.config.tables
            else None
        ),
        forget_cached=partial(products_service.forget_dataset, products),
        sharing_store=sharing.store,
    )
    governance = GovernanceDeps(
        sessions=sessions,
        policy=policy,
        deletion=deletion,
        protector=ingestion.protector,
        contracts=contracts,
        active_contract=partial(lifecycle_service.active_contract, lifecycle),
        retention_contract=partial(lifecycle_service.governing_contract, lifecycle),
    )
    subject_access = SubjectAccessDeps(
        sessions=sessions,
        policy=policy,
        storage=storage,
        protector=ingestion.protector,
        contracts=contracts,
        active_contract=partial(lifecycle_service.active_contract, lifecycle),
        person_ids=partial(person_ids, ingestion.protector),
        review_scope=partial(review_service.authorise, review),
    )
    return Platform(
        settings=settings,
        engine=engine,
        sessions=sessions,
        tokens=tokens,
        contracts=contracts,
        policy=policy,
        storage=storage,
        ingestion=ingestion,
        partnership=partnership,
        products=products,
        epochs=epochs,
        principal_cache=EpochCache(),
        audit_signer=audit_signer,
        sharing=sharing,
        admin=admin,
        review=review,
        lifecycle=lifecycle,
        governance=governance,
        subject_access=subject_access,
    )
