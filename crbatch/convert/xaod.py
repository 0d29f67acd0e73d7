"""``crbatch convert xaod``: one xAOD → one DiVertAnalysis ntuple, by running DiVertAnalysis.

The reference drove DiVertAnalysis through ``wsl.exe`` with a shell string, a hard-coded ``mc16e``,
only the first input, failures masked by ``;`` and trained models registered by ``sed``-patching a
C++ header. Here, per input file (one batch job each, the same rules as every converter, see
:mod:`crbatch.convert.runner`):

- the command is a configurable list of argv tokens with ``{placeholders}``, run without a shell
  (file names never pass through a shell), optionally after sourcing setup scripts (the release's
  ``setup.sh``) in ``bash``, in a fresh per-file work directory;
- its output (``submit_dir/data-trees/<input name>.root`` by default) is checked with uproot (the
  tree is there) and moved atomically to ``<output-dir>/<stem>.root``; an existing complete output
  is skipped, so a rerun only does what is missing;
- fdeep JSON exports given with ``--add-training`` are copied into ``<work>/nn_models/`` with a
  ``models.json`` manifest, and the directory is passed in ``$CRBATCH_NN_MODELS_DIR`` (and to any
  ``{models_dir}`` placeholder): DiVertAnalysis reads its models from there.

Exit codes (``crbatch exit-codes``): missing input 10; input not a ROOT file 11; the command cannot
be started, or exits 0 without writing the expected file (its path is in the message) 3 — a
configuration problem a retry does not fix; DiVertAnalysis fails (non-zero exit, killed, timeout,
a setup script fails, an unreadable output) 20: not the user's input error, and a batch retry on
another node is the right first response; the scheduler's retry limit stops a file that always
crashes, and the message carries the last lines of its log.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import string
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from .. import outputs, schema
from ..config import StageConfig, add_config_arguments, load_yaml, resolve_config, validation_message
from ..errors import ConfigError, CrbatchError, ExitCode, InputCorrupt, InputMissing, Transient, worst
from ..inputs import expand, is_yaml_list
from .runner import Job, Outcome, interrupted

log = logging.getLogger(__name__)
divert_log = logging.getLogger("crbatch.divert")  # DiVertAnalysis's own output, line by line

PLACEHOLDERS = ("input", "input_name", "stem", "campaign", "data_type", "analysis", "nevents", "models_dir",
                "work_dir")  # fmt: skip
MODELS_SUBDIR = "nn_models"
MANIFEST = "models.json"
SETUP_ENV = "CRBATCH_DIVERT_SETUP"  # ':'-separated default for `setup` (the DiVertAnalysis image sets it)
SETUP_FAILED = 98  # exit status of the setup wrapper when sourcing a setup script fails
TAIL_LINES = 25
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
# A bash snippet, never built from input names: the scripts and the command arrive as "$@".
_SETUP_WRAPPER = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do '
    f'. "$1" || {{ echo "crbatch: sourcing $1 failed" >&2; exit {SETUP_FAILED}; }}; shift; n=$((n - 1)); done; '
    'exec "$@"'
)


def _setup_default() -> list[str]:
    return [p for p in os.environ.get(SETUP_ENV, "").split(":") if p]


def _check_template(tokens: list[str], what: str) -> list[str]:
    for tok in tokens:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(tok) if f is not None]
        except ValueError as e:
            raise ValueError(f"{what}: {tok!r}: {e} (write a literal brace as {{{{ or }}}})") from None
        for f in fields:
            if f not in PLACEHOLDERS:
                raise ValueError(f"{what}: {tok!r}: unknown placeholder {{{f}}}; known: {', '.join(PLACEHOLDERS)}")
    return tokens


class XaodInput(BaseModel):
    """One entry of a YAML input list: a file or wildcard, optionally with its own campaign/type."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    path: str = Field(validation_alias=AliasChoices("path", "input_file", "input"))
    campaign: str | None = Field(None, description="overrides the campaign for this entry")
    data_type: str | None = Field(None, validation_alias=AliasChoices("data_type", "type"))
    output_dir: str | None = Field(None, description="sub-directory of the output directory for this entry")


