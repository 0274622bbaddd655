"""The training loader on the demo's data: determinism, ranks, shares, masks, chunks, packing, resume."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pytest

from mixtures.formats import SPECIAL_ROLES
from mixtures.manifest import Manifest, load_manifest, validate_manifest
from tests.conftest import write_synthetic_phase
from tests.fixtures import rewrite_ids
from trainer.data import Blend, DataError, MixtureData, MixtureLoader
from trainer.masking import Masking
from trainer.model import IGNORE_INDEX
from trainer.schedule import batch_size_at

SEQUENCES = 16  # the demo's batch: 16 sequences per step


def make_loader(
    manifest: Manifest, seed: int = 0, rank: int = 0, world_size: int = 1, **settings
) -> MixtureLoader:
    training, tokenizer = manifest.training, manifest.tokenizer
    special = tokenizer.special_ids
    options = {
        "seq_len": training.seq_len,
        "micro_batch_tokens": max(8192, 2 * training.seq_len),
        "batch_size_at": lambda tokens: SEQUENCES,
        "masking": Masking(
            training.mask_rate, special["mask"], tuple(special.values()), tokenizer.vocab_size
        ),
        "seed": seed,
        "pad_id": special["pad"],
        "rank": rank,
        "world_size": world_size,
        **settings,
    }
    return MixtureLoader(MixtureData(manifest, seed=seed), **options)


def rows(batch) -> list[tuple]:
    return [
        (m.input_ids.tolist(), m.labels.tolist(), m.cu_seqlens.tolist(), m.max_seqlen)
        for m in batch.micro_batches
    ]


@pytest.fixture(scope="module")
def manifests(sample_manifests) -> dict[str, Manifest]:
    return {phase: load_manifest(path) for phase, path in sample_manifests.items()}


def test_the_same_manifest_and_seed_give_the_same_batches(manifests):
    first, again, other = (make_loader(manifests["pretrain"], seed=s) for s in (0, 0, 1))
    for _ in range(5):
        a, b, c = first.next_step(), again.next_step(), other.next_step()
        assert rows(a) == rows(b) and a.state == b.state
        assert rows(a) != rows(c)


def test_two_ranks_split_the_global_batch_of_one(manifests):
    manifest = manifests["pretrain"]
    single = make_loader(manifest, micro_batch_tokens=4096)
    ranks = [make_loader(manifest, micro_batch_tokens=4096, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(6):
        whole = single.next_step()
        halves = [loader.next_step() for loader in ranks]
        assert whole.global_micro_batches == 4 and all(len(h.micro_batches) == 2 for h in halves)
        # global micro-batch g is rank g % 2's (g // 2)-th: the same tokens, masks and boundaries
        assert rows(whole)[0::2] == rows(halves[0]) and rows(whole)[1::2] == rows(halves[1])
        documents = [_documents(h) for h in halves]
        assert not set(documents[0]) & set(documents[1])  # disjoint ...
        assert Counter(documents[0]) + Counter(documents[1]) == Counter(_documents(whole))  # ... and complete
        assert halves[0].tokens == halves[1].tokens == whole.tokens and halves[0].state == whole.state


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_the_ranks_of_any_world_size_split_one_global_batch_and_resume_on_another(manifests, world_size):
    """The union of the ranks' micro-batches is one process's step (global micro-batch g is rank
    g % W's; a rank left without one gets an all-ignored stand-in, for DDP's lockstep), and a state
    saved by one world size continues on another (OLMo-core's loader tests check the same two)."""
    manifest = manifests["pretrain"]

    def loaders(size: int) -> list[MixtureLoader]:
        return [make_loader(manifest, micro_batch_tokens=4096, rank=r, world_size=size) for r in range(size)]

    def real(batch) -> list[tuple]:  # the rank's micro-batches without a stand-in
        return [row for row in rows(batch) if any(label != IGNORE_INDEX for label in row[1])]

    single, ranks = make_loader(manifest, micro_batch_tokens=4096), loaders(world_size)
    for _ in range(6):
        whole, parts = single.next_step(), [loader.next_step() for loader in ranks]
        for rank, part in enumerate(parts):
            assert real(part) == rows(whole)[rank::world_size] and part.state == whole.state
    state, following = parts[0].state, rows(single.next_step())
    for resumed_size in sorted({1, 2, world_size + 1} - {world_size}):
        one, resumed = make_loader(manifest, micro_batch_tokens=4096), loaders(resumed_size)
        for loader in (one, *resumed):
            loader.load_state_dict(state)
        for step in range(3):
            whole = one.next_step()
            assert step or rows(whole) == following  # the state round-trips: the step after it
            for rank, loader in enumerate(resumed):
                assert real(loader.next_step()) == rows(whole)[rank::resumed_size]


def _documents(batch) -> list[tuple]:
    """Each packed sequence of a rank's step as (inputs, labels), to compare ranks by content."""
    found = []
    for micro in batch.micro_batches:
        bounds = micro.cu_seqlens.tolist()
        labels = micro.labels.tolist()
        inputs = micro.input_ids.tolist()
        found += [(tuple(inputs[a:b]), tuple(labels[a:b])) for a, b in zip(bounds, bounds[1:], strict=False)]
    return found


@pytest.mark.parametrize("phase", ["pretrain", "midtrain", "decay"])
def test_stream_shares_follow_the_manifest_weights(manifests, phase):
    data = MixtureData(manifests[phase], seed=0)
    blend = Blend(data, manifests[phase].training.seq_len)
    tokens, total = Counter(), 0
    while total < 100_000_000:  # hundreds of epochs of the sample: long enough for its smallest streams
        chunk = blend.next_chunk()
        tokens[chunk.stream] += chunk.length
        total += chunk.length
    for stream in data.streams:
        assert tokens[stream.index] / total == pytest.approx(stream.weight, rel=0.02), stream.name


def test_every_document_is_seen_once_per_epoch(manifests):
    manifest = manifests["decay"]
    data = MixtureData(manifest, seed=0)
    stream = max(data.streams, key=lambda s: s.documents)
    seen = Counter(stream.locate(doc) for doc in range(7 * stream.documents))
    assert len(seen) == stream.documents and set(seen.values()) == {7}
    first = [stream.locate(doc) for doc in range(stream.documents)]
    second = [stream.locate(doc) for doc in range(stream.documents, 2 * stream.documents)]
    assert first != second  # a fresh permutation each epoch


@pytest.mark.parametrize("phase", ["pretrain", "midtrain", "decay"])
def test_masks_chunks_and_packing_on_the_demo_data(manifests, phase):
    manifest = manifests[phase]
    rate, seq_len = manifest.training.mask_rate, manifest.training.seq_len
    special = [manifest.tokenizer.special_ids[role] for role in SPECIAL_ROLES]
    mask_id = manifest.tokenizer.special_ids["mask"]
    loader = make_loader(manifest)
    predictions = maskable = tokens = capacity = 0
    for _ in range(30):
        batch = loader.next_step()
        tokens, capacity = tokens + batch.tokens, capacity + batch.capacity
        for micro in batch.micro_batches:
            lengths = micro.cu_seqlens.diff()
            assert int(lengths.max()) <= seq_len and micro.max_seqlen <= seq_len  # no chunk over seq_len
            labelled = micro.labels != IGNORE_INDEX
            assert not np.isin(micro.labels[labelled].numpy(), special).any()  # never a special token
            assert not (micro.input_ids[~labelled] == mask_id).any()  # every <mask> is predicted
            predictions, maskable = predictions + micro.predictions, maskable + micro.maskable
    assert abs(predictions / maskable - rate) < 0.005
    assert tokens / capacity >= 0.95, f"packing efficiency {tokens / capacity:.3f}"


def test_a_loader_resumed_from_its_state_continues_exactly(manifests):
    manifest = manifests["decay"]
    straight = make_loader(manifest)
    batches = [straight.next_step() for _ in range(8)]
    resumed = make_loader(manifest)
    resumed.load_state_dict(batches[3].state)
    for expected in batches[4:]:
        again = resumed.next_step()
        assert rows(again) == rows(expected) and again.state == expected.state and again.step == expected.step
    assert set(batches[3].state) == {"step", "tokens", "blend", "carried"}  # a handful of integers


def test_batch_warmup_grows_the_micro_batches(manifests):
    manifest = manifests["pretrain"]
    training = replace(manifest.training, batch_size=32, batch_warmup_min=6)
    loader = make_loader(manifest, batch_size_at=lambda tokens: batch_size_at(tokens, training))
    steps = [loader.next_step() for _ in range(3)]
    assert steps[0].sequences == training.batch_warmup_min < training.batch_size
    assert steps[0].global_micro_batches <= steps[-1].global_micro_batches


@pytest.mark.parametrize(("sequences", "micro_batches"), [(1, 1), (3, 1), (5, 1), (12, 2), (16, 2)])
def test_a_step_trains_the_batch_it_asks_for(manifests, sequences, micro_batches):
    manifest = manifests["pretrain"]  # seq_len 1024, micro-batches of 8192
    loader = make_loader(manifest, batch_size_at=lambda tokens: sequences)
    for _ in range(3):
        step = loader.next_step()
        assert step.capacity == sequences * manifest.training.seq_len >= step.tokens > 0
        assert step.global_micro_batches == len(step.micro_batches) == micro_batches
        assert all(m.tokens <= step.capacity // micro_batches for m in step.micro_batches)


def test_batch_warmup_steps_stay_within_the_full_batch(manifests):
    manifest = manifests["pretrain"]
    ramp = make_loader(manifest, batch_size_at=lambda tokens: 3, batch_size=16).next_step()
    assert ramp.capacity == 8192  # a whole micro-batch, as the demo's ramp has always trained
    small = make_loader(manifest, batch_size_at=lambda tokens: 1, batch_size=3).next_step()
    assert small.capacity == 1024 and small.sequences == 1  # a whole one would exceed the batch of 3


def test_shards_that_do_not_match_the_manifest_are_refused(manifests, tmp_path):
    manifest = manifests["pretrain"]
    wrong = replace(manifest, tokenizer=replace(manifest.tokenizer, sha256="0" * 64))
    with pytest.raises(
        DataError, match=r"tokenizer mismatch: shard \S+ has mmbert.tokenizer.sha256='[0-9a-f]{64}', the"
    ):
        make_loader(wrong).next_step()
    with pytest.raises(ValueError, match="micro_batch_tokens 512 must be at least seq_len 1024"):
        make_loader(manifest, micro_batch_tokens=512)


def test_the_loader_and_validate_say_the_same_of_a_shard_made_for_another_stream(tmp_path):
    path = write_synthetic_phase(tmp_path)
    manifest = load_manifest(path)
    stream = manifest.streams[0]
    shard = manifest.data_root / stream.shards[0].path
    other = "fra_Latx"  # as long as the stream's fra_Latn, so the shard keeps its recorded size
    table = pyarrow.ipc.open_stream(shard.read_bytes()).read_all()
    schema = table.schema.with_metadata({**table.schema.metadata, b"mmbert.language": other.encode()})
    with pa.OSFile(str(shard), "wb") as sink, pyarrow.ipc.new_stream(sink, schema) as out:
        out.write_table(table.cast(schema))
    assert shard.stat().st_size == stream.shards[0].bytes
    problems = validate_manifest(path, check_hashes=False)
    assert problems == [
        f"language mismatch: shard {stream.shards[0].path} has mmbert.language={other!r}, "
        f"the manifest expects {stream.language!r}"
    ]
    with pytest.raises(DataError) as raised:
        make_loader(manifest).next_step()
    assert str(raised.value) == problems[0]


def _first_shard(manifest: Manifest) -> Path:
    return manifest.data_root / manifest.streams[0].shards[0].path


@pytest.mark.parametrize(
    "ids_type, convert",
    [(pa.int64(), lambda i: -i), (pa.string(), str), (pa.float32(), float), (pa.uint8(), int)],
)
def test_a_shard_of_another_id_type_is_refused_when_opened(tmp_path, ids_type, convert):
    manifest = load_manifest(write_synthetic_phase(tmp_path, documents=40))  # then the shard is rewritten
    rewrite_ids(_first_shard(manifest), ids_type, lambda i: convert(i % 256))
    with pytest.raises(DataError) as raised:
        make_loader(manifest).next_step()
    assert str(raised.value) == (
        f"wrong column type: shard {manifest.streams[0].shards[0].path} has input_ids: {pa.list_(ids_type)}, "
        "the format is list<item: uint32>; rebuild it with `mmbert-data build`"
    )


def test_a_damaged_shard_is_refused_when_opened(tmp_path):
    manifest = load_manifest(write_synthetic_phase(tmp_path, documents=40))
    shard = _first_shard(manifest)
    raw = bytearray(shard.read_bytes())
    offsets = next(iter(pyarrow.ipc.open_stream(pa.py_buffer(bytes(raw))))).column("input_ids").offsets
    at = raw.index(offsets.to_numpy()[1:4].tobytes()) + 4  # the third document's start, in the file
    raw[at : at + 4] = (10**6).to_bytes(4, "little")  # the same size: only hashing would notice before
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"damaged shard: {shard}: the input_ids offsets of documents 0 to"):
        make_loader(manifest).next_step()


def test_a_shard_entry_with_other_counts_is_refused_when_opened(tmp_path):
    manifest = load_manifest(write_synthetic_phase(tmp_path, documents=40))
    stream = manifest.streams[0]
    entry = stream.shards[0]
    wrong = replace(stream, shards=(entry._replace(tokens=entry.tokens * 100),))
    loader = make_loader(replace(manifest, streams=(wrong, *manifest.streams[1:])))
    with pytest.raises(DataError) as raised:
        for _ in range(20):  # its documents now seem 100x longer, so the blend takes them rarely
            loader.next_step()
    assert str(raised.value) == (
        f"count mismatch: shard {entry.path} holds {entry.tokens:,} tokens, the manifest records "
        f"{entry.tokens * 100:,}; the manifest does not describe this file; compile it again from the build"
    )


def test_ids_beyond_the_manifests_vocabulary_are_refused_when_opened(tmp_path):
    manifest = load_manifest(write_synthetic_phase(tmp_path, documents=40))
    small = replace(manifest, tokenizer=replace(manifest.tokenizer, vocab_size=100))
    message = r"document \d+ holds token id \d+, outside the tokenizer's 100 ids: the shard is damaged"
    with pytest.raises(DataError, match=message):
        make_loader(small).next_step()
