"""``crbatch plot``: the data report (files, figures, K-S values, inputs) and its error paths;
``crbatch.report.page``: the reusable report writer."""

from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from crbatch import schema
from crbatch.cli import main
from crbatch.errors import ExitCode
from crbatch.report.page import ReportPage
from crbatch.report.plot import all_variables, plan_blocks
from crbatch.stats import ks_weighted

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL = SHARED / "data" / "reference" / "divert" / "sig_311314_bad_object_small.root"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_shard(
    path: Path, labels, seed: int, shift: float = 0.0, masses=(0.0, 0.0), complete: bool = True, dataset: bool = False
) -> Path:
    """A small shard in the schema layout with the attributes ``convert`` writes; with ``dataset``,
    a scaled training-dataset-like file whose jets carry ``pt_scaled`` and ``weight_balanced``."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    n = len(labels)
    t = schema.empty_tables(n)
    j = t["jets"]
    j["label"] = labels
    j["eventNumber"] = np.arange(n)
    j["pt"] = 40 + rng.exponential(60, n) + 20 * shift
    j["eta"] = rng.uniform(-2.5, 2.5, n)
    j["phi"] = rng.uniform(-np.pi, np.pi, n)
    j["mcEventWeight"] = np.where(labels == schema.Label.DATA, 1.0, rng.uniform(0.2, 3.0, n))
    sig = labels == schema.Label.SIGNAL
    j["llp_mH"], j["llp_mS"] = np.where(sig, masses[0], 0.0), np.where(sig, masses[1], 0.0)
    for tab in schema.OBJECT_TABLES:
        k = rng.integers(0, tab.slots + 1, n)
        valid = np.arange(tab.slots)[None, :] < k[:, None]
        arr = t[tab.name]
        arr["valid"] = valid
        for f in tab.features:
            arr[f] = np.where(valid, rng.normal(shift, 1.0, (n, tab.slots)), 0.0)
        j[f"n_{tab.name}"] = k
    types = {int(v): k for k, v in schema.DATA_TYPES.items()}
    with h5py.File(path, "w") as f:
        if dataset:
            jd = np.zeros(n, [*schema.JET_DTYPE.descr, ("pt_scaled", "f4"), ("weight_balanced", "f4")])
            for name in schema.JET_DTYPE.names:
                jd[name] = j[name]
            jd["pt_scaled"] = j["pt"] / 500
            jd["weight_balanced"] = j["mcEventWeight"] * 2
            f.create_dataset("jets", data=jd)
            for tab in schema.OBJECT_TABLES:
                f.create_dataset(tab.name, data=t[tab.name])
        else:
            schema.TableWriter(f).append(t)
        f.attrs[schema.A_PRODUCER] = "crbatch"
        f.attrs[schema.A_SCHEMA] = schema.SCHEMA_VERSION
        f.attrs[schema.A_KIND] = "dataset" if dataset else "shard"
        f.attrs[schema.A_DATA_TYPE] = types[int(labels[0])] if n else "qcd"
        f.attrs[schema.A_STATUS] = "ok"
        f.attrs[schema.A_N_JETS] = n
        f.attrs[schema.A_SCALED] = "crbatch-v1" if dataset else False
        if complete:
            schema.mark_complete(f)
    return path


def read_tables(paths):
    tables = []
    for p in paths:
        with h5py.File(p, "r") as f:
            tables.append({k: f[k][:] for k in ("jets", *schema.TABLES)})
    return {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}


def plot(*args) -> int:
    return main(["plot", *map(str, args)])


def check_images(report: Path) -> set[str]:
    """Every image referenced by report.md and index.html exists and is a PNG; returns their names."""
    md = (report / "report.md").read_text()
    page = (report / "index.html").read_text()
    md_imgs = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md))
    html_imgs = set(re.findall(r'<img src="([^"]+)"', page))
    assert md_imgs and md_imgs == html_imgs
    for name in md_imgs:
        assert not Path(name).is_absolute() and "/" not in name
        assert (report / name).read_bytes()[:8] == PNG_MAGIC, name
    return md_imgs


@pytest.fixture(scope="module")
def cr_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    cr = d / "cr"
    cr.mkdir()
    write_shard(cr / "qcd.h5", [0] * 300, seed=1)
    write_shard(cr / "data.h5", [3] * 200, seed=2, shift=0.3)
    sig = write_shard(d / "sig.h5", [1] * 120 + [2] * 40, seed=3, masses=(600.0, 275.0))
    return cr, sig


VARS = ["jet.pt", "clusters.pt.0", "tracks.pt.all", "msegs.t0", "tracks.SCTHits.0"]


def test_report_with_control_region(cr_inputs, tmp_path):
    cr, sig = cr_inputs
    assert plot(f"cr={cr}", f"sig={sig}", "--output-dir", tmp_path, "--variables", ",".join(VARS)) == 0
    report = tmp_path / "cr_vs_sig"
    imgs = check_images(report)
    expected = {
        "jet_pt_classes.png",
        "jet_pt_datamc.png",
        "clusters_pt_slot0_classes.png",
        "clusters_pt_slot0_datamc.png",
        "tracks_pt_all_classes.png",
        "tracks_pt_all_datamc.png",
        "msegs_t0_slot0_classes.png",
        "msegs_t0_all_classes.png",
    }
    assert expected <= imgs
    assert len(imgs) == 2 * 6  # one PNG per variable and kind, not per input or class
    assert not list(tmp_path.glob(".*crbatch*"))  # no temporaries left
    md = (report / "report.md").read_text()
    # inputs table with class names, both legend names, the signal mass point
    assert "| name | path | files |" in md and "| QCD | signal | BIB | data |" in md
    assert re.search(r"\| cr \| .*cr \| 2 \| shard \| 500 \| 300 \| 0 \| 0 \| 200 \| raw \|", md)
    assert re.search(r"\| sig \| .*sig.h5 \| 1 \| shard \| 160 \| 0 \| 120 \| 40 \| 0 \| raw \|", md)
    assert re.search(r"\| 600 \| 275 \| 0 \| 120 \|", md)
    page = (report / "index.html").read_text()
    assert '<a href="#inputs">' in page and '<a href="#clusters">' in page

    # K-S values: equal to ks_weighted on the same values (all jets kept at this size)
    t_mc, t_da = read_tables([cr / "qcd.h5"]), read_tables([cr / "data.h5"])
    with open(report / "ks_summary.csv") as fh:
        rows = {(r["variable"], r["input"]): r for r in csv.DictReader(fh)}
    assert {k[1] for k in rows} == {"cr"}  # only the input with data and QCD has a K-S value

    def jet_vals(t):
        return t["jets"]["pt"], t["jets"]["mcEventWeight"]

    def trk_all(t):
        v = t["tracks"]["valid"]
        w = np.broadcast_to(t["jets"]["mcEventWeight"][:, None], v.shape)
        return t["tracks"]["pt"][v], w[v]

    def clus0(t):
        v = t["clusters"]["valid"][:, 0]
        return t["clusters"]["pt"][v, 0], t["jets"]["mcEventWeight"][v]

    for key, fn in (("jet.pt", jet_vals), ("tracks.pt.all", trk_all), ("clusters.pt.0", clus0)):
        (a, wa), (b, wb) = fn(t_da), fn(t_mc)
        expected_ks = ks_weighted(a, b, wa, wb)
        assert float(rows[(key, "cr")]["ks"]) == pytest.approx(expected_ks, abs=1e-12)
        assert f"| {key} | cr | {expected_ks:.4f} |" in md
    ks_sorted = [float(r["ks"]) for r in rows.values()]
    assert ks_sorted == sorted(ks_sorted, reverse=True)


@pytest.fixture(scope="module")
def real_shards(tmp_path_factory):
    """The reference's small signal ntuple converted as QCD by ``crbatch convert divert``."""
    if not SHARED.is_dir() or not REAL.exists():
        pytest.skip("../shared (reference data) absent")
    shards = tmp_path_factory.mktemp("real") / "shards"
    assert main(["convert", "divert", str(REAL), "--type", "qcd", "--output-dir", str(shards)]) == 0
    return shards


