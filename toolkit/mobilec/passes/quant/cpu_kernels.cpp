// Fused CPU kernels for the DuQ quantizer and the int8 output fake-quant (mobilec.passes.quant.cpu_kernels).
//
// The kernels are elementwise over a tensor's memory (dense, in any dimension order, e.g. channels-last),
// so they never need the shape, and their outputs keep the input's layout. One memory pass each way replaces the
// 5-8 passes of the eager ops. Rounding uses the 1.5*2^23 trick (round half to even, exact for
// |v| < 2^22; every value is clamped into that range first), which vectorizes without SSE4.1 and
// equals std::nearbyint / torch.round in the default rounding mode. No -ffast-math: the float
// arithmetic is the same, in the same order, as the eager path's (-fno-trapping-math only lets the
// compiler turn the clamps into vector selects; -ffp-contract=off keeps a*b+c two roundings, no FMA).
//
// The loops are built for several x86 vector widths and picked at load time for the CPU (GCC function
// multiversioning: SSE2, AVX2, AVX-512). Each element is computed alone, by the same float operations,
// and the DuQ backward's sums run over 16 fixed lanes (below), so every CPU gets the same bits.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(MOBILEC_ONE_TARGET)  // -D...: one build (to compare)
#define MOBILEC_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MOBILEC_CLONES
#endif

constexpr int64_t kChunk = 1 << 14;  // elements per task; also the reduction chunk (deterministic sums)
constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
constexpr float kLimit = 4194304.0f;   // 2^22

inline float round_half_even(float v) { return (v + kMagic) - kMagic; }

// written as selects (no std::min/max branches) so that the loops vectorize
inline float clampf(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// Tensors are processed as their memory: dense (any dimension order), and every tensor of one call
// laid out alike, so element i of one is element i of the others. Outputs take x's layout (empty_like).
bool same_layout(const at::Tensor& t, const at::Tensor& like) {  // strides of size-1 dimensions do not matter
  if (t.sizes() != like.sizes()) return false;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) != 1 && t.stride(d) != like.stride(d)) return false;
  }
  return true;
}

void check_dense(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_non_overlapping_and_dense(),
              name, " must be a dense float32 CPU tensor");
  TORCH_CHECK(same_layout(t, like), name, " must be laid out like x");
}

template <typename F>
void for_chunks(int64_t n, const F& body) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) body(c, c * kChunk, std::min(n, (c + 1) * kChunk));
  });
}

// One chunk each: plain functions with restrict pointers and scalars passed by value, so that the
// loops vectorize (inside a lambda, the scalars were reloaded from the closure every iteration).

// t = round(clamp((x + off) * scale, lo, hi)); out = t * step - off; codes = t (int8 or uint8)
template <typename code_t>
MOBILEC_CLONES void duq_forward_chunk(const float* __restrict x, float* __restrict out, code_t* __restrict codes, int64_t n,
                       float scale, float lo, float hi, float step, float off) {
  for (int64_t i = 0; i < n; ++i) {
    const float t = round_half_even(clampf((x[i] + off) * scale, lo, hi));
    out[i] = t * step - off;
    codes[i] = static_cast<code_t>(t);
  }
}

template <typename code_t>
void duq_forward_impl(const float* x, float* out, code_t* codes, int64_t n, float scale, float lo, float hi, float step,
                      float off) {
  for_chunks(n, [=](int64_t, int64_t b, int64_t e) {
    duq_forward_chunk(x + b, out + b, codes + b, e - b, scale, lo, hi, step, off);
  });
}

std::vector<at::Tensor> duq_forward(const at::Tensor& x, double scale, double lo, double hi, double step, double off,
                                    bool signed_codes) {
  check_dense(x, x, "x");
  TORCH_CHECK(std::max(std::abs(lo), std::abs(hi)) < kLimit, "grid limits out of range");
  auto out = at::empty_like(x);
  const int64_t n = x.numel();
  if (signed_codes) {
    auto codes = at::empty_like(x, x.options().dtype(at::kChar));
    duq_forward_impl(x.data_ptr<float>(), out.data_ptr<float>(), codes.data_ptr<int8_t>(), n, scale, lo, hi, step, off);
    return {out, codes};
  }
  auto codes = at::empty_like(x, x.options().dtype(at::kByte));
  duq_forward_impl(x.data_ptr<float>(), out.data_ptr<float>(), codes.data_ptr<uint8_t>(), n, scale, lo, hi, step, off);
  return {out, codes};
}

