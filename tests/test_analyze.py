"""``crbatch analyze``: best-epoch selection, the combined score, and the report on small fake runs.

A "run" here is a directory in the training layout (config.yaml, history.json, epochs/NNN.keras)
holding a tiny random classifier and a made-up history, over datasets built from random shards —
no training, so the report code is tested in seconds, including without BIB and without a
control-region test split.
"""

from __future__ import annotations

import html
import html.parser
import json
import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from shards import write_set

from crbatch import cli
from crbatch.errors import ExitCode
from crbatch.evaluate import analyze as A
from crbatch.evaluate import analyze_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Debian's chromium (installed in CI): the report is rendered headless when it is there.
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()), None)


@pytest.fixture(scope="module", autouse=True)
def _analyze_registered():
    """``crbatch analyze`` through ``crbatch.cli.main`` whether or not cli.py registers it yet."""
    orig = cli.build_parser

    def build_parser():
        p = orig()
        sub = p._subparsers._group_actions[0]
        if "analyze" not in sub.choices:
            analyze_cli.register(sub)
        return p

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "build_parser", build_parser)
        yield


def analyze(*args) -> int:
    return cli.main(["-q", "analyze", *map(str, args)])


# --- best epochs (no files) ---------------------------------------------------------------------------


def _info(history: dict, saved=None, epoch=None) -> A.RunInfo:
    n = max(len(v) for v in history.values())
    return A.RunInfo(A.RunSpec("m", 0, epoch, "m/0"), Path("/nowhere/m/00000"), {}, history,
                     list(range(n)) if saved is None else saved, "m/0")  # fmt: skip


HIST = {
    "val_original_lossf": [1.0, 0.8, 0.6, 0.5, 0.55],
    "val_original_adv_lossf": [0.69, 0.5, 0.4, 0.3, 0.6],
    "val_adv_loss": [0.69, 0.5, 0.4, 0.3, 0.6],
    "val_adv_loss_chance": [0.69] * 5,
    "ks_qcd_hist": [0.3, 0.2, 0.1, 0.4, 0.1],
    "ks_sig_hist": [0.3, 0.2, 0.1, 0.4, 0.1],
    "ks_bib_hist": [0.3, 0.2, 0.1, 0.4, 0.1],
}


def test_reference_criteria_pick_the_two_smallest():
    rows = A.best_epochs(_info(HIST), 2)
    by = {}
    for r in rows:
        by.setdefault(r["criterion"], []).append(r["epoch"])
    assert by["Best NN loss"] == [3, 4]
    assert by["Best adversary loss"] == [3, 2]  # where the adversary wins: listed, as the reference did
    assert by["Best discriminator loss"] == [3, 2]
    assert by["Best K-S sum"] == [2, 4]  # ties: the earlier epoch first
    ks = [r["value"] for r in rows if r["criterion"] == "Best K-S sum"]
    assert ks == pytest.approx([0.3, 0.3])


def test_combined_score_balances_loss_ks_and_adversary_gap():
    info = _info(HIST)
    c = A.combined_score(info)
    assert c.shape == (5,) and np.all((c >= 0) & (c <= 1))
    # Epoch 3 has the best CE but the worst K-S and an adversary far below chance; epoch 4 is good
    # on all three (second-best CE, best K-S, adversary near chance): the combined score picks it.
    assert int(np.argmin(c)) == 4
    assert A.choose_epoch(info, "combined")[0] == 4
    assert A.choose_epoch(info, "val_loss")[0] == 3
    assert A.choose_epoch(info, "ks_sum")[0] == 4  # K-S tie between 2 and 4: the lower validation CE wins
    gap = A.adversary_gap(info)
    assert gap[0] == pytest.approx(0.0) and gap[3] == pytest.approx(0.39 / 0.69)


