"""``python -m streams`` is the ``urbansense`` command."""

from __future__ import annotations

from streams.cli import main

if __name__ == "__main__":
    main()
