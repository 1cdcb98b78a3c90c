#!/usr/bin/env python3
"""Writes tests/fixtures/chat/<family>/{tokenizer_config.json,expected.json}.

The reference for kvault's C++ chat templates (src/tokenizer/chat_template.cc): each family's real
chat_template string (as published in the model's tokenizer_config.json on the Hugging Face Hub)
is rendered with jinja2 exactly the way transformers' apply_chat_template(tokenize=False) does:
an ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loopcontrols
extension, a raise_exception global that raises, the tokenizer's special tokens passed by name,
and tools=None, documents=None.

Needs the `jinja2` package (pip install jinja2) only when the fixtures are regenerated; the
C++ tests read the committed JSON files.

    python3 scripts/make_chat_fixtures.py [--out tests/fixtures/chat]
"""

import argparse
import json
import os

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

# meta-llama/Meta-Llama-3-8B-Instruct (the revision with add_generation_prompt).
LLAMA3_TEMPLATE = r"""{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"""

# Qwen/Qwen2.5-7B-Instruct (with its tool-calling branches, which kvault does not use).
QWEN25_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# Qwen/Qwen2-7B-Instruct.
QWEN2_TEMPLATE = r"""{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"""

# mistralai/Mistral-7B-Instruct-v0.2 (current revision: an optional leading system message is
# prepended to the first user message).
MISTRAL_TEMPLATE = r"""{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

# mistralai/Mistral-7B-Instruct-v0.2 (original revision: no system role at all).
MISTRAL_LEGACY_TEMPLATE = r"""{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"""

FAMILIES = {
    "llama3": dict(template=LLAMA3_TEMPLATE, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"),
    "qwen2_5": dict(template=QWEN25_TEMPLATE, bos_token=None, eos_token="<|im_end|>"),
    "qwen2": dict(template=QWEN2_TEMPLATE, bos_token=None, eos_token="<|im_end|>"),
    "mistral": dict(template=MISTRAL_TEMPLATE, bos_token="<s>", eos_token="</s>"),
    "mistral_legacy": dict(template=MISTRAL_LEGACY_TEMPLATE, bos_token="<s>", eos_token="</s>"),
}


def sys_(c):
    return {"role": "system", "content": c}


def user(c):
    return {"role": "user", "content": c}


def asst(c):
    return {"role": "assistant", "content": c}


# The same conversations for every family; a case whose reference render raises is recorded
# with "error": true and the C++ side must refuse it too.
CONVERSATIONS = [
    ("single_user", [user("Hello!")]),
    ("with_system", [sys_("You are a terse assistant."), user("What is 2+2?")]),
    ("multi_turn", [user("Hi"), asst("Hello! How can I help?"), user("Tell me a joke."),
                    asst("Why did the chicken cross the road?"), user("Why?")]),
    ("system_multi_turn", [sys_("Be brief."), user("Name a colour."), asst("Blue."),
                           user("Another one.")]),
    ("ends_with_assistant", [user("Ping"), asst("Pong")]),
    ("unicode", [sys_("Réponds en français, s'il te plaît. 🙂"),
                 user("héllo 世界 — naïve café 🚀\tdone"), asst("Ça va? Ελληνικά ✓"),
                 user("日本語でどうぞ")]),
    ("empty_content", [user(""), asst(""), user("now something")]),
    ("empty_system", [sys_(""), user("x")]),
    ("whitespace_edges", [user("  \n padded both sides \t\n"), asst("\u3000ideographic space\u00a0"),
                          user("\n\nnewlines\n\n")]),
    ("template_lookalikes", [sys_("<|im_start|>system\nfake<|im_end|>"),
                             user("quote <|eot_id|><|start_header_id|>user<|end_header_id|> and [INST] x [/INST] </s> {{ bos_token }} {% if %}"),
                             asst("<|im_end|>\n<|im_start|>assistant\n")]),
    ("system_only", [sys_("Only a system prompt.")]),
    ("system_in_middle", [user("a"), asst("b"), sys_("late system"), user("c")]),
    ("two_users", [user("first"), user("second")]),
    ("starts_with_assistant", [asst("I speak first"), user("ok")]),
]


def make_env():
    """The jinja2 environment of transformers' _compile_jinja_template."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def render(compiled, spec, messages, add_generation_prompt):
    kwargs = {"bos_token": spec["bos_token"], "eos_token": spec["eos_token"]}
    return compiled.render(messages=messages, tools=None, documents=None,
                           add_generation_prompt=add_generation_prompt, **kwargs)


def main():
    parser = argparse.ArgumentParser()
    default_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                               "fixtures", "chat")
    parser.add_argument("--out", default=default_out)
    args = parser.parse_args()
    env = make_env()
    for family, spec in FAMILIES.items():
        compiled = env.from_string(spec["template"])
        cases = []
        for name, messages in CONVERSATIONS:
            for gen in (False, True):
                case = {"name": f"{name}/gen={int(gen)}", "messages": messages,
                        "add_generation_prompt": gen}
                try:
                    case["expected"] = render(compiled, spec, messages, gen)
                except jinja2.exceptions.TemplateError as e:
                    case["error"] = True
                    case["reference_error"] = str(e)
                cases.append(case)
        directory = os.path.join(args.out, family)
        os.makedirs(directory, exist_ok=True)
        config = {"bos_token": spec["bos_token"], "eos_token": spec["eos_token"],
                  "chat_template": spec["template"]}
        with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False, indent=2)
            f.write("\n")
        with open(os.path.join(directory, "expected.json"), "w", encoding="utf-8") as f:
            json.dump({"family": family, "cases": cases}, f, ensure_ascii=False, indent=1)
            f.write("\n")
        errors = sum(1 for c in cases if c.get("error"))
        print(f"{family}: {len(cases)} cases ({errors} refused) -> {directory}")


if __name__ == "__main__":
    main()
