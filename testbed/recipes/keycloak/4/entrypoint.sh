#!/bin/sh
# Hand the data volume to Keycloak's user, read the bootstrap admin password from the
# swarm secret (never the environment of the service), then run Keycloak as uid 1000.
set -eu
DATA=/opt/keycloak/data
mkdir -p "$DATA"
if [ "$(stat -c %u "$DATA")" != 1000 ]; then
  chown 1000:1000 "$DATA"
fi
if [ -r /run/secrets/admin_password ]; then
  KC_BOOTSTRAP_ADMIN_PASSWORD=$(cat /run/secrets/admin_password)
  export KC_BOOTSTRAP_ADMIN_PASSWORD
fi
exec setpriv --reuid=1000 --regid=1000 --clear-groups /opt/keycloak/bin/kc.sh "$@"
