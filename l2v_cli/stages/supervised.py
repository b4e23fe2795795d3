"""`train-supervised`: contrastive training on (query, positive, hard negative) rows (LLM2Vec step 4).

Queries carry their data set's instruction (attended to, excluded from pooling), except a seeded
share of them (`bare_queries`) that trains the no-prompt call users make of the export; every
batch is drawn from one data set (so in-batch negatives are of the same kind); scale 50;
optionally in-batch false negatives (another row's positive or hard negative equal to this row's
positive) are masked out.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from l2v_cli.encoding import as_prefix
from l2v_cli.stages import registry
from l2v_cli.stages.common import (finish_stage, load_training_model, prepare_stage_dir, read_chain,
                                   resolve_stage_recipe, stage_config, world_size, write_config)
from l2v_cli.stages.contrastive import ContrastiveTrainer, setup_matryoshka
from l2v_cli.training.losses import info_nce, stable_hash64, text_ids

STAGE = registry.of_module(__name__)


class EpochLoader(DataLoader):
    """A DataLoader whose set_epoch reaches our batch sampler (the Trainer calls it each epoch)."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


def bare_query(query: str, share: float, seed: int) -> bool:
    """Whether `query` trains without its instruction: a draw keyed on (seed, text), True for about
    `share` of the queries and the same on every rank, epoch and resumed run."""
    if share <= 0:
        return False
    return stable_hash64(f"{seed}\0{query}") / 2**64 < share


class TripletCollator:
    def __init__(self, encoder, bare_queries: float = 0.0, seed: int = 0):
        self.encoder, self.bare_queries, self.seed = encoder, bare_queries, seed

    def queries(self, rows) -> list:
        """The queries tokenised with their data set's instruction, spelled as evaluation spells it
        ("X: "; one data set, so one instruction, per batch), or bare for the `bare_queries` share."""
        enc, instr = self.encoder, as_prefix(rows[0]["instruction"])
        bare = [bare_query(r["query"], self.bare_queries, self.seed) for r in rows]
        told = [r["query"] for r, b in zip(rows, bare) if not b]
        plain = [r["query"] for r, b in zip(rows, bare) if b]
        told = iter(enc.tokenize(told, instruction=instr) if told else [])
        plain = iter(enc.tokenize(plain) if plain else [])
        return [next(plain) if b else next(told) for b in bare]

    def __call__(self, rows):
        enc = self.encoder
        return {
            "q": enc.collate(self.queries(rows)),
            "p": enc.collate(enc.tokenize([r["positive"] for r in rows])),
            "n": enc.collate(enc.tokenize([r["negative"] for r in rows])),
            "p_ids": text_ids([r["positive"] for r in rows]),
            "n_ids": text_ids([r["negative"] for r in rows]),
        }


class SupervisedTrainer(ContrastiveTrainer):
    scale = 50.0
    gather = True
    mask_false_negatives = True
    batch_sampler = None

    def views(self, inputs):
        return [inputs["q"], inputs["p"], inputs["n"]]

    def loss_from(self, embs, inputs):
        ids = {}
        if self.mask_false_negatives:
            ids = {"positive_ids": inputs["p_ids"], "negative_ids": inputs["n_ids"]}
        return info_nce(embs[0], embs[1], self.scale, negatives=embs[2], gather=self.gather, **ids,
                        **self.matryoshka())

    def get_train_dataloader(self):
        # Our sampler already gives each rank its own slice of a one-data-set global batch, so the
        # loader is not re-sharded by accelerate (that would mix data sets across ranks).
        return EpochLoader(self.train_dataset, batch_sampler=self.batch_sampler,
                          collate_fn=self.data_collator, num_workers=self.args.dataloader_num_workers)


def train_supervised(recipe, input_model: str | Path, out: str | Path, *, resume: bool = True,
                     force: bool = False, deepspeed: str | None = None, provenance: dict | None = None) -> Path:
    import torch

    from l2v_cli.data.pairs import OneDatasetBatchSampler, TripletRows, load_supervised
    from l2v_cli.encoding.encoder import Encoder
    from l2v_cli.training.lora import add_lora
    from l2v_cli.training.spine import JsonlMetrics, RichProgress, build_training_args

    resolved, provenance = resolve_stage_recipe(recipe, input_model, provenance, STAGE.section)
    recipe = resolved.recipe
    cfg, out = recipe.supervised, Path(out)
    scfg = stage_config(recipe, STAGE.section)
    last = prepare_stage_dir(out, scfg, resume, force)
    write_config(out, recipe, input_model)
    sets = load_supervised(cfg, key="supervised")
    chain = read_chain(input_model)
    model, loaded, dtype = load_training_model(recipe, chain, lm_head=True)
    model = add_lora(model, cfg.lora, cfg.train.gradient_checkpointing, seed=recipe.seed)
    encoder = Encoder(model, loaded.tokenizer, pooling=cfg.pooling, max_length=cfg.max_seq_length)

    ds = TripletRows(sets)
    args = build_training_args(cfg.train, out, bf16=dtype == torch.bfloat16, deepspeed=deepspeed,
                               seed=recipe.seed)
    trainer = SupervisedTrainer(model=model, args=args, train_dataset=ds,
                                data_collator=TripletCollator(encoder, cfg.bare_queries, recipe.seed),
                                stage_config=scfg,
                                callbacks=[JsonlMetrics(out), RichProgress(f"{STAGE.title} {out.name}")])
    sizes = ds.sizes
    if cfg.one_dataset_per_batch:
        trainer.batch_sampler = OneDatasetBatchSampler(sizes, cfg.train.per_device_batch_size, seed=recipe.seed,
                                                       num_replicas=world_size(), rank=args.process_index)
    else:  # mixed batches: a plain shuffled sampler over everything
        trainer.batch_sampler = OneDatasetBatchSampler([sum(sizes)], cfg.train.per_device_batch_size,
                                                       seed=recipe.seed, num_replicas=world_size(),
                                                       rank=args.process_index)
    trainer.pooling, trainer.scale, trainer.gather = cfg.pooling, cfg.scale, cfg.gather_across_processes
    trainer.mask_false_negatives = cfg.mask_false_negatives
    trainer.grad_cache_chunk_size = cfg.grad_cache_chunk_size
    matryoshka = setup_matryoshka(trainer, cfg.matryoshka, encoder.dim, STAGE.section)
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    finish_stage(out, trainer, loaded.tokenizer, STAGE.name, chain,
                 {"steps": trainer.state.global_step,
                  "instructions": {s.name: s.instruction for s in sets}, "matryoshka": matryoshka,
                  "resolved": provenance})
    return out
