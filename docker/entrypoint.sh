#!/bin/sh
# Settings that hold a secret value come from files (Docker secrets): TOGETHER_<NAME>_FILE=path
# sets TOGETHER_<NAME> to the file's contents, so that no secret is written in compose.yaml or
# shown by `docker inspect`. The key files have settings of their own (TOGETHER_KEY_FILE,
# TOGETHER_AUDIT_KEY_FILE) and are read by the platform itself.
set -eu
for name in DATABASE_URL S3_ACCESS_KEY_ID S3_SECRET_ACCESS_KEY IG_OIDC_CLIENT_SECRET; do
    file=$(printenv "TOGETHER_${name}_FILE" || true)
    if [ -n "$file" ]; then
        # $(...) drops the file's trailing newline.
        value=$(cat "$file")
        export "TOGETHER_${name}=${value}"
        unset "TOGETHER_${name}_FILE"
    fi
done
exec "$@"
