"""The ImageNet recipes in configs/cls/: each loads into TrainConfig, names a vizoo family and states its key values."""

import re
from pathlib import Path

import pytest
import yaml

from vizoo.train.config import TrainConfig, load_yaml_config

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "configs" / "cls").glob("*.yaml"))
# The values a user must see in the recipe itself, not inherit from TrainConfig's defaults.
EXPLICIT_KEYS = ("epochs", "batch_size", "lr_base", "lr_base_size", "weight_decay", "warmup_epochs")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _ids(paths):
    return [p.stem for p in paths]


def test_there_are_recipes():
    assert RECIPES, "no recipes found in configs/cls/"


@pytest.mark.parametrize("path", RECIPES, ids=_ids(RECIPES))
def test_recipe_loads_into_train_config(path):
    cfg = TrainConfig(**load_yaml_config(path))
    assert cfg.epochs > 0 and cfg.lr_base > 0 and cfg.lr_base_size > 0
    assert 0.0 <= cfg.warmup_epochs < cfg.epochs
    assert cfg.min_lr < cfg.lr_base and cfg.warmup_lr < cfg.lr_base


@pytest.mark.parametrize("path", RECIPES, ids=_ids(RECIPES))
def test_recipe_names_a_vizoo_family(path):
    module = REPO / "vizoo" / "backbones" / f"{path.stem}.py"
    assert module.is_file(), f"{path.name}: no family module vizoo/backbones/{path.stem}.py for this recipe"


@pytest.mark.parametrize("path", RECIPES, ids=_ids(RECIPES))
def test_recipe_states_its_key_values(path):
    text = path.read_text()
    raw = yaml.safe_load(text)
    missing = [k for k in EXPLICIT_KEYS if k not in raw]
    assert not missing, f"{path.name} must set {', '.join(missing)} explicitly (not rely on TrainConfig defaults)"
    # lr_base is given at a global batch reachable with a whole number of processes of batch_size each.
    assert raw["lr_base_size"] % raw["batch_size"] == 0, f"{path.name}: lr_base_size is not a multiple of batch_size"
    # A header comment says where the values come from.
    assert text.lstrip().startswith("#"), f"{path.name} must start with a comment citing its official source"


@pytest.mark.parametrize("path", RECIPES, ids=_ids(RECIPES))
def test_recipe_numbers_are_numbers(path):
    """PyYAML reads ``1e-3`` (no dot) as a string: every number must be written so that it parses as one."""

    def walk(key, value):
        if isinstance(value, str):
            assert not _NUMBER.match(value.strip()), f"{path.name}: {key}: {value!r} is a string; write e.g. 1.0e-3"
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(key, v)

    for key, value in yaml.safe_load(path.read_text()).items():
        walk(key, value)