def test_combined_score_missing_terms_and_nan_epochs():
    only_ce = _info({"val_original_lossf": [0.9, 0.7, math.nan, 0.8]})
    c = A.combined_score(only_ce)
    assert int(np.argmin(c)) == 1 and c[2] == pytest.approx(1.0)  # NaN ranks last
    assert A.choose_epoch(only_ce, "combined")[0] == 1
    assert A.combined_score(_info({"val_original_lossf": [0.3]})).tolist() == [0.0]
    # A criterion that was never recorded: the latest saved epoch, and the table says so.
    e, why = A.choose_epoch(_info({"val_original_lossf": [0.9, 0.7]}), "ks_sum")
    assert e == 1 and "not recorded" in why
    rows = A.best_epochs(_info({"val_original_lossf": [0.9, 0.7]}))
    assert any(r["criterion"] == "Best K-S sum" and r["epoch"] is None for r in rows)


def test_chosen_epoch_must_be_saved_and_spec_epoch_wins():
    info = _info(HIST, saved=[0, 1, 2])  # the best epochs 3, 4 have no classifier file
    assert A.choose_epoch(info, "val_loss")[0] == 2
    assert A.choose_epoch(_info(HIST, epoch=1), "combined") == (1, "given in the run spec")
    assert A.choose_epoch(_info(HIST, epoch=-1), "combined")[0] == 4
    with pytest.raises(Exception, match="not saved"):
        A.choose_epoch(_info(HIST, saved=[0], epoch=3), "combined")


def test_run_spec_parsing():
    assert A.parse_run_spec("default/-1") == A.RunSpec("default", -1, None, "default/-1")
    assert A.parse_run_spec("m/2/7").epoch == 7
    for bad in ("default", "a/b", "/1", "a/1/2/3", "a/1/x"):
        with pytest.raises(Exception, match="NAME/RUN"):
            A.parse_run_spec(bad)


def test_parameter_tables_split_varying_and_common():
    a = _info(HIST)
    b = _info(HIST)
    a.config, b.config = {"lr": 0.1, "f": [1, 2], "s": {"x": 1}}, {"lr": 0.2, "f": [1, 2], "s": {"x": 1}, "new": True}
    a.label, b.label = "m/0", "m/1"
    varying, common = A.parameter_tables([a, b])
    assert [r["parameter"] for r in varying] == ["lr", "new"]
    assert varying[0]["m/0"] == 0.1 and varying[1]["m/0"] == "(absent)"
    assert {r["parameter"] for r in common} == {"f", "s.x"}


# --- reports on fake runs ---------------------------------------------------------------------------------


def _make_datasets(base: Path, bib: bool = True) -> Path:
    write_set(base / "shards", n=300, seed=9, bib=bib)
    extra = [] if bib else ["--main-classes", "qcd", "sig"]
    ds = base / "ds"
    assert cli.main(["-q", "build", str(base / "shards"), "--output-dir", str(ds), *extra,
                     "--set", "split={train: 0.5, val: 0.2, test: 0.3}"]) == 0  # fmt: skip
    return ds


def _make_run(root: Path, name: str, run: int, ds: Path, history: dict, epochs=(0, 1), **cfg_over) -> Path:
    import keras

    from crbatch.train import runs
    from crbatch.train.config import TrainConfig
    from crbatch.train.model import build_classifier

    cfg = TrainConfig(model_name=name, data=ds, output_dir=root, filters_cnn_constit=[4], filters_cnn_track=[4],
                      filters_cnn_MSeg=[4], nodes_constit_lstm=2, nodes_track_lstm=2, nodes_MSeg_lstm=2,
                      hidden_layer_fraction=0.1, **cfg_over)  # fmt: skip
    run_dir = root / name / f"{run:05d}"
    (run_dir / "epochs").mkdir(parents=True)
    runs.write_config(run_dir, cfg.to_yaml())
    (run_dir / "history.json").write_text(json.dumps(history))
    keras.utils.set_random_seed(run)
    model = build_classifier(cfg)
    weights = model.get_weights()
    for e in epochs:  # every epoch a different classifier
        model.set_weights([w * (1 + 0.05 * e) for w in weights])
        model.save(run_dir / "epochs" / f"{e:03d}.keras")
    return run_dir


class _Imgs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.src: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.src.append(dict(attrs)["src"])


