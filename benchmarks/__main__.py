"""Dispatch ``python -m benchmarks <name> [args]`` to ``benchmarks/<name>.py``'s ``main(argv)``."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main() -> None:
    """Run the named benchmark."""
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_"))
    if len(sys.argv) < 2 or sys.argv[1] not in names:
        sys.stderr.write(f"usage: python -m benchmarks {{{','.join(names)}}} [--json] [options]\n")
        raise SystemExit(2)
    module = importlib.import_module(f"benchmarks.{sys.argv[1]}")
    raise SystemExit(module.main(sys.argv[2:]))


if __name__ == "__main__":
    main()
