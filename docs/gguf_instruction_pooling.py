"""Embed texts WITH an instruction through llama.cpp, pooling only the text — as `l2v encode
--instruction` does. Needs only llama-cpp-python and numpy.

    python docs/gguf_instruction_pooling.py MODEL.gguf "Retrieve semantically similar text: " \
        "A man is playing a guitar." "Someone plays an instrument."

Prints one JSON list per text (the mean-pooled, unnormalised embedding).

Why not llama.cpp's own pooling: its mean averages every token of the input, the instruction's
too. Here the model runs with pooling none (one state per token); the instruction and the text
are tokenized separately (so no token straddles the boundary: "...text: " + "A man" would
otherwise merge the space into the first word), and only the text tokens' states are averaged.
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


def embed(llm: Llama, instruction: str, text: str) -> np.ndarray:
    bos = [llm.token_bos()] if llm.metadata.get("tokenizer.ggml.add_bos_token") == "true" else []
    context = bos + llm.tokenize(instruction.encode(), add_bos=False)  # attended to, not pooled
    body = llm.tokenize(text.encode(), add_bos=False)
    states = token_states(llm, context + body)
    return states[len(context):].mean(axis=0)


if __name__ == "__main__":
    model, instruction, *texts = sys.argv[1:]
    llm = Llama(model_path=model, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE,
                n_ctx=512, n_batch=512, n_ubatch=512, verbose=False)
    for text in texts:
        print(json.dumps([round(float(x), 7) for x in embed(llm, instruction, text)]))