REAL_VARS = ["jet", "clusters.pt", "tracks.SCTHits", "msegs.t0.all"]


def test_real_converted_shard(real_shards, tmp_path):
    assert plot(f"real={real_shards}", "--output-dir", tmp_path / "reports", "--variables", ",".join(REAL_VARS)) == 0
    report = tmp_path / "reports" / "real"
    imgs = check_images(report)
    # jet.pt_scaled exists only in training datasets; no data-vs-MC without data
    expected = {f"jet_{f}_classes.png" for f in ("pt", "eta", "phi", "n_clusters", "n_tracks", "n_msegs")}
    expected |= {"jet_mcEventWeight_classes.png", "clusters_pt_slot0_classes.png", "clusters_pt_all_classes.png"}
    expected |= {"tracks_SCTHits_slot0_classes.png", "tracks_SCTHits_all_classes.png", "msegs_t0_all_classes.png"}
    assert imgs == expected
    md = (report / "report.md").read_text()
    assert "No input holds both QCD MC and data jets" in md
    assert "| real |" in md and "| 109 | 109 | 0 | 0 | 0 | raw |" in md


def test_every_variable_on_real_shard(real_shards):
    """All variables (rendering all of them takes ~10 s): values extract, labels are valid mathtext."""
    from matplotlib.mathtext import MathTextParser

    from crbatch.report.plot import iter_blocks, resolve_input

    inp = resolve_input("real", str(real_shards))
    (block,) = iter_blocks(inp, [(0, inp.total)], ["jets", *schema.TABLES], "mcEventWeight")
    parser = MathTextParser("path")
    for v in all_variables():
        parser.parse(v.axis_label(None))
        parser.parse(v.axis_label("crbatch-v1"))
        if v.build_scales:
            assert "(scaled)" in v.axis_label("crbatch-v1") and "(scaled)" in v.axis_label("legacy-reference")
        assert ("(scaled)" in v.axis_label("legacy-reference")) == (v.build_scales or v.key == "jet.pt")
        if not v.applies_to(inp):
            assert v.field == "pt_scaled"
            continue
        vals, rows = block.values(v)
        assert len(vals) == len(rows) > 0, v.key
        if v.slot is None and v.table != "jets":
            assert len(vals) == block.tables[v.table]["valid"].sum()  # padding excluded


