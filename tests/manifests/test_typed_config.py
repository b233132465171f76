from dataclasses import dataclass, field

import pytest

from manifests.typed_config import ConfigError, load_typed, typed_from_dict


@dataclass(frozen=True)
class Inner:
    size: tuple[int, int] = (1, 2)
    rate: float | None = 0.5


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)


def _positive(cfg: Outer, problems: list[str]) -> None:
    if cfg.inner.rate is not None and cfg.inner.rate <= 0:
        problems.append("inner.rate: must be > 0")


def test_file_overrides_and_flags_apply_in_order(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('name = "file"\n[inner]\nsize = [3, 4]\n')
    cfg = load_typed(Outer, _positive, path, {"inner.rate": 2}, ["name=flag", "inner.rate=none"])
    assert cfg == Outer(name="flag", inner=Inner(size=(3, 4), rate=None))


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_typed(Outer, _positive, None, {"colour": 1, "inner.size": [1], "inner.rate": -1}, ["oops"])
    assert err.value.problems == ["--set 'oops': expected key=value", "colour: unknown option (known: inner, name)",
                                  "inner.size: expected a list of 2 integers, got [1]", "inner.rate: must be > 0"]


def test_dict_round_trip_is_checked():
    assert typed_from_dict(Outer, {"inner": {"rate": 1}}, _positive) == Outer(inner=Inner(rate=1.0))
    with pytest.raises(ConfigError, match="inner: expected a table"):
        typed_from_dict(Outer, {"inner": 3}, _positive)
