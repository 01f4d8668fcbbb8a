"""data.py: validation messages on broken files, the question-level split, prompt format, and batching."""
import json

import pytest

import data
from plumbing import models
from conftest import ROOT


def write(tmp_path, payload, raw=False):
    p = tmp_path / "conala-train.json"
    p.write_text(payload if raw else json.dumps(payload))
    return p


GOOD = {"intent": "sort a list", "rewritten_intent": "sort list `l`", "snippet": "sorted(l)", "question_id": 1}


@pytest.mark.parametrize("payload,raw,message", [
    ("", True, "file is empty"),
    ("[{\"intent\": ", True, "invalid JSON at line 1"),
    ({"a": 1}, False, "expected a JSON list of records, got dict"),
    ([], False, "the record list is empty"),
    ([GOOD, "text"], False, "record 1: expected a JSON object, got str"),
    ([GOOD, {k: v for k, v in GOOD.items() if k != "snippet"}], False, "record 1: has no 'snippet'"),
    ([dict(GOOD, snippet="  ")], False, "record 0: 'snippet' must be a non-empty string"),
    ([dict(GOOD, intent=3)], False, "record 0: 'intent' must be a string, got int"),
    ([dict(GOOD, rewritten_intent=["x"])], False, "record 0: 'rewritten_intent' must be a string or null, got list"),
    ([GOOD, GOOD, {k: v for k, v in GOOD.items() if k != "intent"}], False, "record 2: has no 'intent'"),
])
def test_broken_files_name_file_record_and_problem(tmp_path, payload, raw, message):
    path = write(tmp_path, payload, raw)
    with pytest.raises(data.DataError) as err:
        data.load_conala_file(path)
    assert str(path) in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(data.DataError, match="file not found"):
        data.load_conala_file(tmp_path / "nope.json")


def test_rewritten_intent_falls_back_to_intent(tmp_path):
    path = write(tmp_path, [GOOD, dict(GOOD, rewritten_intent=None)])
    a, b = data.load_conala_file(path)
    assert a.intent == "sort list `l`" and b.intent == "sort a list"


def test_real_corpus_counts_and_split_has_no_shared_question():
    train, test = data.load_conala(ROOT / "conala-corpus")
    assert (len(train), len(test)) == (2379, 500)
    tr, val = data.split_train_val(train, 0.1)
    assert len(tr) + len(val) == 2379 and 0.05 < len(val) / 2379 < 0.15
    assert not {e.question_id for e in tr} & {e.question_id for e in val}
    assert data.split_train_val(train, 0.1) == (tr, val)  # deterministic, no seed involved


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer("embedded:smollm2-135m-instruct")


def test_chat_and_plain_prompt_formats(tok):
    chat = data.format_prompt("sort list `l`", tok, "chat")
    assert chat == ("<|im_start|>system\n" + data.SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\nsort list `l`"
                    "<|im_end|>\n<|im_start|>assistant\n")
    assert data.format_prompt("sort list `l`", tok, "plain") == "# Task: sort list `l`\n# Python code (one line):\n"
    assert data.resolve_prompt_format(tok, "auto") == "chat"


