# hashee: tests and the paper pipeline.
#
#   make install                  create .venv and install hashee with its test extras
#   make test                     run the test suite
#   make reproduce                the paper pipeline, CPU-sized profile
#   make reproduce PROFILE=gpu    the same pipeline on full data (GPU)
#   make experiment CONFIG=...    one experiment config end to end (experiments/*.yaml)
#   make benchmark                time HashEE against the full model (benchmarks/README.md)
#
# Data comes from DATA_DIR (ELUE layout); it defaults to ../shared/data/elue
# when that folder exists. Results go to OUT.

PROFILE ?= cpu
include experiments/profiles/$(PROFILE).mk

SHARED_DATA := $(wildcard ../shared/data/elue)
DATA_DIR ?= $(SHARED_DATA)
OUT ?= runs/reproduce-$(PROFILE)
VENV ?= .venv
PYTHON ?= $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
HASHEE ?= $(PYTHON) -m hashee_cli

TRAIN_COMMON = --data-dir $(DATA_DIR) --epochs $(EPOCHS) --batch-size $(BATCH_SIZE) \
	--learning-rate $(LEARNING_RATE) --seed $(SEED) --overwrite
TRAIN_OPTIONS = $(TRAIN_COMMON) $(if $(TRAIN_LIMIT),--train-limit $(TRAIN_LIMIT))

.PHONY: install test reproduce reproduce-sst2 reproduce-sst2-flops reproduce-comparison reproduce-learnability \
	experiment benchmark check-data

install:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install torch==2.13.0
	$(VENV)/bin/pip install -e '.[test]'

test:
	$(PYTHON) -m pytest -q

check-data:
	@test -n "$(DATA_DIR)" || { echo "Error: set DATA_DIR to a folder in the ELUE layout (<dir>/SST-2/train.tsv ...)"; exit 1; }
	@test -f "$(DATA_DIR)/SST-2/train.tsv" || { echo "Error: $(DATA_DIR)/SST-2/train.tsv not found; set DATA_DIR to an ELUE-layout folder"; exit 1; }

reproduce: reproduce-sst2 reproduce-sst2-flops reproduce-comparison reproduce-learnability reproduce-dialogsum

# SST-2: a frequency hash, HashEE at the profile's exit layers and at one
# exit per layer (the aggressive setting), and the full model on the same
# budget; all evaluated on the test split and compared in one table.
reproduce-sst2: check-data
	@mkdir -p $(OUT)/sst2
	$(HASHEE) build-hash --method freq --data-dir $(DATA_DIR) --exit-layers $(EXIT_LAYERS) \
		-o $(OUT)/sst2/hash-freq.json --overwrite
	$(HASHEE) build-hash --method freq --data-dir $(DATA_DIR) --exit-layers $(AGGRESSIVE_EXIT_LAYERS) \
		-o $(OUT)/sst2/hash-freq-aggressive.json --overwrite
	$(HASHEE) finetune --method full $(TRAIN_OPTIONS) -o $(OUT)/sst2/full
	$(HASHEE) finetune --hash-table $(OUT)/sst2/hash-freq.json $(TRAIN_OPTIONS) -o $(OUT)/sst2/hashee-freq
	$(HASHEE) finetune --hash-table $(OUT)/sst2/hash-freq-aggressive.json $(TRAIN_OPTIONS) -o $(OUT)/sst2/hashee-freq-aggressive
	$(HASHEE) evaluate $(OUT)/sst2/full --split test -o $(OUT)/sst2/metrics-full.csv --overwrite
	$(HASHEE) evaluate $(OUT)/sst2/hashee-freq --split test -o $(OUT)/sst2/metrics-hashee-freq.csv --overwrite
	$(HASHEE) evaluate $(OUT)/sst2/hashee-freq-aggressive --split test -o $(OUT)/sst2/metrics-hashee-freq-aggressive.csv --overwrite
	$(HASHEE) report $(OUT)/sst2/metrics-full.csv $(OUT)/sst2/metrics-hashee-freq.csv \
		$(OUT)/sst2/metrics-hashee-freq-aggressive.csv -o $(OUT)/sst2 --overwrite

