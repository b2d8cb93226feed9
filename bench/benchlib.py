"""What every benchmark script shares: writing its results where the others are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_results(kind: str, doc: dict[str, Any], stamp: str) -> Path:
    """``results/KIND-STAMP.json`` and ``results/KIND-latest.json``, each replaced atomically
    (an interrupted write keeps the previous run's file)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2, default=str) + "\n"
    path = RESULTS_DIR / f"{kind}-{stamp}.json"
    for target in (path, RESULTS_DIR / f"{kind}-latest.json"):
        tmp = target.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(target)
    return path
