"""Seq2seq HashEE: agreement with transformers, cached decoding, batch independence, masked vs gathered forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    EncoderDecoderConfig,
    EncoderDecoderModel,
    T5Config,
    T5ForConditionalGeneration,
)

from hashee_cli.errors import HasheeError
from hashee_cli.hashing.assign import ExitAssigner
from hashee_cli.hashing.table import HashTable
from hashee_cli.seq2seq.generation import GenerationSettings, generate
from hashee_cli.seq2seq.model import HashEESeq2SeqModel

FAMILIES = ["bart", "t5", "bert2bert"]
VOCAB = 1000
PAD, START, END = 0, 101, 102
SPECIAL_IDS = [PAD, START, END]
LAYERS = 3


def tiny_seq2seq(family: str, encoder_layers: int = LAYERS, decoder_layers: int = LAYERS):
    """Return a small randomly initialised encoder-decoder (hidden 32) in eval mode.

    Wide initialisers make every layer change the states visibly, so tests of
    exits can fail.
    """
    torch.manual_seed(0)
    if family == "bart":
        config = BartConfig(
            vocab_size=VOCAB, d_model=32, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
            max_position_embeddings=128, pad_token_id=PAD, bos_token_id=START, eos_token_id=END,
            decoder_start_token_id=END, init_std=0.2,
        )
        return BartForConditionalGeneration(config).eval()
    if family == "t5":
        config = T5Config(
            vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=encoder_layers, num_decoder_layers=decoder_layers,
            num_heads=4, pad_token_id=PAD, eos_token_id=END, decoder_start_token_id=PAD, initializer_factor=3.0,
        )
        return T5ForConditionalGeneration(config).eval()
    sizes = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=128, initializer_range=0.2)
    encoder = BertConfig(num_hidden_layers=encoder_layers, **sizes)
    decoder = BertConfig(num_hidden_layers=decoder_layers, is_decoder=True, add_cross_attention=True, **sizes)
    model = EncoderDecoderModel(config=EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder))
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = START, PAD, END
    return model.eval()


def random_table(seed: int = 0, consistent: bool = True) -> HashTable:
    buckets = np.random.default_rng(seed).integers(0, LAYERS, VOCAB).tolist() if consistent else None
    return HashTable(
        method="random" if consistent else "random-inconsistent", num_layers=LAYERS, exit_layers=[1, 2, 3],
        default_exit_layer=LAYERS, tokenizer={}, bucket_by_token_id=buckets, seed=seed,
    )


def hashee(model, table: HashTable | None = None) -> HashEESeq2SeqModel:
    assigner = ExitAssigner(table or random_table(), SPECIAL_IDS, VOCAB)
    return HashEESeq2SeqModel(model, assigner).eval()


def source_batch():
    """Return input_ids and attention_mask (4, 12) with right padding in rows 1 and 3, no special tokens."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(200, VOCAB, (4, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row, length in ((1, 6), (3, 9)):
        input_ids[row, length:] = PAD
        attention_mask[row, length:] = 0
    return input_ids, attention_mask


def target_batch():
    """Return decoder_input_ids and decoder_attention_mask (4, 7), row 2 padded after 4 positions."""
    generator = torch.Generator().manual_seed(1)
    decoder_input_ids = torch.randint(200, VOCAB, (4, 7), generator=generator)
    decoder_input_ids[:, 0] = START
    decoder_attention_mask = torch.ones_like(decoder_input_ids)
    decoder_input_ids[2, 4:] = PAD
    decoder_attention_mask[2, 4:] = 0
    return decoder_input_ids, decoder_attention_mask


@pytest.mark.parametrize("family", FAMILIES)
def test_full_model_matches_transformers(family):
    model = tiny_seq2seq(family)
    input_ids, attention_mask = source_batch()
    decoder_input_ids, decoder_attention_mask = target_batch()
    with torch.no_grad():
        expected = model(
            input_ids=input_ids, attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
        ).logits
        actual = HashEESeq2SeqModel(model)(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask).logits
    valid = decoder_attention_mask.bool()
    torch.testing.assert_close(actual[valid], expected[valid], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("num_beams", [1, 3])
def test_full_model_generates_like_transformers(family, num_beams):
    model = tiny_seq2seq(family)
    input_ids, attention_mask = source_batch()
    ours = generate(HashEESeq2SeqModel(model), input_ids, attention_mask, GenerationSettings(max_new_tokens=8, num_beams=num_beams))
    theirs = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=8, num_beams=num_beams, do_sample=False,
        early_stopping=True,
    )
    assert _until_end(ours.sequences, ours.lengths) == _until_end(theirs, ours.lengths)


