import json

import pytest

from mambacast import MambaConfig, TrainConfig, preset
from mambacast.config import PRESETS


def test_defaults_match_the_guide():
    c = MambaConfig()
    assert (c.d_model, c.d_state, c.d_conv, c.expand, c.num_layers) == (64, 16, 4, 2, 4)
    assert c.prediction_horizons == [1, 5, 10, 30]
    assert c.dt_rank_value == 4 and c.d_inner == 128
    t = TrainConfig()
    assert (t.epochs, t.batch_size, t.learning_rate, t.patience) == (50, 32, 0.001, 5)


@pytest.mark.parametrize("name, model, train", [
    ("default", (64, 16, 4), (50, 32, 0.001)),
    ("small", (32, 8, 2), (20, 16, 0.002)),
    ("large", (128, 32, 6), (100, 64, 0.0005)),
    ("high_variance", (96, 24, 5), (75, 32, 0.001)),
])
def test_presets_follow_the_tuning_table(name, model, train):
    m, t = preset(name)
    assert (m.d_model, m.d_state, m.num_layers) == model
    assert (t.epochs, t.batch_size, t.learning_rate) == train
    assert getattr(MambaConfig, name)() == m


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="huge.*default, small, large, high_variance"):
        preset("huge")
    assert set(PRESETS) == {"default", "small", "large", "high_variance"}


@pytest.mark.parametrize("field, value", [
    ("d_model", 0), ("d_model", -8), ("d_model", 3.5), ("d_state", 0), ("d_conv", -1),
    ("expand", 0), ("num_layers", 0), ("dt_rank", 0), ("dt_rank", "big"), ("dt_min", 0.0),
    ("dt_max", float("nan")), ("norm_eps", -1.0), ("d_model", True),
])
def test_bad_model_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}={value!r} is invalid"):
        MambaConfig(**{field: value})


@pytest.mark.parametrize("horizons, why", [
    ([], "non-empty"), ([1, 1, 5], "duplicates"), ([5, 1], "sorted"), ([0, 5], "positive"),
    ([-1], "positive"), ([1, 2.5], "positive integer"), ("1,5", "non-empty list"),
])
def test_bad_horizons(horizons, why):
    with pytest.raises(ValueError, match=f"prediction_horizons=.*{why}"):
        MambaConfig(prediction_horizons=horizons)


def test_dt_range_must_be_ordered():
    with pytest.raises(ValueError, match="dt_min=0.5 is invalid: must be below dt_max=0.1"):
        MambaConfig(dt_min=0.5)


@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("batch_size", -1), ("learning_rate", 0.0), ("learning_rate", float("inf")),
    ("validation_split", 1.0), ("validation_split", 0.0), ("lr_factor", 1.5), ("min_delta", -1e-3),
    ("clipnorm", 0), ("augmentation_rate", 2.0), ("seed", -1), ("sequence_length", 0),
])
def test_bad_train_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}={value!r} is invalid"):
        TrainConfig(**{field: value})


def test_json_round_trip():
    c = MambaConfig(d_model=32, prediction_horizons=[1, 3, 7, 14, 30], dt_rank=3)
    assert MambaConfig.from_json(c.to_json()) == c
    assert json.loads(c.to_json())["prediction_horizons"] == [1, 3, 7, 14, 30]
    t = TrainConfig(epochs=3, seed=7)
    assert TrainConfig.from_json(t.to_json()) == t


def test_unknown_keys_are_refused_when_loading():
    data = MambaConfig().to_dict() | {"d_modle": 32}
    with pytest.raises(ValueError, match=r"unknown MambaConfig key\(s\) \['d_modle'\]"):
        MambaConfig.from_dict(data)
    with pytest.raises(ValueError, match="JSON object"):
        MambaConfig.from_json("[1, 2]")


def test_a_preset_file_round_trips_and_overrides_the_defaults(tmp_path):
    from mambacast.config import save_preset

    model, train = MambaConfig(d_model=48, num_layers=3), TrainConfig(batch_size=64, sequence_length=30)
    path = save_preset(tmp_path / "tuned.json", model, train, about={"study": "s", "value": 0.5})
    assert preset(str(path)) == (model, train)
    partial = tmp_path / "partial.json"
    partial.write_text('{"model_config": {"d_model": 16}}')
    assert preset(str(partial)) == (MambaConfig(d_model=16), TrainConfig())


@pytest.mark.parametrize("text, match", [
    ("{", "is not valid JSON"),
    ("[1]", "must hold a JSON object"),
    ('{"model": {}}', r"has the key\(s\) \['model'\]"),
    ('{"about": "x"}', "a preset holds model_config and/or train_config"),
    ('{"model_config": []}', "model_config must be a JSON object"),
    ('{"model_config": {"d_model": 0}}', "model_config: d_model=0 is invalid"),
    ('{"train_config": {"epoch": 3}}', r"train_config: unknown TrainConfig key\(s\) \['epoch'\]"),
])
def test_a_bad_preset_file_names_the_file_and_the_problem(tmp_path, text, match):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"preset file {path}.*{match}"):
        preset(str(path))
    with pytest.raises(ValueError, match="does not exist"):
        preset(str(tmp_path / "missing.json"))