class ConvertXaodConfig(StageConfig):
    """xAOD → DiVertAnalysis ntuple, one per input file."""

    inputs: list[XaodInput] = Field(default_factory=list, description="files to convert (YAML list form)")
    output_dir: Path = Field(Path("ntuples"), description="where the ntuples (<stem>.root) are written")
    campaign: str | None = Field(None, description="MC campaign / data period for DiVertAnalysis -c (e.g. mc16e)")
    data_type: str = Field("signal", description="DiVertAnalysis sample type (-t), in its own vocabulary")
    analysis: str = Field("cr", description="DiVertAnalysis analysis (-a)")
    nevents: int | None = Field(None, gt=0, description="process only this many events per file (null: all)")
    add_training: list[str] = Field(
        default_factory=list,
        description="trained models for DiVertAnalysis: NAME/RUN/EPOCH (its fdeep export in exports_dir) or "
        "FILE.fdeep.json",
    )
    exports_dir: Path = Field(Path("exports"), description="where `crbatch export` wrote the fdeep JSON files")
    command: list[str] = Field(
        ["produce_ntuple.py", "-c", "{campaign}", "-t", "{data_type}", "-a", "{analysis}", "--nopileup",
         "--inputDS", "{input}"],
        description="DiVertAnalysis argv, one token per item; placeholders: " + ", ".join(PLACEHOLDERS),
    )  # fmt: skip
    nevents_args: list[str] = Field(["--nevents", "{nevents}"], description="appended when nevents is set")
    models_args: list[str] = Field(
        default_factory=list, description="appended when models are given (e.g. [--nn-models, '{models_dir}'])"
    )
    models_env: str = Field("CRBATCH_NN_MODELS_DIR", description="environment variable naming the models dir")
    setup: list[str] = Field(
        default_factory=_setup_default,
        description=f"scripts sourced in bash, in order, before the command (globs must match one file); "
        f"${SETUP_ENV} (':'-separated) sets the default",
    )
    produces: str = Field(
        "submit_dir/data-trees/{input_name}.root", description="the file the command writes, relative to its work dir"
    )
    tree: str = Field("trees_DV_", description="tree the produced ntuple must hold")
    work_dir: Path | None = Field(None, description="parent of the per-file work dirs (null: $TMPDIR, node-local)")
    keep_work_dir: bool = Field(False, description="keep a failed file's work dir (its path is logged)")
    timeout: float | None = Field(None, gt=0, description="seconds one file may run (null: no limit)")
    force: bool = Field(False, description="rerun even if a complete output exists")

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        if not v or not v[0]:
            raise ValueError("must name the program to run")
        return _check_template(v, "command")

    @field_validator("nevents_args", "models_args")
    @classmethod
    def _args(cls, v: list[str], info) -> list[str]:
        return _check_template(v, info.field_name)

    @field_validator("produces")
    @classmethod
    def _produces(cls, v: str) -> str:
        _check_template([v], "produces")
        if Path(v).is_absolute() or ".." in Path(v).parts:
            raise ValueError(f"{v!r}: must be a path inside the work dir")
        return v

    @field_validator("campaign", "data_type", "analysis")
    @classmethod
    def _name(cls, v: str | None, info) -> str | None:
        if v is not None and not _NAME.fullmatch(v):
            raise ValueError(f"{v!r}: expected letters, digits and _ . + - (no spaces), not starting with -")
        return v


# --------------------------------------------------------------------------------------------------
# Models (--add-training)


@dataclass(frozen=True)
class Model:
    name: str  # the name DiVertAnalysis gives the model (as the reference: NAME_RUN_EPOCH)
    path: Path


def _fdeep_name(path: Path) -> str:
    name = path.name.removesuffix(".json").removesuffix(".fdeep")
    return name.removeprefix("nn_config_")


