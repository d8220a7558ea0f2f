#!/bin/sh
# Writes every secret file docker/compose.yaml names into a folder (default: docker/secrets/),
# leaving the files that already exist as they are. Needs openssl and the `together` command
# (an installed wheel or the checkout's .venv/bin/together; set TOGETHER to use another).
#   sh docker/make-secrets.sh [FOLDER]
set -eu
folder=${1:-$(dirname "$0")/secrets}
together=${TOGETHER:-together}
mkdir -p "$folder"
chmod 0700 "$folder"
cd "$folder"

missing() { [ ! -s "$1" ]; }
# Hex: nothing to escape in a URL or JSON.
random() { openssl rand -hex "$1"; }

missing db_owner_password && random 24 > db_owner_password
missing db_app_password && random 24 > db_app_password
missing db_owner_url \
    && printf 'postgresql://together_owner:%s@db:5432/together\n' "$(cat db_owner_password)" > db_owner_url
missing db_app_url \
    && printf 'postgresql://together_app:%s@db:5432/together\n' "$(cat db_app_password)" > db_app_url
missing together_keys.json && "$together" keys generate together_keys.json
missing together_audit_key.pem && "$together" audit keygen together_audit_key.pem
missing s3_access_key_id && random 16 > s3_access_key_id
missing s3_secret_access_key && random 32 > s3_secret_access_key
missing s3_config.json && printf '%s\n' "{\"identities\": [{\"name\": \"together\", \"credentials\": [{\"accessKey\": \"$(cat s3_access_key_id)\", \"secretKey\": \"$(cat s3_secret_access_key)\"}], \"actions\": [\"Admin\", \"Read\", \"Write\", \"List\", \"Tagging\"]}]}" > s3_config.json

# Inside the containers the files are read by other users (postgres, the app's uid 10001): the
# folder's mode 0700 is what keeps them private on this host.
chmod 0644 ./*
echo "secrets in $(pwd)"
