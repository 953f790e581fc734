"""Prompt templates (``--prompt-type``), shared by preprocessing, inference and chat.

Each template is one entry of ``TEMPLATE_DEFINITIONS`` (data, in the shape of ModelLink's /
LLaMA-Factory's templates.json). A slot list is rendered in order; a slot is

* a string, where ``{{content}}`` stands for the message text;
* ``{"token": "<|user|>"}``: that token's id when the tokenizer has it as one vocabulary
  entry, otherwise the string is encoded as text;
* ``BOS`` / ``EOS``: the tokenizer's begin/end-of-sequence id (BOS is dropped when the
  tokenizer has none; with ``replace_eos`` the EOS is the first stop word, e.g. <|im_end|>).

A conversation is a list of ``{"role": ..., "content": ...}`` messages alternating a user-side
role ("user", or "observation" for tool output) and an assistant-side role ("assistant", or
"function"). ``Template.encode_multiturn`` turns it into (prompt_ids, response_ids) per turn so
that training labels can mask every prompt token; every piece is encoded separately without
the tokenizer's own special tokens, as LLaMA-Factory does, which makes the split exact.

Differences from LLaMA-Factory: no tool/function-call formatting; with ``efficient_eos``
(gemma, chatglm3) the single EOS goes at the end of the conversation and earlier turns carry
no end marker in their labels.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

from modellink.argument_errors import ArgumentError

BOS = {"special": "bos"}
EOS = {"special": "eos"}
Slot = Union[str, Dict[str, str]]
Message = Dict[str, str]
USER_ROLES = ("user", "observation")
ASSISTANT_ROLES = ("assistant", "function")

TEMPLATE_DEFINITIONS: Tuple[dict, ...] = (
    {"name": "empty", "user": ["{{content}}"], "assistant": ["{{content}}"]},
    {"name": "default", "user": ["Human: {{content}}\nAssistant:"], "system": ["{{content}}\n"],
     "separator": ["\n"]},
    {"name": "alpaca", "user": ["### Instruction:\n{{content}}\n\n### Response:\n"],
     "separator": ["\n\n"],
     "default_system": "Below is an instruction that describes a task. "
                       "Write a response that appropriately completes the request.\n\n"},
    # ModelLink's GeneralInstructionHandler prompt (its AlpacaTemplate + Prompter).
    {"name": "general", "prefix": [BOS], "system": ["\n{{content}}\n"],
     "user": ["### Instruction:\n{{content}}\n### Response:\n"], "assistant": ["{{content}}\n"],
     "default_system": "Below is an instruction that describes a task, paired with an input that "
                       "provides further context. Write a response that appropriately completes "
                       "the request. Please note that you need to think through your response "
                       "logically and step by step."},
    {"name": "llama2", "user": [BOS, "[INST] {{content}} [/INST]"],
     "system": ["<<SYS>>\n{{content}}\n<</SYS>>\n\n"], "system_in_user": True},
    {"name": "llama3", "prefix": [BOS],
     "user": ["<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n"],
     "system": ["<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>"],
     "observation": ["<|start_header_id|>tool<|end_header_id|>\n\n{{content}}<|eot_id|>"
                     "<|start_header_id|>assistant<|end_header_id|>\n\n"],
     "stop_words": ["<|eot_id|>"], "replace_eos": True},
    {"name": "chatml", "user": ["<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"],
     "system": ["<|im_start|>system\n{{content}}<|im_end|>\n"],
     "observation": ["<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n"],
     "separator": ["\n"], "stop_words": ["<|im_end|>", "<|im_start|>"], "replace_eos": True},
    {"name": "qwen", "user": ["<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"],
     "system": ["<|im_start|>system\n{{content}}<|im_end|>\n"],
     "observation": ["<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n"],
     "separator": ["\n"], "default_system": "You are a helpful assistant.",
     "stop_words": ["<|im_end|>"], "replace_eos": True},
    # Qwen3's chat template: no default system prompt, tool output as a user turn. Responses
    # are trained as given (with or without their <think> block).
    {"name": "qwen3", "user": ["<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"],
     "system": ["<|im_start|>system\n{{content}}<|im_end|>\n"],
     "observation": ["<|im_start|>user\n<tool_response>\n{{content}}\n</tool_response><|im_end|>\n"
                     "<|im_start|>assistant\n"],
     "separator": ["\n"], "stop_words": ["<|im_end|>"], "replace_eos": True},
    {"name": "mistral", "prefix": [BOS], "user": ["[INST] {{content}} [/INST]"]},
    {"name": "mixtral", "prefix": [BOS], "user": ["[INST] {{content}} [/INST]"]},
    {"name": "gemma", "prefix": [BOS],
     "user": ["<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n"],
     "observation": ["<start_of_turn>tool\n{{content}}<end_of_turn>\n<start_of_turn>model\n"],
     "separator": ["<end_of_turn>\n"], "efficient_eos": True},
    {"name": "chatglm3", "prefix": [{"token": "[gMASK]"}, {"token": "sop"}],
     "user": [{"token": "<|user|>"}, "\n", "{{content}}", {"token": "<|assistant|>"}],
     "assistant": ["\n", "{{content}}"],
     "system": [{"token": "<|system|>"}, "\n", "{{content}}"],
     "observation": [{"token": "<|observation|>"}, "\n", "{{content}}", {"token": "<|assistant|>"}],
     "stop_words": ["<|user|>", "<|observation|>"], "efficient_eos": True},
    # ChatGLM3's system prompt carries the [gMASK]sop prefix, so a conversation always has one.
    {"name": "chatglm3_system",
     "user": [{"token": "<|user|>"}, "\n", "{{content}}", {"token": "<|assistant|>"}],
     "assistant": ["\n", "{{content}}"],
     "system": [{"token": "[gMASK]"}, {"token": "sop"}, {"token": "<|system|>"}, "\n", "{{content}}"],
     "observation": [{"token": "<|observation|>"}, "\n", "{{content}}", {"token": "<|assistant|>"}],
     "default_system": "You are ChatGLM3, a large language model trained by Zhipu.AI. Follow the "
                       "user's instructions carefully. Respond using markdown.",
     "stop_words": ["<|user|>", "<|observation|>"], "efficient_eos": True},
    # ChatGLM2 numbers its rounds from 1, as its own build_prompt does.
    {"name": "chatglm2", "prefix": [{"token": "[gMASK]"}, {"token": "sop"}],
     "user": ["[Round {{idx}}]\n\n问：{{content}}\n\n答："], "separator": ["\n\n"],
     "efficient_eos": True},
    # GLM-4's role markers are text that its tokenizer maps to single tokens.
    {"name": "glm4", "prefix": ["[gMASK]<sop>"], "user": ["<|user|>\n{{content}}<|assistant|>"],
     "assistant": ["\n{{content}}"], "system": ["<|system|>\n{{content}}"],
     "observation": ["<|observation|>\n{{content}}<|assistant|>"],
     "stop_words": ["<|user|>", "<|observation|>"], "efficient_eos": True},
    {"name": "chatml_de",
     "user": ["<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"],
     "system": ["<|im_start|>system\n{{content}}<|im_end|>\n"],
     "observation": ["<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n"],
     "separator": ["\n"], "default_system": "Du bist ein freundlicher und hilfsbereiter KI-Assistent.",
     "stop_words": ["<|im_end|>", "<|im_start|>"], "replace_eos": True},
    # Baichuan-13B-Chat's and Baichuan 2's chat markers; their tokenizers have them as special
    # tokens.
    {"name": "baichuan", "user": ["<reserved_102>{{content}}<reserved_103>"],
     "efficient_eos": True},
    {"name": "baichuan2", "user": ["<reserved_106>{{content}}<reserved_107>"], "efficient_eos": True},
    {"name": "cpm", "prefix": [BOS], "user": ["<用户>{{content}}<AI>"]},
    # InternLM-chat's markers (<eoa> ends a reply); InternLM2-chat is ChatML after BOS.
    {"name": "intern", "prefix": [BOS], "user": ["<|User|>:{{content}}<eoh>\n<|Bot|>:"],
     "system": ["<|System|>:{{content}}\n"], "separator": ["\n"], "stop_words": ["<eoa>"],
     "replace_eos": True},
    {"name": "intern2", "prefix": [BOS],
     "user": ["<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"],
     "system": ["<|im_start|>system\n{{content}}<|im_end|>\n"], "separator": ["\n"],
     "stop_words": ["<|im_end|>"], "replace_eos": True},
    *({"name": name, "prefix": [BOS], "user": ["User: {{content}}\n\nAssistant:"],
       "system": ["{{content}}\n\n"]} for name in ("deepseek2", "deepseek2-lite", "minicpm3")),
)


@dataclass(frozen=True)
class Template:
    """One prompt format; see the module docstring for the slot language."""

    name: str
    user: Tuple[Slot, ...]
    assistant: Tuple[Slot, ...]
    system: Tuple[Slot, ...]
    observation: Tuple[Slot, ...]
    separator: Tuple[Slot, ...]
    prefix: Tuple[Slot, ...]
    default_system: str
    stop_words: Tuple[str, ...]
    efficient_eos: bool
    replace_eos: bool
    system_in_user: bool

    @classmethod
    def from_definition(cls, d: dict) -> "Template":
        efficient_eos = d.get("efficient_eos", False)
        default_assistant = ["{{content}}"] if efficient_eos else ["{{content}}", EOS]
        return cls(
            name=d["name"], user=tuple(d["user"]),
            assistant=tuple(d.get("assistant", default_assistant)),
            system=tuple(d.get("system", ["{{content}}"])),
            observation=tuple(d.get("observation", d["user"])),
            separator=tuple(d.get("separator", [])), prefix=tuple(d.get("prefix", [])),
            default_system=d.get("default_system", ""), stop_words=tuple(d.get("stop_words", [])),
            efficient_eos=efficient_eos, replace_eos=d.get("replace_eos", False),
            system_in_user=d.get("system_in_user", False))

    def render_turns(self, messages: Sequence[Message], system: Optional[str] = None
                     ) -> List[Tuple[List[Slot], List[Slot]]]:
        """Slot lists (prompt, response) per turn; content is already substituted."""
        _check_roles(messages)
        system = system or self.default_system
        system_slots = _fill(self.system, system) if system else []
        rendered: List[List[Slot]] = []
        for i, message in enumerate(messages):
            slots: List[Slot] = []
            content = message["content"]
            if i == 0:
                slots += self.prefix
                if self.system_in_user and system_slots:
                    content = "".join(s for s in system_slots if isinstance(s, str)) + content
                else:
                    slots += system_slots
            elif i % 2 == 0:
                slots += self.separator
            role = message["role"]
            fmt = {"user": self.user, "observation": self.observation}.get(role, self.assistant)
            slots += _fill(fmt, content, round_number=i // 2 + 1)
            rendered.append(slots)
        return [(rendered[i], rendered[i + 1] if i + 1 < len(rendered) else [])
                for i in range(0, len(rendered), 2)]

    def encode_multiturn(self, tokenizer, messages: Sequence[Message], system: Optional[str] = None
                         ) -> List[Tuple[List[int], List[int]]]:
        """(prompt_ids, response_ids) per turn; an efficient_eos template's EOS ends the last
        response."""
        return self.encode_multiturn_batch(tokenizer, [(messages, system)])[0]

    def encode_multiturn_batch(self, tokenizer, conversations: Sequence[Tuple[Sequence[Message], Optional[str]]]
                               ) -> List[List[Tuple[List[int], List[int]]]]:
        """encode_multiturn for many conversations with one batched tokenizer call."""
        slot_lists: List[List[Slot]] = []
        shapes: List[int] = []
        for messages, system in conversations:
            turns = self.render_turns(messages, system)
            if self.efficient_eos and len(messages) % 2 == 0:
                turns[-1] = (turns[-1][0], turns[-1][1] + [EOS])
            shapes.append(len(turns))
            for prompt, response in turns:
                slot_lists += [prompt, response]
        ids = encode_slots_batch(self, tokenizer, slot_lists)
        out, k = [], 0
        for n in shapes:
            out.append([(ids[k + 2 * t], ids[k + 2 * t + 1]) for t in range(n)])
            k += 2 * n
        return out

    def encode_oneturn(self, tokenizer, messages: Sequence[Message], system: Optional[str] = None
                       ) -> Tuple[List[int], List[int]]:
        """(prompt_ids, response_ids) where the prompt is everything before the last response."""
        turns = self.encode_multiturn(tokenizer, messages, system)
        prompt = [i for p, r in turns[:-1] for i in p + r] + turns[-1][0]
        return prompt, turns[-1][1]

    def encode_prompt(self, tokenizer, messages: Sequence[Message], system: Optional[str] = None) -> List[int]:
        """Ids to feed a model for generating the next reply; ``messages`` ends with a user-side
        message (chat / inference)."""
        if not messages or messages[-1]["role"] not in USER_ROLES:
            raise ValueError("encode_prompt needs a conversation that ends with a user message")
        turns = self.encode_multiturn(tokenizer, list(messages), system)
        return [i for p, r in turns for i in p + r]

    def stop_token_ids(self, tokenizer) -> List[int]:
        """Ids that end a generated reply: the EOS and every stop word the vocabulary has."""
        ids = [tokenizer.eod] + [tokenizer.token_to_id(w) for w in self.stop_words]
        return sorted({i for i in ids if i is not None})


def _fill(slots: Sequence[Slot], content: str, round_number: int = 1) -> List[Slot]:
    """Slots with the message (and, for ChatGLM2, the 1-based round number) substituted."""
    return [s.replace("{{idx}}", str(round_number)).replace("{{content}}", content)
            if isinstance(s, str) else s for s in slots]


def _check_roles(messages: Sequence[Message]) -> None:
    if not messages:
        raise ValueError("a conversation needs at least one message")
    for i, message in enumerate(messages):
        expected = USER_ROLES if i % 2 == 0 else ASSISTANT_ROLES
        if message.get("role") not in expected:
            raise ValueError(f"message {i} has role {message.get('role')!r}; expected one of {expected}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {i} content must be a string")


def encode_slots_batch(template: Template, tokenizer, slot_lists: Sequence[Sequence[Slot]]) -> List[List[int]]:
    """Token ids of each slot list; all text pieces go through one tokenizer call."""
    texts: List[str] = []
    plans: List[List[Tuple[bool, int]]] = []  # per slot list: (is_text, id or index into texts)
    for slots in slot_lists:
        plan: List[Tuple[bool, int]] = []
        for slot in slots:
            token_id, text = (None, slot) if isinstance(slot, str) else _resolve_special(template, tokenizer, slot)
            if token_id is not None:
                plan.append((False, token_id))
            elif text:
                plan.append((True, len(texts)))
                texts.append(text)
        plans.append(plan)
    encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
    out: List[List[int]] = []
    for plan in plans:
        ids: List[int] = []
        for is_text, value in plan:
            if is_text:
                ids.extend(encoded[value])
            else:
                ids.append(value)
        out.append(ids)
    return out


def _resolve_special(template: Template, tokenizer, slot: Dict[str, str]) -> Tuple[Optional[int], str]:
    """(id, "") for a token the vocabulary has, (None, text) to encode as text, (None, "") to drop."""
    if slot == BOS:
        return tokenizer.bos, ""
    if slot == EOS:
        if not template.replace_eos:
            return tokenizer.eod, ""
        slot = {"token": template.stop_words[0]}
    token = slot["token"]
    return tokenizer.token_to_id(token), token


TEMPLATES: Dict[str, Template] = {d["name"]: Template.from_definition(d) for d in TEMPLATE_DEFINITIONS}


def get_template(name: str) -> Template:
    """The template called ``name``; ValueError naming the known ones otherwise."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ArgumentError(f"unknown prompt type {name!r}; known: {', '.join(sorted(TEMPLATES))}") from None
