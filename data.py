"""CoNaLa: load and validate, split by question, format prompts, and batch for generation or teacher
forcing.

CoNaLa (Yin et al. 2018, conala-corpus v1.1) pairs a StackOverflow intent with a short Python
snippet:
  {"intent": str, "rewritten_intent": str | null, "snippet": str, "question_id": int}
train has 2379 records and test 500. The prompt uses the curated `rewritten_intent` and falls back
to `intent`.
Your own data: a JSON list of {"intent", "snippet"} records (rewritten_intent and question_id
optional), given as --train_file / --test_file or as conala-{train,test}.json under --conala_path.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

EXPECTED_COUNTS = {"train": 2379, "test": 500}
# Input limits, checked at load so a hostile file fails in milliseconds instead of in the tokenizer
# (a 10 MB intent once took 156 s and 5.7 GB). CoNaLa v1.1's longest intent is 200 characters and
# its longest snippet 529.
MAX_TEXT_CHARS = 2000  # per intent, rewritten_intent or snippet
MAX_FILE_BYTES = 64 * 2**20  # per data file; conala-train.json is 0.6 MB
# Our own short system message: SmolLM2's chat template otherwise inserts a generic one (~20
# tokens per example), and this one also asks for the CoNaLa answer style: code only, no
# prose, no markdown.
SYSTEM_PROMPT = "Answer with one line of Python code only."


class DataError(ValueError):
    """A user-facing data problem, printed as one line: `error: <file>: record <i>: <problem>`."""


@dataclass(frozen=True)
class Example:
    question_id: int
    intent: str  # rewritten_intent if present, else intent: what the prompt shows
    snippet: str  # the reference code


# --------------------------------------------------------------------------- loading and validation
def validate_record(rec, where: str) -> Example:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for key in ("intent", "snippet"):
        if key not in rec:
            raise DataError(f"{where}: has no {key!r}")
    rec = {"rewritten_intent": None} | rec  # optional: only CoNaLa has curated rewrites
    if not isinstance(rec["intent"], str):
        raise DataError(f"{where}: 'intent' must be a string, got {type(rec['intent']).__name__}")
    if rec["rewritten_intent"] is not None and not isinstance(rec["rewritten_intent"], str):
        raise DataError(f"{where}: 'rewritten_intent' must be a string or null, "
                        f"got {type(rec['rewritten_intent']).__name__}")
    if not isinstance(rec["snippet"], str) or not rec["snippet"].strip():
        raise DataError(f"{where}: 'snippet' must be a non-empty string")
    for key in ("intent", "rewritten_intent", "snippet"):
        if rec[key] is not None and not rec[key].isascii():
            try:
                # "\ud800" is valid JSON but no Unicode text: the tokenizer and every
                # UTF-8 file refuse it
                rec[key].encode("utf-8")
            except UnicodeEncodeError as e:
                raise DataError(f"{where}: {key!r} holds a lone surrogate "
                                f"({rec[key][e.start]!r} at character {e.start}), "
                                "not Unicode text; fix that escape") from None
        if rec[key] is not None and len(rec[key]) > MAX_TEXT_CHARS:
            raise DataError(f"{where}: {key!r} has {len(rec[key])} characters, "
                            f"over the limit of {MAX_TEXT_CHARS} (data.MAX_TEXT_CHARS)")
    intent = rec["rewritten_intent"] if rec["rewritten_intent"] is not None else rec["intent"]
    if not intent.strip():
        raise DataError(f"{where}: both 'rewritten_intent' and 'intent' are empty")
    qid = rec.get("question_id", intent_id(rec["intent"]))
    if not isinstance(qid, int) or isinstance(qid, bool):
        raise DataError(f"{where}: 'question_id' must be an integer, got {type(qid).__name__}")
    return Example(question_id=qid, intent=intent.strip(), snippet=rec["snippet"])


def intent_id(intent: str) -> int:
    """A record without question_id is grouped by its intent text: the train/validation split keeps
    every record of one intent on one side (as question_id does for CoNaLa), and the id is the same
    on every machine."""
    return int.from_bytes(hashlib.sha256(intent.strip().encode()).digest()[:6], "big")


def load_conala_file(path: str | Path) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (copy CoNaLa v1.1 there, or set --conala_path or "
                        "--train_file/--test_file)")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DataError(f"{path}: {path.stat().st_size} bytes, over the limit of {MAX_FILE_BYTES} "
                        "(data.MAX_FILE_BYTES)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); "
                        "save it as UTF-8") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror})") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: "
                        f"{e.msg}") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply; "
                        "a CoNaLa file is a list of flat records") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    if not records:
        raise DataError(f"{path}: the record list is empty")
    return [validate_record(rec, f"{path}: record {i}") for i, rec in enumerate(records)]


def data_files(cfg) -> tuple[Path, Path]:
    """(train, test) paths: --train_file / --test_file where given, else conala-{train,test}.json in
    conala_path."""
    root = Path(cfg.conala_path)
    return (Path(cfg.train_file) if cfg.train_file else root / "conala-train.json",
            Path(cfg.test_file) if cfg.test_file else root / "conala-test.json")


def load_conala(conala_path: str | Path) -> tuple[list[Example], list[Example]]:
    root = Path(conala_path)
    return load_conala_file(root / "conala-train.json"), load_conala_file(root / "conala-test.json")


def is_validation_question(question_id: int, val_fraction: float) -> bool:
    """Deterministic, seed-free split: a question goes to validation when its sha256 falls below the
    fraction. Every record of one question lands on the same side, so no question leaks between
    train and validation."""
    h = int.from_bytes(hashlib.sha256(str(question_id).encode()).digest()[:8], "big")
    return h / 2**64 < val_fraction


def split_train_val(examples: list[Example],
                    val_fraction: float) -> tuple[list[Example], list[Example]]:
    train = [e for e in examples if not is_validation_question(e.question_id, val_fraction)]
    val = [e for e in examples if is_validation_question(e.question_id, val_fraction)]
    return train, val


def load_splits(cfg) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, val, test) with the config's limits applied (limits cut after the split, so val is
    stable)."""
    train_file, test_file = data_files(cfg)
    train_all, test = load_conala_file(train_file), load_conala_file(test_file)
    train, val = split_train_val(train_all, cfg.val_fraction)
    if not train:
        raise DataError(f"{train_file}: --val_fraction={cfg.val_fraction} holds out all "
                        f"{len(train_all)} train records, none is left to train on; lower it")
    if cfg.train_limit:
        train = train[: cfg.train_limit]
        val = val[: max(8, cfg.train_limit // 8)]  # keep validation proportionate to a subset run
    if cfg.test_limit:
        test = test[: cfg.test_limit]
    return train, val, test


# ----------------------------------------------------------------------------- prompts
def resolve_prompt_format(tokenizer, requested: str = "auto") -> str:
    if requested == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if requested == "chat" and not getattr(tokenizer, "chat_template", None):
        raise DataError("--prompt_format=chat but the policy tokenizer has no chat template; "
                        "use plain or auto")
    return requested


def format_prompt(intent: str, tokenizer, fmt: str) -> str:
    """The one place where an intent becomes policy input, for a chat/instruct model or a plain
    causal LM."""
    if fmt == "chat":
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": intent}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"# Task: {intent}\n# Python code (one line):\n"


# Marks a template already wrapped by pipeline_chat_template, so re-saving a checkpoint does not
# wrap it twice.
TEMPLATE_MARK = "{#- rlhf.py: with no system message, the pipeline's own (data.SYSTEM_PROMPT) -#}"


def pipeline_chat_template(template: str) -> str:
    """`template` with SYSTEM_PROMPT inserted when a conversation has no system message, so plain
    `apply_chat_template([{"role": "user", "content": intent}], add_generation_prompt=True)` gives
    the very prompt format_prompt gives. A conversation that brings its own system message (the
    pipeline's does) renders as before."""
    if template.startswith(TEMPLATE_MARK):
        return template
    return (TEMPLATE_MARK + "{%- if not messages or messages[0]['role'] != 'system' %}"
            "{%- set messages = "
            f"[{{'role': 'system', 'content': {json.dumps(SYSTEM_PROMPT)}}}] + messages %}}"
            f"{{%- endif %}}" + template)


def save_tokenizer_and_generation(lm, tokenizer, folder: str | Path, cfg) -> None:
    """The checkpoint answers like the pipeline under plain transformers: the tokenizer with
    pipeline_chat_template (chat format only; a plain-format policy has no template to carry it) and
    a generation_config.json with the evaluation's greedy decoding (do_sample False, max_new_tokens,
    EOS = the tokenizer's). Neither changes the pipeline, which passes its system message and every
    generation setting explicitly; objects are left as found."""
    import copy

    from transformers import GenerationConfig

    template = tokenizer.chat_template
    # a str template (not named sets)
    if resolve_prompt_format(tokenizer, cfg.prompt_format) == "chat" and isinstance(template, str):
        tokenizer.chat_template = pipeline_chat_template(template)
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.chat_template = template
    gen = copy.deepcopy(lm.generation_config) if lm.generation_config is not None \
        else GenerationConfig()
    gen.update(do_sample=False, temperature=None, top_p=None, top_k=None,
               max_new_tokens=cfg.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    gen.save_pretrained(folder)


def format_target(snippet: str, tokenizer) -> str:
    """The SFT target: the snippet then EOS, so the model learns to stop after the code.
    For SmolLM2's chat template EOS is <|im_end|>, the token that closes an assistant turn."""
    return snippet + tokenizer.eos_token


def extract_code(generated: str) -> str:
    """Generated text -> the predicted snippet, the CoNaLa answer style. Drops a markdown fence if
    the model wrote one, then keeps the first non-empty line, plus the indented block under it when
    that line opens a block (`if ...:`). The calibration run kept the first line only."""
    text = generated
    if "```" in text:
        inner = text.split("```")[1]
        lang, _, body = inner.partition("\n")  # "```python\n..." -> drop the language tag
        text = body if lang.strip().isidentifier() else inner
    lines = [ln for ln in text.split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        return ""
    out = [lines[0].rstrip()]
    if out[0].endswith(":"):
        out += [ln.rstrip() for ln in _takewhile_indented(lines[1:])]
    return "\n".join(out).strip()


def _takewhile_indented(lines: list[str]) -> list[str]:
    block = []
    for ln in lines:
        if not ln.startswith((" ", "\t")) or not ln.strip():
            break
        block.append(ln)
    return block


# ----------------------------------------------------------------------------- batching
def encode_prompts(prompts: list[str], tokenizer, max_len: int) -> list[list[int]]:
    """Token ids per prompt, left-truncated so the end of the prompt (the generation header) always
    survives."""
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    return [x[-max_len:] for x in ids]


def collate_left(seqs: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left padding for generation: every row's last token sits at the same position, where sampling
    starts."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)  # [B, T]
    for i, s in enumerate(seqs):
        if s:
            input_ids[i, width - len(s):] = torch.tensor(s)
            attention_mask[i, width - len(s):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def collate_right(prompts: list[list[int]], targets: list[list[int]], pad_id: int,
                  max_len: int) -> dict[str, torch.Tensor]:
    """Right padding for teacher forcing. labels = -100 on prompt and padding, so the loss is on the
    snippet only. Over-long examples lose prompt tokens from the left first, then target tokens from
    the right."""
    rows = []
    for p, t in zip(prompts, targets):
        t = t[:max_len]
        p = p[-(max_len - len(t)):] if max_len > len(t) else []
        rows.append((p, t))
    width = max(len(p) + len(t) for p, t in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, T]
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # [B, T]
    for i, (p, t) in enumerate(rows):
        n = len(p) + len(t)
        input_ids[i, :n] = torch.tensor(p + t)
        attention_mask[i, :n] = 1
        labels[i, len(p):n] = torch.tensor(t)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def sft_batch(examples: list[Example], tokenizer, fmt: str,
              max_len: int) -> dict[str, torch.Tensor]:
    prompts = [format_prompt(e.intent, tokenizer, fmt) for e in examples]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    t_ids = tokenizer([format_target(e.snippet, tokenizer) for e in examples],
                      add_special_tokens=False)["input_ids"]
    return collate_right(p_ids, t_ids, tokenizer.pad_token_id, max_len)


def generation_batch(intents: list[str], tokenizer, fmt: str,
                     max_prompt_len: int) -> dict[str, torch.Tensor]:
    prompts = [format_prompt(i, tokenizer, fmt) for i in intents]
    return collate_left(encode_prompts(prompts, tokenizer, max_prompt_len), tokenizer.pad_token_id)
