"""Crisis-layer screening cost per message after warm-up (target: < 20 ms on the development CPU).

    python benchmarks/crisis_screening.py [--n 300] [--json OUT]

Loads the default detector once (both encoders, the merged LoRA copy of MiniLM, the shipped
coefficients), warms it up on 20 messages, then times `CrisisDetector.check` one message at a
time (as a chat turn does) and `check_conversation` on three-turn conversations. Messages are the
red-team sheet's prompts, cycled.
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch

from tunesmith.chat.crisis import CrisisDetector
from tunesmith.chat.redteam import load_sheet

TARGET_MS = 20.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--json")
    args = ap.parse_args()
    t = time.perf_counter()
    det = CrisisDetector.default()
    load_s = time.perf_counter() - t
    prompts = [i.prompt for i in load_sheet()]
    for p in prompts[:20]:
        det.check(p)

    def timed(fn, items) -> list[float]:
        out = []
        for it in items:
            t0 = time.perf_counter()
            fn(it)
            out.append((time.perf_counter() - t0) * 1000)
        return out

    single = timed(det.check, [prompts[i % len(prompts)] for i in range(args.n)])
    convs = [[prompts[(i + k) % len(prompts)] for k in range(3)] for i in range(args.n // 3)]
    conv = timed(det.check_conversation, convs)

    def q(xs: list[float], f: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(f * len(xs)))]

    res = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg": os.getloadavg()[0],
        "detector_load_s": round(load_s, 2),
        "check_ms": {"mean": statistics.mean(single), "p50": q(single, 0.5), "p95": q(single, 0.95)},
        "check_conversation_ms": {"mean": statistics.mean(conv), "p50": q(conv, 0.5), "p95": q(conv, 0.95)},
    }
    busy = "  (busy machine: timings unreliable)" if res["load_avg"] > (os.cpu_count() or 1) / 2 else ""
    print(
        f"machine: {res['cpu']}, {res['cores']} cores, torch threads {res['torch_threads']}, "
        f"load average {res['load_avg']:.2f}{busy}"
    )
    print(f"detector load (encoders + coefficients, first in process): {load_s:.2f} s")
    for name in ("check_ms", "check_conversation_ms"):
        r = res[name]
        print(f"{name.removesuffix('_ms')}: mean {r['mean']:.1f} ms, p50 {r['p50']:.1f} ms, p95 {r['p95']:.1f} ms")
    ok = res["check_ms"]["p50"] < TARGET_MS
    print(f"target < {TARGET_MS:.0f} ms per message (p50 of check): {'met' if ok else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
