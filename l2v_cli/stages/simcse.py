"""`train-simcse`: unsupervised SimCSE (LLM2Vec step 3).

Merge the previous stage's adapter into the weights, add a fresh LoRA, and pull together two
forward passes of the same batch that differ only by dropout (attention dropout 0.3 in the paper);
InfoNCE over in-batch (and, across processes, gathered) negatives with scale 20; mean pooling over
real tokens only.
"""

from __future__ import annotations

from pathlib import Path

from l2v_cli.encoding import as_prefix
from l2v_cli.stages import registry
from l2v_cli.stages.common import (finish_stage, load_training_model, prepare_stage_dir, read_chain,
                                   resolve_stage_recipe, stage_config, write_config)
from l2v_cli.stages.contrastive import ContrastiveTrainer, setup_matryoshka

STAGE = registry.of_module(__name__)


class TextCollator:
    """Texts -> one padded batch with a pool mask (the encoder's own tokenisation), plus each
    text's id (equal texts, equal ids: in-batch duplicates are masked in the loss). With a
    `view_instruction`, a second batch of the same texts behind that instruction (view "b")."""

    def __init__(self, encoder, view_instruction: str | None = None):
        self.encoder, self.view_instruction = encoder, view_instruction

    def __call__(self, rows):
        from l2v_cli.training.losses import text_ids

        enc, texts = self.encoder, [r["text"] for r in rows]
        batch = {**enc.collate(enc.tokenize(texts)), "text_ids": text_ids(texts)}
        if self.view_instruction:
            batch["b"] = enc.collate(enc.tokenize(texts, instruction=self.view_instruction))
        return batch


class SimcseTrainer(ContrastiveTrainer):
    scale = 20.0
    gather = True
    mask_duplicates = True

    def views(self, inputs):
        # Same texts twice: dropout makes the two views differ; with a view instruction the
        # second view also carries it (the bare embedding is pulled towards the instructed one).
        return [inputs, inputs.get("b", inputs)]

    def loss_from(self, embs, inputs):
        from l2v_cli.training.losses import info_nce

        ids = {"positive_ids": inputs["text_ids"]} if self.mask_duplicates else {}
        return info_nce(embs[0], embs[1], self.scale, gather=self.gather, **ids, **self.matryoshka())


def with_token_lengths(ds, tok, max_len: int):
    """Add the "length" column the length-grouped sampler reads (tokens, capped at max_len)."""
    ids = tok(list(ds["text"]), add_special_tokens=False)["input_ids"]
    return ds.add_column("length", [min(len(i), max_len) for i in ids])


def train_simcse(recipe, input_model: str | Path, out: str | Path, *, resume: bool = True,
                 force: bool = False, deepspeed: str | None = None, provenance: dict | None = None) -> Path:
    import torch

    from l2v_cli.data.clean import drop_degenerate
    from l2v_cli.data.text import load_texts
    from l2v_cli.encoding.encoder import Encoder
    from l2v_cli.training.lora import add_lora, set_attention_dropout
    from l2v_cli.training.spine import JsonlMetrics, RichProgress, build_training_args, loss_spikes

    resolved, provenance = resolve_stage_recipe(recipe, input_model, provenance, STAGE.section)
    recipe = resolved.recipe
    cfg, out = recipe.simcse, Path(out)
    scfg = stage_config(recipe, STAGE.section)
    last = prepare_stage_dir(out, scfg, resume, force)
    write_config(out, recipe, input_model)
    chain = read_chain(input_model)
    model, loaded, dtype = load_training_model(recipe, chain, lm_head=True)
    set_attention_dropout(model, cfg.attention_dropout)
    model = add_lora(model, cfg.lora, cfg.train.gradient_checkpointing, seed=recipe.seed)
    tok = loaded.tokenizer
    encoder = Encoder(model, tok, pooling=cfg.pooling, max_length=cfg.max_seq_length)

    ds = load_texts(cfg.data, key="simcse.data")
    ds, cleaned = drop_degenerate(ds, tok, cfg.min_tokens)
    print(cleaned.line("simcse.data"), flush=True)
    if cfg.group_by_length:
        ds = with_token_lengths(ds, tok, cfg.max_seq_length)
    args = build_training_args(cfg.train, out, bf16=dtype == torch.bfloat16, deepspeed=deepspeed,
                               seed=recipe.seed, group_by_length=cfg.group_by_length)
    trainer = SimcseTrainer(model=model, args=args, train_dataset=ds,
                            data_collator=TextCollator(encoder, as_prefix(cfg.view_instruction)),
                            stage_config=scfg,
                            callbacks=[JsonlMetrics(out), RichProgress(f"{STAGE.title} {out.name}")])
    trainer.pooling, trainer.scale = cfg.pooling, cfg.scale
    trainer.gather, trainer.grad_cache_chunk_size = cfg.gather_across_processes, cfg.grad_cache_chunk_size
    trainer.mask_duplicates = cfg.mask_duplicates
    matryoshka = setup_matryoshka(trainer, cfg.matryoshka, encoder.dim, STAGE.section)
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    finish_stage(out, trainer, tok, STAGE.name, chain,
                 {"steps": trainer.state.global_step, "sentences": cleaned.kept,
                  "dropped": {"short": cleaned.short, "markup": cleaned.markup}, "matryoshka": matryoshka,
                  "loss_spikes": [list(x) for x in loss_spikes(out / "metrics.jsonl")], "resolved": provenance})
    return out
