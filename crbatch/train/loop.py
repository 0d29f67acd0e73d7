"""The training loop: streamed batches → adversarial steps → per-epoch validation, files, checkpoint.

Data (:class:`TrainData`) comes from ``crbatch build`` datasets through the streaming reader
(crbatch.build.reader): host memory holds a few batches, never a dataset. On top of the reader:

* ``frac_list`` (reference: a random fraction of the rows): each epoch trains on the first
  ``ceil(frac · n_batches)`` batches of the reader's per-epoch shuffled batch order (a different,
  seeded selection each epoch, no wasted reads); validation uses the first ``frac`` of the
  validation files (a fixed subset, so epochs compare).
* ``include_low_mass`` xor ``include_high_mass`` (reference §3.6): signal jets of the other mass
  group and a seeded fraction of QCD and BIB jets (so that each keeps about as many jets as the
  selected signal) are masked out of the classifier loss (mask ``m``; the batch keeps its shape).
  Validation drops them. The selection is a hash of the jet's identity: fixed for the run.
* mass parametrisation (``mH_parametrization``/``mS_parametrization``; broken in the reference):
  mH and/or mS in TeV (÷1000) are appended as extra features to every constituent (padding slots
  included) and to the jet vector. Signal jets carry their truth masses; background and
  control-region jets get an (mH, mS) pair drawn from the signal training distribution (the
  counts of each mass point; saved as ``parametrization.json``), by a hash of the jet's identity,
  the seed and the epoch (validation: a fixed draw). Scoring a jet later means choosing the
  hypothesis (mH, mS) to append.

Every random choice is a pure function of (seed, epoch, position or jet identity), so a resumed
run reads exactly the batches the uninterrupted one would have read.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import schema, signals
from ..errors import ConfigError, InputEmpty, InputMissing, InputSchema, TrainingDiverged
from ..progress import Progress
from . import checkpoint, runs
from .config import MASS_SCALE, TrainConfig

log = logging.getLogger(__name__)

# Hash salts of the per-jet decisions (crbatch.build.select.mix), distinct from the build's.
SALT_MASS, SALT_SELECT = 0x3A55, 0x5E1EC7
ID_FIELDS = ("runNumber", "eventNumber", "jet_index")
TEST_SIGNAL_ENV = "CRBATCH_TRAIN_TEST_SIGTERM_AT"  # "EPOCH:STEP": the loop sends itself SIGTERM there (tests)

EpochHook = Callable[..., Mapping[str, float]]
"""Per-epoch validation, called as::

    hook(classifier, adversary, main_val, cr_val, epoch, out_dir, *, adversary_weight, jet_pt_window)

``classifier``: callable, list of the 4 input arrays → (N, 3) scores; ``adversary``: (N, 3) → (N, 1)
p(data); both in inference mode. ``main_val``/``cr_val``: callables returning a fresh iterator of
batches (dicts: ``clusters``, ``tracks``, ``msegs``, ``jet`` — model inputs, parametrisation masses
included —, ``label`` (main; CR: 0 MC, 3 data) and ``weight``). ``out_dir``: where the epoch's plots go.
Returns the epoch's history entries (``val_original_lossf``, ``ks_qcd_hist``, ...).
:func:`crbatch.evaluate.evaluate_epoch` is the default.
"""


# --- data ---------------------------------------------------------------------------------------------


def _u01(h: np.ndarray) -> np.ndarray:
    """uint64 hashes → uniform floats in [0, 1)."""
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _jet_hash(b: Mapping[str, np.ndarray], salt: int, seed: int, epoch: int) -> np.ndarray:
    from ..build.select import mix

    cols = [np.asarray(b[k]) for k in ID_FIELDS] + [np.asarray(b["label"] if "label" in b else b["target"])]
    return mix([*cols, np.full(len(cols[0]), epoch + 1, np.int64)], salt, seed)


@dataclass
class DatasetStats:
    """Streamed once over a main dataset's ``jets`` table (label and masses only)."""

    n: int
    per_label: dict[int, int]
    mass_points: np.ndarray  # (K, 2) signal (mH, mS), GeV
    mass_counts: np.ndarray  # (K,)
    n_signal_selected: int  # signal jets passing the mass selection

    @classmethod
    def scan(cls, path: Path, selection: tuple[float, ...] | None, chunk: int = 1 << 20) -> DatasetStats:
        import h5py
        import hdf5plugin  # noqa: F401

        per_label: dict[int, int] = {}
        masses: dict[tuple[float, float], int] = {}
        n_sel = 0
        with h5py.File(path, "r") as f:
            ds = f["jets"]
            n = ds.shape[0]
            for a in range(0, n, chunk):
                j = ds.fields(["label", "llp_mH", "llp_mS"])[a : a + chunk]
                labs, cnt = np.unique(j["label"], return_counts=True)
                for lab, c in zip(labs.tolist(), cnt.tolist(), strict=True):
                    per_label[lab] = per_label.get(lab, 0) + c
                sig = j[j["label"] == int(schema.Label.SIGNAL)]
                if len(sig):
                    pts, c = np.unique(np.stack([sig["llp_mH"], sig["llp_mS"]], 1), axis=0, return_counts=True)
                    for p, k in zip(map(tuple, pts.tolist()), c.tolist(), strict=True):
                        masses[p] = masses.get(p, 0) + k
                    if selection is not None:
                        n_sel += int(_mass_in(sig["llp_mH"], selection).sum())
        keys = sorted(masses)
        return cls(n, per_label, np.array(keys, np.float64).reshape(-1, 2),
                   np.array([masses[k] for k in keys], np.int64), n_sel)  # fmt: skip

    def keep_fraction(self, label: int) -> float:
        """Fraction of a background class kept by the mass selection (about as many as the selected signal)."""
        n = self.per_label.get(label, 0)
        return min(1.0, self.n_signal_selected / n) if n else 1.0


