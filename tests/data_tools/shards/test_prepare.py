"""The shard writer's decode workers: same results as the inline preparer, in order, and clear failures."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from data_tools.shards.prepare import Preparer, prepared_inputs
from data_tools.shards.sources import open_source
from lafs_core.errors import DataError


@pytest.mark.parametrize("processes", [True, False], ids=["processes", "threads"])
@pytest.mark.parametrize("decode_stored", [True, False], ids=["with-pixels", "jpeg-only"])
def test_workers_give_the_inline_results_in_plan_order(
    face_folder: Path, make_config, processes: bool, decode_stored: bool
) -> None:
    source = open_source(face_folder)
    entries = source.entries[::-1]
    preparer = Preparer(source, make_config(), decode_stored=decode_stored)
    expected = [preparer(entry) for entry in entries]
    with prepared_inputs(preparer, entries, workers=2, ahead=5, where="out", processes=processes) as stream:
        got = list(stream)
    assert len(got) == len(entries) == 61
    assert sum(isinstance(result, str) for result in got) == 1  # s1/corrupt.jpg, with its reason
    for result, reference in zip(got, expected, strict=True):
        if isinstance(reference, str):
            assert result == reference
            continue
        assert result[0] == reference[0]
        if decode_stored:
            assert result[1].shape == (112, 112, 3)
            np.testing.assert_array_equal(result[1], reference[1])
        else:
            assert result[1] is None


def test_a_worker_that_dies_is_a_data_error_naming_the_output(face_folder: Path, make_config) -> None:
    source = open_source(face_folder)
    doomed = source.entries[20].key

    def load(entry, channel_order):
        if entry.key == doomed:
            os._exit(3)  # what a segfaulting decoder looks like from the parent
        return source.loader(entry, channel_order)

    dying = dataclasses.replace(source, loader=load)
    workers = prepared_inputs(Preparer(dying, make_config()), dying.entries, 2, 8, "/data/out", processes=True)
    with pytest.raises(DataError, match="decode worker died") as info, workers as got:
        list(got)
    assert "/data/out" in str(info.value)
