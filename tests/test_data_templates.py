"""Prompt templates: every required one exists, prompt/response split exactly, special slots."""

import argparse
import re

import pytest
from transformers import AutoTokenizer

from data_helpers import demo  # noqa: F401
from modellink.data.templates import TEMPLATES, get_template
from modellink.data.tokenizers import add_tokenizer_arguments, build_tokenizer

REQUIRED = {"empty", "default", "alpaca", "llama2", "llama3", "chatml", "qwen", "qwen3", "mistral", "mixtral",
            "gemma", "chatglm3", "chatglm3_system", "chatglm2", "glm4", "chatml_de", "baichuan2", "cpm",
            "deepseek2", "deepseek2-lite", "minicpm3"}
CONVERSATION = [{"role": "user", "content": "1 + 2 ="}, {"role": "assistant", "content": "3"},
                {"role": "user", "content": "2 + 2 ="}, {"role": "assistant", "content": "4"}]


@pytest.fixture(scope="module")
def tokenizer(demo):  # noqa: F811
    parser = argparse.ArgumentParser()
    add_tokenizer_arguments(parser)
    return build_tokenizer(parser.parse_args(["--tokenizer-type", "PretrainedFromHF",
                                              "--tokenizer-name-or-path", demo["tokenizer"]]))


def test_required_templates_exist():
    assert REQUIRED <= set(TEMPLATES)
    with pytest.raises(ValueError, match="unknown prompt type 'nope'; known: alpaca"):
        get_template("nope")


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_turns_concatenate_to_the_whole_conversation(tokenizer, name):
    template = get_template(name)
    turns = template.encode_multiturn(tokenizer, CONVERSATION)
    assert len(turns) == 2
    responses = [tokenizer.detokenize(r) for _, r in turns]
    assert responses[0].lstrip("\n").startswith("3") and responses[1].lstrip("\n").startswith("4")
    prompts = [tokenizer.detokenize(p) for p, _ in turns]
    assert "1 + 2 =" in prompts[0] and "2 + 2 =" in prompts[1]
    # The first answer is not in turn 2's prompt (markers such as <reserved_103> aside).
    assert "3" not in re.sub(r"<[^<>]*>", "", prompts[1])
    prompt, response = template.encode_oneturn(tokenizer, CONVERSATION)
    assert prompt == turns[0][0] + turns[0][1] + turns[1][0] and response == turns[1][1]
    generation = template.encode_prompt(tokenizer, CONVERSATION[:3])
    assert generation == prompt


def test_exact_text_of_common_templates(tokenizer):
    hf = tokenizer.hf_tokenizer
    expect = {
        "qwen": ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n1 + 2 =<|im_end|>\n"
                 "<|im_start|>assistant\n", "3<|im_end|>"),
        "qwen3": ("<|im_start|>user\n1 + 2 =<|im_end|>\n<|im_start|>assistant\n", "3<|im_end|>"),
        "llama2": ("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n1 + 2 = [/INST]", "3</s>"),
        "mistral": ("<s>[INST] 1 + 2 = [/INST]", "3</s>"),
        "llama3": ("<s><|start_header_id|>user<|end_header_id|>\n\n1 + 2 =<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n", "3<|eot_id|>"),
        "gemma": ("<s><start_of_turn>user\n1 + 2 =<end_of_turn>\n<start_of_turn>model\n", "3</s>"),
        "chatglm3": ("[gMASK]sop<|user|>\n1 + 2 =<|assistant|>", "\n3</s>"),
        "default": ("Human: 1 + 2 =\nAssistant:", "3</s>"),
        "glm4": ("[gMASK]<sop><|user|>\n1 + 2 =<|assistant|>", "\n3</s>"),
        "chatglm2": ("[gMASK]sop[Round 1]\n\n问：1 + 2 =\n\n答：", "3</s>"),
        "deepseek2": ("<s>User: 1 + 2 =\n\nAssistant:", "3</s>"),
        "chatml_de": ("<|im_start|>system\nDu bist ein freundlicher und hilfsbereiter KI-Assistent.<|im_end|>\n"
                      "<|im_start|>user\n1 + 2 =<|im_end|>\n<|im_start|>assistant\n", "3<|im_end|>"),
    }
    for name, (prompt, response) in expect.items():
        system = "Be brief." if name == "llama2" else None
        turns = get_template(name).encode_multiturn(tokenizer, CONVERSATION[:2], system)
        assert (hf.decode(turns[0][0]), hf.decode(turns[0][1])) == (prompt, response), name


def test_chatglm2_numbers_rounds_from_one(tokenizer):
    hf = tokenizer.hf_tokenizer
    turns = get_template("chatglm2").encode_multiturn(tokenizer, CONVERSATION)
    assert hf.decode(turns[1][0]) == "\n\n[Round 2]\n\n问：2 + 2 =\n\n答："
    leaked = get_template("chatglm2").encode_multiturn(tokenizer, [{"role": "user", "content": "{{idx}}"}])
    assert "[Round 1]" in hf.decode(leaked[0][0]) and "{{idx}}" in hf.decode(leaked[0][0])


def test_pieces_are_encoded_separately(tokenizer):
    hf = AutoTokenizer.from_pretrained(tokenizer.hf_tokenizer.name_or_path)
    prompt, response = get_template("alpaca").encode_oneturn(tokenizer, CONVERSATION[:2])
    assert response == hf.encode("3", add_special_tokens=False) + [hf.eos_token_id]
    assert prompt == hf.encode(get_template("alpaca").default_system, add_special_tokens=False) + hf.encode(
        "### Instruction:\n1 + 2 =\n\n### Response:\n", add_special_tokens=False)


def test_special_token_slots_use_the_vocabulary(tokenizer, tmp_path):
    hf = AutoTokenizer.from_pretrained(tokenizer.hf_tokenizer.name_or_path)
    hf.add_special_tokens({"additional_special_tokens": ["<|im_end|>", "<|user|>"]})
    hf.save_pretrained(tmp_path)
    parser = argparse.ArgumentParser()
    add_tokenizer_arguments(parser)
    extended = build_tokenizer(parser.parse_args(["--tokenizer-type", "PretrainedFromHF",
                                                  "--tokenizer-name-or-path", str(tmp_path)]))
    im_end, user = extended.token_to_id("<|im_end|>"), extended.token_to_id("<|user|>")
    _, response = get_template("chatml").encode_oneturn(extended, CONVERSATION[:2])
    assert response[-1] == im_end  # replace_eos: the stop word ends the response
    prompt, _ = get_template("chatglm3").encode_oneturn(extended, CONVERSATION[:2])
    assert user in prompt
    assert get_template("chatml").stop_token_ids(extended) == sorted({extended.eod, im_end})


def test_efficient_eos_ends_only_the_last_turn(tokenizer):
    turns = get_template("gemma").encode_multiturn(tokenizer, CONVERSATION)
    assert tokenizer.eod not in turns[0][1] and turns[1][1][-1] == tokenizer.eod


def test_bad_conversations(tokenizer):
    template = get_template("alpaca")
    with pytest.raises(ValueError, match="message 0 has role 'assistant'"):
        template.encode_multiturn(tokenizer, CONVERSATION[1:])
    with pytest.raises(ValueError, match="ends with a user message"):
        template.encode_prompt(tokenizer, CONVERSATION)
