# GPU profile of `make reproduce`: the whole training split, three epochs.
TRAIN_LIMIT =
EPOCHS = 3
BATCH_SIZE = 32
LEARNING_RATE = 1e-4
SEED = 42
EXIT_LAYERS = 4,5,6
AGGRESSIVE_EXIT_LAYERS = 1,2,3,4,5,6

# Baselines of reproduce-comparison (see cpu.mk).
STATIC_DEPTHS = 1,2,3,4,5
DEEBERT_THRESHOLDS = 0,0.005,0.01,0.02,0.03,0.05,0.07,0.1,0.15,0.2,0.3,0.45,0.6,0.69
