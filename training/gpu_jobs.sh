#!/usr/bin/env bash
# Every pending training run on one GPU machine, in parallel, then OOF scoring and export.
#
# Run from the repository root with the bundle of `python -m training.remote pack --out gpu` in gpu/:
#     OUT=<folder for results> bash training/gpu_jobs.sh
# The same `drwb train` commands run on a CPU (drop nothing; `--device auto` picks the CPU), only slower;
# LIMIT=8 EP_SCALE=0.05 makes a few-minute smoke run of the whole script on a laptop.
# On the lent H200 (one call, timeout 590 s; carry the bundle and .whl/, wheels of timm 1.0.22 and
# segmentation-models-pytorch 0.5.0, which its image lacks or has at another version; keep
# models/weights/*.safetensors out of the upload, the jobs read none of them and it must stay under 64 MiB):
#     pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#     RUNS=/tmp/runs OUT=$OUT bash training/gpu_jobs.sh > $OUT/console.txt 2>&1
#
# Jobs (all at once: the GPU is idle most of each small run, and 16 CPU cores feed them); JOBS picks
# which (default: those still pending):
#   lite0     grader_lite0_cv5b, lite0 448 px, 5 folds + refit; grader_lite0_att, the same + lesion-supervised
#             attention (done 2026-11-30: grader_lite0 is the _att refit)
#   convnext  ConvNeXt-atto from scratch, 5 folds, each distilled online from the lite0 fold model that never
#             saw its fold (SimKD neck + feature hints + soft targets, attention supervision); the lite0
#             teacher folds (grader_lite0_cv5b) train first, and their refit beside the students (shipped
#             as a candidate ensemble member, grader_lite0_cv5b), unless the lite0 job runs anyway
#   segmenter UNet++ on 2048-px field-of-view crops, lesion-rate tile sampler, focal + Dice, from ImageNet
# Every schedule is a whole cosine fitted to its minutes (--fit-minutes: the epochs that fit at the second
# epoch's pace), so no run stops at a high learning rate. --max-minutes only guards: each run stops in time
# for the ship steps to finish DEADLINE seconds after the script starts (set it ~20 s inside the call's
# timeout; RESERVE seconds are kept for the ship steps), since a call killed at its limit returns nothing.
# Paces measured on the H200 (2026-12-01, 16 cores): with 11 grader runs and the segmenter at once, an
# epoch took ~8.5 s (lite0 448 px fold, two loader processes; ConvNeXt student with its online teacher the
# same) and ~27 s (segmenter, 48 tiles an image, 6 loaders); the segmenter alone with 14 loaders ~17 s.
# Each first epoch costs ~15 s more (start-up).
set -u
BUNDLE=${BUNDLE:-gpu}
export DRWB_TRUST_CACHE=1 DRWB_LITE0_WEIGHTS=$BUNDLE/lite0_imagenet_fp16.safetensors
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_out}
RUNS=${RUNS:-/tmp/drwb_runs}
LOGS=$OUT/logs
mkdir -p "$LOGS" "$RUNS"
LIMIT=${LIMIT:-0}
SCALE=${EP_SCALE:-1}
MAXMIN=${MAXMIN:-4}      # the lite0 job's fitted minutes
TEACHMIN=${TEACHMIN:-1.8}  # the teacher folds' fitted minutes (the refit's are 413/330 of them)
STUDMIN=${STUDMIN:-4.3}   # the ConvNeXt students' fitted minutes
SEGMIN=${SEGMIN:-6.5}     # the segmenter's fitted minutes (SEGLOADERS: its decoding processes, 6; 14 alone)
JOBS=${JOBS:-convnext segmenter}
DEADLINE=${DEADLINE:-560}  # seconds after the start by which everything is shipped and packed
RESERVE=${RESERVE:-100}    # seconds kept for the ship steps (OOF scoring, fp16 checks, validation, export)
T0=${T0:-$(date +%s)}     # the caller may start the clock earlier (before installing wheels)
left() { echo $((T0 + DEADLINE - $(date +%s))); }  # seconds to the deadline
want() { case " $JOBS " in *" $1 "*) return 0 ;; esac; return 1; }
ep() { python3 -c "print(max(1, round($1 * $SCALE)))"; }

