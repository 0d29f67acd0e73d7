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


@pytest.mark.slow
def test_report_of_two_runs(two_runs):
    base, root = two_runs
    out = base / "reports"
    assert analyze("m/0", "m/-1/0", "--base", root, "--output-dir", out) == 0
    rep = out / "m"
    md = (rep / "report.md").read_text()
    srcs = check_html_images(rep)
    for section in ("## Runs", "## Training history", "## Best epochs", "## Test split: run comparison",
                    "Best K-S sum", "Best combined score", "rej@0.5", "max S/√B", "## Configurations",
                    "Parameters that differ", "lr_values", "K-S all"):  # fmt: skip
        assert section in md, section
    assert "Reject" not in md  # no meaningless reject label
    # one ROC file per mass point and per run: nothing is overwritten
    for run in ("m_00000", "m_00001"):
        for f in ("roc_all", "roc_mH125_mS55", "roc_mH600_mS275", "eff_argmax", "eff_wp", "sob", "sob_per_mH",
                  "scores_sig", "cr_sig"):  # fmt: skip
            assert f"{run}_{f}.png" in srcs, f"{run}_{f}"
    assert "compare_roc_QCD.png" in srcs and "history_val_original_lossf.png" in srcs
    # no empty mH=0 scan
    assert "mH=0 " not in md and "mH=0|" not in md.replace(" ", "")
    # the chosen epoch of m/1 was given in the spec
    assert "given in the run spec" in md
    # the resolved configs as YAML blocks
    assert md.count("```yaml") == 2 and "<pre><code>" in (rep / "index.html").read_text()
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
    assert analyze("nobib/0", "--base", root, "--output-dir", out, "--name", "x") == 0
    md = (out / "x" / "report.md").read_text()
    check_html_images(out / "x")
    assert "no BIB jets in the test split" in md
    assert "S/√B (BIB only): no such background jets" in md
    assert "No control-region test split" in md
    assert "| all mass points | QCD |" in md and "| all mass points | BIB |" not in md


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


def _split(n: int = 600, classes=(0, 1, 2), seed: int = 0) -> A.SplitScores:
    rng = np.random.default_rng(seed)
    label = rng.choice(np.array(classes, np.int8), n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), label] += 1.5
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    sig = label == 1
    mh = np.where(sig, rng.choice([125.0, 600.0], n), 0.0)
    ms = np.where(sig, np.where(mh == 125.0, 55.0, 275.0), 0.0)
    return A.SplitScores(p.astype(np.float32), label, rng.uniform(0.5, 1.5, n), mh, ms, None)


def test_metrics_of_a_split_with_every_class():
    ev = A.compute_metrics(_split(), A.AnalyzeConfig(runs=["x/0"]))
    assert not ev.notes
    assert set(ev.rocs) == {(b, p) for b in (0, 2) for p in (None, (125.0, 55.0), (600.0, 275.0))}
    assert all(0.5 < r.auc <= 1 for r in ev.rocs.values())
    assert [s.label for s in ev.scans] == ["all backgrounds", "QCD only", "BIB only"]
    assert [s.label for s in ev.mh_scans] == ["mH=125", "mH=600"]  # no mH=0
    assert len(ev.wp_rows) == 6 and {"rej@0.3", "rej@0.9", "AUC"} <= set(ev.wp_rows[0])
    assert 0 < ev.wp_threshold < 1 and len(ev.eff_wp) == len(ev.eff_argmax) == 2


@pytest.mark.parametrize(
    ("classes", "note"), [((0, 1), "no BIB jets"), ((1, 2), "no QCD jets"), ((0, 2), "no signal jets")]
)
def test_metrics_with_a_missing_class(classes, note):
    ev = A.compute_metrics(_split(classes=classes), A.AnalyzeConfig(runs=["x/0"]))
    assert any(note in n for n in ev.notes)
    if 1 not in classes:
        assert not ev.rocs and not ev.scans and not ev.eff_argmax
    else:
        missing = ({0, 2} - set(classes)).pop()
        assert all(b != missing for b, _ in ev.rocs) and ev.scans


def test_report_from_made_up_scores_without_qcd(tmp_path):
    info = _info(HIST)
    info.config = {"model_name": "m", "lr_values": 0.1}
    ts = _split(classes=(1, 2))
    cfg = A.AnalyzeConfig(runs=["m/0"])
    r = A.RunResult(info, 4, "test", ts, A.compute_metrics(ts, cfg))
    out = A.write_report([r], cfg, tmp_path / "rep")
    md = (out / "report.md").read_text()
    assert "no QCD jets" in md and "| all mass points | BIB |" in md and "No control-region test split" in md
    check_html_images(out)
