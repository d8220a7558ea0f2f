from __future__ import annotations

from alembic import context

import services.audit.models
import services.authz.models
import services.identity.models
import services.ingestion.models
import services.kit.models
import services.lifecycle.models
import services.products.models
import services.retention.models
import services.sharing.models
import services.storage.models  # noqa: F401  (every model registers its table on Base)
from services.kit.db import Base, make_engine
from services.kit.settings import get_settings

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            transaction_per_migration=False,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `together db upgrade`")
run_migrations_online()
