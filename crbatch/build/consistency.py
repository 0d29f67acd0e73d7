"""One build per dataset directory: every dataset file in a directory must carry the same build id.

``crbatch build`` writes all its outputs under temporary names and renames them into place one
after the other at the end. A build killed between two renames — or two builds writing one
directory at once — leaves ``main_*.h5`` of one build beside ``cr_*.h5`` of another: every file
complete, the directory not. So every reader of a dataset checks, when it opens the file, that
the dataset files beside it (``{main,cr}_{train,val,test}.h5``) all carry its build id
(``schema.A_BUILD_ID``, a hash of the build's config and inputs), and refuses a mixture with exit
12 naming the files and the fix: rerun the build, which rebuilds a mixed directory (it is never
"up to date"). The readers: the streaming reader (training, validation, ``score``, ``analyze``,
``export``'s parity check), ``crbatch train``'s input check, and the pipeline's completeness
judgement (``crbatch status``/``submit``), which also wants ``summary.json`` of the same build.

Why not one rename of a directory instead: ``rename(2)`` cannot replace a non-empty directory
(``RENAME_EXCHANGE`` is Linux-only and absent on NFS, Lustre, EOS and XRootD storage), the output
directory is the user's (it holds ``summary.json`` and whatever else they keep there), and the
datasets are also named one by one (``--main-training-file``). A symlink switch would change the
layout every tool reads. The id check costs one HDF5 header read per file.
"""

from __future__ import annotations

from pathlib import Path

from .. import schema
from ..errors import InputSchema


def dataset_files(directory: Path) -> list[Path]:
    """The dataset files of ``directory`` (those of the six build output names that exist)."""
    names = [schema.dataset_filename(r, s) for r in schema.DATASET_ROLES for s in schema.SPLITS]
    return [directory / n for n in names if (directory / n).is_file()]


def build_id(path: Path) -> str | None:
    """The build id in ``path``'s attributes; None when it has none or cannot be read (its own
    completeness check reports that file when it is read)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            v = f.attrs.get(schema.A_BUILD_ID)
    except (OSError, ValueError, RuntimeError):
        return None
    if isinstance(v, bytes):
        v = v.decode()
    return None if v is None else str(v)


def build_ids(directory: Path) -> dict[str, str]:
    """File name → build id of the dataset files of ``directory`` that have one."""
    out = {}
    for p in dataset_files(directory):
        bid = build_id(p)
        if bid is not None:
            out[p.name] = bid
    return out


def check_same_build(path: Path) -> str | None:
    """The build id shared by the dataset files beside ``path`` (a dataset file or its directory),
    or None when they carry none; exit 12 (:class:`InputSchema`) when they come from different builds."""
    directory = path if path.is_dir() else path.parent
    ids = build_ids(directory)
    distinct = sorted(set(ids.values()))
    if len(distinct) <= 1:
        return distinct[0] if distinct else None
    groups = "; ".join(f"{', '.join(sorted(n for n, b in ids.items() if b == bid))} (build {bid})" for bid in distinct)
    raise InputSchema(
        f"{directory}: datasets from different builds: {groups} — a `crbatch build` into this directory was "
        "interrupted or two ran at once; rerun the `crbatch build` that writes it (it rebuilds the directory)"
    )
