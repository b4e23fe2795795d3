"""HF model folder -> one .gguf file that llama.cpp runs as a bidirectional encoder.

    write_gguf("runs/x/final", "runs/x/final-q8_0.gguf", gguf_type="q8_0", pooling="mean")

The input is a plain model folder (config.json + *.safetensors + tokenizer.json): what
`l2v export` writes, or `l2v enable-bidir`. Written with the `gguf` package's public writer:
hyperparameters, `{arch}.attention.causal = false`, `{arch}.pooling_type` (our pooling in
llama.cpp's terms), the tokenizer (see vocab.py), our own `l2v.*` keys (pooling, instructions,
normalize, the attention sink's ids: what `l2v eval` needs to reproduce `l2v encode`), then the
tensors renamed with `gguf.get_tensor_name_map`.

The export's per-dimension scale (encoding/dim_scale.py, a Dense module after pooling) is folded
into the final norm's weight: every pooling llama.cpp offers is a weighted sum of the final-norm
outputs, so scaling that weight scales the pooled vector exactly, and llama.cpp's embeddings need
no step on the client. `l2v.dim_scale` says so. Tensors are streamed one at a time (header first, then each tensor
read, converted and written), so memory stays at about one tensor, and the file is written
under a temp name and renamed at the end.

Types: f32 (everything float32), f16 / bf16 (matrices in that type, norms and biases float32),
q8_0 (matrices whose rows divide into blocks of 32 quantised with `gguf.quants`, others f16).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from l2v_cli.errors import L2VError, did_you_mean
from l2v_cli.gguf.arch import ArchSpec, arch_for, check_config

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
# Our pooling -> llama.cpp's pooling_type (gguf.PoolingType names). weighted_mean has none.
POOLING_TO_LLAMACPP = {"mean": "MEAN", "last_token": "LAST", "eos": "LAST", "bos": "CLS"}


@dataclass
class GGUFInfo:
    path: Path
    arch: str
    gguf_type: str
    pooling: str
    causal: bool
    tokenizer_pre: str
    add_bos: bool
    add_eos: bool
    n_tensors: int
    bytes: int
    prefix_ids: list[int] = field(default_factory=list)  # what a client sends before a text: BOS, the sink
    suffix_ids: list[int] = field(default_factory=list)  # and after it: EOS when the file adds one
    sink_ids: list[int] = field(default_factory=list)
    scaled: bool = False  # the export's per-dimension scale is folded into the final norm


def check_gguf_type(gguf_type: str) -> str:
    t = str(gguf_type).lower().replace("-", "_")
    t = {"float32": "f32", "fp32": "f32", "float16": "f16", "fp16": "f16", "bfloat16": "bf16", "q8": "q8_0"}.get(t, t)
    if t not in GGUF_TYPES:
        raise L2VError(f"unknown GGUF type {gguf_type!r}", where="--gguf-type", fix=did_you_mean(t, GGUF_TYPES))
    return t


def check_gguf_pooling(pooling: str) -> str:
    if pooling not in POOLING_TO_LLAMACPP:
        raise L2VError(f"pooling {pooling!r} has no llama.cpp counterpart, so the GGUF cannot record it",
                       where="--pooling", fix=f"export with --pooling {' | '.join(POOLING_TO_LLAMACPP)}, "
                       "or use --format st")
    return pooling


def read_config(folder: Path) -> dict:
    p = Path(folder) / "config.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise L2VError(f"cannot read {p}: {e}", where=str(folder),
                       fix="give a model folder written by `l2v export` or `l2v enable-bidir`") from None


# --------------------------------------------------------------------------- tensors


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise L2VError(f"no *.safetensors weights in {folder}", where=str(folder),
                       fix="give a model folder written by `l2v export` or `l2v enable-bidir`")
    return files


def _permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Per head, reorder output rows from HF's halves layout to llama.cpp's adjacent pairs."""
    rows = w.shape[0]
    hd = rows // n_head
    return w.reshape(n_head, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class _Source:
    """The folder's tensors by HF name (without a leading 'model.'), loaded one at a time."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.where: dict[str, tuple[Path, str]] = {}
        for f in _weight_files(folder):
            with safe_open(str(f), "pt") as h:
                for k in h.keys():
                    name = k[len("model."):] if k.startswith("model.") else k
                    self.where[name] = (f, k)

    def names(self) -> list[str]:
        return list(self.where)

    def shape(self, name: str) -> tuple[int, ...]:
        from safetensors import safe_open

        f, k = self.where[name]
        with safe_open(str(f), "pt") as h:
            return tuple(h.get_slice(k).get_shape())

    def load(self, name: str) -> np.ndarray:
        from safetensors import safe_open

        f, k = self.where[name]
        with safe_open(str(f), "pt") as h:
            return h.get_tensor(k).float().numpy()


def _plan_tensors(src: _Source, spec: ArchSpec, n_layers: int) -> list[tuple[str, str]]:
    """[(hf name, gguf name)] in file order; L2VError for a tensor the name map does not know."""
    import gguf

    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == spec.gguf_arch)
    tmap = gguf.get_tensor_name_map(arch, n_layers)
    plan = []
    for name in src.names():
        if name.startswith("lm_head.") or name.endswith("rotary_emb.inv_freq"):
            continue  # an encoder has no LM head; llama.cpp computes rotary frequencies itself
        new = tmap.get_name("model." + name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise L2VError(f"tensor {name!r} has no llama.cpp name for architecture {spec.gguf_arch}", where=name,
                           fix="this checkpoint has parts llama.cpp's graph does not use; use --format st")
        plan.append((name, new))
    if not any(n == "token_embd.weight" for _, n in plan):
        raise L2VError("the model has no token embeddings (embed_tokens.weight)", where="weights",
                       fix="give a complete model folder")
    return plan


FINAL_NORM = "norm.weight"  # the HF name (without "model.") of the norm before the hidden states
FINAL_OUTPUT_NORM = "output_norm.weight"  # llama.cpp's name of it


def _convert(arr: np.ndarray, name: str, spec: ArchSpec, cfg: dict, scale: np.ndarray | None = None) -> np.ndarray:
    if spec.permute_qk and (".self_attn.q_proj." in name or ".self_attn.k_proj." in name):
        heads = cfg["num_attention_heads"] if ".q_proj." in name else cfg.get("num_key_value_heads") or \
            cfg["num_attention_heads"]
        arr = _permute_rows(arr, heads)
    if spec.norm_plus_one and name.endswith("norm.weight"):
        arr = arr + 1.0
    if scale is not None and name == FINAL_NORM:
        arr = arr * scale
    return np.ascontiguousarray(arr, dtype=np.float32)


def _storage(shape: tuple[int, ...], gguf_type: str):
    """(GGMLQuantizationType, byte shape or None for plain float32/float16 numpy)."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if len(shape) < 2 or gguf_type == "f32":
        return Q.F32
    if gguf_type == "f16":
        return Q.F16
    if gguf_type == "bf16":
        return Q.BF16
    if shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
        return Q.Q8_0
    return Q.F16


def _encode(arr: np.ndarray, qtype) -> np.ndarray:
    import gguf

    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return arr
    if qtype == Q.F16:
        return arr.astype(np.float16)
    return gguf.quants.quantize(arr, qtype)


def _nbytes_and_shape(shape: tuple[int, ...], qtype) -> tuple[int, tuple[int, ...], np.dtype]:
    import gguf

    Q = gguf.GGMLQuantizationType
    n = int(np.prod(shape))
    if qtype == Q.F32:
        return 4 * n, shape, np.dtype(np.float32)
    if qtype == Q.F16:
        return 2 * n, shape, np.dtype(np.float16)
    byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
    return int(np.prod(byte_shape)), byte_shape, np.dtype(np.uint8)


# --------------------------------------------------------------------------- metadata


def _hparams(w, spec: ArchSpec, cfg: dict, n_layers: int) -> None:
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    w.add_context_length(int(cfg.get("max_position_embeddings") or 2048))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(n_layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(cfg.get("num_key_value_heads") or heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    w.add_vocab_size(cfg["vocab_size"])
    rope = cfg.get("rope_parameters") or {}
    full = rope.get("full_attention", rope) if isinstance(rope.get("full_attention"), dict) else rope
    theta = full.get("rope_theta", cfg.get("rope_theta"))
    if theta is not None:
        w.add_rope_freq_base(float(theta))
    if spec.softcap:
        if cfg.get("attn_logit_softcapping") is not None:
            w.add_attn_logit_softcapping(float(cfg["attn_logit_softcapping"]))
        if cfg.get("final_logit_softcapping") is not None:
            w.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
    if spec.sliding and cfg.get("sliding_window"):
        w.add_sliding_window(int(cfg["sliding_window"]))
        types = cfg.get("layer_types")
        if types:  # per layer: True = sliding-window attention
            w.add_sliding_window_pattern([t == "sliding_attention" for t in types][:n_layers])
        local = (rope.get("sliding_attention") or {}).get("rope_theta") if isinstance(rope, dict) else None
        if local is not None:
            w.add_rope_freq_base_swa(float(local))


def _l2v_keys(w, folder: Path, meta: dict, pooling: str, sink: list[int], scaled: bool) -> None:
    """Our own keys: what `l2v eval MODEL.gguf` needs to reproduce `l2v encode` of the source."""
    from l2v_cli import __version__

    w.add_string("l2v.version", __version__)
    w.add_string("l2v.pooling", pooling)
    w.add_bool("l2v.normalize", bool(meta.get("normalize", False)))
    for key in ("query_instruction", "document_instruction"):
        if meta.get(key):
            w.add_string(f"l2v.{key}", meta[key])
    if sink:  # after BOS, before the text: llama.cpp cannot add them itself (vocab.py). A string
        # ("2,216"), not an array: llama-cpp-python's `Llama.metadata` and llama-server list strings only.
        w.add_string("l2v.sink_token_ids", ",".join(str(int(i)) for i in sink))
    if scaled:
        w.add_string("l2v.dim_scale", f"folded into {FINAL_OUTPUT_NORM}")
    w.add_string("l2v.source", str(folder))


def _safe_name(name: str, tokens: list[str]) -> str:
    """general.name. llama.cpp gives Phi-3's special tokens their strip attributes when the NAME
    contains "phi3"/"phi-3", and then needs four token strings in the vocabulary (it fails to load
    without them): name such a model neutrally."""
    low = name.lower()
    if ("phi3" in low or "phi-3" in low) and not {"</s>", "<unk>", "<s>", "<|endoftext|>"} <= set(tokens):
        return "l2v encoder"
    return name


# --------------------------------------------------------------------------- the writer


def check_source(folder: str | Path, *, pooling: str = "mean", allow_causal: bool = False) -> tuple[dict, ArchSpec]:
    """Everything about a model folder that would stop its GGUF, before any weights are read:
    (config dict, arch spec); L2VError otherwise."""
    folder = Path(folder)
    check_gguf_pooling(pooling)
    cfg = read_config(folder)
    spec = arch_for(cfg, where=str(folder / "config.json"))
    check_config(spec, cfg, where=str(folder / "config.json"))
    if cfg.get("is_causal", True) is not False and not allow_causal:
        raise L2VError(f"{folder} is a causal model (config.json has no \"is_causal\": false); its GGUF would "
                       "not be an LLM2Vec encoder", where=str(folder),
                       fix=f"make it bidirectional first (`l2v enable-bidir {folder} -o BIDIR`), or pass "
                       "--allow-causal to export it causal on purpose")
    return cfg, spec


def write_gguf(folder: str | Path, out: str | Path, *, gguf_type: str = "f16", pooling: str = "mean",
               allow_causal: bool = False, overwrite: bool = False, name: str | None = None,
               query_instruction: str | None = None, document_instruction: str | None = None,
               normalize: bool | None = None) -> GGUFInfo:
    """Convert the HF model folder to OUT (.gguf); see the module doc. L2VError on bad input.
    Instructions / normalize default to what the folder's config.json `l2v` block recorded."""
    import gguf

    from l2v_cli.encoding.dim_scale import read_dim_scale
    from l2v_cli.gguf.vocab import build_vocab
    from l2v_cli.utils.atomic import check_writable_parent

    folder = Path(folder).expanduser().absolute()
    out = Path(out).expanduser().absolute()
    gguf_type = check_gguf_type(gguf_type)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise L2VError(f"OUT {out} already exists", where=str(out),
                       fix="pass --overwrite to replace it, or choose another path")
    if out.is_dir():
        raise L2VError(f"OUT {out} is a folder", where=str(out), fix="give a file name ending in .gguf")
    cfg, spec = check_source(folder, pooling=pooling, allow_causal=allow_causal)
    causal = cfg.get("is_causal", True) is not False
    n_layers = int(cfg["num_hidden_layers"])
    src = _Source(folder)
    plan = _plan_tensors(src, spec, n_layers)
    n_vocab = src.shape("embed_tokens.weight")[0]
    vocab, _tok = build_vocab(folder, n_vocab, pooling)
    scale = read_dim_scale(folder)
    if scale is not None and (FINAL_NORM, FINAL_OUTPUT_NORM) not in plan:
        raise L2VError(f"the export has a per-dimension scale but the model has no final norm ({FINAL_NORM}) to "
                       "fold it into", where=str(folder), fix="export without --calibration for GGUF")
    check_writable_parent(out)

    w = gguf.GGUFWriter(None, spec.gguf_arch)
    w.add_name(_safe_name(str(name or cfg.get("_name_or_path") or folder.name), vocab.tokens))
    w.add_type("model")
    _hparams(w, spec, cfg, n_layers)
    w.add_causal_attention(causal)
    w.add_pooling_type(gguf.PoolingType[POOLING_TO_LLAMACPP[pooling]])
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab.add_to(w)
    meta = dict(cfg.get("l2v") or {})
    for key, val in (("query_instruction", query_instruction), ("document_instruction", document_instruction),
                     ("normalize", normalize)):
        if val is not None:
            meta[key] = val
    _l2v_keys(w, folder, meta, pooling, vocab.sink, scale is not None)

    types = []
    for hf_name, new in plan:
        shape = src.shape(hf_name)
        qtype = _storage(shape, gguf_type)
        nbytes, byte_shape, dt = _nbytes_and_shape(shape, qtype)
        w.add_tensor_info(new, byte_shape, dt, nbytes, raw_dtype=None if qtype.name in ("F32", "F16") else qtype)
        types.append(qtype)

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        w.write_header_to_file(path=tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for (hf_name, _new), qtype in zip(plan, types):
            w.write_tensor_data(_encode(_convert(src.load(hf_name), hf_name, spec, cfg, scale), qtype))
        w.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    prefix = ([vocab.special["bos"]] if vocab.add_bos else []) + vocab.sink
    suffix = [vocab.special["eos"]] if vocab.add_eos else []
    return GGUFInfo(out, spec.gguf_arch, gguf_type, pooling, causal, vocab.pre, vocab.add_bos, vocab.add_eos,
                    len(plan), out.stat().st_size, prefix, suffix, list(vocab.sink), scale is not None)
