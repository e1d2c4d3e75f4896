# The few NixOS options nix/module.nix sets, declared as NixOS declares them (trimmed to what
# the module uses), so lib.evalModules can check the module without all of NixOS.
# tests/test_packaging.py renders the units from these values.
{ lib, ... }:

let
  inherit (lib) mkOption types;

  # A value of a unit file's key, as NixOS's systemd-lib accepts it.
  unitValue = types.oneOf [
    types.bool
    types.int
    types.str
    types.path
    types.package
  ];
  unitSettings = mkOption {
    type = types.attrsOf (types.either unitValue (types.listOf unitValue));
    default = { };
  };
  unitNames = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };
  common = {
    description = mkOption {
      type = types.str;
      default = "";
    };
    wantedBy = unitNames;
    wants = unitNames;
    requires = unitNames;
    after = unitNames;
    before = unitNames;
    unitConfig = unitSettings;
  };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf (
        types.submodule {
          options = {
            assertion = mkOption { type = types.bool; };
            message = mkOption { type = types.str; };
          };
        }
      );
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };

    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    environment.variables = mkOption {
      type = types.attrsOf (types.either types.str (types.listOf types.str));
      default = { };
    };

    systemd.tmpfiles.rules = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };

    systemd.services = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = common // {
            path = mkOption {
              type = types.listOf (types.either types.package types.path);
              default = [ ];
            };
            environment = mkOption {
              type = types.attrsOf (
                types.nullOr (
                  types.oneOf [
                    types.str
                    types.path
                    types.package
                  ]
                )
              );
              default = { };
            };
            serviceConfig = unitSettings;
          };
        }
      );
      default = { };
    };

    systemd.timers = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = common // {
            timerConfig = unitSettings;
          };
        }
      );
      default = { };
    };
  };
}
