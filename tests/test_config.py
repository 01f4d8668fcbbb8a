"""config.py: presets, typed --key=value overrides, one-line errors, and the do_sample guard."""
import json

import pytest

import config


def test_presets_resolve_and_keep_seed_defaults():
    for name in config.PRESETS:
        cfg = config.make_config(name)
        assert cfg.config_name == name
    quick = config.make_config("quick")
    assert (quick.do_sample, quick.temperature, quick.top_p) == (True, 0.8, 0.95)
    assert (quick.ppo_epochs, quick.learning_rate, quick.batch_size, quick.reward_epochs) == (4, 1e-5, 4, 3)
    assert quick.conala_path == "./conala-corpus"


def test_good_overrides_are_typed():
    cfg, extras = config.parse_cli(["--config", "test", "--seed=7", "--temperature", "0.5", "--do_sample=yes",
                                    "--resume", "out/x", "--overwrite"], extra_flags=("resume=", "overwrite"))
    assert (cfg.seed, cfg.temperature, cfg.do_sample) == (7, 0.5, True)
    assert extras == {"resume": "out/x", "overwrite": True}


@pytest.mark.parametrize("argv,message", [
    (["--lerning_rate=1e-4"], "unknown option --lerning_rate; valid options: config"),
    (["--config", "huge"], "unknown config 'huge'; valid: research, quick, test"),
    (["--seed=abc"], "--seed='abc': expected int"),
    (["--do_sample=maybe"], "expected a boolean"),
    (["--device=tpu"], "valid choices are auto, cpu, cuda, mps"),
    (["--stages=sft,rl"], "valid stages are sft, reward, ppo, eval"),
    (["--top_p=1.5"], "must be in (0, 1]"),
    (["--seed"], "--seed needs a value"),
])
def test_bad_arguments_are_one_line_errors(argv, message):
    with pytest.raises(config.ConfigError) as err:
        config.parse_cli(argv)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_do_sample_false_is_rejected_for_ppo_with_the_reason():
    with pytest.raises(config.ConfigError, match="PPO learns from the variation between sampled responses"):
        config.make_config("quick", {"do_sample": "false"})
    cfg = config.make_config("quick", {"do_sample": "false", "stages": "sft,eval"})  # fine without PPO
    assert cfg.do_sample is False


def test_config_round_trips_through_json(tmp_path):
    cfg = config.make_config("test", {"seed": "3"})
    config.save_config(cfg, tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 3
    assert config.load_config(tmp_path / "config.json") == cfg


def test_every_field_has_a_comment():
    src = open(config.__file__).read().split("class Config:")[1].split("\n\n\n")[0]
    for f in config.field_types():
        decl = next(ln for ln in src.splitlines() if ln.strip().startswith(f"{f}:"))
        assert "  # " in decl, f"field {f} has no comment"
