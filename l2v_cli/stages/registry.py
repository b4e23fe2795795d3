"""The stage registry: every stage of a conversion, named once.

Everything that needs to know the stages — the recipe schema (allowed names, order, sections),
`convert` (folders, what feeds what), the worker (which function a training stage runs), the CLI
(one `l2v train-*` command per training stage) and the planner (forward passes, loss kind) —
reads this table. Adding a stage = one entry here + its module.

Entries name their function as "module:function" and import it only when it runs, so reading
the table costs nothing (`l2v --help` stays instant) and no stage module is imported by the
modules that merely list stages.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class PlanHook:
    """What the memory planner needs to know about a training stage."""

    passes: int  # forward passes per batch kept for the backward (SimCSE: 2 views, supervised: q, p, n)
    loss: str  # "mntp" (LM head at masked positions) | "contrastive" (similarity matrix)


@dataclass(frozen=True)
class Stage:
    name: str  # as written in `stages:` of a recipe and in folder names (02_train-mntp)
    section: str  # the recipe section holding its settings
    title: str  # short human name (plan tables, progress bars)
    entry: str  # "module:function", see `run` below for the signature
    trains: bool = False  # a LoRA training stage: runs in the worker, maybe under a launcher
    plan: Optional[PlanHook] = None  # training stages: the planner's hook
    folder: Optional[str] = None  # fixed folder name in the run (default: NN_<name>)
    feeds_next: bool = True  # its output is the next stage's input (eval only reads it)
    help: str = ""  # one line for `l2v <name> --help` (training stages) and the docs
    default_recipe: str = "unsup"  # the recipe `l2v <name>` uses when none is given

    def function(self) -> Callable:
        """The stage's function. Training stages: f(recipe, input, out, *, resume, force, deepspeed,
        provenance); the others: f(recipe, input, out, ctx) with ctx a `RunContext`."""
        module, _, fn = self.entry.partition(":")
        return getattr(importlib.import_module(module), fn)

    def folder_name(self, index: int) -> str:
        return self.folder or f"{index:02d}_{self.name}"


@dataclass
class RunContext:
    """What a non-training stage may need from the run around it (`convert`)."""

    model: str = ""  # the MODEL the run started from
    stages: tuple = ()  # the planned stages of the run (convert.PlannedStage)
    echo: Callable[[str], None] = print


STAGES: tuple[Stage, ...] = (
    Stage("enable-bidir", "bidir", "bidirectional", "l2v_cli.stages.enable_bidir:run_enable_bidir",
          help="Make attention bidirectional and prove it with a probe (LLM2Vec step 1)."),
    Stage("train-mntp", "mntp", "MNTP", "l2v_cli.stages.mntp:train_mntp", trains=True,
          plan=PlanHook(passes=1, loss="mntp"),
          help="Masked next-token prediction with LoRA on a bidirectional model (LLM2Vec step 2)."),
    Stage("train-simcse", "simcse", "SimCSE", "l2v_cli.stages.simcse:train_simcse", trains=True,
          plan=PlanHook(passes=2, loss="contrastive"),
          help="Unsupervised SimCSE: merge the previous adapter, train a fresh LoRA (step 3)."),
    Stage("mine", "mine", "mining", "l2v_cli.stages.mine:run_mine", feeds_next=False,
          help="Mine hard negatives with the model so far; the supervised stage trains on them."),
    Stage("train-supervised", "supervised", "supervised", "l2v_cli.stages.supervised:train_supervised",
          trains=True, plan=PlanHook(passes=3, loss="contrastive"), default_recipe="supervised",
          help="Supervised contrastive training on (query, positive, hard negative) rows (step 4)."),
    Stage("export", "export", "export", "l2v_cli.stages.export:run_export", folder="final",
          help="Merge the chain into one sentence-transformers / transformers folder."),
    Stage("eval", "eval", "eval", "l2v_cli.stages.evaluate:run_eval_stage", folder="eval", feeds_next=False,
          help="Score the export (and, with eval.ablation, every step of the chain)."),
)

# The entries by role, for code that refers to one particular stage.
BIDIR, MNTP, SIMCSE, MINE, SUPERVISED, EXPORT, EVAL = STAGES

NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
TRAINING: tuple[Stage, ...] = tuple(s for s in STAGES if s.trains)
TRAIN_NAMES: tuple[str, ...] = tuple(s.name for s in TRAINING)
TRAIN_SECTIONS: tuple[str, ...] = tuple(s.section for s in TRAINING)
_BY_NAME = {s.name: s for s in STAGES}
_BY_SECTION = {s.section: s for s in STAGES}


def get(name: str) -> Stage:
    """The stage called `name` (KeyError for an unknown one: callers check names first)."""
    return _BY_NAME[name]


def by_section(section: str) -> Stage:
    return _BY_SECTION[section]


def of_module(module: str) -> Stage:
    """The stage whose function lives in `module` (a stage module finds its own entry: `__name__`)."""
    for s in STAGES:
        if s.entry.partition(":")[0] == module:
            return s
    raise KeyError(module)


__all__ = ["BIDIR", "EVAL", "EXPORT", "MINE", "MNTP", "NAMES", "PlanHook", "RunContext", "SIMCSE", "STAGES",
           "SUPERVISED", "Stage", "TRAINING", "TRAIN_NAMES", "TRAIN_SECTIONS", "by_section", "get", "of_module"]
