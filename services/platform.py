"""The composition root: wires the services together once per process, from the settings, and
is the one place where a server process's background threads start and stop."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from services.admin.deps import AdminDeps
from services.audit.async_writer import AsyncAuditWriter
from services.audit.checkpoints import CheckpointSigner, load_signer
from services.audit.sealer import Sealer
from services.authz.enforcer import PolicyEngine
from services.contracts.loader import load_contracts
from services.contracts.model import Contract
from services.contracts.protection import Protector
from services.identity.schemas import Principal
from services.identity.tokens import TokenService
from services.ingestion.service import IngestionDeps
from services.kit.db import make_engine, session_factory
from services.kit.epochs import EpochCache, EpochReader
from services.kit.keys import load_keys
from services.kit.settings import Settings
from services.products.config import PartnershipConfig, load_partnership
from services.products.loading import load_catalogue
from services.products.service import ProductDeps
from services.review.service import ReviewDeps
from services.sharing import materialise
from services.sharing.service import SharingDeps, build_sharing
from services.storage.inputs import InputLimits
from services.storage.service import Storage


@dataclass
class Background:
    """The threads a server process runs beside its requests (none in a command or a test)."""

    sealer: Sealer | None = None
    refresher: materialise.Refresher | None = None
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
        # Requests then find the cache epochs in memory (see services/kit/epochs.py).
        self.epochs.start()
        self.background.watching_epochs = True
        interval = settings.sharing_refresh_seconds
        if interval > 0 and self.sharing.config.tables:
            deps = self.sharing
            refresher = materialise.Refresher(
                lambda: materialise.refresh_all(deps.products, deps.folder, deps.config), interval
            )
            refresher.start()
            self.background.refresher = refresher

    def stop_background(self) -> None:
        """Stop what `start_background` started, the newest first."""
        running, self.background = self.background, Background()
        if running.refresher is not None:
            running.refresher.stop()
        if running.sealer is not None:
            running.sealer.stop()
        if running.watching_epochs:
            self.epochs.stop()

    def ready(self) -> None:
        """Raise unless the metadata database answers (what a load balancer's probe asks)."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()


def async_audit_writer(engine: Engine) -> AsyncAuditWriter | None:
    """On PostgreSQL, held reads write their audit events from the event loop."""
    if engine.dialect.name != "postgresql":
        return None
    return AsyncAuditWriter(
        engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    )


def build_platform(settings: Settings) -> Platform:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    keys = load_keys(settings)
    audit_signer = load_signer(settings)
    engine = make_engine(settings.resolved_database_url)
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
    storage = Storage(settings.storage_dir)
    settings.staging_dir.mkdir(parents=True, exist_ok=True)
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
    )
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
    )
