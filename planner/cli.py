"""`tinyplan COMMAND ...` (also `python -m planner`): each command lives in planner/commands/.

Exit codes, the same for every command (README "Exit codes"):
0 done (the plan fits, or there was no budget), 1 does not fit / check failed,
2 bad input (one line on stderr, before any work), 3 internal error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .commands import load_commands
from .errors import PlannerError
from .version import __version__

EXIT_OK, EXIT_OVER_BUDGET, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every other bad input
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default; skips the "(default: None/False)" that says nothing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, [], argparse.SUPPRESS) \
                or action.option_strings == [] or "default" in text:
            return text
        return text + " (default: %(default)s)"


def prog_name() -> str:
    """`tinyplan` when run as the console command, else `python -m planner`."""
    return "tinyplan" if os.path.basename(sys.argv[0]) == "tinyplan" else "python -m planner"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog_name(),
        description="Memory planning with spilling and fused fetching for TFLite Micro.",
        epilog="exit codes: 0 done/fits, 1 does not fit or check failed, 2 bad input, "
        "3 internal error, 130 interrupted",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tinyplan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in load_commands():
        command.add_parser(sub)
    for choice in sub.choices.values():
        choice.formatter_class = HelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare invocation: say what there is, not just "error"
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(args.run(args))
    except PlannerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader (head, less) went away: nothing left to say
        sys.stderr.close()
        return EXIT_OK
    except Exception as exc:  # a bug, not bad input: one line and exit 3, not a traceback
        where = exc.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        loc = f" ({where.tb_frame.f_code.co_filename}:{where.tb_lineno})" if where else ""
        print(f"internal error: {type(exc).__name__}: {exc}{loc}", file=sys.stderr)
        if os.environ.get("TINYPLAN_TRACEBACK"):
            raise
        return EXIT_INTERNAL
