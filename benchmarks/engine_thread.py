"""Why a server runs all its torch work on one thread: decoder-sized operations on the main thread, on a second
thread of a process whose main thread never ran a parallel region, and on a second thread after the main
thread ran one (as it does when the model is loaded there).

    .venv/bin/python benchmarks/engine_thread.py [--steps 5000] [--repeats 3]

Each case runs in a fresh process (libgomp's thread teams live as long as their threads) and times the same
loop of small operations a batched decode step is made of (a linear layer, a row gather, a scatter-add and a
batched matmul over 8 rows); prints the median seconds and the ratio to the main thread.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time

CASES = {
    "main thread": "main",
    "second thread, main thread never ran a parallel region": "thread",
    "second thread, after the main thread ran one": "thread-after-main",
}


def loop(steps: int) -> float:
    import torch

    x, linear = torch.randn(8, 1, 384), torch.nn.Linear(384, 384)
    rows, bank = torch.tensor([0, 2, 5]), torch.randn(8, 8, 384)
    started = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            y = linear(x)
            y.index_add_(0, rows, x[rows])
            torch.bmm(x, bank.transpose(1, 2))
    return time.perf_counter() - started


def case(mode: str, steps: int) -> float:
    """Seconds of the loop (after one warm-up) in this process, run as ``mode`` says."""
    import torch

    if mode == "main":
        loop(steps // 10)
        return loop(steps)
    if mode == "thread-after-main":
        torch.randn(1024, 1024) @ torch.randn(1024, 1024)  # the main thread's team now exists
    result = []
    worker = threading.Thread(target=lambda: (loop(steps // 10), result.append(loop(steps))))
    worker.start()
    worker.join()
    return result[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", choices=list(CASES.values()), help=argparse.SUPPRESS)  # one process's case
    args = parser.parse_args(argv)
    if args.case:
        print(case(args.case, args.steps))
        return 0
    import torch

    seconds = {}
    for title, mode in CASES.items():
        runs = [
            float(
                subprocess.run(
                    [sys.executable, __file__, "--case", mode, "--steps", str(args.steps)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout.split()[-1]
            )
            for _ in range(args.repeats)
        ]
        seconds[title] = statistics.median(runs)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps, median of {args.repeats}\n"
    )
    print("| where the loop runs | seconds | vs main thread |\n|---|---:|---:|")
    reference = seconds["main thread"]
    for title, value in seconds.items():
        print(f"| {title} | {value:.3f} | {value / reference:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
