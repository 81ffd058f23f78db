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
