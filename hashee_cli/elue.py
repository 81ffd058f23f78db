"""ELUE-style scores: a run's score minus a reference curve's score at the same cost.

The ELUE benchmark (Liu et al., "Towards Efficient NLP: A Standard
Evaluation and A Strong Baseline", NAACL 2022) scores a model by the
difference between its performance and the ElasticBERT curve's
performance at the same FLOPs, interpolating linearly between the curve's
points. Here the reference is any curve in the report: by default the
static-truncation curve of the same backbone (the first k layers plus a
head, with the full model as its deepest point).

Costs are MACs per example and differences are in points (score x 100).
A run whose cost lies outside the reference curve's range gets no score:
extrapolating would invent points that the reference never reached.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hashee_cli.report import GROUP_COLUMNS, Skipped

DEFAULT_REFERENCE = "static"


@dataclass(frozen=True)
class ReferenceCurve:
    """Points of a reference curve sorted by cost: ``macs`` strictly increasing, ``scores`` in the metric's unit."""

    name: str
    macs: np.ndarray
    scores: np.ndarray

    @classmethod
    def from_points(cls, name: str, macs, scores) -> ReferenceCurve:
        """Sort the points by cost and average the scores of points with the same cost."""
        frame = pd.DataFrame({"macs": np.asarray(macs, dtype=float), "score": np.asarray(scores, dtype=float)})
        frame = frame.dropna().groupby("macs", sort=True)["score"].mean()
        return cls(name, frame.index.to_numpy(), frame.to_numpy())

    @property
    def num_points(self) -> int:
        return len(self.macs)

    def score_at(self, macs: float) -> float | None:
        """Return the curve's score at ``macs`` by linear interpolation, or None outside its range."""
        if self.num_points < 2 or not np.isfinite(macs):
            return None
        if macs < self.macs[0] or macs > self.macs[-1]:
            return None
        return float(np.interp(macs, self.macs, self.scores))


def elue_score(score: float, macs: float, curve: ReferenceCurve) -> float | None:
    """Return ``score`` minus the curve's score at ``macs``, in points, or None outside the curve's range."""
    reference = curve.score_at(macs)
    if reference is None:
        return None
    return 100 * (score - reference)


def reference_rows(group: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Return the rows of a group that form the reference curve.

    The static curve also takes the full model, which is its deepest point.
    """
    series = group["series"]
    if reference == "static":
        return group[series.isin(["static", "full"])]
    return group[series == reference]


def add_elue_scores(table: pd.DataFrame, references: list[str]) -> tuple[pd.DataFrame, list[Skipped]]:
    """Add an ``elue_vs_<reference>`` column per reference to a comparison table.

    Rows are scored against the reference curve of their own task, split and
    backbone. The reference's own rows are scored too, and they score close
    to 0. Returns the table and the rows or groups that got no score, with
    the reason.
    """
    table = table.copy()
    skipped: list[Skipped] = []
    for reference in references:
        column = f"elue_vs_{reference}"
        table[column] = np.nan
        for key, group in table.groupby(list(GROUP_COLUMNS), sort=False):
            where = " ".join(str(part) for part in key if part)
            rows = reference_rows(group, reference)
            costed = rows[rows["flops_per_example"].notna()] if "flops_per_example" in rows else rows.iloc[0:0]
            curve = ReferenceCurve.from_points(reference, costed.get("flops_per_example", []), costed.get("score", []))
            if curve.num_points == 0:
                skipped.append(Skipped(f"ELUE vs {reference} for {where}", f"there is no {reference} run with a FLOPs figure"))
                continue
            if curve.num_points == 1:
                skipped.append(
                    Skipped(
                        f"ELUE vs {reference} for {where}",
                        f"the {reference} curve has one point ({curve.macs[0]:.4g} MACs); interpolation needs two or more",
                    )
                )
                continue
            outside: dict[str, list[pd.Series]] = {}
            for index, row in group.iterrows():
                macs = row.get("flops_per_example", np.nan)
                if pd.isna(macs):
                    name = f"{row['run']} [{row['setting']}]" if row.get("setting") else str(row["run"])
                    skipped.append(Skipped(f"ELUE vs {reference}: {name}", "has no FLOPs figure (macs_per_example or a count)"))
                    continue
                value = elue_score(row["score"], float(macs), curve)
                if value is None:
                    outside.setdefault(row["series"], []).append(row)
                    continue
                table.loc[index, column] = value
            # One entry per curve: an early-exit sweep often has many points beyond the reference's range.
            for series, rows in outside.items():
                costs = [float(row["flops_per_example"]) for row in rows]
                settings = ", ".join(str(row["setting"]) for row in rows[:3]) + (", ..." if len(rows) > 3 else "")
                skipped.append(
                    Skipped(
                        f"ELUE vs {reference} for {where}: {len(rows)} {series} point(s) ({settings})",
                        f"cost {min(costs):.4g}..{max(costs):.4g} MACs, outside the {reference} curve's range "
                        f"{curve.macs[0]:.4g}..{curve.macs[-1]:.4g}",
                    )
                )
    return table, skipped


def elue_summary(table: pd.DataFrame, references: list[str]) -> pd.DataFrame:
    """Return, per group, curve and reference, how many points were scored and their mean and best ELUE score.

    The reference's own curve is left out.
    """
    rows = []
    for reference in references:
        column = f"elue_vs_{reference}"
        if column not in table:
            continue
        for key, group in table.groupby([*GROUP_COLUMNS, "series"], sort=False):
            if not reference_rows(group, reference).empty:
                continue  # the reference's own points score about 0 by construction
            scored = group[column].dropna()
            if scored.empty:
                continue
            rows.append(
                {
                    **dict(zip([*GROUP_COLUMNS, "series"], key)),
                    "reference": reference,
                    "points": len(scored),
                    "mean_elue": float(scored.mean()),
                    "best_elue": float(scored.max()),
                }
            )
    return pd.DataFrame(rows)
