"""Structured outputs: decoding constrained by a grammar (JSON schema, regex, choice,
EBNF/Lark grammar, any JSON object), with xgrammar as the grammar engine.

`StructuredOutputManager` is what the engine uses: it compiles a request's
`StructuredOutputsParams` at `add_request` (an invalid schema is an
`InvalidRequestError` there), keeps one matcher per request, builds each step's token
bitmask for the sampling rows and advances the matchers with the sampled tokens.
"""

from rsllm.structured_outputs.manager import StructuredOutputManager
from rsllm.structured_outputs.request import from_openai_request
from rsllm.structured_outputs.tool_schema import named_tool_schema, required_tools_schema

__all__ = [
    "StructuredOutputManager",
    "from_openai_request",
    "named_tool_schema",
    "required_tools_schema",
]
