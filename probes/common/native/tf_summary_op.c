/* A TensorFlow op that summarises a layer output inside the step's graph (see probes/tf/summary_op.py).
 *
 * Returning a layer's output from a tf.function keeps its buffer alive to the end of the step, and the
 * probes then read ~100 MB of them again after the step (issue 22). This op reads the tensor where it is,
 * as soon as it is made, with summary.c's one pass, and returns 72 bytes: min, max, sum, sum of squares
 * (float64), zeros (always 0: layer outputs leave zeros null), NaN and Inf counts (int64), and the
 * XXH3-128 digest after the same prefix `bundle_hashes.raw_prefix` hashes ("<f4" and the shape as a
 * Python tuple). Built with TensorFlow's stable C API only, against the installed TensorFlow.
 */
#include <stdio.h>
#include <string.h>

#include "tensorflow/c/kernels.h"
/* ops.h declares these structs without typedefs, as only C++ allows */
typedef struct TF_DimensionHandle TF_DimensionHandle;
typedef struct TF_OpDefinitionBuilder TF_OpDefinitionBuilder;
typedef struct TF_ShapeHandle TF_ShapeHandle;
typedef struct TF_ShapeInferenceContext TF_ShapeInferenceContext;
#include "tensorflow/c/ops.h"
#include "tensorflow/c/tf_status.h"
#include "tensorflow/c/tf_tensor.h"

#define OP_NAME "ReproAuditSummary"
#define RESULT_BYTES 72
/* One thread per op: TensorFlow runs the ops of several layer outputs at once on its own threads. Two per op
   (threads started per call) made the Keras benchmark's step slower in one measurement: 1.60x against 1.48x
   without the op. */
#define THREADS 1

int summary_f32(const float *x, int64_t n, const char *prefix, int64_t prefix_len, int want_zeros, int threads,
                double *out, int64_t *counts, unsigned char *digest);
int summary_f64(const double *x, int64_t n, const char *prefix, int64_t prefix_len, int want_zeros, int threads,
                double *out, int64_t *counts, unsigned char *digest);

/* "<f4(32, 8, 8, 16)": numpy's dtype.str, then the shape as Python writes a tuple ("(5,)", "()"). */
static int prefix_of(const TF_Tensor *x, const char *dtype, char *prefix, size_t size) {
    int dims = TF_NumDims(x);
    int used = snprintf(prefix, size, "%s(", dtype);
    for (int d = 0; d < dims && used > 0 && (size_t)used < size; d++)
        used += snprintf(prefix + used, size - (size_t)used, d ? ", %lld" : "%lld", (long long)TF_Dim(x, d));
    if (used > 0 && (size_t)used < size)
        used += snprintf(prefix + used, size - (size_t)used, dims == 1 ? ",)" : ")");
    return used > 0 && (size_t)used < size ? used : -1;
}

static void compute(void *kernel, TF_OpKernelContext *ctx) {
    (void)kernel;
    TF_Status *status = TF_NewStatus();
    TF_Tensor *x = NULL, *result = NULL;
    TF_GetInput(ctx, 0, &x, status);
    if (TF_GetCode(status) == TF_OK) {
        int64_t dims[1] = {RESULT_BYTES};
        result = TF_AllocateOutput(ctx, 0, TF_UINT8, dims, 1, RESULT_BYTES, status);
    }
    if (TF_GetCode(status) == TF_OK) {
        TF_DataType type = TF_TensorType(x);
        char prefix[512];
        int prefix_len = prefix_of(x, type == TF_FLOAT ? "<f4" : "<f8", prefix, sizeof prefix);
        unsigned char *bytes = (unsigned char *)TF_TensorData(result);
        double stats[4] = {0, 0, 0, 0};
        int64_t counts[3] = {0, 0, 0};
        int64_t n = TF_TensorElementCount(x);
        int failed = prefix_len < 0;
        if (!failed && type == TF_FLOAT)
            failed = summary_f32((const float *)TF_TensorData(x), n, prefix, prefix_len, 0, THREADS, stats, counts,
                                 bytes + 56);
        else if (!failed)
            failed = summary_f64((const double *)TF_TensorData(x), n, prefix, prefix_len, 0, THREADS, stats, counts,
                                 bytes + 56);
        memcpy(bytes, stats, sizeof stats);
        memcpy(bytes + 32, counts, sizeof counts);
        if (failed) TF_SetStatus(status, TF_INTERNAL, OP_NAME ": the summary kernel failed");
    }
    if (TF_GetCode(status) != TF_OK) TF_OpKernelContext_Failure(ctx, status);
    TF_DeleteTensor(x);
    TF_DeleteTensor(result);
    TF_DeleteStatus(status);
}

static void result_shape(TF_ShapeInferenceContext *ctx, TF_Status *status) {
    TF_ShapeHandle *shape = TF_ShapeInferenceContextVectorFromSize(ctx, RESULT_BYTES);
    TF_ShapeInferenceContextSetOutput(ctx, 0, shape, status);
    TF_DeleteShapeHandle(shape);
}

__attribute__((constructor)) static void register_op(void) {
    TF_Status *status = TF_NewStatus();
    TF_OpDefinitionBuilder *op = TF_NewOpDefinitionBuilder(OP_NAME);
    TF_OpDefinitionBuilderAddInput(op, "x: T");
    TF_OpDefinitionBuilderAddOutput(op, "summary: uint8");
    TF_OpDefinitionBuilderAddAttr(op, "T: {float, double}");
    TF_OpDefinitionBuilderSetShapeInferenceFunction(op, result_shape);
    TF_RegisterOpDefinition(op, status);
    if (TF_GetCode(status) == TF_OK) {
        TF_KernelBuilder *builder = TF_NewKernelBuilder(OP_NAME, "CPU", NULL, compute, NULL);
        TF_RegisterKernelBuilder(OP_NAME "/CPU", builder, status);
    }
    TF_DeleteStatus(status);
}
