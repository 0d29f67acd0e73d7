"""Running a converter over many files: output naming, skip-if-complete, atomic output, summary.

Rules every converter follows (the batch system relies on them):
- one input file → one output file with a deterministic name;
- a complete output (completion attribute set, same source) is skipped unless ``force``;
- output is written under a temporary name and renamed, so a killed job leaves nothing a later
  step accepts, and two jobs on the same file leave one intact output;
- a bad file is reported in one line and the run goes on; the exit code says whether a retry
  can help (:func:`crbatch.errors.worst`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import outputs, schema
from ..errors import CrbatchError, ExitCode, worst
from ..inputs import shown

log = logging.getLogger(__name__)


@dataclass
class Job:
    src: Path
    out: Path
    entry: Any = None


@dataclass
class Outcome:
    job: Job
    status: str  # converted | empty | skipped | failed
    n_jets: int = 0
    message: str = ""
    code: ExitCode = ExitCode.OK


def plan(sources: Sequence[tuple[Any, Path]], output_dir: Path, out: Path | None = None) -> list[Job]:
    """Output path for each (entry, source). Same-named sources get a short hash of their full
    path, so ``a/x.root`` and ``b/x.root`` never overwrite (or skip) each other."""
    if out is not None:
        if len(sources) != 1:
            raise CrbatchError(f"--out names one file but {len(sources)} inputs were given; use --output-dir",
                               ExitCode.USAGE)  # fmt: skip
        entry, src = sources[0]
        return [Job(src, out, entry)]
    jobs = []
    named = set()
    for entry, src in sources:
        if getattr(entry, "out", None):  # named by the batch plan (several files in one job)
            jobs.append(Job(src, Path(entry.out), entry))
            named.add(id(jobs[-1]))
            continue
        sub = getattr(entry, "output_dir", None)
        d = output_dir / sub if sub else output_dir
        jobs.append(Job(src, d / (src.stem + schema.SHARD_SUFFIX), entry))
    seen = Counter(j.out for j in jobs)
    for j in jobs:
        if seen[j.out] > 1 and id(j) not in named:
            h = hashlib.sha1(str(j.src.resolve()).encode()).hexdigest()[:8]
            j.out = j.out.with_name(f"{j.src.stem}-{h}{schema.SHARD_SUFFIX}")
    return jobs


def _existing(job: Job) -> str | None:
    """Why ``job`` can be skipped, or None if it must run."""
    try:
        attrs = schema.check_complete(job.out, "shard")
    except schema.NotAcceptedError as e:
        if job.out.exists():
            log.info("redoing %s: %s", shown(job.out), e)
        return None
    made_from = attrs.get("source_path")
    src = str(job.src.resolve())
    if made_from and made_from != src and not _same_remote_file(made_from, src):
        raise CrbatchError(
            f"{shown(job.out)}: already holds the shard of {shown(made_from)}, not of {shown(src)}; "
            "use another --output-dir, or --force to replace it",
            ExitCode.CONFIG,
        )
    size = attrs.get("source_size", -1)
    if size not in (-1, None) and _source_size(job.src) not in (None, size):
        log.info("redoing %s: %s changed size since it was converted", shown(job.out), shown(job.src))
        return None
    return f"complete ({attrs.get(schema.A_N_JETS, 0)} jets)"


def _same_remote_file(made_from: str, src: str) -> bool:
    """A grid file read from another replica (another root:// URL, or the local copy) is the same
    file when its name is: replicas move between storage elements, the file name does not."""
    from ..storage import basename, is_url

    return (is_url(made_from) or is_url(src)) and basename(made_from) == basename(src)


def _source_size(src: Any) -> int | None:
    from ..storage import RemotePath

    try:
        return src.size() if isinstance(src, RemotePath) else os.path.getsize(src)
    except (OSError, CrbatchError):
        return None


def run(jobs: Sequence[Job], convert: Callable[[Job, Path], dict[str, Any]], force: bool = False) -> list[Outcome]:
    """Every job in turn. A failure of one file — a bad input, a full disk, even a crbatch bug — is
    reported and the run goes on with the others; only a signal stops it (see :func:`interrupted`)."""
    outcomes: list[Outcome] = []
    for job in jobs:
        try:
            outcomes.append(_run_one(job, convert, force))
        except CrbatchError as e:
            log.error("%s", e)
            outcomes.append(Outcome(job, "failed", 0, str(e), e.code))
        except MemoryError:
            msg = f"{shown(job.src)}: out of memory; lower --step-size"
            log.error("%s", msg)
            outcomes.append(Outcome(job, "failed", 0, msg, ExitCode.TRANSIENT))
        except Exception as e:  # a crbatch bug or an unforeseen input problem: this file only
            msg = f"{shown(job.src)}: unexpected error ({type(e).__name__}: {_first_line(e)}); please report it with the log"
            log.error("%s", msg, exc_info=True)
            outcomes.append(Outcome(job, "failed", 0, msg, ExitCode.INTERNAL))
        except (KeyboardInterrupt, SystemExit) as e:
            if not isinstance(e, SystemExit) or e.code == ExitCode.INTERRUPTED:
                interrupted(job, outcomes, len(jobs))
            raise
    return outcomes


def _run_one(job: Job, convert: Callable[[Job, Path], dict[str, Any]], force: bool) -> Outcome:
    outputs.check_output(job.out, "shard", [job.src])
    why = None if force else _existing(job)
    if why:
        log.info("skip %s: %s", shown(job.out), why)
        return Outcome(job, "skipped", 0, why)
    schema.remove_stale_tmp(job.out.parent, job.out.name)
    with schema.atomic_output(job.out) as tmp:
        attrs = convert(job, tmp)
    n = int(attrs.get(schema.A_N_JETS, 0))
    if n:
        log.info("wrote %s: %d jets", shown(job.out), n)
    else:
        log.warning("%s: %s; wrote an empty shard %s", shown(job.src), empty_reason(attrs.get("cutflow")),
                    shown(job.out))  # fmt: skip
    return Outcome(job, "converted" if n else "empty", n)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"


def empty_reason(cutflow: Any) -> str:
    """Why no jet was written, from the cut flow (counts in the order the cuts apply): the first cut
    that left nothing, e.g. ``no jet passed the selection: 40 events read, 52 jets in the jet window,
    0 events with a BIB-flagged HLT jet (the cut that removed them)``."""
    if not isinstance(cutflow, dict) or not cutflow:
        return "no jet passed the selection"
    steps = [(k, int(v)) for k, v in cutflow.items() if k not in ("jets_written", "duplicate_matches_removed")]
    if steps and steps[0][1] == 0:
        return f"no jet passed the selection: the file has no event ({_CUT_NAMES.get(steps[0][0], steps[0][0])} = 0)"
    shown_steps = []
    for k, v in steps:
        shown_steps.append(f"{v} {_CUT_NAMES.get(k, k.replace('_', ' '))}")
        if v == 0:
            return f"no jet passed the selection: {', '.join(shown_steps)} (the cut that removed them)"
    return f"no jet passed the selection ({', '.join(shown_steps)})"


_CUT_NAMES = {
    "events_read": "events read",
    "jets_read": "jets read",
    "jets_in_window": "jets in the jet window (pT, |η|, cleaning)",
    "events_with_good_jet": "events with a jet in the window",
    "events_with_accepted_llp": "events with an LLP in the barrel/end-cap acceptance",
    "events_with_accepted_llp_and_good_jet": "of them with a jet in the window",
    "events_with_bib_hlt_jet": "events with a BIB-flagged HLT jet",
    "events_with_bib_hlt_jet_and_good_jet": "of them with a jet in the window",
    "events_with_matched_jet": "events with a jet matched within ΔR",
}


def interrupted(job: Job, done: Sequence[Outcome], total: int) -> None:
    """Say what a signal interrupted: the file being converted, and what is (not) written."""
    log.error(
        "interrupted while converting %s → %s (file %d of %d): its temporary file is removed and %s was not "
        "written; %d file(s) finished before; rerun the same command to continue (finished files are skipped)",
        shown(job.src), shown(job.out), len(done) + 1, total, shown(job.out.name), len(done),
    )  # fmt: skip


def summarize(outcomes: Sequence[Outcome]) -> ExitCode:
    """Log one summary line (and the failures again, so they are at the end of the log): INFO when
    every file succeeded, WARNING when some failed."""
    c = Counter(o.status for o in outcomes)
    jets = sum(o.n_jets for o in outcomes)
    parts = [f"{c[s]} {s}" for s in ("converted", "empty", "skipped", "failed") if c[s]]
    level = logging.WARNING if c["failed"] else logging.INFO
    log.log(level, "summary: %d file(s): %s; %d jets written", len(outcomes), ", ".join(parts) or "nothing", jets)
    for o in outcomes:
        if o.status == "failed":
            log.warning("  failed [exit %d]: %s", int(o.code), o.message.splitlines()[0] if o.message else "")
    return worst([o.code for o in outcomes])
