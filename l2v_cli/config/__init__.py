"""Recipe configs: typed schema (schema.py) and YAML loading with overrides (loader.py)."""

from l2v_cli.config.loader import (
    dump_recipe_yaml,
    list_recipes,
    load_recipe,
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

__all__ = [
    "STAGES", "TRAIN_STAGES", "BidirConfig", "DataConfig", "EvalConfig", "ExportConfig",
    "FieldDoc", "LauncherConfig", "LoraConfig", "MntpConfig", "Recipe", "SimcseConfig",
    "SupervisedConfig", "TrainConfig", "dump_recipe_yaml", "list_recipes", "load_recipe",
    "parse_override", "recipe_from_dict", "recipe_to_dict", "schema_fields", "schema_help",
    "validate",
]  # fmt: skip
