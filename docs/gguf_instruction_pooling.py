"""Embed texts WITH an instruction through llama.cpp, pooling only the text — as `l2v encode
--instruction` and sentence-transformers' `prompt_name` do. Needs only llama-cpp-python and numpy.

    python docs/gguf_instruction_pooling.py MODEL.gguf "Retrieve semantically similar text:\n" \
        "A man is playing a guitar." "Someone plays an instrument."

Prints one JSON list per text (the mean-pooled, unnormalised embedding). An empty instruction ("")
gives the plain embedding (every token pooled, BOS and the sink included, as `l2v encode` does).

Why not llama.cpp's own pooling: its mean averages every token of the input, the instruction's
too. Here the model runs with pooling none (one state per token). The input is laid out as the
encoder was trained: BOS (if the file adds one), the attention sink's ids (`l2v.sink_token_ids`:
llama.cpp cannot add them itself), then instruction + text tokenized as ONE string (as
sentence-transformers does); the states from the first token after the instruction's are averaged.
"""

import json
import sys

import llama_cpp
import numpy as np
from llama_cpp import Llama


def token_states(llm: Llama, ids: list[int]) -> np.ndarray:
    """One state per token (llama.cpp opened with pooling none), shape (len(ids), n_embd)."""
    n, dim = len(ids), llm.n_embd()
    batch = llama_cpp.llama_batch_init(n, 0, 1)
    try:
        for i, tok in enumerate(ids):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, i, 1, 1
            batch.seq_id[i][0] = 0
        batch.n_tokens = n
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
        if llama_cpp.llama_decode(llm.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return np.array([llama_cpp.llama_get_embeddings_ith(llm.ctx, i)[:dim] for i in range(n)])
    finally:
        llama_cpp.llama_batch_free(batch)


def prefix_ids(llm: Llama) -> list[int]:
    """BOS (when the file adds one) and the attention sink's ids (l2v.sink_token_ids, e.g. "2,216")."""
    meta = llm.metadata
    bos = [llm.token_bos()] if meta.get("tokenizer.ggml.add_bos_token") == "true" else []
    return bos + [int(x) for x in meta.get("l2v.sink_token_ids", "").split(",") if x.strip()]


def embed(llm: Llama, instruction: str, text: str) -> np.ndarray:
    meta = llm.metadata
    eos = [int(meta["tokenizer.ggml.eos_token_id"])] if meta.get("tokenizer.ggml.add_eos_token") == "true" else []
    prefix = prefix_ids(llm)
    # no instruction: every token is pooled (BOS and the sink too), as `l2v encode` pools a bare text
    n_context = len(prefix) + len(llm.tokenize(instruction.encode(), add_bos=False, special=True)) if instruction else 0
    ids = prefix + llm.tokenize((instruction + text).encode(), add_bos=False, special=True) + eos
    if len(ids) <= n_context:  # an empty text after an instruction: pool one filler token, as l2v does
        ids.append(eos[0] if eos else int(meta.get("tokenizer.ggml.eos_token_id", 0)))
    return token_states(llm, ids)[n_context:].mean(axis=0)  # the instruction is attended to, not pooled


if __name__ == "__main__":
    model, instruction, *texts = sys.argv[1:]
    llm = Llama(model_path=model, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE,
                n_ctx=512, n_batch=512, n_ubatch=512, verbose=False)
    for text in texts:
        print(json.dumps([round(float(x), 7) for x in embed(llm, instruction, text)]))
