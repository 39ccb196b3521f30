# One place for set-up: both entry points create .venv on first use and re-install only when
# requirements.txt or pyproject.toml changed (the stamp file), so repeated calls are fast.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The IDRiD folder the dataset browser and training read (never copied into the repository).
DATA ?= ../shared/data/idrid-lite

.PHONY: demo test bench clean-venv models

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

demo: $(STAMP)
	DRWB_DATA=$(DATA) $(BIN)/python app.py  # a missing folder only leaves the Dataset browser out

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/drwb bench --json

clean-venv:
	rm -rf $(VENV)

# Reproduce every shipped model from IDRiD (sequentially; on 2 CPU cores well over half a day: the 5-fold
# grader alone is ~6 h, README "Models" gives each run's time; on a GPU see training/gpu_jobs.sh), then
# measure the others on the validation split with the product pipeline and record it in their cards.
# The grader is 5-fold cross-validated: its card holds out-of-fold figures (no validation split).
TRAIN := $(BIN)/drwb train
models: $(STAMP)
	$(TRAIN) localizer --backbone tf_efficientnet_lite0 --data $(DATA) --input-size 384 --epochs 30 --lr 0.001 --select last --run-name localizer_384 --ship --ship-name localizer_lite0
	$(TRAIN) segmenter --backbone tf_efficientnet_lite0 --data $(DATA) --tile 384 --batch-size 4 --epochs 10 --lr 0.001 --ship --ship-name segmenter_lite0
	$(BIN)/drwb prepare-guides --data $(DATA)
	$(TRAIN) grader --folds 5 --backbone tf_efficientnet_lite0 --data $(DATA) --input-size 448 --freeze-blocks 1 --sampling sqrt --ordinal-weight 0.5 --epochs 20 --batch-size 16 --lr 1e-3 --guides cache/guides_512.npz --attention-weight 0.5 --unlabelled --run-name grader_lite0_att --ship --ship-name grader_lite0
	$(TRAIN) segmenter --backbone tf_efficientnet_lite0 --data $(DATA) --input-size 2048 --tile 512 --tiles-per-image 48 --epochs 12 --stop-after 7 --batch-size 12 --lr 1e-3 --lesion-rates MA:0.3,HE:0.25,EX:0.15,SE:0.25 --focal-gamma 2 --select last --val-every 0 --channels-from segmenter_lite0@640:HE,OD --run-name segmenter_hr --ship --ship-name segmenter_lite0_hr
	$(TRAIN) segmenter --backbone tf_efficientnet_lite0 --input-size 2048 --tile 512 --tiles-per-image 28 --epochs 4 --batch-size 8 --lr 3e-4 --lesion-rates MA:0.3,HE:0.25,EX:0.15,SE:0.25 --focal-gamma 2 --select last --val-every 0 --channels-from segmenter_lite0@640:HE,OD --init-from segmenter_lite0_hr --data $(DATA) --run-name segmenter_hr_ft --ship --ship-name segmenter_lite0_hr
	$(TRAIN) segmenter --backbone tf_efficientnet_lite0 --input-size 2048 --tile 512 --tiles-per-image 28 --epochs 5 --batch-size 8 --lr 3e-4 --lesion-rates MA:0.3,HE:0.2,EX:0.25,SE:0.2 --focal-gamma 2 --select last --val-every 0 --channels-from segmenter_lite0@640:HE=mean,OD --mirror-tiles --inference-tiling 544:32 --init-from segmenter_lite0_hr --data $(DATA) --run-name segmenter_hr_ft2 --ship --ship-name segmenter_lite0_hr
	$(TRAIN) disc --backbone tf_efficientnet_lite0 --data $(DATA) --input-size 448 --tiles-per-image 10 --epochs 14 --batch-size 8 --lr 1e-3 --select last --val-every 7 --run-name disc_448 --ship --ship-name disc_lite0
	$(TRAIN) grader --folds 5 --backbone tf_efficientnet_lite0 --data $(DATA) --input-size 448 --epochs 10 --lr 1e-3 --batch-size 16 --freeze-blocks 3 --ordinal-weight 0.5 --sampling sqrt --run-name grader_lite0_cv5 --ship-fold 0
	$(TRAIN) grader --folds 5 --backbone tf_efficientnet_lite2 --data $(DATA) --input-size 448 --epochs 10 --lr 1e-3 --batch-size 16 --freeze-blocks 3 --ordinal-weight 0.5 --sampling sqrt --run-name grader_lite2_cv5 --ship --ship-name grader_lite2_frozen3 --ship-dir models/weights/members
	$(BIN)/drwb ensemble grader_lite0 members/grader_lite2_frozen3 --name grader_lite0_lite2_pair --no-flip --data $(DATA)
	$(TRAIN) grader --folds 5 --backbone tf_efficientnet_lite2 --data $(DATA) --input-size 448 --epochs 10 --lr 1e-3 --batch-size 16 --freeze-blocks 3 --ordinal-weight 0.5 --sampling sqrt --guides cache/guides_512.npz --attention-weight 0.5 --unlabelled --run-name grader_lite2_att_cv5 --ship --ship-name grader_lite2_att --ship-dir models/weights/members
	$(BIN)/drwb ensemble grader_lite0 members/grader_lite2_frozen3 members/grader_lite2_att --name grader_lite0_lite2_trio --no-flip --data $(DATA)
	$(TRAIN) grader --folds 5 --backbone tf_efficientnet_lite2 --data $(DATA) --input-size 512 --epochs 10 --lr 1e-3 --batch-size 16 --freeze-blocks 3 --ordinal-weight 0.5 --sampling sqrt --run-name grader_lite2_512_cv5 --ship --ship-name grader_lite2_512 --ship-dir models/weights/members
	$(BIN)/drwb ensemble members/grader_lite2_frozen3 members/grader_lite2_512 --name grader_lite2_pair_448_512 --no-flip --data $(DATA)
	$(BIN)/drwb selection-check grader_lite0 members/grader_lite2_frozen3 members/grader_lite2_att members/grader_lite2_512 --max-passes 4 --mirror --write-card grader_lite0_lite2_trio --data $(DATA)
	$(BIN)/drwb selection-check grader_lite0 members/grader_lite2_frozen3 members/grader_lite2_att members/grader_lite2_512 --max-passes 2 --mirror --write-card grader_lite2_pair_448_512 --data $(DATA)
	$(TRAIN) grader --folds 5 --fold 0 --backbone convnext_atto --data $(DATA) --input-size 320 --epochs 60 --batch-size 8 --lr 1e-3 --weight-decay 0.05 --no-norm-decay --layer-scale-init 0.1 --warmup-epochs 2 --sampling sqrt --ordinal-weight 0.5 --teacher-model 'runs/grader_lite0_cv5/fold{fold}' --reuse-teacher-head --feature-weight 4 --distill-weight 1 --distill-temperature 2 --hint-weight 2 --guides cache/guides_512.npz --attention-weight 0.5 --unlabelled --run-name grader_convnext_atto_simkd --ship --ship-name grader_convnext_atto
	$(BIN)/drwb explain-bench --data $(DATA) --split val --grader grader_convnext_atto --methods attention,gradcam,gradcam++,eigencam,layercam,integrated_gradients,saliency,smoothgrad,occlusion --sanity-images 2 --write-card
	$(TRAIN) grader --folds 5 --fold 0 --backbone tf_efficientnet_lite0 --data $(DATA) --input-size 448 --epochs 8 --val-every 2 --freeze-backbone --fine-attention 8 --init-from 'runs/grader_lite0_cv5/fold{fold}/best.safetensors' --guides cache/guides_512.npz --attention-weight 1.0 --teacher-model 'runs/grader_lite0_cv5/fold{fold}' --distill-weight 2 --distill-temperature 2 --hint-weight 0 --ordinal-weight 0.5 --sampling sqrt --select last --run-name grader_lite0_fine_kd --ship --ship-name grader_lite0_fine
	$(BIN)/drwb explain-bench --data $(DATA) --split val --grader grader_lite0_fine --methods attention,gradcam,gradcam++,integrated_gradients,saliency --sanity-images 2 --write-card
	$(BIN)/drwb provenance grader_lite0 members/grader_lite2_frozen3 members/grader_lite2_att members/grader_lite2_512 grader_lite0_lite2_pair grader_lite0_lite2_trio grader_lite2_pair_448_512 grader_convnext_atto grader_lite0_fine --data $(DATA)
	$(BIN)/drwb evaluate --data $(DATA) --split val --task localization --model localizer_lite0 --write-card
	$(BIN)/drwb evaluate --data $(DATA) --split val --task segmentation --model segmenter_lite0 --write-card
	$(BIN)/drwb evaluate --data $(DATA) --split val --task segmentation --model segmenter_lite0 --profile fast --write-card
	$(BIN)/drwb evaluate --data $(DATA) --split val --task segmentation --model segmenter_lite0_hr --write-card
	$(BIN)/drwb evaluate --data $(DATA) --split val --task disc --model disc_lite0 --write-card
	$(BIN)/drwb evaluate --data $(DATA) --split val --task disc --model disc_lite0 --profile fast --write-card
