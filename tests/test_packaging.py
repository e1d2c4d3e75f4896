"""Deploying ccci as its operators do: the Nix package and the NixOS module `services.ccci`
evaluated by the NixOS module system (Debian's nix-bin runs nixpkgs' lib.evalModules), the units
it writes and the plain ones in contrib/systemd checked by `systemd-analyze verify`, and every
command line they run parsed by ccci's own argument parser."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from controller.commands import build_parser
from controller.commands.forge import listen_address
from tests.conftest import _need
from tests.helpers import REPO_ROOT, RemoteRegistry, git

VENDORED_LIB = REPO_ROOT / "tests" / "data" / "nixpkgs-lib" / "lib"
EVAL = REPO_ROOT / "tests" / "data" / "nixos" / "eval.nix"
CONTRIB = REPO_ROOT / "contrib" / "systemd"
PLAIN_CCCI = "/usr/local/bin/ccci"  # where the plain units expect ccci
_config_numbers = itertools.count()


class EvaluationFailed(AssertionError):
    pass


@pytest.fixture(scope="session")
def nix_instantiate() -> str:
    """Debian's nix-bin (scripts/testbed installs it); fails under CI=true when missing."""
    found = shutil.which("nix-instantiate")
    if found is None:
        _need("nix-instantiate", "install Debian's nix-bin (scripts/testbed up does)")
    assert found
    return found


@pytest.fixture(scope="session")
def nixpkgs_lib(nix_instantiate: str) -> Path:
    """nixpkgs' lib/: $CCCI_NIXPKGS_LIB, else `<nixpkgs/lib>` where the search path has it, else
    the copy in tests/data (nixpkgs 26.11's, MIT: see its COPYING and SOURCE)."""
    explicit = os.environ.get("CCCI_NIXPKGS_LIB")
    if explicit:
        assert (Path(explicit) / "default.nix").is_file(), f"CCCI_NIXPKGS_LIB={explicit} holds no default.nix"
        return Path(explicit)
    found = subprocess.run([nix_instantiate, "--find-file", "nixpkgs/lib"], capture_output=True, text=True,
                           check=False)
    if found.returncode == 0 and found.stdout.strip():
        return Path(found.stdout.strip())
    return VENDORED_LIB


