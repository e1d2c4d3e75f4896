# ccci as a Python application, built from nixpkgs' Python packages:
#
#   ccci = pkgs.callPackage ./nix/package.nix { };
#
# The ranges in pyproject.toml are what nixpkgs' packages must satisfy (the build checks them);
# requirements.lock, which CI installs with pip, plays no part here.
{
  lib,
  python3Packages,
  git,
  docker-client,
}:

let
  project = (lib.importTOML ../pyproject.toml).project;
in
python3Packages.buildPythonApplication {
  pname = "ccci";
  inherit (project) version;
  pyproject = true;

  # What the wheel is built from, and nothing else: a change to the tests or docs rebuilds
  # nothing. (cleanSourceWith rather than lib.fileset, which needs Nix 2.14: CI evaluates this
  # with Debian's Nix 2.8.)
  src = lib.cleanSourceWith {
    name = "ccci-source";
    src = ../.;
    filter =
      path: type:
      let
        relative = lib.removePrefix (toString ../. + "/") (toString path);
      in
      lib.elem relative [
        "pyproject.toml"
        "README.md"
        "LICENSE"
        "controller"
      ]
      || (
        lib.hasPrefix "controller/" relative
        && baseNameOf relative != "__pycache__"
        && !lib.hasSuffix ".pyc" relative
      );
  };

  build-system = [ python3Packages.setuptools ];

  dependencies = with python3Packages; [
    gitpython
    httpx
    waitress
    watchdog
    docker
    ruamel-yaml
    python-keycloak
    jsonschema
    filelock
    rich
    tenacity
  ];

  # ccci runs git (the registry, recipe mirrors) and the docker CLI (`docker stack deploy`).
  # Appended, so a docker on the service's PATH (the host engine's own) is preferred.
  makeWrapperArgs = [
    "--suffix"
    "PATH"
    ":"
    (lib.makeBinPath [
      git
      docker-client
    ])
  ];

  # The test suite needs a Docker swarm and a Keycloak (scripts/test), which a build sandbox
  # has not; importing the package is the check here.
  doCheck = false;
  pythonImportsCheck = [ "controller" ];

  meta = {
    inherit (project) description;
    license = lib.licenses.mit;
    mainProgram = "ccci";
    platforms = lib.platforms.linux;
  };
}
