"""The argument parser: global options, the five commands, and the request options they share."""

from __future__ import annotations

import argparse
import math

from .._version import __version__
from ._connect import DEFAULT_TIME_SCALE
from ._errors import EPILOG
from ._inputs import DEFAULT_MODEL, FORMATS

PROG = "wan-async"
DESCRIPTION = "Generate videos with Wan text-to-video through its gateway (or a local simulator)."


def build_parser() -> argparse.ArgumentParser:
    """The ``wan-async`` parser; ``simulate`` leaves its options for the simulator to parse."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate(commands)
    _add_batch(commands)
    _add_status(commands)
    _add_wait(commands)
    commands.add_parser(
        "simulate",
        help="serve the gateway simulator locally (see: wan-async simulate --help)",
        add_help=False,  # its --help is the simulator's own
        allow_abbrev=False,
    )
    return parser


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options every command takes, before or after the command's name.

    On a command's parser they default to SUPPRESS, so one given before the command is not
    reset by the command's parser.
    """
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("global options")
    group.add_argument(
        "--api-key",
        default=default,
        metavar="KEY",
        help="gateway API key (default: $WAN_API_KEY); never printed",
    )
    group.add_argument(
        "--base-url",
        default=default,
        metavar="URL",
        help="gateway base URL (default: $WAN_BASE_URL, else the documented service)",
    )
    group.add_argument(
        "--allow-insecure-http",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="allow a plain http:// --base-url that is not loopback (the key then travels "
        "unencrypted)",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="full tracebacks and DEBUG logging of the wan_async logger",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="no progress display and no summary; errors only",
    )


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    examples: str = "",
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"examples:\n{examples}\n{EPILOG}" if examples else EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    _add_global_options(parser, suppress=True)
    return parser


def _add_generate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _command(
        commands,
        "generate",
        "submit one task, wait for it, download the video",
        "  wan-async generate --simulate \"A paper boat\" --size '1280*720' --out boat.mp4\n"
        '  wan-async generate "A red fox in snow" --duration 10 --out videos/\n',
    )
    parser.add_argument("prompt", help="what the video shows")
    _add_request_options(parser)
    _add_out_options(parser)
    _add_simulate_options(parser)
    _add_progress_option(parser)


def _add_batch(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _command(
        commands,
        "batch",
        "run every prompt of a file; rerun the same command to resume",
        "  wan-async batch --simulate examples/prompts.txt --out-dir videos\n"
        "  wan-async batch prompts.json --out-dir videos --size '1280*720' --concurrency 4\n"
        "  wan-async batch prompts.csv --format txt --out-dir videos\n"
        "  wan-async batch prompts.txt --out-dir videos --dry-run    # what it would bill\n",
    )
    parser.add_argument(
        "file",
        metavar="FILE",
        help="the prompts, told by the extension: .txt (one prompt per line; blank lines and "
        "# comments skipped), .jsonl or .ndjson (one JSON object per line: prompt and any "
        "request field, overriding the options below) or .json (one array of such objects "
        "or of prompt strings); other extensions are refused unless --format says",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="read FILE as this format whatever its extension",
    )
    parser.add_argument(
        "--out-dir", required=True, metavar="DIR", help="where the videos go (created if needed)"
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        metavar="N",
        help="tasks submitted and not yet ended at once (default: adapts to upstream's capacity)",
    )
    parser.add_argument(
        "--journal",
        metavar="FILE",
        help="the resume journal (default: DIR/journal.jsonl); its folder is created if needed",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="resubmit the items whose task failed in an earlier run for upstream's own "
        "reasons (InternalError, Throttling, timeouts), each a new billed task; failures of "
        "the request itself (moderation, invalid parameters) are not",
    )
    parser.add_argument(
        "--resubmit-unknown",
        action="store_true",
        help="submit again the items whose submit's answer an earlier run lost (a task may "
        "exist for each, so this may pay twice); asks first unless --yes",
    )
    parser.add_argument(
        "--yes",
        action="store_true",
        help="answer yes to --resubmit-unknown's question (needed when stdin is not a terminal)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate every item and print the tasks and seconds of video per model and "
        "size that the batch would bill; send nothing, write nothing",
    )
    parser.add_argument(
        "--results",
        metavar="FILE",
        help="one JSON line per item, for scripts (default: DIR/results.jsonl); its folder "
        "is created if needed",
    )
    _add_request_options(parser, title="request defaults (a JSON object's own fields win)")
    _add_simulate_options(parser)
    _add_progress_option(parser)


def _add_status(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _command(
        commands,
        "status",
        "show a task as the gateway last refreshed it",
        "  wan-async status task_0123456789abcdef --json\n",
    )
    parser.add_argument("task_id", metavar="TASK_ID", help="the id a submit answered")
    parser.add_argument("--json", action="store_true", help="print the snapshot as JSON")


def _add_wait(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _command(
        commands,
        "wait",
        "wait for a task submitted earlier and download it",
        "  wan-async wait task_0123456789abcdef --out videos/\n",
    )
    parser.add_argument("task_id", metavar="TASK_ID", help="the id a submit answered")
    _add_out_options(parser)
    _add_progress_option(parser)


def _add_request_options(
    parser: argparse.ArgumentParser, *, title: str = "request options"
) -> None:
    """The request's fields; ``dest`` is the field's name, ``None`` means "not sent"."""
    group = parser.add_argument_group(title)
    group.add_argument("--model", help=f"model name (default: {DEFAULT_MODEL})")
    group.add_argument(
        "--size",
        metavar="W*H",
        help="quoted for the shell, e.g. --size '1280*720' (default: 1920*1080)",
    )
    group.add_argument("--duration", type=int, metavar="SECONDS", help="5, 10 or 15 (default: 5)")
    group.add_argument("--negative-prompt", metavar="TEXT", help="what the video must not show")
    group.add_argument("--seed", type=int, help="0-2147483647, for repeatable results")
    group.add_argument(
        "--no-prompt-extend",
        dest="prompt_extend",
        action="store_const",
        const=False,
        help="send the prompt as written (no rewriting upstream)",
    )
    group.add_argument(
        "--watermark", action="store_const", const=True, help="add the provider's watermark"
    )
    group.add_argument(
        "--audio",
        action=argparse.BooleanOptionalAction,
        help="generate a soundtrack (default: on)",
    )
    group.add_argument("--audio-url", metavar="URL", help="a wav/mp3 to use as the soundtrack")
    group.add_argument("--shot-type", metavar="TYPE", help="single or multi (wan2.6)")


def _add_out_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--out",
        metavar="PATH",
        help="the video file, or a directory to save TASK_ID.mp4 in: an existing one, or a "
        "path ending in / (default: ./TASK_ID.mp4); missing folders are created",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")


def _add_simulate_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("offline")
    group.add_argument(
        "--simulate",
        action="store_true",
        help="run against a built-in gateway simulator (no API key, no network)",
    )
    group.add_argument(
        "--time-scale",
        type=_positive_float,
        default=DEFAULT_TIME_SCALE,
        metavar="X",
        help=f"simulated seconds per real second (default: {DEFAULT_TIME_SCALE:g})",
    )


def _add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        choices=("auto", "rich", "plain"),
        default="auto",
        help="how to show progress on stderr (default: auto, rich on a terminal if installed)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"must be a whole number of at least 1, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < math.inf:
        msg = f"must be a positive number, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value