def _mass_in(mh: np.ndarray, points: tuple[float, ...]) -> np.ndarray:
    return np.any(np.isclose(np.asarray(mh, np.float64)[:, None], np.array(points)[None, :]), axis=1)


class TrainData:
    """The training and validation batches of a run, in the form the steps and the hook take."""

    def __init__(self, cfg: TrainConfig):
        from ..build.reader import DatasetReader

        self.cfg = cfg
        self.paths = {(r, s): cfg.dataset_path(r, s) for r in ("main", "cr") for s in ("train", "val")}
        self.attrs = {k: check_dataset(p) for k, p in self.paths.items()}
        self.selection = cfg.mass_selection
        self.stats = DatasetStats.scan(self.paths["main", "train"], self.selection)
        self.val_stats = DatasetStats.scan(self.paths["main", "val"], self.selection)
        if self.stats.per_label.get(int(schema.Label.SIGNAL), 0) == 0 and (cfg.n_mass_features or self.selection):
            raise InputEmpty(
                f"{self.paths['main', 'train']}: no signal jets, needed by the mass parametrisation/selection"
            )
        if self.selection is not None and self.stats.n_signal_selected == 0:
            raise InputEmpty(f"{self.paths['main', 'train']}: no signal jet with mH in {list(self.selection)}")
        n = self.stats.n
        if cfg.num_splits:  # reference batching: num_splits steps of ceil(frac·N / num_splits) jets
            self.batch_size = max(1, math.ceil(cfg.frac_list * n / cfg.num_splits))
            drop_last = False
        else:
            self.batch_size = min(cfg.batch_size, n)
            drop_last = True  # fixed shapes: one compiled step; the reader rotates which jets are dropped
        self.fields = [*ID_FIELDS, "llp_mH", "llp_mS"]
        weight = "mcEventWeight" if cfg.weight_column == "none" else cfg.weight_column
        cr_weight = "mcEventWeight" if cfg.cr_weight_column == "none" else cfg.cr_weight_column
        self.reader = DatasetReader(
            self.paths["main", "train"], self.paths["cr", "train"], batch_size=self.batch_size, seed=cfg.seed,
            drop_last=drop_last, weight=weight, cr_weight=cr_weight, jet_fields=self.fields, prefetch=2,
        )  # fmt: skip
        per_epoch = len(self.reader)
        self.steps = min(cfg.num_splits, per_epoch) if cfg.num_splits else max(1, math.ceil(cfg.frac_list * per_epoch))
        self._weights = (weight, cr_weight)
        if cfg.n_mass_features:
            c = self.stats.mass_counts.astype(np.float64)
            self.mass_cdf = np.cumsum(c) / c.sum()

    @staticmethod
    def check_inputs(cfg: TrainConfig) -> None:
        """Exit 10/11/12/13 early on a missing, unreadable, foreign or empty dataset."""
        for r in ("main", "cr"):
            for s in ("train", "val"):
                check_dataset(cfg.dataset_path(r, s))

    def close(self) -> None:
        self.reader.close()

    def builds(self) -> dict[str, str]:
        """``main_train``, ``cr_val``, ...: the build id of each dataset the run reads."""
        return {f"{r}_{s}": str(a.get(schema.A_BUILD_ID, "")) for (r, s), a in self.attrs.items()}

    @property
    def parametrization(self) -> dict[str, Any]:
        return {
            "features": [
                n for n, on in (("mH", self.cfg.mH_parametrization), ("mS", self.cfg.mS_parametrization)) if on
            ],
            "scale": f"GeV / {MASS_SCALE:g} (TeV)",
            "signal_mass_points_GeV": self.stats.mass_points.tolist(),
            "signal_counts": self.stats.mass_counts.tolist(),
            "background": "(mH, mS) drawn from the signal counts per jet (hash of jet id, seed, epoch)",
        }

    def reader_state(self, epoch: int, step: int) -> dict[str, int]:
        return {"epoch": epoch, "position": step, "seed": self.reader.seed, "batch_size": self.batch_size,
                "n_jets": self.reader.n_jets}  # fmt: skip

    def check_reader_state(self, saved: Mapping[str, int]) -> None:
        for k in ("n_jets", "batch_size", "seed"):
            mine = self.reader_state(0, 0)[k]
            if saved.get(k) != mine:
                raise ConfigError(
                    f"the run was trained with {k} = {saved.get(k)} of {self.paths['main', 'train']}, now {mine}: "
                    "the dataset or batching changed; start a new run"
                )  # fmt: skip

    # -- per-batch transforms --

    def _masses(self, b: Mapping[str, np.ndarray], epoch: int) -> np.ndarray | None:
        cfg = self.cfg
        if not cfg.n_mass_features:
            return None
        idx = np.searchsorted(self.mass_cdf, _u01(_jet_hash(b, SALT_MASS, cfg.seed, epoch)), side="right")
        drawn = self.stats.mass_points[np.minimum(idx, len(self.mass_cdf) - 1)]
        mh, ms = drawn[:, 0], drawn[:, 1]
        if "label" in b:
            sig = np.asarray(b["label"]) == int(schema.Label.SIGNAL)
            mh = np.where(sig, b["llp_mH"], mh)
            ms = np.where(sig, b["llp_mS"], ms)
        cols = [c for c, on in ((mh, cfg.mH_parametrization), (ms, cfg.mS_parametrization)) if on]
        return (np.stack(cols, axis=1) / MASS_SCALE).astype(np.float32)

    def _inputs(self, b: Mapping[str, np.ndarray], epoch: int) -> list[np.ndarray]:
        xs = [np.asarray(b[name], np.float32) for name in schema.INPUT_NAMES]
        m = self._masses(b, epoch)
        if m is None:
            return xs
        out = []
        for x in xs:
            extra = m if x.ndim == 2 else np.broadcast_to(m[:, None, :], (x.shape[0], x.shape[1], m.shape[1]))
            out.append(np.concatenate([x, extra], axis=-1))
        return out

    def _keep(self, b: Mapping[str, np.ndarray], stats: DatasetStats) -> np.ndarray | None:
        """Mass-selection mask of a main batch (None: no selection)."""
        if self.selection is None:
            return None
        label = np.asarray(b["label"])
        u = _u01(_jet_hash(b, SALT_SELECT, self.cfg.seed, -1))
        keep = np.zeros(len(label), bool)
        sig = label == int(schema.Label.SIGNAL)
        keep[sig] = _mass_in(np.asarray(b["llp_mH"])[sig], self.selection)
        for lab in (int(schema.Label.QCD), int(schema.Label.BIB)):
            sel = label == lab
            keep[sel] = u[sel] < stats.keep_fraction(lab)
        return keep

    def _weight(self, b: Mapping[str, np.ndarray], column: str) -> np.ndarray:
        w = np.asarray(b["weight"], np.float32)
        return np.ones_like(w) if column == "none" else w

    def train_batches(self, epoch: int, start: int) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(main, CR) step inputs of ``epoch`` from batch ``start`` on (``self.steps`` in all)."""
        self.reader.restore(self.reader_state(epoch, start))
        if start >= self.steps:
            return
        step = start
        for b in self.reader:
            keep = self._keep(b, self.stats)
            m = np.ones(len(b["label"]), np.float32) if keep is None else keep.astype(np.float32)
            main = {"x": self._inputs(b, epoch), "y": np.asarray(b["label"], np.int32),
                    "w": self._weight(b, self.cfg.weight_column) * m, "m": m}  # fmt: skip
            c = b["cr"]
            cr = {"x": self._inputs(c, epoch), "t": np.asarray(c["target"], np.float32),
                  "w": self._weight(c, self.cfg.cr_weight_column)}  # fmt: skip
            yield main, cr
            step += 1
            if step >= self.steps:
                return

    def val_batches(self, role: str, stop: Callable[[], bool] | None = None) -> Iterator[dict[str, Any]]:
        """The validation set of ``role`` (its first ``frac_list``), as the hook's batches."""
        from ..build.reader import DatasetReader

        cfg = self.cfg
        path = self.paths[role, "val"]
        weight = self._weights[0 if role == "main" else 1]
        column = cfg.weight_column if role == "main" else cfg.cr_weight_column
        n_max = math.ceil(cfg.frac_list * self.attrs[role, "val"][schema.A_N_JETS])
        seen = 0
        with DatasetReader(path, batch_size=cfg.eval_batch_size, shuffle=False, weight=weight,
                           jet_fields=self.fields, prefetch=1) as rd:  # fmt: skip
            for b in rd:
                if stop is not None and stop():
                    raise _Interrupted
                n = min(len(b["label"]), n_max - seen)
                if n <= 0:
                    return
                seen += n
                b = {k: v[:n] for k, v in b.items()}
                if role == "main":
                    keep = self._keep(b, self.val_stats)
                    if keep is not None:
                        b = {k: v[keep] for k, v in b.items()}
                xs = self._inputs(b, -1)
                out = dict(zip(schema.INPUT_NAMES, xs, strict=True))
                out["label"] = b["label"]
                out["weight"] = self._weight(b, column)
                if len(out["label"]):
                    yield out


