"""Read the newest result JSON a map peer script wrote.

    latest("celery_map")   # newest $PEERBENCH_ROOT/results/celery_map-<UTC stamp>.json
    latest("prefect_map")  # newest .../prefect_map-<UTC stamp>.json

PEERBENCH_ROOT defaults to /tmp/peerbench, as in bench/suite.py (PEER_RESULTS) and the
shared _common.sh. The stamp is %Y%m%dT%H%M%SZ, so the newest file sorts last. The scripts
write to a ``.part`` file and rename it, so a file found here is complete. The returned dict
is the document plus "file" (its path), as bench/suite.py's run_peer returns it (without
"seconds"). Standard library only; no __init__.py is needed: with bench/ on sys.path (as when
bench/suite.py runs) ``from peers.load import latest`` imports it.

    python bench/peers/load.py celery_map     # prints the file and its median figures
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

ENGINES = ("celery_map", "prefect_map")
_STAMP = re.compile(r"\d{8}T\d{6}Z")


def results_dir() -> Path:
    return Path(os.environ.get("PEERBENCH_ROOT", "/tmp/peerbench")) / "results"


def latest(engine: str) -> dict[str, Any]:
    """The newest result document of `engine` (celery_map or prefect_map), with "file"."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    found = sorted(
        p
        for p in results_dir().glob(f"{engine}-*.json")
        if _STAMP.fullmatch(p.name[len(engine) + 1 : -len(".json")])
    )
    if not found:
        raise FileNotFoundError(f"no {engine}-<stamp>.json under {results_dir()}")
    path = found[-1]
    return {"file": str(path), **json.loads(path.read_text())}


def main(argv: list[str]) -> int:
    for engine in argv or ENGINES:
        doc = latest(engine)
        print(doc["file"])
        for key, val in doc.items():
            if isinstance(val, dict) and "median" in val:
                print(f"  {key}: median {val['median']:.6g} (n={val.get('n')})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
