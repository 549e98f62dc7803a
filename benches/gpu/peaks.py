"""Measure the device's ceilings in this run: copy bandwidth and the bf16 matmul rate.

Writes {"copy_bandwidth_bytes_per_s", "bf16_matmul_flops_per_s", ...} as JSON."""

from __future__ import annotations

import argparse
import json

import torch


def time_ms(fn, reps: int, warmup: int = 3) -> float:
    """Mean milliseconds of `fn` over `reps` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def copy_bandwidth(nbytes: int = 4 << 30) -> float:
    """Bytes read plus bytes written per second by a device-to-device copy."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), reps=10)
    return 2 * nbytes / (ms / 1e3)


def matmul_flops(n: int = 8192) -> float:
    a = torch.randn((n, n), dtype=torch.bfloat16, device="cuda")
    b = torch.randn((n, n), dtype=torch.bfloat16, device="cuda")
    ms = time_ms(lambda: a @ b, reps=10)
    return 2 * n**3 / (ms / 1e3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = {
        "device": torch.cuda.get_device_name(),
        "copy_bandwidth_bytes_per_s": copy_bandwidth(),
        "bf16_matmul_flops_per_s": matmul_flops(),
        "method": "4 GiB device copy (read+write bytes); 8192^3 bf16 matmul; 10 reps after 3",
    }
    print(json.dumps(result, indent=2))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
