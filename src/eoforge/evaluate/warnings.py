"""Warnings that protect conclusions: what a user must know before reading any number of the report.

Each warning is ``(code, message)``; the codes are stable so scripts can act on them. They are listed first
in the report and in ``metrics.json`` (``warnings: [{code, message}]``) and printed by the CLI.
"""

from __future__ import annotations

from typing import Any

MIN_CLASS_PIXELS = 100
MIN_TEST_BLOCKS = 5
MIN_TEST_PIXELS = 5000
MIN_KAPPA = 0.2
MAX_LOST_SHARE = 0.05
MAX_GAP_SHARE = 0.05


def conclusion_warnings(
    metrics: dict[str, Any],
    prepared_counts: dict[str, int],
    lost_to_nodata: dict[str, int] | None,
    extra: list[tuple[str, str]],
) -> list[tuple[str, str]]:
    """Warnings from the scored metrics, per-split class counts and the preparation's losses.

    ``metrics`` is what :func:`eoforge.evaluate.scoring.evaluate` computed for the model (with
    ``class_pixels`` per split and ``baselines``); ``extra`` holds warnings known before scoring
    (e.g. from the config), appended after the ones computed here.
    """
    out: list[tuple[str, str]] = []
    model = metrics["model"]["arch"]
    kappa, oa = metrics["kappa"], metrics["overall_accuracy"]
    test_counts: dict[str, int] = metrics["class_pixels"]["test"]
    total = sum(test_counts.values())
    if total:
        top = max(test_counts, key=lambda n: test_counts[n])
        share = test_counts[top] / total
        if oa is not None and oa <= share:
            out.append(
                (
                    "no_better_than_majority",
                    f"{model} overall accuracy {oa:.3f} is not above the share of the most frequent test class "
                    f"('{top}', {share:.3f}): a map of '{top}' everywhere scores as well; do not read OA as skill",
                )
            )
    if kappa is not None and kappa < MIN_KAPPA:
        out.append(
            (
                "low_kappa",
                f"{model} kappa is {kappa:.3f} (< {MIN_KAPPA}): agreement is barely above chance, whatever the "
                "overall accuracy says",
            )
        )
    for b in metrics.get("baselines", []):
        if b["kind"] in ("majority",) or b["kappa"] is None or kappa is None:
            continue
        if b["kappa"] > kappa:
            out.append(
                (
                    "baseline_better",
                    f"the baseline '{b['name']}' beats {model} on the test pixels (kappa {b['kappa']:.3f} vs "
                    f"{kappa:.3f}, OA {b['overall_accuracy']:.3f} vs {oa:.3f}): the deep model adds nothing here",
                )
            )
    per_class = metrics["per_class"]
    never = [n for n, v in per_class.items() if v["support"] > 0 and v["predicted"] == 0]
    if never:
        out.append(
            (
                "class_never_predicted",
                f"{model} never predicts {', '.join(repr(n) for n in never)} on the test pixels although they "
                "have reference pixels there: its map misses these classes entirely",
            )
        )
    # predicted somewhere, but never where the class is: "every class is predicted" would mislead
    wrong = [
        f"{n!r} ({v['support']} px; {v['predicted']} px mapped as it, all elsewhere)"
        for n, v in per_class.items()
        if v["support"] > 0 and v["predicted"] > 0 and v.get("recall") == 0
    ]
    if wrong:
        out.append(
            (
                "class_never_found",
                f"{model} maps none of the test pixels of {', '.join(wrong)}: it predicts these classes but "
                "not where they are, so its map does not find them",
            )
        )
    for split in ("val", "test"):
        counts: dict[str, int] = metrics["class_pixels"][split]
        absent = [n for n, c in counts.items() if c == 0]
        few = [f"{n!r} ({c} px)" for n, c in counts.items() if 0 < c < MIN_CLASS_PIXELS]
        if absent:
            one = len(absent) == 1
            consequence = (
                f"{'its' if one else 'their'} test accuracy is unknown (n/a, left out of mean IoU and macro F1)"
                if split == "test"
                else f"the checkpoint was selected without {'it' if one else 'them'} (left out of validation mIoU)"
            )
            out.append(
                (
                    f"class_absent_{split}",
                    f"{', '.join(repr(n) for n in absent)} {'has' if one else 'have'} no {split} pixels: "
                    f"{consequence}; add labels, or split with chips.split.stratify: true (and a smaller "
                    "chips.split.block_size if the class lies in fewer than 3 blocks)",
                )
            )
        if few:
            out.append(
                (
                    f"class_few_{split}",
                    f"fewer than {MIN_CLASS_PIXELS} {split} pixels for {', '.join(few)}: "
                    "their per-class numbers are unreliable",
                )
            )
    blocks, pixels = metrics.get("test_blocks", 0), metrics["pixels"]
    if blocks < MIN_TEST_BLOCKS or pixels < MIN_TEST_PIXELS:
        out.append(
            (
                "small_test_split",
                f"the test split has {blocks} spatial block(s) and {pixels} pixels (want >= {MIN_TEST_BLOCKS} "
                f"blocks and >= {MIN_TEST_PIXELS} px): the intervals are wide or unreliable; label more area or "
                "use smaller blocks",
            )
        )
    unlabelled = [n for n, k in prepared_counts.items() if k == 0]
    if unlabelled:
        out.append(
            (
                "class_no_labels",
                f"{', '.join(repr(n) for n in unlabelled)} listed in inputs.classes but no labelled pixel "
                "after rasterization: the model cannot learn or be scored on it; add labels or drop it from "
                "inputs.classes",
            )
        )
    if lost_to_nodata:
        lost = []
        for n, k in lost_to_nodata.items():
            kept = prepared_counts.get(n, 0)
            if k and k / (k + kept) > MAX_LOST_SHARE:
                lost.append(f"{n!r} {k / (k + kept):.0%} ({k} px)")
        if lost:
            out.append(
                (
                    "labels_lost_to_nodata",
                    f"labelled pixels fell on image nodata and were dropped: {', '.join(lost)}; where labels "
                    "cover area the image does not, that is expected; otherwise check inputs.nodata and "
                    "inputs.nodata_rule (a value that is also real data, e.g. dark water at 0)",
                )
            )
    missing = metrics.get("no_prediction_pixels", 0)
    if missing:
        out.append(
            (
                "map_holes",
                f"the scored map has no class at {missing} test pixels (nodata); they count as errors",
            )
        )
    return out + extra


