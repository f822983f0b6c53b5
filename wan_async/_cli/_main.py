"""``main()``: parse, run one command, and turn whatever happened into an exit status."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence

import anyio

from .._clock import Clock
from .._config import API_KEY_ENV
from ._batch import batch
from ._connect import DEFAULT_TIME_SCALE, Connection
from ._context import Context
from ._errors import CLIError, ExitCode, describe, exit_code_for, leaf_error
from ._parser import build_parser
from ._task import generate, status, wait

Command = Callable[[argparse.Namespace, Context], Awaitable[int]]

COMMANDS: Mapping[str, Command] = {
    "generate": generate,
    "batch": batch,
    "status": status,
    "wait": wait,
}
#: Keys shorter than this are not masked in output: masking them would garble every message.
_MIN_SECRET = 4


def main(argv: Sequence[str] | None = None, *, clock: Clock | None = None) -> int:
    """Run the ``wan-async`` command line and return its exit status.

    Args:
        argv: the arguments, without the program name (default: ``sys.argv[1:]``).
        clock: the client's clock; tests pass the ScaledClock of their FakeGateway.

    Returns:
        The exit status (see the module's table); ``sys.exit(main())`` runs the CLI.
    """
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if args.command == "simulate":
            return _simulate(rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    except SystemExit as exc:  # argparse's way out: --help, --version, a usage error
        return exc.code if isinstance(exc.code, int) else int(ExitCode.USAGE)
    secret = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    redact = Redactor(secret)
    ctx = Context(
        connection=Connection(
            api_key=args.api_key,
            base_url=args.base_url,
            allow_insecure_http=args.allow_insecure_http,
            simulate=getattr(args, "simulate", False),
            time_scale=getattr(args, "time_scale", DEFAULT_TIME_SCALE),
            clock=clock,
        ),
        progress=getattr(args, "progress", "auto"),
        quiet=args.quiet,
        redact=redact,
    )
    with _debug_logging(enabled=args.debug, redact=redact):
        return _run(COMMANDS[args.command], args, ctx, redact)


class Redactor:
    """Masks the API key in any text about to be shown, as a last line of defence."""

    def __init__(self, secret: str | None) -> None:
        value = (secret or "").strip()
        self._secret = value if len(value) >= _MIN_SECRET else None

    def __call__(self, text: str) -> str:
        """``text`` with every occurrence of the key replaced by ``***``."""
        return text.replace(self._secret, "***") if self._secret else text

    def __repr__(self) -> str:
        return "Redactor('***')"


async def _interruptible(command: Command, args: argparse.Namespace, ctx: Context) -> int:
    """Run ``command``; Ctrl-C (or SIGTERM) cancels it cleanly, on every Python version.

    Python 3.11's asyncio turns Ctrl-C into a cancellation of the main task, 3.10's raises
    KeyboardInterrupt wherever the loop happens to be: catching the signal ourselves makes the
    command's clean-up (results file, journal, a resume hint) run the same way on both.
    """
    if threading.current_thread() is not threading.main_thread():
        return await command(args, ctx)  # signals reach the main thread only
    interrupted = False
    async with anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def watch() -> None:
                nonlocal interrupted
                async for _ in signals:
                    interrupted = True
                    tg.cancel_scope.cancel()
                    return

            tg.start_soon(watch)
            code = await command(args, ctx)
            tg.cancel_scope.cancel()
    if interrupted:
        raise KeyboardInterrupt
    return code


def _run(command: Command, args: argparse.Namespace, ctx: Context, redact: Redactor) -> int:
    try:
        return int(anyio.run(_interruptible, command, args, ctx))
    except BaseException as caught:
        error = leaf_error(caught)
        if isinstance(error, KeyboardInterrupt):
            hint = f"; {ctx.interrupt_hint}" if ctx.interrupt_hint else ""
            _error_line(f"interrupted{hint}", redact)
            return int(ExitCode.INTERRUPTED)
        if not isinstance(error, Exception):
            raise
        if args.debug:
            text = "".join(traceback.format_exception(caught))
            print(redact(text), file=sys.stderr, end="")
        _error_line(f"error: {describe(error)}", redact)
        if isinstance(error, CLIError):
            for detail in error.details:
                _error_line(f"  {detail}", redact)
        return int(exit_code_for(error))


def _error_line(text: str, redact: Redactor) -> None:
    print(redact(text), file=sys.stderr, flush=True)


def _simulate(argv: Sequence[str]) -> int:
    """Serve the simulator: the very command ``python -m wan_async.testing`` runs."""
    from ..testing.__main__ import main as serve

    code = serve(argv, prog="wan-async simulate")
    # The simulator's own exit status 1 means "could not serve" (a port in use, a bad
    # setting): in this command's table that is 5, while 1 means failed tasks.
    return int(ExitCode.API) if code == 1 else code


class _RedactingFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(super().format(record))


@contextlib.contextmanager
def _debug_logging(*, enabled: bool, redact: Redactor) -> Iterator[None]:
    """Under ``--debug``, show the ``wan_async`` logger's DEBUG records on stderr."""
    if not enabled:
        yield
        return
    logger = logging.getLogger("wan_async")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter(redact))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