// The per-chunk sums of the backward: element i of a chunk adds to lane i % 16 (the last n % 16 to lane 0),
// then the lanes are added in order. That is the order the earlier SSE2 build's `omp simd reduction`
// gave, and with the lanes as two 8-float vectors (GCC/Clang vector extension: four SSE2 registers,
// two AVX ones) every vector width computes the same sums.
constexpr int64_t kLanes = 16;
constexpr int64_t kBlock = 1024;  // elements per pass of the elementwise loop (its products stay in L1)
typedef float lanes8 __attribute__((vector_size(8 * sizeof(float))));

__attribute__((always_inline)) inline lanes8 load8(const float* p) {
  lanes8 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

// inside = lo_a < x + off < a; grad_x = g * inside * ca; sums of g * inside * (x + off) and of g * codes
// (per chunk in float over the 16 lanes; the chunks are summed in double, in order: deterministic)
template <bool kGradX, typename code_t>
MOBILEC_CLONES void duq_backward_chunk(const float* __restrict g, const float* __restrict x, const code_t* __restrict codes,
                                       float* __restrict grad_x, int64_t n, float off, float lo_a, float a, float ca,
                                       double* sum_a, double* sum_c) {
  lanes8 a_lo = {}, a_hi = {}, c_lo = {}, c_hi = {};  // lanes 0-7 and 8-15
  float prod_a[kBlock], prod_c[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = std::min(kBlock, n - b);
    for (int64_t k = 0; k < m; ++k) {  // elementwise: vectorizes at any width
      const float xs = x[b + k] + off;
      const float gm = g[b + k] * static_cast<float>((xs > lo_a) & (xs < a));  // g * mask, as the eager path
      if constexpr (kGradX) grad_x[b + k] = gm * ca;
      prod_a[k] = gm * xs;
      prod_c[k] = g[b + k] * static_cast<float>(codes[b + k]);
    }
    const int64_t body = m - m % kLanes;
    for (int64_t k = 0; k < body; k += kLanes) {
      a_lo += load8(prod_a + k);
      a_hi += load8(prod_a + k + 8);
      c_lo += load8(prod_c + k);
      c_hi += load8(prod_c + k + 8);
    }
    for (int64_t k = body; k < m; ++k) {  // the chunk's last n % 16 elements (only in its last block)
      a_lo[0] += prod_a[k];
      c_lo[0] += prod_c[k];
    }
  }
  float acc_a = 0.0f, acc_c = 0.0f;
  for (int j = 0; j < 8; ++j) {
    acc_a += a_lo[j];
    acc_c += c_lo[j];
  }
  for (int j = 0; j < 8; ++j) {
    acc_a += a_hi[j];
    acc_c += c_hi[j];
  }
  *sum_a = acc_a;
  *sum_c = acc_c;
}

template <typename code_t>
std::vector<double> duq_backward_impl(const float* g, const float* x, const code_t* codes, float* grad_x, int64_t n,
                                      float off, float lo_a, float a, float ca) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part_a(chunks, 0.0), part_c(chunks, 0.0);
  double *pa = part_a.data(), *pc = part_c.data();
  for_chunks(n, [=](int64_t c, int64_t b, int64_t e) {
    if (grad_x == nullptr) {
      duq_backward_chunk<false>(g + b, x + b, codes + b, nullptr, e - b, off, lo_a, a, ca, pa + c, pc + c);
    } else {
      duq_backward_chunk<true>(g + b, x + b, codes + b, grad_x + b, e - b, off, lo_a, a, ca, pa + c, pc + c);
    }
  });
  double sum_a = 0.0, sum_c = 0.0;
  for (int64_t c = 0; c < chunks; ++c) {
    sum_a += part_a[c];
    sum_c += part_c[c];
  }
  return {sum_a, sum_c};
}

