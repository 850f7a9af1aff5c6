"""synth → prepare → Ray Data: what Ray Data streams matches the manifest, padded per batch."""

from __future__ import annotations

import pytest

from raykd.data.shards import SPLITS
from raykd.ray_layer.stream import PairCollator, department_index, split_datasets
from raykd.ray_layer.trial import DATA_CPUS

pytestmark = pytest.mark.integration


def test_ray_data_reads_every_split_with_manifest_counts(ray_session, synth_prepared):
    _, prepared, manifest = synth_prepared
    datasets = split_datasets(prepared)
    for split in SPLITS:
        assert datasets[split].count() == manifest["splits"][split]["rows"]
    ids = set(datasets["train"].unique("pair_id"))
    assert len(ids) == manifest["splits"]["train"]["rows"]
    assert ids.isdisjoint(datasets["validation"].unique("pair_id"))
    # the trial's read (a fraction of a CPU per task, datasource v1): one block per shard file, not
    # Ray's default ~200 blocks, each of which costs the training loop CPU as it passes (read_parquet)
    shards = len(manifest["splits"]["train"]["shards"])
    train = split_datasets(prepared, splits=("train",), num_cpus=DATA_CPUS)["train"].materialize()
    assert train.num_blocks() <= shards and train.count() == manifest["splits"]["train"]["rows"]
    more = split_datasets(prepared, splits=("train",), num_cpus=DATA_CPUS, blocks=4 * shards)["train"]
    assert more.materialize().num_blocks() == 4 * shards


def test_iter_torch_batches_pads_to_each_batch_longest(ray_session, synth_prepared):
    _, prepared, manifest = synth_prepared
    ds = split_datasets(prepared, splits=("validation",))["validation"]
    collate = PairCollator(manifest["tokenizer"]["pad_token_id"], department_index(manifest))
    seen = 0
    for batch in ds.iter_torch_batches(batch_size=16, collate_fn=collate):
        ids, mask = batch["q_input_ids"], batch["q_attention_mask"]
        assert ids.shape == mask.shape and ids.dtype.is_floating_point is False
        assert int(mask.sum(1).max()) == ids.shape[1]  # padded to this batch's longest, not to max_length
        assert bool(((ids == manifest["tokenizer"]["pad_token_id"]) | mask.bool()).all())
        assert (batch["department"] >= 0).all()
        seen += ids.shape[0]
    assert seen == manifest["splits"]["validation"]["rows"]
