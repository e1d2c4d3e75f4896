# Names vulture cannot see used; `vulture controller .vulture-whitelist.py --min-confidence 60`
# runs in scripts/test. Each line says who uses it.
from controller.flows.serve import run_until_idle
from controller.registry.watch import _Handler
from controller.snapshots.layout import forget_manifests
from controller.sso.client import KeycloakAdminClient, password_grant
from controller.util.yamlio import _round_trip

run_until_idle  # tests drain the queue in-process
_Handler.on_any_event  # watchdog's callback
forget_manifests  # tests start from an empty parsed-manifest cache
KeycloakAdminClient.realm_exists  # tests inspect Keycloak through the one client
password_grant  # tests prove a realm works through the one client
_round_trip().preserve_quotes  # ruamel.yaml settings, read by the dumper
_round_trip().width
