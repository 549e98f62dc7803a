"""Fold the GPU run's JSON files into one summary with the issue's targets."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def kernel_tests(report: Path) -> dict[str, Any] | None:
    """Counts from pytest's JUnit report, with the names of any failures."""
    try:
        root = ET.parse(report).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            counts["failures"].append(case.get("name"))
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def main() -> None:
    out = Path(sys.argv[1])
    peaks, engine, hf = (load(out / n) for n in ("peaks.json", "engine.json", "hf.json"))
    kernels = kernel_tests(out / "kernel_tests.xml")
    summary: dict[str, Any] = {
        "kernel_tests": kernels,
        "peaks": peaks,
        "kernel_bench": load(out / "kernel_bench.json"),
    }
    if peaks and engine and engine.get("single_stream"):
        bound = peaks["copy_bandwidth_bytes_per_s"] / engine["weight_bytes_bf16"]
        tps = engine["single_stream"]["decode_tokens_per_s"]
        summary["single_stream_decode"] = {
            "tokens_per_s": tps,
            "bandwidth_bound_tokens_per_s": bound,
            "fraction_of_bound": tps / bound,
            "target_fraction": 0.75,
        }
    if peaks and engine and engine.get("throughput"):
        tp = engine["throughput"]
        summary["offline_throughput"] = {
            "output_tokens_per_s": tp["output_tokens_per_s"],
            "num_prompts": tp["num_prompts"],
            "scaled_down": tp["scaled_down"],
            "mfu": tp["model_flops_per_s"] / peaks["bf16_matmul_flops_per_s"],
            "target_mfu": 0.45,
        }
        if hf:
            summary["offline_throughput"]["transformers_output_tokens_per_s"] = hf[
                "output_tokens_per_s"
            ]
            summary["offline_throughput"]["x_transformers"] = (
                tp["output_tokens_per_s"] / hf["output_tokens_per_s"]
            )
            summary["offline_throughput"]["target_x_transformers"] = 10
    text = json.dumps(summary, indent=2)
    print(text)
    (out / "summary.json").write_text(text)


if __name__ == "__main__":
    main()