def check_html_images(report: Path) -> list[str]:
    """Every <img> of index.html names an existing, valid PNG in the report directory."""
    p = _Imgs()
    p.feed((report / "index.html").read_text())
    assert p.src, "no images in index.html"
    for s in p.src:
        f = report / s
        assert f.is_file(), f"missing image {s}"
        assert f.read_bytes()[:8] == PNG_MAGIC, f"{s} is not a PNG"
    return p.src


def render_in_chromium(rep: Path, tmp: Path) -> None:
    """Headless Chromium: every <img> of index.html must load; a screenshot shows the page renders.

    The check runs on a copy with eager images (lazy ones below the fold would not load) and a probe
    that, at the ``load`` event — which waits for every eager image —, writes the number of images and
    the broken ones into the DOM that ``--dump-dom`` prints.
    """
    work = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp))
    copy = work / "report"
    shutil.copytree(rep, copy)
    probe = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-broken', JSON.stringify(bad));
});
</script></body>"""
    text = (copy / "index.html").read_text().replace(' loading="lazy"', "").replace("</body>", probe)
    page = copy / "check.html"
    page.write_text(text)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={work / 'profile'}",
             "--virtual-time-budget=20000"]  # fmt: skip
    r = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    n = re.search(r'data-images="(\d+)"', r.stdout)
    broken = re.search(r'data-broken="([^"]*)"', r.stdout)
    assert n and broken, "the probe did not run: " + r.stdout[-500:]
    assert int(n.group(1)) > 10
    assert json.loads(html.unescape(broken.group(1))) == [], broken.group(1)
    shot = work / "report.png"
    r = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,3000", (rep / "index.html").as_uri()],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert shot.read_bytes()[:8] == PNG_MAGIC and shot.stat().st_size > 20_000


HIST2 = {k: v[:2] for k, v in HIST.items()}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    pytest.importorskip("keras")
    base = tmp_path_factory.mktemp("analyze")
    ds = _make_datasets(base)
    root = base / "training_results"
    _make_run(root, "m", 0, ds, HIST2)
    h = {k: [x * 1.1 for x in v] for k, v in HIST2.items()}
    _make_run(root, "m", 1, ds, h, lr_values=0.001)
    return base, root


def md_tables(md: str) -> list[list[dict[str, str]]]:
    """The markdown tables of a report.md as lists of {column: cell text}."""
    tables, rows, head = [], [], None
    for line in [*md.splitlines(), ""]:
        if line.startswith("|") and line.endswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in line[1:-1].split(" | ")]
            if head is None:
                head = cells
            elif not set(line) <= set("|-: "):
                rows.append(dict(zip(head, cells, strict=False)))
            continue
        if head is not None:
            tables.append(rows)
        rows, head = [], None
    return tables


def check_numbers_match_metrics(rep: Path) -> int:
    """Every rejection-table and comparison number of report.md equals metrics.json's (as formatted)."""
    from crbatch.evaluate.analyze_report import PCT, fmt
    from crbatch.evaluate.analyze_results import point_label, read_metrics

    doc = read_metrics(rep / "metrics.json")
    tables = md_tables((rep / "report.md").read_text())
    rej_rows = [r for t in tables for r in t if "rej. low" in r]
    n = 0
    for sec in doc.runs:
        models = [m for m in (sec.main, *sec.baselines) if m is not None]
        for m in models:
            for w in m.working_points:
                (row,) = [r for r in rej_rows if r["model"] == m.model.label and r["background"] == w.background
                          and r["mass point"] == point_label(w.mass_point) and r["ε_S target"] == PCT(w.target)]  # fmt: skip
                want = {"AUC": w.auc, "cut p_signal ≥": w.cut, "ε_S": w.signal_eff.value, "ε_S low": w.signal_eff.low,
                        "ε_S high": w.signal_eff.high, "rejection": w.rejection.value, "rej. low": w.rejection.low,
                        "rej. high": w.rejection.high, "signal jets": w.n_sig, "background jets": w.n_bkg}  # fmt: skip
                for col, v in want.items():
                    assert row[col] == fmt(v), (m.model.label, w, col, row[col], v)
                    n += 1
        ks_rows = [r for t in tables for r in t if "selection" in r and "K-S" in r]
        for m in models:
            for k in m.data_mc_ks:
                (row,) = [r for r in ks_rows if r["model"] == m.model.label and r["output"] == k.output
                          and r["selection"] == k.selection]  # fmt: skip
                assert (row["K-S"], row["p-value"]) == (fmt(k.ks), fmt(k.pvalue))
                n += 2
    return n


