"""The pure helpers of `leadflow bench pipeline`."""

from __future__ import annotations

import os
from pathlib import Path

from leadflow.bench_pipeline import _folder_bytes, _vm_kib, percentile


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 0.0) == 1.0


def test_peak_memory_of_a_running_process_and_of_a_gone_one() -> None:
    assert _vm_kib(os.getpid(), "VmHWM") > 1000
    assert _vm_kib(2**22 + 12345, "VmHWM") == 0


def test_folder_bytes_counts_every_file(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 5)
    assert _folder_bytes(tmp_path) == 15
