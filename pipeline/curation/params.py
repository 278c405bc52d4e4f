"""The curate stage's params: which endpoint writes the data, how much, and how it is filtered.

Kept apart from the stage module, which the workflow need not import when it builds every stage's
params at parse time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pipeline.core import stage
from pipeline.core.stage import bounded
from pipeline.curation.filters import CurationFilters
from pipeline.curation.openai_backend import ResponseFormat
from pipeline.data.schema import ControlKind, Family

FAMILY_FILES = {"persona": "personas.yaml", "goal": "goals.yaml", "scenario": "scenarios.yaml"}
"""Each control family's prompt template, in the templates folder."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")


@dataclass
class CurateParams:
    """Which endpoint writes the data, how much, and how it is filtered."""

    MIX_NAME: ClassVar[str] = "openai"
    """What ``train.mix`` calls this stage's rows (their ``source`` up to any colon)."""

    base_url: str = "https://api.openai.com/v1"
    """OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1 for vLLM or llama.cpp)."""
    model: str = "gpt-4o-mini"
    """Model name sent with every request; also names the source (``openai:<model>``)."""
    api_key_env: str = "OPENAI_API_KEY"
    """NAME of the environment variable holding the key ('' for servers without auth)."""
    families: list[Family] = field(default_factory=lambda: list(FAMILY_FILES))
    """Control families to generate: persona, goal, scenario."""
    samples_per_family: int = bounded(20, minimum=1)
    """Calls (one control each) per family."""
    dialogs_per_sample: int = bounded(3, minimum=1)
    """Dialog turns requested per control (one read dialog per turn and kind)."""
    qa_per_sample: int = bounded(3, minimum=1)
    """QA pairs requested per control."""
    kinds: list[ControlKind] = field(default_factory=lambda: ["system", "stimulus_completion"])
    """Read dialog kinds built from each control: system, stimulus_completion, stimulus, control."""
    temperature: float | None = 1.0
    """Sampling temperature (null omits it, for models that reject it)."""
    top_p: float | None = None
    """Nucleus sampling mass (null omits it)."""
    max_tokens: int = bounded(1500, minimum=1)
    """Output-token limit per call."""
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    """Request field carrying the limit: max_tokens, or max_completion_tokens (newer OpenAI)."""
    seed: int | None = 0
    """Per-call seed is seed + sample index (null omits it); part of the cache key."""
    response_format: ResponseFormat = "json_schema"
    """Strictest format to ask for: json_schema, json_object or none (falls back on 400/422)."""
    concurrency: int = bounded(8, minimum=1)
    """Requests in flight at once."""
    timeout_s: float = bounded(120.0, exclusiveMinimum=0)
    """Wall-clock limit of one HTTP attempt, in seconds."""
    max_attempts: int = bounded(6, minimum=1)
    """Attempts per call (first try included) on 429, 5xx, timeouts and connection errors."""
    backoff_base_s: float = bounded(1.0, minimum=0)
    """First retry waits about this long; the wait doubles each retry (jittered)."""
    backoff_max_s: float = bounded(60.0, minimum=0)
    """Longest backoff between attempts (a longer Retry-After is still honoured)."""
    max_failed_requests: int = bounded(0, minimum=0)
    """Calls allowed to fail after all retries before the stage errors (0: rerun retries them)."""
    prices: dict[str, dict[str, float]] | None = None
    """Optional {model: {input: USD per 1M tokens, output: USD per 1M tokens}} for the report."""
    cache_dir: str = "results/cache/openai"
    """Request cache folder (relative to the working directory); outside the store on purpose."""
    templates_dir: str = "data/curation"
    """Prompt templates; relative paths start at the repository root."""
    filters: CurationFilters = field(default_factory=CurationFilters)
    """Filters applied to the generated dialogs."""

    def __post_init__(self) -> None:
        if not self.families or not self.kinds:
            raise stage.ParamsError("curate: families and kinds must each name at least one")
        if self.api_key_env and not _ENV_NAME.fullmatch(self.api_key_env):
            # Not echoed: a key pasted here by mistake must not reach the log.
            raise stage.ParamsError(
                "curate: api_key_env must be the NAME of an environment "
                "variable (letters, digits, _), not a key"
            )
