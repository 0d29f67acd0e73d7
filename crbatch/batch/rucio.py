"""Rucio DIDs → file replicas, when ``crbatch submit`` expands a pipeline's datasets.

A dataset may name rucio DIDs (``did: [scope:name, ...]``: datasets or containers of DiVertAnalysis
ntuples). ``submit`` asks the rucio server, through the rucio client (the ``grid`` extra:
``rucio-clients``), for the replicas of their files (``Client().list_replicas(dids, schemes=[root])``),
and takes for each file one ``root://`` replica: the first RSE of ``rucio.rse_preference`` that has
one, else (unless ``rucio.strict``) the replica rucio ranks first. The client is configured as
usual (``rucio.cfg``, ``$RUCIO_CONFIG``, ``$RUCIO_ACCOUNT``, an X.509 proxy or a token): crbatch
passes nothing of its own. The chosen URLs go into the plan, so the jobs never talk to rucio.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import ConfigError, CrbatchError, ExitCode, InputMissing, Transient
from .pipeline import RucioOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Replica:
    did: str  # scope:name of the file
    url: str
    rse: str
    size: int | None


def client():
    """The rucio client, configured the usual way (a test double server stands in in the tests)."""
    try:
        from rucio.client import Client
    except ImportError:
        raise ConfigError(
            "a dataset names rucio DIDs but the rucio client is not installed: pip install 'crbatch[grid]' "
            "(or list the files' root:// URLs instead)"
        ) from None
    try:
        return Client()
    except Exception as e:  # missing rucio.cfg, no credentials, server down
        raise _classify(e, "the rucio client") from e


def _classify(e: Exception, what: str) -> CrbatchError:
    name = type(e).__name__
    msg = str(e).strip().splitlines()[0] if str(e).strip() else name
    if name in ("DataIdentifierNotFound", "ScopeNotFound"):
        return InputMissing(f"{what}: {msg}; check the DID (rucio list-dids)")
    if name in ("CannotAuthenticate", "MissingClientParameter", "ConfigNotFound", "NoAuthInformation",
                "InputValidationError", "ClientProtocolNotSupported"):  # fmt: skip
        return ConfigError(f"{what}: {name}: {msg}; check rucio.cfg, the account and your credentials")
    return Transient(f"{what}: {name}: {msg}; retry (is the rucio server reachable?)")


def choose(replica: dict, opts: RucioOptions) -> tuple[str, str] | None:
    """(url, rse) of the replica to read: the first preferred RSE that has one, else rucio's first."""
    rses: dict[str, list[str]] = replica.get("rses") or {}
    for rse in opts.rse_preference:
        urls = [u for u in rses.get(rse) or [] if u.startswith(f"{opts.scheme}://")]
        if urls:
            return urls[0], rse
    if opts.strict and opts.rse_preference:
        return None
    pfns: dict[str, dict] = replica.get("pfns") or {}
    ranked = sorted((info.get("priority", 0), url, info.get("rse", "")) for url, info in pfns.items()
                    if url.startswith(f"{opts.scheme}://"))  # fmt: skip
    if ranked:
        return ranked[0][1], ranked[0][2]
    for rse, urls in sorted(rses.items()):
        for u in urls:
            if u.startswith(f"{opts.scheme}://"):
                return u, rse
    return None


def replicas(dids: list[str], opts: RucioOptions, dataset: str) -> list[Replica]:
    """One replica per file of ``dids``, sorted by file name."""
    c = client()
    out: list[Replica] = []
    for did in dids:
        scope, _, name = did.partition(":")
        try:
            found = list(c.list_replicas([{"scope": scope, "name": name}], schemes=[opts.scheme],
                                         rse_expression=opts.rse_expression))  # fmt: skip
        except Exception as e:
            raise _classify(e, f"dataset {dataset}: rucio DID {did}") from e
        if not found:
            raise InputMissing(f"dataset {dataset}: rucio DID {did} has no file (or no {opts.scheme} replica)")
        for r in found:
            picked = choose(r, opts)
            fdid = f"{r.get('scope', scope)}:{r.get('name', '?')}"
            if picked is None:
                where = ", ".join(sorted(r.get("rses") or {})) or "nowhere"
                raise CrbatchError(
                    f"dataset {dataset}: {fdid} has no {opts.scheme} replica on {', '.join(opts.rse_preference)} "
                    f"(replicas: {where}); add an RSE to rucio.rse_preference or set rucio.strict: false",
                    ExitCode.INPUT_MISSING,
                )
            out.append(Replica(fdid, picked[0], picked[1], r.get("bytes")))
    log.info("dataset %s: %d file(s) from %d rucio DID(s) (%s)", dataset, len(out), len(dids),
             ", ".join(sorted({r.rse for r in out})))  # fmt: skip
    return sorted(out, key=lambda r: (r.did.rpartition(":")[2], r.did))
