"""Config loader: defaults <- recipe <- --set, typed checks naming the dotted path."""

from dataclasses import dataclass, field

import pytest

from lostcli.config import OptimConfig, TrainConfig, from_dict, load_config, parse_override, to_dict
from lostcli.errors import ConfigError
from lostcli.persist import save_config


@dataclass
class Inner:
    width: int = 64  # width
    dims: list[int] = field(default_factory=lambda: [1, 2])  # dims
    name: str | None = None  # optional


@dataclass
class Run:
    model: Inner = field(default_factory=Inner)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def test_defaults_recipe_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  width: 128\noptim:\n  lr: 0.001\n")
    cfg = load_config(Run, recipe, ["optim.lr=3e-4", "model.dims=[4, 5, 6]", "train.steps=7", "model.name=abc"])
    assert cfg.model.width == 128
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.model.dims == [4, 5, 6]
    assert cfg.train.steps == 7 and cfg.train.batch_size == 16
    assert cfg.model.name == "abc"


def test_int_accepted_as_float_but_not_reverse():
    assert load_config(Run, None, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError, match=r"^train\.steps: expected an integer"):
        load_config(Run, None, ["train.steps=1.5"])


@pytest.mark.parametrize(
    "override, path",
    [("model.widht=3", "model.widht: unknown key"), ("model.width=wide", "model.width: expected an integer"),
     ("model.dims=[1, x]", r"model.dims\[1\]: expected an integer"), ("train.ema_decay=[1]", "train.ema_decay"),
     ("nope.x=1", "nope: unknown key")],
)
def test_errors_name_the_dotted_path(override, path):
    with pytest.raises(ConfigError, match=path):
        load_config(Run, None, [override])


def test_recipe_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Run, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Run, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Run, listy)


def test_parse_override_and_round_trip(tmp_path):
    assert parse_override("a.b=true") == (["a", "b"], True)
    with pytest.raises(ConfigError):
        parse_override("novalue")
    cfg = load_config(Run, None, ["model.width=96"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(Run, tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert from_dict(Run, to_dict(cfg)).model.width == 96
