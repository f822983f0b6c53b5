"""Make the simulator's bundled video: a 2 s, 160x90 H.264 test pattern with a quiet tone.

Run once at development time, and again only to change the clip::

    python tools/make_test_video.py

It needs the ``dev`` extra (``imageio-ffmpeg`` ships an ffmpeg binary); the runtime never
does: the simulator serves the committed file as package data. The flags make the output
byte-for-byte reproducible with the same ffmpeg build (no creation time, no encoder version
string, one encoder thread), so running it again leaves ``git status`` clean.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import imageio_ffmpeg

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "wan_async" / "testing" / "test_pattern.mp4"
#: Big enough to look at, small enough to ship in the wheel (the result is about 30 KB).
WIDTH, HEIGHT, FPS, SECONDS = 160, 90, 24, 2
#: The clip must stay "well under 100 KB": the script refuses to write a bigger one.
MAX_BYTES = 100_000


def ffmpeg_command(ffmpeg: str, output: Path) -> list[str]:
    """The ffmpeg command line that writes the clip to ``output``."""
    return [
        ffmpeg,
        "-v", "error",
        "-y",
        "-f", "lavfi",
        "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}:duration={SECONDS}",
        "-f", "lavfi",
        "-i", f"sine=frequency=440:sample_rate=44100:duration={SECONDS},volume=0.1",
        # H.264 Main profile in yuv420p: what every browser and player decodes.
        "-c:v", "libx264",
        "-profile:v", "main",
        "-pix_fmt", "yuv420p",
        "-crf", "28",
        "-g", str(FPS),
        "-threads", "1",
        "-c:a", "aac",
        "-b:a", "32k",
        "-ac", "1",
        # moov before mdat, so a player can start before the whole file has arrived.
        "-movflags", "+faststart",
        "-map_metadata", "-1",
        "-fflags", "+bitexact",
        "-flags", "+bitexact",
        "-shortest",
        str(output),
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Write the clip, check that it decodes, and print its size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run(ffmpeg_command(ffmpeg, args.output), check=True)
    subprocess.run(
        [ffmpeg, "-v", "error", "-xerror", "-i", str(args.output), "-f", "null", "-"],
        check=True,
    )
    size = args.output.stat().st_size
    if size > MAX_BYTES:
        print(f"error: {args.output} is {size} bytes, more than {MAX_BYTES}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
