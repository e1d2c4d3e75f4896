# services.ccci: the ccci daemon (`ccci serve`), the live-warm Keycloak's reconcile on a timer,
# and the forge intake (webhook receiver or poller), as systemd units. docs/operations.md has a
# configuration.nix excerpt and says what the operator writes into ccci.yaml.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    concatStringsSep
    hasPrefix
    literalExpression
    mkEnableOption
    mkIf
    mkOption
    optional
    optionalAttrs
    optionals
    types
    ;

  cfg = config.services.ccci;

  # Paths are strings here, never Nix paths: a Nix path is copied into the world-readable store.
  absolutePath = types.strMatching "/.*" // {
    description = "absolute path";
  };
  secretPath =
    types.addCheck absolutePath (path: !hasPrefix builtins.storeDir path)
    // {
      description = "absolute path outside the Nix store (a secret, read when the unit starts)";
    };
  # Unit files are world-readable: a password in the URL would be too (use a credential helper).
  gitUrl =
    types.addCheck (types.strMatching "([a-z][a-z0-9+.-]*://.+|[^/:@]+@[^/:]+:.+|/.+)") (
      url: builtins.match "[a-z][a-z0-9+.-]*://[^/@]*:[^/@]*@.*" url == null
    )
    // {
      description = "git URL without a password (https://…, ssh://…, user@host:path, or an absolute path)";
    };
  hostPort =
    types.addCheck (types.strMatching "(\\[[0-9A-Fa-f:.]+]|[^]:[]+):[1-9][0-9]{0,4}") (
      text: lib.toInt (lib.last (lib.splitString ":" text)) <= 65535
    )
    // {
      description = "HOST:PORT";
    };
  calendar = types.strMatching "[^\n]+" // {
    description = "systemd calendar expression (systemd.time(7))";
  };

  # One argument of a systemd command line: bare when it is plain, else quoted; `%` and `$`
  # are systemd's specifiers and variables, doubled to stand for themselves.
  execArg =
    arg:
    let
      text = toString arg;
    in
    if builtins.match "[A-Za-z0-9_@+=:,./-]+" text != null then
      text
    else
      builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON text);
  execLine = args: concatStringsSep " " (map execArg args);

  ccci = "${cfg.package}/bin/ccci";
  globalArgs = [
    ccci
    "--state-dir"
    cfg.stateDir
  ] ++ optional (cfg.logFormat == "json") "--log-json";

  # The controller's own clone of the registry (it commits and pushes there), made on the first
  # start; later starts leave it alone: ccci fetches, rebases and pushes itself. One line of
  # shell in the unit itself, so `systemctl cat` shows all there is to it.
  cloneStep =
    clone:
    execLine [
      pkgs.runtimeShell
      "-c"
      ''set -eu; umask 077; [ -e "$2/.git" ] || exec git clone --quiet -- "$1" "$2"''
      "ccci-clone-registry"
      cfg.registry.remote
      clone
    ];

  # StateDirectory= makes and owns a directory under /var/lib; elsewhere tmpfiles does.
  stateDirectory =
    if hasPrefix "/var/lib/" cfg.stateDir then lib.removePrefix "/var/lib/" cfg.stateDir else null;

  credential = name: file: "${name}:${file}";
  keycloakCredentials = optional cfg.keycloak.enable (
    credential "keycloak-admin-password" cfg.keycloak.adminPasswordFile
  );
  forgeCredentials = optional cfg.forge.enable (credential "forge-token" cfg.forge.tokenFile);

  # Read-only everywhere but what ccci writes; still root, for two reasons: the Docker socket is
  # root on the host anyway, and snapshot restores write the warm apps' volumes with their own
  # owners and modes (under the engine's data root).
  sandbox = {
    ProtectSystem = "strict";
    ProtectHome = "read-only"; # root's ~/.ssh and git config are read, never written
    PrivateTmp = true;
    NoNewPrivileges = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    RestrictRealtime = true;
    RestrictNamespaces = true;
    LockPersonality = true;
    SystemCallArchitectures = "native";
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
      "AF_NETLINK" # glibc's getaddrinfo asks the kernel which address families are configured
    ];
    UMask = "0077";
  }
  // optionalAttrs (stateDirectory != null) {
    StateDirectory = stateDirectory;
    StateDirectoryMode = "0700";
  };
  # What serve and the Keycloak reconcile write: the state dir, the registry clone, and the
  # volumes of warm apps (snapshots are taken from and restored into their mountpoints).
  engineWritable = [
    cfg.stateDir
    cfg.registry.path
    "-${cfg.dockerDataRoot}/volumes"
  ];
  runtimePath = [
    pkgs.git
    pkgs.openssh
  ];
  engineEnvironment = {
    DOCKER_HOST = cfg.dockerHost;
  };