@pytest.mark.slow
def test_report_of_two_runs(two_runs):
    base, root = two_runs
    out = base / "reports"
    assert analyze("m/0", "m/-1/0", "--base", root, "--output-dir", out, "--no-pdf") == 0
    rep = out / "m"
    md = (rep / "report.md").read_text()
    srcs = check_html_images(rep)
    for section in ("## Runs", "## Training history", "## Best epochs", "## Test split: run comparison",
                    "Best K-S sum", "Best combined score", "Rejection table", "rej. low", "max S/√B",
                    "## Configurations", "Parameters that differ", "lr_values", "overtraining check",
                    "mH = 125 GeV, mS = 55 GeV", "the exported model", "metrics.json"):  # fmt: skip
        assert section in md, section
    assert "Reject:" not in md and "Reject " not in md  # no meaningless reject label
    # one ROC file per background and mass point and per run: nothing is overwritten
    for run in ("m_00000", "m_00001"):
        for f in ("roc_QCD_all", "roc_BIB_all", "roc_QCD_mH125_mS55", "roc_BIB_mH600_mS275", "eff_argmax",
                  "eff_wp", "sob", "sob_per_mH", "scores_sig", "cr_sig", "overtraining_sig", "eff_llp_Lxy_all",
                  "eff_llp_Lz_mH125_mS55", "eff_pt_all", "eff_eta_all", "rej_QCD_pt", "rej_BIB_eta"):  # fmt: skip
            assert f"{run}_{f}.png" in srcs, f"{run}_{f}"
    assert "compare_roc_QCD.png" in srcs and "history_val_original_lossf.png" in srcs
    assert not list(rep.glob("*.pdf"))  # --no-pdf
    # no empty mH=0 scan
    assert "mH = 0 " not in md and "mH=0" not in md
    # the chosen epoch of m/1 was given in the spec
    assert "given in the run spec" in md
    # the resolved configs as YAML blocks
    assert md.count("```yaml") == 2 and "<pre><code>" in (rep / "index.html").read_text()
    # every number of the rejection and K-S tables is metrics.json's
    assert check_numbers_match_metrics(rep) > 100
    # the choice is recorded in each run for `crbatch export NAME/RUN/best`
    for r, e in (("00000", 1), ("00001", 0)):
        ch = json.loads((root / "m" / r / "choice.json").read_text())
        assert ch["epoch"] == e and ch["metrics"] == str(rep / "metrics.json")
    if CHROMIUM:
        render_in_chromium(rep, base)


@pytest.mark.slow
def test_report_without_bib_and_without_control_region(tmp_path):
    pytest.importorskip("keras")
    ds = _make_datasets(tmp_path, bib=False)
    for f in ds.glob("cr_test.h5"):
        f.unlink()
    root = tmp_path / "tr"
    _make_run(root, "nobib", 0, ds, HIST2)
    out = tmp_path / "rep"
    assert analyze("nobib/0", "--base", root, "--output-dir", out, "--name", "x", "--no-pdf",
                   "--overtraining-jets", "0") == 0  # fmt: skip
    md = (out / "x" / "report.md").read_text()
    check_html_images(out / "x")
    assert "no BIB jets in the test split" in md
    assert "S/√B (BIB only): no such background jets" in md
    assert "No control-region test split" in md and "no overtraining check" not in md
    rows = [r for t in md_tables(md) for r in t if "rej. low" in r]
    assert {r["background"] for r in rows} == {"QCD"}
    check_numbers_match_metrics(out / "x")


