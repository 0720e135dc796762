"""``thinchat data pseudo-label``: ask a stronger model to describe, translate or expand captions.

The teacher is either an OpenAI-compatible chat endpoint (a hosted VLM, vLLM, ``thinchat serve``), given
by its base URL, or a local checkpoint directory run through ``thinchat.engine.ChatEngine``. Output is
ThinGPT TSV (``id<TAB>caption``) appended one row at a time, so an interrupted run resumes where it
stopped (ids already written are skipped) and the file feeds ``data convert`` directly. Requests are
rate-limited; every failure is retried, then logged to ``<out>.failures.jsonl`` and counted, never fatal.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import yaml
from tqdm import tqdm

from data_tools.imagecheck import VIEWS
from data_tools.sources import Row, image_files, read_tsv
from thinchat.domain.language import is_chinese
from thinchat.errors import DataFormatError, ThinchatError
from thinchat.images import DEFAULT_MAX_PIXELS, load_image

log = logging.getLogger(__name__)
DEFAULT_PROMPTS = Path(__file__).with_name("prompts.yaml")
TASKS = ("describe", "translate", "expand")


class Teacher(Protocol):
    def generate(self, images: list[Any], prompt: str) -> str: ...


class OpenAITeacher:
    """Any OpenAI-compatible chat-completions endpoint; images travel as ``image_url`` data URIs."""

    def __init__(
        self, base_url: str, model: str, api_key: str | None, timeout: float, max_side: int = 1024
    ) -> None:
        from openai import OpenAI

        self.client = OpenAI(
            base_url=base_url,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
            timeout=timeout,
            max_retries=0,
        )
        self.model = model
        self.max_side = max_side

    def _data_uri(self, image: Any) -> str:
        img = image.copy()
        img.thumbnail((self.max_side, self.max_side))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

    def generate(self, images: list[Any], prompt: str) -> str:
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": self._data_uri(i)}} for i in images
        ]
        content.append({"type": "text", "text": prompt})
        response = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": content}], temperature=0.0
        )
        return response.choices[0].message.content or ""


class EngineTeacher:
    """A local thinchat checkpoint, through the shared chat engine."""

    def __init__(self, path: Path, **overrides: Any) -> None:
        from thinchat.engine import ChatEngine

        self.engine = ChatEngine.from_pretrained(path)
        self.overrides = overrides  # generation settings, e.g. max_new_tokens

    def generate(self, images: list[Any], prompt: str) -> str:
        return self.engine.describe(images, prompt, **self.overrides)


def make_teacher(
    spec: str, model: str = "default", api_key: str | None = None, timeout: float = 120.0
) -> Teacher:
    """``http(s)://...`` -> :class:`OpenAITeacher`; an existing directory -> :class:`EngineTeacher`."""
    if urlparse(spec).scheme in ("http", "https"):
        return OpenAITeacher(spec, model, api_key, timeout)
    path = Path(spec)
    if path.is_dir():
        return EngineTeacher(path)
    raise DataFormatError(
        f"--teacher {spec!r}: expected an OpenAI-compatible base URL (http://host:port/v1) or a checkpoint directory"
    )


