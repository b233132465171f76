"""One table of run options (curation/run_options.py): the parser, the config overrides, the Makefile's `shards`
recipe and README's "Variables for `make shards`" all follow it."""

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from curation.__main__ import build_parser
from curation.config import RunConfig
from curation.run_options import DEBUG, RUN_OPTIONS, make_variables, overrides

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = {int: ("3", 3), float: ("0.5", 0.5), None: ("x", "x")}


def _shards_recipe() -> str:
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = lines.index("shards: $(STAMP)") + 1
    recipe = []
    for line in lines[start:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip().removesuffix("\\"))
    return " ".join(recipe)


def _fragment(option) -> str:
    """How the recipe passes the option's variable."""
    var, flag = f"$({option.make})", option.flag
    return {"value": f"$(if {var},{flag} {var})", "quoted": f"$(if {var},{flag} '{var}')",
            "always": f"{flag} {var}", "switch": f"$(if $(filter 1 yes true,{var}),{flag})"}[option.make_form]


def test_the_shards_recipe_passes_exactly_the_tables_variables_with_their_flags():
    recipe = _shards_recipe()
    variables = make_variables()
    assert set(re.findall(r"\$\(([A-Z][A-Z0-9_]*)\)", recipe)) - {"VPY"} == set(variables)
    assert set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", recipe)) == {o.flag for o in variables.values()}
    for option in variables.values():
        assert _fragment(option) in recipe, option.make


def test_readme_lists_exactly_the_tables_variables():
    text = (ROOT / "README.md").read_text()
    paragraph = text[text.index("Variables for `make shards`:"):].split("\n\n")[0]
    listed = re.findall(r"`([A-Z][A-Z0-9_]*)(?:=[^`]*)?`", paragraph)
    assert sorted(listed) == sorted(make_variables())


def _option_type(dotted: str):
    cls, *parents, leaf = (RunConfig, *dotted.split("."))
    for name in parents:
        cls = typing.get_type_hints(cls)[name]
    assert leaf in {f.name for f in dataclasses.fields(cls)}, dotted
    return typing.get_type_hints(cls)[leaf]


@pytest.mark.parametrize("command", ["run", "ssl-train"])
def test_the_parser_and_the_overrides_follow_the_table(command):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    flags = {s for action in sub._actions for s in action.option_strings if s.startswith("--")}
    assert flags == {o.flag for o in (*RUN_OPTIONS, DEBUG)} | {"--help"}
    assert overrides(parser.parse_args([command])) == {}
    for option in RUN_OPTIONS:
        if option.key is None:
            continue
        _option_type(option.key)  # a real config option
        if option.action == "store_true":
            assert overrides(parser.parse_args([command, option.flag])) == {option.key: True}
            continue
        text, value = SAMPLE[option.type]
        assert overrides(parser.parse_args([command, option.flag, text])) == {option.key: value}


def test_flags_set_their_config_options():
    args = build_parser().parse_args(["run", "--workers", "2", "--rate-limit", "0.5", "--retry-failed",
                                      "--source", "clips/", "--set", "select.top_k=5", "--set", "decode.fps=5"])
    assert overrides(args) == {"dask.workers": 2, "fetch.rate_limit": 0.5, "fetch.retry_failed": True,
                               "source.path": "clips/"}
    assert args.set == ["select.top_k=5", "decode.fps=5"] and not args.quiet and not args.debug