def _until_end(sequences: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    return [row[: length + 1].tolist() for row, length in zip(sequences, lengths)]


@pytest.mark.parametrize("early_stopping", [True, False])
@pytest.mark.parametrize("length_penalty", [0.6, 2.0])
def test_beam_search_with_finished_beams_matches_transformers(early_stopping, length_penalty):
    """A bias on the end token makes hypotheses finish at different steps, which exercises the finished set."""
    model = tiny_seq2seq("bart")
    with torch.no_grad():
        model.final_logits_bias[0, END] = 5.0
    input_ids, attention_mask = source_batch()
    settings = GenerationSettings(max_new_tokens=12, num_beams=4, length_penalty=length_penalty, early_stopping=early_stopping)
    ours = generate(HashEESeq2SeqModel(model), input_ids, attention_mask, settings)
    theirs = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=12, num_beams=4,
        length_penalty=length_penalty, early_stopping=early_stopping,
    )
    assert (ours.lengths < 12).any(), "no hypothesis ended early, so the test checks nothing about finished beams"
    # transformers pads finished rows with the end token, hashee with the padding token: compare up to the end.
    assert _until_end(ours.sequences, ours.lengths) == _until_end(theirs, ours.lengths)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_greedy_matches_uncached(family):
    model = hashee(tiny_seq2seq(family))
    input_ids, attention_mask = source_batch()
    settings = GenerationSettings(max_new_tokens=10)
    cached = generate(model, input_ids, attention_mask, settings, use_cache=True)
    uncached = generate(model, input_ids, attention_mask, settings, use_cache=False)
    masked = generate(model, input_ids, attention_mask, settings, use_cache=True, form="masked")
    assert torch.equal(cached.sequences, uncached.sequences)
    assert torch.equal(cached.sequences, masked.sequences)

    fed = cached.sequences[:, :-1]
    exits = model.assign_decoder_exit_layers(fed, torch.ones_like(fed, dtype=torch.bool))
    assert (exits < LAYERS).any(), "no decoder token exited early, so the cache never held frozen states"
    full = generate(HashEESeq2SeqModel(model.model), input_ids, attention_mask, settings)
    assert not torch.equal(cached.sequences, full.sequences), "exits changed nothing, so the comparison proves nothing"


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_steps_match_teacher_forcing(family):
    """Step-by-step decoding with the cache, teacher forcing in the masked form and in the gathered form agree."""
    model = hashee(tiny_seq2seq(family))
    input_ids, attention_mask = source_batch()
    decoder_input_ids, decoder_attention_mask = target_batch()
    with torch.no_grad():
        masked = model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, form="masked").logits
        gathered = model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, form="gathered").logits
        dense = model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, form="dense").logits
        encoder_output = model.encode(input_ids, attention_mask)
        cache = model.new_cache()
        steps = []
        for position in range(decoder_input_ids.shape[1]):
            logits, _ = model.decode(
                decoder_input_ids[:, position : position + 1], encoder_output,
                decoder_attention_mask[:, : position + 1], cache=cache,
            )
            steps.append(logits)
        stepwise = torch.cat(steps, dim=1)
    valid = decoder_attention_mask.bool()
    # Float32 rounding grows with the logits' size (tens to hundreds in these wide tiny models).
    tolerance = 1e-5 * float(masked[valid].abs().max())
    torch.testing.assert_close(gathered[valid], masked[valid], atol=tolerance, rtol=0)
    torch.testing.assert_close(stepwise[valid], masked[valid], atol=tolerance, rtol=0)
    assert (masked[valid] - dense[valid]).abs().max() > 1000 * tolerance


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_generation_matches_one_at_a_time(family):
    model = hashee(tiny_seq2seq(family))
    input_ids, attention_mask = source_batch()
    for settings in (GenerationSettings(max_new_tokens=10), GenerationSettings(max_new_tokens=6, num_beams=3)):
        batched = generate(model, input_ids, attention_mask, settings)
        for row in range(input_ids.shape[0]):
            length = int(attention_mask[row].sum())
            alone = generate(model, input_ids[row : row + 1, :length], attention_mask[row : row + 1, :length], settings)
            assert _until_end(alone.sequences, alone.lengths) == _until_end(batched.sequences[row : row + 1], batched.lengths[row : row + 1])
            torch.testing.assert_close(alone.decoder_macs, batched.decoder_macs[row : row + 1])
            torch.testing.assert_close(alone.encoder_macs, batched.encoder_macs[row : row + 1])


