"""Generate benches/datasets/conversations.jsonl: a conversation-like prompt set.

Real chat traffic (ShareGPT and the like) cannot be downloaded here, so this script
builds its shape instead: a system prompt, zero to three earlier user/assistant turns,
then a user question, with an expected reply length drawn from a long-tailed
distribution (most replies short, a few long) as in chat logs. The text is assembled
from fixed phrase lists with a seeded generator, so the file is reproducible:

    .venv/bin/python benches/datasets/make_conversations.py [--num 200] [--seed 0]

Each line: {"id": int, "messages": [{"role", "content"}, ...], "output_len": int}.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

OUT = Path(__file__).with_name("conversations.jsonl")

SYSTEMS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in plain language.",
    "You are an expert tutor who explains ideas step by step.",
    "You are a friendly assistant for a small software company.",
    "",
]
TOPICS = [
    "photosynthesis",
    "the French Revolution",
    "binary search",
    "compound interest",
    "the water cycle",
    "sourdough bread",
    "black holes",
    "the Roman Empire",
    "recursion in programming",
    "climate change",
    "vaccines",
    "the stock market",
    "plate tectonics",
    "machine learning",
    "the human heart",
    "jazz music",
    "electric cars",
    "the printing press",
    "quantum computing",
    "coral reefs",
    "the Pythagorean theorem",
    "supply and demand",
    "volcanoes",
    "hash tables",
    "the immune system",
    "renewable energy",
    "ancient Egypt",
    "sleep",
    "TCP/IP",
    "impressionist painting",
    "gravity",
    "inflation",
    "DNA",
    "the Moon landing",
]
ASKS = [
    "Can you explain {t} to me like I am twelve?",
    "What are the three most important things to know about {t}?",
    "Write a short paragraph about {t} for a school newsletter.",
    "I keep getting confused about {t}. What is the key idea?",
    "Give me a quick summary of {t} and one common misconception.",
    "How would you teach {t} to a beginner in five steps?",
    "Compare {t} with {u}. How are they alike and how do they differ?",
    "Write a haiku about {t}.",
    "What questions should I ask to test my understanding of {t}?",
    "List some good books or resources for learning about {t}.",
]
FOLLOW_UPS = [
    "Thanks. Can you go into more detail on the second point?",
    "That makes sense. Could you give a concrete example?",
    "Can you make that shorter?",
    "Now explain it again but for an expert audience.",
    "What would be a good exercise to practise this?",
    "Interesting. How does this relate to {u}?",
]
SENTENCES = [
    "{T} is often described in simple terms, but the details matter.",
    "At its core, {t} comes down to a few principles that fit together.",
    "A helpful way to picture {t} is to think about everyday experience.",
    "Many people first meet {t} in school and then forget why it matters.",
    "Historically, ideas about {t} changed as better evidence appeared.",
    "One common mistake is to treat {t} as a single fact rather than a process.",
    "If you compare it with {u}, the differences become clearer.",
    "Experts usually start with the basic definitions and build from there.",
    "The most important point is that each part depends on the others.",
    "In practice, you can check your understanding by explaining it to someone else.",
]


def paragraph(rng: random.Random, topic: str, other: str, sentences: int) -> str:
    picked = [rng.choice(SENTENCES) for _ in range(sentences)]
    return " ".join(s.format(t=topic, T=topic[0].upper() + topic[1:], u=other) for s in picked)


def reply_length(rng: random.Random) -> int:
    """Long-tailed like chat replies: log-normal around ~120 tokens, 16..512."""
    return max(16, min(512, int(math.exp(rng.gauss(math.log(120), 0.7)))))


def conversation(rng: random.Random, index: int) -> dict:
    topic, other = rng.sample(TOPICS, 2)
    messages = []
    system = rng.choice(SYSTEMS)
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": rng.choice(ASKS).format(t=topic, u=other)})
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        messages.append(
            {"role": "assistant", "content": paragraph(rng, topic, other, rng.randint(2, 8))}
        )
        messages.append({"role": "user", "content": rng.choice(FOLLOW_UPS).format(u=other)})
    return {"id": index, "messages": messages, "output_len": reply_length(rng)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with args.out.open("w") as f:
        for i in range(args.num):
            f.write(json.dumps(conversation(rng, i)) + "\n")
    print(f"wrote {args.num} conversations to {args.out}")


if __name__ == "__main__":
    main()
