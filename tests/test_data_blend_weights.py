"""`--data-path W1 P1 W2 P2 ...`: the train split serves each dataset in proportion to its weight.

Each dataset holds tokens from its own range, so every served sample says which dataset it
came from; the counts are compared with the weights (megatron-core's blend is exact to within
one sample per dataset, so the tolerance is one sample, not a statistical margin)."""
import numpy
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from modellink.arguments import parse_args
from modellink.data.tokenizers import build_tokenizer
from modellink.training.data.datasets import DataError, build_datasets, check_data_files
from test_pretrain_data import MODEL

TOKENS_PER_DATASET = 30


def _write(prefix, dataset: int) -> str:
    """Documents whose tokens all lie in dataset `dataset`'s own range, each ended by EOD 100."""
    rng = numpy.random.default_rng(dataset)
    low = dataset * TOKENS_PER_DATASET
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=numpy.int32)
    for _ in range(100):
        document = rng.integers(low, low + TOKENS_PER_DATASET, int(rng.integers(10, 60)))
        builder.add_document(numpy.append(document, 100).astype(numpy.int32), [len(document) + 1])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


@pytest.mark.parametrize("weights", [(0.2, 0.5, 0.3), (1.0, 3.0, 0.25)])
def test_blend_serves_each_dataset_by_its_weight(tmp_path, weights):
    blend = []
    for dataset, weight in enumerate(weights):
        blend += [str(weight), _write(tmp_path / f"d{dataset}_text_document", dataset)]
    args = parse_args(MODEL + ["--data-path", *blend, "--split", "100,0,0", "--train-iters", "50"],
                      world_size=1)
    train, _ = build_datasets(args, build_tokenizer(args))
    samples = args.train_iters * args.global_batch_size
    counts = [0] * len(weights)
    for i in range(samples):
        tokens = numpy.asarray(train[i]["tokens"])
        sources = set((tokens[tokens != 100] // TOKENS_PER_DATASET).tolist())
        assert len(sources) == 1, f"sample {i} mixes datasets {sorted(sources)}"
        counts[sources.pop()] += 1
    expected = [samples * w / sum(weights) for w in weights]
    assert counts == pytest.approx(expected, abs=1)


def test_a_zero_weight_is_refused_at_start_up(tmp_path):
    a, b = (_write(tmp_path / f"d{i}_text_document", i) for i in range(2))
    args = parse_args(MODEL + ["--data-path", "1", a, "0", b, "--train-iters", "2"], world_size=1)
    with pytest.raises(DataError, match="--data-path weights must be positive"):
        check_data_files(args)
