"""Recipes: the schema, loading with overrides, the error messages, and `l2v recipes ...`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from l2v_cli.config import (
    STAGES,
    Recipe,
    dump_recipe_yaml,
    list_recipes,
    load_recipe,
    recipe_from_dict,
    recipe_to_dict,
    schema_fields,
    schema_help,
)
from l2v_cli.errors import L2VError

SHIPPED = ["cpu-demo", "cpu-demo-sup", "smoke", "supervised", "unsup"]


def error_of(name_or_path, overrides=()) -> str:
    with pytest.raises(L2VError) as e:
        load_recipe(str(name_or_path), list(overrides))
    return e.value.line()


def write(tmp_path, text: str, name: str = "mine.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


MINIMAL = "stages: [export]\n"


# --------------------------------------------------------------------------- shipped recipes


def test_the_shipped_recipes_ship_with_descriptions():
    listed = dict(list_recipes())
    assert sorted(listed) == SHIPPED
    assert all(listed[n] for n in SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_loads_validates_and_round_trips(name, tmp_path):
    r = load_recipe(name)
    assert isinstance(r, Recipe) and r.name == name
    assert r.stages == sorted(r.stages, key=STAGES.index)
    # the printed config is itself a loadable recipe that gives the same thing back
    p = write(tmp_path, dump_recipe_yaml(r), f"{name}-resolved.yaml")
    assert load_recipe(str(p)) == r
    assert recipe_from_dict(recipe_to_dict(r)) == r


def test_unsup_has_the_paper_settings():
    r = load_recipe("unsup")
    assert r.stages == ["enable-bidir", "train-mntp", "train-simcse", "export"]
    assert r.model is None
    m, s = r.mntp, r.simcse
    assert (m.train.max_steps, m.train.per_device_batch_size, m.max_seq_length) == (1000, 32, 512)
    assert (m.mask_token, m.mask_probability, m.mask_strategy, m.lora.r, m.lora.alpha) == ("auto", "auto", "auto", 16, 32)
    # `auto` masking is the paper's per family: 20 % 80-10-10 for Llama, 80 % all-mask for Mistral
    from l2v_cli.config import resolve_for_model

    for model, expected in (("llama2-7b", (0.2, "80-10-10")), ("mistral-7b", (0.8, "all"))):
        rm = resolve_for_model(r, model).recipe.mntp
        assert (rm.mask_probability, rm.mask_strategy) == expected, model
    assert (s.train.max_steps, s.train.per_device_batch_size, s.max_seq_length) == (1000, 128, 128)
    assert (s.train.learning_rate, s.attention_dropout, s.scale) == (3e-5, 0.3, 20.0)
    assert m.data.path and s.data.path


def test_supervised_has_the_paper_settings():
    r = load_recipe("supervised")
    assert r.stages == ["enable-bidir", "train-mntp", "train-supervised", "export"]
    t = r.supervised.train
    assert (t.max_steps, t.per_device_batch_size, t.learning_rate, t.warmup_steps) == (
        1000, 64, 2e-4, 300,
    )  # fmt: skip
    assert r.supervised.scale == 50.0


def test_smoke_runs_every_stage_briefly_on_the_tiny_model():
    r = load_recipe("smoke")
    assert r.model == "tiny-llama"
    # every stage but `mine`, which tests/test_mine.py runs inside a conversion
    assert r.stages == [s for s in STAGES if s != "mine"]
    for section in (r.mntp, r.simcse, r.supervised):
        assert section.train.max_steps == 6
        assert section.train.per_device_batch_size == 4
    # Supervised queries carry an E5 instruction (~30 tiny-tokenizer tokens), so they get more room.
    assert (r.mntp.max_seq_length, r.simcse.max_seq_length, r.supervised.max_seq_length) == (32, 32, 96)
    assert (r.eval.tasks, r.eval.limit) == (["stsb"], 64)
    assert r.mntp.data.path == "data/unsup/wiki_sentences.txt"
    assert r.supervised.data.path == "data/supervised"


def test_cpu_demo_uses_smollm2_and_ends_with_eval():
    r = load_recipe("cpu-demo")
    assert r.model == "smollm2-135m"
    assert r.stages == ["enable-bidir", "train-mntp", "train-simcse", "export", "eval"]


def test_cpu_demo_sup_mines_with_the_mntp_model_then_trains_supervised():
    r = load_recipe("cpu-demo-sup")
    assert r.stages == ["enable-bidir", "train-mntp", "mine", "train-supervised", "export", "eval"]
    demo = load_recipe("cpu-demo")
    assert (r.bidir, r.mntp) == (demo.bidir, demo.mntp)  # the same first stages as `make demo`


def test_section_defaults_survive_a_partial_section(tmp_path):
    # mntp.train only sets max_steps: the MNTP batch size (32) stays, not TrainConfig's generic one
    p = write(tmp_path, "stages: [enable-bidir, train-mntp]\nmntp:\n  data: {path: a.txt}\n"
              "  train: {max_steps: 5}\n")  # fmt: skip
    r = load_recipe(str(p))
    assert (r.mntp.train.max_steps, r.mntp.train.per_device_batch_size) == (5, 32)
    assert (r.simcse.train.per_device_batch_size, r.supervised.train.warmup_steps) == (128, 300)
    assert r.name == "mine"  # from the file name


# --------------------------------------------------------------------------- overrides


def test_overrides_are_parsed_as_yaml_values_with_types():
    r = load_recipe(
        "unsup",
        [
            "mntp.train.max_steps=50",
            "simcse.train.learning_rate=1e-4",  # PyYAML reads this as a string; still a float
            "mntp.train.learning_rate=1",  # an int where a float is expected
            "bidir.verify=false",
            "eval.tasks=[stsb,scifact]",
            "model=smollm2-135m",
            "supervised.instructions={nli: 'Retrieve a paraphrase'}",
        ],
    )
    assert r.mntp.train.max_steps == 50 and type(r.mntp.train.max_steps) is int
    assert r.simcse.train.learning_rate == 1e-4 and type(r.simcse.train.learning_rate) is float
    assert r.mntp.train.learning_rate == 1.0 and type(r.mntp.train.learning_rate) is float
    assert r.bidir.verify is False
    assert r.eval.tasks == ["stsb", "scifact"]
    assert r.model == "smollm2-135m"
    assert r.supervised.instructions == {"nli": "Retrieve a paraphrase"}


def test_null_override_clears_an_optional_field():
    assert load_recipe("cpu-demo", ["model=null"]).model is None
    assert load_recipe("smoke", ["mntp.data.path=[a.txt, b.jsonl]"]).mntp.data.path == [
        "a.txt", "b.jsonl",
    ]  # fmt: skip


def test_an_override_does_not_leak_through_yaml_anchors():
    # smoke.yaml shares one train block between stages with &tiny / *tiny
    r = load_recipe("smoke", ["mntp.train.max_steps=3"])
    assert (r.mntp.train.max_steps, r.simcse.train.max_steps, r.supervised.train.max_steps) == (
        3, 6, 6,
    )  # fmt: skip


def test_yaml_file_accepts_exponent_floats_written_without_a_dot(tmp_path):
    p = write(tmp_path, MINIMAL + "simcse:\n  train:\n    learning_rate: 1e-4\n")
    assert load_recipe(str(p)).simcse.train.learning_rate == 1e-4


def test_override_without_equals_sign_is_rejected():
    assert error_of("unsup", ["mntp.train.max_steps"]) == (
        "malformed override 'mntp.train.max_steps' (command line) — fix: write overrides as "
        "key.sub=value, e.g. mntp.train.max_steps=50"
    )


def test_override_into_a_non_section_is_rejected():
    assert error_of("unsup", ["seed.value=1"]) == (
        "override 'seed.value=1' goes inside 'seed', which is not a section (command line)"
        " — fix: set seed=VALUE directly"
    )


# --------------------------------------------------------------------------- errors: keys & types


def test_unknown_top_level_key_suggests_the_closest():
    assert error_of("unsup", ["modle=x"]) == (
        "unknown key 'modle' (override 'modle=x', key modle) — fix: did you mean 'model'?"
    )


def test_unknown_nested_key_names_the_full_path_and_suggests():
    assert error_of("unsup", ["simcse.lora.rr=8"]) == (
        "unknown key 'simcse.lora.rr' (override 'simcse.lora.rr=8', key simcse.lora.rr)"
        " — fix: did you mean 'simcse.lora.r'?"
    )


def test_unknown_key_in_a_file_names_file_and_line(tmp_path):
    p = write(tmp_path, MINIMAL + "mntp:\n  train:\n    max_stepz: 3\n")
    msg = error_of(p)
    assert msg.startswith("unknown key 'mntp.train.max_stepz'")
    assert f"{p}:4, key mntp.train.max_stepz" in msg
    assert "fix: did you mean 'mntp.train.max_steps' or" in msg  # best match first


def test_wrong_type_names_key_expected_type_and_value():
    assert error_of("unsup", ["mntp.train.max_steps=lots"]) == (
        "wrong type for 'mntp.train.max_steps': expected int, got 'lots' "
        "(override 'mntp.train.max_steps=lots', key mntp.train.max_steps)"
        " — fix: give a whole number, e.g. 100"
    )


def test_bool_is_not_an_int_and_int_is_not_a_bool():
    assert "expected int, got True" in error_of("unsup", ["mntp.train.max_steps=true"])
    assert "expected bool, got 1" in error_of("unsup", ["bidir.verify=1"])


def test_float_must_be_a_number():
    assert "expected float, got 'fast'" in error_of("unsup", ["mntp.train.learning_rate=fast"])


def test_choice_fields_suggest_the_closest_choice():
    msg = error_of("unsup", ["simcse.pooling=meen"])
    assert msg.startswith("wrong type for 'simcse.pooling': expected one of mean, weighted_mean,")
    assert msg.endswith("fix: did you mean 'mean'?")


def test_bad_list_element_names_its_index():
    msg = error_of("unsup", ["eval.tasks=[stsb, 3]"])
    assert msg.startswith("wrong type for 'eval.tasks[1]': expected string, got 3")


def test_section_given_a_scalar_is_a_type_error():
    assert "wrong type for 'mntp.train': expected a mapping (section), got 5" in error_of(
        "unsup", ["mntp.train=5"]
    )


# --------------------------------------------------------------------------- errors: ranges


@pytest.mark.parametrize(
    "override, message",
    [
        ("simcse.train.learning_rate=-1e-4", "'simcse.train.learning_rate' must be > 0, got -0.0001"),
        ("mntp.mask_probability=1.5", "'mntp.mask_probability' must be > 0 and < 1, got 1.5"),
        ("mntp.train.max_steps=0", "'mntp.train.max_steps' must be > 0, got 0"),
        ("supervised.train.per_device_batch_size=0", "'supervised.train.per_device_batch_size' must be > 0, got 0"),
        ("mntp.lora.r=0", "'mntp.lora.r' must be > 0, got 0"),
        ("simcse.attention_dropout=1", "'simcse.attention_dropout' must be >= 0 and < 1, got 1.0"),
        ("simcse.scale=0", "'simcse.scale' must be > 0, got 0.0"),
        ("simcse.max_seq_length=-5", "'simcse.max_seq_length' must be > 0, got -5"),
        ("launcher.master_port=70000", "'launcher.master_port' must be > 0 and <= 65535, got 70000"),
    ],
)  # fmt: skip
def test_out_of_range_values_are_rejected(override, message):
    assert error_of("unsup", [override]).startswith(message)


# --------------------------------------------------------------------------- errors: stages


def test_stages_must_follow_the_canonical_order():
    assert error_of("unsup", ["stages=[enable-bidir, train-simcse, train-mntp]"]).startswith(
        "stages are out of order: [enable-bidir, train-simcse, train-mntp] "
        "(override 'stages=[enable-bidir, train-simcse, train-mntp]', key stages) "
        "— fix: use the order [enable-bidir, train-mntp, train-simcse]"
    )


def test_a_stage_may_not_repeat():
    assert error_of("unsup", ["stages=[enable-bidir, export, export]"]).startswith(
        "stage 'export' is listed twice"
    )


def test_training_needs_enable_bidir_first():
    assert error_of("unsup", ["stages=[train-mntp, export]"]).startswith(
        "training stages need bidirectional attention first"
    )


def test_unknown_stage_suggests_the_closest():
    msg = error_of("unsup", ["stages=[enable-bidir, train-simcs]"])
    assert msg.startswith("wrong type for 'stages[1]': expected one of enable-bidir, train-mntp")
    assert "fix: did you mean 'train-simcse' or" in msg


def test_no_stages_is_an_error(tmp_path):
    assert error_of(write(tmp_path, "name: x\n")).startswith("the recipe runs no stages")


def test_a_training_stage_needs_a_data_path():
    assert error_of("unsup", ["mntp.data.path=null"]).startswith(
        "stage 'train-mntp' needs training data but mntp.data.path is empty"
    )


def test_stages_that_do_not_train_need_no_data():
    assert load_recipe("unsup", ["stages=[enable-bidir, export]", "mntp.data.path=null"])


# --------------------------------------------------------------------------- errors: files & names


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = write(tmp_path, "name: x\nstages: [export\nseed: 1\n")
    msg = error_of(p)
    assert msg.startswith("malformed YAML: ")
    assert f"({p}:3)" in msg


def test_duplicate_yaml_key_names_both_lines(tmp_path):
    p = write(tmp_path, MINIMAL + "seed: 1\nseed: 2\n")
    assert error_of(p) == (
        f"duplicate key 'seed' ({p}:3) — fix: keep one 'seed' (the other is on line 2)"
    )


def test_top_level_must_be_a_mapping(tmp_path):
    assert error_of(write(tmp_path, "- a\n- b\n")).startswith(
        "a recipe must be a YAML mapping of keys, got list"
    )


def test_unknown_recipe_name_lists_the_shipped_ones():
    assert error_of("unsupp") == (
        "unknown recipe 'unsupp' (shipped recipes: cpu-demo, cpu-demo-sup, smoke, supervised, unsup)"
        " — fix: did you mean 'unsup'? (or give a path to a .yaml file)"
    )


def test_missing_recipe_file_is_reported(tmp_path):
    msg = error_of(tmp_path / "nope.yaml")
    assert msg.startswith("recipe file not found: ")


# --------------------------------------------------------------------------- schema docs


def test_schema_documents_every_leaf_field_with_help():
    keys = [f.key for f in schema_fields()]
    assert len(keys) == len(set(keys))
    for key in ["model", "stages", "simcse.lora.r", "supervised.train.warmup_steps",
                "launcher.deepspeed", "eval.tasks", "export.query_instruction"]:  # fmt: skip
        assert key in keys
    assert all(f.help for f in schema_fields())
    table = schema_help()
    assert table.startswith("| key | type | default | help |\n| --- | --- | --- | --- |\n")
    assert "| `simcse.train.learning_rate` | float | `3e-05` | Peak learning rate. Must be > 0. |" in table
    assert "| `supervised.train.warmup_steps` | int | `300` |" in table


def test_docs_schema_table_is_the_generated_one():
    # docs/recipes.md ends with `l2v recipes schema --markdown`: a key added to the schema without
    # regenerating the page fails here (the page had fallen 25 keys behind before this test).
    doc = (Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text()
    _, sep, table = doc.partition("Generated by `l2v recipes schema --markdown`.\n\n")
    assert sep, "docs/recipes.md lost its generated schema section"
    assert table.rstrip("\n") == schema_help().rstrip("\n")


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def cli():
    from l2v_cli.cli.main import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_cli_recipes_list(cli):
    res = cli("recipes", "list")
    assert res.exit_code == 0, res.output
    for name in SHIPPED:
        assert name in res.stdout


def test_cli_recipes_show_prints_the_resolved_yaml(cli, tmp_path):
    res = cli("recipes", "show", "smoke", "mntp.train.max_steps=2", "eval.tasks=[stsb]")
    assert res.exit_code == 0, res.output
    assert "stages: [enable-bidir, train-mntp, train-simcse, train-supervised, export, eval]\n" in res.stdout
    assert "tasks: [stsb]\n" in res.stdout
    p = write(tmp_path, res.stdout, "shown.yaml")
    assert load_recipe(str(p)) == load_recipe("smoke", ["mntp.train.max_steps=2", "eval.tasks=[stsb]"])


def test_cli_recipes_schema(cli):
    res = cli("recipes", "schema")
    assert res.exit_code == 0, res.output
    assert "simcse.train.learning_rate" in res.stdout
    md = cli("recipes", "schema", "--markdown")
    assert md.exit_code == 0 and md.stdout == schema_help()


def l2v(*args):
    return subprocess.run(
        [sys.executable, "-m", "l2v_cli", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_errors_are_one_line_on_stderr_without_traceback():
    res = l2v("recipes", "show", "unsup", "simcse.lora.rr=8")
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr == (
        "l2v: error: unknown key 'simcse.lora.rr' (override 'simcse.lora.rr=8', key "
        "simcse.lora.rr) — fix: did you mean 'simcse.lora.r'?\n"
    )
    assert "Traceback" not in res.stderr

    res = l2v("recipes", "show", "nosuch")
    assert res.returncode == 2
    assert res.stderr.startswith("l2v: error: unknown recipe 'nosuch' (shipped recipes: cpu-demo,")
    assert "Traceback" not in res.stderr