def resolve_models(specs: list[str], exports_dir: Path) -> list[Model]:
    """The fdeep JSON of each ``--add-training`` spec, checked; raises before any file is processed."""
    from ..export.cli import parse_spec

    models: list[Model] = []
    for spec in specs:
        if spec.endswith(".json") or Path(spec).is_file():
            path, name = Path(spec), _fdeep_name(Path(spec))
        else:
            mname, run, epoch = parse_spec(spec)
            if run < 0 or epoch < 0:
                raise ConfigError(f"--add-training {spec}: give the run and epoch numbers (the export's file name)")
            path, name = exports_dir / f"{mname}_{run:05d}_e{epoch:03d}.fdeep.json", f"{mname}_{run}_{epoch}"
            if not path.exists():
                raise InputMissing(f"--add-training {spec}: {path} not found; export it first with "
                                   f"`crbatch export {spec} --format fdeep --output-dir {exports_dir}`")  # fmt: skip
        if not path.is_file():
            raise InputMissing(f"--add-training {spec}: {path}: no such file")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise InputCorrupt(f"--add-training {spec}: {path}: not readable JSON ({e})") from e
        if not isinstance(data, dict) or not {"architecture", "trainable_params"} <= data.keys():
            raise InputCorrupt(f"--add-training {spec}: {path}: not a frugally-deep model JSON "
                               "(no architecture/trainable_params); use `crbatch export --format fdeep`")  # fmt: skip
        if not _NAME.fullmatch(name):
            raise ConfigError(f"--add-training {spec}: model name {name!r} has characters DiVertAnalysis cannot use")
        if any(m.name == name for m in models):
            raise ConfigError(f"--add-training: two models are named {name!r}")
        models.append(Model(name, path))
    return models


def stage_models(models: list[Model], work: Path) -> Path:
    """Copy the models into ``<work>/nn_models/`` with the manifest DiVertAnalysis reads.

    Contract (docs/containers.md): ``nn_config_<name>.json`` per model, and ``models.json`` =
    ``{"models": [{"name", "file", "source", "sha256"}, ...]}`` in the order given.
    """
    d = work / MODELS_SUBDIR
    d.mkdir()
    entries = []
    for m in models:
        target = d / f"nn_config_{m.name}.json"
        shutil.copyfile(m.path, target)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        entries.append({"name": m.name, "file": target.name, "source": str(m.path.resolve()), "sha256": digest})
    (d / MANIFEST).write_text(json.dumps({"models": entries}, indent=1) + "\n")
    return d


# --------------------------------------------------------------------------------------------------
# One file


def output_stem(src: Path) -> str:
    """``DAOD_X.12345._000001.pool.root.1`` → ``DAOD_X.12345._000001``; ``x.root`` → ``x``."""
    return re.sub(r"(\.pool)?\.root(\.\d+)?$", "", src.name) or src.name


def root_entries(path: Path, tree: str) -> int:
    """Entries of ``tree`` in ``path``. Raises KeyError when the tree is missing, another exception
    (OSError, ValueError, uproot's) when the file is not a complete ROOT file."""
    import uproot

    with uproot.open(path) as f:
        # A closed ROOT file ends exactly where its header says: catches truncated copies cheaply.
        size, end = os.path.getsize(path), int(f.file.fEND)
        if end != size:
            raise OSError(f"truncated or corrupt ROOT file (its header says {end} bytes, the file has {size})")
        return int(f[tree].num_entries)


def _check_input(src: Path) -> None:
    try:
        with open(src, "rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError as e:
        raise InputMissing(f"{src}: no such file; check the path") from e
    except IsADirectoryError as e:
        raise InputCorrupt(f"{src}: is a directory, not an xAOD file") from e
    except PermissionError as e:
        raise InputCorrupt(f"{src}: permission denied; make the file readable") from e
    if magic != b"root":
        raise InputCorrupt(f"{src}: not a ROOT file (xAOD); recopy it")


@dataclass
class _Run:
    returncode: int
    tail: list[str]
    timed_out: bool


def _kill_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop the command and everything it started (its own session/process group)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _execute(argv: list[str], cwd: Path, env: dict[str, str], timeout: float | None) -> _Run:
    """Run ``argv`` (no shell) in ``cwd``; its output goes to our log and ``cwd/divert.log``."""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    timed_out = threading.Event()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)  # fmt: skip
    timer = None
    if timeout is not None:

        def expire() -> None:
            timed_out.set()
            _kill_group(proc, 5.0)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
    try:
        assert proc.stdout is not None
        with open(cwd / "divert.log", "w") as logfile:
            for line in proc.stdout:
                logfile.write(line)
                line = line.rstrip("\n")
                tail.append(line)
                divert_log.info("%s", line)
        proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
        _kill_group(proc)  # on SIGTERM/KeyboardInterrupt: never leave DiVertAnalysis running
    return _Run(proc.returncode, list(tail), timed_out.is_set())


