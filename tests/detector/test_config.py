"""Recipes: bases, dotted overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from detector.config import TrainConfig
from detector.recipe import RecipeError, load_recipe, parse_override

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    "name", ["base", "shapes_tiny", "shapes_quickstart", "bccd_r18", "coco_r50_1x"]
)
def test_shipped_recipes_load(name: str) -> None:
    assert isinstance(load_recipe(CONFIGS / f"{name}.yaml"), TrainConfig)


def test_coco_recipe_is_the_papers_1x_schedule() -> None:
    cfg = load_recipe(CONFIGS / "coco_r50_1x.yaml")
    assert (cfg.solver.optimizer, cfg.solver.lr, cfg.solver.batch_size) == ("sgd", 0.01, 16)
    assert (cfg.solver.momentum, cfg.solver.weight_decay) == (0.9, 1e-4)
    assert (cfg.solver.max_iters, cfg.solver.steps) == (90_000, (60_000, 80_000))
    assert cfg.data.train_min_sizes == (800,) and cfg.model.backbone == "resnet50"
    assert (cfg.loss.alpha, cfg.loss.gamma) == (0.25, 2.0)


def test_base_values_are_overridden_at_any_depth(tmp_path: Path) -> None:
    (tmp_path / "child.yaml").write_text(f"base: {CONFIGS / 'base.yaml'}\nloss:\n  gamma: 1.0\n")
    cfg = load_recipe(tmp_path / "child.yaml")
    assert cfg.loss.gamma == 1.0 and cfg.loss.alpha == 0.25  # sibling keys survive


def test_dotted_overrides_parse_yaml_values() -> None:
    cfg = load_recipe(
        CONFIGS / "shapes_tiny.yaml",
        ["loss.gamma=1.5", "loss.alpha=[0.2, 0.3, 0.5]", "model.anchor_sizes=[8,16,32,64,128]"],
    )
    assert cfg.loss.gamma == 1.5
    assert cfg.loss.alpha == (0.2, 0.3, 0.5)
    assert cfg.model.anchor_sizes == (8, 16, 32, 64, 128)
    assert load_recipe(CONFIGS / "shapes_tiny.yaml", ["loss.alpha=null"]).loss.alpha is None


def test_unknown_key_names_full_path_and_allowed_keys() -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(CONFIGS / "shapes_tiny.yaml", ["loss.gammma=1"])
    message = str(err.value)
    assert "loss.gammma: unknown key" in message
    assert "alpha" in message and "gamma" in message


def test_wrong_type_and_literal_name_the_key_and_allowed_values() -> None:
    with pytest.raises(RecipeError, match=r"solver\.lr: .*number"):
        load_recipe(CONFIGS / "shapes_tiny.yaml", ["solver.lr=fast"])
    with pytest.raises(
        RecipeError, match=r"model\.backbone: .*'resnet18', 'resnet34', .*'mobilenet_v3_large'"
    ):
        load_recipe(CONFIGS / "shapes_tiny.yaml", ["model.backbone=vgg16"])
    with pytest.raises(RecipeError, match=r"loss\.gamma: .*greater than or equal to 0"):
        load_recipe(CONFIGS / "shapes_tiny.yaml", ["loss.gamma=-1"])


def test_budget_and_steps_are_checked() -> None:
    with pytest.raises(RecipeError, match="exactly one of max_iters and epochs"):
        load_recipe(CONFIGS / "shapes_tiny.yaml", ["solver.max_iters=100"])
    with pytest.raises(RecipeError, match="steps must be increasing"):
        load_recipe(CONFIGS / "shapes_tiny.yaml", ["solver.steps=[50]"])


def test_bad_files_and_overrides(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_recipe(tmp_path / "list.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")
    with pytest.raises(RecipeError, match=r"key\.path=value"):
        parse_override("gamma")
    with pytest.raises(RecipeError, match=r"loss\.gamma is a value"):
        load_recipe(CONFIGS / "shapes_tiny.yaml", ["loss.gamma.x=1"])


def test_unsafe_yaml_tags_are_refused(tmp_path: Path) -> None:
    (tmp_path / "evil.yaml").write_text("seed: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(tmp_path / "evil.yaml")


def test_configs_are_frozen() -> None:
    cfg = load_recipe(CONFIGS / "shapes_tiny.yaml")
    with pytest.raises(ValidationError):
        cfg.loss.gamma = 3.0  # type: ignore[misc]


def test_nested_update_merges_before_dotted_overrides() -> None:
    cfg = load_recipe(
        CONFIGS / "shapes_tiny.yaml",
        ["loss.gamma=3"],
        update={"loss": {"gamma": 1.0, "alpha": 0.5}, "solver": {"epochs": 2, "steps": [1]}},
    )
    assert (cfg.loss.gamma, cfg.loss.alpha, cfg.solver.epochs) == (3.0, 0.5, 2)
    assert cfg.model.backbone == "resnet18"  # untouched sections keep the file's values


_LAUGHS = "[&a [1,1,1,1,1,1,1,1,1,1]" + "".join(
    f", &{b} [{', '.join([f'*{a}'] * 10)}]" for a, b in zip("abcdefg", "bcdefgh", strict=True)
)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("solver.lr=.nan", r"solver\.lr: Input should be a finite number"),
        ("loss.gamma=.inf", r"loss\.gamma: Input should be a finite number"),
        ("loss.alpha=[0.2, .nan, 0.5]", r"loss\.alpha.*finite number"),
        ("model.anchor_sizes=[16, 32, 64, 128, .inf]", r"model\.anchor_sizes\.4: .*finite"),
        ("early_stopping={min_delta: -.inf}", r"early_stopping\.min_delta"),
        # Every integer of a recipe travels in the checkpoint; 10**700 cannot be read back.
        ("checkpoint_period_iters=" + "9" * 700, r"checkpoint_period_iters: .*2147483647"),
        ("seed=4294967296", r"seed: .*2147483647"),
        ("solver.warmup_iters=2147483648", r"solver\.warmup_iters: .*2147483647"),
        ("model.fpn_channels=65536", r"model\.fpn_channels: .*4096"),
        ("data.max_size=100000", r"data\.max_size: .*8192"),
        ("eval.metric=mAP", r"eval\.metric: .*unknown metric 'mAP'"),
        ("early_stopping={metric: AP/}", r"early_stopping\.metric: .*unknown metric"),
        ("loss.gamma=" + "[" * 5000 + "]" * 5000, "nests deeper than 16"),
        ("loss.gamma=" + "- " * 5000 + "x", "nests deeper than 16"),
        ("a" + ".a" * 40 + "=1", "the key nests deeper than 16"),
        (f"loss.gamma={_LAUGHS}]", "holds more than 100000 values"),
    ],
)
def test_values_the_training_cannot_use_are_refused(override: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        load_recipe(CONFIGS / "shapes_tiny.yaml", [override])


def test_metrics_evaluation_reports_are_accepted() -> None:
    for metric in ("AP", "AR100", "val_loss", "AP50/red blood cell", "AR100/a/b"):
        assert load_recipe(CONFIGS / "shapes_tiny.yaml", [f"eval.metric={metric}"])


def test_a_deeply_nested_update_is_refused_unread() -> None:
    deep: dict[str, object] = {"x": 1}
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = {"a": deep}
    with pytest.raises(RecipeError, match="nests deeper than 16"):
        load_recipe(CONFIGS / "shapes_tiny.yaml", update={"loss": deep})
