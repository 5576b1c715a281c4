"""make bench's target checking: figures are read from the benchmarks' JSON lines and compared to the minimums."""

from __future__ import annotations

import pytest

from bench.run_all import check, lookup, summary_table


def _records(online: float, loader: float) -> dict[str, list[dict]]:
    return {
        "ssl_step": [
            {
                "bench": "ssl_step",
                "images_per_s": {"precomputed": 40.0, "online": 40.0 / online, "reference": 8.0},
                "views_images_per_s": {"precomputed": 300.0, "reference": 20.0},
                "precomputed_over_online": online,
                "precomputed_over_reference": 5.0,
            }
        ],
        "shard_loader": [{"bench": "shard_loader", "samples_per_s_without_photometric": loader}],
        "mfu": [
            {"bench": "mfu", "step": "ssl_model", "preset": "tiny", "mfu": 0.3},
            {"bench": "mfu", "step": "finetune", "preset": "tiny", "mfu": 0.1},
        ],
    }


def test_lookup_follows_dots_and_matches_fields() -> None:
    records = _records(2.0, 100.0)
    assert lookup(records, "ssl_step", "views_images_per_s.reference") == 20.0
    assert lookup(records, "mfu", "mfu", step="finetune", preset="tiny") == 0.1
    assert lookup(records, "mfu", "mfu", step="finetune", preset="small") is None
    assert lookup(records, "ssl_step", "images_per_s") is None


def test_targets_met_missed_and_unmeasured() -> None:
    rows = {r["target"]: r for r in check(_records(online=1.2, loader=100.0))}
    assert rows["SSL step: precomputed vs online landmarks"]["met"] is False
    assert rows["SSL step: precomputed vs looped sampler + PIL aug"]["met"] is True
    assert rows["LAFS data path vs official PIL path"]["figure"] == pytest.approx(15.0)
    assert rows["loader vs SSL step consumption"]["figure"] == pytest.approx(2.5)
    assert rows["precompute vs decode-only"]["met"] is None
    assert rows["MFU SSL step (tiny, model only)"]["met"] is None
    table = summary_table(list(rows.values()), {"data": "exit 1"})
    assert "MISSED" in table and "not measured" in table and "30.0 %" in table and "data failed" in table
