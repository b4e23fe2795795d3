"""The sentence-transformers files of an export (modules.json, sentence_bert_config.json,
1_Pooling/, 2_Dense/ (the calibrated per-dimension scale, if any), N_Normalize/,
config_sentence_transformers.json), in the long-standing format every
sentence-transformers from 2.4 reads; and which versions give our embeddings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from l2v_cli.encoding.dim_scale import DENSE_TYPE, write_dim_scale

# Our pooling name -> the sentence-transformers Pooling config key that is switched on.
ST_POOLING_KEYS = {
    "mean": "pooling_mode_mean_tokens",
    "weighted_mean": "pooling_mode_weightedmean_tokens",
    "last_token": "pooling_mode_lasttoken",
    "eos": "pooling_mode_lasttoken",  # + a tokenizer that appends EOS
    "bos": "pooling_mode_cls_token",  # "cls" = the first pooled token
}
_ALL_ST_POOLING_KEYS = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                        "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                        "pooling_mode_lasttoken")

# Which sentence-transformers gives our embeddings (measured on the tiny chain of tests/test_export.py):
#   * the file format needs 2.4.0 (prompts, default_prompt_name, Pooling.include_prompt; lasttoken
#     and weightedmean pooling are older);
#   * bidirectional attention needs transformers >= 5 (config.is_causal), which sentence-transformers
#     allows from 5.2.0 on (<= 5.1.x pin transformers < 5: the model would silently run causal);
#   * 5.2.x-5.3.x strip every input (and the prompt) of surrounding whitespace before tokenising, so
#     texts with leading/trailing whitespace and prompts ending in a newline differ (cos ~0.93-0.999);
#     from 5.4.0 inputs are tokenised as given and the embeddings match ours (cos >= 0.9999).
ST_MIN_VERSION = "5.4.0"  # equal embeddings
ST_LOADS_MIN_VERSION = "5.2.0"  # loads bidirectional, but strips whitespace
ST_FORMAT_MIN_VERSION = "2.4.0"  # reads the files (with transformers 4: causal, wrong)
TRANSFORMERS_MIN_VERSION = "5.0"


def write_st_files(tmp: Path, *, dim: int, pooling: str, normalize: bool, max_seq_length: int,
                    query_instruction: Optional[str], document_instruction: Optional[str],
                    trained_prompts: Optional[dict] = None, dim_scale=None) -> None:
    """modules.json, sentence_bert_config.json, 1_Pooling/ and config_sentence_transformers.json.
    No default prompt: bare text (with the tokenizer's own attention sink) is what the contrastive
    stages train documents and SimCSE sentences on, so `encode(texts)` sends the trained input;
    `prompts` holds the query/document instructions and the supervised stage's training
    instructions by data set, all left out of the pooling (`include_prompt: false`). `dim_scale`
    (a calibrated per-dimension scale, encoding/dim_scale.py) becomes a Dense module after Pooling."""
    import torch
    import transformers

    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if dim_scale is not None:
        write_dim_scale(tmp, "2_Dense", dim_scale)
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": DENSE_TYPE})
    if normalize:
        k = len(modules)
        modules.append({"idx": k, "name": str(k), "path": f"{k}_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (tmp / f"{k}_Normalize").mkdir()
    _dump(tmp / "modules.json", modules)
    _dump(tmp / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    pool_cfg = {"word_embedding_dimension": dim}
    pool_cfg.update({k: k == ST_POOLING_KEYS[pooling] for k in _ALL_ST_POOLING_KEYS})
    prompts = {"query": query_instruction or "", "document": document_instruction or "", **(trained_prompts or {})}
    pool_cfg["include_prompt"] = not any(prompts.values())
    (tmp / "1_Pooling").mkdir()
    _dump(tmp / "1_Pooling" / "config.json", pool_cfg)
    _dump(tmp / "config_sentence_transformers.json", {
        # The version these files are written for (not the installed one): an older
        # sentence-transformers warns that it is older, which is the right warning.
        "__version__": {"sentence_transformers": ST_MIN_VERSION, "transformers": transformers.__version__,
                        "pytorch": torch.__version__.split("+")[0]},
        "model_type": "SentenceTransformer",
        "prompts": prompts,
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
