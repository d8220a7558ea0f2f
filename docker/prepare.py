"""Steps of the one-shot migration service (docker/migrate.sh) that the `together` command does
not take: they belong to the deployment, not to the platform.

    python prepare.py role    create the app's login role, or set its password (PostgreSQL)
    python prepare.py bucket  create the bucket of TOGETHER_STORAGE_URL if it is missing

Both read the same TOGETHER_* variables as the platform (docker/entrypoint.sh has already turned
the *_FILE ones into values); `role` also reads APP_ROLE and APP_ROLE_PASSWORD_FILE.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

BUCKET_WAIT_SECONDS = 120


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise SystemExit(f"prepare: {name} is not set")
    return value


def ensure_role() -> None:
    import psycopg
    from psycopg import sql

    url = _required("TOGETHER_DATABASE_URL").replace("postgresql+psycopg://", "postgresql://", 1)
    role = _required("APP_ROLE")
    password = Path(_required("APP_ROLE_PASSWORD_FILE")).read_text().strip()
    if not password:
        raise SystemExit("prepare: the app role's password file is empty")
    with psycopg.connect(url, autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        # Setting the password on every start keeps the role in step with a rotated secret.
        verb = "ALTER" if exists else "CREATE"
        connection.execute(
            sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                sql.SQL(verb), sql.Identifier(role), sql.Literal(password)
            )
        )
    print(f"prepare: role {role} {'updated' if exists else 'created'}")


def ensure_bucket() -> None:
    from pyarrow import fs

    storage = urlparse(_required("TOGETHER_STORAGE_URL"))
    if storage.scheme != "s3" or not storage.netloc:
        print("prepare: storage is not s3://bucket/...; nothing to create")
        return
    options: dict[str, object] = {
        "region": os.environ.get("TOGETHER_S3_REGION") or "us-east-1",
        "access_key": _required("TOGETHER_S3_ACCESS_KEY_ID"),
        "secret_key": _required("TOGETHER_S3_SECRET_ACCESS_KEY"),
        "allow_bucket_creation": True,
        "connect_timeout": 3,
        "request_timeout": 10,
    }
    endpoint = urlparse(os.environ.get("TOGETHER_S3_ENDPOINT_URL", ""))
    if endpoint.netloc:
        options["endpoint_override"] = endpoint.netloc
        options["scheme"] = endpoint.scheme
    store = fs.S3FileSystem(**options)  # type: ignore[arg-type]
    # The store may still be starting when this runs: it is up once a bucket can be made.
    deadline = time.monotonic() + BUCKET_WAIT_SECONDS
    while True:
        try:
            store.create_dir(storage.netloc)
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"prepare: cannot create bucket {storage.netloc}: {exc}") from exc
            time.sleep(2)
    print(f"prepare: bucket {storage.netloc} ready")


def main(arguments: list[str]) -> None:
    steps = {"role": ensure_role, "bucket": ensure_bucket}
    if len(arguments) != 1 or arguments[0] not in steps:
        raise SystemExit(f"usage: prepare.py {'|'.join(steps)}")
    steps[arguments[0]]()


if __name__ == "__main__":
    main(sys.argv[1:])
