#!/bin/bash
# GPU study in one device call: three 500-edit runs (MEMIT, ENCORE, ENCORE lambda_n 60) side by side,
# posttrain cpt/full/lora and variants, diffs, and benchmarks/edit_speed.py --device cuda.
# Env: DEV (cuda|cpu), PT_STEPS, EDITS, DEADLINE (s), OUTDIR (default $OUT), DS (downstream task files).
# Everything comes back as three files (the device returns at most 8): runs.tgz (run folders without
# state/ and model/), logs.tgz, edit_speed.json. Getting the bundled model there: see stage.md.
set -u
DEV=${DEV:-cuda}; PT_STEPS=${PT_STEPS:-300}; EDITS=${EDITS:-500}; DEADLINE=${DEADLINE:-520}; O=${OUTDIR:-$OUT}
PT_EVERY=$(( PT_STEPS / 12 > 0 ? PT_STEPS / 12 : 1 )); ED_EVERY=$(( EDITS / 10 > 0 ? EDITS / 10 : 1 ))
T0=$(date +%s)
left() { local l=$(( DEADLINE - ($(date +%s) - T0) )); echo $(( l > 5 ? l : 5 )); }
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
P="python3 -m editscope"
R=$O/work/pt; E=$O/work/edit; L=$O/work/logs; mkdir -p $R $E $L
DS=${DS:-.devdata/jsonl}
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'peft', peft.__version__)"
$P models >/dev/null 2>&1; python3 -c "from editscope.models.bundled import ensure_bundled; print(ensure_bundled('smollm2-135m'))" || exit 1
edit_run() {  # name, extra args
  local name=$1; shift
  OMP_NUM_THREADS=4 $P run --device $DEV --editor "$@" --edits $EDITS --batch-size 10 --every $ED_EVERY \
    --downstream-dir $DS --inst downstream.autocast=bfloat16 --out $E/$name > $L/edit_$name.log 2>&1
  echo "edit $name rc=$? at $(( $(date +%s) - T0 )) s"
}
if [ "${SKIP_EDITS:-0}" = 0 ]; then
edit_run memit memit &
edit_run encore encore &
edit_run encore-n60 encore --hp norm_weight=60 &
fi
pt() {  # name, args
  local name=$1; shift
  OMP_NUM_THREADS=4 timeout $(left) $P posttrain --device $DEV --steps $PT_STEPS "$@" --out $R/$name > $L/pt_$name.log 2>&1
  echo "posttrain $name rc=$? at $(( $(date +%s) - T0 )) s"; tail -12 $L/pt_$name.log | grep -v "it/s\]"
}
pt cpt --mode cpt --every $PT_EVERY
pt full --mode full --every $PT_EVERY
pt lora --mode lora --every $PT_EVERY
$P diff smollm2-135m $R/full --json > $L/diff_full.json 2>$L/diff.err; $P diff smollm2-135m $R/lora --json > $L/diff_lora.json 2>>$L/diff.err
echo "diffs done at $(( $(date +%s) - T0 )) s"; rm -rf $R/full/model $R/lora/model $R/cpt/model $R/*/adapter
pt cpt-wd0 --mode cpt --weight-decay 0 --every $PT_EVERY --no-save-model
pt full-new --mode full --answer new --every $PT_EVERY --no-save-model
pt full-lr1e-4-wd0.1 --mode full --lr 1e-4 --weight-decay 0.1 --every $PT_EVERY --no-save-model
pt cpt-lr1e-5-wd1 --mode cpt --lr 1e-5 --weight-decay 1.0 --every $PT_EVERY --no-save-model
OMP_NUM_THREADS=4 timeout $(left) python3 benchmarks/edit_speed.py --device $DEV --editors memit,encore --json > $O/edit_speed.json 2>$L/edit_speed.log
echo "edit_speed rc=$? at $(( $(date +%s) - T0 )) s"
while [ $(( $(date +%s) - T0 )) -lt $DEADLINE ] && [ -n "$(jobs -rp)" ]; do sleep 5; done
kill $(jobs -rp) 2>/dev/null; pkill -f "editscope run --device" ; sleep 2
echo "packing at $(( $(date +%s) - T0 )) s"
tar czf $O/runs.tgz -C $O/work --exclude=state --exclude=model --exclude=adapter pt edit
tar czf $O/logs.tgz -C $O/work logs
rm -rf $O/work
ls -la $O
