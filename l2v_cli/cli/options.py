"""Options shared by several commands, defined once.

`launcher_options` adds the launcher options (--gpus, --nodes, --hostfile, --launcher, --deepspeed,
--master-port, --node-rank, --master-addr) to a Typer command and hands them to it as one dict, `launch`, whose keys are the
keyword arguments of `l2v_cli.launch.launch_spec` (None = take the recipe's `launcher` section).
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, Optional

import typer

# name -> (type, flag, help). The one definition of every launcher option.
LAUNCHER_OPTIONS: dict[str, tuple[type, str, str]] = {
    "gpus": (int, "--gpus", "Processes (GPUs) per node; CPU processes over gloo without CUDA "
             "(default: the recipe's launcher.gpus)."),
    "nodes": (int, "--nodes", "Number of nodes (default: the recipe's launcher.nodes)."),
    "hostfile": (str, "--hostfile", "DeepSpeed hostfile for multi-node runs."),
    "launcher": (str, "--launcher", "none | torchrun | deepspeed."),
    "deepspeed": (str, "--deepspeed", "zero2 | zero3 | PATH to a DeepSpeed JSON (default: the recipe's)."),
    "master_port": (int, "--master-port", "Rendezvous port of the workers; a multi-node run's l2v processes "
                    "also use the next one."),
    "node_rank": (int, "--node-rank", "This node's rank in a multi-node run, 0..nodes-1 (default: SLURM_NODEID, "
                  "else the recipe's launcher.node_rank). Node 0 runs the single-process stages."),
    "master_addr": (str, "--master-addr", "Address of node 0 (default: the first host of the SLURM job, else "
                    "the recipe's launcher.master_addr)."),
}


def launcher_options(*names: str) -> Callable:
    """Decorator: append the launcher options `names` (default: all) to a command; the command
    receives them as `launch: dict` (only the options it declared)."""
    names = names or tuple(LAUNCHER_OPTIONS)
    unknown = [n for n in names if n not in LAUNCHER_OPTIONS]
    if unknown:
        raise ValueError(f"unknown launcher options {unknown}")

    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        if "launch" not in sig.parameters:
            raise TypeError(f"{fn.__name__} must take a `launch` parameter")
        params = [p for p in sig.parameters.values() if p.name != "launch"]
        for name in names:
            tp, flag, help_ = LAUNCHER_OPTIONS[name]
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[tp],
                                            default=typer.Option(None, flag, help=help_)))

        @functools.wraps(fn)
        def command(*args, **kwargs):
            launch = {n: kwargs.pop(n) for n in names}
            return fn(*args, launch=launch, **kwargs)

        command.__signature__ = sig.replace(parameters=params)
        command.__annotations__ = {**{k: v for k, v in fn.__annotations__.items() if k != "launch"},
                                   **{n: Optional[LAUNCHER_OPTIONS[n][0]] for n in names}}
        return command

    return wrap
