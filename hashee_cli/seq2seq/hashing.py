"""Hash tables for summarisation: one table for both stacks, counted over documents and summaries of the training split."""

from __future__ import annotations

from hashee_cli.backbones import load_config, load_tokenizer
from hashee_cli.data.reading import DataConfig
from hashee_cli.data.tasks import TaskSpec
from hashee_cli.errors import HasheeError
from hashee_cli.hashing.build import HashSettings, _word_embeddings, _without_special, layer_statistics, resolve_table_layers
from hashee_cli.hashing.builders import BuildInputs, get_hash_method
from hashee_cli.hashing.table import HashTable, tokenizer_identity
from hashee_cli.provenance import library_versions
from hashee_cli.seq2seq.checkpoint import seq2seq_depth
from hashee_cli.seq2seq.data import encode_summaries, load_summaries

SUMMARIZATION_METHODS = ("freq", "random", "random-inconsistent", "cluster")


def build_summarization_hash_table(model_name: str, data: DataConfig, settings: HashSettings, task: TaskSpec) -> HashTable:
    """Count the source and target tokens of the training split and build the table that ``settings.method`` describes.

    The encoder reads the documents and the decoder is fed the summaries, so
    both are counted, with the same truncation as in training. The table's
    layers are those of each stack (encoder and decoder have the same depth).
    """
    builder = get_hash_method(settings.method)
    if settings.method not in SUMMARIZATION_METHODS:
        raise HasheeError(
            f"--method {settings.method} needs class labels, which summarisation has none of; "
            f"use one of {', '.join(SUMMARIZATION_METHODS)}"
        )
    num_layers, exit_layers, default_layer = resolve_table_layers(settings, seq2seq_depth(model_name), model_name)

    tokenizer = load_tokenizer(model_name)
    train = load_summaries(data, task, "train")
    config = load_config(model_name)
    # A BERT to warm-start from has no decoder start token yet; bert2bert starts decoding with [CLS].
    start = config.decoder_start_token_id if config.is_encoder_decoder else tokenizer.cls_token_id
    encoded = encode_summaries(train, tokenizer, data.max_seq_length, data.max_target_length, start)
    token_ids = encoded.input_ids + encoded.labels
    vocab_size = len(tokenizer)

    inputs = BuildInputs(
        vocab_size=vocab_size,
        num_buckets=len(exit_layers),
        seed=settings.seed,
        input_ids=_without_special(token_ids, set(tokenizer.all_special_ids)),
        embeddings=_word_embeddings(model_name) if settings.method == "cluster" else None,
        order=settings.order,
    )
    buckets = builder(inputs)
    table = HashTable(
        method=settings.method,
        num_layers=num_layers,
        exit_layers=exit_layers,
        default_exit_layer=default_layer,
        tokenizer=tokenizer_identity(tokenizer, model_name),
        bucket_by_token_id=None if buckets is None else buckets.tolist(),
        seed=settings.seed,
        options={"order": settings.order},
        data={
            "task": task.name,
            "split": "train",
            "source": train.source,
            "num_examples": len(train),
            "counted": "documents and summaries",
            "max_seq_length": data.max_seq_length,
            "max_target_length": data.max_target_length,
        },
        versions=library_versions(),
    )
    table.stats = layer_statistics(table, token_ids, tokenizer)
    return table
