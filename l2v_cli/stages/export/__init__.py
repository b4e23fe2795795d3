"""Stage `export`: merge a trained chain into one plain encoder folder that sentence-transformers,
transformers and `l2v encode` all load — and give the same embeddings.

    export("runs/x/simcse", "runs/x/export", pooling="mean", normalize=True)

One module per concern: source.py (what SOURCE is and the chain behind it), tokenizer.py (tokenizer
surgery), st_files.py (the sentence-transformers files and which versions read them), card.py (the
model card), run.py (the export itself: merge, write, verify, rename into place), gguf_files.py (the
GGUF side, `--format gguf`: docs/gguf.md) and recipe.py (a recipe's `export` section: the run's stage).

SOURCE is one of
  * a completed training-stage folder (has `stage.json`): its base model plus every adapter of the
    chain (the earlier stages' and its own `adapter/`), merged in order;
  * a checkpoint `STAGE/step-NNNNNN/`: the adapter saved in it (a folder with
    `adapter_config.json` — also what a DeepSpeed ZeRO-3 run with gathered 16-bit weights writes)
    on top of the chain that stage started from (from the stage's `stage.json`, or `stage_input`
    for a stage that has not finished); a checkpoint holding full weights (`config.json` +
    `*.safetensors`, no adapter) is exported as a model;
  * a plain bidirectional model folder (from `l2v enable-bidir`; `config.json` has
    `"is_causal": false`).

OUT holds (written into a temp folder, renamed into place at the end: all or nothing)
  config.json, model*.safetensors   the DECODER only (no LM head), `"is_causal": false`, in `dtype`,
                                    sharded at `max_shard_size`; `AutoModel.from_pretrained(OUT)` is
                                    bidirectional (checked by a probe after a plain reload: `verify`)
  tokenizer files                   WITHOUT a chat template, padding on the right (see below)
  modules.json                      Transformer -> Pooling (-> Dense) (-> Normalize)
  sentence_bert_config.json         max_seq_length, do_lower_case
  1_Pooling/config.json             our pooling in sentence-transformers' terms
  2_Dense/                          with `calibration`: the per-dimension scale (encoding/dim_scale.py)
  config_sentence_transformers.json prompts {"query": ..., "document": ...}, default_prompt_name null
  README.md                         model card (base, chain, steps, data, pooling, how to load, eval)

Why no chat template: sentence-transformers >= 6 renders every plain text through the tokenizer's
chat template when the folder has one (it adds a "message" modality whenever
`tokenizer.chat_template` is set; see `Transformer.infer_modalities`), so an Instruct model's
folder would be embedded as "<|im_start|>system ...". The encoder was trained on plain text, so the
export drops `chat_template` from tokenizer_config.json and deletes chat_template.jinja /
chat_template.json / additional_chat_templates/. Older sentence-transformers never apply one.

A second line of defence: the files are written in the long-standing format
(`sentence_transformers.models.*` module types, `pooling_mode_*_tokens` keys, a
sentence_bert_config.json without `modality_config`), and sentence-transformers 6 pins such a
module to the text-only modality — it would not apply a chat template even if one were put back.
Only a plain HF folder (no modules.json) is wrapped. Every sentence-transformers from 2.4 reads
these files, but the embeddings are right only from 5.4.0 (ST_MIN_VERSION; see the note there).

Pooling map (ours -> sentence-transformers): mean -> mean, weighted_mean -> weightedmean,
last_token -> lasttoken, bos -> cls, eos -> lasttoken with the tokenizer made to append EOS
(its post-processor gets the EOS token; checked after saving, an L2VError if the tokenizer will
not keep it). With instructions, `include_prompt: false` excludes the prompt from pooling, as
`l2v encode --instruction` does.

Known differences, measured by tests/test_export.py (and named in the model card):
  * an instruction is tokenised with the text as ONE string on both sides, and its tokens are left
    out of the pooling by the same count; one that ends in a space glues it to the text's first
    word, which that count then drops too (`export` warns; end instructions with a newline).
  * weighted_mean with a prompt: sentence-transformers keeps each text token's absolute position
    weight, we restart the weights at the text; without a prompt they agree.
  * truncation: we truncate the text only (instruction and special tokens kept), sentence-
    transformers truncates the whole sequence; they differ only for texts over max_seq_length.
  * an empty text with a prompt: sentence-transformers pools nothing (a zero vector), we pool one
    filler token (EOS).
"""

from l2v_cli.stages.export.recipe import export_from_recipe, run_export
from l2v_cli.stages.export.run import ExportReport, export
from l2v_cli.stages.export.source import ExportSource, StageInfo, resolve_source
from l2v_cli.stages.export.st_files import (ST_FORMAT_MIN_VERSION, ST_LOADS_MIN_VERSION, ST_MIN_VERSION,
                                            ST_POOLING_KEYS, TRANSFORMERS_MIN_VERSION)
from l2v_cli.utils.dtypes import NAMES as DTYPE_CHOICES

__all__ = ["export", "export_from_recipe", "run_export", "resolve_source", "ExportSource", "ExportReport",
           "StageInfo", "ST_MIN_VERSION", "ST_LOADS_MIN_VERSION", "ST_FORMAT_MIN_VERSION", "ST_POOLING_KEYS",
           "TRANSFORMERS_MIN_VERSION", "DTYPE_CHOICES"]