def band_gap_warnings(
    band_gaps: dict[str, float] | None, scored: dict[str, Any] | None = None
) -> list[tuple[str, str]]:
    """A band missing at more than :data:`MAX_GAP_SHARE` of the valid pixels (``nodata_rule: all`` fills it
    with its mean there): the map there rests on the other bands, which its overall accuracy may hide.
    ``scored``: ``metrics["band_gaps"]`` (the test pixels on gaps and the map's accuracy there and elsewhere)."""
    gaps = {b: s for b, s in (band_gaps or {}).items() if s > MAX_GAP_SHARE}
    if not gaps:
        return []
    listed = ", ".join(f"{b!r} at {s:.0%}" for b, s in sorted(gaps.items(), key=lambda kv: -kv[1]))
    if scored and scored.get("overall_accuracy_elsewhere") is not None:
        there = (
            f"{scored['test_pixels_on_gaps']} test pixels ({scored['share_of_test_pixels']:.0%}) lie there and "
            f"score OA {scored['overall_accuracy_on_gaps']:.3f} against {scored['overall_accuracy_elsewhere']:.3f}"
            " elsewhere"
        )
    else:
        there = "the test pixels there may score worse than the rest"
    return [
        (
            "band_gaps",
            f"band(s) nodata at a share of the valid pixels: {listed} (inputs.nodata_rule 'all' fills a missing "
            f"band with its mean), so the model predicts there without them: {there}; where a band is missing "
            "over a frame or stripe, inputs.nodata_rule: any maps only where every band is valid",
        )
    ]
