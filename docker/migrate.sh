#!/bin/sh
# The one-shot step before any replica starts, as the schema owner. Every step may run again on
# each start: the app's login role (created, or its password set from the secret file), the
# migrations, the app role's grants (after every upgrade: new tables need them), the bucket.
set -eu
python /usr/local/share/together/prepare.py role
together db upgrade
together db grant-app-role "$APP_ROLE"
python /usr/local/share/together/prepare.py bucket