def check_dataset(path: Path) -> dict[str, Any]:
    """A complete crbatch training dataset, or exit 10 (missing) / 11 (unreadable) / 12 (other schema,
    or files of two builds in its directory) / 13 (no jets)."""
    if not path.exists():
        hint = "give --data DIR (the output directory of `crbatch build`), or leave --data out to train on the demo datasets"
        raise InputMissing(f"{path}: training dataset not found; {hint}")
    from ..build.consistency import check_same_build

    attrs = schema.check_input(path)
    if attrs.get(schema.A_KIND) != "dataset":
        raise InputSchema(f"{path}: is a {attrs.get(schema.A_KIND)!r} file; training reads `crbatch build` datasets")
    if not attrs.get(schema.A_N_JETS):
        raise InputEmpty(f"{path}: no jets")
    check_same_build(path)
    return attrs


class _Interrupted(Exception):
    """A stop was requested during validation."""


# --- signals --------------------------------------------------------------------------------------


class StopFlag:
    """SIGTERM and SIGINT set a flag that the loop checks between steps (:func:`crbatch.signals.deferred`);
    a second signal stops at once (exit 21). A signal that arrived before (during start-up, its
    exception lost in a gc callback) counts as well."""

    def __init__(self) -> None:
        self._ctx: contextlib.AbstractContextManager | None = None

    def __call__(self) -> bool:
        return self._ctx is not None and signals.requested()

    @property
    def requested(self) -> bool:
        return self()

    def __enter__(self) -> StopFlag:
        self._ctx = signals.deferred()
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            ctx.__exit__(*exc)


