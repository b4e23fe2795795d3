"""GGUF export for llama.cpp: a converted encoder served where people run models.

    writer.py    HF model folder -> .gguf (gguf package's writer, non-causal attention, pooling, tokenizer)
    arch.py      the architectures written (and how each maps onto llama.cpp), the refusals
    vocab.py     the tokenizer embedded so llama.cpp splits text as transformers does
    llamacpp.py  running a .gguf through llama-cpp-python: served embeddings, per-token states,
                 the tokenization check, GGUFEncoder (what `l2v eval MODEL.gguf` uses)
    check.py     a GGUF against its source folder: cosine per path (served text, served ids, exact)
    card.py      model-card text (how to serve it)

The export itself (`l2v export --format gguf|st,gguf`: merge if needed, write, check, card) is
l2v_cli/stages/export/gguf_files.py.

Only writer/arch/vocab are needed to write a GGUF; llama-cpp-python is optional (checks, eval).
"""