def test_beam_search_cache_matches_uncached():
    model = hashee(tiny_seq2seq("t5"))
    input_ids, attention_mask = source_batch()
    settings = GenerationSettings(max_new_tokens=8, num_beams=3, no_repeat_ngram_size=2)
    cached = generate(model, input_ids, attention_mask, settings, use_cache=True)
    uncached = generate(model, input_ids, attention_mask, settings, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)


def test_inconsistent_table_keeps_cache_consistent():
    """Each decoder position draws its own layer once, so cached and uncached decoding see the same exits."""
    model = hashee(tiny_seq2seq("bart"), random_table(seed=3, consistent=False))
    input_ids, attention_mask = source_batch()
    settings = GenerationSettings(max_new_tokens=10)
    cached = generate(model, input_ids, attention_mask, settings, use_cache=True)
    uncached = generate(model, input_ids, attention_mask, settings, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    repeated = torch.full((1, 6), 500)
    exits = model.assign_decoder_exit_layers(repeated, torch.ones_like(repeated, dtype=torch.bool))
    assert len(set(exits[0].tolist())) > 1, "one token at six positions always drew the same layer"


def test_masked_form_trains_every_part():
    model = hashee(tiny_seq2seq("bert2bert")).train()
    input_ids, attention_mask = source_batch()
    decoder_input_ids, decoder_attention_mask = target_batch()
    labels = decoder_input_ids.roll(-1, dims=1).masked_fill(~decoder_attention_mask.bool(), -100)
    output = model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, labels=labels)
    output.loss.backward()
    decoder_layer = model.model.decoder.bert.encoder.layer[-1]
    for parameter in (decoder_layer.crossattention.self.query.weight, decoder_layer.output.dense.weight,
                      model.model.encoder.encoder.layer[0].attention.self.key.weight):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


def test_unequal_encoder_and_decoder_depths_rejected():
    with pytest.raises(HasheeError, match="--num-layers"):
        HashEESeq2SeqModel(tiny_seq2seq("bart", encoder_layers=3, decoder_layers=2))


def test_minilm_bert2bert_on_dialogsum(shared_data, minilm_tokenizer, tmp_path):
    """The packaged MiniLM warm-started as bert2bert with a frequency hash: cache and batching change nothing on real dialogues."""
    from hashee_cli.data.reading import DataConfig
    from hashee_cli.data.tasks import get_task
    from hashee_cli.hashing.build import HashSettings, build_hash_table
    from hashee_cli.seq2seq.checkpoint import load_seq2seq_backbone
    from hashee_cli.seq2seq.data import collate_summaries, encode_summaries, load_summaries

    source = shared_data / "summarization" / "DialogSum"
    train = tmp_path / "train.tsv"
    train.write_text("".join((source / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[:301]), encoding="utf-8")
    data = DataConfig(task="DialogSum", data_dir=str(shared_data / "summarization"), train_file=str(train), max_seq_length=128)
    table = build_hash_table("minilm-l6", data, HashSettings(method="freq", exit_layers=[2, 4, 6]))
    assert table.data["counted"] == "documents and summaries"

    model = HashEESeq2SeqModel(
        load_seq2seq_backbone("minilm-l6", minilm_tokenizer), ExitAssigner(table, minilm_tokenizer.all_special_ids, len(minilm_tokenizer))
    ).eval()
    dev = load_summaries(data, get_task("DialogSum"), "dev")
    dev.documents = dev.documents[:4]
    dev.references = dev.references[:4]
    encoded = encode_summaries(dev, minilm_tokenizer, 128, 32, model.decoder_start_token_id)
    batch = collate_summaries(encoded, [0, 1, 2, 3], model.pad_token_id, model.decoder_start_token_id)
    settings = GenerationSettings(max_new_tokens=8)
    cached = generate(model, batch["input_ids"], batch["attention_mask"], settings)
    uncached = generate(model, batch["input_ids"], batch["attention_mask"], settings, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    for row in range(4):
        length = int(batch["attention_mask"][row].sum())
        alone = generate(model, batch["input_ids"][row : row + 1, :length], batch["attention_mask"][row : row + 1, :length], settings)
        assert _until_end(alone.sequences, alone.lengths) == _until_end(cached.sequences[row : row + 1], cached.lengths[row : row + 1])
    valid = batch["attention_mask"].bool()
    assert cached.encoder_exit_layers[valid].float().mean() < 3.0