BASE=(--data $BUNDLE/data --cache $BUNDLE/cache --runs "$RUNS" --threads 1 --limit "$LIMIT")
fit() {  # fitted minutes -> flags; the guard never runs past the deadline's reserve
  local left=$(($(left) - RESERVE))
  python3 -c "print(f'--fit-minutes {$1:g} --max-minutes {max(0.5, min(1.15 * $1 + 0.5, $left / 60)):.2f}')"
}
LITE=(grader --folds 5 --backbone tf_efficientnet_lite0 --input-size 448 --freeze-blocks 1 --sampling sqrt
      --ordinal-weight 0.5 --epochs "$(ep 20)" --batch-size 16 --lr 1e-3 --loader-workers 2 --val-every 5)
ATT=(--guides $BUNDLE/cache/guides_512.npz --attention-weight 0.5 --unlabelled)
CNX=(grader --folds 5 --input-size 448 --sampling sqrt --ordinal-weight 0.5 --epochs "$(ep 200)" --batch-size 16
     --loader-workers 2 --val-every 5
     --lr 1e-3 --weight-decay 0.05 --no-norm-decay --layer-scale-init 0.1 --warmup-epochs 2
     --teacher-model "$RUNS/grader_lite0_cv5b/fold{fold}" --reuse-teacher-head --feature-weight 4
     --distill-weight 1 --distill-temperature 2 --hint-weight 2
     --guides $BUNDLE/cache/guides_512.npz --attention-weight 0.5 --unlabelled)
SEG=(segmenter --backbone tf_efficientnet_lite0 --input-size 2048 --tile 512 --tiles-per-image 48
     --epochs "$(ep 40)" --batch-size 12 --lr 1e-3 --lesion-rates MA:0.3,HE:0.25,EX:0.15,SE:0.25
     --focal-gamma 2 --select last --val-every 0 --loader-workers "${SEGLOADERS:-6}"
     --channels-from segmenter_lite0@640:HE,OD)

declare -A FOLD_PIDS  # run name -> process ids of its fold pieces
pieces() {  # name, then the argument array of the run: 5 folds and the refit, in the background
  local name=$1; shift
  for k in 0 1 2 3 4; do
    # shellcheck disable=SC2046
    python3 drwb.py train "$@" "${BASE[@]}" $(fit "$MAXMIN") --run-name "$name" --fold "$k" >"$LOGS/$name.fold$k.log" 2>&1 &
    FOLD_PIDS[$name]+=" $!"
  done
  # shellcheck disable=SC2046
  python3 drwb.py train "$@" "${BASE[@]}" $(fit "$MAXMIN") --run-name "$name" --refit >"$LOGS/$name.refit.log" 2>&1 &
  GRADER_PIDS+=" ${FOLD_PIDS[$name]} $!"
}

date +%s >"$LOGS/started"
nvidia-smi --query-gpu=name,memory.total --format=csv >"$LOGS/gpu.txt" 2>&1 || true
if want segmenter; then
  # shellcheck disable=SC2046  # fit prints the flags to split
  python3 drwb.py train "${SEG[@]}" "${BASE[@]}" $(fit "$SEGMIN") --run-name segmenter_hr_gpu2 --ship --ship-dir "$OUT/seg" \
    --ship-name segmenter_lite0_hr >"$LOGS/segmenter_hr.log" 2>&1 &
  SEG_PID=$!
fi
GRADER_PIDS=""  # every grader run: their ship steps wait for these, not for the segmenter
if want lite0; then
  pieces grader_lite0_cv5b "${LITE[@]}"
  pieces grader_lite0_att "${LITE[@]}" "${ATT[@]}"
