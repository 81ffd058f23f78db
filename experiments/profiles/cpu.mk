# CPU profile of `make reproduce`: sized to finish within CI's budget on 2 cores.
# Learnability probes: three seeds, one epoch, 1,000 training pairs per seed (a tenth held
# out for dev), 800 test pairs, 64 tokens (SNLI pairs average 28 MiniLM tokens).
LEARNABILITY_SEEDS = 1,2,3
LEARNABILITY_EPOCHS = 1
LEARNABILITY_MAX_SEQ_LENGTH = 64
LEARNABILITY_LEARNING_RATE = 1e-4
LEARNABILITY_TRAIN_LIMIT = 1000
LEARNABILITY_TEST_LIMIT = 800

# One epoch on a seeded subset of the SST-2 training split.
TRAIN_LIMIT = 4000
EPOCHS = 1
BATCH_SIZE = 32
LEARNING_RATE = 1e-4
SEED = 42
EXIT_LAYERS = 4,5,6
AGGRESSIVE_EXIT_LAYERS = 1,2,3,4,5,6
# count-flops traces each example alone (about 0.1 s each on one core): a 200-example subset.
COUNT_LIMIT = 200

# DialogSum summarisation: 320 training dialogues in batches of 4 for two epochs, dev
# ROUGE on 16 dialogues, greedy summaries of 64 test dialogues. Dialogues are cut at
# 128 tokens, which truncates most of them. Training is about nine tenths of the cost:
# 160 dialogues took under 3 minutes for both models on 2 idle cores. At this size
# bert2bert learns the style of the summaries but not yet to read the dialogue.
SUMM_TRAIN_LIMIT = 320
SUMM_DEV_LIMIT = 16
SUMM_TEST_LIMIT = 64
SUMM_EPOCHS = 2
SUMM_BATCH_SIZE = 4
SUMM_EVAL_BATCH_SIZE = 16
SUMM_LEARNING_RATE = 1e-4
SUMM_MAX_SOURCE_LENGTH = 128
SUMM_MAX_TARGET_LENGTH = 40
SUMM_EXIT_LAYERS = 4,5,6
SUMM_NUM_BEAMS = 1

# Baselines of reproduce-comparison: static depths (the full model is the deepest
# point) and the DeeBERT entropy thresholds in nats (ln 2 = 0.693 is the maximum).
# Every baseline trains on the same examples as HashEE (BASELINE_TRAIN_LIMIT empty);
# set it to train the static curve and PABEE on fewer to save time. After one epoch
# the internal classifiers are close to chance (entropy near ln 2), so the
# thresholds sit near ln 2: at 0.5 and below no SST-2 test example exited.
STATIC_DEPTHS = 1,2,3,4,5
BASELINE_TRAIN_LIMIT =
DEEBERT_THRESHOLDS = 0,0.5,0.6,0.65,0.68,0.69
