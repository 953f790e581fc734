"""The writer's files are byte-identical to megatron-core's own IndexedDatasetBuilder output."""

import numpy as np

from modellink.data.worker import KeyData
from modellink.data.writer import DatasetWriter


def test_writer_matches_megatron_builder(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    documents = [[rng.integers(0, 1000, size=int(n)) for n in rng.integers(1, 50, size=int(k))]
                 for k in rng.integers(1, 4, size=300)]
    reference = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=np.uint16)
    for doc in documents:
        reference.add_document(np.concatenate(doc), [len(s) for s in doc])
    reference.finalize(str(tmp_path / "ref.idx"))

    with DatasetWriter({"text": str(tmp_path / "ours")}, {"text": np.uint16}) as writer:
        for start in range(0, len(documents), 64):  # several chunks, the last one cut short
            batch = documents[start:start + 64]
            sequences = [s for doc in batch for s in doc]
            data = {"text": KeyData(np.concatenate(sequences).astype(np.int32),
                                    np.array([len(s) for s in sequences]), np.array([len(d) for d in batch]))}
            writer.add(data, len(batch))
        writer.finalize()
        writer.publish()
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"ours{ext}").read_bytes() == (tmp_path / f"ref{ext}").read_bytes()
