"""`python -m geolib <command>`: small entry points that validate their arguments first."""
from __future__ import annotations

import importlib
import sys

# command -> (module, function taking argv, one-line help)
COMMANDS = {
    "check-data": ("geolib.data.validate", "main", "validate a dataset folder (exit 1 on errors)"),
    "run": ("geolib.apps.pipeline", "main", "run the notebooks with papermill (what run_all.sh calls)"),
    "world": ("geolib.world.build", "cli", "generate and export the synthetic world"),
    "train": ("geolib.apps.train_cli", "main", "train Phase 1 (torchrun -m geolib train … for DDP)"),
    "report": ("geolib.apps.report", "main", "write outputs/<profile>/report/index.html"),
    "bench": ("geolib.apps.bench", "main", "benchmarks; rows go to outputs/bench/metrics/bench.jsonl"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:12s} {help_}" for name, (_, _, help_) in COMMANDS.items())
    return f"usage: python -m geolib <command> [options]\n\ncommands:\n{rows}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, func, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            print(f"command {name!r} is not available in this version of geolib", file=sys.stderr)
            return 2
        raise
    return int(getattr(module, func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
