"""Does a trial's ranking after k epochs predict its ranking at the end? Within each stratum of a finished study.

`python -m bench.perf.epoch_ranks --study NAME STORAGE` reads the study's complete trials (run with
`pruner = { type = "none" }`, so every epoch's value is known) and prints, for each k, how many trial pairs of
one stratum keep their order from epoch k to the last epoch, and whether the best after k is the best at the end.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass

import optuna

from bench.errors import BenchError, HelpFormatter, cli_main
from bench.strata import stratum_of


@dataclass(frozen=True)
class EpochAgreement:
    """How the order after epoch k agrees with the order after the last epoch, over every stratum."""

    k: int
    pairs_kept: int
    pairs: int
    best_kept: int  # strata whose best trial after k is their best at the end
    strata: int
    swaps: tuple[tuple[object, float, float], ...]  # (stratum, gap at the end, gap at k) of each reversed pair


def epoch_agreement(trials: list[optuna.trial.FrozenTrial]) -> list[EpochAgreement]:
    """One row per k = 1 .. last epoch - 1, from complete trials that all reported the same epochs."""
    curves: dict[object, list[list[float]]] = {}
    for t in trials:
        curves.setdefault(stratum_of(t), []).append([v for _, v in sorted(t.intermediate_values.items())])
    lengths = {len(c) for cs in curves.values() for c in cs}
    if len(lengths) != 1:
        raise BenchError(f"the trials reported different numbers of epochs {sorted(lengths)}: run without a pruner")
    last = lengths.pop()
    rows = []
    for k in range(1, last):
        kept = total = best = 0
        swaps = []
        for stratum, cs in curves.items():
            for a, b in itertools.combinations(cs, 2):
                total += 1
                if (a[k - 1] - b[k - 1]) * (a[-1] - b[-1]) > 0:
                    kept += 1
                else:
                    swaps.append((stratum, round(abs(a[-1] - b[-1]), 2), round(abs(a[k - 1] - b[k - 1]), 2)))
            best += max(range(len(cs)), key=lambda i: cs[i][k - 1]) == max(range(len(cs)), key=lambda i: cs[i][-1])
        rows.append(EpochAgreement(k, kept, total, best, len(curves), tuple(swaps)))
    return rows


@cli_main
def main(argv: list[str] | None = None) -> int:
    from bench.storage import load_existing_study

    p = argparse.ArgumentParser(
        prog="python -m bench.perf.epoch_ranks", formatter_class=HelpFormatter, description=__doc__.splitlines()[0]
    )
    p.add_argument("--study", required=True, help="the study's name in the storage")
    p.add_argument("storage", help="its Optuna storage: a journal file or a database URL")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_existing_study(args.study, args.storage)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise BenchError(f"study {args.study!r} has no complete trial")
    for r in epoch_agreement(complete):
        print(
            f"k={r.k}: {r.pairs_kept}/{r.pairs} pairs keep their order; best after k is the best at the end in "
            f"{r.best_kept}/{r.strata} strata; reversed (stratum, gap at end, gap at k): {list(r.swaps)}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