std::tuple<at::Tensor, double, double> duq_backward(const at::Tensor& g, const at::Tensor& x, const at::Tensor& codes,
                                                    double off, double lo_a, double a, double ca, bool need_grad_x) {
  check_dense(x, x, "x");
  check_dense(g, x, "g");
  TORCH_CHECK(same_layout(codes, x), "codes must be laid out like x");
  at::Tensor grad_x = need_grad_x ? at::empty_like(x) : at::Tensor();
  float* gx = need_grad_x ? grad_x.data_ptr<float>() : nullptr;
  std::vector<double> sums;
  if (codes.scalar_type() == at::kChar) {
    sums = duq_backward_impl(g.data_ptr<float>(), x.data_ptr<float>(), codes.data_ptr<int8_t>(), gx, x.numel(), off, lo_a, a, ca);
  } else {
    TORCH_CHECK(codes.scalar_type() == at::kByte, "codes must be int8 or uint8");
    sums = duq_backward_impl(g.data_ptr<float>(), x.data_ptr<float>(), codes.data_ptr<uint8_t>(), gx, x.numel(), off, lo_a, a, ca);
  }
  return {grad_x, sums[0], sums[1]};
}

// torch.fake_quantize_per_tensor_affine(x, scale, zero_point, -128, 127), CPU formula:
// q = zero_point + round(x * (1 / scale)); out = (clamp(q, -128, 127) - zero_point) * scale.
inline float int8_level(float x, float inv_scale, float zp) {
  return zp + round_half_even(clampf(x * inv_scale, -kLimit, kLimit));
}

MOBILEC_CLONES void int8_fq_forward_chunk(const float* __restrict x, float* __restrict out, int64_t n, float sc, float inv, float zp) {
  for (int64_t i = 0; i < n; ++i) out[i] = (clampf(int8_level(x[i], inv, zp), -128.0f, 127.0f) - zp) * sc;
}

// the straight-through gradient: g where the level lies in [-128, 127], 0 elsewhere
MOBILEC_CLONES void int8_fq_backward_chunk(const float* __restrict g, const float* __restrict x, float* __restrict grad, int64_t n,
                            float inv, float zp) {
  for (int64_t i = 0; i < n; ++i) {
    const float q = int8_level(x[i], inv, zp);
    grad[i] = g[i] * static_cast<float>((q >= -128.0f) & (q <= 127.0f));  // g * mask, as torch's backward
  }
}

at::Tensor int8_fq_forward(const at::Tensor& x, double scale, int64_t zero_point) {
  check_dense(x, x, "x");
  auto out = at::empty_like(x);
  const float sc = static_cast<float>(scale), inv = 1.0f / sc, zp = static_cast<float>(zero_point);
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for_chunks(x.numel(), [=](int64_t, int64_t b, int64_t e) { int8_fq_forward_chunk(xp + b, op + b, e - b, sc, inv, zp); });
  return out;
}

at::Tensor int8_fq_backward(const at::Tensor& g, const at::Tensor& x, double scale, int64_t zero_point) {
  check_dense(x, x, "x");
  check_dense(g, x, "g");
  auto grad = at::empty_like(x);
  const float inv = 1.0f / static_cast<float>(scale), zp = static_cast<float>(zero_point);
  const float *gp = g.data_ptr<float>(), *xp = x.data_ptr<float>();
  float* op = grad.data_ptr<float>();
  for_chunks(x.numel(), [=](int64_t, int64_t b, int64_t e) { int8_fq_backward_chunk(gp + b, xp + b, op + b, e - b, inv, zp); });
  return grad;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("duq_forward", &duq_forward, "DuQ quantizer forward: (out, codes)");
  m.def("duq_backward", &duq_backward, "DuQ quantizer backward: (grad_x or None, sum_a, sum_c)");
  m.def("int8_fq_forward", &int8_fq_forward, "per-tensor int8 fake quantization");
  m.def("int8_fq_backward", &int8_fq_backward, "straight-through gradient of int8_fq_forward");
}
