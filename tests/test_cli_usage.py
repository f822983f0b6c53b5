"""What a new user meets at the command line: messages in its own words, exit codes as the
help's table says, ``--out`` paths, and help texts safe to paste into a shell."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from wan_async import VideoRequest, WanClient
from wan_async._cli import main
from wan_async._cli._connect import Connection, check_settings
from wan_async._cli._errors import CLIError, ExitCode
from wan_async.testing import FakeGateway

from .test_cli import KEY, WRONG_KEY, clean_env, cli, gw, no_gateway_env, run_cli, run_main

pytestmark = pytest.mark.anyio

__all__ = ["gw", "no_gateway_env"]  # fixtures
README = Path(__file__).parents[1] / "README.md"
#: Advice meant for Python callers, out of place in a terminal.
PYTHON_ADVICE = re.compile(r"api_key=|allow_insecure_http|overwrite=|attach\(|get_task\(|=True")
#: Characters a shell expands when they stand unquoted in a word.
GLOB = re.compile(r"[*?\[]")


def assert_cli_words(text: str) -> None:
    """``text`` gives no Python advice (``api_key=``, ``attach()``...)."""
    found = PYTHON_ADVICE.search(text)
    assert found is None, f"Python advice {found.group()!r} in: {text}"


# -- messages name flags and environment variables ----------------------------------------


def test_no_key_names_the_flag_and_the_variable(tmp_path: Path) -> None:
    """Without a key: --api-key and WAN_API_KEY, exit 4, nothing sent."""
    done = run_cli("status", "task_x", cwd=tmp_path)
    assert done.returncode == ExitCode.CONFIG
    assert "--api-key" in done.stderr
    assert "WAN_API_KEY" in done.stderr
    assert_cli_words(done.stderr)


@pytest.mark.parametrize(
    ("connection", "words"),
    [
        (Connection(api_key="  "), ["--api-key", "is empty", "WAN_API_KEY"]),
        (Connection(api_key="sk-a\nb"), ["--api-key", "line break"]),
        (Connection(api_key=KEY, base_url="ftp://x"), ["--base-url 'ftp://x'", "http(s)"]),
        (Connection(api_key=KEY, base_url="https://h/?a=1"), ["--base-url", "query"]),
        (
            Connection(api_key=KEY, base_url="http://gateway.example"),
            ["plain http", "--allow-insecure-http", "https://"],
        ),
    ],
)
def test_unusable_settings_are_refused_in_the_commands_words(
    connection: Connection, words: list[str], no_gateway_env: None
) -> None:
    """A bad key or base URL: exit 4, naming the flag to fix; no Python advice."""
    with pytest.raises(CLIError) as caught:
        check_settings(connection)
    assert caught.value.code is ExitCode.CONFIG
    for word in words:
        assert word in str(caught.value)
    assert_cli_words(str(caught.value))


def test_a_base_url_from_the_environment_is_named_as_such(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bad $WAN_BASE_URL is blamed on the variable, not on a flag never given."""
    monkeypatch.setenv("WAN_BASE_URL", "not a url")
    with pytest.raises(CLIError, match=r"^\$WAN_BASE_URL \('not a url'\)"):
        check_settings(Connection(api_key=KEY))


def test_allow_insecure_http_lets_plain_http_through(no_gateway_env: None) -> None:
    """``--allow-insecure-http`` is a global option, and passes a plain http base URL."""
    check_settings(
        Connection(api_key=KEY, base_url="http://gateway.example", allow_insecure_http=True)
    )
    assert main(["--allow-insecure-http", "status", "--help"]) == 0
    assert main(["status", "--allow-insecure-http", "--help"]) == 0


