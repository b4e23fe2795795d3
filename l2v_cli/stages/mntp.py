"""`train-mntp`: masked next-token prediction with LoRA on the bidirectional model (LLM2Vec step 2).

The label of a masked token at position i is predicted from the output at position i−1 (the
model keeps its next-token head), and the LM head runs only at those positions.
"""

from __future__ import annotations

from pathlib import Path

from l2v_cli.stages import registry
from l2v_cli.stages.common import (finish_stage, load_training_model, note, prepare_stage_dir, read_chain,
                                   resolve_stage_recipe, stage_config, write_config, write_ledger)
from l2v_cli.training.spine import L2VTrainer

STAGE = registry.of_module(__name__)


class IndexedRows:
    """The blocks, each row with its index ("idx"), computed on read: the masks and the ledger
    need each row's index, and a stored column of them would be 8 bytes a block of private memory
    on every rank (the blocks themselves stay memory-mapped)."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {**self.rows[i], "idx": i}

    def __getitems__(self, keys: list[int]) -> list[dict]:
        """A batch in one Arrow read (torch's DataLoader asks for batches this way when it can)."""
        cols = self.rows[keys]
        return [{**{c: v[j] for c, v in cols.items()}, "idx": i} for j, i in enumerate(keys)]


class RowSeededMasking:
    """Seed each batch's masks from its rows' indices, not from a call counter.

    A counter restarts at zero on resume (and differs per rank), so the resumed run would mask
    differently from an uninterrupted one; a function of (seed, rows) makes resume exact.
    A row visited again in a later epoch gets the same mask (MNTP runs are usually < 1 epoch).
    """

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, rows):
        import torch

        idx = [int(r["idx"]) for r in rows]
        batch = self.collator([{"input_ids": r["input_ids"]} for r in rows], step=min(idx))
        batch["idx"] = torch.tensor(idx)
        return batch


class MntpTrainer(L2VTrainer):
    softcap: float | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ledger: list[list[int]] = []  # [epoch, row] this process trained on (ledger/rank-N.json)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from l2v_cli.data.mntp import mntp_loss
        from l2v_cli.training.lora import unwrap

        labels = inputs.pop("labels")
        self.ledger.extend([int(self.state.epoch or 0), int(i)] for i in inputs.pop("idx"))
        self.count_tokens(inputs["attention_mask"])
        # logits_to_keep=1: the full-vocabulary head is skipped; mntp_loss applies it at masked positions only.
        out = model(**inputs, output_hidden_states=True, logits_to_keep=1, use_cache=False)
        head = unwrap(model).get_output_embeddings()
        loss = mntp_loss(out.hidden_states[-1], labels, head, softcap=self.softcap)
        return (loss, out) if return_outputs else loss


def train_mntp(recipe, input_model: str | Path, out: str | Path, *, resume: bool = True,
               force: bool = False, deepspeed: str | None = None, provenance: dict | None = None) -> Path:
    """Run MNTP on `input_model` (a MODEL or an enable-bidir folder); write the stage to `out`."""
    import torch

    from l2v_cli.data.mntp import MntpCollator, logit_softcap, resolve_mask_token
    from l2v_cli.data.text import group_texts, load_texts, tokenize_texts
    from l2v_cli.training.lora import add_lora
    from l2v_cli.training.spine import JsonlMetrics, RichProgress, build_training_args

    resolved, provenance = resolve_stage_recipe(recipe, input_model, provenance, STAGE.section)
    recipe = resolved.recipe
    cfg, out = recipe.mntp, Path(out)
    scfg = stage_config(recipe, STAGE.section)
    last = prepare_stage_dir(out, scfg, resume, force)
    write_config(out, recipe, input_model)
    chain = read_chain(input_model)
    model, loaded, dtype = load_training_model(recipe, chain, lm_head=True)
    choice = resolve_mask_token(loaded.tokenizer, cfg.mask_token, resolved.family.family.mask_token)
    tok, mask_id = choice.tokenizer, choice.id
    mask_record = {"spec": cfg.mask_token, "token": tok.convert_ids_to_tokens(mask_id), "id": mask_id,
                   "how": choice.how}
    note(f"mntp.mask_token {cfg.mask_token} -> {mask_record['token']!r}: {choice.how}")
    if choice.added:
        model.resize_token_embeddings(len(tok))
    model = add_lora(model, cfg.lora, cfg.train.gradient_checkpointing, seed=recipe.seed)

    args = build_training_args(cfg.train, out, bf16=dtype == torch.bfloat16, deepspeed=deepspeed,
                               seed=recipe.seed)
    with args.main_process_first(desc="tokenize"):  # rank 0 fills the token cache, the rest reuse it
        texts = load_texts(cfg.data, key="mntp.data")
        ds = group_texts(tokenize_texts(texts, tok, max_length=None), cfg.max_seq_length, tok.eos_token_id)
    collator = RowSeededMasking(MntpCollator(tok, mask_id, cfg.mask_probability, cfg.mask_strategy,
                                             seed=recipe.seed))
    trainer = MntpTrainer(model=model, args=args, train_dataset=IndexedRows(ds), data_collator=collator,
                          stage_config=scfg,
                          callbacks=[JsonlMetrics(out), RichProgress(f"{STAGE.title} {out.name}")])
    trainer.softcap = logit_softcap(model.config)
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    write_ledger(out, trainer.ledger)
    finish_stage(out, trainer, tok, STAGE.name, chain,
                 {"steps": trainer.state.global_step, "mask_token": mask_record, "resolved": provenance})
    return out
