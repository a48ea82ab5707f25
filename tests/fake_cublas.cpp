// A stand-in for libcublas.so with the functions kernels/cupy/cublas.py calls, for machines
// without a GPU: the handles, streams, workspace and modes are kept as cuBLAS keeps them, the
// GEMMs computed on the host (column-major, as cuBLAS), every call recorded, and the invariants
// tinynet relies on checked at each GEMM:
//   * pointer mode DEVICE: alpha and beta are read from memory when the GEMM runs;
//   * the workspace set after the last cublasSetStream (which resets it to cuBLAS's own pool,
//     from which a GEMM in a CUDA graph would allocate), and at least WORKSPACE_MIN bytes.
// A broken invariant makes the GEMM return FAKE_STATUS_INVARIANT and count a violation.
// Built by g++ in tests/host_cuda.py; the host stand-in for CuPy loads it as CuPy's cuBLAS.
#include <cstddef>
#include <cstdio>
#include <cstring>

namespace {

const int POINTER_MODE_DEVICE = 1;
const int FAKE_STATUS_INVARIANT = 77;
const size_t WORKSPACE_MIN = 1 << 20;

struct Handle {
  void* stream = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  bool workspace_since_stream = false;  // cublasSetWorkspace after the last cublasSetStream
  int pointer_mode = 0;                 // cuBLAS's default: HOST
  int math_mode = 0;
};

// what the tests read: calls per function and broken invariants, with the last one's reason
long long gemms = 0, stream_changes = 0, workspaces_set = 0, handles_alive = 0, violations = 0;
char last_violation[256] = "";

int violation(const char* why) {
  ++violations;
  std::snprintf(last_violation, sizeof last_violation, "%s", why);
  return FAKE_STATUS_INVARIANT;
}

int check(const Handle* h) {
  if (h == nullptr) return violation("a call on no handle");
  if (h->pointer_mode != POINTER_MODE_DEVICE) return violation("pointer mode is not DEVICE");
  if (!h->workspace_since_stream) return violation("no workspace set since the stream changed");
  if (h->workspace_bytes < WORKSPACE_MIN) return violation("workspace too small");
  return 0;
}

template <typename T>
int gemm(Handle* h, int transa, int transb, int m, int n, int k, const T* alpha, const T* A,
         int lda, const T* B, int ldb, const T* beta, T* C, int ldc) {
  if (int status = check(h)) return status;
  ++gemms;
  const T a = *alpha, b = *beta;  // read now, as the device reads them when the GEMM runs
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      T sum = 0;
      for (int l = 0; l < k; ++l) {
        const T x = transa ? A[l + (long long)i * lda] : A[i + (long long)l * lda];
        const T y = transb ? B[j + (long long)l * ldb] : B[l + (long long)j * ldb];
        sum += x * y;
      }
      T& c = C[i + (long long)j * ldc];
      c = b == (T)0 ? a * sum : a * sum + b * c;  // beta 0: C is not read (may hold NaN)
    }
  }
  return 0;
}

}  // namespace

extern "C" {

int cublasCreate_v2(void** handle) {
  *handle = new Handle();
  ++handles_alive;
  return 0;
}

int cublasDestroy_v2(void* handle) {
  delete static_cast<Handle*>(handle);
  --handles_alive;
  return 0;
}

int cublasSetStream_v2(void* handle, void* stream) {
  Handle* h = static_cast<Handle*>(handle);
  h->stream = stream;
  h->workspace_since_stream = false;  // cuBLAS: the workspace is reset to its own pool
  ++stream_changes;
  return 0;
}

int cublasSetWorkspace_v2(void* handle, void* workspace, size_t bytes) {
  Handle* h = static_cast<Handle*>(handle);
  h->workspace = workspace;
  h->workspace_bytes = bytes;
  h->workspace_since_stream = workspace != nullptr;
  ++workspaces_set;
  return 0;
}

int cublasSetMathMode(void* handle, int mode) {
  static_cast<Handle*>(handle)->math_mode = mode;
  return 0;
}

int cublasSetPointerMode_v2(void* handle, int mode) {
  static_cast<Handle*>(handle)->pointer_mode = mode;
  return 0;
}

int cublasSgemm_v2(void* handle, int transa, int transb, int m, int n, int k, const float* alpha,
                   const float* A, int lda, const float* B, int ldb, const float* beta, float* C,
                   int ldc) {
  return gemm(static_cast<Handle*>(handle), transa, transb, m, n, k, alpha, A, lda, B, ldb, beta,
              C, ldc);
}

int cublasDgemm_v2(void* handle, int transa, int transb, int m, int n, int k,
                   const double* alpha, const double* A, int lda, const double* B, int ldb,
                   const double* beta, double* C, int ldc) {
  return gemm(static_cast<Handle*>(handle), transa, transb, m, n, k, alpha, A, lda, B, ldb, beta,
              C, ldc);
}

// the record, for the tests: counts in a fixed order, and the last violation's reason
void fake_cublas_counts(long long* out) {
  const long long counts[] = {gemms, stream_changes, workspaces_set, handles_alive, violations};
  std::memcpy(out, counts, sizeof counts);
}

const char* fake_cublas_last_violation() { return last_violation; }

// the handle's state at a call, without running anything: what a captured GEMM is checked
// against when it is recorded (its run comes later, when the graph is replayed)
int fake_cublas_check(void* handle) { return check(static_cast<Handle*>(handle)); }

}  // extern "C"
