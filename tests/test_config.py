"""config.py: presets, typed --key=value overrides, one-line errors, and the do_sample guard."""
import dataclasses
import json

import pytest

import config
from plumbing import config_checks
from plumbing import config_cli

DOMAINS = config_checks.domains(config.Config)  # field -> its domain, from its knob() in config.py


def test_presets_resolve_and_keep_seed_defaults():
    for name in config.PRESETS:
        cfg = config.make_config(name)
        assert cfg.config_name == name
    quick = config.make_config("quick")
    assert (quick.do_sample, quick.temperature, quick.top_p) == (True, 0.8, 0.95)
    assert (quick.ppo_epochs, quick.batch_size, quick.reward_epochs) == (4, 4, 3)
    assert config.Config().learning_rate == 1e-5  # the seed's lr is the dataclass default; CPU presets lower it
    assert quick.conala_path == "./conala-corpus"


def test_good_overrides_are_typed(tmp_path):
    config.save_config(config.make_config("test"), tmp_path / "config.json")
    cfg, extras = config_cli.parse_cli(["--seed=7", "--temperature", "0.5", "--do_sample=yes",  # --config: the saved one
                                        "--resume", str(tmp_path), "--overwrite"], extra_flags=("resume=", "overwrite"))
    assert (cfg.seed, cfg.temperature, cfg.do_sample) == (7, 0.5, True)
    assert extras == {"resume": str(tmp_path), "overwrite": True}


@pytest.mark.parametrize("argv,message", [
    (["--lerning_rate=1e-4"], "unknown option --lerning_rate; valid options: config"),
    (["--config", "huge"], "unknown config 'huge'; valid: research, quick, cpu, test"),
    (["--seed=abc"], "--seed='abc': expected int"),
    (["--do_sample=maybe"], "expected a boolean"),
    (["--device=tpu"], "valid choices are auto, cpu, cuda, mps"),
    (["--stages=sft,rl"], "valid stages are sft, reward, ppo, eval"),
    (["--top_p=1.5"], "must be in (0, 1]"),
    (["--seed"], "--seed needs a value"),
])
def test_bad_arguments_are_one_line_errors(argv, message):
    with pytest.raises(config.ConfigError) as err:
        config_cli.parse_cli(argv)
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


# ----------------------------------------------------------------------------- every field's domain
def test_every_field_has_a_domain_and_presets_are_inside_them():
    assert [f.name for f in dataclasses.fields(config.Config)] == list(DOMAINS)
    assert DOMAINS["config_name"].options == tuple(config.PRESETS)
    for name in config.PRESETS:
        config.make_config(name)  # every preset value lies in its domain


BAD_VALUES = [(f.name, bad) for f in dataclasses.fields(config.Config)
              for bad in DOMAINS[f.name].bad_values(config.field_types()[f.name])]


@pytest.mark.parametrize("key,bad", BAD_VALUES, ids=[f"{k}={v!r}" for k, v in BAD_VALUES])
def test_out_of_domain_values_are_one_line_errors_naming_the_range(key, bad):
    with pytest.raises(config.ConfigError) as err:
        config.make_config("test", {key: bad})
    msg = str(err.value)
    assert msg.startswith(f"--{key}=") and DOMAINS[key].describe() in msg and "\n" not in msg


@pytest.mark.parametrize("key,bad", [(k, v) for k, v in BAD_VALUES if not isinstance(v, str) or "\0" not in v])
def test_out_of_domain_values_fail_from_the_command_line_too(key, bad):
    with pytest.raises(config.ConfigError, match="must be|valid"):
        config_cli.parse_cli(["--config", "test", f"--{key}={bad}"])


@pytest.mark.parametrize("overrides,message", [
    ({"seed": True}, "expected int"),  # bool is an int to Python, not to the config
    ({"temperature": "inf"}, "must be a finite number in [0.01, 100]"),
    ({"ppo_steps": "0"}, "--ppo_steps=0: must be in [1, 1000000]"),
    ({"ppo_steps": "-1"}, "--ppo_steps=-1: must be in [1, 1000000]"),
    ({"test_limit": "-3"}, "--test_limit=-3: must be in [0, 1000000]"),
    ({"save_every": "-1"}, "--save_every=-1: must be in [0, 1000000]"),
    ({"reward_clip_min": "0.6", "reward_clip_max": "0.5"}, "--reward_clip_min=0.6 must be < --reward_clip_max=0.5"),
    ({"w_rm": "0"}, "PPO would optimise a constant reward"),
    ({"batch_size": "6", "mini_batch_size": "4"}, "batch_size must be a multiple of mini_batch_size"),
])
def test_silently_wrong_values_and_cross_field_rules(overrides, message):
    with pytest.raises(config.ConfigError) as err:
        config.make_config("test", overrides)
    assert message in str(err.value)
    config.make_config("test", {**overrides, "stages": "sft,eval"}) if message.startswith("PPO") else None