in
{
  options.services.ccci = {
    enable = mkEnableOption "ccci, CI for Docker Swarm recipes driven by a git registry (`ccci serve`)";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./nix/package.nix { }";
      description = "The ccci package.";
    };

    registry = {
      remote = mkOption {
        type = gitUrl;
        example = "git@git.example.org:ci/registry.git";
        description = ''
          The registry's remote. The controller clones it on its first start and pushes its
          claims and verdicts there, so the host's key (root's ~/.ssh) or credential helper
          needs write access.
        '';
      };
      path = mkOption {
        type = absolutePath;
        default = "${cfg.stateDir}/registry";
        defaultText = literalExpression ''"''${config.services.ccci.stateDir}/registry"'';
        description = "The controller's own clone of the registry (`ccci serve --registry`); nobody else edits it.";
      };
    };

    stateDir = mkOption {
      type = absolutePath;
      default = "/var/lib/ccci";
      description = ''
        ccci's state dir (`--state-dir`): in-flight markers, locks, snapshots, the forge outbox.
        Every ccci on one Docker engine must share it.
      '';
    };

    dockerHost = mkOption {
      type = types.strMatching "(unix|tcp|ssh)://.+" // {
        description = "Docker engine address (unix://, tcp:// or ssh://)";
      };
      default = "unix:///run/docker.sock";
      description = "The engine, a swarm manager (`DOCKER_HOST`).";
    };

    dockerDataRoot = mkOption {
      type = absolutePath;
      default = "/var/lib/docker";
      description = ''
        The engine's data root (`docker info`: Docker Root Dir). Snapshots of warm apps are read
        from and restored into the volumes under it, so the units may write `<root>/volumes`.
      '';
    };

    pollInterval = mkOption {
      type = types.nullOr types.numbers.positive;
      default = null;
      example = 10;
      description = "Seconds between fetches of the remote (`serve --poll-interval`); null: `serve.poll_interval_s` of ccci.yaml.";
    };

    logFormat = mkOption {
      type = types.enum [
        "text"
        "json"
      ];
      default = "json";
      description = "How the daemons log to the journal: JSON lines (`--log-json`) or text; either way each line carries its priority.";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--no-watch" ];
      description = "More arguments for `ccci serve`.";
    };

    keycloak = {
      enable = mkEnableOption ''
        the live-warm Keycloak's admin credential for serve, and a timer that runs
        `ccci warm reconcile` (serve also reconciles every `serve.reconcile_interval_s`; the
        timer's unit shows the outcome to systemd: failed when the Keycloak is unhealthy, an
        upgrade is held or was rolled back)'';
      adminPasswordFile = mkOption {
        type = types.nullOr secretPath;
        default = null;
        example = "/etc/ccci/keycloak-admin-password";
        description = ''
          A file holding the Keycloak admin password, handed to the units as the credential
          `keycloak-admin-password`: set `warm.keycloak.admin_secret_file:
          $CREDENTIALS_DIRECTORY/keycloak-admin-password` in ccci.yaml.
        '';
      };
      reconcileAt = mkOption {
        type = calendar;
        default = "hourly";
        example = "*-*-* 02:00:00";
        description = "When the timer runs `ccci warm reconcile` (systemd.time(7) calendar).";
      };
    };

    forge = {
      enable = mkEnableOption "the forge intake: `!testme` comments on pull requests become requests (docs/forge.md)";
      intake = mkOption {
        type = types.enum [
          "webhook"
          "poll"
        ];
        default = "webhook";
        description = "`webhook`: receive the forge's webhooks on `listen`; `poll`: ask the forge for new comments.";
      };
      listen = mkOption {
        type = hostPort;
        default = "127.0.0.1:8765";
        description = "Where the webhook receiver listens (put a reverse proxy in front of it).";
      };
      tokenFile = mkOption {
        type = types.nullOr secretPath;
        default = null;
        example = "/etc/ccci/forge-token";
        description = ''
          A file holding the bot's API token, handed to serve and the intake as the credential
          `forge-token`: set `forge.token_file: $CREDENTIALS_DIRECTORY/forge-token` in ccci.yaml.
        '';
      };
      webhookSecretFile = mkOption {
        type = types.nullOr secretPath;
        default = null;
        example = "/etc/ccci/forge-webhook-secret";
        description = ''
          A file holding the webhook's secret (webhook intake), handed over as the credential
          `forge-webhook-secret`: set `forge.webhook_secret_file:
          $CREDENTIALS_DIRECTORY/forge-webhook-secret` in ccci.yaml.
        '';
      };
      registryPath = mkOption {
        type = absolutePath;
        default = "${cfg.stateDir}/forge-registry";
        defaultText = literalExpression ''"''${config.services.ccci.stateDir}/forge-registry"'';
        description = "The intake's own clone of the registry (it commits the requests there).";
      };
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.keycloak.enable -> cfg.keycloak.adminPasswordFile != null;
        message = "services.ccci.keycloak.enable needs services.ccci.keycloak.adminPasswordFile.";
      }
      {
        assertion = cfg.forge.enable -> cfg.forge.tokenFile != null;
        message = "services.ccci.forge.enable needs services.ccci.forge.tokenFile.";
      }
      {
        assertion = cfg.forge.enable && cfg.forge.intake == "webhook" -> cfg.forge.webhookSecretFile != null;
        message = "services.ccci.forge.intake = \"webhook\" needs services.ccci.forge.webhookSecretFile.";
      }
      {
        assertion = cfg.forge.enable -> cfg.forge.registryPath != cfg.registry.path;
        message = "services.ccci.forge.registryPath must differ from services.ccci.registry.path: each daemon has its own clone.";
      }
    ];

    # `ccci status`, `ccci leaks`, `ccci prune` by hand see what the units see.
    environment.systemPackages = [ cfg.package ];
    environment.variables = {
      CCCI_STATE_DIR = cfg.stateDir;
      CCCI_REGISTRY = cfg.registry.path;
    };

    systemd.tmpfiles.rules =
      optional (stateDirectory == null) "d ${cfg.stateDir} 0700 root root - -"
      ++ [ "d ${cfg.registry.path} 0700 root root - -" ]
      ++ optional cfg.forge.enable "d ${cfg.forge.registryPath} 0700 root root - -";

    systemd.services.ccci-serve = {
      description = "ccci: recipe CI from the registry ${cfg.registry.remote}";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [
        "network-online.target"
        "docker.service"
      ];
      path = runtimePath;
      environment = engineEnvironment;
      # The nightly sweep is serve's own job (`sweep.at` in ccci.yaml; its last run is kept in
      # the state dir, so a restart catches up): no timer for it.
      serviceConfig = sandbox // {
        Type = "notify";
        ExecStartPre = cloneStep cfg.registry.path;
        ExecStart = execLine (
          globalArgs
          ++ [
            "serve"
            "--registry"
            cfg.registry.path
          ]
          ++ optionals (cfg.pollInterval != null) [
            "--poll-interval"
            (builtins.toJSON cfg.pollInterval) # 0.5, where toString says 0.500000
          ]
          ++ cfg.extraArgs
        );
        # SIGTERM drains: nothing new is claimed and the runs in flight finish, so only serve
        # gets it, not the git and docker processes of those runs; a run that outlasts the stop
        # timeout is aborted and torn down at the next start.
        KillMode = "mixed";
        TimeoutStopSec = "15min";
        # Start-up recovery tears down what a crash left before READY=1.
        TimeoutStartSec = "15min";
        # Longer than one pass of the loop (a fetch, a push, an inline prune).
        WatchdogSec = "10min";
        Restart = "on-failure";
        RestartSec = "10s";
        SuccessExitStatus = "130"; # a SIGTERM before the loop started
        LoadCredential = keycloakCredentials ++ forgeCredentials;
        ReadWritePaths = engineWritable;
      };
    };

    systemd.services.ccci-warm-keycloak = mkIf cfg.keycloak.enable {
      description = "ccci: reconcile the live-warm Keycloak";
      after = [
        "network-online.target"
        "docker.service"
        "ccci-serve.service"
      ];
      wants = [ "network-online.target" ];
      path = runtimePath;
      environment = engineEnvironment;
      unitConfig.ConditionPathExists = "${cfg.registry.path}/.git"; # serve's clone, once made
      serviceConfig = sandbox // {
        Type = "oneshot";
        ExecStart = execLine (
          globalArgs
          ++ [
            "warm"
            "reconcile"
            "--registry"
            cfg.registry.path
          ]
        );
        LoadCredential = keycloakCredentials;
        ReadWritePaths = engineWritable;
      };
    };

    systemd.timers.ccci-warm-keycloak = mkIf cfg.keycloak.enable {
      description = "ccci: reconcile the live-warm Keycloak (${cfg.keycloak.reconcileAt})";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.keycloak.reconcileAt;
        Persistent = true;
        RandomizedDelaySec = "5min";
      };
    };

    systemd.services.ccci-forge = mkIf cfg.forge.enable {
      description = "ccci: the forge's !testme comments in (${cfg.forge.intake})";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      path = runtimePath;
      serviceConfig = sandbox // {
        Type = "simple";
        ExecStartPre = cloneStep cfg.forge.registryPath;
        ExecStart = execLine (
          globalArgs
          ++ [
            "forge"
            cfg.forge.intake
            "--registry"
            cfg.forge.registryPath
          ]
          ++ optionals (cfg.forge.intake == "webhook") [
            "--listen"
            cfg.forge.listen
          ]
        );
        Restart = "on-failure";
        RestartSec = "10s";
        SuccessExitStatus = "130";
        LoadCredential =
          forgeCredentials
          ++ optional (cfg.forge.intake == "webhook") (
            credential "forge-webhook-secret" cfg.forge.webhookSecretFile
          );
        # The intake needs neither the engine nor the volumes: its clone and the state dir (the
        # outbox, the poll cursor). Root owns both, so it needs no capability (but a low port's).
        ReadWritePaths = [
          cfg.stateDir
          cfg.forge.registryPath
        ];
        CapabilityBoundingSet = [ "CAP_NET_BIND_SERVICE" ];
      };
    };
  };
}
