"""Build: shards → training datasets (main and control region, train/val/test), and the streaming reader.

``crbatch build INPUT... --output-dir DIR [--config build.yaml] [--xsec xsec.yaml]``

Inputs are shard files, directories (their ``*.h5``), wildcards or a YAML list whose entries may
carry per-entry options ``{path, use, max_jets, fraction, event_filter, dsid}``.

Outputs (``schema.dataset_filename``): ``DIR/main_{train,val,test}.h5`` (labels QCD 0, signal 1,
BIB 2) and, when data shards are given, ``DIR/cr_{train,val,test}.h5`` (labels QCD 0 for the
multijet MC, DATA 3 for collision data; the reader's adversary target is 1 = data, 0 = MC), plus
``DIR/summary.json``. Each file: ``jets`` (``schema.DATASET_JET_DTYPE``: the shard's jet fields with
``pt`` still in GeV, plus ``pt_scaled``, ``weight_xs``, ``weight_balanced`` and ``source``, an index
into the ``shards`` attribute) and ``clusters``/``tracks``/``msegs`` in the shard layout with scaled
float32 features; attributes ``kind="dataset"``, ``role``, ``split``, ``scaled`` (scaling name),
``scaling`` (the constants, see :mod:`crbatch.scaling`), ``summary``, ``config``, ``shards``,
``build_id``, and ``complete`` last.

Which shards feed which dataset: signal and BIB → main; data → control region; QCD → both by
default (``qcd_use: main|cr|both``, or ``use:`` on a YAML entry). Without any data shard there is
no control region and QCD feeds the main dataset only.

Selection, in order, each a pure function of the jet's (runNumber, eventNumber, jet_index, label)
and a seed (:mod:`crbatch.build.select`) — so the result never depends on file order or on how
many jobs wrote the shards: event filter (odd/even ``eventNumber``), signal mass points, per-file
``fraction`` and ``max_jets`` (the smallest hashes, exact), global ``fraction`` × per-class
``fraction`` and per-class ``max_jets`` (exact, over all files). Split: hash of (runNumber,
eventNumber, ``split_seed``) mod 10000 against the fractions (default 90/5/5), so all jets of an
event share a split, in both datasets. Output order: sorted by a seeded hash = a uniform shuffle.

Weights: ``mcEventWeight`` stays raw. ``weight_xs``: QCD ``mcEventWeight · σε / Σw_initial(DSID)``,
with σε from ``--xsec`` (``{DSID: pb}`` or ``{DSID: {xsec, filter_eff, k_factor}}``) and Σw_initial
summed over every given shard of that DSID, empty ones included; signal keeps its raw weight (its
normalisation does not matter for a shape classifier), BIB and data 1. Without a table,
``weight_xs`` = raw weight (recorded in the summary). ``weight_balanced``: the reference's
rescaling of ``weight_base`` (raw or xs), per split: main — QCD scaled so its total equals the
signal total, BIB untouched; control region — MC scaled so its total equals the data total.
Quotas do not renormalise ``weight_xs`` (draws are uniform, so ratios between slices are kept).

Memory: pass 1 reads only the ``jets`` tables; pass 2 streams each shard once in blocks and
scatters the selected, scaled jets into temporary bucket files (valid constituents only) in a
hidden directory of the output directory; pass 3 sorts one bucket at a time (about
``bucket_mb``) into the outputs. Peak RSS ≈ 1.5 × ``bucket_mb`` + a few blocks, independent of the
number of jets. All outputs appear (atomic renames) only after all are complete.

Errors (``crbatch exit-codes``): missing input 10; unreadable shard 11; other schema version,
incomplete shard, already-scaled shard or mixed-class legacy shard 12 (``--skip-bad-shards`` skips
and counts them instead); a required class with no jets 13 (``main_classes`` lists the required
main classes; the control region needs QCD and data); invalid config or a QCD DSID missing from
the cross-section table 3; a write error (disk full) 20. Empty shards are skipped and counted.

The reader (:class:`crbatch.build.reader.DatasetReader`) streams these datasets — or raw and
legacy shards — as model-ordered batches; see its module.
"""
