"""The BIG-Bench Hard study: does composing library modules teach a task, or only its format?

The study itself is the package ``benchmarks.study`` (protocol and options: its ``cli``
module, or ``--help``); this script runs it.

Run:  .venv/bin/python benchmarks/bbh_study.py --tasks navigate --seeds 2 --markdown
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repository root, for `benchmarks.study`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.study.cli import main
from loradex.errors import LoradexError

if __name__ == "__main__":
    try:
        main()
    except LoradexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