def test_default_names_sampling_and_rerun(cr_inputs, tmp_path):
    cr, _ = cr_inputs
    args = [cr / "qcd.h5", cr / "data.h5", "--output-dir", tmp_path, "--variables", "jet.pt", "--max-jets", 100]
    assert plot(*args, "--chunk-jets", 30, "--ks-max-jets", 50) == 0
    report = tmp_path / "file_0_vs_file_1"
    md = (report / "report.md").read_text()
    assert "| file_0 |" in md and "| file_1 |" in md and "| 300 | 300 |" in md  # counts cover the whole input
    first = sorted(p.name for p in report.iterdir())
    # a rerun replaces the report in place, with the same file names
    assert plot(*args, "--name", "file_0_vs_file_1", "--no-density") == 0
    assert sorted(p.name for p in report.iterdir()) == first
    assert "weighted counts" in (report / "report.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["file_0_vs_file_1"]


def test_wildcard_input_and_weight_none(cr_inputs, tmp_path):
    cr, _ = cr_inputs
    # options before the INPUT: --variables does not swallow it
    assert plot("--variables", "jet.eta", "--weight", "none", f"all={cr}/*.h5", "--output-dir", tmp_path) == 0
    md = (tmp_path / "all" / "report.md").read_text()
    assert "| all |" in md and "| 2 | shard | 500 |" in md and "Weights: `none (unweighted)`" in md


def test_dataset_inputs_and_mixed_directory(tmp_path):
    """Datasets carry extra jets fields (pt_scaled, weight_balanced): plotted where present; a
    directory mixing them with shards still gets data-vs-MC K-S values."""
    ds = tmp_path / "ds"
    ds.mkdir()
    write_shard(ds / "cr_train.h5", [0] * 80 + [3] * 60, seed=7, dataset=True)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_shard(mixed / "a_data.h5", [3] * 50, seed=8)
    write_shard(mixed / "b_qcd.h5", [0] * 70, seed=9, dataset=True)
    out = tmp_path / "out"
    assert (
        plot(f"ds={ds}", f"mixed={mixed}", "--output-dir", out, "--variables", "jet.pt*", "--variables", "tracks.pt.0")
        == 0
    )
    report = out / "ds_vs_mixed"
    imgs = check_images(report)
    assert {"jet_pt_scaled_classes.png", "jet_pt_scaled_datamc.png", "tracks_pt_slot0_datamc.png"} <= imgs
    md = (report / "report.md").read_text()
    assert "| ds | " in md and "| dataset | 140 | 80 | 0 | 0 | 60 | crbatch-v1 |" in md
    assert "| 2 | dataset, shard | 120 | 70 | 0 | 0 | 50 | crbatch-v1, raw |" in md
    with open(report / "ks_summary.csv") as fh:
        keys = {(r["variable"], r["input"]) for r in csv.DictReader(fh)}
    assert keys == {("jet.pt", "ds"), ("jet.pt_scaled", "ds"), ("tracks.pt.0", "ds"), ("jet.pt", "mixed"),
                    ("tracks.pt.0", "mixed")}  # fmt: skip
    # a dataset weight is accepted where every file has it
    assert plot(f"ds={ds}", "--output-dir", out, "--variables", "jet.pt", "--weight", "weight_balanced") == 0


def test_print_config(capsys):
    assert plot("x.h5", "--bins", 20, "--variables", "jet.pt,tracks", "--print-config") == 0
    out = capsys.readouterr().out
    assert "bins: 20" in out and "- x.h5" in out and "weight: mcEventWeight" in out
    assert "variables:\n- jet.pt\n- tracks\n" in out


def test_plan_blocks():
    assert plan_blocks(10, 100, 4) == [(0, 4), (4, 8), (8, 10)]
    blocks = plan_blocks(1_000_000, 10_000, 5_000)
    assert len(blocks) >= 20 and sum(b - a for a, b in blocks) <= 10_000
    assert all(b0[1] <= b1[0] for b0, b1 in itertools.pairwise(blocks))
    assert blocks[0][0] == 0 and blocks[-1][1] == 1_000_000  # spread over the whole input
    assert plan_blocks(0, 10, 10) == []


# -- error paths ------------------------------------------------------------------------------


def test_missing_input(tmp_path, caplog):
    assert plot(tmp_path / "nope.h5", "--output-dir", tmp_path) == ExitCode.INPUT_MISSING
    assert "nope.h5" in caplog.text
    assert plot(f"x={tmp_path}/*.h5", "--output-dir", tmp_path) == ExitCode.INPUT_MISSING
    (tmp_path / "empty").mkdir()
    assert plot(tmp_path / "empty", "--output-dir", tmp_path) == ExitCode.INPUT_MISSING
    assert not (tmp_path / "reports").exists()


def test_not_crbatch_or_incomplete(tmp_path, caplog):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["jets"] = np.zeros(3)
    assert plot(foreign, "--output-dir", tmp_path / "r") == ExitCode.INPUT_SCHEMA
    assert "foreign.h5: not written by crbatch" in caplog.text
    partial = write_shard(tmp_path / "partial.h5", [0] * 5, seed=0, complete=False)
    caplog.clear()
    assert plot(partial, "--output-dir", tmp_path / "r") == ExitCode.INPUT_SCHEMA
    assert "partial.h5: incomplete" in caplog.text
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    assert plot(text, "--output-dir", tmp_path / "r") == ExitCode.INPUT_SCHEMA
    # a directory skips incomplete files, but needs at least one complete one
    d = tmp_path / "d"
    d.mkdir()
    write_shard(d / "partial.h5", [0] * 5, seed=0, complete=False)
    assert plot(d, "--output-dir", tmp_path / "r") == ExitCode.INPUT_SCHEMA
    assert not (tmp_path / "r").exists()


def test_unknown_weight_field(cr_inputs, tmp_path, caplog):
    cr, _ = cr_inputs
    assert plot(cr, "--weight", "weight_balanced", "--output-dir", tmp_path) == ExitCode.INPUT_SCHEMA
    assert "weight_balanced" in caplog.text and "mcEventWeight" in caplog.text


@pytest.mark.parametrize(
    "bad",
    [
        ["--bins", "1"],
        ["--variables", "jet.nosuch"],
        ["--name", "a/b"],
        ["--name", ".."],
        ["--set", "range_quantiles=[50, 10]"],
        ["--set", "colour=red"],
    ],
)
def test_invalid_config(cr_inputs, tmp_path, bad):
    cr, _ = cr_inputs
    assert plot(cr, "--output-dir", tmp_path, *bad) == ExitCode.CONFIG
    assert not any(tmp_path.iterdir())


def test_duplicate_names_and_no_inputs(cr_inputs, tmp_path):
    cr, sig = cr_inputs
    assert plot(f"a={cr}", f"a={sig}", "--output-dir", tmp_path) == ExitCode.CONFIG
    assert plot("--output-dir", tmp_path) == ExitCode.CONFIG


def test_output_is_a_file(cr_inputs, tmp_path):
    cr, _ = cr_inputs
    (tmp_path / "taken").write_text("x")
    assert plot(cr, "--output-dir", tmp_path, "--name", "taken") == ExitCode.CONFIG
    assert (tmp_path / "taken").read_text() == "x"


def test_all_inputs_empty(tmp_path):
    empty = write_shard(tmp_path / "empty.h5", [], seed=0)
    assert plot(empty, "--output-dir", tmp_path / "r") == ExitCode.INPUT_EMPTY


# -- the page writer --------------------------------------------------------------------------


def _fig():
    from crbatch.report import style

    style.setup()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    return fig


def test_page_tables_figures_and_atomic_replace(tmp_path):
    import matplotlib.pyplot as plt

    out = tmp_path / "rep"
    with ReportPage(out, "T <1>") as page:
        page.section("Numbers & text")
        page.text("some `code` and **bold**")
        page.table([{"a": 1, "b": "x|y"}, {"a": 2.5, "c": None}], caption="caption")
        assert page.figure(_fig(), "my plot/1") == "my_plot_1.png"
        assert page.figure(_fig(), "my plot/1") == "my_plot_1_2.png"  # stable, never overwritten
        page.section("Sub", level=3)
        page.attach("data.csv", "a,b\n1,2\n")
    assert plt.get_fignums() == []  # figures closed
    md = (out / "report.md").read_text()
    assert md.startswith("# T <1>\n")
    assert "| a | b | c |\n|---:|---|---|\n| 1 | x\\|y |  |\n| 2.5 |  |  |" in md
    assert "![my_plot_1.png](my_plot_1.png)" in md
    page_html = (out / "index.html").read_text()
    assert "<title>T &lt;1&gt;</title>" in page_html and "<code>code</code>" in page_html
    assert '<td class="num">2.5</td>' in page_html and "<td>x|y</td>" in page_html
    assert '<a href="#sub">Sub</a>' in page_html and 'href="data.csv"' in page_html
    assert sorted(p.name for p in out.iterdir()) == [
        "data.csv",
        "index.html",
        "my_plot_1.png",
        "my_plot_1_2.png",
        "report.md",
    ]

    # a failing rewrite leaves the previous report untouched and no temporaries
    with pytest.raises(RuntimeError), ReportPage(out, "second") as page:
        page.figure(_fig(), "other")
        raise RuntimeError("killed")
    assert (out / "report.md").read_text() == md
    assert not (out / "other.png").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]

    # a successful rewrite replaces the whole directory
    with ReportPage(out, "third") as page:
        page.text("only text")
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "report.md"]
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]


def test_page_reserved_names(tmp_path):
    page = ReportPage(tmp_path / "rep", "t")
    with pytest.raises(ValueError, match="used twice"):
        page.attach("report.md", "x")
    page.discard()
    assert not any(tmp_path.iterdir())


def test_page_removes_stale_temporaries(tmp_path):
    import socket

    stale = tmp_path / f".rep.{socket.gethostname()}.999999999.abcd1234.crbatch-tmp"
    stale.mkdir()
    (stale / "x.png").write_bytes(b"x")
    with ReportPage(tmp_path / "rep", "t") as page:
        page.text("x")
    assert not stale.exists()