# --- files ----------------------------------------------------------------------------------------


REFERENCE_KEYS = (
    "adv_loss", "adv_acc", "val_adv_loss", "val_adv_acc", "original_lossf", "original_acc",
    "original_adv_lossf", "original_adv_acc", "val_original_lossf", "val_original_acc",
    "val_original_adv_lossf", "val_original_adv_acc", "ks_qcd_hist", "ks_sig_hist", "ks_bib_hist",
)  # fmt: skip


def write_history(run_dir: Path, history: dict[str, list[float]]) -> None:
    runs.dump_json(run_dir / "history.json", history)
    keys = ["epoch", *[k for k in REFERENCE_KEYS if k in history]]
    keys += sorted(k for k in history if k not in keys)
    n = max((len(v) for v in history.values()), default=0)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(keys)
    for i in range(n):
        w.writerow([history[k][i] if i < len(history[k]) else "" for k in keys])
    runs.write_text(run_dir / "history.csv", buf.getvalue())


def save_classifier(model, path: Path) -> None:
    """``model.save`` atomically (Keras insists on the ``.keras`` suffix, so via a temporary folder)."""
    tmp = schema.tmp_path_for(path)  # a directory: removed by the next start if this process dies
    tmp.mkdir(parents=True)
    try:
        model.save(tmp / path.name)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model_summary(*models) -> str:
    lines: list[str] = []
    for m in models:
        m.summary(print_fn=lambda s, **kw: lines.append(s), line_length=110)
    return "\n".join(lines) + "\n"


