"""Run a .gguf through the real llama.cpp (the `llama-cpp-python` bindings): embeddings,
per-token states, tokenization — and `GGUFEncoder`, the same `encode` contract as our `Encoder`.

    m = LlamaCppModel("enc-q8_0.gguf", pooling="none", n_threads=2)
    states = m.token_states([m.tokenize("hello world")])      # [(n_tokens, dim)]
    served = LlamaCppModel("enc-q8_0.gguf").embed(["hello"])  # llama.cpp's own pooling (as llama-server)

Three ways to embed, all measured by the tests:
  * served text: llama.cpp tokenizes and pools (the GGUF's pooling_type) — what `llama-server
    --embeddings` and `llama-embedding` return for a plain string. llama.cpp adds BOS but not our
    attention sink (EOS + " " after BOS, modeling/sink.py), so a sink model's vector differs.
  * served ids (`pooled`): the same pooling over the ids `l2v encode` feeds — BOS, the sink ids
    from `l2v.sink_token_ids`, the text's ids; what llama-server returns for a token-id prompt
    `{"input": [[ids..., "text"]]}`. Mean pooling there averages EVERY token, so with an
    instruction it includes the instruction's tokens.
  * exact (`GGUFEncoder`): pooling none, the token ids laid out as `l2v encode` does (prefix +
    instruction and text as one string + suffix) and pooled over the text positions only.
Without an instruction "served ids" and "exact" agree (and match `l2v encode`).

llama-cpp-python is optional: every entry point raises one L2VError line with the install
command when it is missing.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from l2v_cli.errors import L2VError
from l2v_cli.eval.cache import model_fingerprint

LLAMA_CPP_VERSION = "0.3.36"  # its llama.cpp reads {arch}.attention.causal for every architecture
# AVX2 build, not -march=native: on AMX CPUs the native build crashed in q8_0 matmuls (see Makefile)
INSTALL_HINT = (f"make install-llamacpp (or: CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON "
                f"-DGGML_F16C=ON\" pip install llama-cpp-python=={LLAMA_CPP_VERSION}; it compiles llama.cpp)")
POOLING_NAMES = {"none": 0, "mean": 1, "cls": 2, "last": 3}
# Our pooling -> llama.cpp's, for the served path.
SERVED_POOLING = {"mean": "mean", "last_token": "last", "eos": "last", "bos": "cls"}


_QUIET = []  # keeps the ctypes log callback alive


def require_llama_cpp():
    """The llama_cpp module (llama.cpp's own log lines silenced unless L2V_DEBUG=1), or one
    L2VError line saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise L2VError("llama-cpp-python is not installed (needed to run a GGUF through llama.cpp)",
                       where="llama_cpp", fix=INSTALL_HINT) from None
    if not _QUIET and os.environ.get("L2V_DEBUG") != "1":
        cb = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(cb, ctypes.c_void_p(0))
        _QUIET.append(cb)
    return llama_cpp


def read_metadata(path: str | Path) -> dict:
    """The GGUF's scalar/string keys ({key: value}) read with gguf.GGUFReader (no llama.cpp needed)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:
        raise L2VError(f"cannot read {path} as GGUF: {str(e).splitlines()[0][:200]}", where=str(path),
                       fix="give a .gguf written by `l2v export --format gguf`") from None
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("tokenizer.ggml.") and name.endswith(("tokens", "merges", "token_type", "scores")):
            continue
        try:
            out[name] = field.contents()
        except Exception:
            continue
    return out


def sink_ids(meta: dict) -> list[int]:
    """The attention sink's ids a GGUF records (`l2v.sink_token_ids`, "2,216"); [] if none."""
    return [int(x) for x in str(meta.get("l2v.sink_token_ids") or "").split(",") if x.strip()]


def is_l2v_gguf(path: str | Path) -> bool:
    """A GGUF written by our exporter (has the `l2v.pooling` key)."""
    p = Path(path)
    if not (p.is_file() and p.suffix.lower() == ".gguf"):
        return False
    try:
        return "l2v.pooling" in read_metadata(p)
    except L2VError:
        return False


class LlamaCppModel:
    """One llama.cpp context in embedding mode; `pooling` None = the file's pooling_type."""

    def __init__(self, path: str | Path, *, pooling: str | None = None, n_ctx: int = 512,
                 n_threads: int | None = None, attention: str | None = None, vocab_only: bool = False,
                 metadata: dict | None = None):
        llama_cpp = require_llama_cpp()
        path = Path(path)
        if not path.is_file():
            raise L2VError(f"{path} does not exist", where="MODEL", fix="give the path of a .gguf file")
        self.path = path
        kw = {}
        if pooling is not None:
            if pooling not in POOLING_NAMES:
                raise L2VError(f"unknown llama.cpp pooling {pooling!r}", where="pooling",
                               fix="none | mean | cls | last")
            kw["pooling_type"] = POOLING_NAMES[pooling]
        if attention is not None:  # override what the file says (a control: run it causal)
            kw["attention_type"] = {"causal": llama_cpp.LLAMA_ATTENTION_TYPE_CAUSAL,
                                    "non-causal": llama_cpp.LLAMA_ATTENTION_TYPE_NON_CAUSAL}[attention]
        threads = n_threads or max(1, os.cpu_count() or 1)
        self.llm = llama_cpp.Llama(model_path=str(path), embedding=not vocab_only, vocab_only=vocab_only,
                                   n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                                   n_threads_batch=threads, verbose=False, **kw)
        self.n_ctx = n_ctx
        self._lib = llama_cpp
        self.metadata = metadata if metadata is not None else read_metadata(path)  # the file's keys (gguf reader)

    # ------------------------------------------------------------------ tokens
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """llama.cpp's ids for `text`; add_special adds BOS/EOS as the GGUF's flags say. Special-token
        strings in the text ("<s>") become those tokens, as transformers (and llama-server) do;
        llama-cpp-python's own `Llama.embed` keeps them as plain text."""
        return list(self.llm.tokenize(text.encode("utf-8", "replace"), add_bos=add_special, special=True))

    @property
    def dim(self) -> int:
        return int(self.llm.n_embd())

    def l2v_prefix(self) -> list[int]:
        """The ids `l2v encode` puts before a text: BOS (when the file says so), then the sink."""
        bos = [self.llm.token_bos()] if self.metadata.get("tokenizer.ggml.add_bos_token") else []
        return bos + sink_ids(self.metadata)

    def l2v_tokenize(self, text: str) -> list[int]:
        """The ids `l2v encode` (and transformers' tokenizer) give a bare text: l2v_prefix + text
        (+ EOS when the file says so)."""
        ids = self.l2v_prefix() + self.tokenize(text, add_special=False)
        if self.metadata.get("tokenizer.ggml.add_eos_token"):
            ids.append(int(self.metadata["tokenizer.ggml.eos_token_id"]))
        return ids

    # ------------------------------------------------------------------ served path
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """llama.cpp's own tokenization and pooling (what llama-server returns), unnormalised."""
        out = self.llm.embed(list(texts), normalize=False, truncate=True)
        return np.asarray(out, dtype=np.float32)

    def pooled(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """llama.cpp's own pooling over given token-id lists (as llama-server for a token-id
        prompt), (n, dim) unnormalised; needs a pooling other than 'none'."""
        if self._lib.llama_pooling_type(self.llm.ctx) == POOLING_NAMES["none"]:
            raise L2VError("pooled needs a model opened with a pooling (not 'none')", where="LlamaCppModel")
        return np.stack(self._decode(seqs, pooled=True)) if seqs else np.zeros((0, self.dim), np.float32)

    # ------------------------------------------------------------------ per-token states
    def token_states(self, seqs: Sequence[Sequence[int]], max_tokens: int | None = None) -> list[np.ndarray]:
        """Last-layer states (n_i, dim) for each token-id list; needs pooling 'none'. Several
        sequences share one decode (each its own seq id: they do not see each other)."""
        if self._lib.llama_pooling_type(self.llm.ctx) != POOLING_NAMES["none"]:
            raise L2VError("token_states needs a model opened with pooling='none'", where="LlamaCppModel")
        return self._decode(seqs, max_tokens=max_tokens)

    def _decode(self, seqs: Sequence[Sequence[int]], max_tokens: int | None = None,
                pooled: bool = False) -> list[np.ndarray]:
        lib = self._lib
        ctx = self.llm.ctx
        budget = min(max_tokens or self.n_ctx, self.n_ctx)
        for s in seqs:
            if len(s) > budget:
                raise L2VError(f"a sequence of {len(s)} tokens exceeds the llama.cpp context of {budget}",
                               where="token_states", fix="raise n_ctx or truncate")
        dim = self.dim
        out: list[np.ndarray] = [None] * len(seqs)  # type: ignore[list-item]
        batch = lib.llama_batch_init(self.n_ctx, 0, 1)
        try:
            i = 0
            while i < len(seqs):
                group, total = [], 0
                while i < len(seqs) and total + len(seqs[i]) <= budget and len(group) < 64:
                    group.append(i)
                    total += len(seqs[i])
                    i += 1
                k = 0
                for sid, idx in enumerate(group):
                    for pos, tok in enumerate(seqs[idx]):
                        batch.token[k] = int(tok)
                        batch.pos[k] = pos
                        batch.n_seq_id[k] = 1
                        batch.seq_id[k][0] = sid
                        batch.logits[k] = 1
                        k += 1
                batch.n_tokens = k
                lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
                if lib.llama_decode(ctx, batch) != 0:
                    raise L2VError("llama.cpp could not decode the batch", where=str(self.path))
                if pooled:
                    for sid, idx in enumerate(group):
                        ptr = lib.llama_get_embeddings_seq(ctx, sid)
                        out[idx] = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                                         (dim,)).copy()
                    continue
                # every token is an output, in batch order: one (k, dim) block of float32
                ptr = lib.llama_get_embeddings(ctx)
                states = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (k, dim))
                k = 0
                for idx in group:
                    n = len(seqs[idx])
                    out[idx] = states[k:k + n].copy()
                    k += n
        finally:
            lib.llama_batch_free(batch)
        return out

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None


