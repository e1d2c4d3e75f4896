#!/bin/sh
# Version 3 is broken on purpose (the fixture of a failed upgrade): its "migration" wipes
# the database, then Keycloak refuses an option it does not know and exits.
set -eu
DATA=/opt/keycloak/data
mkdir -p "$DATA"
if [ "$(stat -c %u "$DATA")" != 1000 ]; then
  chown 1000:1000 "$DATA"
fi
rm -rf "$DATA/h2"
if [ -r /run/secrets/admin_password ]; then
  KC_BOOTSTRAP_ADMIN_PASSWORD=$(cat /run/secrets/admin_password)
  export KC_BOOTSTRAP_ADMIN_PASSWORD
fi
exec setpriv --reuid=1000 --regid=1000 --clear-groups /opt/keycloak/bin/kc.sh "$@" --no-such-option