@pytest.mark.parametrize("code", [
    "df.to_csv('c:\\\\data\\\\pandas.txt', header=None,  index=None, sep=' ', mode='a')",
    "if (key in d):\n    pass",
    "re.sub('\\\\s+', '', s)\t# tab",
    "print('ünïcödé 文字')",
])
def test_embedded_tokenizer_round_trips_code(tok, code):
    ids = tok(code, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == code


def test_left_padding_for_generation_and_right_padding_for_teacher_forcing(tok):
    gen = data.collate_left([[5, 6, 7], [8]], pad_id=0)
    assert gen["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert gen["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    tf = data.collate_right([[5, 6], [8]], [[1, 2], [3]], pad_id=0, max_len=10)
    assert tf["input_ids"].tolist() == [[5, 6, 1, 2], [8, 3, 0, 0]]
    assert tf["labels"].tolist() == [[-100, -100, 1, 2], [-100, 3, -100, -100]]
    cut = data.collate_right([[5, 6, 7]], [[1, 2]], pad_id=0, max_len=3)  # prompt loses tokens from the left
    assert cut["input_ids"].tolist() == [[7, 1, 2]] and cut["labels"].tolist() == [[-100, 1, 2]]


def test_sft_labels_cover_snippet_and_eos_only(tok):
    ex = data.Example(question_id=1, intent="sort list `l`", snippet="sorted(l)")
    batch = data.sft_batch([ex], tok, "chat", max_len=128)
    target = batch["input_ids"][0][batch["labels"][0] != -100]
    assert tok.decode(target) == "sorted(l)" + tok.eos_token


@pytest.mark.parametrize("generated,expected", [
    ("sorted(l)\nprint(x)", "sorted(l)"),
    ("\n\nsorted(l)", "sorted(l)"),
    ("```python\nsorted(l)\n```\nThis sorts.", "sorted(l)"),
    ("if x:\n    pass\nprint(1)", "if x:\n    pass"),
    ("", ""),
    ("Here you go:\n```python", ""),  # a fence cut off by max_new_tokens
    ("```sorted(l)```", "sorted(l)"),
])
def test_extract_code(generated, expected):
    assert data.extract_code(generated) == expected


# ----------------------------------------------------------------------------- hostile files: one line, fast
@pytest.mark.parametrize("payload,message", [
    (b'[{"intent": "caf\xe9"}]', "not UTF-8 text (byte 16"),
    (b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply"),
    (json.dumps([dict(GOOD, intent="x" * (data.MAX_TEXT_CHARS + 1), rewritten_intent=None)]).encode(),
     f"record 0: 'intent' has {data.MAX_TEXT_CHARS + 1} characters, over the limit of {data.MAX_TEXT_CHARS}"),
    (json.dumps([GOOD, dict(GOOD, snippet="y" * 10**7)]).encode(), "record 1: 'snippet' has 10000000 characters"),
])
def test_hostile_files_fail_at_load_in_one_line(tmp_path, payload, message):
    path = tmp_path / "conala-train.json"
    path.write_bytes(payload)
    with pytest.raises(data.DataError) as err:
        data.load_conala_file(path)
    assert str(path) in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_FILE_BYTES", 100)
    path = write(tmp_path, [GOOD, GOOD])
    with pytest.raises(data.DataError, match="over the limit of 100"):
        data.load_conala_file(path)


@pytest.mark.parametrize("sums,message", [
    ("not-a-digest\n", "line 1 is not `<sha256>  <file>`"),
    ("a" * 64 + "\n", "line 1 is not"),
    ("\xff\n", "cannot read it"),
])
def test_diagnose_reports_a_malformed_sha256sums_as_one_failed_check(tmp_path, capsys, sums, message):
    import shutil

    import diagnose

    shutil.copytree(ROOT / "conala-corpus", tmp_path / "c")
    (tmp_path / "c" / "SHA256SUMS").write_text(sums, encoding="latin-1")
    results = diagnose.check_dataset(str(tmp_path / "c"))
    assert ("❌", "conala SHA256SUMS") in results and message in capsys.readouterr().out
    (tmp_path / "c" / "SHA256SUMS").write_bytes(b"\xff\xfe\n")
    assert ("❌", "conala SHA256SUMS") in diagnose.check_dataset(str(tmp_path / "c"))


def test_diagnose_and_rlhf_give_one_line_for_non_utf8_data(tmp_path):
    import subprocess
    import sys

    (tmp_path / "conala-train.json").write_bytes(b'[{"intent": "\xff"}]')
    (tmp_path / "conala-test.json").write_bytes(b"[" * 100_000)
    res = subprocess.run([sys.executable, str(ROOT / "rlhf.py"), "--config", "test", f"--conala_path={tmp_path}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert "not UTF-8 text" in res.stderr
    import diagnose

    results = diagnose.check_dataset(str(tmp_path))
    assert ("❌", "conala train") in results and ("❌", "conala test") in results