async def test_a_rejected_key_names_the_flag_and_the_variable(
    gw: FakeGateway, capsys: pytest.CaptureFixture[str], no_gateway_env: None
) -> None:
    """A 401: the gateway's answer, then --api-key and WAN_API_KEY; exit 4."""
    assert await run_main("status", "task_x", "--api-key", WRONG_KEY, gw=gw) == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert "HTTP 401" in err
    assert "Invalid token" in err
    assert "--api-key" in err
    assert "WAN_API_KEY" in err
    assert_cli_words(err)
    assert WRONG_KEY not in err


async def test_an_unknown_model_names_the_model_option(
    gw: FakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_gateway_env: None
) -> None:
    """503 model_not_found: the gateway's message and --model; exit 4."""
    args = ("generate", "a cat", "--model", "wan9-t2v", "--out", str(tmp_path / "a.mp4"))
    assert await run_main(*args, "--api-key", KEY, gw=gw) == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert "No available channel for model wan9-t2v" in err
    assert "--model" in err
    assert_cli_words(err)


def test_invalid_request_options_are_named_by_their_flags(tmp_path: Path) -> None:
    """Bad --size and --seed: both named as flags, with values as typed; exit 3."""
    done = run_cli(
        "generate", "--simulate", "a cat", "--size", "1*1", "--seed", "-1",
        "--no-prompt-extend", "--shot-type", "multi", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == ExitCode.INVALID
    assert "--size '1*1': " in done.stderr
    assert "--seed -1: " in done.stderr
    assert "--shot-type multi: only with prompt extension on (drop --no-prompt-extend)" in (
        done.stderr
    )
    assert_cli_words(done.stderr)


# -- exit codes as the table says ---------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "wait"])
@pytest.mark.parametrize("task_id", ["", "   "])
def test_an_empty_task_id_is_invalid_input(
    command: str, task_id: str, capsys: pytest.CaptureFixture[str], no_gateway_env: None
) -> None:
    """``status ""`` and ``wait ""`` exit 3 (invalid input), with or without a key."""
    for key in ([], ["--api-key", KEY]):
        assert main([command, task_id, *key, "--base-url", "http://127.0.0.1:9"]) == 3
        assert "TASK_ID is empty" in capsys.readouterr().err


def test_bad_numbers_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """A time scale that is not a finite positive number is refused by the parser (exit 2)."""
    for value in ("0", "-1", "inf", "nan", "fast"):
        assert main(["generate", "x", "--simulate", "--time-scale", value]) == ExitCode.USAGE
    assert "must be a positive number" in capsys.readouterr().err


def test_simulate_exit_codes_follow_the_table(tmp_path: Path) -> None:
    """A setting the simulator refuses is a usage error (2), not a failed task (1)."""
    done = run_cli("simulate", "--slots", "0", "--port", "0", cwd=tmp_path)
    assert done.returncode == ExitCode.USAGE
    assert "wan-async simulate: error: slots must be a positive integer" in done.stderr


def test_simulate_help_shows_its_own_command(tmp_path: Path) -> None:
    """``wan-async simulate --help`` says wan-async simulate; the module keeps its own name."""
    done = run_cli("simulate", "--help", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: wan-async simulate ")
    module = subprocess.run(
        [sys.executable, "-m", "wan_async.testing", "--help"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=True,
    )
    assert module.stdout.startswith("usage: python -m wan_async.testing ")


# -- --out ----------------------------------------------------------------------------------


async def test_wait_out_into_a_missing_directory_creates_it(
    gw: FakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_gateway_env: None
) -> None:
    """``--out newdir/`` saves newdir/TASK_ID.mp4; ``--out a/b/v.mp4`` creates a/b."""
    async with WanClient(api_key=KEY, base_url=gw.base_url, clock=gw.clock) as client:
        created = await client.create_task(VideoRequest(prompt="a cat", model="wan2.6-t2v"))
    task_id = created.task_id
    gw.finish_now(task_id)
    gw.refresh_now()
    folder = tmp_path / "newdir"
    code = await run_main("wait", task_id, "--out", f"{folder}/", "--api-key", KEY, gw=gw)
    assert code == 0, capsys.readouterr().err
    assert (folder / f"{task_id}.mp4").stat().st_size > 0
    nested = tmp_path / "a" / "b" / "v.mp4"
    code = await run_main("wait", task_id, "--out", str(nested), "--api-key", KEY, gw=gw)
    assert code == 0, capsys.readouterr().err
    assert nested.stat().st_size > 0
    # Saved once: the same --out again is refused before waiting (exit 2), unless --overwrite.
    code = await run_main("wait", task_id, "--out", f"{folder}/", "--api-key", KEY, gw=gw)
    assert code == ExitCode.USAGE
    assert "--overwrite" in capsys.readouterr().err


def test_generate_out_into_a_missing_directory_creates_it(tmp_path: Path) -> None:
    """``generate --out newdir/`` saves newdir/TASK_ID.mp4."""
    done = run_cli(
        "generate", "--simulate", "a cat", "--out", "newdir/", "--time-scale", "300", "-q",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    videos = list((tmp_path / "newdir").glob("task_*.mp4"))
    assert len(videos) == 1
    assert done.stdout.strip() == str(Path("newdir") / videos[0].name)


def test_out_that_cannot_be_a_folder_is_refused_before_submitting(tmp_path: Path) -> None:
    """A folder that cannot be created (a file is in the way): exit 2, nothing generated."""
    (tmp_path / "taken").write_text("a file")
    done = run_cli("generate", "--simulate", "a cat", "--out", "taken/v.mp4", cwd=tmp_path)
    assert done.returncode == ExitCode.USAGE
    assert "cannot create the directory taken" in done.stderr
    assert "task id" not in done.stdout


def test_batch_creates_the_folders_of_its_journal_and_results(tmp_path: Path) -> None:
    """``--journal`` and ``--results`` in folders not made yet: created, like --out-dir."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    done = run_cli(
        "batch", "--simulate", str(prompts), "--out-dir", "videos", "--journal",
        "state/journal.jsonl", "--results", "reports/today/results.jsonl",
        "--time-scale", "300", "-q", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "state" / "journal.jsonl").exists()
    assert (tmp_path / "reports" / "today" / "results.jsonl").exists()


# -- shell-safe examples --------------------------------------------------------------------


def command_lines(text: str) -> list[str]:
    """Lines of ``text`` that are ``wan-async`` commands (comments and prose left out)."""
    found = []
    for line in text.splitlines():
        start = line.find("wan-async ")
        if start < 0 or line.lstrip().startswith(("usage:", "#", "-", "`")):
            continue
        command = line[start:].split(" #")[0].strip().rstrip("`")
        if not command.startswith("wan-async ") or "`" in command:
            continue
        found.append(command)
    return found


def unquoted_globs(command: str) -> list[str]:
    """The words of ``command`` a shell would expand as file patterns."""
    lexer = shlex.shlex(command, posix=False, punctuation_chars=False)
    lexer.whitespace_split = True
    return [w for w in lexer if GLOB.search(w) and not w.startswith(("'", '"'))]


def test_readme_commands_quote_shell_patterns() -> None:
    """Every wan-async command in the README pastes safely: ``--size '1280*720'``, quoted."""
    in_code = []
    inside = False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if inside:
            in_code.append(line)
    commands = command_lines("\n".join(in_code))
    assert any("--size '1280*720'" in c for c in commands)
    for command in commands:
        assert unquoted_globs(command) == [], command


def test_help_examples_quote_shell_patterns(tmp_path: Path) -> None:
    """The examples in every --help, and the help of --size, quote what a shell expands."""
    helps = [run_cli("--help", cwd=tmp_path).stdout]
    for command in ("generate", "batch", "status", "wait"):
        helps.append(run_cli(command, "--help", cwd=tmp_path).stdout)
    for text in helps:
        for command in command_lines(text):
            assert unquoted_globs(command) == [], command
    assert "--size '1280*720'" in " ".join(helps[1].split())
    assert cli()  # the installed script ran
