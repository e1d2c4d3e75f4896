"""A fleet of CI hosts on one registry: each `ccci serve` on its own host, engine and state dir.

One job per module: `placement` (which host takes a quick run, who keeps a recipe warm, a
claim's deadline — pure decisions and their readers), `migrate` (a single-host registry's
snapshot index moved under its owner's name), `keepers` (rewarms this host owes the recipes it
keeps warm), `abandoned` (runs whose host died past their deadline, marked `aborted`). The
registry is the only channel between hosts: nothing here talks to another host or its engine.
"""