def check_tokenization(path: str | Path, tokenizer, texts: Iterable[str]) -> tuple[int, list[str]]:
    """(number of texts compared, the texts llama.cpp tokenizes differently from `tokenizer`): llama.cpp's
    ids with the file's BOS / sink / EOS around them (`l2v_tokenize`) against the tokenizer's."""
    m = LlamaCppModel(path, vocab_only=True)
    try:
        texts = list(texts)
        bad = [t for t in texts if m.l2v_tokenize(t) != list(tokenizer(t)["input_ids"])]
    finally:
        m.close()
    return len(texts), bad


class GGUFEncoder:
    """`Encoder`'s contract (tokenize / encode) on llama.cpp: the exact path, for `l2v eval MODEL.gguf`."""

    def __init__(self, path: str | Path, pooling: str | None = None, max_length: int = 512,
                 n_threads: int | None = None):
        from l2v_cli.encoding import check_pooling

        self.path = Path(path).expanduser().absolute()
        meta = read_metadata(self.path)
        self.pooling = check_pooling(pooling or str(meta.get("l2v.pooling", "mean")))
        self.max_length = max_length
        self.name = str(self.path)
        arch = meta.get("general.architecture")
        self.bidirectional = meta.get(f"{arch}.attention.causal", True) is False
        self.file_type = _file_type_name(meta.get("general.file_type"))
        self.model = LlamaCppModel(self.path, pooling="none", n_ctx=max(max_length, 8), n_threads=n_threads,
                                   metadata=meta)
        self.prefix = self.model.l2v_prefix()  # BOS, the attention sink
        eos = meta.get("tokenizer.ggml.eos_token_id")  # not llm.token_eos(): a default when the file has none
        self.eos_id = int(eos) if eos is not None else None
        self.suffix = [self.eos_id] if meta.get("tokenizer.ggml.add_eos_token") and self.eos_id is not None else []
        pad = meta.get("tokenizer.ggml.padding_token_id")
        bos = meta.get("tokenizer.ggml.bos_token_id")
        self.fill_id = next((t for t in (self.eos_id, pad, bos) if t is not None), 0)
        self.last_stats: dict = {}

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def dtype(self) -> str:
        return f"gguf-{self.file_type}"

    def settings_for_cache(self) -> dict:
        return {"model": model_fingerprint(self.path), "pooling": self.pooling, "dtype": self.dtype,
                "max_length": self.max_length, "bidirectional": self.bidirectional, "runtime": "llama.cpp",
                "prefix": self.prefix}

    def tokenize(self, texts: Sequence[str], instruction: str | None = None):
        """As `Encoder.tokenize`: prefix + (instruction + text as ONE string, truncated) + suffix,
        pooled from the first token after the instruction's."""
        from l2v_cli.encoding.encoder import Tokenized

        add_eos = self.pooling == "eos" and not (self.suffix and self.suffix[-1] == self.eos_id)
        budget = self.max_length - len(self.prefix) - len(self.suffix) - int(add_eos)
        context = 0
        if instruction:
            n_instr = len(self.model.tokenize(instruction, add_special=False))
            if n_instr >= budget:
                raise L2VError(f"the instruction takes {n_instr} tokens, leaving no room for the text "
                               f"within max_length={self.max_length}", where="--instruction",
                               fix="shorten the instruction or raise --max-length")
            context = len(self.prefix) + n_instr
            texts = [instruction + t for t in texts]  # one string, as sentence-transformers sends it
        out = []
        for t in texts:
            ids = self.prefix + self.model.tokenize(t, add_special=False)[:budget] + self.suffix
            if add_eos:
                ids.append(self.eos_id)
            elif len(ids) <= context:
                ids.append(self.fill_id)
            out.append(Tokenized(ids, context))
        return out

    def encode(self, texts, instruction: str | None = None, batch_size: int = 32, normalize: bool = False,
               show_progress: bool = False, dim: int | None = None) -> np.ndarray:
        import time

        import torch

        from l2v_cli.encoding.pooling import pool

        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        t0 = time.perf_counter()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        items = self.tokenize(texts, instruction)
        for start in range(0, len(items), max(1, batch_size)):
            chunk = items[start:start + batch_size]
            states = self.model.token_states([it.ids for it in chunk])
            for j, (it, h) in enumerate(zip(chunk, states)):
                mask = torch.zeros(1, len(it.ids), dtype=torch.bool)
                mask[0, it.pool_start:] = True
                out[start + j] = pool(torch.from_numpy(h)[None], mask, self.pooling)[0].numpy()
        if dim is not None:  # Matryoshka: the leading `dim` numbers (the scale is already in the file)
            if not 1 <= dim <= self.dim:
                raise L2VError(f"dim {dim} is outside 1..{self.dim} (the model's width)", where="encode(dim=...)")
            out = np.ascontiguousarray(out[:, :dim])
        if normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        self.last_stats = {"texts": len(texts), "tokens": sum(len(i) for i in items),
                           "seconds": time.perf_counter() - t0}
        return out

    __call__ = encode


def _file_type_name(ft) -> str:
    names = {0: "f32", 1: "f16", 7: "q8_0", 32: "bf16"}
    try:
        return names.get(int(ft), f"type{int(ft)}")
    except (TypeError, ValueError):
        return "unknown"
