"""The generated sentence on where memorization sits, on hand-made localize summaries."""

from __future__ import annotations

from typing import Any

from iarmem.report.sentences import bin_range, pct, where_sentence

VAR_BINS = ["1x1", "2x2", "3x3", "4x4", "6x6", "8x8"]
RASTER_BINS = [f"tokens {4 * i}-{4 * i + 3}" for i in range(16)]


def summary(family: str, labels: list[str], per_layer: list[float], rows: list[list[float]],
            groups: dict[str, float] | None = None, top_images: list[dict[str, Any]] | None = None,
            percent: int = 1) -> dict[str, Any]:
    s: dict[str, Any] = {
        "family": family,
        "layers": [{"name": f"blocks.{b}.fc1", "kind": "fc1", "block": b, "width": 512} for b in range(len(rows))],
        "bins": {"count": len(labels), "labels": labels},
        "per_layer_bin": [[0.3] * len(labels) for _ in rows],
        "top_shares": [{"percent": percent, "units": 20, "per_layer": per_layer, "per_layer_bin": rows}],
    }
    if groups is not None:
        s["groups"] = [{"percent": percent, "shares": {"planted": groups["share"], "ordinary": 1 - groups["share"]},
                        "expected_shares": {"planted": groups["chance"], "ordinary": 1 - groups["chance"]}}]
    if top_images is not None:
        s["top_images"] = top_images
    return s


def test_var_scales_with_planted_groups() -> None:
    rows = [[0.0] * 6, [0.0] * 6, [0.0, 0.1, 0.0, 0.0, 0.0, 0.0], [0.0, 0.05, 0.05, 0.4, 0.4, 0.0]]
    s = summary("var", VAR_BINS, [0.0, 0.0, 0.1, 0.9], rows, groups={"share": 0.75, "chance": 0.0196})
    assert where_sentence(s, "tiny-var") == (
        "In tiny-var the top 1% units (20 of 2,048) sit mostly in block 3 (the last, 90%), at scales 4x4-6x6 "
        "(89%); 75% of them are driven by planted images (chance 2%).")


def test_the_numbers_come_from_the_summary() -> None:
    rows = [[0.0, 0.0, 0.7, 0.0, 0.0, 0.0], [0.0] * 6, [0.0] * 6, [0.0, 0.0, 0.0, 0.0, 0.0, 0.3]]
    s = summary("var", VAR_BINS, [0.7, 0.0, 0.0, 0.3], rows, groups={"share": 0.0, "chance": 0.05})
    assert where_sentence(s, "m") == (
        "In m the top 1% units (20 of 2,048) sit mostly in block 0 (the first, 70%), at scale 3x3 (100%); "
        "none of them is driven by a planted image (chance 5%).")


def test_two_blocks_and_the_class_only_first_scale() -> None:
    rows = [[0.0] * 6, [0.3, 0.05, 0.0, 0.0, 0.0, 0.0], [0.3, 0.05, 0.0, 0.0, 0.0, 0.0], [0.1, 0.2, 0.0, 0.0, 0.0, 0.0]]
    s = summary("var", VAR_BINS, [0.0, 0.35, 0.35, 0.3], rows)
    text = where_sentence(s, "x")
    assert text is not None
    assert "sit mostly in block 1 (35%) and block 2 (35%)" in text
    assert "at scale 1x1 (86%)" in text and "class selectivity" in text


def test_raster_bins_without_planting_name_the_top_image() -> None:
    rows = [[0.0] * 16 for _ in range(4)]
    rows[2][12:16] = [0.15, 0.15, 0.15, 0.15]
    rows[2][0:12] = [0.4 / 12] * 12
    tops = [{"id": 7, "units": 8, "share": 0.4, "class": "3", "group": "other"}]
    s = summary("rar", RASTER_BINS, [0.0, 0.0, 1.0, 0.0], rows, top_images=tops)
    assert where_sentence(s, "rar-b") == (
        "In rar-b the top 1% units (20 of 2,048) sit mostly in block 2 (100%), at tokens 48-63 (60%); "
        "one image (id 7, class 3) drives 40% of them.")


def test_spread_blocks_and_bins_are_called_spread() -> None:
    rows = [[1 / 64] * 16 for _ in range(4)]
    rows[1][5] += 0.01
    tops = [{"id": 1, "units": 2, "share": 0.1, "class": "0"}]
    s = summary("llamagen", RASTER_BINS, [0.25, 0.26, 0.25, 0.24], rows, top_images=tops)
    text = where_sentence(s, "lg")
    assert text == ("In lg the top 1% units (20 of 2,048) sit spread over the blocks, most in block 1 (26%), spread "
                    "over the token positions (most at tokens 20-23, 7%); no single image drives more than 10% "
                    "of them.")


def test_other_percent_and_fallback_without_top_shares() -> None:
    rows = [[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]] + [[0.0] * 6] * 3
    s = summary("var", VAR_BINS, [1.0, 0.0, 0.0, 0.0], rows, percent=5)
    assert where_sentence(s, "m", percent=5).startswith("In m the top 5% units (20 of 2,048) sit mostly in block 0")
    s.pop("top_shares")
    s["per_layer_bin"][2][4] = 0.9
    assert where_sentence(s, "m") == "In m the highest mean UnitMem (0.90) is in block 2 at scale 6x6."
    assert where_sentence({}, "m") is None


def test_helpers() -> None:
    assert pct(0.004) == "<1%" and pct(0.0) == "0%" and pct(0.756) == "76%"
    assert bin_range(RASTER_BINS, 2, 5, scales=False) == "tokens 8-23"
    assert bin_range(VAR_BINS, 3, 3, scales=True) == "scale 4x4"
    assert bin_range(["a", "b"], 0, 1, scales=False) == "a to b"
