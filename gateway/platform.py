"""Wires the services together once per process, from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from services.audit.async_writer import AsyncAuditWriter
from services.audit.checkpoints import CheckpointSigner, load_signer
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
from services.products.catalogue import load_catalogue
from services.products.config import PartnershipConfig, load_partnership
from services.products.service import ProductDeps
from services.sharing.service import SharingDeps, build_sharing
from services.storage.inputs import InputLimits
from services.storage.service import Storage


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
        policy=policy,
        storage=storage,
        protector=ingestion.protector,
        k=partnership.k,
        epochs=epochs,
        audit_disabled_for_benchmark=settings.benchmark_only_skip_audit,
        async_audit=async_audit_writer(engine),
    )
    sharing = build_sharing(settings, products, tokens, keys)
    return Platform(
        settings,
        engine,
        sessions,
        tokens,
        contracts,
        policy,
        storage,
        ingestion,
        partnership,
        products,
        epochs,
        EpochCache(),
        audit_signer,
        sharing,
    )
