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


// The BN-folded layer's per-channel affine out = y * g[c] + b[c] (training with BatchNorm folded): one pass
// each way instead of mul, add and, backward, a mul, a product and two reductions. y is NCHW-contiguous
// (channel = (i / inner) % C) or channels-last (channel = i % C). The forward is the eager y * g + b exactly
// (two roundings, no FMA); grad_y = gout * g[c] exactly; the channel sums of gout * y and gout are per
// plane (NCHW) or per chunk of rows (channels-last) in float over 16 lanes, then added in order in
// double: deterministic, in another order than torch's reduction.
MOBILEC_CLONES void affine_forward_plane(const float* __restrict y, float* __restrict out, int64_t n, float g, float b) {
  for (int64_t i = 0; i < n; ++i) out[i] = y[i] * g + b;
}

MOBILEC_CLONES void affine_forward_rows(const float* __restrict y, float* __restrict out, int64_t rows, int64_t c,
                                        const float* __restrict g, const float* __restrict b) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* yr = y + r * c;
    float* orow = out + r * c;
    for (int64_t j = 0; j < c; ++j) orow[j] = yr[j] * g[j] + b[j];
  }
}

// grad_y (optional) = gout * g over one plane; the plane's sums of gout * y and gout
template <bool kGradY>
MOBILEC_CLONES void affine_backward_plane(const float* __restrict gout, const float* __restrict y, float* __restrict grad_y,
                                          int64_t n, float g, double* sum_gy, double* sum_go) {
  lanes8 a_lo = {}, a_hi = {}, b_lo = {}, b_hi = {};
  float prod[kBlock];
  for (int64_t blk = 0; blk < n; blk += kBlock) {
    const int64_t m = std::min(kBlock, n - blk);
    for (int64_t k = 0; k < m; ++k) {
      if constexpr (kGradY) grad_y[blk + k] = gout[blk + k] * g;
      prod[k] = gout[blk + k] * y[blk + k];
    }
    const int64_t body = m - m % kLanes;
    for (int64_t k = 0; k < body; k += kLanes) {
      a_lo += load8(prod + k);
      a_hi += load8(prod + k + 8);
      b_lo += load8(gout + blk + k);
      b_hi += load8(gout + blk + k + 8);
    }
    for (int64_t k = body; k < m; ++k) {
      a_lo[0] += prod[k];
      b_lo[0] += gout[blk + k];
    }
  }
  float acc_a = 0.0f, acc_b = 0.0f;
  for (int j = 0; j < 8; ++j) {
    acc_a += a_lo[j];
    acc_b += b_lo[j];
  }
  for (int j = 0; j < 8; ++j) {
    acc_a += a_hi[j];
    acc_b += b_hi[j];
  }
  *sum_gy = acc_a;
  *sum_go = acc_b;
}

// channels-last: rows of c channels; per-channel float sums over the rows of one chunk
template <bool kGradY>
MOBILEC_CLONES void affine_backward_rows(const float* __restrict gout, const float* __restrict y, float* __restrict grad_y,
                                         int64_t rows, int64_t c, const float* __restrict g, float* __restrict sum_gy,
                                         float* __restrict sum_go) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* gr = gout + r * c;
    const float* yr = y + r * c;
    for (int64_t j = 0; j < c; ++j) {
      if constexpr (kGradY) grad_y[r * c + j] = gr[j] * g[j];
      sum_gy[j] += gr[j] * yr[j];
      sum_go[j] += gr[j];
    }
  }
}

bool channels_last_dense(const at::Tensor& t) {
  return t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

void check_affine(const at::Tensor& y, const at::Tensor& g, const at::Tensor& b) {
  TORCH_CHECK(y.device().is_cpu() && y.scalar_type() == at::kFloat && y.dim() >= 2, "y must be a float32 CPU tensor (N, C, ...)");
  TORCH_CHECK(y.is_contiguous() || channels_last_dense(y), "y must be contiguous or channels-last");
  const int64_t c = y.size(1);
  for (const auto* t : {&g, &b}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == c,
                "g and b must be contiguous float32 vectors of y.size(1) values");
  }
}

at::Tensor channel_affine_forward(const at::Tensor& y, const at::Tensor& g, const at::Tensor& b) {
  check_affine(y, g, b);
  const bool cl = !y.is_contiguous();
  auto out = at::empty_like(y);  // keeps y's layout
  const float *yp = y.data_ptr<float>(), *gp = g.data_ptr<float>(), *bp = b.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t c = y.size(1), n = y.numel();
  if (n == 0) return out;
  if (cl) {
    const int64_t rows = n / c, grain = std::max<int64_t>(1, kChunk / c);
    at::parallel_for(0, rows, grain, [=](int64_t r0, int64_t r1) {
      affine_forward_rows(yp + r0 * c, op + r0 * c, r1 - r0, c, gp, bp);
    });
    return out;
  }
  const int64_t planes = y.size(0) * c, inner = n / planes;
  at::parallel_for(0, planes, std::max<int64_t>(1, kChunk / std::max<int64_t>(inner, 1)), [=](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) affine_forward_plane(yp + p * inner, op + p * inner, inner, gp[p % c], bp[p % c]);
  });
  return out;
}