def _setup_paths(patterns: list[str]) -> list[str]:
    out = []
    for pat in patterns:
        hits = sorted(glob.glob(os.path.expanduser(pat)))
        if len(hits) != 1:
            found = "nothing" if not hits else ", ".join(hits)
            raise ConfigError(f"setup script {pat!r} must match one file, matched {found}; check `setup` "
                              f"(or ${SETUP_ENV})")  # fmt: skip
        out.append(str(Path(hits[0]).resolve()))
    return out


def build_argv(cfg: ConvertXaodConfig, values: dict[str, str], setup: list[str], with_models: bool) -> list[str]:
    """The command line for one file: the templates filled token by token, behind the setup wrapper."""
    tokens = list(cfg.command)
    if cfg.nevents is not None:
        tokens += cfg.nevents_args
    if with_models:
        tokens += cfg.models_args
    argv = [t.format(**values) for t in tokens]
    if setup:
        argv = ["bash", "-c", _SETUP_WRAPPER, "crbatch-divert-setup", str(len(setup)), *setup, *argv]
    return argv


def _failure(src: Path, argv0: str, run: _Run, cfg: ConvertXaodConfig, setup: bool) -> CrbatchError:
    tail = "\n".join(f"    {line}" for line in run.tail[-TAIL_LINES:]) or "    (no output)"
    rc = run.returncode
    if run.timed_out:
        return Transient(f"{src}: DiVertAnalysis ran longer than timeout={cfg.timeout:g} s and was stopped; "
                         f"last output:\n{tail}")  # fmt: skip
    if setup and rc == SETUP_FAILED:
        return Transient(f"{src}: a setup script failed before DiVertAnalysis started:\n{tail}")
    if setup and rc in (126, 127):
        return ConfigError(f"{src}: {argv0!r} {'not found' if rc == 127 else 'not executable'} after the setup "
                           f"scripts (exit {rc}); check `command` and `setup`:\n{tail}")  # fmt: skip
    how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
    return Transient(f"{src}: DiVertAnalysis {how}; last output:\n{tail}")


def _listing(work: Path, limit: int = 10) -> str:
    found = sorted(str(p.relative_to(work)) for p in work.rglob("*.root"))
    return ", ".join(found[:limit]) + (" …" if len(found) > limit else "") if found else "no .root file"


