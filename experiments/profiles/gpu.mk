# GPU profile of `make reproduce`: the whole training split, three epochs.
TRAIN_LIMIT =
EPOCHS = 3
BATCH_SIZE = 32
LEARNING_RATE = 1e-4
SEED = 42
EXIT_LAYERS = 4,5,6
AGGRESSIVE_EXIT_LAYERS = 1,2,3,4,5,6
# count-flops on the whole test split.
COUNT_LIMIT =
