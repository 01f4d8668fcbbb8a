"""A saved policy checkpoint answers like the pipeline under plain transformers (issue 25, item 3): the user who
loads checkpoint-final with AutoTokenizer + AutoModelForCausalLM and calls apply_chat_template + generate with no
arguments gets the greedy answers the report measured."""
from contextlib import nullcontext

import pytest

import config
import data
import decoding
from plumbing import models
import sft

INTENTS = ["convert string '123' to integer", "sort list `xs` in descending order",
           "get the length of dictionary `d`", "remove all whitespace from string `s`",
           "open file 'a.txt' for reading and read its lines into a list"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    cfg = config.make_config("test")
    lm, tok = models.load_causal_lm(cfg.policy_model, seed=3)
    # tiny:llama ties lm_head to the embeddings, so at random init it echoes its last input token ("\n") and every
    # answer extracts to "": untie it and give the head large random weights, so answers differ by intent and
    # greedy argmaxes have margins far above float noise (batched left-padded vs one unpadded prompt).
    lm.config.tie_word_embeddings = False
    torch.manual_seed(3)
    lm = AutoModelForCausalLM.from_config(lm.config)
    with torch.no_grad():
        lm.lm_head.weight.normal_(0.0, 1.0)
    folder = tmp_path_factory.mktemp("checkpoint-final")
    sft.save_policy(lm, tok, folder, cfg)
    return folder, cfg, tok


def plain_transformers_answers(folder, intents):
    """What a user types: nothing from this project except extract_code (the report scores extracted code)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    answers, prompts = [], []
    for intent in intents:
        inputs = tok.apply_chat_template([{"role": "user", "content": intent}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**inputs)  # every setting from the checkpoint's generation_config.json
        prompts.append(inputs["input_ids"][0].tolist())
        answers.append(data.extract_code(tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)))
    return answers, prompts


def test_plain_transformers_reproduces_the_pipelines_greedy_answers(checkpoint):
    folder, cfg, _ = checkpoint
    lm, tok = models.load_causal_lm(str(folder), seed=cfg.seed)  # how stage_eval loads checkpoint-final
    fmt = data.resolve_prompt_format(tok, cfg.prompt_format)
    pipeline = [a[0] for a in decoding.decode_batches(lm, tok, fmt, INTENTS, cfg, nullcontext(), sample=False)]
    plain, prompts = plain_transformers_answers(folder, INTENTS)
    # The prompt tokens first: a missing or wrong system message shows here even if a random model ignored it.
    assert prompts == [tok(data.format_prompt(i, tok, "chat"), add_special_tokens=False)["input_ids"]
                       for i in INTENTS]
    assert plain == pipeline
    assert len(set(pipeline)) > 1, "the random model answers every intent alike: the comparison would be vacuous"


def test_without_the_saved_template_the_plain_prompt_differs(checkpoint):
    """The control: SmolLM2's own template inserts its generic system message, so the fix is what makes the
    prompts equal (this is the bug the issue reported: `'123'` instead of `int('123')`)."""
    _, _, tok = checkpoint
    user = [{"role": "user", "content": INTENTS[0]}]
    original = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert data.SYSTEM_PROMPT not in original
    assert original != data.format_prompt(INTENTS[0], tok, "chat")


def test_generation_config_is_the_evaluations_greedy_decoding(checkpoint):
    from transformers import GenerationConfig

    folder, cfg, tok = checkpoint
    gen = GenerationConfig.from_pretrained(folder)
    assert gen.do_sample is False
    assert gen.max_new_tokens == cfg.max_new_tokens == 12
    assert gen.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")


def test_template_wraps_once_keeps_explicit_system_messages_and_leaves_the_tokenizer_alone(checkpoint, tmp_path):
    folder, cfg, tok = checkpoint
    before = tok.chat_template
    wrapped = data.pipeline_chat_template(before)
    assert data.pipeline_chat_template(wrapped) == wrapped  # re-saving a loaded checkpoint does not wrap again
    assert before.count("{% for message in messages %}") == wrapped.count("{% for message in messages %}")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}]
    tok2 = models.load_tokenizer(str(folder))
    assert tok2.chat_template == wrapped
    assert tok2.apply_chat_template(msgs, tokenize=False) == tok.apply_chat_template(msgs, tokenize=False)
    assert tok.chat_template == before  # save_policy must not change the tokenizer the pipeline keeps using
    lm, tok3 = models.load_causal_lm(str(folder))
    sft.save_policy(lm, tok3, tmp_path, cfg)  # PPO saves checkpoints of a policy loaded from checkpoint-sft
    assert models.load_tokenizer(str(tmp_path)).chat_template == wrapped
