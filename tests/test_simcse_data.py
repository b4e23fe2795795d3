"""Spec: SimCSE batches hold no false negatives. Degenerate lines (markup, too few tokens) are
dropped before training, with the count in the log and the stage record; an identical sentence
elsewhere in a batch is masked, not scored as a negative."""

import json

import pytest

from l2v_cli.config import load_recipe
from l2v_cli.data.clean import drop_degenerate
from l2v_cli.data.text import content_dataset
from l2v_cli.stages.simcse import train_simcse

LINES = [
    "In:",                                             # short: 2 tokens (tiny tokenizer: In, :)
    "Out:",                                            # 3 tokens (O, ut, :) but one word
    "Dmitry Bukhman",                                  # a short title: text, kept
    "<onlyinclude></onlyinclude>",                     # markup only
    "\\break",                                         # markup only (a TeX command)
    "== Early life and career ==",                     # a heading: its words count
    "{{cite web}} [[Paris]]",                          # markup leaves 'Paris' alone: too few words
    "He competed in the men's middleweight event at the 1952 Summer Olympics.",
    "The submarines were long, had a beam of and a draft of .",
]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from l2v_cli.modeling.tiny import tokenizer_dir

    return AutoTokenizer.from_pretrained(tokenizer_dir())


def test_degenerate_lines_are_dropped_and_counted(tok):
    kept, stats = drop_degenerate(content_dataset({"text": LINES}), tok, min_tokens=3)
    assert kept["text"] == [LINES[2], LINES[5], LINES[7], LINES[8]]
    assert (stats.kept, stats.short, stats.markup) == (4, 1, 4)
    assert stats.line("simcse.data") == ("simcse.data: kept 4 of 9 sentences; dropped 1 shorter than "
                                         "the minimum and 4 markup-only or one-word")


def test_min_tokens_zero_keeps_everything(tok):
    ds = content_dataset({"text": LINES})
    kept, stats = drop_degenerate(ds, tok, min_tokens=0)
    assert kept["text"] == LINES and stats.dropped == 0


def _simcse_on(tmp_path, lines, *overrides):
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = load_recipe("smoke", [f"simcse.data.path={data}", "simcse.train.max_steps=2",
                              "simcse.train.per_device_batch_size=8", "simcse.train.logging_steps=1",
                              "simcse.train.save_steps=2", *overrides])
    out = train_simcse(r, "tiny-llama", tmp_path / "simcse")
    losses = [row["loss"] for row in map(json.loads, open(out / "metrics.jsonl")) if "loss" in row]
    return out, losses


def test_a_batch_of_one_repeated_sentence_has_no_negatives(tmp_path):
    # Every text in every batch is the same sentence: once the copies are masked, each row's only
    # candidate is its own second view, so InfoNCE is exactly 0.
    out, losses = _simcse_on(tmp_path, ["The same sentence is repeated in this corpus."] * 32)
    assert losses == [0.0, 0.0]


def test_control_without_masking_copies_are_negatives(tmp_path):
    # The same data with masking off: 7 identical negatives per row, the loss is about log(8).
    out, losses = _simcse_on(tmp_path, ["The same sentence is repeated in this corpus."] * 32,
                             "simcse.mask_duplicates=false")
    assert all(l > 1.5 for l in losses), losses


def test_the_stage_logs_and_records_what_it_dropped(tmp_path, capsys):
    lines = LINES * 4
    out, _ = _simcse_on(tmp_path, lines)
    assert "simcse.data: kept 16 of 36 sentences; dropped 4 shorter than the minimum and 16 markup-only or one-word" \
        in capsys.readouterr().out
    rec = json.loads((out / "stage.json").read_text())
    assert rec["sentences"] == 16 and rec["dropped"] == {"short": 4, "markup": 16}


def test_loss_spike_log_check(tmp_path, capsys):
    """A logged loss above 2x the median of the losses before it is reported (step, loss, median)."""
    from l2v_cli.training.spine import loss_spikes

    def write(losses):
        p = tmp_path / "metrics.jsonl"
        p.write_text("".join(json.dumps({"step": 5 * (i + 1), "loss": x}) + "\n" for i, x in enumerate(losses))
                     + json.dumps({"step": 99, "train_runtime": 1.0}) + "\n")
        return p

    assert loss_spikes(write([0.9, 0.5, 0.3, 0.2, 0.35, 0.1])) == []  # noisy, never 2x the median
    assert loss_spikes(write([0.07, 0.05, 0.06, 0.04, 2.5, 0.02])) == [(25, 2.5, 0.055)]
