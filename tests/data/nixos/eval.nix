# services.ccci (nix/module.nix) through the NixOS module system: lib.evalModules of nixpkgs'
# lib/, with stub.nix's declarations and a stand-in for the few packages the module names.
# tests/test_packaging.py runs it with `nix-instantiate --eval --strict --json` and reads the
# units, timers, tmpfiles rules and failed assertions it returns.
{
  nixpkgsLib, # nixpkgs' lib/ (a path, as a string)
  configuration, # a .nix file holding a module that sets services.ccci
  cccPackage ? "/nonexistent/ccci", # what stands for the ccci package's out path
}:

let
  lib = import (/. + nixpkgsLib);
  standIn = name: outPath: {
    type = "derivation";
    inherit name outPath;
  };
  pkgs = {
    runtimeShell = "/bin/sh";
    git = standIn "git" "/usr";
    openssh = standIn "openssh" "/usr";
    callPackage = _: _: throw "the tests set services.ccci.package";
  };
  inherit
    (lib.evalModules {
      modules = [
        ./stub.nix
        ../../../nix/module.nix
        (/. + configuration)
        {
          _module.args.pkgs = pkgs;
          services.ccci.package = lib.mkDefault (standIn "ccci" cccPackage);
        }
      ];
    })
    config
    ;
  # What a unit file says, with packages as their paths.
  unit =
    attrs:
    builtins.removeAttrs attrs [ "_module" ]
    // lib.optionalAttrs (attrs ? path) { path = map toString attrs.path; };
in
{
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;
  services = lib.mapAttrs (_: unit) config.systemd.services;
  timers = lib.mapAttrs (_: unit) config.systemd.timers;
  tmpfiles = config.systemd.tmpfiles.rules;
  environment = {
    inherit (config.environment) variables;
    systemPackages = map toString config.environment.systemPackages;
  };
}