# --- the loop -------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    status: str  # "complete" | "checkpointed"
    epochs_done: int
    run_dir: Path


def default_hook() -> EpochHook:
    from ..evaluate import evaluate_epoch

    return evaluate_epoch


def train(
    cfg: TrainConfig,
    run_dir: Path,
    *,
    hook: EpochHook | None = None,
    stop: StopFlag | None = None,
    allow_new_data: bool = False,
) -> TrainResult:
    """Train (or continue) the run in ``run_dir`` up to ``cfg.epochs`` epochs in total.

    Returns when done, or after writing a checkpoint when ``stop`` was set (SIGTERM). A resume on
    datasets of another build than the checkpoint's is refused (exit 3) unless ``allow_new_data``;
    a non-finite loss or state raises :class:`~crbatch.errors.TrainingDiverged` (exit 15) before
    anything of the epoch is written.
    """
    from . import adversarial as adv

    adv.keep_tensorflow_out()
    adv.configure_threads(cfg)
    adv.seed_all(cfg.seed)
    if cfg.deterministic:
        adv.enable_determinism()
    data = TrainData(cfg)
    try:
        return _Session(cfg, run_dir, data, hook or default_hook(), stop or StopFlag(), allow_new_data).run()
    finally:
        data.close()


class _Session:
    """One invocation's work on a run: restore, then train and validate epoch after epoch.

    Position in the run: ``epoch`` (0-based), ``step`` (batches of it done) and ``phase``: "train"
    (steps left in the epoch) or "eval" (all steps done, its validation and files not yet).
    """

    def __init__(self, cfg: TrainConfig, run_dir: Path, data: TrainData, hook: EpochHook, stop: StopFlag,
                 allow_new_data: bool = False):  # fmt: skip
        import keras

        from .adversarial import AdversarialTrainer
        from .model import build_adversary, build_classifier

        self.cfg, self.run_dir, self.data, self.hook, self.stop = cfg, run_dir, data, hook, stop
        self.allow_new_data = allow_new_data
        self.backend = keras.backend.backend()
        self.classifier, self.adversary = build_classifier(cfg), build_adversary()
        self.trainer = AdversarialTrainer(self.classifier, self.adversary, cfg)
        self.st = self.trainer.initial_state()
        self.ckpt = run_dir / checkpoint.NAME
        self.epoch, self.step, self.phase = 0, 0, "train"
        self.history: dict[str, list[float]] = {}
        self.times: dict[str, float] = {"train": 0.0}  # of the current epoch
        self.compiled = False
        self.test_stop = os.environ.get(TEST_SIGNAL_ENV)

    def run(self) -> TrainResult:
        from .model import count_params

        loaded = checkpoint.load_latest(self.run_dir)
        if loaded is not None:
            self.restore(*loaded)
        else:
            runs.write_text(self.run_dir / "model_summary.txt", model_summary(self.classifier, self.adversary))
            if self.cfg.n_mass_features:
                runs.dump_json(self.run_dir / "parametrization.json", self.data.parametrization)
        log.info("classifier %d parameters, adversary %d+%d; %d steps of %d jets per epoch, backend %s",
                 count_params(self.classifier)[0], *count_params(self.adversary), self.data.steps,
                 self.data.batch_size, self.backend)  # fmt: skip
        if self.epoch >= self.cfg.epochs:
            log.info("%s: all %d epochs done already", self.run_dir, self.cfg.epochs)
            return TrainResult("complete", self.epoch, self.run_dir)
        (self.run_dir / "epochs").mkdir(exist_ok=True)
        (self.run_dir / "plots").mkdir(exist_ok=True)
        while self.epoch < self.cfg.epochs:
            if self.phase == "train" and not self.train_epoch():
                return self.checkpointed()
            if self.stop() or not self.validate_epoch():
                return self.checkpointed()
            if self.stop():
                log.warning("stop requested: checkpoint written after epoch %d; resubmit to continue", self.epoch)
                return TrainResult("checkpointed", self.epoch, self.run_dir)
        return TrainResult("complete", self.epoch, self.run_dir)

    # -- phases --

    def train_epoch(self) -> bool:
        """The epoch's remaining steps; False when stopped before the end (position saved by the caller)."""
        import keras

        t0 = time.perf_counter()
        bar = Progress(self.data.steps, f"epoch {self.epoch}", "batches")
        bar.update(self.step)
        try:
            for main, cr in self.data.train_batches(self.epoch, self.step):
                if self.stop():
                    return False
                if self.compiled:
                    self.st = self.trainer.train_batch(self.st, main, cr)
                else:  # the first call traces and compiles: timed apart from the steady steps
                    tc = time.perf_counter()
                    self.st = self.trainer.train_batch(self.st, main, cr)
                    keras.ops.convert_to_numpy(self.st["acc"])
                    self.times["compile"] = self.times.get("compile", 0.0) + time.perf_counter() - tc
                    self.compiled = True
                self.step += 1
                bar.update(1)
                if self.test_stop == f"{self.epoch}:{self.step}":
                    os.kill(os.getpid(), signal.SIGTERM)
                if self.stop():
                    if self.step >= self.data.steps:
                        self.phase = "eval"
                    return False
        finally:
            bar.close()
            self.times["train"] += time.perf_counter() - t0
        self.phase = "eval"
        return True

    def validate_epoch(self) -> bool:
        """Metrics, classifier file, validation hook, history, checkpoint; False when stopped inside the hook."""
        import keras

        from .adversarial import ACC_NAMES, epoch_metrics, release_memory

        cfg, trainer, st = self.cfg, self.trainer, self.st
        t1 = time.perf_counter()
        train_m = epoch_metrics(keras.ops.convert_to_numpy(st["acc"]), cfg.adversary_weight)
        bad = checkpoint.non_finite(checkpoint.to_host(st))  # the loss sums (acc) and every weight
        if bad:
            raise self._diverged("training", bad, train_m)
        trainer.push(st)
        model_file = self.run_dir / "epochs" / f"{self.epoch:03d}.keras"
        save_classifier(self.classifier, model_file)
        try:
            val_m = self.hook(
                lambda x: trainer.predict(st, x), lambda p: trainer.predict_adversary(st, p),
                lambda: self.data.val_batches("main", self.stop), lambda: self.data.val_batches("cr", self.stop),
                self.epoch, self.run_dir / "plots", adversary_weight=cfg.adversary_weight,
                jet_pt_window=_jet_pt_window(self.data.attrs["main", "val"]),
            )  # fmt: skip
        except _Interrupted:
            return False
        except BaseException:
            try:
                self.save()  # the epoch's training is kept even if its validation fails
            except Exception as e:  # e.g. the same full disk: the first error is the one to report
                log.warning("could not write the checkpoint after the validation failed: %s", e)
            raise
        bad = [k for k, v in dict(val_m).items() if "loss" in k and not math.isfinite(float(v))]
        if bad:
            model_file.unlink(missing_ok=True)
            raise self._diverged("validation", bad, dict(val_m))
        t_eval = time.perf_counter() - t1
        release_memory()  # the validation's buffers: keep the RSS flat from epoch to epoch
        steady = self.times["train"] - self.times.get("compile", 0.0)
        entry = {"epoch": self.epoch, **train_m, **dict(val_m), "time_train_s": self.times["train"],
                 "time_compile_s": self.times.get("compile", 0.0), "time_eval_s": t_eval,
                 "train_jets_per_s": self.data.steps * self.data.batch_size / max(steady, 1e-9)}  # fmt: skip
        for k in set(self.history) | set(entry):
            self.history.setdefault(k, [math.nan] * self.epoch).append(_number(entry.get(k, math.nan)))
        write_history(self.run_dir, self.history)
        _plot_history(self.history, self.run_dir / "plots")
        self.st["acc"] = keras.ops.zeros((len(ACC_NAMES),), "float32")
        self.epoch, self.step, self.phase, self.times = self.epoch + 1, 0, "train", {"train": 0.0}
        self.save()
        log.info("epoch %d done (%d/%d): loss CE %.4f (val %.4f), adversary BCE %.4f (val %.4f), K-S sig %.3f; "
                 "%.0f jets/s, validation %.1f s", self.epoch - 1, self.epoch, cfg.epochs, train_m["original_lossf"],
                 entry.get("val_original_lossf", math.nan), train_m["adv_loss"], entry.get("val_adv_loss", math.nan),
                 entry.get("ks_sig_hist", math.nan), entry["train_jets_per_s"], t_eval)  # fmt: skip
        return True

    # -- checkpoint --

    def save(self) -> None:
        from .adversarial import ACC_NAMES

        meta = {"epoch": self.epoch, "step": self.step, "phase": self.phase,
                "reader": self.data.reader_state(self.epoch, self.step), "history": self.history,
                "times": self.times, "backend": self.backend, "config": self.cfg.model_dump(mode="json"),
                "acc_names": list(ACC_NAMES), "steps_per_epoch": self.data.steps,
                "classifier_variables": [v.path for v in self.classifier.variables],
                "data_builds": self.data.builds()}  # fmt: skip
        checkpoint.write(self.ckpt, self.st, meta)

    def _diverged(self, where: str, bad: list[str], metrics: Mapping[str, Any]) -> TrainingDiverged:
        losses = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if "loss" in k)
        return TrainingDiverged(
            f"epoch {self.epoch}: training diverged: non-finite {where} values ({', '.join(bad[:3])}"
            f"{', …' if len(bad) > 3 else ''}; {losses}); nothing of epoch {self.epoch} was written and "
            f"{checkpoint.NAME} keeps the last good state — lower the learning rate (lr_values, now "
            f"{self.cfg.lr_values:g}) or check the inputs, then resume"
        )

    def checkpointed(self) -> TrainResult:
        self.save()
        log.warning("checkpoint written at epoch %d, step %d (%s): resubmit to continue", self.epoch, self.step,
                    self.phase)  # fmt: skip
        return TrainResult("checkpointed", self.epoch, self.run_dir)

    def restore(self, values: dict[str, np.ndarray], meta: dict[str, Any], keys: np.ndarray, path: Path) -> None:
        import keras

        self.check_data(meta.get("data_builds"), path)
        if meta.get("backend") != self.backend:
            log.warning("checkpoint written by the %s backend, resuming on %s: continues, but not bit-identically",
                        meta.get("backend"), self.backend)  # fmt: skip
        host = checkpoint.restore_state(values, checkpoint.to_host(self.st), path)
        self.st = keras.tree.map_structure(keras.ops.convert_to_tensor, host)
        checkpoint.set_rng_state(meta["rng"], keys)
        self.data.check_reader_state(meta["reader"])
        self.epoch, self.step, self.phase, self.history = meta["epoch"], meta["step"], meta["phase"], meta["history"]
        self.times = meta.get("times", self.times)
        if path.name != checkpoint.NAME:  # the previous checkpoint: the history files follow it back
            write_history(self.run_dir, self.history)
        log.info("resuming %s at epoch %d, step %d/%d (%s)", self.run_dir, self.epoch, self.step, self.data.steps,
                 self.phase)  # fmt: skip

    def check_data(self, saved: Mapping[str, str] | None, path: Path) -> None:
        """The datasets must be those of the checkpoint's build (exit 3), unless ``allow_new_data``."""
        if saved is None:  # a checkpoint of an older crbatch: it did not record them
            return
        now = self.data.builds()
        changed = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
        if not changed:
            return
        what = ", ".join(f"{k}.h5: build {a or '?'} → {b or '?'}" for k, (a, b) in changed.items())
        if not self.allow_new_data:
            raise ConfigError(
                f"cannot resume {self.run_dir}: its datasets were rebuilt since {path.name} was written ({what}); "
                "start a new run, or give --allow-new-data to continue this one on the new data"
            )
        log.warning("resuming on rebuilt datasets (--allow-new-data): %s", what)
        runs.append_details(self.run_dir, "new data", {"allowed by": "--allow-new-data", "datasets": what})


def _number(v: Any) -> float | int:
    return v if isinstance(v, int) else float(v)


def _jet_pt_window(attrs: Mapping[str, Any]) -> tuple[float, float]:
    from ..evaluate import jet_pt_window_from_attrs

    return jet_pt_window_from_attrs(attrs)


def _plot_history(history: dict[str, list[float]], out: Path) -> None:
    try:
        from ..evaluate.history import plot_history
    except ImportError:  # plotting is optional for the loop
        return
    plot_history(history, out)
