"""Per-model limits (SPEC §5) as data, and the one function that checks a request against them.

A new model is a new :class:`ModelRules` row in :data:`MODEL_RULES`, never a code branch.
Models not in the table get only the generic checks: the gateway may serve newer models.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import attrs

from ._exceptions import Problem, ValidationError

if TYPE_CHECKING:
    from ._models import VideoRequest

SEED_MIN = 0
SEED_MAX = 2_147_483_647
SHOT_TYPES = frozenset({"single", "multi"})

SIZES_480P = frozenset({"832*480", "480*832", "624*624"})
SIZES_720P = frozenset({"1280*720", "720*1280", "960*960", "1088*832", "832*1088"})
SIZES_1080P = frozenset({"1920*1080", "1080*1920", "1440*1440", "1632*1248", "1248*1632"})

_SIZE_RE = re.compile(r"^[1-9][0-9]*\*[1-9][0-9]*$")


@attrs.frozen(kw_only=True)
class ModelRules:
    """What one model accepts."""

    name: str
    prompt_max_chars: int
    negative_prompt_max_chars: int
    sizes: frozenset[str]
    durations: frozenset[int]
    default_size: str = "1920*1080"
    default_duration: int = 5
    #: Whether ``shot_type`` is accepted at all.
    shot_type: bool = False
    #: Whether ``shot_type`` needs ``prompt_extend`` left on (it defaults to on upstream).
    shot_type_needs_prompt_extend: bool = True


MODEL_RULES: Mapping[str, ModelRules] = MappingProxyType(
    {
        rules.name: rules
        for rules in (
            ModelRules(
                name="wan2.5-t2v-preview",
                prompt_max_chars=2000,
                negative_prompt_max_chars=500,
                sizes=SIZES_480P | SIZES_720P | SIZES_1080P,
                durations=frozenset({5, 10}),
            ),
            ModelRules(
                name="wan2.6-t2v",
                prompt_max_chars=1500,
                negative_prompt_max_chars=500,
                sizes=SIZES_720P | SIZES_1080P,
                durations=frozenset({5, 10, 15}),
                shot_type=True,
            ),
        )
    }
)


def check_request(request: VideoRequest, rules: Mapping[str, ModelRules] = MODEL_RULES) -> None:
    """Check ``request`` against the generic rules and its model's row of ``rules``.

    Raises:
        ValidationError: listing every problem found, not just the first.
    """
    problems = list(_generic_problems(request))
    model_rules = rules.get(request.model) if isinstance(request.model, str) else None
    if model_rules is not None:
        problems.extend(_model_problems(request, model_rules))
    if problems:
        raise ValidationError(problems, model=str(request.model))


def _generic_problems(r: VideoRequest) -> list[Problem]:
    out: list[Problem] = []
    if not isinstance(r.model, str) or not r.model.strip():
        out.append(Problem(field="model", value=r.model, allowed="a non-empty model name"))
    if not isinstance(r.prompt, str) or not r.prompt.strip():
        out.append(Problem(field="prompt", value=r.prompt, allowed="a non-empty text"))
    if r.negative_prompt is not None and not isinstance(r.negative_prompt, str):
        out.append(Problem(field="negative_prompt", value=r.negative_prompt, allowed="a text"))
    if r.size is not None and (not isinstance(r.size, str) or not _SIZE_RE.match(r.size)):
        out.append(Problem(field="size", value=r.size, allowed='"WIDTH*HEIGHT", e.g. "1280*720"'))
    if r.duration is not None and (
        isinstance(r.duration, bool) or not isinstance(r.duration, int) or r.duration <= 0
    ):
        out.append(Problem(field="duration", value=r.duration, allowed="whole seconds > 0"))
    if r.seed is not None and (
        isinstance(r.seed, bool)
        or not isinstance(r.seed, int)
        or not SEED_MIN <= r.seed <= SEED_MAX
    ):
        out.append(Problem(field="seed", value=r.seed, allowed=f"an integer {SEED_MIN}-{SEED_MAX}"))
    for name in ("prompt_extend", "watermark", "audio"):
        value = getattr(r, name)
        if value is not None and not isinstance(value, bool):
            out.append(Problem(field=name, value=value, allowed="True or False"))
    if r.shot_type is not None and r.shot_type not in SHOT_TYPES:
        out.append(Problem(field="shot_type", value=r.shot_type, allowed='"single" or "multi"'))
    if r.audio_url is not None and not _is_http_url(r.audio_url):
        out.append(
            Problem(
                field="audio_url",
                value=r.audio_url,
                allowed="an http(s) URL of a wav or mp3 file, 3-30 s, at most 15 MB",
            )
        )
    return out


def _model_problems(r: VideoRequest, m: ModelRules) -> list[Problem]:
    out: list[Problem] = []
    if isinstance(r.prompt, str) and len(r.prompt) > m.prompt_max_chars:
        out.append(
            Problem(
                field="prompt",
                value=f"<{len(r.prompt)} characters>",
                allowed=f"at most {m.prompt_max_chars} characters for {m.name}",
            )
        )
    if isinstance(r.negative_prompt, str) and len(r.negative_prompt) > m.negative_prompt_max_chars:
        out.append(
            Problem(
                field="negative_prompt",
                value=f"<{len(r.negative_prompt)} characters>",
                allowed=f"at most {m.negative_prompt_max_chars} characters for {m.name}",
            )
        )
    if isinstance(r.size, str) and _SIZE_RE.match(r.size) and r.size not in m.sizes:
        out.append(Problem(field="size", value=r.size, allowed=f"one of {_sorted_sizes(m.sizes)}"))
    if (
        isinstance(r.duration, int)
        and not isinstance(r.duration, bool)
        and r.duration > 0
        and r.duration not in m.durations
    ):
        allowed = ", ".join(str(d) for d in sorted(m.durations))
        out.append(Problem(field="duration", value=r.duration, allowed=f"one of {allowed}"))
    if r.shot_type is not None:
        if not m.shot_type:
            out.append(
                Problem(field="shot_type", value=r.shot_type, allowed=f"not supported by {m.name}")
            )
        elif m.shot_type_needs_prompt_extend and r.prompt_extend is False:
            out.append(
                Problem(
                    field="shot_type",
                    value=r.shot_type,
                    allowed="only with prompt_extend=True (or left unset)",
                )
            )
    return out


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _sorted_sizes(sizes: frozenset[str]) -> str:
    def area(size: str) -> tuple[int, str]:
        w, h = size.split("*")
        return (int(w) * int(h), size)

    return ", ".join(sorted(sizes, key=area))
