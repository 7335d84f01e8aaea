"""TF ops without a deterministic kernel on GPU unless op determinism is on (NVIDIA framework-determinism
notes and TF's release notes for `enable_op_determinism`): (op type, device) -> (alternative, note).
`alternative` True: `tf.config.experimental.enable_op_determinism()` selects a deterministic kernel;
False: it makes the op raise."""

from __future__ import annotations

_GPU_DETERMINISTIC_WITH_FLAG = {
    "BiasAddGrad": "bias gradient reduction with atomic adds",
    "Conv2DBackpropFilter": "cuDNN convolution backward algorithms",
    "Conv2DBackpropInput": "cuDNN convolution backward algorithms",
    "Conv3DBackpropFilterV2": "cuDNN convolution backward algorithms",
    "Conv3DBackpropInputV2": "cuDNN convolution backward algorithms",
    "DepthwiseConv2dNativeBackpropFilter": "depthwise convolution backward",
    "UnsortedSegmentSum": "segment reduction with atomic adds",
    "UnsortedSegmentProd": "segment reduction with atomic adds",
    "SegmentSum": "segment reduction with atomic adds",
    "ScatterNd": "scatter with atomic adds (duplicate indices)",
    "TensorScatterAdd": "scatter with atomic adds (duplicate indices)",
    "ResourceScatterAdd": "scatter with atomic adds (duplicate indices)",
    "SparseSoftmaxCrossEntropyWithLogits": "sparse softmax cross entropy backward",
    "SoftmaxCrossEntropyWithLogits": "softmax cross entropy backward",
    "ResizeBilinearGrad": "resize backward with atomic adds",
    "ResizeNearestNeighborGrad": "resize backward with atomic adds",
    "MaxPoolGrad": "cuDNN max-pool backward",
    "FusedBatchNormV3": "fused batch norm (exponential average)",
    "CudnnRNN": "cuDNN RNN",
}
_GPU_RAISES_WITH_FLAG = {
    "SparseSegmentSumGrad": "no deterministic GPU kernel",
    "SparseSegmentMeanGrad": "no deterministic GPU kernel",
    "UnsortedSegmentMax": "no deterministic GPU kernel",
    "CTCLoss": "no deterministic GPU kernel",
    "SparseTensorDenseMatMul": "no deterministic GPU kernel",
}


def known_tf_nondeterministic(op_type: str, device: str) -> tuple[bool, str] | None:
    if device != "gpu":
        return None
    if op_type in _GPU_DETERMINISTIC_WITH_FLAG:
        return True, _GPU_DETERMINISTIC_WITH_FLAG[op_type]
    if op_type in _GPU_RAISES_WITH_FLAG:
        return False, _GPU_RAISES_WITH_FLAG[op_type]
    return None
