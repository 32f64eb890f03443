"""`python -m planner COMMAND ...`: each command lives in planner/commands/."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .commands import load_commands
from .errors import PlannerError

EXIT_OK, EXIT_OVER_BUDGET, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every other bad input
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m planner",
        description="Memory planning with spilling and fused fetching for TFLite Micro.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in load_commands():
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except PlannerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader (head, less) went away: nothing left to say
        sys.stderr.close()
        return 0
