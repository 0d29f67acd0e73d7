"""Datasets named by rucio DIDs: ``submit`` expands them to file replicas through the real rucio client,
which talks to a stand-in server (tests/rucio_double.py) on 127.0.0.1; replicas chosen by RSE preference."""

from __future__ import annotations

import pytest
import yaml
from rucio_double import RucioDouble

from crbatch import cli
from crbatch.batch.pipeline import load_pipeline
from crbatch.batch.plan import make_plan
from crbatch.errors import ConfigError, ExitCode, InputMissing

pytest.importorskip("rucio.client", reason="pip install 'crbatch[grid]'")

CERN, MWT2, BNL = "CERN-PROD_DATADISK", "MWT2_DATADISK", "BNL-OSG2_DATADISK"


def _file(name: str, rses: dict[str, str], size: int = 1000) -> dict:
    return {"name": name, "bytes": size, "rses": {rse: [f"root://{host}//atlas/{name}"] for rse, host in rses.items()}}


FILES = {
    "user.jdoe.311423.ntuple": [
        _file("user.jdoe.311423._000001.ntuple.root", {CERN: "eos.cern.ch", MWT2: "fax.mwt2.org"}, 3_000_000),
        _file("user.jdoe.311423._000002.ntuple.root", {CERN: "eos.cern.ch"}, 2_000_000),
        _file("user.jdoe.311423._000003.ntuple.root", {BNL: "dcgftp.bnl.gov", MWT2: "fax.mwt2.org"}, 1_000_000),
    ],
    "user.jdoe.364702.ntuple": [_file("user.jdoe.364702._000001.ntuple.root", {BNL: "dcgftp.bnl.gov"})],
}


@pytest.fixture
def rucio_server(tmp_path, monkeypatch):
    with RucioDouble(FILES) as server:
        monkeypatch.setenv("RUCIO_CONFIG", str(server.config(tmp_path)))
        monkeypatch.delenv("RUCIO_ACCOUNT", raising=False)
        _forget_rucio_config()
        yield server
    _forget_rucio_config()


def _forget_rucio_config() -> None:
    """The rucio client reads its configuration once per process; each test has its own server."""
    import rucio.common.config as cfg

    for name in ("get_config", "_get_config"):
        f = getattr(cfg, name, None)
        if f is not None and hasattr(f, "cache_clear"):
            f.cache_clear()
    for attr in ("__CONFIG", "_CONFIG", "__config"):
        if hasattr(cfg, attr):
            setattr(cfg, attr, None)


def _pipeline(tmp_path, dids: list[str], **extra) -> object:
    doc = {"name": "r", "storage": "root://127.0.0.1:21094//storage",
           "datasets": [{"name": "sig", "type": "sig", "mH": 125, "mS": 55, "did": dids}], **extra}  # fmt: skip
    y = tmp_path / "pipeline.yaml"
    y.write_text(yaml.safe_dump(doc))
    return load_pipeline(y)


def test_did_expands_to_replicas_by_rse_preference(rucio_server, tmp_path):
    p = _pipeline(tmp_path, ["user.jdoe:user.jdoe.311423.ntuple"], rucio={"rse_preference": [MWT2, CERN]})
    tasks = make_plan(p, "convert").stage("convert")
    assert [t.source for t in tasks] == [
        "root://fax.mwt2.org//atlas/user.jdoe.311423._000001.ntuple.root",  # MWT2 first
        "root://eos.cern.ch//atlas/user.jdoe.311423._000002.ntuple.root",  # only at CERN
        "root://fax.mwt2.org//atlas/user.jdoe.311423._000003.ntuple.root",
    ]
    assert [t.job for t in tasks] == [f"convert.sig.user.jdoe.311423._00000{i}.ntuple" for i in (1, 2, 3)]
    (req,) = [r for r in rucio_server.requests if r["path"].startswith("/replicas/list")]
    assert req["body"]["dids"] == [{"scope": "user.jdoe", "name": "user.jdoe.311423.ntuple"}]
    assert req["body"]["schemes"] == ["root"] and req["token"] == "token-123"
    # another preference, another replica of the same files
    p = _pipeline(tmp_path, ["user.jdoe:user.jdoe.311423.ntuple"], rucio={"rse_preference": [CERN, BNL]})
    assert [t.source.split("//")[1] for t in make_plan(p, "convert").stage("convert")] == [
        "eos.cern.ch", "eos.cern.ch", "dcgftp.bnl.gov"]  # fmt: skip


def test_strict_preference_and_bundling_by_reported_size(rucio_server, tmp_path):
    p = _pipeline(tmp_path, ["user.jdoe:user.jdoe.311423.ntuple"], rucio={"rse_preference": [MWT2], "strict": True})
    with pytest.raises(Exception, match=r"_000002.*no root replica on MWT2_DATADISK") as e:
        make_plan(p, "convert")
    assert getattr(e.value, "code", None) == ExitCode.INPUT_MISSING
    # target_runtime bundles by the sizes rucio reports (no file is opened): 3 MB | 2 MB + 1 MB
    p = _pipeline(tmp_path, ["user.jdoe:user.jdoe.311423.ntuple"],
                  convert={"target_runtime": "3s", "mb_per_s": 1.0})  # fmt: skip
    assert [len(t.inputs) for t in make_plan(p, "convert").stage("convert")] == [1, 2]


def test_unknown_did_and_bad_credentials(rucio_server, tmp_path, monkeypatch):
    with pytest.raises(InputMissing, match=r"user\.jdoe\.nothing"):
        make_plan(_pipeline(tmp_path, ["user.jdoe:user.jdoe.nothing"]), "convert")
    (tmp_path / "wrong").mkdir()  # a wrong password (and no token from before)
    monkeypatch.setenv("RUCIO_CONFIG", str(rucio_server.config(tmp_path / "wrong", password="wrong")))
    _forget_rucio_config()
    with pytest.raises(ConfigError, match=r"rucio\.cfg"):
        make_plan(_pipeline(tmp_path, ["user.jdoe:user.jdoe.364702.ntuple"]), "convert")


def test_submit_exit_code_for_a_missing_did(rucio_server, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _pipeline(tmp_path, ["user.jdoe:user.jdoe.nothing"])
    assert cli.main(["-q", "submit", str(tmp_path / "pipeline.yaml"), "--backend", "local", "--dry-run"]) == (
        ExitCode.INPUT_MISSING
    )
    assert "user.jdoe.nothing" in capsys.readouterr().err
