"""CLI startup time: how long `lmzoo --help`, `lmzoo VERB --help` for every verb and a usage error
take, and whether each imported torch. A benchmark to read, not a timed test.

    .venv/bin/python benchmarks/cli_startup.py [--runs 5]

Each command runs as a fresh subprocess ``python -c "...main(argv)"`` (what the `lmzoo` script
does) ``--runs`` times; the table has the median wall-clock seconds and whether ``torch`` was in
``sys.modules`` when it exited. ``lmzoo --help`` and usage errors should stay torch-free
(tests/test_cli_polish.py asserts it); a verb whose own flags come from torch-importing modules
(pretrain's objective options) pays torch's import in its --help.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

# the child prints whether torch was imported on its last stderr line
CHILD = ("import sys\nfrom lmzoo.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
         "sys.stderr.write(f'\\ntorch={\"torch\" in sys.modules}\\n')\n")


def time_command(argv: list[str], runs: int) -> tuple[float, bool]:
    """(median seconds, whether torch was imported) of ``lmzoo argv`` over ``runs`` fresh processes."""
    seconds, torch_loaded = [], False
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, check=False)
        seconds.append(time.perf_counter() - start)
        torch_loaded = done.stderr.rstrip().splitlines()[-1] == "torch=True"
    return statistics.median(seconds), torch_loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="processes per command (the median is shown)")
    runs = parser.parse_args().runs

    from lmzoo.cli import VERBS

    commands = [["--help"], ["--version"], ["finetune", "--bogus"], ["generate", "--max-step", "3"]]
    commands += [[name, "--help"] for name in VERBS]
    bare = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], capture_output=True, check=False)
        bare.append(time.perf_counter() - start)
    print(f"python startup alone: {statistics.median(bare):.3f} s; medians of {runs} runs each")
    print(f"{'command':<32} {'seconds':>8}  torch")
    for argv in commands:
        seconds, torch_loaded = time_command(argv, runs)
        print(f"{'lmzoo ' + ' '.join(argv):<32} {seconds:8.3f}  {'yes' if torch_loaded else 'no'}")


if __name__ == "__main__":
    main()