def convert_xaod_file(job: Job, cfg: ConvertXaodConfig, models: list[Model], setup: list[str]) -> Outcome:
    """Run DiVertAnalysis on ``job.src`` (after sourcing the resolved ``setup`` scripts) and move its
    ntuple to ``job.out`` atomically."""
    entry: XaodInput | None = job.entry
    src = job.src
    outputs.check_output(job.out, "ntuple", [src], tree=cfg.tree)
    if not cfg.force and job.out.exists():
        try:
            n = root_entries(job.out, cfg.tree)
            log.info("skip %s: complete (%d entries in %s)", job.out, n, cfg.tree)
            return Outcome(job, "skipped", n, "complete")
        except Exception as e:  # any reason it is not a complete ntuple: make it again
            log.info("redoing %s: not a complete ntuple (%s)", job.out, e)
    _check_input(src)
    campaign = (entry.campaign if entry else None) or cfg.campaign
    if campaign is None:
        raise ConfigError(f"{src}: no campaign; give --campaign (e.g. mc16e) or `campaign:` in its input entry")
    parent = cfg.work_dir
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"crbatch-xaod-{output_stem(src)}-", dir=parent))
    ok = False
    try:
        models_dir = stage_models(models, work) if models else None
        values = {
            "input": str(src.resolve()), "input_name": src.name, "stem": output_stem(src), "campaign": campaign,
            "data_type": (entry.data_type if entry else None) or cfg.data_type, "analysis": cfg.analysis,
            "nevents": str(cfg.nevents or ""), "models_dir": str(models_dir or ""), "work_dir": str(work),
        }  # fmt: skip
        argv = build_argv(cfg, values, setup, models_dir is not None)
        env = dict(os.environ)
        env.pop(cfg.models_env, None)  # never a models dir from the caller's environment: only --add-training
        if models_dir is not None:
            env[cfg.models_env] = str(models_dir)
        log.info("running DiVertAnalysis on %s in %s: %s", src, work, " ".join(argv))
        t0 = time.monotonic()
        try:
            run = _execute(argv, work, env, cfg.timeout)
        except (FileNotFoundError, PermissionError) as e:
            raise ConfigError(f"cannot start {argv[0]!r} ({e.strerror}); set `command` in the config, or run "
                              "inside the DiVertAnalysis image (docs/containers.md)") from e  # fmt: skip
        if run.returncode != 0 or run.timed_out:
            raise _failure(src, cfg.command[0], run, cfg, bool(setup))
        produced = work / cfg.produces.format(**values)
        if not produced.is_file():
            raise ConfigError(f"{src}: DiVertAnalysis exited 0 but did not write {produced} (found: "
                              f"{_listing(work)}); check `produces` in the config")  # fmt: skip
        try:
            n = root_entries(produced, cfg.tree)
        except KeyError as e:
            raise ConfigError(f"{src}: {produced} has no tree {cfg.tree!r}; check `tree` in the config") from e
        except Exception as e:
            raise Transient(f"{src}: DiVertAnalysis wrote an unreadable {produced} ({e})") from e
        schema.remove_stale_tmp(job.out.parent, job.out.name)
        with schema.atomic_output(job.out) as tmp:
            shutil.move(produced, tmp)
        ok = True
        log.info("wrote %s: %d entries in %s (%.0f s)", job.out, n, cfg.tree, time.monotonic() - t0)
        if n == 0:
            log.warning("%s: DiVertAnalysis wrote no event (empty tree %s)", job.out, cfg.tree)
        return Outcome(job, "converted" if n else "empty", n)
    finally:
        if ok or not cfg.keep_work_dir:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log.warning("kept the work dir of %s: %s", src, work)


# --------------------------------------------------------------------------------------------------
# Many files, and the command line


def plan(sources: list[tuple[XaodInput | None, Path]], output_dir: Path, out: Path | None) -> list[Job]:
    """``<output-dir>[/<entry output_dir>]/<stem>.root``; same-named inputs get a hash of their path."""
    if out is not None:
        if len(sources) != 1:
            raise CrbatchError(f"--out names one file but {len(sources)} inputs were given; use --output-dir",
                               ExitCode.USAGE)  # fmt: skip
        return [Job(sources[0][1], out, sources[0][0])]
    jobs = []
    for entry, src in sources:
        d = output_dir / entry.output_dir if entry is not None and entry.output_dir else output_dir
        jobs.append(Job(src, d / f"{output_stem(src)}.root", entry))
    seen = collections.Counter(j.out for j in jobs)
    for j in jobs:
        if seen[j.out] > 1:
            h = hashlib.sha1(str(j.src.resolve()).encode()).hexdigest()[:8]
            j.out = j.out.with_name(f"{output_stem(j.src)}-{h}.root")
    return jobs


def run_all(jobs: list[Job], cfg: ConvertXaodConfig, models: list[Model]) -> list[Outcome]:
    """Every job, one after the other; a failed file is reported and the run goes on."""
    setup = _setup_paths(cfg.setup)
    outcomes = []
    for i, job in enumerate(jobs, 1):
        log.info("file %d/%d: %s", i, len(jobs), job.src)
        try:
            outcomes.append(convert_xaod_file(job, cfg, models, setup))
        except CrbatchError as e:
            log.error("%s", e)
            outcomes.append(Outcome(job, "failed", 0, str(e), e.code))
        except Exception as e:  # a crbatch bug or an unforeseen problem: this file only, the others go on
            msg = f"{job.src}: unexpected error ({type(e).__name__}: {e}); please report it with the log"
            log.error("%s", msg, exc_info=True)
            outcomes.append(Outcome(job, "failed", 0, msg, ExitCode.INTERNAL))
        except (KeyboardInterrupt, SystemExit) as e:
            if not isinstance(e, SystemExit) or e.code == ExitCode.INTERRUPTED:
                interrupted(job, outcomes, len(jobs))
            raise
    return outcomes