fi
if want convnext; then
  # the students need their teachers: the lite0 folds first (the lite0 job trains them too)
  if ! want lite0; then
    for k in 0 1 2 3 4; do
      # shellcheck disable=SC2046
      python3 drwb.py train "${LITE[@]}" "${BASE[@]}" $(fit "$TEACHMIN") --run-name grader_lite0_cv5b \
        --fold "$k" >"$LOGS/grader_lite0_cv5b.fold$k.log" 2>&1 &
      FOLD_PIDS[grader_lite0_cv5b]+=" $!"
    done
    # the refit (an ensemble-member candidate) runs on beside the students; 413 images against 330 a fold
    # shellcheck disable=SC2046
    python3 drwb.py train "${LITE[@]}" "${BASE[@]}" $(fit "$(python3 -c "print($TEACHMIN * 413 / 330)")") \
      --run-name grader_lite0_cv5b --refit >"$LOGS/grader_lite0_cv5b.refit.log" 2>&1 &
    GRADER_PIDS+=" $!"
  fi
  # shellcheck disable=SC2086  # word splitting of the pid list is intended
  wait ${FOLD_PIDS[grader_lite0_cv5b]}
  date +%s >"$LOGS/teachers_trained"
  if [ "$(left)" -lt $((RESERVE + 90)) ]; then
    echo "$(left) s to the deadline: too little for the ConvNeXt students; not started" >"$LOGS/students_skipped.log"
  else for k in 0 1 2 3 4; do  # a per-fold teacher has no refit: fold models only
    # shellcheck disable=SC2046
    python3 drwb.py train "${CNX[@]}" --backbone convnext_atto "${BASE[@]}" $(fit "$STUDMIN") \
      --run-name grader_convnext_atto --fold "$k" >"$LOGS/grader_convnext_atto.fold$k.log" 2>&1 &
    GRADER_PIDS+=" $!"
  done; fi
fi
# shellcheck disable=SC2086  # word splitting of the pid list is intended
wait $GRADER_PIDS
date +%s >"$LOGS/trained"
SHIP=(timeout -k 5)  # a ship step must end before the deadline, or the call returns nothing at all
ship_time() { echo $(($(left) - 20)); }  # seconds a ship step may take: what is left but the packing

# OOF scoring, temperatures and export: finds every piece finished, trains nothing
# --stop-after: a fold the time budget cut must not be trained on by the ship step (it would resume)
if want lite0; then
  "${SHIP[@]}" "$(ship_time)" python3 drwb.py train "${LITE[@]}" "${BASE[@]}" --run-name grader_lite0_cv5b --ship \
    --ship-dir "$OUT/lite0_plain" --ship-name grader_lite0 --stop-after 1 >"$LOGS/ship_lite0_plain.log" 2>&1 &
  "${SHIP[@]}" "$(ship_time)" python3 drwb.py train "${LITE[@]}" "${ATT[@]}" "${BASE[@]}" --run-name grader_lite0_att --ship \
    --ship-dir "$OUT/lite0_att" --ship-name grader_lite0 --stop-after 1 >"$LOGS/ship_lite0_att.log" 2>&1 &
fi
if want convnext; then
  # the teachers' OOF predictions first (the card compares each student with its teacher), then the students':
  # fold 0's model ships with the 5-fold OOF figures
  if want lite0; then
    wait  # the lite0 ship step above writes the teachers' OOF predictions
  else
    "${SHIP[@]}" "$(ship_time)" python3 drwb.py train "${LITE[@]}" "${BASE[@]}" --run-name grader_lite0_cv5b --ship \
      --ship-dir "$OUT/lite0_plain" --ship-name grader_lite0_cv5b --stop-after 1 >"$LOGS/oof_teacher.log" 2>&1
  fi
  "${SHIP[@]}" "$(ship_time)" python3 drwb.py train "${CNX[@]}" --backbone convnext_atto "${BASE[@]}" \
    --run-name grader_convnext_atto --ship \
    --ship-fold 0 --ship-dir "$OUT/convnext" --ship-name grader_convnext_atto --stop-after 1 \
    >"$LOGS/ship_convnext.log" 2>&1 &
fi
wait  # the ship steps, and the segmenter (its own ship step in the same process)
date +%s >"$LOGS/shipped"
for run in "$RUNS"/*; do  # per-epoch histories and OOF summaries (small), not checkpoints
  for f in "$run"/*/state.json "$run"/state.json "$run"/oof.json; do
    [ -f "$f" ] && cp "$f" "$LOGS/$(basename "$run")_$(basename "$(dirname "$f")")_$(basename "$f")"
  done
done
for f in "$LOGS"/*.log; do  # the last line of every log, for the caller's console
  echo "== $(basename "$f"): $(tail -c 600 "$f" | tr '\r' '\n' | grep -v '^\s*$' | tail -n 1 | cut -c1-260)"
done
cd "$OUT" || exit 1
for d in lite0_plain lite0_att convnext seg logs; do
  [ -d "$d" ] && tar -cf "$d.tar" "$d" && rm -rf "$d"
done
ls -la
