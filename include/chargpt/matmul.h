#pragma once
// The one door through which every matrix product goes, so that another
// backend (a GPU) can take OpenBLAS's place. Row-major throughout.

namespace chargpt {

// C[M,N] = alpha * op(A) · op(B) + beta * C, op(X) = X or Xᵀ.
// lda/ldb/ldc are row strides of A, B, C as stored.
void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc);

// OpenBLAS must not spawn threads of its own: parallelism is ours (oneTBB).
void blas_single_threaded();

}  // namespace chargpt