def summarize(outcomes: list[Outcome]) -> ExitCode:
    c = collections.Counter(o.status for o in outcomes)
    events = sum(o.n_jets for o in outcomes if o.status in ("converted", "empty"))  # n_jets holds tree entries
    parts = [f"{c[s]} {s}" for s in ("converted", "empty", "skipped", "failed") if c[s]]
    level = logging.WARNING if c["failed"] else logging.INFO
    log.log(level, "summary: %d file(s): %s; %d events written", len(outcomes), ", ".join(parts) or "nothing", events)
    for o in outcomes:
        if o.status == "failed":
            log.warning("  failed [exit %d]: %s", int(o.code), o.message.splitlines()[0])
    return worst([o.code for o in outcomes])


def _entries(args: argparse.Namespace, cfg: ConvertXaodConfig) -> list[XaodInput]:
    entries = list(cfg.inputs)
    for arg in args.inputs:
        if not is_yaml_list(arg):
            entries.append(XaodInput(path=arg))
            continue
        data: Any = load_yaml(Path(arg), allow_list=True) if Path(arg).exists() else None
        if data is None:
            raise InputMissing(f"{arg}: input list not found; check the path")
        items = data.get("inputs", data.get("input_files")) if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ConfigError(f"{arg}: expected a list of inputs (or a mapping with key 'inputs')")
        for i, item in enumerate(items):
            try:
                entries.append(XaodInput.model_validate({"path": item} if isinstance(item, str) else item))
            except ValidationError as e:
                raise ConfigError(validation_message(e, f"{arg} entry {i}")) from e
    if not entries:
        raise CrbatchError("no inputs: give xAOD files, wildcards or a YAML input list", ExitCode.USAGE)
    return entries


def register(csub) -> None:
    """Add ``xaod`` to the ``crbatch convert`` subcommands."""
    x = csub.add_parser(
        "xaod",
        help="xAODs → DiVertAnalysis ntuples, by running DiVertAnalysis (one job per file)",
        description="Run the configured DiVertAnalysis command on each xAOD in its own work dir and move the "
        "ntuple it writes to OUTPUT_DIR/<stem>.root (atomically; a complete output is skipped). Its output "
        "feeds `crbatch convert divert`. Runs inside the DiVertAnalysis image (Dockerfile.divert). "
        "Exit codes: see `crbatch exit-codes` and docs/containers.md.",
    )
    x.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="xAOD files or wildcards (quote them), or a YAML list of {path, campaign, data_type}")  # fmt: skip
    x.add_argument("--out", type=Path, metavar="FILE.root", help="output file, for a single INPUT")
    add_config_arguments(x, ConvertXaodConfig, skip={"inputs", "command", "nevents_args", "models_args"})
    x.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(ConvertXaodConfig, args)
    entries = _entries(args, cfg)
    if args.print_config:
        cfg.inputs = entries
        print(cfg.to_yaml(), end="")
        return 0
    if cfg.campaign is None and any(e.campaign is None for e in entries):
        raise ConfigError("no campaign: give --campaign (e.g. mc16a, mc16d, mc16e, mc20e, data18), or `campaign:` "
                          "in the config or in every input entry (the reference hard-coded mc16e)")  # fmt: skip
    models = resolve_models(cfg.add_training, cfg.exports_dir)
    sources: list[tuple[XaodInput | None, Path]] = []
    failed: list[Outcome] = []
    for e in entries:
        try:
            sources += [(e, p) for p in expand(e.path)]
        except CrbatchError as err:
            log.error("%s", err)
            failed.append(Outcome(Job(Path(e.path), Path()), "failed", 0, str(err), err.code))
    outcomes = run_all(plan(sources, cfg.output_dir, args.out), cfg, models)
    return int(summarize(failed + outcomes))
