"""A Triton building block of the temporal resampling kernels: accumulate one tap of a GEMM whose
rows are pixels read through a pointer per row (so padding, cached frames and strided layouts
need no copies)."""

import triton
import triton.language as tl


@triton.jit
def accumulate_rows(
    acc,
    rows,
    s_c,
    ok_rows,
    w_ptr,
    s_wc,
    w_cols,
    ok_cols,
    C: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``acc[m, n] += sum_c rows[m][c * s_c] * w_ptr[c * s_wc + w_cols[n]]`` over ``C`` channels;
    rows with ``ok_rows`` False read zeros (padding), columns with ``ok_cols`` False too."""
    offs_k = tl.arange(0, BLOCK_K)
    for c0 in range(0, C, BLOCK_K):
        ck = c0 + offs_k
        ok_k = ck < C
        # 64-bit channel offsets: in a contiguous [B, C, T, H, W] tensor s_c is T*H*W.
        a = tl.load(
            rows[:, None] + ck.to(tl.int64)[None, :] * s_c,
            mask=ok_rows[:, None] & ok_k[None, :],
            other=0.0,
        )
        # Loaded [N, K] and transposed for the dot: a weight with Cin innermost (what the engine
        # holds) then gives 16-byte loads; [K, N] would read one element per load.
        w = tl.trans(
            tl.load(
                w_ptr + w_cols[:, None] + ck[None, :] * s_wc,
                mask=ok_cols[:, None] & ok_k[None, :],
                other=0.0,
            )
        )
        if IEEE:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    return acc
