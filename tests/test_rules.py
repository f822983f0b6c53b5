"""Model rules (SPEC §5): every rule, checked before any network call."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wan_async import MODEL_RULES, TaskFailed, ValidationError, VideoRequest, WanClient
from wan_async._rules import SIZES_480P, SIZES_720P, SIZES_1080P
from wan_async.testing import FakeGateway, ScaledClock

W25 = "wan2.5-t2v-preview"
W26 = "wan2.6-t2v"


def problems(**kwargs: object) -> dict[str, str]:
    """Build a request and return {field: allowed} of its problems ({} when valid)."""
    try:
        VideoRequest(**kwargs)  # type: ignore[arg-type]
    except ValidationError as exc:
        return {p.field: p.allowed for p in exc.problems}
    return {}


def test_minimal_requests_are_valid() -> None:
    """Only prompt and model are required."""
    assert problems(prompt="a cat", model=W25) == {}
    assert problems(prompt="a cat", model=W26) == {}


@pytest.mark.parametrize(("model", "limit"), [(W25, 2000), (W26, 1500)])
def test_prompt_length_limit(model: str, limit: int) -> None:
    """The prompt may be 1..limit characters, per model."""
    assert problems(prompt="x" * limit, model=model) == {}
    assert "prompt" in problems(prompt="x" * (limit + 1), model=model)
    assert "prompt" in problems(prompt="", model=model)
    assert "prompt" in problems(prompt="   ", model=model)


@pytest.mark.parametrize("model", [W25, W26])
def test_negative_prompt_limit(model: str) -> None:
    """negative_prompt may be up to 500 characters."""
    assert problems(prompt="p", model=model, negative_prompt="n" * 500) == {}
    assert "negative_prompt" in problems(prompt="p", model=model, negative_prompt="n" * 501)


@pytest.mark.parametrize("size", sorted(SIZES_480P | SIZES_720P | SIZES_1080P))
def test_sizes_per_model(size: str) -> None:
    """wan2.5 takes all three tiers; wan2.6 has no 480P tier."""
    assert problems(prompt="p", model=W25, size=size) == {}
    expected = {} if size not in SIZES_480P else {"size"}
    assert set(problems(prompt="p", model=W26, size=size)) == set(expected)


@pytest.mark.parametrize("size", ["1280x720", "1280*", "abc", "0*720", "1000*1000"])
def test_bad_sizes(size: str) -> None:
    """Malformed sizes and sizes outside the tiers are refused."""
    assert "size" in problems(prompt="p", model=W26, size=size)


@pytest.mark.parametrize(
    ("model", "ok", "bad"),
    [(W25, [5, 10], [15, 1, 0, -5]), (W26, [5, 10, 15], [20, 1, 0])],
)
def test_durations(model: str, ok: list[int], bad: list[int]) -> None:
    """wan2.5 makes 5 or 10 s; wan2.6 also 15 s."""
    for d in ok:
        assert problems(prompt="p", model=model, duration=d) == {}
    for d in bad:
        assert "duration" in problems(prompt="p", model=model, duration=d)


def test_shot_type_rules() -> None:
    """shot_type is wan2.6 only, and needs prompt_extend on (or unset, which means on)."""
    assert "shot_type" in problems(prompt="p", model=W25, shot_type="multi")
    assert problems(prompt="p", model=W26, shot_type="multi") == {}
    assert problems(prompt="p", model=W26, shot_type="single", prompt_extend=True) == {}
    assert "shot_type" in problems(prompt="p", model=W26, shot_type="multi", prompt_extend=False)
    assert "shot_type" in problems(prompt="p", model=W26, shot_type="panorama")


@pytest.mark.parametrize("model", [W25, W26, "wan9-future"])
def test_seed_range(model: str) -> None:
    """Seeds run 0..2147483647 for every model."""
    assert problems(prompt="p", model=model, seed=0) == {}
    assert problems(prompt="p", model=model, seed=2_147_483_647) == {}
    assert "seed" in problems(prompt="p", model=model, seed=-1)
    assert "seed" in problems(prompt="p", model=model, seed=2_147_483_648)
    assert "seed" in problems(prompt="p", model=model, seed=True)


def test_audio_fields() -> None:
    """audio is a bool; audio_url an http(s) URL; both may be set (audio_url wins upstream)."""
    assert problems(prompt="p", model=W26, audio=False, audio_url="https://x.test/a.mp3") == {}
    assert "audio_url" in problems(prompt="p", model=W26, audio_url="ftp://x.test/a.mp3")
    assert "audio_url" in problems(prompt="p", model=W26, audio_url="not a url")
    assert "audio" in problems(prompt="p", model=W26, audio="yes")


def test_unknown_model_gets_generic_checks_only() -> None:
    """A model not in the table passes with any well-formed size and duration."""
    assert problems(prompt="x" * 5000, model="wan3.0-t2v", size="4096*2160", duration=60) == {}
    assert set(problems(prompt="", model="wan3.0-t2v", size="big", duration=0)) == {
        "prompt",
        "size",
        "duration",
    }


def test_every_problem_is_reported_at_once() -> None:
    """One ValidationError names each field, its value and what is allowed."""
    with pytest.raises(ValidationError) as info:
        VideoRequest(
            prompt="x" * 1501,
            model=W26,
            size="832*480",
            duration=7,
            seed=-3,
            shot_type="multi",
            prompt_extend=False,
            negative_prompt="n" * 501,
        )
    err = info.value
    assert isinstance(err, ValueError)
    fields = [p.field for p in err.problems]
    assert sorted(fields) == sorted(
        ["prompt", "size", "duration", "seed", "shot_type", "negative_prompt"]
    )
    text = str(err)
    assert "832*480" in text
    assert "one of 5, 10, 15" in text
    assert "1501 characters" in text


def test_evolve_revalidates() -> None:
    """A frozen request cannot be turned invalid with attrs.evolve."""
    request = VideoRequest(prompt="p", model=W26)
    with pytest.raises(ValidationError):
        attrs.evolve(request, duration=11)


def test_rules_table_is_data() -> None:
    """The table has both models and is read-only."""
    assert set(MODEL_RULES) >= {W25, W26}
    assert MODEL_RULES[W26].durations == frozenset({5, 10, 15})
    with pytest.raises(TypeError):
        MODEL_RULES["x"] = MODEL_RULES[W26]  # type: ignore[index]


@given(
    model=st.sampled_from([W25, W26, "wan-next"]),
    prompt=st.text(max_size=2100),
    size=st.one_of(
        st.none(), st.text(max_size=12), st.sampled_from(sorted(SIZES_480P | SIZES_1080P))
    ),
    duration=st.one_of(st.none(), st.integers(-5, 30)),
    seed=st.one_of(st.none(), st.integers(-(2**32), 2**32)),
    shot_type=st.one_of(st.none(), st.sampled_from(["single", "multi", "other"])),
    prompt_extend=st.one_of(st.none(), st.booleans()),
)
def test_validation_matches_the_rules(
    model: str,
    prompt: str,
    size: str | None,
    duration: int | None,
    seed: int | None,
    shot_type: str | None,
    prompt_extend: bool | None,
) -> None:
    """Property: a request is refused exactly when some rule of SPEC §5 is broken."""
    rules = MODEL_RULES.get(model)
    expected: set[str] = set()
    if not prompt.strip() or (rules and len(prompt) > rules.prompt_max_chars):
        expected.add("prompt")
    if size is not None:
        w, _, h = size.partition("*")
        well_formed = w.isdigit() and h.isdigit() and w.isascii() and h.isascii()
        well_formed = well_formed and w[0] != "0" and h[0] != "0"
        if not well_formed or (rules and size not in rules.sizes):
            expected.add("size")
    if duration is not None and (duration <= 0 or (rules and duration not in rules.durations)):
        expected.add("duration")
    if seed is not None and not 0 <= seed <= 2_147_483_647:
        expected.add("seed")
    if shot_type is not None and (
        shot_type not in ("single", "multi")
        or (rules and (not rules.shot_type or prompt_extend is False))
    ):
        expected.add("shot_type")
    got = problems(
        model=model,
        prompt=prompt,
        size=size,
        duration=duration,
        seed=seed,
        shot_type=shot_type,
        prompt_extend=prompt_extend,
    )
    assert set(got) == expected


# -- upstream's failure codes (issue 15, item 2) ----------------------------------------------


@pytest.mark.parametrize(
    ("code", "worth"),
    [
        ("InternalError.Algo", True),
        ("InternalError", True),
        ("InternalError.Timeout", True),
        ("Throttling.RateQuota", True),
        ("RequestTimeOut", True),
        ("DataInspectionFailed", False),
        ("InvalidParameter", False),
        ("InvalidParameter.DataInspection", False),
        ("Arrearage", False),
        ("SomethingNew", False),
        ("", False),
        (None, False),
    ],
)
def test_failure_codes_are_classified_as_data(code: str | None, worth: bool) -> None:
    """Upstream's own trouble is worth a new task; the request's fault and unknown codes
    are not (a resubmit costs money)."""
    failed = TaskFailed(task_id="t-1", code=code, message="Inference failed, please retry.")
    assert failed.retryable is worth
    assert ("submitting it again may succeed" in str(failed)) is worth
    assert ("fix the request" in str(failed)) is (not worth and code != "DataInspectionFailed")


@pytest.mark.anyio
async def test_an_upstream_internal_error_reads_retry_worthy_over_loopback() -> None:
    """Through the simulator: upstream's InternalError is retryable, moderation is not."""
    async with (
        FakeGateway(
            clock=ScaledClock(300), failure_rate=1.0, processing_time=lambda body, rng: 30.0
        ) as gw,
        WanClient(api_key=gw.api_key, base_url=gw.base_url, clock=gw.clock) as client,
    ):
        outcomes = await client.generate_many(
            [
                VideoRequest(prompt="an upstream hiccup", model="wan2.6-t2v"),
                VideoRequest(prompt="[fail] refused", model="wan2.6-t2v"),
            ],
            return_outcomes=True,
        )
    errors = [o.error for o in outcomes]
    assert all(isinstance(e, TaskFailed) for e in errors)
    assert [e.retryable for e in errors if isinstance(e, TaskFailed)] == [True, False]
