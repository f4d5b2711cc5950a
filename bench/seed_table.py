"""The seed experiment's table: ``pyro-gen compare`` beside the hand-written PyTorch VAE, with the checks.

Reads what the two runs wrote (nothing is recomputed):

* ``COMPARE_DIR/compare.csv`` and each guide's ``metrics.json`` (``pyro-gen compare ...``),
* the reference VAE's JSON (``python bench/reference_vae.py ... --out REF.json``),

and prints a markdown table with the test NLL's standard error (from each run's per-datapoint
numbers for the reference) and the three acceptance checks of the seed experiment:

1. the mean-field (``normal``) VAE's NLL is within 0.5 nats of the reference VAE's;
2. no flow guide is worse than mean field by more than 0.3 nats;
3. at least one flow guide is better than mean field by 0.5 nats or more.

Run (from the repository root, after both runs)::

    python bench/seed_table.py --compare runs/seed --reference runs/reference_seed.json

The exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

WITHIN_REFERENCE, FLOW_NOT_WORSE, FLOW_BETTER = 0.5, 0.3, 0.5


def read_compare(compare_dir: Path) -> list[dict]:
    with open(compare_dir / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{compare_dir / 'compare.csv'} has no rows")
    return rows


def checks(rows: list[dict], reference_nll: float) -> list[tuple[str, bool]]:
    nll = {r["guide"]: float(r["test_nll"]) for r in rows}
    if "normal" not in nll:
        raise SystemExit("the comparison has no 'normal' (mean-field) guide to compare against")
    flows = {g: v for g, v in nll.items() if g != "normal"}
    mean_field = nll["normal"]
    if not flows:
        return [("no flow guide has finished yet", False)]
    worst = max(flows.items(), key=lambda kv: kv[1])
    best = min(flows.items(), key=lambda kv: kv[1])
    return [
        (
            f"mean field {mean_field:.2f} vs reference {reference_nll:.2f}: |difference| "
            f"{abs(mean_field - reference_nll):.2f} <= {WITHIN_REFERENCE}",
            abs(mean_field - reference_nll) <= WITHIN_REFERENCE,
        ),
        (
            f"worst flow {worst[0]} {worst[1]:.2f}: {worst[1] - mean_field:+.2f} nats vs mean field (allowed <= +{FLOW_NOT_WORSE})",
            worst[1] - mean_field <= FLOW_NOT_WORSE,
        ),
        (
            f"best flow {best[0]} {best[1]:.2f}: {best[1] - mean_field:+.2f} nats vs mean field (needed <= -{FLOW_BETTER})",
            mean_field - best[1] >= FLOW_BETTER,
        ),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compare", type=Path, required=True, help="the --out directory of pyro-gen compare")
    p.add_argument("--reference", type=Path, required=True, help="the --out JSON of bench/reference_vae.py")
    args = p.parse_args(argv)

    rows = read_compare(args.compare)
    ref = json.loads(args.reference.read_text())
    header = ["model / guide", "test NLL (nats)", "test ELBO", "KL", "active units", "s / epoch", "parameters", "K", "epochs"]
    extra = [c for c in ("khat_mean", "khat_gt_0.7") if c in rows[0]]
    lines = ["| " + " | ".join(header + extra) + " |", "|" + " --- |" * (len(header) + len(extra))]
    lines.append(
        "| reference PyTorch VAE (mean field) | "
        f"{ref['test_nll']:.2f} ± {ref['test_nll_sem']:.2f} | {ref['test_elbo']:.2f} |  |  | {ref['seconds_per_epoch']:.1f} |  | "
        f"{ref['nll_samples']} | {ref['epochs']} |" + " |" * len(extra)
    )
    for r in rows:
        cells = [
            f"pyro_gen {r['guide']}",
            f"{float(r['test_nll']):.2f}",
            f"{float(r['test_elbo']):.2f}",
            f"{float(r['kl']):.2f}",
            r["active_units"],
            f"{float(r['seconds_per_epoch']):.1f}",
            r["parameters"],
            r["nll_samples"],
            r["epochs"],
        ] + [f"{float(r[c]):.2f}" if r[c] not in ("", "None") else "" for c in extra]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print()
    results = checks(rows, ref["test_nll"])
    for text, ok in results:
        print(f"- {'PASS' if ok else 'FAIL'}: {text}")
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
