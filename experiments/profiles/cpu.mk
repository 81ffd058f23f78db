# CPU profile of `make reproduce`: sized to finish within CI's budget on 2 cores.
# One epoch on a seeded subset of the SST-2 training split.
TRAIN_LIMIT = 4000
EPOCHS = 1
BATCH_SIZE = 32
LEARNING_RATE = 1e-4
SEED = 42
EXIT_LAYERS = 4,5,6
AGGRESSIVE_EXIT_LAYERS = 1,2,3,4,5,6

# Baselines of reproduce-comparison: static depths (the full model is the deepest
# point) and the DeeBERT entropy thresholds in nats (ln 2 = 0.693 is the maximum).
STATIC_DEPTHS = 1,2,3,4,5
DEEBERT_THRESHOLDS = 0,0.01,0.03,0.06,0.1,0.15,0.2,0.3,0.45,0.6