def nix_eval(nix_instantiate: str, *args: str, store: str = "dummy://") -> Any:
    """`nix-instantiate --eval --strict --json`; the dummy store: evaluating writes nothing."""
    proc = subprocess.run([nix_instantiate, "--store", store, "--eval", "--strict", "--json", *args],
                          capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise EvaluationFailed(proc.stderr)
    return json.loads(proc.stdout)


def evaluate(nix_instantiate: str, nixpkgs_lib: Path, tmp_path: Path, configuration: str,
             package: Path | str = "/nonexistent/ccci") -> dict[str, Any]:
    """services.ccci as `configuration` (a module's text) sets it, through lib.evalModules."""
    path = tmp_path / f"configuration-{next(_config_numbers)}.nix"
    path.write_text(configuration)
    result: dict[str, Any] = nix_eval(nix_instantiate, str(EVAL), "--argstr", "nixpkgsLib", str(nixpkgs_lib),
                                      "--argstr", "configuration", str(path), "--argstr", "cccPackage", str(package))
    return result


def command_line(line: str) -> list[str]:
    """A unit's command line as systemd splits it, for the quoting the module writes: double
    quotes with backslash escapes, `$$` and `%%` for a literal `$` and `%`."""
    bare = line.replace("$$", "").replace("%%", "")
    assert "$" not in bare and "%" not in bare, f"a variable or specifier systemd would expand: {line}"
    return shlex.split(line.replace("$$", "$").replace("%%", "%"))


def parse_ccci(argv: list[str]) -> Any:
    """ccci's own parser, in-process: a unit whose command line it refuses would never start."""
    assert argv[0].endswith("/bin/ccci"), argv
    return build_parser().parse_args(argv[1:])


def unit_text(kind: str, unit: dict[str, Any]) -> str:
    """The unit file NixOS would write for these values (the keys nix/module.nix uses)."""

    def lines(settings: dict[str, Any]) -> list[str]:
        out = []
        for key, value in settings.items():
            for item in value if isinstance(value, list) else [value]:
                out.append(f"{key}={'yes' if item is True else 'no' if item is False else item}")
        return out

    text = ["[Unit]", f"Description={unit['description']}"]
    text += [f"{key.capitalize()}={' '.join(unit[key])}" for key in ("wants", "requires", "after", "before")
             if unit.get(key)]
    text += lines(unit.get("unitConfig", {}))
    if kind == "service":
        text.append("[Service]")
        environment = dict(unit.get("environment", {}))
        if unit.get("path"):
            environment["PATH"] = ":".join(f"{p}/bin:{p}/sbin" for p in dict.fromkeys(unit["path"]))
        text += [f'Environment="{key}={value}"' for key, value in environment.items()]
        text += lines(unit["serviceConfig"])
    else:
        text += ["[Timer]", *lines(unit["timerConfig"])]
    if unit.get("wantedBy"):
        text += ["[Install]", f"WantedBy={' '.join(unit['wantedBy'])}"]
    return "\n".join(text) + "\n"


def write_units(evaluated: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, units in (("service", evaluated["services"]), ("timer", evaluated["timers"])):
        for name, unit in units.items():
            path = directory / f"{name}.{kind}"
            path.write_text(unit_text(kind, unit))
            paths.append(path)
    return paths


def systemd_verify(paths: list[Path]) -> None:
    """`systemd-analyze verify`, strict: a warning (an unknown key, a bad value) fails too."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        _need("systemd-analyze", "install Debian's systemd")
    assert analyze
    proc = subprocess.run([analyze, "verify", *map(str, paths)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr + proc.stdout


def fake_ccci(tmp_path: Path) -> Path:
    """What stands for the package: an executable at <out>/bin/ccci (verify wants one)."""
    out = tmp_path / "ccci-package"
    (out / "bin").mkdir(parents=True)
    (out / "bin" / "ccci").write_text("#!/bin/sh\nexit 0\n")
    (out / "bin" / "ccci").chmod(0o755)
    return out


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, Path]:
    """Secret files with values that must never reach a unit."""
    directory = tmp_path / "etc-ccci"
    directory.mkdir()
    files = {}
    for name in ("forge-token", "forge-webhook-secret", "keycloak-admin-password"):
        files[name] = directory / name
        files[name].write_text(f"SECRET-VALUE-{name}-4b1d\n")
    return files


def webhook_host(secrets: dict[str, Path]) -> str:
    return f"""{{
  services.ccci = {{
    enable = true;
    registry.remote = "git@git.example.org:ci/registry.git";
    pollInterval = 0.5;
    keycloak = {{ enable = true; adminPasswordFile = "{secrets['keycloak-admin-password']}"; }};
    forge = {{
      enable = true;
      intake = "webhook";
      listen = "127.0.0.1:8765";
      tokenFile = "{secrets['forge-token']}";
      webhookSecretFile = "{secrets['forge-webhook-secret']}";
    }};
  }};
}}
"""


def polling_host(secrets: dict[str, Path]) -> str:
    return f"""{{
  services.ccci = {{
    enable = true;
    registry.remote = "https://git.example.org/ci/registry.git";
    registry.path = "/srv/ccci/registry";
    stateDir = "/srv/ccci/state";
    dockerHost = "tcp://127.0.0.1:2375";
    dockerDataRoot = "/srv/docker";
    logFormat = "text";
    extraArgs = [ "--no-watch" ];
    forge = {{ enable = true; intake = "poll"; tokenFile = "{secrets['forge-token']}"; }};
  }};
}}
"""


def test_every_nix_file_parses(nix_instantiate: str) -> None:
    ours = [p for p in REPO_ROOT.rglob("*.nix")
            if not {".git", ".venv"} & set(p.parts) and VENDORED_LIB.parent not in p.parents]
    assert {p.relative_to(REPO_ROOT).as_posix() for p in ours} >= {
        "nix/package.nix", "nix/module.nix", "tests/data/nixos/stub.nix", "tests/data/nixos/eval.nix"}
    for path in ours:
        proc = subprocess.run([nix_instantiate, "--parse", str(path)], capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == 0, f"{path}: {proc.stderr}"


def test_a_webhook_host_with_keycloak_gets_serve_the_intake_and_the_reconcile_timer(
    nix_instantiate: str, nixpkgs_lib: Path, tmp_path: Path, secrets: dict[str, Path]
) -> None:
    evaluated = evaluate(nix_instantiate, nixpkgs_lib, tmp_path, webhook_host(secrets), fake_ccci(tmp_path))
    assert evaluated["failedAssertions"] == []
    services, timers = evaluated["services"], evaluated["timers"]
    assert set(services) == {"ccci-serve", "ccci-forge", "ccci-warm-keycloak"} and set(timers) == {
        "ccci-warm-keycloak"}

    serve = services["ccci-serve"]["serviceConfig"]
    assert (serve["Type"], serve["Restart"], serve["KillMode"], serve["StateDirectory"]) == (
        "notify", "on-failure", "mixed", "ccci")
    args = parse_ccci(command_line(serve["ExecStart"]))
    assert (args.command, args.registry, args.state_dir, args.log_json, args.poll_interval) == (
        "serve", Path("/var/lib/ccci/registry"), "/var/lib/ccci", True, 0.5)
    assert serve["ReadWritePaths"] == ["/var/lib/ccci", "/var/lib/ccci/registry", "-/var/lib/docker/volumes"]
    assert services["ccci-serve"]["environment"] == {"DOCKER_HOST": "unix:///run/docker.sock"}
    # Credentials are named, never read: ccci reads them from $CREDENTIALS_DIRECTORY.
    assert sorted(serve["LoadCredential"]) == [f"forge-token:{secrets['forge-token']}",
                                               f"keycloak-admin-password:{secrets['keycloak-admin-password']}"]

    forge = services["ccci-forge"]["serviceConfig"]
    args = parse_ccci(command_line(forge["ExecStart"]))
    assert (args.command, args.forge_action, args.registry) == (
        "forge", "webhook", Path("/var/lib/ccci/forge-registry"))
    assert listen_address(args.listen) == ("127.0.0.1", 8765)
    assert sorted(forge["LoadCredential"]) == [f"forge-token:{secrets['forge-token']}",
                                               f"forge-webhook-secret:{secrets['forge-webhook-secret']}"]
    assert forge["Restart"] == "on-failure" and "-/var/lib/docker/volumes" not in forge["ReadWritePaths"]

    reconcile = services["ccci-warm-keycloak"]["serviceConfig"]
    args = parse_ccci(command_line(reconcile["ExecStart"]))
    assert (args.command, args.warm_action, args.registry) == ("warm", "reconcile", Path("/var/lib/ccci/registry"))
    assert reconcile["Type"] == "oneshot"
    assert reconcile["LoadCredential"] == [f"keycloak-admin-password:{secrets['keycloak-admin-password']}"]
    assert timers["ccci-warm-keycloak"]["timerConfig"]["OnCalendar"] == "hourly"
    assert timers["ccci-warm-keycloak"]["wantedBy"] == ["timers.target"]

    units = write_units(evaluated, tmp_path / "units")
    text = "".join(path.read_text() for path in units) + json.dumps(evaluated)
    for path in secrets.values():
        assert path.read_text().strip() not in text  # a secret given as a path is never inlined
    systemd_verify(units)


def test_a_polling_host_without_keycloak_gets_serve_and_the_poller(
    nix_instantiate: str, nixpkgs_lib: Path, tmp_path: Path, secrets: dict[str, Path]
) -> None:
    evaluated = evaluate(nix_instantiate, nixpkgs_lib, tmp_path, polling_host(secrets), fake_ccci(tmp_path))
    assert evaluated["failedAssertions"] == []
    assert set(evaluated["services"]) == {"ccci-serve", "ccci-forge"} and evaluated["timers"] == {}

    serve = evaluated["services"]["ccci-serve"]["serviceConfig"]
    args = parse_ccci(command_line(serve["ExecStart"]))
    assert (args.registry, args.state_dir, args.log_json, args.poll_interval, args.no_watch) == (
        Path("/srv/ccci/registry"), "/srv/ccci/state", False, None, True)
    assert serve["LoadCredential"] == [f"forge-token:{secrets['forge-token']}"]
    # Outside /var/lib there is no StateDirectory=: tmpfiles makes the state dir and the clones.
    assert "StateDirectory" not in serve
    assert evaluated["tmpfiles"] == ["d /srv/ccci/state 0700 root root - -", "d /srv/ccci/registry 0700 root root - -",
                                     "d /srv/ccci/state/forge-registry 0700 root root - -"]
    assert serve["ReadWritePaths"] == ["/srv/ccci/state", "/srv/ccci/registry", "-/srv/docker/volumes"]
    assert evaluated["services"]["ccci-serve"]["environment"] == {"DOCKER_HOST": "tcp://127.0.0.1:2375"}

    forge = evaluated["services"]["ccci-forge"]["serviceConfig"]
    args = parse_ccci(command_line(forge["ExecStart"]))
    assert (args.command, args.forge_action, args.registry, args.once) == (
        "forge", "poll", Path("/srv/ccci/state/forge-registry"), False)
    assert forge["LoadCredential"] == [f"forge-token:{secrets['forge-token']}"]  # no webhook secret to poll
    assert evaluated["environment"]["variables"] == {"CCCI_STATE_DIR": "/srv/ccci/state",
                                                     "CCCI_REGISTRY": "/srv/ccci/registry"}
    systemd_verify(write_units(evaluated, tmp_path / "units"))


def test_a_host_without_forge_or_keycloak_gets_serve_alone_with_no_credentials(
    nix_instantiate: str, nixpkgs_lib: Path, tmp_path: Path
) -> None:
    remote = "ssh://git@git.test:2222/ci/registry.git"
    evaluated = evaluate(nix_instantiate, nixpkgs_lib, tmp_path,
                         f'{{ services.ccci = {{ enable = true; registry.remote = "{remote}"; }}; }}')
    assert set(evaluated["services"]) == {"ccci-serve"} and evaluated["timers"] == {}
    assert evaluated["services"]["ccci-serve"]["serviceConfig"]["LoadCredential"] == []
    disabled = evaluate(nix_instantiate, nixpkgs_lib, tmp_path, '{ services.ccci.enable = false; }')
    assert disabled["services"] == {} and disabled["environment"]["systemPackages"] == []


def test_the_start_step_clones_the_registry_once(
    nix_instantiate: str, nixpkgs_lib: Path, tmp_path: Path, git_remote: RemoteRegistry
) -> None:
    clone = tmp_path / "state" / "registry"
    clone.mkdir(parents=True)  # as tmpfiles leaves it: empty
    evaluated = evaluate(nix_instantiate, nixpkgs_lib, tmp_path, f"""{{
      services.ccci = {{ enable = true; registry.remote = "{git_remote.bare}"; registry.path = "{clone}"; }};
    }}""")
    start = command_line(evaluated["services"]["ccci-serve"]["serviceConfig"]["ExecStartPre"])

    def run_step() -> subprocess.CompletedProcess[str]:
        return subprocess.run(start, capture_output=True, text=True, timeout=60, check=False)

    assert run_step().returncode == 0
    head = git(clone, "rev-parse", "HEAD")
    assert head == git(git_remote.bare, "rev-parse", "main") and (clone / "ccci.yaml").is_file()
    (clone / "local-change").write_text("the controller's clone is its own: a restart keeps it\n")
    git_remote.edit({"later.txt": "pushed after the clone\n"})
    assert run_step().returncode == 0  # no second clone, no fetch: serve does that itself
    assert git(clone, "rev-parse", "HEAD") == head and (clone / "local-change").is_file()

    elsewhere = evaluate(nix_instantiate, nixpkgs_lib, tmp_path, f"""{{
      services.ccci = {{ enable = true; registry.remote = "{tmp_path / 'nothing.git'}";
                         registry.path = "{tmp_path / 'other'}"; }};
    }}""")
    failed = subprocess.run(command_line(elsewhere["services"]["ccci-serve"]["serviceConfig"]["ExecStartPre"]),
                            capture_output=True, text=True, timeout=60, check=False)
    assert failed.returncode != 0 and "nothing.git" in failed.stderr  # the unit fails, saying why


@pytest.mark.parametrize(("setting", "option"), [
    ("pollInterval = -5;", "services.ccci.pollInterval"),
    ("pollInterval = 0;", "services.ccci.pollInterval"),
    ('stateDir = "var/lib/ccci";', "services.ccci.stateDir"),
    ('registry.path = "registry";', "services.ccci.registry.path"),
    ('logFormat = "xml";', "services.ccci.logFormat"),
    ('registry.remote = "not a url";', "services.ccci.registry.remote"),
    ('registry.remote = "https://bot:hunter2@git.example.org/ci/registry.git";', "services.ccci.registry.remote"),
    ('dockerHost = "/run/docker.sock";', "services.ccci.dockerHost"),
    ('forge.intake = "carrier-pigeon";', "services.ccci.forge.intake"),
    ('forge.listen = "8765";', "services.ccci.forge.listen"),
    ('forge.listen = "127.0.0.1:99999";', "services.ccci.forge.listen"),
    # A Nix path would be copied into the world-readable store: a secret is a string path.
    ("forge.tokenFile = ./configuration.nix;", "services.ccci.forge.tokenFile"),
    ('keycloak.adminPasswordFile = "/nix/store/0000-kc-password";', "services.ccci.keycloak.adminPasswordFile"),
    ('keycloak.reconcileAt = "hourly\\n[Service]";', "services.ccci.keycloak.reconcileAt"),
])
def test_a_nonsense_value_fails_the_evaluation_naming_the_option(
    nix_instantiate: str, nixpkgs_lib: Path, tmp_path: Path, setting: str, option: str
) -> None:
    # A sound host (its values as defaults), and the one nonsense value over it.
    configuration = f"""{{
      imports = [
        ({{ lib, ... }}: {{ services.ccci = {{
          enable = true; forge.enable = true; keycloak.enable = true;
          registry.remote = lib.mkDefault "/srv/registry.git";
          forge.tokenFile = lib.mkDefault "/etc/ccci/forge-token";
          forge.webhookSecretFile = lib.mkDefault "/etc/ccci/hook";
          keycloak.adminPasswordFile = lib.mkDefault "/etc/ccci/kc";
        }}; }})
        {{ services.ccci.{setting} }}
      ];
    }}"""
    with pytest.raises(EvaluationFailed, match=rf"option `{re.escape(option)}' is not of type"):
        evaluate(nix_instantiate, nixpkgs_lib, tmp_path, configuration)


@pytest.mark.parametrize(("setting", "message"), [
    ("forge.enable = true;", "services.ccci.forge.enable needs services.ccci.forge.tokenFile."),
    ('forge.enable = true; forge.tokenFile = "/etc/t";',
     'services.ccci.forge.intake = "webhook" needs services.ccci.forge.webhookSecretFile.'),
    ("keycloak.enable = true;", "services.ccci.keycloak.enable needs services.ccci.keycloak.adminPasswordFile."),
    ('forge.enable = true; forge.intake = "poll"; forge.tokenFile = "/etc/t"; forge.registryPath = "/srv/r";',
     "services.ccci.forge.registryPath must differ from services.ccci.registry.path"),
])
def test_a_missing_credential_or_a_shared_clone_fails_an_assertion(
    nix_instantiate: str, nixpkgs_lib: Path, tmp_path: Path, setting: str, message: str
) -> None:
    path = tmp_path / f"assertions-{next(_config_numbers)}.nix"
    path.write_text(f"""{{ services.ccci = {{ enable = true; registry.remote = "/srv/registry.git";
                                             registry.path = "/srv/r"; {setting} }}; }}""")
    expression = (f'(import {EVAL} {{ nixpkgsLib = "{nixpkgs_lib}"; configuration = "{path}"; }})'
                  ".failedAssertions")
    failed = nix_eval(nix_instantiate, "--expr", expression)
    assert any(m.startswith(message) for m in failed), failed


def test_the_package_builds_from_nixpkgs_python_packages_named_as_pyproject_names_them(
    nix_instantiate: str, nixpkgs_lib: Path, tmp_path: Path
) -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = sorted(re.sub(r"[-_.]+", "-", re.split(r"[<>=!~; \[]", dep, maxsplit=1)[0]).lower()
                    for dep in project["dependencies"])
    stand_ins = " ".join(f'"{name}" = {{ pname = "{name}"; }};' for name in [*wanted, "setuptools"])
    expression = f"""
      let
        lib = import {nixpkgs_lib};
        built = import {REPO_ROOT / 'nix' / 'package.nix'} {{
          inherit lib;
          python3Packages = {{ {stand_ins} buildPythonApplication = attrs: attrs; }};
          git = {{ outPath = "/git"; }};
          docker-client = {{ outPath = "/docker-client"; }};
        }};
      in {{
        inherit (built) pname version pyproject makeWrapperArgs pythonImportsCheck;
        dependencies = map (p: p.pname) built.dependencies;
        buildSystem = map (p: p.pname) built.build-system;
        mainProgram = built.meta.mainProgram;
        src = "${{built.src}}";
      }}"""
    store = tmp_path / "store"  # the source is copied into a store: a private one
    built = nix_eval(nix_instantiate, "--read-write-mode", "--expr", expression, store=f"local?root={store}")
    assert sorted(built["dependencies"]) == wanted
    assert built["version"] == project["version"] and built["pyproject"] is True
    assert built["buildSystem"] == ["setuptools"] and built["mainProgram"] == "ccci"
    assert built["pythonImportsCheck"] == ["controller"]
    assert built["makeWrapperArgs"] == ["--suffix", "PATH", ":", "/git/bin:/docker-client/bin"]
    source = store / built["src"].lstrip("/")
    assert sorted(p.name for p in source.iterdir()) == ["LICENSE", "README.md", "controller", "pyproject.toml"]
    assert (source / "controller" / "commands" / "serve.py").read_text() == (
        REPO_ROOT / "controller" / "commands" / "serve.py").read_text()


def test_the_plain_units_pass_systemd_analyze_verify_and_cccis_parser(tmp_path: Path) -> None:
    """contrib/systemd, for hosts without Nix: ccci at /usr/local/bin/ccci (a stand-in here)."""
    stand_in = fake_ccci(tmp_path) / "bin" / "ccci"
    units = sorted(CONTRIB.glob("*.service")) + sorted(CONTRIB.glob("*.timer"))
    assert {p.name for p in units} >= {"ccci-serve.service", "ccci-forge.service", "ccci-warm-keycloak.service",
                                       "ccci-warm-keycloak.timer"}
    copies = []
    for unit in units:
        text = unit.read_text()
        for line in text.splitlines():
            if line.startswith("ExecStart="):
                argv = command_line(line.removeprefix("ExecStart="))
                assert argv[0] == PLAIN_CCCI, line
                args = parse_ccci(argv)
                assert (args.state_dir, args.log_json) == ("/var/lib/ccci", True), line
        copy = tmp_path / "units" / unit.name
        copy.parent.mkdir(exist_ok=True)
        copy.write_text(text.replace(PLAIN_CCCI, str(stand_in)))
        copies.append(copy)
    serve = (CONTRIB / "ccci-serve.service").read_text()
    assert "\nType=notify\n" in serve and "\nRestart=on-failure\n" in serve and "\nKillMode=mixed\n" in serve
    systemd_verify(copies)
