#!/usr/bin/env bash
# `crbatch train` on a GPU machine (JAX backend): 2 epochs on ≥ 2M synthetic jets; prints jets/s and
# GPU memory. Written for the lent device machines (/work/.library/device/README.md): Python 3.12
# with jax[cuda], h5py, numpy, yaml, matplotlib, scipy installed, no network. What crbatch needs
# beyond that travels as wheels in .whl/ (ignored by git):
#
#   here, once:   bash bench/gpu_train.sh fetch          # pip download of the wheels into .whl/
#   there:        bash bench/gpu_train.sh                # via the device tool, carry [".whl"]
#
# Environment: JETS (generated jets, default 2400000: ~1.7M main-training jets), BATCH (512),
# EPOCHS (2), WORK (/tmp/crbatch-gpu). Everything it writes stays under WORK; the summary table is
# printed last (and copied to $OUT when set).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

if [[ "${1:-}" == "fetch" ]]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  mkdir -p .whl
  plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  # keras and what the image lacks (its own deps absl-py, h5py, ml-dtypes, numpy, packaging, rich are there)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
    -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0 pydantic==2.14.4 pydantic-core==2.50.5 \
    annotated-types==0.8.0 typing-inspection==0.4.5 hdf5plugin==7.1.0
  ls -la .whl
  exit 0
fi

JETS=${JETS:-2400000}
BATCH=${BATCH:-512}
EPOCHS=${EPOCHS:-2}
WORK=${WORK:-/tmp/crbatch-gpu}
mkdir -p "$WORK"

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$REPO
else
  export PYTHONPATH=$REPO
fi
export KERAS_BACKEND=jax CRBATCH_NO_BAR=1 PYTHONUNBUFFERED=1
# Allocate GPU memory as needed (JAX takes 75 % of the card up front otherwise), so that what
# nvidia-smi shows is what training uses.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), '| keras', keras.__version__)"

echo "== data: $JETS synthetic jets → crbatch build"
t0=$(date +%s)
python3 - "$WORK" "$JETS" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "bench")
from train import make_datasets  # bench/train.py: synthetic shards (cached) + crbatch build
make_datasets(Path(sys.argv[1]), int(sys.argv[2]), workers=16)
EOF
echo "data ready in $(( $(date +%s) - t0 )) s"

echo "== train: $EPOCHS epochs, batch $BATCH"
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -lms 1000 > "$WORK/gpu.csv" 2>/dev/null &
SMI=$!
trap 'kill $SMI 2>/dev/null || true' EXIT
rm -rf "$WORK/run"
python3 - "$WORK" "$JETS" "$BATCH" "$EPOCHS" <<'EOF'
import json, resource, sys, time
from pathlib import Path
import jax
from crbatch.train.config import TrainConfig
from crbatch.train.loop import train

work, jets, batch, epochs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = TrainConfig(data=work / f"datasets_{jets}", batch_size=batch, epochs=epochs, frac_list=1.0,
                  eval_batch_size=16384)
t0 = time.perf_counter()
r = train(cfg, work / "run")
wall = time.perf_counter() - t0
h = json.loads((work / "run" / "history.json").read_text())
stats = jax.devices()[0].memory_stats() or {}
out = {"status": r.status, "wall_s": wall, "train_jets_per_s": h["train_jets_per_s"],
       "time_train_s": h["time_train_s"], "time_compile_s": h["time_compile_s"], "time_eval_s": h["time_eval_s"],
       "val_original_lossf": h["val_original_lossf"], "peak_gpu_bytes": stats.get("peak_bytes_in_use"),
       "gpu_bytes_limit": stats.get("bytes_limit"), "host_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
(work / "result.json").write_text(json.dumps(out))
print(json.dumps(out))
EOF
kill $SMI 2>/dev/null || true

python3 - "$WORK" "$JETS" "$BATCH" <<'EOF' | tee "$WORK/summary.md"
import json, sys
from pathlib import Path
work, jets, batch = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
r = json.loads((work / "result.json").read_text())
used = [int(l.split(",")[1].split()[0]) for l in (work / "gpu.csv").read_text().splitlines() if "MiB" in l]
peak = r["peak_gpu_bytes"]
print(f"\n`crbatch train` on {jets:,} generated jets, JAX on GPU, batch {batch}")
print("\n| epoch | jets/s (steps) | train s | of which compile s | validation + plots s | val CE |")
print("|---:|---:|---:|---:|---:|---:|")
for i, jps in enumerate(r["train_jets_per_s"]):
    print(f"| {i} | {jps:,.0f} | {r['time_train_s'][i]:.1f} | {r['time_compile_s'][i]:.1f} | {r['time_eval_s'][i]:.1f} "
          f"| {r['val_original_lossf'][i]:.4f} |")
print(f"\nGPU memory: peak in use {peak / 2**20:,.0f} MiB (JAX)" if peak else "\nGPU memory: (no JAX stats)",
      f"| nvidia-smi max used {max(used) if used else 'n/a'} MiB | host peak RSS {r['host_max_rss_mb']:,.0f} MB",
      f"| wall {r['wall_s']:.0f} s | {r['status']}")
EOF
if [[ -n "${OUT:-}" ]]; then cp "$WORK/summary.md" "$WORK/result.json" "$WORK/gpu.csv" "$OUT/" 2>/dev/null || true; fi
