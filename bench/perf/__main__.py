"""Training speed of vae.train.fit against pytorch/examples vae/main.py and against the matmul floor.

`python -m bench.perf [--epochs 3] [--precision fp32|bf16|both] [--json [PATH]] [--quality]` measures
everything in one process on the reference configuration (784-400-20, batch 128, Adam 1e-3) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.errors import BenchError, HelpFormatter, cli_main
from bench.perf.reference import PRECISION_CHOICES, QUALITY_EPOCHS, REFERENCE_TRAIN


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.perf",
        description="Epoch time of vae.train.fit on the pytorch/examples VAE configuration, "
        "against the pytorch/examples training loop and the matmul floor; all in one process.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--data-dir", default=None, help="folder holding MNIST/raw (default: $VAE_DATA_DIR, else ./data)"
    )
    parser.add_argument(
        "--epochs", type=int, default=3, help="timed epochs of each loop, after the warm-up (default: 3)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs of each loop first (default: 1)")
    parser.add_argument(
        "--precision",
        choices=sorted(PRECISION_CHOICES),
        default="fp32",
        help="precision of fit: fp32, bf16 (autocast), or both one after the other (default: fp32)",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="train with TrainConfig(compile=True), torch.compile of the model's loss (default: off)",
    )
    parser.add_argument(
        "--flush-denormal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fit with TrainConfig(flush_denormal=...): subnormal floats as 0 while training; "
        "the reference loop never flushes (default: on, as fit)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=REFERENCE_TRAIN.seed,
        help=f"seed of the weights, shuffling and noise of fit and of the reference (default: {REFERENCE_TRAIN.seed})",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice)"
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="print the result as JSON instead of the table, or with PATH write it there "
        "and print the table (default: table only)",
    )
    parser.add_argument(
        "--quality",
        action="store_true",
        help=f"also train {QUALITY_EPOCHS} epochs per precision, and the reference loop {QUALITY_EPOCHS} epochs, "
        "and report their test losses (default: off)",
    )
    args = parser.parse_args(argv)
    for name, low in (("epochs", 1), ("warmup", 0), ("threads", 1), ("seed", 0)):
        v = getattr(args, name)
        if v is not None and v < low:
            parser.error(f"--{name} must be at least {low}, got {v}")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from bench.perf.measure import run
    from bench.perf.table import format_table
    from vae.data import DataError

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        result = run(args)
    except DataError as exc:
        raise BenchError(str(exc)) from None
    if args.json == "-":
        print(json.dumps(result, indent=2))
        return 0
    print(format_table(result))
    if args.json is not None:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