# fvcore counts of the three SST-2 models on a seeded subset of the test split
# (each example is traced alone), then the comparison again with the counts.
COUNT_OPTIONS = --split test $(if $(COUNT_LIMIT),--limit $(COUNT_LIMIT)) --seed $(SEED)
reproduce-sst2-flops: reproduce-sst2
	$(HASHEE) count-flops $(OUT)/sst2/full $(COUNT_OPTIONS) -o $(OUT)/sst2/flops.csv --overwrite
	$(HASHEE) count-flops $(OUT)/sst2/hashee-freq $(COUNT_OPTIONS) -o $(OUT)/sst2/flops.csv
	$(HASHEE) count-flops $(OUT)/sst2/hashee-freq-aggressive $(COUNT_OPTIONS) -o $(OUT)/sst2/flops.csv
	$(HASHEE) report $(OUT)/sst2/metrics-full.csv $(OUT)/sst2/metrics-hashee-freq.csv \
		$(OUT)/sst2/metrics-hashee-freq-aggressive.csv $(OUT)/sst2/flops.csv -o $(OUT)/sst2 --overwrite

# SST-2 against the baselines, on the budget of reproduce-sst2 (BASELINE_TRAIN_LIMIT,
# when set, trains the static curve and PABEE on fewer examples): the static
# curve (its deepest point is the full model trained above), DeeBERT (its
# second stage on top of that full model), PABEE (joint training). Each
# early-exit sweep records every layer once and replays every setting, then
# runs the real per-example early exit to measure its speed. count-flops
# counts the baselines on the subset reproduce-sst2-flops counted (for
# DeeBERT and PABEE, every setting of the sweep), so the plot's cost axis is
# the fvcore count for every method. The report has a table and a Pareto plot
# with ELUE scores against each baseline curve.
BASELINE_LIMIT = $(or $(BASELINE_TRAIN_LIMIT),$(TRAIN_LIMIT))
BASELINE_TRAIN_OPTIONS = $(TRAIN_COMMON) $(if $(BASELINE_LIMIT),--train-limit $(BASELINE_LIMIT))
reproduce-comparison: reproduce-sst2-flops
	$(HASHEE) finetune --method static --depths $(STATIC_DEPTHS) $(BASELINE_TRAIN_OPTIONS) -o $(OUT)/sst2/static
	$(HASHEE) finetune --method deebert --init-from $(OUT)/sst2/full $(TRAIN_OPTIONS) -o $(OUT)/sst2/deebert
	$(HASHEE) finetune --method pabee $(BASELINE_TRAIN_OPTIONS) -o $(OUT)/sst2/pabee
	$(HASHEE) evaluate $(OUT)/sst2/static --split test -o $(OUT)/sst2/metrics-static.csv --overwrite
	$(HASHEE) evaluate $(OUT)/sst2/deebert --split test --thresholds $(DEEBERT_THRESHOLDS) --early-exit \
		-o $(OUT)/sst2/metrics-deebert.csv --overwrite
	$(HASHEE) evaluate $(OUT)/sst2/pabee --split test --early-exit -o $(OUT)/sst2/metrics-pabee.csv --overwrite
	$(HASHEE) count-flops $(OUT)/sst2/static $(COUNT_OPTIONS) -o $(OUT)/sst2/flops-baselines.csv --overwrite
	$(HASHEE) count-flops $(OUT)/sst2/deebert $(COUNT_OPTIONS) --thresholds $(DEEBERT_THRESHOLDS) -o $(OUT)/sst2/flops-baselines.csv
	$(HASHEE) count-flops $(OUT)/sst2/pabee $(COUNT_OPTIONS) -o $(OUT)/sst2/flops-baselines.csv
	$(HASHEE) report $(OUT)/sst2/metrics-full.csv $(OUT)/sst2/metrics-static.csv $(OUT)/sst2/metrics-deebert.csv \
		$(OUT)/sst2/metrics-pabee.csv $(OUT)/sst2/metrics-hashee-freq.csv $(OUT)/sst2/metrics-hashee-freq-aggressive.csv \
		$(OUT)/sst2/flops.csv $(OUT)/sst2/flops-baselines.csv \
		--reference static --reference deebert --reference pabee -o $(OUT)/sst2/comparison --overwrite

# One experiment config end to end, reusing finished steps when run again:
#   make experiment CONFIG=experiments/comparison-cpu.yaml
CONFIG ?= experiments/comparison-cpu.yaml
experiment:
	$(HASHEE) experiment $(CONFIG) $(if $(DATA_DIR),--data-dir $(DATA_DIR))

# Wall-clock speed-up against the FLOPs ratio; writes benchmarks/results.* and
# the results section of benchmarks/README.md. Not part of reproduce.
BENCHMARK_OPTIONS ?=
benchmark: check-data
	$(PYTHON) benchmarks/speed.py --data-dir $(DATA_DIR) --update-readme $(BENCHMARK_OPTIONS)

