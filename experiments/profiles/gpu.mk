# GPU profile of `make reproduce`: the whole training split, three epochs.
# Learnability probes: five seeds, three epochs, the whole difficulty data.
LEARNABILITY_SEEDS = 1,2,3,4,5
LEARNABILITY_EPOCHS = 3
LEARNABILITY_MAX_SEQ_LENGTH = 128
LEARNABILITY_LEARNING_RATE = 5e-5
LEARNABILITY_TRAIN_LIMIT =
LEARNABILITY_TEST_LIMIT =

TRAIN_LIMIT =
EPOCHS = 3
BATCH_SIZE = 32
LEARNING_RATE = 1e-4
SEED = 42
EXIT_LAYERS = 4,5,6
AGGRESSIVE_EXIT_LAYERS = 1,2,3,4,5,6
# count-flops on the whole test split.
COUNT_LIMIT =

# DialogSum summarisation: all 12,460 training dialogues, the whole dev and
# test splits, beam search with 4 beams.
SUMM_TRAIN_LIMIT =
SUMM_DEV_LIMIT =
SUMM_TEST_LIMIT =
SUMM_EPOCHS = 3
SUMM_BATCH_SIZE = 32
SUMM_EVAL_BATCH_SIZE = 64
SUMM_LEARNING_RATE = 1e-4
SUMM_MAX_SOURCE_LENGTH = 512
SUMM_MAX_TARGET_LENGTH = 64
SUMM_EXIT_LAYERS = 4,5,6
SUMM_NUM_BEAMS = 4

# Baselines of reproduce-comparison (see cpu.mk).
STATIC_DEPTHS = 1,2,3,4,5
# Empty: the baselines train on the same examples as HashEE.
BASELINE_TRAIN_LIMIT =
DEEBERT_THRESHOLDS = 0,0.005,0.01,0.02,0.03,0.05,0.07,0.1,0.15,0.2,0.3,0.45,0.6,0.69