class RateLimiter:
    """At most ``rate`` calls per second (0 = unlimited)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.last = -float("inf")

    def wait(self) -> None:
        delay = self.last + self.interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.last = time.monotonic()


@dataclass(frozen=True)
class Job:
    id: str
    images: tuple[Path, ...]
    caption: str = ""


def load_prompt(task: str, lang: str, prompt_file: str | Path | None) -> str:
    """The prompt template: ``--prompt-file`` (plain text, may use ``{caption}``) or the bundled one."""
    if prompt_file is not None:
        path = Path(prompt_file)
        if not path.is_file():
            raise DataFormatError(f"{path}: prompt file not found")
        return path.read_text(encoding="utf-8").strip()
    return str(yaml.safe_load(DEFAULT_PROMPTS.read_text(encoding="utf-8"))[task][lang])


#: Characters that would end a TSV field or line (TAB, line breaks incl. Unicode ones ``str.splitlines`` sees).
_TSV_BREAKERS = frozenset("\t\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")


def tsv_safe_id(job_id: str) -> bool:
    """Whether ``job_id`` can be written as the first TSV field without starting a new field or row.

    Why: ids come from file names, and a name may contain a TAB or a newline; written as is, it would
    inject a row of the file's choosing into the captions TSV that ``data convert`` reads next.
    """
    return bool(job_id) and not any(ch in _TSV_BREAKERS or ord(ch) < 32 for ch in job_id)


def _unsafe_ids(jobs: list[Job]) -> tuple[list[Job], list[str]]:
    kept, problems = [], []
    for job in jobs:
        if tsv_safe_id(job.id):
            kept.append(job)
        else:
            where = job.images[0] if job.images else job.id
            problems.append(
                f"{where!r}: the id {job.id!r} contains a TAB, line break or control character and "
                "cannot be written to a TSV; rename the file"
            )
    return kept, problems


def image_jobs(images_dir: Path) -> list[Job]:
    """One job per field: ``{id}_ppl`` + ``{id}_xpl`` together (PPL first), other images alone."""
    groups: dict[str, dict[str, Path]] = {}
    for path in image_files(images_dir):
        base, _, view = path.stem.rpartition("_")
        if base and view in VIEWS:
            groups.setdefault(base, {})[view] = path
        else:
            groups.setdefault(path.stem, {})[""] = path
    return [
        Job(key, tuple(views[v] for v in ("", *VIEWS) if v in views)) for key, views in sorted(groups.items())
    ]


def caption_jobs(captions: Path, images_dir: Path | None) -> tuple[list[Job], list[str]]:
    """Jobs from an existing TSV (``id<TAB>caption``), with the images of each id when found."""
    by_id = {job.id: job.images for job in image_jobs(images_dir)} if images_dir else {}
    jobs, problems = [], []
    for item in read_tsv(captions, "utf-8"):
        if isinstance(item, Row) and item.caption:
            jobs.append(Job(item.refs[0], by_id.get(item.refs[0], ()), item.caption))
        else:
            problems.append(f"{captions}:{item.line}: {getattr(item, 'reason', 'empty caption')}")
    return jobs, problems


def _done_counts(out: Path) -> Counter[str]:
    done: Counter[str] = Counter()
    if out.is_file():
        # errors="replace": a damaged line must not stop a resume (an id with a bad byte is labelled again).
        for line in out.read_text(encoding="utf-8", errors="replace").splitlines():
            if "\t" in line:
                done[line.split("\t", 1)[0]] += 1
    return done


def _jobs(
    task: str, lang: str, images: str | Path | None, captions: str | Path | None
) -> tuple[list[Job], list[str]]:
    """``(jobs, problems)`` for ``task``: the images to describe or the captions to rewrite, and the rows
    left out (unreadable, unsafe ids). Raises before any request for a missing input."""
    if task not in TASKS:
        raise DataFormatError(f"--task {task!r}: expected one of {', '.join(TASKS)}")
    if lang not in ("zh", "en"):
        raise DataFormatError(f"--lang {lang!r}: expected zh or en")
    images_dir = Path(images) if images is not None else None
    if images_dir is not None and not images_dir.is_dir():
        raise DataFormatError(f"{images_dir}: images directory not found; check --images")
    if task == "describe":
        if images_dir is None:
            raise DataFormatError("--task describe needs --images DIR")
        jobs, problems = image_jobs(images_dir), []
    else:
        if captions is None or not Path(captions).is_file():
            raise DataFormatError(
                f"--task {task} needs --captions FILE (id<TAB>caption) with the captions to rewrite"
            )
        jobs, problems = caption_jobs(Path(captions), images_dir)
    jobs, unsafe = _unsafe_ids(jobs)
    return jobs, [*problems, *unsafe]


def _with_retries(attempt: Any, retries: int, retry_wait: float) -> str:
    """Run ``attempt()`` until it succeeds: ``""``, or the last error.

    Why two kinds: a thinchat error (bad image, empty answer) fails the same way again, so it is not
    retried; anything else (network and server errors of any client library) is, with exponential waits.
    """
    error = ""
    for n in range(retries + 1):
        try:
            attempt()
            return ""
        except ThinchatError as exc:  # bad image or empty answer: retrying will not help
            return str(exc)
        except Exception as exc:  # network and server errors of any client library
            error = f"{type(exc).__name__}: {exc}"
            if n < retries:
                time.sleep(retry_wait * (2**n))
    return error


def _label_job(
    job: Job, bot: Teacher, prompt: str, task: str, limiter: RateLimiter, max_pixels: int, sink: Any
) -> None:
    """One request for ``job`` and its answer appended to ``sink`` (flushed, so a crash keeps it)."""
    imgs = [] if task == "translate" else [load_image(p, max_pixels=max_pixels) for p in job.images]
    limiter.wait()
    text = " ".join(bot.generate(imgs, prompt.replace("{caption}", job.caption)).split())
    if not text:
        raise DataFormatError("the teacher returned an empty answer")
    sink.write(f"{job.id}\t{text}\n")
    sink.flush()


def _record_failure(fails: Any, job_id: str, error: str) -> None:
    """Log a job that failed every try and append it to the failures file."""
    log.warning("%s: failed: %s", job_id, error)
    fails.write(json.dumps({"id": job_id, "error": error, "time": time.time()}, ensure_ascii=False) + "\n")
    fails.flush()


def pseudo_label(
    teacher: str | Teacher,
    out: str | Path,
    images: str | Path | None = None,
    task: str = "describe",
    lang: str = "zh",
    captions: str | Path | None = None,
    prompt_file: str | Path | None = None,
    rate: float = 1.0,
    retries: int = 2,
    retry_wait: float = 2.0,
    model: str = "default",
    api_key: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict[str, Any]:
    """Label every job not yet in ``out``; return counts (written, resumed, failed, skipped)."""
    jobs, problems = _jobs(task, lang, images, captions)
    template = load_prompt(task, lang, prompt_file)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    failures_path = out_path.with_name(out_path.name + ".failures.jsonl")
    done = _done_counts(out_path)
    bot = teacher if not isinstance(teacher, str) else make_teacher(teacher, model, api_key)
    limiter = RateLimiter(rate)
    seen: Counter[str] = Counter()
    stats = Counter(jobs=len(jobs), resumed=0, written=0, failed=0, skipped=len(problems))
    for problem in problems:
        log.warning("skipped %s", problem)
    with out_path.open("a", encoding="utf-8") as sink, failures_path.open("a", encoding="utf-8") as fails:
        for job in tqdm(jobs, desc=f"pseudo-label ({task})", unit="item"):
            seen[job.id] += 1
            if seen[job.id] <= done[job.id]:
                stats["resumed"] += 1
                continue
            if task == "translate" and is_chinese(job.caption) == (lang == "zh"):
                stats["skipped"] += 1
                log.info("%s: caption already in %s, not translated", job.id, lang)
                continue
            error = _with_retries(
                lambda job=job: _label_job(job, bot, template, task, limiter, max_pixels, sink),
                retries,
                retry_wait,
            )
            if error:
                stats["failed"] += 1
                _record_failure(fails, job.id, error)
            else:
                stats["written"] += 1
    return {**dict(stats), "out": str(out_path), "failures": str(failures_path), "task": task, "lang": lang}