# Learnability of instance difficulty on the SNLI difficulty data: probes
# (bag of words, BiLSTM, fine-tuned MiniLM) against majority and random
# guesses, over several seeds, for human- and model-defined difficulty.
DIFFICULTY_DIR ?= $(wildcard ../shared/data/difficulty)
LEARNABILITY_OPTIONS = --data-dir $(DIFFICULTY_DIR) --seeds $(LEARNABILITY_SEEDS) --epochs $(LEARNABILITY_EPOCHS) \
	--max-seq-length $(LEARNABILITY_MAX_SEQ_LENGTH) --learning-rate $(LEARNABILITY_LEARNING_RATE) \
	$(if $(LEARNABILITY_TRAIN_LIMIT),--train-limit $(LEARNABILITY_TRAIN_LIMIT)) \
	$(if $(LEARNABILITY_TEST_LIMIT),--test-limit $(LEARNABILITY_TEST_LIMIT)) --overwrite

reproduce-learnability:
	@test -f "$(DIFFICULTY_DIR)/snli_human_difficulty/train.txt" || { echo "Error: set DIFFICULTY_DIR to the folder with snli_human_difficulty/ and snli_model_difficulty/"; exit 1; }
	@mkdir -p $(OUT)/learnability
	$(HASHEE) learnability-probe --difficulty human $(LEARNABILITY_OPTIONS) -o $(OUT)/learnability/human.csv
	$(HASHEE) learnability-probe --difficulty model $(LEARNABILITY_OPTIONS) -o $(OUT)/learnability/model.csv

# DialogSum summarisation: bert2bert warm-started from MiniLM, a frequency hash
# counted over dialogues and summaries, the full model and HashEE trained on the
# same budget, greedy summaries of the test split scored with ROUGE against its
# three references, and one comparison table (ROUGE, exit layers, MACs).
.PHONY: reproduce-dialogsum check-summarization-data
SUMMARIZATION_DIR ?= $(wildcard ../shared/data/summarization)
SUMM_OUT = $(OUT)/dialogsum
SUMM_LENGTHS = --max-seq-length $(SUMM_MAX_SOURCE_LENGTH) --max-target-length $(SUMM_MAX_TARGET_LENGTH)
SUMM_TRAIN_OPTIONS = --task DialogSum --data-dir $(SUMMARIZATION_DIR) $(SUMM_LENGTHS) --epochs $(SUMM_EPOCHS) \
	--batch-size $(SUMM_BATCH_SIZE) --eval-batch-size $(SUMM_EVAL_BATCH_SIZE) --learning-rate $(SUMM_LEARNING_RATE) \
	$(if $(SUMM_TRAIN_LIMIT),--train-limit $(SUMM_TRAIN_LIMIT)) $(if $(SUMM_DEV_LIMIT),--dev-limit $(SUMM_DEV_LIMIT)) \
	--seed $(SEED) --overwrite
SUMM_EVAL_OPTIONS = --split test --num-beams $(SUMM_NUM_BEAMS) --batch-size $(SUMM_EVAL_BATCH_SIZE) \
	$(if $(SUMM_TEST_LIMIT),--limit $(SUMM_TEST_LIMIT)) --seed $(SEED) --overwrite

check-summarization-data:
	@test -f "$(SUMMARIZATION_DIR)/DialogSum/train.tsv" || { echo "Error: $(SUMMARIZATION_DIR)/DialogSum/train.tsv not found; set SUMMARIZATION_DIR to a folder with DialogSum/{train,dev,test_allrefs}.tsv"; exit 1; }

reproduce-dialogsum: check-summarization-data
	@mkdir -p $(SUMM_OUT)
	$(HASHEE) build-hash --task DialogSum --method freq --data-dir $(SUMMARIZATION_DIR) $(SUMM_LENGTHS) \
		--exit-layers $(SUMM_EXIT_LAYERS) -o $(SUMM_OUT)/hash-freq.json --overwrite
	$(HASHEE) finetune --method full $(SUMM_TRAIN_OPTIONS) -o $(SUMM_OUT)/full
	$(HASHEE) finetune --hash-table $(SUMM_OUT)/hash-freq.json $(SUMM_TRAIN_OPTIONS) -o $(SUMM_OUT)/hashee-freq
	$(HASHEE) evaluate $(SUMM_OUT)/full $(SUMM_EVAL_OPTIONS) -o $(SUMM_OUT)/metrics-full.csv \
		--predictions $(SUMM_OUT)/generations-full.tsv
	$(HASHEE) evaluate $(SUMM_OUT)/hashee-freq $(SUMM_EVAL_OPTIONS) -o $(SUMM_OUT)/metrics-hashee-freq.csv \
		--predictions $(SUMM_OUT)/generations-hashee-freq.tsv
	$(HASHEE) report $(SUMM_OUT)/metrics-full.csv $(SUMM_OUT)/metrics-hashee-freq.csv -o $(SUMM_OUT)