def test_errors_and_exit_codes(two_runs, tmp_path):
    _, root = two_runs
    assert analyze("m/7", "--base", root, "--output-dir", tmp_path) == ExitCode.INPUT_MISSING
    assert analyze("nothing/0", "--base", root, "--output-dir", tmp_path) == ExitCode.INPUT_MISSING
    assert analyze("m", "--base", root, "--output-dir", tmp_path) == ExitCode.CONFIG
    assert analyze("--base", root, "--output-dir", tmp_path) == ExitCode.CONFIG  # no runs
    assert analyze("m/0", "m/-2", "--base", root, "--output-dir", tmp_path) == ExitCode.CONFIG  # the same run twice
    assert analyze("m/0/5", "--base", root, "--output-dir", tmp_path) == ExitCode.INPUT_MISSING
    assert (
        analyze("m/0", "--base", root, "--data", tmp_path / "none", "--output-dir", tmp_path) == ExitCode.INPUT_MISSING
    )
    assert not (tmp_path / "m").exists()  # nothing half-written


def test_history_only_report(two_runs, tmp_path):
    _, root = two_runs
    assert analyze("m/0", "--base", root, "--output-dir", tmp_path, "--no-test") == 0
    md = (tmp_path / "m" / "report.md").read_text()
    assert "## Best epochs" in md and "## Test split" not in md
    check_html_images(tmp_path / "m")


# --- metrics and report from made-up scores (no model) ------------------------------------------------


def _split(n: int = 600, classes=(0, 1, 2), seed: int = 0):
    from crbatch.evaluate.analyze_split import KINEMATICS, SplitScores

    rng = np.random.default_rng(seed)
    label = rng.choice(np.array(classes, np.int8), n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), label] += 1.5
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    sig = label == 1
    mh = np.where(sig, rng.choice([125.0, 600.0], n), 0.0)
    ms = np.where(sig, np.where(mh == 125.0, 55.0, 275.0), 0.0)
    jets = {k: np.zeros(n, np.float32) for k in KINEMATICS}
    jets.update(llp_mH=mh, llp_mS=ms, pt=rng.uniform(40, 400, n), eta=rng.uniform(-2.5, 2.5, n),
                llp_eta=np.where(sig, rng.normal(0, 1.3, n), 0), llp_Lxy=np.where(sig, rng.uniform(1200, 4000, n), 0),
                llp_Lz=np.where(sig, rng.uniform(-6000, 6000, n), 0))  # fmt: skip
    return SplitScores("made-up", {"run:x": p.astype(np.float32)}, label, rng.uniform(0.5, 1.5, n), jets, "d",
                       {"run:x": "d"})  # fmt: skip


def _metrics(ts):
    from crbatch.evaluate.analyze_compute import Settings, binning, model_metrics
    from crbatch.evaluate.analyze_results import ModelRef

    ref = ModelRef(key="run:x", label="x e0", role="run", kind="run", spec="x/0")
    s = Settings()
    return model_metrics(ref, ts, None, None, s, binning(ts, None, s))


def test_metrics_of_a_split_with_every_class():
    ev = _metrics(_split())
    assert not ev.notes
    pts = {(r.background, None if r.mass_point is None else (r.mass_point.mH, r.mass_point.mS)) for r in ev.rocs}
    assert pts == {(b, p) for b in ("QCD", "BIB") for p in (None, (125.0, 55.0), (600.0, 275.0))}
    assert all(0.5 < r.auc <= 1 for r in ev.rocs)
    assert [s.label for s in ev.scans] == ["all backgrounds", "QCD only", "BIB only", "mH = 125 GeV", "mH = 600 GeV"]
    assert len(ev.working_points) == 6 * 4  # (2 backgrounds × 3 samples) × 4 efficiencies
    for w in ev.working_points:  # intervals contain the value; the reached efficiency is at least the target
        assert w.signal_eff.low <= w.signal_eff.value <= w.signal_eff.high and w.signal_eff.value >= w.target - 1e-9
        assert w.rejection.low <= w.rejection.value <= w.rejection.high
    assert 0 < ev.map_cut < 1 and len(ev.mass_efficiency) == 2
    # efficiency vs Lxy (barrel), |Lz| (end-caps), pT, η for all and each mass point at 4 working points
    assert {(b.variable, b.region) for b in ev.efficiency} == {("llp_Lxy", "barrel"), ("llp_Lz", "endcap"),
                                                                ("pt", "all"), ("eta", "all")}  # fmt: skip
    assert len(ev.efficiency) == 4 * 3 * 4 and len(ev.rejection) == 2 * 2 * 4
    for b in ev.efficiency + ev.rejection:
        v, lo, hi = (np.asarray(x) for x in (b.value, b.low, b.high))
        ok = np.isfinite(v) & np.isfinite(hi)
        assert np.all(lo[ok] <= v[ok] + 1e-12) and np.all(v[ok] <= hi[ok] + 1e-12)


