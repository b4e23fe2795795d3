"""`l2v recipes list | show | schema`: browse the shipped recipes and the recipe schema."""

from __future__ import annotations

from typing import List, Optional

import typer

recipes_app = typer.Typer(
    help="Shipped recipes (YAML stage plans) and the recipe schema.", no_args_is_help=True
)


@recipes_app.command("list")
def list_cmd() -> None:
    """List the shipped recipes."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from l2v_cli.config import list_recipes

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    table = Table("name", "description", box=None, header_style="bold")
    for name, description in list_recipes():
        table.add_row(Text(name), Text(description))
    console.print(table)


@recipes_app.command("show")
def show_cmd(
    recipe: str = typer.Argument(..., help="Shipped recipe name or path to a .yaml file."),
    overrides: Optional[List[str]] = typer.Argument(
        None, help="key.sub=value overrides, e.g. mntp.train.max_steps=50 eval.tasks=[stsb]."
    ),
) -> None:
    """Print the fully resolved recipe (defaults + file + overrides) as YAML."""
    from l2v_cli.config import dump_recipe_yaml, load_recipe

    # plain print, not rich: the output is meant to be saved and reloaded as a recipe file
    print(dump_recipe_yaml(load_recipe(recipe, overrides or [])), end="")


@recipes_app.command("schema")
def schema_cmd(
    markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table (for docs)."),
) -> None:
    """Document every recipe field: key path, type, default, help."""
    from l2v_cli.config import schema_fields, schema_help

    if markdown:
        print(schema_help(), end="")
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    if not console.is_terminal:  # piped: don't squeeze the table into 80 columns
        console = Console(width=200)
    table = Table(box=None, header_style="bold")
    table.add_column("key", no_wrap=True, style="cyan")
    table.add_column("type", overflow="fold", max_width=36)
    table.add_column("default", overflow="fold", max_width=28)
    table.add_column("help", min_width=40)
    for f in schema_fields():
        table.add_row(*(Text(c) for c in f))  # Text: "list[...]" is not rich markup
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(recipes_app, name="recipes")
