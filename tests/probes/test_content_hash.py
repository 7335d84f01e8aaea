"""The content hash every probe writes: flat up to CHUNK_BYTES, the hash of the chunks' hashes past it."""

from __future__ import annotations

import numpy as np
import xxhash

from repro_audit.probes.common.hashing import CHUNK_BYTES, content_hash, hash_array, hash_numeric


def test_an_array_of_at_most_one_chunk_hashes_its_bytes_after_dtype_and_shape() -> None:
    array = np.arange(CHUNK_BYTES // 8, dtype=np.int64)  # exactly one chunk
    expected = "xxh3:" + xxhash.xxh3_128_hexdigest(f"{array.dtype.str}{array.shape}".encode() + array.tobytes())
    assert hash_array(array) == hash_numeric(array) == expected


def test_a_larger_array_hashes_the_canonical_digests_of_its_chunks_in_order() -> None:
    array = np.random.default_rng(0).standard_normal(CHUNK_BYTES // 4 * 2 + 3).astype(np.float32)
    raw = array.tobytes()
    digests = b"".join(xxhash.xxh3_128(raw[start:start + CHUNK_BYTES]).digest()
                       for start in range(0, len(raw), CHUNK_BYTES))
    assert len(digests) == 3 * 16  # two whole chunks and a last one of 12 bytes
    expected = "xxh3:" + xxhash.xxh3_128_hexdigest(f"{array.dtype.str}{array.shape}".encode() + digests)
    assert hash_array(array) == hash_numeric(array) == expected
    # The same bytes as a buffer (a slice of a TF bundle), and in another shape: another tensor.
    assert content_hash(f"{array.dtype.str}{array.shape}".encode(), memoryview(raw)) == expected
    assert hash_array(array.reshape(1, -1)) != expected


def test_a_change_in_any_chunk_changes_the_hash() -> None:
    array = np.zeros(CHUNK_BYTES // 4 * 5, dtype=np.float32)
    before = hash_array(array)
    for index in (0, CHUNK_BYTES // 4 * 3 + 7, array.size - 1):
        changed = array.copy()
        changed[index] = 1.0
        assert hash_array(changed) != before
    # Non-contiguous input is hashed as its C-order copy, as before.
    wide = np.random.default_rng(1).standard_normal((300, 200))
    assert hash_array(wide.T) == hash_array(np.ascontiguousarray(wide.T))


def test_a_segment_of_a_tf_bundle_hashes_like_the_array_it_holds() -> None:
    """The TF probes hash slices of one flat buffer per dtype (`hash_raw`); large and small segments."""
    from repro_audit.probes.tf.tensors import hash_raw

    rng = np.random.default_rng(2)
    segments = [rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal((160, 130)).astype(np.float32),
                rng.standard_normal(CHUNK_BYTES // 4).astype(np.float32)]
    flat = np.concatenate([s.reshape(-1) for s in segments])
    raw = memoryview(flat.view(np.uint8))
    offset = 0
    for segment in segments:
        nbytes = segment.nbytes
        assert hash_raw(flat.dtype.str, segment.shape, raw[offset:offset + nbytes]) == hash_array(segment)
        offset += nbytes