@pytest.mark.parametrize("text,message", [
    ("[1, 2]", "expected a JSON object of config keys, got list"),
    ('{"seed": 1', "cannot read config"),
    ("", "cannot read config"),
    ('{"config_name": ["x"]}', "unknown config"),
    ('{"seed": -5}', "--seed=-5: must be in [0, 2147483647]"),
])
def test_a_broken_saved_config_names_its_file(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(config.ConfigError) as err:
        config.load_config(tmp_path / "config.json")
    assert str(tmp_path / "config.json") in str(err.value) and message in str(err.value)
    (tmp_path / "config.json").write_bytes(b'{"seed": "\xff"}')
    with pytest.raises(config.ConfigError, match="cannot read config"):
        config.load_config(tmp_path / "config.json")


def test_resume_overrides_apply_to_the_saved_config_not_to_the_default_preset(tmp_path):
    # `--resume DIR --advantage=grpo` once failed: the override was first checked against `quick` (k = 1).
    config.save_config(config.make_config("cpu", {"seed": 3}), tmp_path / "config.json")
    cfg, extras = config_cli.parse_cli(["--resume", str(tmp_path), "--advantage=grpo"], extra_flags=("resume=",))
    assert (cfg.config_name, cfg.advantage, cfg.samples_per_prompt, cfg.seed) == ("cpu", "grpo", 4, 3)
    assert extras == {"resume": str(tmp_path)}
    with pytest.raises(config.ConfigError, match="no config.json there"):
        config_cli.parse_cli(["--resume", str(tmp_path / "nope")], extra_flags=("resume=",))


# ----------------------------------------------------------------------------- the domains that matter, by hand
# Written out here, not read from config_checks.domains: a wrong domain in config.py must fail these. Each entry: the
# range in words (as the error prints it), values that must be accepted, and values that must be refused.
LR = ("in (0, 1]", [1e-9, 1e-5, 1.0], [0.0, -1e-5, 1.5])  # Adam steps: > 0; above 1 is a typo, never a choice
BATCH = ("in [1, 1000000]", [1, 64], [0, -4, 2_000_000])  # every open domain has an upper bound of 10^6
HAND_DOMAINS = {
    "learning_rate": LR,
    "vf_learning_rate": LR,
    "sft_learning_rate": LR,
    "reward_learning_rate": LR,
    "batch_size": BATCH,
    "mini_batch_size": BATCH,
    "micro_batch_size": BATCH,
    "sft_batch_size": BATCH,
    "sft_micro_batch_size": BATCH,
    "reward_batch_size": BATCH,
    "eval_batch_size": BATCH,
    "ppo_epochs": BATCH,
    "samples_per_prompt": BATCH,  # k: 1 for GAE, >= 2 for a group baseline (a cross-field rule)
    "temperature": ("in [0.01, 100]", [0.01, 0.7, 5.0], [0.0, -0.5, 1e-3, 1e-40, 101.0]),  # logits / T: fp32-safe
    "top_p": ("in (0, 1]", [1e-3, 0.95, 1.0], [0.0, -0.1, 1.01]),
    "cliprange": ("in (0, 1]", [0.01, 0.2, 1.0], [0.0, -0.2, 1.2]),  # ratio clip [1 - eps, 1 + eps]
    "cliprange_value": ("in (0, 1000000]", [0.2, 10.0], [0.0, -0.2, 1e39]),  # 1e39 overflowed fp32
    "init_kl_coef": ("in [0, 1000000]", [0.0, 0.1, 10.0], [-0.01, 1e7]),  # beta; 0 = no KL penalty
    "kl_target": ("in (0, 1000000]", [0.1, 6.0], [0.0, -1.0]),
    "target_kl": ("in [0, 1000000]", [0.0, 0.02], [-0.01]),  # 0 = off
    "gamma": ("in [0, 1]", [0.0, 1.0], [-0.1, 1.1]),
    "lam": ("in [0, 1]", [0.0, 0.95, 1.0], [-0.1, 1.1]),
    "vf_coef": ("in [0, 1000000]", [0.0, 0.1], [-0.1]),
    "max_grad_norm": ("in (0, 1000000]", [0.5, 1.0], [0.0, -1.0]),
}
HAND_BAD = [(k, bad) for k, (_, _, bads) in HAND_DOMAINS.items() for bad in bads]


def test_hand_domains_are_the_configs():
    for key, (words, good, _) in HAND_DOMAINS.items():
        assert DOMAINS[key].describe() == words, key
        for value in good:
            assert DOMAINS[key].problem(value) is None, (key, value)
    for key in ("learning_rate", "temperature", "top_p", "cliprange", "init_kl_coef"):
        for value in (float("nan"), float("inf")):
            with pytest.raises(config.ConfigError, match=f"--{key}={value}: must be a finite number"):
                config.make_config("test", {key: value})


@pytest.mark.parametrize("key,bad", HAND_BAD, ids=[f"{k}={v!r}" for k, v in HAND_BAD])
def test_hand_written_bad_values_give_the_hand_written_error(key, bad):
    with pytest.raises(config.ConfigError) as err:
        config.make_config("test", {key: bad})
    assert str(err.value) == f"--{key}={bad}: must be {HAND_DOMAINS[key][0]}"
