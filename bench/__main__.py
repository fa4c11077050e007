"""`python -m bench [NAME [ARGS...]]`: every benchmark with defaults, or one by name."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))


def main(argv: list[str]) -> int:
    if argv:
        module = importlib.import_module(f"bench.{argv[0]}")
        return int(module.main(argv[1:]))
    worst = 0
    for info in sorted(pkgutil.iter_modules([str(HERE)]), key=lambda m: m.name):
        try:
            module = importlib.import_module(f"bench.{info.name}")
        except ImportError as exc:
            print(f"== bench.{info.name}: cannot import: {exc}", flush=True)
            worst = 1
            continue
        if getattr(module, "BENCHMARK", False):
            print(f"== bench.{info.name}", flush=True)
            worst = max(worst, int(module.main([])))
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
