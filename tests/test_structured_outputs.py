"""Constrained decoding on the default model through the offline API: JSON outputs
validate against their schema (jsonschema, 20 varied schemas), regex and choice outputs
match, invalid constraints are `InvalidRequestError`s, and matchers are freed."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest

from rsllm import LLM, SamplingParams, StructuredOutputsParams
from rsllm.errors import InvalidRequestError

S = {"type": "string", "maxLength": 12}
SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"city": S}, "required": ["city"]},
    {
        "type": "object",
        "properties": {"city": S, "temperature_c": {"type": "integer"}},
        "required": ["city", "temperature_c"],
        "additionalProperties": False,
    },
    {"type": "integer", "minimum": 10, "maximum": 99},
    {"type": "number", "minimum": -1, "maximum": 1},
    {"type": "boolean"},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 4},
    {"type": "array", "items": S, "minItems": 2, "maxItems": 3},
    {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}},
        "required": ["color"],
    },
    {
        "type": "object",
        "properties": {"ok": {"const": True}, "n": {"type": "null"}},
        "required": ["ok", "n"],
    },
    {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                "required": ["name", "age"],
            }
        },
        "required": ["user"],
    },
    {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "boolean"}]},
    {
        "type": "object",
        "properties": {"id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}},
        "required": ["id"],
    },
    {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}
        },
        "required": ["tags"],
    },
    {
        "$defs": {
            "point": {
                "type": "object",
                "properties": {
                    "x": {"type": "integer", "minimum": 0, "maximum": 9},
                    "y": {"type": "integer", "minimum": 0, "maximum": 9},
                },
                "required": ["x", "y"],
            }
        },
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/point"}, "b": {"$ref": "#/$defs/point"}},
        "required": ["a", "b"],
    },
    {
        "type": "object",
        "properties": {
            "price": {"type": "number", "minimum": 0, "maximum": 100},
            "currency": {"enum": ["EUR", "USD"]},
        },
        "required": ["price", "currency"],
    },
    {"type": "string", "enum": ["yes", "no"]},
    {
        "type": "object",
        "properties": {
            "matrix": {
                "type": "array",
                "items": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0, "maximum": 9},
                    "minItems": 2,
                    "maxItems": 2,
                },
                "minItems": 2,
                "maxItems": 2,
            }
        },
        "required": ["matrix"],
    },
    {
        "type": "object",
        "properties": {"name": S, "nickname": {"anyOf": [S, {"type": "null"}]}},
        "required": ["name", "nickname"],
    },
    {
        "type": "object",
        "properties": {
            "step": {"type": "integer", "minimum": 1, "maximum": 5},
            "done": {"type": "boolean"},
            "note": S,
        },
        "required": ["step", "done", "note"],
        "additionalProperties": False,
    },
    {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"k": S, "v": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["k", "v"],
        },
        "minItems": 1,
        "maxItems": 2,
    },
]


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(max_model_len=512, seed=0)


def generate(llm: LLM, prompts: list[str], params: list[SamplingParams]) -> list[Any]:
    return [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]


def test_json_schema_outputs_validate(llm: LLM):
    assert len(SCHEMAS) == 20
    prompts = [f"Answer in JSON matching this schema: {json.dumps(s)}\n" for s in SCHEMAS]
    params = [
        SamplingParams(
            max_tokens=80,
            temperature=0.0,
            structured_outputs=StructuredOutputsParams(json=schema),
        )
        for schema in SCHEMAS
    ]
    for schema, out in zip(SCHEMAS, generate(llm, prompts, params), strict=True):
        assert out.finish_reason == "stop", (schema, out.text)
        jsonschema.validate(json.loads(out.text), schema)


def test_sampled_json_object_is_an_object(llm: LLM):
    so = StructuredOutputsParams(json_object=True)
    params = SamplingParams(max_tokens=48, temperature=0.8, seed=1, structured_outputs=so)
    outs = generate(llm, ["A JSON object describing a cat: "] * 3, [params] * 3)
    for out in outs:
        if out.finish_reason == "stop":
            assert isinstance(json.loads(out.text), dict)
        else:  # cut by max_tokens: still a prefix of an object
            assert out.text.startswith("{")


def test_regex_and_choice_outputs_match(llm: LLM):
    regexes = [r"\d{3}-\d{4}", r"(cat|dog)s? are (great|fine)", r"[A-Z][a-z]{2,6}, [A-Z]{2}"]
    choices = [["Paris", "London", "Tokyo"], ["positive", "negative"]]
    params = [
        SamplingParams(max_tokens=24, temperature=1.0, seed=i, structured_outputs=so)
        for i, so in enumerate(
            [StructuredOutputsParams(regex=r) for r in regexes]
            + [StructuredOutputsParams(choice=c) for c in choices]
        )
    ]
    outs = generate(llm, ["Write something: "] * len(params), params)
    for regex, out in zip(regexes, outs, strict=False):
        assert re.fullmatch(regex, out.text), (regex, out.text)
        assert out.finish_reason == "stop"
    for choice, out in zip(choices, outs[len(regexes) :], strict=True):
        assert out.text in choice


def test_grammar_output_matches(llm: LLM):
    grammar = 'root ::= "The answer is " ("yes" | "no") "."'
    so = StructuredOutputsParams(grammar=grammar)
    (out,) = generate(
        llm, ["Question: is it?"], [SamplingParams(max_tokens=16, structured_outputs=so)]
    )
    assert out.text in ("The answer is yes.", "The answer is no.")


def test_n_choices_each_follow_the_constraint(llm: LLM):
    so = StructuredOutputsParams(choice=["alpha", "beta", "gamma"])
    (req,) = llm.generate(
        ["Pick one: "],
        SamplingParams(n=4, max_tokens=8, seed=2, structured_outputs=so),
        use_tqdm=False,
    )
    assert all(c.text in ("alpha", "beta", "gamma") for c in req.outputs)


@pytest.mark.parametrize(
    "so",
    [
        StructuredOutputsParams(json={"type": "foo"}),
        StructuredOutputsParams(json='{"type": "object", "properties": 3}'),
        StructuredOutputsParams(json="not json"),
        StructuredOutputsParams(regex="(a|b"),
        StructuredOutputsParams(grammar="root ::= missing_rule"),
    ],
    ids=["unknown-type", "bad-properties", "not-json", "bad-regex", "bad-grammar"],
)
def test_invalid_constraints_are_rejected_at_add_request(llm: LLM, so: StructuredOutputsParams):
    engine = llm.llm_engine
    with pytest.raises(InvalidRequestError, match="invalid structured output"):
        engine.add_request("bad", "hello", SamplingParams(structured_outputs=so))
    assert "bad" not in engine.requests and len(engine.structured) == 0


def test_matchers_are_freed_on_finish_and_abort(llm: LLM):
    engine = llm.llm_engine
    so = StructuredOutputsParams(regex="[a-z]{50}")
    engine.add_request("a", "hello", SamplingParams(max_tokens=60, structured_outputs=so))
    engine.add_request("b", "hello", SamplingParams(max_tokens=2, structured_outputs=so))
    assert len(engine.structured) == 2
    while "b" in engine.requests:
        engine.step()
    assert "b" not in engine.structured and "a" in engine.structured
    engine.abort_request("a")
    assert len(engine.structured) == 0


def test_exactly_one_constraint_kind():
    with pytest.raises(InvalidRequestError, match="exactly one"):
        StructuredOutputsParams(regex="a", choice=["a"])