// returns (grad_y or an undefined tensor, grad_g, grad_b)
std::tuple<at::Tensor, at::Tensor, at::Tensor> channel_affine_backward(const at::Tensor& gout, const at::Tensor& y,
                                                                        const at::Tensor& g, bool need_grad_y) {
  check_affine(y, g, g);
  TORCH_CHECK(gout.scalar_type() == at::kFloat && gout.is_non_overlapping_and_dense() && same_layout(gout, y),
              "gout must be a dense float32 tensor laid out like y");
  const int64_t c = y.size(1), n = y.numel();
  at::Tensor grad_y = need_grad_y ? at::empty_like(y) : at::Tensor();
  float* gyp = need_grad_y ? grad_y.data_ptr<float>() : nullptr;
  const float *go = gout.data_ptr<float>(), *yp = y.data_ptr<float>(), *gp = g.data_ptr<float>();
  std::vector<double> total_gy(c, 0.0), total_go(c, 0.0);
  if (n > 0 && !y.is_contiguous()) {  // channels-last: fixed chunks of rows, each with its own per-channel sums
    const int64_t rows = n / c, per = std::max<int64_t>(1, kChunk / c), chunks = (rows + per - 1) / per;
    std::vector<float> part_gy(chunks * c, 0.0f), part_go(chunks * c, 0.0f);
    float *pgy = part_gy.data(), *pgo = part_go.data();
    at::parallel_for(0, chunks, 1, [=](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t r0 = k * per, r1 = std::min(rows, r0 + per);
        if (gyp == nullptr) {
          affine_backward_rows<false>(go + r0 * c, yp + r0 * c, nullptr, r1 - r0, c, gp, pgy + k * c, pgo + k * c);
        } else {
          affine_backward_rows<true>(go + r0 * c, yp + r0 * c, gyp + r0 * c, r1 - r0, c, gp, pgy + k * c, pgo + k * c);
        }
      }
    });
    for (int64_t k = 0; k < chunks; ++k) {
      for (int64_t j = 0; j < c; ++j) {
        total_gy[j] += part_gy[k * c + j];
        total_go[j] += part_go[k * c + j];
      }
    }
  } else if (n > 0) {
    const int64_t planes = y.size(0) * c, inner = n / planes;
    std::vector<double> part_gy(planes, 0.0), part_go(planes, 0.0);
    double *pgy = part_gy.data(), *pgo = part_go.data();
    at::parallel_for(0, planes, std::max<int64_t>(1, kChunk / std::max<int64_t>(inner, 1)), [=](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t off = p * inner;
        if (gyp == nullptr) {
          affine_backward_plane<false>(go + off, yp + off, nullptr, inner, gp[p % c], pgy + p, pgo + p);
        } else {
          affine_backward_plane<true>(go + off, yp + off, gyp + off, inner, gp[p % c], pgy + p, pgo + p);
        }
      }
    });
    for (int64_t p = 0; p < planes; ++p) {
      total_gy[p % c] += part_gy[p];
      total_go[p % c] += part_go[p];
    }
  }
  auto grad_g = at::empty({c}, g.options()), grad_b = at::empty({c}, g.options());
  float *ggp = grad_g.data_ptr<float>(), *gbp = grad_b.data_ptr<float>();
  for (int64_t j = 0; j < c; ++j) {
    ggp[j] = static_cast<float>(total_gy[j]);
    gbp[j] = static_cast<float>(total_go[j]);
  }
  return {grad_y, grad_g, grad_b};
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("duq_forward", &duq_forward, "DuQ quantizer forward: (out, codes)");
  m.def("duq_backward", &duq_backward, "DuQ quantizer backward: (grad_x or None, sum_a, sum_c)");
  m.def("int8_fq_forward", &int8_fq_forward, "per-tensor int8 fake quantization");
  m.def("int8_fq_backward", &int8_fq_backward, "straight-through gradient of int8_fq_forward");
  m.def("channel_affine_forward", &channel_affine_forward, "per-channel y * g + b (BN-folded layer output)");
  m.def("channel_affine_backward", &channel_affine_backward, "(grad_y or None, grad_g, grad_b) of channel_affine_forward");
}