@pytest.mark.parametrize(
    ("classes", "note"), [((0, 1), "no BIB jets"), ((1, 2), "no QCD jets"), ((0, 2), "no signal jets")]
)
def test_metrics_with_a_missing_class(classes, note):
    ev = _metrics(_split(classes=classes))
    assert any(note in n for n in ev.notes)
    if 1 not in classes:
        assert not ev.rocs and not ev.scans and not ev.mass_efficiency and not ev.efficiency
    else:
        missing = {0: "QCD", 2: "BIB"}[({0, 2} - set(classes)).pop()]
        assert all(r.background != missing for r in ev.rocs) and ev.scans


def test_metrics_json_round_trip_keeps_infinities(tmp_path):
    from crbatch.evaluate.analyze_results import ChoiceInfo, MetricsDoc, RunSection, read_metrics, write_text

    ev = _metrics(_split(n=80, seed=3))  # small: some rejections are infinite (no background passes)
    sec = RunSection(label="x/0", run_dir="/r", n_epochs=1, saved_epochs=[0], best=[], main=ev,
                     choice=ChoiceInfo(epoch=0, why="test", criterion="combined"))  # fmt: skip
    doc = MetricsDoc(crbatch_version="t", created="now", title="t", analysis={}, runs=[sec])
    (tmp_path / "metrics.json").write_text(write_text(doc))
    json.loads((tmp_path / "metrics.json").read_text())  # standard JSON: no bare Infinity/NaN
    back = read_metrics(tmp_path / "metrics.json")
    assert write_text(back) == write_text(doc)  # (NaN != NaN: compare the serialised documents)
    rej = [w.rejection.value for w in back.runs[0].main.working_points]
    assert math.inf in rej and all(isinstance(v, float) for v in rej)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "crbatch-metrics", "format_version": 99}))
    with pytest.raises(Exception, match="format 99"):
        read_metrics(tmp_path / "bad.json")


def test_report_from_made_up_scores_without_qcd(tmp_path):
    """The page from typed results alone (no model, no files): a test split without QCD jets."""
    from crbatch.evaluate.analyze import AnalyzeConfig
    from crbatch.evaluate.analyze_report import write_report
    from crbatch.evaluate.analyze_results import ChoiceInfo, MetricsDoc, RunSection, Sample

    ev = _metrics(_split(classes=(1, 2)))
    sec = RunSection(label="m/0", run_dir="/r/m/00000", n_epochs=5, saved_epochs=[0, 4], best=[], main=ev,
                     choice=ChoiceInfo(epoch=4, why="test", criterion="combined"), config={"lr_values": 0.1},
                     sample=Sample(main="made-up", weight="weight_balanced", jets=600, jets_digest="d",
                                   counts={"signal": 300, "BIB": 300}, sumw={"signal": 300.0, "BIB": 300.0}))  # fmt: skip
    doc = MetricsDoc(crbatch_version="t", created="now", title="made up", analysis={"criterion": "combined"},
                     runs=[sec])  # fmt: skip
    out = write_report(doc, AnalyzeConfig(runs=["m/0"], pdf=False), tmp_path / "rep")
    md = (out / "report.md").read_text()
    assert "no QCD jets" in md and "No control-region test split" in md and "crbatch export m/0/best" in md
    rows = [r for t in md_tables(md) for r in t if "rej. low" in r]
    assert rows and {r["background"] for r in rows} == {"BIB"}
    check_html_images(out)
    check_numbers_match_metrics(out)
