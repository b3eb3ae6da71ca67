"""The lesion table as a CSV file (written atomically: a crash never leaves half a table)."""

from __future__ import annotations

import csv

from ..core.lesions import COLUMNS, Lesion, lesions_to_rows
from .fsutil import atomic_path


def write_lesion_csv(lesions: list[Lesion], path) -> None:
    """CSV with snake_case headers carrying units (volume_ml, ..._mm); empty cell where undefined."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([key for key, _ in COLUMNS])
            for row in lesions_to_rows(lesions)[1]:
                writer.writerow(["" if value is None else value for value in row])
