"""Recipe configs: typed schema (schema.py), YAML loading with overrides (loader.py) and the model
family's defaults for `auto` values (resolve.py)."""

from l2v_cli.config.loader import (
    dump_recipe_yaml,
    list_recipes,
    load_recipe,
    load_recipe_with_origin,
    parse_override,
    recipe_from_dict,
    recipe_to_dict,
    schema_help,
)
from l2v_cli.config.schema import (
    STAGES,
    TRAIN_STAGES,
    BidirConfig,
    DataConfig,
    EvalConfig,
    ExportConfig,
    FieldDoc,
    LauncherConfig,
    LoraConfig,
    MntpConfig,
    Recipe,
    SimcseConfig,
    SupervisedConfig,
    TrainConfig,
    schema_fields,
    validate,
)
from l2v_cli.config.resolve import Resolved, resolve_for_model

__all__ = [
    "STAGES", "TRAIN_STAGES", "BidirConfig", "DataConfig", "EvalConfig", "ExportConfig",
    "FieldDoc", "LauncherConfig", "LoraConfig", "MntpConfig", "Recipe", "SimcseConfig",
    "SupervisedConfig", "TrainConfig", "dump_recipe_yaml", "list_recipes", "load_recipe",
    "load_recipe_with_origin", "Resolved", "resolve_for_model", "parse_override", "recipe_from_dict", "recipe_to_dict", "schema_fields", "schema_help",
    "validate",
]  # fmt: skip
