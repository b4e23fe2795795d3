"""Typed recipe schema: one dataclass per section, every field with a default and help text.

`build(base, data)` applies a plain dict (from YAML) onto a dataclass instance, checking types
from the annotations; `validate(recipe)` checks ranges (from field metadata) and the rules that
span fields (stage order, required data). Both raise `L2VError` naming the key path.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, NamedTuple, Optional, Union

from l2v_cli.encoding.dims import FULL, check_dims
from l2v_cli.errors import L2VError, closest, did_you_mean
from l2v_cli.stages import registry
from l2v_cli.utils.dtypes import NAMES as DTYPE_NAMES

STAGES = registry.NAMES
TRAIN_STAGES = registry.TRAIN_NAMES

Stage = Literal[registry.NAMES]  # type: ignore[valid-type]  (the names come from the registry)
Pooling = Literal["mean", "weighted_mean", "last_token", "eos", "bos"]
Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]
DataFormat = Literal["auto", "txt", "jsonl", "csv", "parquet", "hub", "e5", "triplets"]


def opt(default: Any, help: str, **bounds: float) -> Any:
    """A field with help text; bounds (gt/ge/lt/le) are checked by `validate`.

    Mutable defaults (lists, dicts, sections) are given as zero-arg callables."""
    meta = {"help": help, **bounds}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def _section_help(section: str, text: str) -> str:
    """Help of a stage's section, led by the stage's name from the registry."""
    return f"{registry.by_section(section).name}: {text}"


# --------------------------------------------------------------------------- shared sections


@dataclass
class LoraConfig:
    r: int = opt(16, "LoRA rank.", gt=0)
    alpha: int = opt(32, "LoRA alpha (scaling = alpha / r).", gt=0)
    dropout: float = opt(0.05, "Dropout on the LoRA branch.", ge=0, lt=1)
    target_modules: list[str] = opt(
        lambda: ["all-linear"],
        "Module names (suffixes) that get LoRA adapters; ['all-linear'] = every attention and "
        "MLP projection of any architecture (the paper's seven on Llama; fused qkv/gate_up on Phi-3).",
    )


@dataclass
class TrainConfig:
    """The trainer spine shared by the three training stages."""

    max_steps: int = opt(1000, "Optimizer steps.", gt=0)
    per_device_batch_size: int = opt(32, "Examples per device per micro-batch.", gt=0)
    gradient_accumulation_steps: int = opt(1, "Micro-batches per optimizer step.", gt=0)
    learning_rate: float = opt(5e-5, "Peak learning rate.", gt=0)
    warmup_steps: int = opt(0, "Linear warmup steps.", ge=0)
    lr_scheduler: Scheduler = opt("linear", "Learning-rate schedule after warmup.")
    weight_decay: float = opt(0.0, "AdamW weight decay.", ge=0)
    max_grad_norm: float = opt(1.0, "Gradient clipping norm (0 = off).", ge=0)
    gradient_checkpointing: bool = opt(True, "Recompute activations to save memory.")
    save_steps: int = opt(200, "Save a checkpoint every N steps.", gt=0)
    save_total_limit: int = opt(2, "Keep at most N checkpoints (older ones are deleted).", gt=0)
    logging_steps: int = opt(10, "Log loss / lr every N steps.", gt=0)
    seed: int = opt(42, "Seed for data order and dropout in this stage.")
    dataloader_num_workers: int = opt(0, "DataLoader worker processes (0 = main process).", ge=0)


@dataclass
class DataConfig:
    path: Optional[Union[str, list[str]]] = opt(
        None,
        "Local .txt/.jsonl/.csv/.parquet file, a directory, or a hub dataset ('owner/name' or "
        "'name:config'); a list mixes several. Relative paths resolve against the shipped data.",
    )
    text_column: str = opt("text", "Column holding the text (jsonl/csv/parquet/hub).")
    split: str = opt("train", "Split to read from a hub dataset.")
    max_samples: Optional[int] = opt(None, "Use at most N examples (null = all).", gt=0)
    format: DataFormat = opt("auto", "Input format; auto = from the file extension / hub name.")


@dataclass
class MatryoshkaConfig:
    """Matryoshka training of a contrastive stage: the loss on every trained prefix."""

    dims: list[Union[int, Literal["full"]]] = opt(
        list, "Matryoshka widths, e.g. [64, 128, 256, 512, full] (strictly increasing; full = the hidden "
        "size): the same InfoNCE on each normalised prefix of the pooled embedding, summed with `weights`, "
        "one forward/backward per step. [] = off (plain training).")
    weights: Optional[list[float]] = opt(
        None, "Loss weight of each width in `dims` (same length); null = 1 for every width.")


# --------------------------------------------------------------------------- stage sections


@dataclass
class BidirConfig:
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = opt(
        "auto", "Attention kernel used with the bidirectional (non-causal) mask; auto = the model family's "
        "(configs/families.yaml), eager if that one fails the bidirectionality probe."
    )
    verify: bool = opt(True, "Run the bidirectionality probe after patching (fails loudly).")
    sink: str = opt(
        "auto", "Attention sink the converted tokenizer puts before every text, so bare text embeds well "
        "with no prompt (l2v_cli/modeling/sink.py): auto (EOS + a lone space token), none, or a literal text."
    )


@dataclass
class MntpConfig:
    data: DataConfig = opt(DataConfig, "Raw text for masked next-token prediction.")
    max_seq_length: int = opt(512, "Tokens per training sequence.", gt=0)
    mask_token: str = opt(
        "auto",
        "auto = the model family's token if it is one token, else the tokenizer's own mask token, '_', a "
        "reserved/unused special token, EOS, a new <mask> (in that order); '_' or 'eos' reuse a token; "
        "'mask' adds a new mask token; anything else is used as a literal token string.",
    )
    mask_probability: Union[float, Literal["auto"]] = opt(
        "auto", "Fraction of tokens masked; auto = the model family's (0.2; Mistral 0.8, as in the paper).",
        gt=0, lt=1)
    mask_strategy: Literal["auto", "80-10-10", "all"] = opt(
        "auto", "80-10-10 = BERT-style mask/random/keep; all = always the mask token; auto = the model "
        "family's (80-10-10; Mistral all, as in the paper)."
    )
    lora: LoraConfig = opt(LoraConfig, "LoRA adapter trained in this stage.")
    train: TrainConfig = opt(
        lambda: TrainConfig(max_steps=1000, per_device_batch_size=32, learning_rate=5e-5),
        "Trainer settings.",
    )


@dataclass
class SimcseConfig:
    data: DataConfig = opt(DataConfig, "Sentences for unsupervised SimCSE (one per example).")
    max_seq_length: int = opt(128, "Tokens per sentence.", gt=0)
    pooling: Pooling = opt("mean", "How token states become one embedding.")
    attention_dropout: float = opt(
        0.3, "Attention dropout; two dropout masks make the positive pair.", ge=0, lt=1
    )
    scale: float = opt(20.0, "Logit scale (1 / temperature) of the InfoNCE loss.", gt=0)
    gather_across_processes: bool = opt(True, "Use other processes' embeddings as negatives.")
    grad_cache_chunk_size: int = opt(0, "GradCache chunk size for huge batches (0 = off).", ge=0)
    group_by_length: bool = opt(
        False, "Batch sentences of similar token length together: far less padding (faster on "
        "CPU), and in-batch negatives of similar length.")
    min_tokens: int = opt(
        3, "Drop degenerate sentences before training: fewer than N tokens, or fewer than N words "
        "once markup (<tags>, {{templates}}, ...) is removed; the count is logged. 0 = keep all.", ge=0)
    mask_duplicates: bool = opt(
        True, "Mask in-batch copies of a sentence: an identical text elsewhere in the batch is not "
        "scored as a negative (it would be a false negative).")
    view_instruction: Optional[str] = opt(
        None, "null = plain SimCSE (both views are the bare sentence). An instruction puts the "
        "second view behind it (attended to, not pooled): the bare sentence's embedding is pulled "
        "towards the instructed one's, so the model learns to embed text well without a prompt.")
    matryoshka: MatryoshkaConfig = opt(MatryoshkaConfig, "Matryoshka training (truncatable embeddings).")
    lora: LoraConfig = opt(LoraConfig, "LoRA adapter trained in this stage.")
    train: TrainConfig = opt(
        lambda: TrainConfig(max_steps=1000, per_device_batch_size=128, learning_rate=3e-5),
        "Trainer settings.",
    )


@dataclass
class SupervisedConfig:
    data: DataConfig = opt(
        DataConfig,
        "An E5-style directory (one jsonl per dataset) or one triplet file "
        "(query/positive/negative).",
    )
    instructions: Optional[Union[str, dict[str, str]]] = opt(
        None, "Path to a json mapping dataset name -> instruction, or that mapping inline."
    )
    bare_queries: float = opt(
        0.0, "Share of queries trained without their instruction (drawn per query, seeded), so the "
        "model also learns the no-prompt call; 0 = every query instructed (paper).", ge=0, le=1)
    max_seq_length: int = opt(512, "Tokens per query / document.", gt=0)
    pooling: Pooling = opt("mean", "How token states become one embedding.")
    scale: float = opt(50.0, "Logit scale (1 / temperature) of the contrastive loss.", gt=0)
    mask_false_negatives: bool = opt(True, "Drop in-batch negatives identical to the positive.")
    one_dataset_per_batch: bool = opt(True, "Draw each batch from a single dataset.")
    gather_across_processes: bool = opt(True, "Use other processes' embeddings as negatives.")
    grad_cache_chunk_size: int = opt(0, "GradCache chunk size for huge batches (0 = off).", ge=0)
    matryoshka: MatryoshkaConfig = opt(MatryoshkaConfig, "Matryoshka training (truncatable embeddings).")
    lora: LoraConfig = opt(LoraConfig, "LoRA adapter trained in this stage.")
    train: TrainConfig = opt(
        lambda: TrainConfig(
            max_steps=1000, per_device_batch_size=64, learning_rate=2e-4, warmup_steps=300
        ),
        "Trainer settings.",
    )


@dataclass
class MineConfig:
    data: DataConfig = opt(
        DataConfig, "Pairs to mine negatives for (query/positive, E5 layout or one file); empty = the "
        "supervised stage's data. The supervised stage then trains on what this stage writes.")
    instructions: Optional[Union[str, dict[str, str]]] = opt(
        None, "Query instructions per data set (json path or mapping); null = the supervised stage's.")
    corpus: Optional[str] = opt(None, "Text file to draw negatives from (null = the pairs' distinct positives).")
    negatives: int = opt(1, "Negatives written per query (one row each).", ge=1)
    range: list[int] = opt(lambda: [10, 100], "Candidate ranks [LO, HI) to sample from (0 = the best non-positive).")
    max_score_ratio: float = opt(
        0.95, "False-negative guard: drop candidates scoring above this x the positive's score.", gt=0, le=1)
    pooling: Pooling = opt("mean", "Pooling of the mining encoder.")
    max_length: int = opt(256, "Tokens per query / document when encoding.", gt=0)
    batch_size: int = opt(32, "Texts per forward pass.", gt=0)
    chunk_size: int = opt(4096, "Rows per block of the exact top-k search (bounds memory).", gt=0)


@dataclass
class ExportConfig:
    dtype: Literal[DTYPE_NAMES] = opt("bfloat16", "Weight dtype on disk.")  # type: ignore[valid-type]
    pooling: Pooling = opt("mean", "Pooling written to the sentence-transformers config.")
    normalize: bool = opt(True, "Add an L2-normalize module (cosine = dot product).")
    max_shard_size: str = opt("5GB", "Largest safetensors shard.")
    query_instruction: Optional[str] = opt(None, "Prompt prepended to queries (null = none).")
    document_instruction: Optional[str] = opt(None, "Prompt prepended to documents (null = none).")
    formats: list[Literal["st", "gguf"]] = opt(lambda: ["st"], "What to write: st (sentence-transformers "
                                                "folder), gguf (llama.cpp file in the same folder; docs/gguf.md).")
    gguf_types: list[Literal["f32", "f16", "bf16", "q8_0"]] = opt(lambda: ["q8_0"], "GGUF weight types "
                                                                   "(one file each) when formats has gguf.")
    calibration: Optional[str] = opt(
        None, "A file of ordinary texts: scale each embedding dimension by 1/its standard deviation over a "
        "sample of them (a Dense module before Normalize; evens out the few outlier dimensions that "
        "dominate a converted decoder's cosine). null = no scale.")
    calibration_samples: int = opt(2000, "Texts drawn (seeded) from `calibration`.", gt=1)


@dataclass
class EvalConfig:
    tasks: list[str] = opt(list, "Evaluation tasks, e.g. [stsb, scifact] ([] = the default set).")
    batch_size: int = opt(32, "Texts per encoding batch.", gt=0)
    max_length: int = opt(512, "Truncate texts to this many tokens.", gt=0)
    cache: bool = opt(True, "Reuse cached embeddings / results.")
    limit: Optional[int] = opt(None, "At most this many items per task (quick runs); null = all.", gt=0)
    task_limits: dict[str, int] = opt(
        dict, "Per-task limit over `limit`, e.g. {scifact: 50} (a sample: see docs/eval.md).")
    ablation: bool = opt(
        False, "Also score the causal base, the untrained bidirectional model and each training "
        "stage (the paper's ablation table; exports each stage to eval/models/).")
    protocols: list[Literal["no_prompt", "instruction"]] = opt(
        lambda: ["no_prompt", "instruction"],
        "How texts reach the model, one column each: no_prompt (the bare text, as "
        "SentenceTransformer(path).encode(texts) sends it) and/or instruction (the task's "
        "instruction on the query side, LLM2Vec / E5).")


@dataclass
class LauncherConfig:
    launcher: Literal["none", "torchrun", "deepspeed"] = opt(
        "none", "How training processes start (none = this process)."
    )
    gpus: int = opt(1, "Processes per node (CPU processes over gloo where there is no CUDA).", gt=0)
    nodes: int = opt(1, "Number of nodes.", gt=0)
    hostfile: Optional[str] = opt(None, "Hostfile for multi-node runs.")
    deepspeed: Optional[str] = opt(None, "null, zero2, zero3, or a path to a DeepSpeed .json.")
    master_port: int = opt(29500, "Rendezvous port of the workers; the l2v processes of a multi-node "
                           "run coordinate on the next port (master_port + 1).", gt=0, le=65535)
    node_rank: int = opt(0, "This node's rank, 0..nodes-1 (SLURM: SLURM_NODEID). Node 0 runs the "
                         "single-process stages and writes the shared files.", ge=0)
    master_addr: str = opt("127.0.0.1", "Address of node 0 (SLURM: the first host of the job's node list).")
    timeout_s: int = opt(1800, "Collective timeout of the workers (seconds): when a rank dies, the "
                         "others stop within it.", gt=0)
    wait_s: int = opt(3600, "How long nodes > 0 wait for node 0 (its single-process stages, the shared "
                      "folder, the coordination port) before giving up with an error.", gt=0)


@dataclass
class Recipe:
    name: str = opt("", "Recipe name (defaults to the file name).")
    description: str = opt("", "One line shown by `l2v recipes list`.")
    model: Optional[str] = opt(
        None, "Model alias (e.g. smollm2-135m), path or hub id; null = give it on the command line."
    )
    seed: int = opt(42, "Global seed.")
    dtype: Literal[("auto", *DTYPE_NAMES)] = opt(  # type: ignore[valid-type]
        "auto", "Compute dtype; auto = bfloat16 where the hardware supports it, else float32."
    )
    stages: list[Stage] = opt(list, "Stages to run, in this order: " + " < ".join(STAGES) + ".")
    bidir: BidirConfig = opt(BidirConfig, _section_help("bidir", "switch attention to bidirectional."))
    mntp: MntpConfig = opt(MntpConfig, _section_help("mntp", "masked next-token prediction with LoRA."))
    simcse: SimcseConfig = opt(SimcseConfig, _section_help("simcse", "unsupervised SimCSE."))
    mine: MineConfig = opt(MineConfig, _section_help("mine", "hard-negative mining for the supervised stage."))
    supervised: SupervisedConfig = opt(SupervisedConfig, _section_help("supervised", "contrastive."))
    export: ExportConfig = opt(ExportConfig, _section_help("export", "sentence-transformers folder."))
    eval: EvalConfig = opt(EvalConfig, _section_help("eval", "embedding benchmarks."))
    launcher: LauncherConfig = opt(LauncherConfig, "Multi-process / multi-node launch.")


# --------------------------------------------------------------------------- type walker

Locate = Callable[[str], Optional[str]]  # key path -> "file:line" or "override 'k=v'" (or None)


def type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


_FLOAT_FIX = "give a number, e.g. 0.5 or 3e-5"


class _Mismatch(Exception):
    """A value does not fit its type; `path` is the innermost key that failed."""

    def __init__(self, path: str, expected: str, got: Any, hint: str | None = None):
        self.path, self.expected, self.got, self.hint = path, expected, got, hint


def _convert(tp: Any, value: Any, path: str, base: Any, locate: Locate | None) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:  # an empty YAML section (`eval:`) keeps the defaults
            return base
        if not isinstance(value, dict):
            raise _Mismatch(path, "a mapping (section)", value)
        return build(base, value, path, locate)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for alt in (a for a in args if a is not type(None)):
            try:
                return _convert(alt, value, path, None, locate)
            except _Mismatch as e:
                errors.append(e)
        deeper = [e for e in errors if e.path != path]  # e.g. one bad element inside a list
        if deeper:
            raise deeper[0]
        raise _Mismatch(path, type_name(tp), value)
    if origin is Literal:
        if isinstance(value, bool) or value not in args:
            hint = did_you_mean(value, [str(a) for a in args]) if isinstance(value, str) else None
            raise _Mismatch(path, "one of " + ", ".join(map(str, args)), value, hint)
        return value
    if origin is list:
        if not isinstance(value, list):
            raise _Mismatch(path, f"a list ({type_name(tp)}), e.g. [a, b]", value)
        return [_convert(args[0], v, f"{path}[{i}]", None, locate) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch(path, f"a mapping ({type_name(tp)})", value)
        return {
            _convert(args[0], k, f"{path}.{k}", None, locate): _convert(
                args[1], v, f"{path}.{k}", None, locate
            )
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise _Mismatch(path, "bool", value, "give true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):  # bool is an int subclass
            raise _Mismatch(path, "int", value, "give a whole number, e.g. 100")
        return value
    if tp is float:
        # ints are fine; PyYAML reads "1e-4" (no dot) as a string, so numeric strings are too.
        if isinstance(value, bool):
            raise _Mismatch(path, "float", value, _FLOAT_FIX)
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise _Mismatch(path, "float", value, _FLOAT_FIX) from None
        if not isinstance(value, float) or not math.isfinite(value):
            raise _Mismatch(path, "float", value, _FLOAT_FIX)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _Mismatch(path, "string", value, f"quote it: '{value}'")
        return value
    raise TypeError(f"schema: unsupported annotation {tp!r} at {path}")


def where(path: str, locate: Locate | None) -> str:
    loc = locate(path) if locate else None
    return f"{loc}, key {path}" if loc else f"key {path}"


def build(base: Any, data: dict, prefix: str = "", locate: Locate | None = None) -> Any:
    """A copy of dataclass instance `base` with `data` (a plain dict) applied, type-checked.

    Starting from an instance (not the class) keeps per-section defaults, e.g. mntp.train's
    batch size 32, when the YAML sets only some keys of that section."""
    names = [f.name for f in dataclasses.fields(base)]
    hints = typing.get_type_hints(type(base))
    updates = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            near = closest(str(key), names)
            dot = f"{prefix}." if prefix else ""
            fix = (
                "did you mean " + " or ".join(f"'{dot}{n}'" for n in near) + "?"
                if near
                else f"valid keys{' under ' + prefix if prefix else ''}: " + ", ".join(names)
            )
            raise L2VError(f"unknown key '{path}'", where(path, locate), fix)
        try:
            updates[key] = _convert(hints[key], value, path, getattr(base, key), locate)
        except _Mismatch as e:
            raise L2VError(
                f"wrong type for '{e.path}': expected {e.expected}, got {e.got!r}",
                where(e.path, locate),
                e.hint or f"give {e.expected}",
            ) from None
    return dataclasses.replace(base, **updates)


# --------------------------------------------------------------------------- validation

_OPS = {
    "gt": (lambda v, b: v > b, ">"),
    "ge": (lambda v, b: v >= b, ">="),
    "lt": (lambda v, b: v < b, "<"),
    "le": (lambda v, b: v <= b, "<="),
}


def _range_text(meta: Any) -> str:
    return " and ".join(f"{_OPS[k][1]} {meta[k]}" for k in _OPS if k in meta)


def _check_bounds(obj: Any, prefix: str, locate: Locate | None) -> None:
    for f in dataclasses.fields(obj):
        value, path = getattr(obj, f.name), f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            _check_bounds(value, path, locate)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            for op in (k for k in _OPS if k in f.metadata):
                if not _OPS[op][0](value, f.metadata[op]):
                    raise L2VError(
                        f"'{path}' must be {_range_text(f.metadata)}, got {value!r}",
                        where(path, locate),
                        f"set {path} to a value {_range_text(f.metadata)}",
                    )


def validate(recipe: Recipe, locate: Locate | None = None) -> Recipe:
    """Range checks from field metadata plus the rules that span fields. Returns the recipe."""
    _check_bounds(recipe, "", locate)
    stages, at = recipe.stages, where("stages", locate)
    if not stages:
        raise L2VError("the recipe runs no stages", at, "list some of: " + ", ".join(STAGES))
    dup = next((s for i, s in enumerate(stages) if s in stages[:i]), None)
    if dup:
        raise L2VError(f"stage '{dup}' is listed twice", at, "list each stage once")
    ordered = sorted(stages, key=STAGES.index)
    if stages != ordered:
        raise L2VError(
            f"stages are out of order: [{', '.join(stages)}]",
            at,
            f"use the order [{', '.join(ordered)}]",
        )
    first = registry.BIDIR.name
    if any(s in TRAIN_STAGES for s in stages) and stages[0] != first:
        raise L2VError(
            f"training stages need bidirectional attention first: '{first}' is missing",
            at,
            f"put '{first}' first in stages",
        )
    mined = registry.MINE.name in stages  # the mine stage writes the supervised stage's data
    for spec in (*registry.TRAINING, registry.MINE):
        stage, section = spec.name, spec.section
        if spec is registry.SUPERVISED and mined:
            continue
        if spec is registry.MINE and recipe.supervised.data.path:
            continue  # it mines the supervised stage's pairs
        if stage in stages and not getattr(recipe, section).data.path:
            raise L2VError(
                f"stage '{stage}' needs training data but {section}.data.path is empty",
                where(f"{section}.data.path", locate),
                f"add the override {section}.data.path=FILE_DIR_OR_DATASET",
            )
    if not recipe.mntp.mask_token:
        raise L2VError(
            "mntp.mask_token is empty",
            where("mntp.mask_token", locate),
            "use auto, _, eos, mask or a token string",
        )
    for section in ("simcse", "supervised"):
        _check_matryoshka(getattr(recipe, section).matryoshka, f"{section}.matryoshka", locate)
    ds = recipe.launcher.deepspeed
    if ds is not None and ds not in ("zero2", "zero3") and not ds.endswith(".json"):
        raise L2VError(
            f"launcher.deepspeed must be zero2, zero3 or a .json path, got {ds!r}",
            where("launcher.deepspeed", locate),
            did_you_mean(ds, ["zero2", "zero3"]),
        )
    return recipe


def _check_matryoshka(m: MatryoshkaConfig, key: str, locate: Locate | None) -> None:
    """Dims increasing (the hidden size is checked when the stage loads the model); weights, when
    given, one positive number per dim."""
    if not m.dims:
        if m.weights is not None:
            raise L2VError(f"{key}.weights is set but {key}.dims is empty", where(f"{key}.weights", locate),
                           f"set {key}.dims too, e.g. [64, 128, {FULL}], or drop the weights")
        return
    check_dims(m.dims, where(f"{key}.dims", locate))
    if m.weights is not None:
        if len(m.weights) != len(m.dims):
            raise L2VError(f"{key}.weights has {len(m.weights)} values for {len(m.dims)} dims",
                           where(f"{key}.weights", locate), "give one weight per dim, or null for 1 each")
        if any(w <= 0 for w in m.weights):
            raise L2VError(f"{key}.weights must be positive, got {m.weights}", where(f"{key}.weights", locate),
                           "use weights > 0 (drop a width from dims instead of weighting it 0)")


# --------------------------------------------------------------------------- documentation


class FieldDoc(NamedTuple):
    key: str
    type: str
    default: str
    help: str


def schema_fields(obj: Any = None, prefix: str = "") -> list[FieldDoc]:
    """Every leaf field: key path, type, default (as written in YAML), help (+ allowed range)."""
    obj = Recipe() if obj is None else obj
    hints, rows = typing.get_type_hints(type(obj)), []
    for f in dataclasses.fields(obj):
        value, path = getattr(obj, f.name), f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            rows += schema_fields(value, path)
            continue
        rng = _range_text(f.metadata)
        help_ = f.metadata.get("help", "") + (f" Must be {rng}." if rng else "")
        rows.append(FieldDoc(path, type_name(hints[f.name]), _yaml_scalar(value), help_))
    return rows


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return '""' if value == "" else str(value)
