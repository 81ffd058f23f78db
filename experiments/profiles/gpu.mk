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
