"""The ``wan-async`` command line (also ``python -m wan_async``).

Commands::

    wan-async generate "PROMPT" --out video.mp4     submit one task, wait, download
    wan-async batch prompts.txt --out-dir videos    many tasks: progress, downloads, results
    wan-async status TASK_ID [--json]               one GET: the task as the gateway sees it
    wan-async wait TASK_ID --out video.mp4          attach to a task, wait, download
    wan-async simulate [--port 8000 ...]            serve the gateway simulator

``generate`` and ``batch`` take ``--simulate`` to run offline against an embedded simulator.

Exit codes:

=====  ==========================================================================
code   meaning
=====  ==========================================================================
0      all good
1      some batch items failed or are unknown; the task failed (generate, wait)
2      usage error (bad options, an --out that cannot be written, a simulator setting)
3      invalid input: request fields, prompts file (or its format), task id, another journal
4      authentication, permission or configuration (no key, 401, 403, no channel, base URL)
5      other API or network errors (the gateway, the connection, a download)
130    interrupted (Ctrl-C); a batch's journal keeps it resumable
=====  ==========================================================================

The library itself never imports :mod:`rich`; the CLI imports it lazily, only to draw
progress and tables, and prints plain lines without it.
"""

from __future__ import annotations

from ._main import main

__all__ = ["main"]
