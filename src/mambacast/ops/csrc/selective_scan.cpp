// Fused CPU selective scan (forward and backward) for mambacast.
//
//   h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        h_{-1} = h0 (or 0)
//   y_t = C_t . h_t + D * u_t                                      out_t = y_t * silu(z_t) (if z)
//   delta_t = softplus(delta_raw_t + delta_bias) (if requested), else delta_raw_t + delta_bias
//
// Layout: u, delta, z, y are (batch, seq_len, d_inner) with unit stride along d_inner; B, C are
// (batch, seq_len, d_state) with unit stride along d_state. A is passed transposed, (d_state, d_inner).
// States are (batch, d_state, d_inner). In a float32 kernel z, y, their gradients, and the conv's input and
// its gradient may be bfloat16 (the block's input and output under autocast: `Act`); all maths is float32.
//
// Vectorisation runs over channels: one task owns a block of L consecutive channels of one batch
// row (L = 16 floats or 8 doubles, one 64-byte vector: a zmm register with -march=native on an
// AVX-512 CPU) and keeps its d_state state vectors in registers/stack, in groups of 8 (float) states
// unrolled so that each state's recurrence is an independent chain. Per state and step the forward
// is 11 vector instructions: exp2(delta log2(e) A) by vreduceps, a degree-5 polynomial and
// vscalefps (simd.h, <= 1.9 ulp; with fast_exp, under bfloat16 autocast, a degree-4 polynomial: one instruction
// fewer, 3e-6 relative), then h = e h + (delta u) B and y += C h. No
// (batch, seq_len, d_inner, d_state) tensor exists: the forward saves only the state at chunk
// boundaries; the backward recomputes each chunk's states and exp(delta*A) from its boundary state
// into a (chunk, d_state, L) buffer per task, then runs the reverse recurrence. Reductions across
// channels (dB, dC) use a transpose-add tree over L vectors.
//
// The blocks' LayerNorm (forward, backward and its C++ autograd node) is in layer_norm.h, the heads with the training
// objective in head_loss.h, a whole block as one autograd node in mamba_block.h, all included at the end of this
// translation unit. Built on first use by
// mambacast.ops._loader with torch.utils.cpp_extension.load.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/record_function.h>
#include <ATen/native/Math.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/silu_backward.h>
#include <ATen/ops/zeros.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "simd.h"

namespace {

constexpr int kMaxState = 1024;
constexpr int kMaxRank = 64;


// ---------------------------------------------------------------- arguments
template <typename T>
struct Ptr2 {  // a (batch, seq_len, k) tensor with unit stride along k
  const T* p = nullptr;
  int64_t sb = 0, sl = 0;
  const T* at(int64_t b, int64_t t) const { return p + b * sb + t * sl; }
};

template <typename T>
Ptr2<T> ptr2(const at::Tensor& x) {
  Ptr2<T> r;
  r.p = x.data_ptr<T>();
  r.sb = x.stride(0);
  r.sl = x.stride(1);
  return r;
}

// A (batch, seq_len, k) activation with unit stride along k, held as T or (T = float) as bfloat16: the block's
// input xz, an autocast bfloat16 matmul's output, read as it is, and its gradient written in its dtype.
template <typename T>
struct Act {
  using V = typename VT<T>::V;
  void* p = nullptr;
  int64_t sb = 0, sl = 0;  // in elements
  bool bf16 = false;
  int64_t index(int64_t b, int64_t t, int64_t c) const { return b * sb + t * sl + c; }
  const void* at(int64_t b, int64_t t, int64_t c) const {  // for prefetches
    return bf16 ? static_cast<const void*>(static_cast<const uint16_t*>(p) + index(b, t, c))
                : static_cast<const void*>(static_cast<const T*>(p) + index(b, t, c));
  }
  V load(int64_t b, int64_t t, int64_t c0, int cnt) const {
    if constexpr (sizeof(T) == 4) {
      if (bf16) return vload_bf16(static_cast<const uint16_t*>(p) + index(b, t, c0), cnt);
    }
    return vload(static_cast<const T*>(p) + index(b, t, c0), cnt);
  }
  void store(int64_t b, int64_t t, int64_t c0, V v, int cnt) const {
    if constexpr (sizeof(T) == 4) {
      if (bf16) return vstore_bf16(static_cast<uint16_t*>(p) + index(b, t, c0), v, cnt);
    }
    vstore(static_cast<T*>(p) + index(b, t, c0), v, cnt);
  }
};

template <typename T>
Act<T> act(const at::Tensor& x) {
  Act<T> r;
  r.p = x.data_ptr();
  r.sb = x.stride(0);
  r.sl = x.stride(1);
  r.bf16 = x.scalar_type() == at::kBFloat16;
  return r;
}

// The dtypes an activation of a T kernel may have: T, or bfloat16 for a float32 kernel.
bool act_dtype_ok(const at::Tensor& x, at::ScalarType kernel) {
  return x.scalar_type() == kernel || (kernel == at::kFloat && x.scalar_type() == at::kBFloat16);
}

template <typename T>
struct Args {
  int64_t batch = 0, L = 0, d = 0, N = 0, chunk = 1, K = 0;
  // Stacked models: At, D, bias and Wt hold M models' parameters along a leading dimension, and
  // batch row b belongs to model b / rows (M = 1: one set of parameters shared by every row).
  int64_t M = 1, rows = 1;
  Ptr2<T> u, delta, B, C;
  Act<T> z, dout;             // (batch, L, d) (dout: L - y0 steps), T or bfloat16
  const T* At = nullptr;      // (N, d)
  const T* D = nullptr;       // (d)
  const T* bias = nullptr;    // (d)
  const T* h0 = nullptr;      // (batch, N, d)
  const T* dhlast = nullptr;  // (batch, N, d)
  const T* Wt = nullptr;      // (R, d): fused dt_proj; then `delta` is dt_low (batch, seq_len, R)
  int64_t R = 0;
  bool softplus = false;
  bool fast_exp = false;  // exp(delta A) by vexp2_fast (under bfloat16 autocast)
  // y and its gradient only from step y0 on (the last block: its last step only): without z
  int64_t y0 = 0;
  // forward outputs
  Act<T> y;            // (batch, L - y0, d), z's dtype
  T* hlast = nullptr;  // (batch, N, d)
  T* hsave = nullptr;  // (batch, K, N, d): state entering each chunk
  T* ypre = nullptr;   // (batch, L, d): y before the z gate, saved for the backward
  const T* hsave_in = nullptr;
  const T* ypre_in = nullptr;
  // backward outputs
  T *du = nullptr, *ddelta = nullptr;  // (batch, L, d)
  Act<T> dz;                           // z's dtype; rows strided
  // Partials over batch rows, packed in one (batch, pstride) tensor (one sum reduces them all): row b holds dA
  // (N, d), dD (d), dbias (d), dW (R, d); each pointer below is row 0's part.
  int64_t pstride = 0;
  T* dA = nullptr;
  T* dD = nullptr;
  T* dbias = nullptr;
  T* dW = nullptr;      // fused dt_proj
  // Partials over channel groups, packed along their last dimension in one (groups, batch, L, dstride) tensor laid
  // out like x_proj's output (dt_low, B, C): the caller uses it as that output's gradient without a concatenation.
  int64_t dstride = 0;
  T* ddtlow = nullptr;  // (.., R) (fused dt_proj)
  T* dB = nullptr;      // (.., N)
  T* dC = nullptr;      // (.., N)
  T* dh0 = nullptr;     // (batch, N, d)
  bool write_ddelta = true;
};

// Per-thread scratch, in vectors: per-step buffers for one chunk, per-state arrays, and the
// chunk's recomputed exp(delta A) and states for the backward.
template <typename T>
struct Scratch {
  using V = typename VT<T>::V;
  std::vector<V> dt, dt2, du, uu, dy, sig, yacc, sA, sB;  // (chunk)
  std::vector<V> h, h1, g, dA, Av;                        // (N)
  std::vector<V> ab, hb;                                  // (chunk, N), backward only
  Scratch(int64_t chunk, int64_t N, bool backward)
      : dt(chunk), dt2(chunk), du(chunk), uu(chunk), dy(chunk), sig(chunk), yacc(chunk), sA(chunk), sB(chunk),
        h(N), h1(N), g(N), dA(N), Av(N), ab(backward ? chunk * N : 0), hb(backward ? chunk * N : 0) {}
};

// States are processed in groups of G (8 floats / 4 doubles): a group's states, A values and
// gradient accumulators stay in registers, and the backward's 2G per-step channel reductions
// (G for dB, G for dC) make exactly one L-vector transpose-add tree.
template <typename T>
constexpr int kGroup = VT<T>::L / 2;

// delta before softplus: the delta input, or dt_low . W (the fused dt_proj), plus the bias.
template <typename T>
inline typename VT<T>::V raw_delta(const Args<T>& a, int64_t b, int64_t t, int64_t c0, int cnt,
                                   const typename VT<T>::V& biasv) {
  using V = typename VT<T>::V;
  if (a.Wt) {
    const T* lo = a.delta.at(b, t);
    V r = biasv;
    for (int64_t k = 0; k < a.R; ++k) r += vload(a.Wt + k * a.d + c0, cnt) * lo[k];
    return r;
  }
  return vload(a.delta.at(b, t) + c0, cnt) + biasv;
}

// Per-step quantities shared by every state of one chunk: delta (after bias and softplus),
// delta * log2(e), delta * u, u, sigmoid(raw delta) for the softplus derivative, and D * u.
template <typename T>
void prep_chunk(const Args<T>& a, Scratch<T>& s, int64_t b, int64_t c0, int cnt, int64_t t0, int64_t T_,
                bool backward) {
  using V = typename VT<T>::V;
  const V Dv = a.D ? vload(a.D + c0, cnt) : V{};
  const V biasv = a.bias ? vload(a.bias + c0, cnt) : V{};
  for (int64_t i = 0; i < T_; ++i) {
    __builtin_prefetch(a.delta.at(b, t0 + i + 8) + (a.Wt ? 0 : c0));
    __builtin_prefetch(a.u.at(b, t0 + i + 8) + c0);
    const V raw = raw_delta(a, b, t0 + i, c0, cnt, biasv);
    V dt = raw;
    if (a.softplus) softplus_sigmoid<V>(raw, dt, backward ? &s.sig[i] : nullptr);
    const V uv = vload(a.u.at(b, t0 + i) + c0, cnt);
    s.dt[i] = dt;
    s.dt2[i] = dt * static_cast<T>(M_LOG2E);
    s.du[i] = dt * uv;
    s.uu[i] = uv;
    s.yacc[i] = Dv * uv;
  }
}

// out[k] += sum over lanes of v[k], k < R (R small: the fused dt_proj's rank).
template <typename T>
inline void add_lane_sums_small(const typename VT<T>::V* v, int R, T* out) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) {
    if (R <= 4) {  // two levels of the transpose-add tree, then fold the four 128-bit blocks
      using V = typename VT<T>::V;
      const V z{};
      const V x0 = v[0], x1 = R > 1 ? v[1] : z, x2 = R > 2 ? v[2] : z, x3 = R > 3 ? v[3] : z;
      const V a0 = MC_SHUF(x0, x1, 0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29) +
                   MC_SHUF(x0, x1, 2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31);
      const V a1 = MC_SHUF(x2, x3, 0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29) +
                   MC_SHUF(x2, x3, 2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31);
      const V b0 = MC_SHUF(a0, a1, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
                   MC_SHUF(a0, a1, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
      const __m512 bb = (__m512)b0;
      const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(bb), 1));
      const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(bb), hi);
      const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
      float tmp[4];
      _mm_storeu_ps(tmp, q);
      for (int k = 0; k < R; ++k) out[k] += tmp[k];
      return;
    }
  }
#endif
  add_lane_sums<T>(v, R, out);
}

// Forward over steps i0 .. i1-1 of the chunk starting at t0, for states n0 .. n0+ng-1: h carried in h_io; with
// ACC_Y accumulates C.h into s.yacc. With REC, also records exp(delta A) and every state for the backward.
template <typename T, int G, bool FULL, bool REC, bool ACC_Y, bool FAST>
inline void scan_group(const Args<T>& a, Scratch<T>& s, int64_t b, int64_t t0, int64_t i0, int64_t i1, int n0,
                       int ng_rt, typename VT<T>::V* h_io) {
  using V = typename VT<T>::V;
  const int ng = FULL ? G : ng_rt;
  const int64_t N = a.N;
  V h[G], Av[G];
#pragma GCC unroll 16
  for (int j = 0; j < ng; ++j) {
    h[j] = h_io[n0 + j];
    Av[j] = s.Av[n0 + j];
  }
  constexpr bool rec = REC;
  for (int64_t i = i0; i < i1; ++i) {
    const T* Bt = a.B.at(b, t0 + i) + n0;
    const T* Ct = a.C.at(b, t0 + i) + n0;
    const V dt2 = s.dt2[i], du = s.du[i];
    V y = s.yacc[i];
    V* ab = rec ? s.ab.data() + i * N + n0 : nullptr;
    V* hb = rec ? s.hb.data() + i * N + n0 : nullptr;
#pragma GCC unroll 16
    for (int j = 0; j < ng; ++j) {
      const V e = FAST ? vexp2_fast(dt2 * Av[j]) : vexp2(dt2 * Av[j]);
      h[j] = e * h[j] + du * Bt[j];
      y += h[j] * Ct[j];
      if (rec) {
        ab[j] = e;
        hb[j] = h[j];
      }
    }
    if (ACC_Y) s.yacc[i] = y;
  }
#pragma GCC unroll 16
  for (int j = 0; j < ng; ++j) h_io[n0 + j] = h[j];
}

// Reverse recurrence over steps i1-1 down to i0 of the chunk starting at t0, for states n0 .. n0+ng-1:
//   g_t = dL/dh_t = dy_t C_t + exp(delta_{t+1} A) g_{t+1}          (carried in s.g)
//   gz  = g_t exp(delta_t A) h_{t-1}   (gradient w.r.t. delta_t A)
// accumulating sum_n gz A and sum_n g B per step (for ddelta and du), dA, and the per-step dB, dC. DY = false: steps
// before y0, where dy is 0 (so dC is too: left as the caller's zeros).
template <typename T, int G, bool FULL, bool DY>
inline void reverse_group(const Args<T>& a, Scratch<T>& s, int64_t b, int64_t t0, int64_t i0, int64_t i1, int n0,
                          int ng_rt, T* dBrow, T* dCrow) {
  using V = typename VT<T>::V;
  const int ng = FULL ? G : ng_rt;
  const int64_t N = a.N;
  V g[G], dA[G], Av[G];
#pragma GCC unroll 16
  for (int j = 0; j < ng; ++j) {
    g[j] = s.g[n0 + j];
    dA[j] = s.dA[n0 + j];
    Av[j] = s.Av[n0 + j];
  }
  for (int64_t i = i1 - 1; i >= i0; --i) {
    const T* Bt = a.B.at(b, t0 + i) + n0;
    const T* Ct = a.C.at(b, t0 + i) + n0;
    const V dyv = s.dy[i], dt = s.dt[i], du = s.du[i];
    const V* ab = s.ab.data() + i * N + n0;
    const V* hb = s.hb.data() + i * N + n0;
    const V* hp = i > 0 ? hb - N : s.h.data() + n0;
    V sA = s.sA[i], sB = s.sB[i];
    V red[2 * G];
#pragma GCC unroll 16
    for (int j = 0; j < ng; ++j) {
      const V gn = DY ? g[j] + dyv * Ct[j] : g[j];
      const V q = gn * ab[j];
      const V gz = q * hp[j];
      sA += gz * Av[j];
      dA[j] += gz * dt;
      sB += gn * Bt[j];
      red[j] = gn * du;
      red[G + j] = DY ? dyv * hb[j] : V{};
      g[j] = q;
    }
    if (!FULL) {
      for (int j = ng; j < G; ++j) red[j] = red[G + j] = V{};
    }
    s.sA[i] = sA;
    s.sB[i] = sB;
    const V sums = lane_sums(red);
    T* db = dBrow + (t0 + i) * a.dstride + n0;
    T* dc = dCrow + (t0 + i) * a.dstride + n0;
    if (FULL) {  // lanes 0..G-1 of sums are dB, G..2G-1 are dC: two half-vector read-modify-writes
      using H = typename VT<T>::H;
      static_assert(sizeof(H) * 2 == sizeof(V) && 2 * G == VT<T>::L, "half vector");
      H lo, hi, o;
      std::memcpy(&lo, &sums, sizeof(H));
      std::memcpy(&hi, reinterpret_cast<const char*>(&sums) + sizeof(H), sizeof(H));
      std::memcpy(&o, db, sizeof(H));
      o += lo;
      std::memcpy(db, &o, sizeof(H));
      if (DY) {
        std::memcpy(&o, dc, sizeof(H));
        o += hi;
        std::memcpy(dc, &o, sizeof(H));
      }
    } else {
      for (int j = 0; j < ng; ++j) {
        db[j] += sums[j];
        if (DY) dc[j] += sums[G + j];
      }
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < ng; ++j) {
    s.g[n0 + j] = g[j];
    s.dA[n0 + j] = dA[j];
  }
}

template <typename T, bool REC, bool ACC_Y, bool FAST>
void scan_groups_exp(const Args<T>& a, Scratch<T>& s, int64_t b, int64_t t0, int64_t i0, int64_t i1,
                     typename VT<T>::V* h_io) {
  constexpr int G = kGroup<T>;
  for (int n0 = 0; n0 < a.N; n0 += G) {
    const int ng = static_cast<int>(std::min<int64_t>(G, a.N - n0));
    if (ng == G) {
      scan_group<T, G, true, REC, ACC_Y, FAST>(a, s, b, t0, i0, i1, n0, ng, h_io);
    } else {
      scan_group<T, G, false, REC, ACC_Y, FAST>(a, s, b, t0, i0, i1, n0, ng, h_io);
    }
  }
}

template <typename T, bool REC, bool ACC_Y>
void scan_groups(const Args<T>& a, Scratch<T>& s, int64_t b, int64_t t0, int64_t i0, int64_t i1,
                 typename VT<T>::V* h_io) {
  if (i0 >= i1) return;
  if (a.fast_exp) {
    scan_groups_exp<T, REC, ACC_Y, true>(a, s, b, t0, i0, i1, h_io);
  } else {
    scan_groups_exp<T, REC, ACC_Y, false>(a, s, b, t0, i0, i1, h_io);
  }
}

// The chunk's steps before y0 (no y there), as an index into the chunk: 0 .. T_.
inline int64_t y_split(int64_t y0, int64_t t0, int64_t T_) { return std::clamp<int64_t>(y0 - t0, 0, T_); }

// The arguments seen by batch row b: with stacked models, the parameter pointers moved to b's model.
template <typename T>
Args<T> row_args(const Args<T>& a, int64_t b) {
  Args<T> r = a;
  const int64_t m = b / a.rows;
  r.At += m * a.N * a.d;
  if (r.D) r.D += m * a.d;
  if (r.bias) r.bias += m * a.d;
  if (r.Wt) r.Wt += m * a.R * a.d;
  return r;
}

// ---------------------------------------------------------------- forward
template <typename T>
void fwd_block(const Args<T>& a, Scratch<T>& s, int64_t b, int64_t c0, int cnt) {
  using V = typename VT<T>::V;
  const int64_t N = a.N, d = a.d;
  for (int64_t n = 0; n < N; ++n) {
    s.Av[n] = vload(a.At + n * d + c0, cnt);
    s.h[n] = a.h0 ? vload(a.h0 + (b * N + n) * d + c0, cnt) : V{};
  }
  for (int64_t k = 0; k < a.K; ++k) {
    const int64_t t0 = k * a.chunk, T_ = std::min(a.chunk, a.L - t0);
    if (a.hsave) {
      T* hs = a.hsave + ((b * a.K + k) * N) * d + c0;
      for (int64_t n = 0; n < N; ++n) vstore(hs + n * d, s.h[n], cnt);
    }
    prep_chunk(a, s, b, c0, cnt, t0, T_, false);
    const int64_t split = y_split(a.y0, t0, T_);   // (y0 > 0 only without z)
    scan_groups<T, false, false>(a, s, b, t0, 0, split, s.h.data());
    scan_groups<T, false, true>(a, s, b, t0, split, T_, s.h.data());
    for (int64_t i = split; i < T_; ++i) {
      V yv = s.yacc[i];
      if (a.z.p) {
        if (a.ypre) vstore(a.ypre + (b * a.L + t0 + i) * d + c0, yv, cnt);
        const V zv = a.z.load(b, t0 + i, c0, cnt);
        yv *= zv * vsigmoid(zv);
      }
      a.y.store(b, t0 + i - a.y0, c0, yv, cnt);
    }
  }
  if (a.hlast) {
    for (int64_t n = 0; n < N; ++n) vstore(a.hlast + (b * N + n) * d + c0, s.h[n], cnt);
  }
}

// ---------------------------------------------------------------- backward
template <typename T>
void bwd_block(const Args<T>& a, Scratch<T>& s, int64_t b, int64_t c0, int cnt, int64_t group) {
  using V = typename VT<T>::V;
  constexpr int G = kGroup<T>;
  const int64_t N = a.N, d = a.d;
  for (int64_t n = 0; n < N; ++n) {
    s.Av[n] = vload(a.At + n * d + c0, cnt);
    s.g[n] = a.dhlast ? vload(a.dhlast + (b * N + n) * d + c0, cnt) : V{};
    s.dA[n] = V{};
  }
  const V Dv = a.D ? vload(a.D + c0, cnt) : V{};
  V dDacc{}, dbiasacc{};
  V Wv[kMaxRank], dWacc[kMaxRank], red[kMaxRank];
  const int R = static_cast<int>(a.R);
  for (int k = 0; k < R; ++k) {
    Wv[k] = vload(a.Wt + k * d + c0, cnt);
    dWacc[k] = V{};
  }
  const int64_t drow = (group * a.batch + b) * a.L * a.dstride;
  T* dLrow = a.ddtlow ? a.ddtlow + drow : nullptr;
  T* dBrow = a.dB + drow;
  T* dCrow = a.dC + drow;
  for (int64_t k = a.K - 1; k >= 0; --k) {
    const int64_t t0 = k * a.chunk, T_ = std::min(a.chunk, a.L - t0);
    // Recompute the chunk's exp(delta A) and states (into s.ab, s.hb) from the state entering it.
    const T* hs = a.hsave_in + ((b * a.K + k) * N) * d + c0;
    for (int64_t n = 0; n < N; ++n) s.h[n] = s.h1[n] = vload(hs + n * d, cnt);
    prep_chunk(a, s, b, c0, cnt, t0, T_, true);
    // Gradient reaching y through the z gate, and dz, from y before the gate (saved by the
    // forward, else accumulated again by the recompute below).
    const bool y_saved = a.ypre_in != nullptr;
    if (a.z.p && !y_saved) {
      scan_groups<T, true, true>(a, s, b, t0, 0, T_, s.h1.data());
    } else {
      scan_groups<T, true, false>(a, s, b, t0, 0, T_, s.h1.data());
    }
    const int64_t split = y_split(a.y0, t0, T_);
    for (int64_t i = 0; i < T_; ++i) {
      if (i < split) {   // no y before y0 (and no z): no gradient reaches it
        s.dy[i] = s.sA[i] = s.sB[i] = V{};
        continue;
      }
      __builtin_prefetch(a.dout.at(b, t0 + i - a.y0 + 8, c0));
      V dyv = a.dout.load(b, t0 + i - a.y0, c0, cnt);
      if (a.z.p) {
        const V zv = a.z.load(b, t0 + i, c0, cnt);
        const V sg = vsigmoid(zv);
        const V yv = y_saved ? vload(a.ypre_in + (b * a.L + t0 + i) * d + c0, cnt) : s.yacc[i];
        a.dz.store(b, t0 + i, c0, dyv * yv * sg * (1.0f + zv * (1.0f - sg)), cnt);
        dyv = dyv * zv * sg;
      }
      s.dy[i] = dyv;
      s.sA[i] = V{};
      s.sB[i] = V{};
    }
    for (int n0 = 0; n0 < N; n0 += G) {   // the steps with a gradient of y, then (back to the chunk's start) those without
      const int ng = static_cast<int>(std::min<int64_t>(G, N - n0));
      if (ng == G) {
        reverse_group<T, G, true, true>(a, s, b, t0, split, T_, n0, ng, dBrow, dCrow);
        reverse_group<T, G, true, false>(a, s, b, t0, 0, split, n0, ng, dBrow, dCrow);
      } else {
        reverse_group<T, G, false, true>(a, s, b, t0, split, T_, n0, ng, dBrow, dCrow);
        reverse_group<T, G, false, false>(a, s, b, t0, 0, split, n0, ng, dBrow, dCrow);
      }
    }
    for (int64_t i = 0; i < T_; ++i) {
      const int64_t t = t0 + i;
      __builtin_prefetch(a.ddelta + (b * a.L + t + 8) * d + c0, 1);
      __builtin_prefetch(a.du + (b * a.L + t + 8) * d + c0, 1);
      V ddt = s.sA[i] + s.sB[i] * s.uu[i];
      if (a.softplus) ddt *= s.sig[i];
      dbiasacc += ddt;
      if (a.write_ddelta) vstore(a.ddelta + (b * a.L + t) * d + c0, ddt, cnt);
      if (R > 0) {  // fused dt_proj: d dt_low_t = W^T ddelta_t (a channel reduction), dW += ddelta_t dt_low_t
        const T* lo = a.delta.at(b, t);
        for (int k = 0; k < R; ++k) {
          red[k] = ddt * Wv[k];
          dWacc[k] += ddt * lo[k];
        }
        add_lane_sums_small<T>(red, R, dLrow + t * a.dstride);
      }
      vstore(a.du + (b * a.L + t) * d + c0, s.sB[i] * s.dt[i] + Dv * s.dy[i], cnt);
      dDacc += s.dy[i] * s.uu[i];
    }
  }
  const int64_t prow = b * a.pstride;
  for (int64_t n = 0; n < N; ++n) {
    vstore(a.dA + prow + n * d + c0, s.dA[n], cnt);
    vstore(a.dh0 + (b * N + n) * d + c0, s.g[n], cnt);
  }
  vstore(a.dD + prow + c0, dDacc, cnt);
  vstore(a.dbias + prow + c0, dbiasacc, cnt);
  for (int k = 0; k < R; ++k) vstore(a.dW + prow + k * d + c0, dWacc[k], cnt);
}

// ---------------------------------------------------------------- drivers
// Runs body(state, i) for i in [0, n) on torch's intra-op threads, handing tasks out one at a
// time (dynamic scheduling) instead of a fixed half per thread: on a busy machine a descheduled
// thread then holds back only the task it is on. make_state() builds per-thread scratch.
template <typename MakeState, typename Body>
void parallel_tasks(int64_t n, MakeState&& make_state, Body&& body) {
  const int64_t threads = std::min<int64_t>(n, at::get_num_threads());
  if (threads <= 1 || at::in_parallel_region()) {
    auto st = make_state();
    for (int64_t i = 0; i < n; ++i) body(st, i);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    auto st = make_state();
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      body(st, i);
    }
  });
}

// Channel blocks per task where a task writes `act`: two for bfloat16, whose 16-channel block is half a cache
// line, so that two threads never write one line (false sharing made the bfloat16 conv backward 2.3x slower
// on two threads); one otherwise.
template <typename T>
int64_t blocks_per_task(const Act<T>& act) {
  return act.bf16 ? 2 : 1;
}

template <typename T>
void run_fwd(const Args<T>& a) {
  constexpr int L = VT<T>::L;
  const int64_t nblk = (a.d + L - 1) / L, per = blocks_per_task(a.y), ntask = (nblk + per - 1) / per;
  const int64_t chunk = std::max<int64_t>(1, std::min(a.chunk, a.L));
  parallel_tasks(
      a.batch * ntask, [&] { return Scratch<T>(chunk, a.N, false); },
      [&](Scratch<T>& s, int64_t i) {
        const int64_t b = i / ntask;
        const Args<T> ar = a.M > 1 ? row_args(a, b) : a;
        for (int64_t blk = (i % ntask) * per; blk < std::min(nblk, (i % ntask + 1) * per); ++blk) {
          const int64_t c0 = blk * L;
          fwd_block<T>(ar, s, b, c0, static_cast<int>(std::min<int64_t>(L, a.d - c0)));
        }
      });
}

template <typename T>
void run_bwd(const Args<T>& a, int64_t groups) {
  constexpr int L = VT<T>::L;
  const int64_t nblk = (a.d + L - 1) / L;
  const int64_t per = blocks_per_task(a.dz);
  const int64_t per_group = (nblk + groups * per - 1) / (groups * per) * per;
  const int64_t chunk = std::max<int64_t>(1, std::min(a.chunk, a.L));
  parallel_tasks(
      a.batch * groups, [&] { return Scratch<T>(chunk, a.N, true); },
      [&](Scratch<T>& s, int64_t i) {
        const int64_t b = i / groups, grp = i % groups;
        const Args<T> ar = a.M > 1 ? row_args(a, b) : a;
        for (int64_t blk = grp * per_group; blk < std::min(nblk, (grp + 1) * per_group); ++blk) {
          const int64_t c0 = blk * L;
          bwd_block<T>(ar, s, b, c0, static_cast<int>(std::min<int64_t>(L, a.d - c0)), grp);
        }
      });
}
void check_btk(const at::Tensor& x, const char* name, int64_t batch, int64_t L, int64_t k) {
  TORCH_CHECK(x.dim() == 3 && x.size(0) == batch && x.size(1) == L && x.size(2) == k, "selective_scan: ", name,
              " has shape ", x.sizes(), ", expected (", batch, ", ", L, ", ", k, ")");
  TORCH_CHECK(x.stride(2) == 1 || k <= 1, "selective_scan: ", name, " needs unit stride on its last dimension");
}

template <typename T>
void fill_common(Args<T>& a, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& At, const at::Tensor& B,
                 const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                 const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& Wt, bool softplus,
                 int64_t chunk) {
  a.batch = u.size(0);
  a.L = u.size(1);
  a.d = u.size(2);
  a.N = At.size(-2);
  a.M = At.dim() == 3 ? At.size(0) : 1;
  a.rows = a.batch / a.M;
  a.chunk = std::max<int64_t>(1, chunk);
  a.K = (a.L + a.chunk - 1) / a.chunk;
  a.u = ptr2<T>(u);
  a.delta = ptr2<T>(delta);
  a.B = ptr2<T>(B);
  a.C = ptr2<T>(C);
  a.At = At.data_ptr<T>();
  if (D) a.D = D->data_ptr<T>();
  if (z) a.z = act<T>(*z);
  if (bias) a.bias = bias->data_ptr<T>();
  if (Wt) {
    a.Wt = Wt->data_ptr<T>();
    a.R = Wt->size(-2);
  }
  a.softplus = softplus;
}

void check_y_from(int64_t y_from, int64_t L, bool gated) {
  TORCH_CHECK(y_from >= 0 && y_from < std::max<int64_t>(L, 1), "selective_scan: y_from must be in [0, seq_len), got ",
              y_from);
  TORCH_CHECK(y_from == 0 || !gated, "selective_scan: y_from > 0 takes no z (the caller gates the steps it reads)");
}

void check_common(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& At, const at::Tensor& B,
                  const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                  const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& Wt) {
  TORCH_CHECK(u.device().is_cpu(), "selective_scan (fused CPU kernel): tensors must be on the CPU");
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble,
              "selective_scan (fused CPU kernel): float32 or float64 only, got ", u.scalar_type());
  TORCH_CHECK(u.dim() == 3, "selective_scan: u must be (batch, seq_len, d_inner)");
  const int64_t batch = u.size(0), L = u.size(1), d = u.size(2);
  TORCH_CHECK((At.dim() == 2 || At.dim() == 3) && At.size(-1) == d && At.is_contiguous(),
              "selective_scan: At must be (d_state, d_inner), or (n_models, d_state, d_inner) for stacked models");
  const int64_t N = At.size(-2);
  // Stacked models: every per-channel parameter gets the leading n_models dimension.
  const bool stacked = At.dim() == 3;
  const int64_t M = stacked ? At.size(0) : 1;
  TORCH_CHECK(M >= 1 && batch % M == 0, "selective_scan: batch ", batch, " is not a multiple of the ", M,
              " stacked models");
  TORCH_CHECK(N >= 1 && N <= kMaxState, "selective_scan (fused CPU kernel): d_state must be in [1, ", kMaxState,
              "], got ", N);
  check_btk(u, "u", batch, L, d);
  if (Wt) {
    TORCH_CHECK(Wt->dim() == (stacked ? 3 : 2) && (!stacked || Wt->size(0) == M) && Wt->size(-1) == d &&
                    Wt->size(-2) >= 1 && Wt->size(-2) <= kMaxRank && Wt->is_contiguous() &&
                    Wt->scalar_type() == u.scalar_type(),
                "selective_scan: the fused dt_proj weight must be contiguous ([n_models,] R, d_inner), 1 <= R <= ",
                kMaxRank);
    check_btk(delta, "dt_low", batch, L, Wt->size(-2));
  } else {
    check_btk(delta, "delta", batch, L, d);
  }
  check_btk(B, "B", batch, L, N);
  check_btk(C, "C", batch, L, N);
  if (z) check_btk(*z, "z", batch, L, d);
  for (const at::Tensor* t : {&u, &delta, &At, &B, &C}) {
    TORCH_CHECK(t->scalar_type() == u.scalar_type(), "selective_scan: all inputs must share one dtype");
  }
  if (z) TORCH_CHECK(act_dtype_ok(*z, u.scalar_type()), "selective_scan: z must have u's dtype (or bfloat16 for "
                     "float32 u), got ", z->scalar_type());
  for (const std::optional<at::Tensor>* o : {&D, &bias}) {
    if (*o) {
      TORCH_CHECK((*o)->dim() == (stacked ? 2 : 1) && (!stacked || (*o)->size(0) == M) && (*o)->size(-1) == d &&
                      (*o)->is_contiguous() && (*o)->scalar_type() == u.scalar_type(),
                  "selective_scan: D and delta_bias must be contiguous ([n_models,] d_inner) of the input dtype");
    }
  }
}

// y (batch, L, d) [gated by silu(z) if z; in z's dtype], h_last (batch, N, d), and if save_states the state
// entering each chunk (batch, ceil(L / chunk), N, d) and, with z, y before the gate (batch, L, d)
// for the backward (empty tensors otherwise). With y_from > 0 (no z) y holds steps y_from .. L-1 only,
// (batch, L - y_from, d), and the steps before skip C.h.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> scan_fwd(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& At, const at::Tensor& B, const at::Tensor& C,
    const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& Wt, const std::optional<at::Tensor>& h0, bool softplus, int64_t chunk,
    bool save_states, bool fast_exp, int64_t y_from) {
  check_common(u, delta, At, B, C, D, z, bias, Wt);
  const int64_t batch = u.size(0), L = u.size(1), d = u.size(2), N = At.size(-2);
  check_y_from(y_from, L, z.has_value());
  if (h0) {
    TORCH_CHECK(h0->dim() == 3 && h0->size(0) == batch && h0->size(1) == N && h0->size(2) == d &&
                    h0->is_contiguous() && h0->scalar_type() == u.scalar_type(),
                "selective_scan: h0 must be contiguous (batch, d_state, d_inner)");
  }
  at::Tensor y = at::empty({batch, L - y_from, d}, z ? z->options() : u.options());
  at::Tensor hlast = at::empty({batch, N, d}, u.options());
  const int64_t K = (L + std::max<int64_t>(1, chunk) - 1) / std::max<int64_t>(1, chunk);
  at::Tensor hsave = at::empty({save_states ? batch : 0, K, N, d}, u.options());
  at::Tensor ypre = at::empty({save_states && z ? batch : 0, L, d}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mambacast_scan_fwd", [&] {
    Args<scalar_t> a;
    fill_common<scalar_t>(a, u, delta, At, B, C, D, z, bias, Wt, softplus, chunk);
    a.fast_exp = fast_exp;
    a.y0 = y_from;
    if (h0) a.h0 = h0->data_ptr<scalar_t>();
    a.y = act<scalar_t>(y);
    a.hlast = hlast.data_ptr<scalar_t>();
    if (save_states) a.hsave = hsave.data_ptr<scalar_t>();
    if (save_states && z) a.ypre = ypre.data_ptr<scalar_t>();
    run_fwd<scalar_t>(a);
  });
  return {y, hlast, hsave, ypre};
}

// Returns [du, ddelta (gradient of the delta input before bias/softplus; empty unless
// need_ddelta), dz (or dz_out), dA (batch, N, d) partial, dB, dC (groups, batch, L, N) partial,
// dD (batch, d) partial, dbias (batch, d) partial, dh0 (batch, N, d), with the fused dt_proj
// d dt_low (groups, batch, L, R) partial and dW (batch, R, d) partial, then the two tensors those
// partials are views of: (groups, batch, L, R + 2N) holding d dt_low, dB, dC side by side, and
// (batch, (N + 2 + R) d) holding dA, dD, dbias, dW]. Partials are summed over their leading
// dimension by the caller. grad_output covers the steps of y: y_from .. L-1.
std::vector<at::Tensor> scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& At,
                                 const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                                 const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& bias,
                                 const std::optional<at::Tensor>& Wt, const at::Tensor& hsave,
                                 const std::optional<at::Tensor>& ypre, const at::Tensor& dout,
                                 const std::optional<at::Tensor>& dhlast, bool softplus, int64_t chunk,
                                 const std::optional<at::Tensor>& dz_out, bool need_ddelta, bool fast_exp,
                                 int64_t y_from) {
  check_common(u, delta, At, B, C, D, z, bias, Wt);
  const int64_t batch = u.size(0), L = u.size(1), d = u.size(2), N = At.size(-2);
  check_y_from(y_from, L, z.has_value());
  const int64_t R = Wt ? Wt->size(-2) : 0;
  const int64_t K = (L + std::max<int64_t>(1, chunk) - 1) / std::max<int64_t>(1, chunk);
  TORCH_CHECK(hsave.dim() == 4 && hsave.size(0) == batch && hsave.size(1) == K && hsave.size(2) == N &&
                  hsave.size(3) == d && hsave.is_contiguous(),
              "selective_scan backward: saved states have shape ", hsave.sizes());
  check_btk(dout, "grad_output", batch, L - y_from, d);
  TORCH_CHECK(act_dtype_ok(dout, u.scalar_type()), "selective_scan backward: grad_output must have u's dtype (or "
              "bfloat16 for float32 u), got ", dout.scalar_type());
  if (dhlast) {
    TORCH_CHECK(dhlast->dim() == 3 && dhlast->size(0) == batch && dhlast->size(1) == N && dhlast->size(2) == d &&
                    dhlast->is_contiguous(),
                "selective_scan backward: grad of the final state must be contiguous (batch, d_state, d_inner)");
  }
  if (ypre && ypre->numel() > 0) {
    TORCH_CHECK(ypre->is_contiguous() && ypre->sizes().equals({batch, L, d}) && ypre->scalar_type() == u.scalar_type(),
                "selective_scan backward: saved y must be contiguous (batch, seq_len, d_inner)");
  }
  // Channel groups: enough (batch x group) tasks to feed every thread; partials summed after.
  constexpr int64_t kL32 = 16;
  const int64_t nblk = (d + kL32 - 1) / kL32;
  const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
  const int64_t groups = std::max<int64_t>(1, std::min(nblk, (want + batch - 1) / std::max<int64_t>(1, batch)));
  auto opt = u.options();
  at::Tensor du = at::empty({batch, L, d}, opt);
  at::Tensor ddelta = at::empty({need_ddelta ? batch : 0, L, d}, opt);
  at::Tensor dz;
  if (z && dz_out) {
    check_btk(*dz_out, "dz_out", batch, L, d);
    TORCH_CHECK(dz_out->scalar_type() == z->scalar_type(), "selective_scan backward: dz_out must have z's dtype");
    dz = *dz_out;
  } else {
    dz = at::empty({z ? batch : 0, L, d}, z ? z->options() : opt);
  }
  const int64_t P = (N + 2 + R) * d, S = R + 2 * N;
  at::Tensor partials = at::empty({batch, P}, opt);
  at::Tensor dA = partials.narrow(1, 0, N * d).view({batch, N, d});
  at::Tensor dD = partials.narrow(1, N * d, d);
  at::Tensor dbias = partials.narrow(1, (N + 1) * d, d);
  at::Tensor dW = partials.narrow(1, (N + 2) * d, R * d).view({batch, R, d});
  at::Tensor dxdbl = at::zeros({groups, batch, L, S}, opt);
  at::Tensor ddtlow = dxdbl.narrow(3, 0, R);
  at::Tensor dB = dxdbl.narrow(3, R, N);
  at::Tensor dC = dxdbl.narrow(3, R + N, N);
  at::Tensor dh0 = at::empty({batch, N, d}, opt);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mambacast_scan_bwd", [&] {
    Args<scalar_t> a;
    fill_common<scalar_t>(a, u, delta, At, B, C, D, z, bias, Wt, softplus, chunk);
    a.fast_exp = fast_exp;
    a.y0 = y_from;
    a.hsave_in = hsave.data_ptr<scalar_t>();
    if (z && ypre && ypre->numel() > 0) a.ypre_in = ypre->data_ptr<scalar_t>();
    a.dout = act<scalar_t>(dout);
    if (dhlast) a.dhlast = dhlast->data_ptr<scalar_t>();
    a.du = du.data_ptr<scalar_t>();
    a.write_ddelta = need_ddelta;
    if (need_ddelta) a.ddelta = ddelta.data_ptr<scalar_t>();
    if (z) a.dz = act<scalar_t>(dz);
    scalar_t* part = partials.data_ptr<scalar_t>();
    a.pstride = P;
    a.dA = part;
    a.dD = part + N * d;
    a.dbias = part + (N + 1) * d;
    a.dh0 = dh0.data_ptr<scalar_t>();
    scalar_t* dx = dxdbl.data_ptr<scalar_t>();
    a.dstride = S;
    a.dB = dx + R;
    a.dC = dx + R + N;
    if (R) {
      a.ddtlow = dx;
      a.dW = part + (N + 2) * d;
    }
    run_bwd<scalar_t>(a, groups);
  });
  return {du, ddelta, dz, dA, dB, dC, dD, dbias, dh0, ddtlow, dW, dxdbl, partials};
}

// ---------------------------------------------------------------- causal depthwise conv1d (+ SiLU)
//   pre_t = bias + sum_k w_k * x_{t-(K-1)+k}      x_{-j} = x_prev[K-1-j] (or 0)
//   out_t = silu(pre_t) (or pre_t)
// x: (batch, seq_len, d) with unit channel stride, T or (T = float) bfloat16; wt: (K, d); x_prev: (batch, K-1, d).
// dx has x's dtype; everything else is T.
constexpr int kMaxConv = 16;

template <typename T>
struct ConvArgs {
  int64_t batch = 0, L = 0, d = 0, K = 0;
  int64_t M = 1, rows = 1;  // stacked models: wt (M, K, d), bias (M, d); row b uses model b / rows
  Act<T> x;
  Ptr2<T> dout;
  const T* wt = nullptr;
  const T* bias = nullptr;
  const T* xprev = nullptr;
  bool silu = true;
  T* out = nullptr;      // (batch, L, d)
  Act<T> dx;             // rows strided
  T* dw = nullptr;       // (batch, K, d)
  T* db = nullptr;       // (batch, d)
  T* dxprev = nullptr;   // (batch, K-1, d)
};

template <typename T, int KS>
void conv_fwd_block(const ConvArgs<T>& a, int64_t b, int64_t c0, int cnt) {
  using V = typename VT<T>::V;
  const int K = KS > 0 ? KS : static_cast<int>(a.K);
  const int64_t d = a.d;
  V w[kMaxConv], xw[kMaxConv];
  for (int k = 0; k < K; ++k) {
    w[k] = vload(a.wt + k * d + c0, cnt);
    xw[k] = (k >= 1 && a.xprev) ? vload(a.xprev + (b * (K - 1) + k - 1) * d + c0, cnt) : V{};
  }
  const V bv = a.bias ? vload(a.bias + c0, cnt) : V{};
  for (int64_t t = 0; t < a.L; ++t) {
    __builtin_prefetch(a.x.at(b, t + 8, c0));
#pragma GCC unroll 16
    for (int k = 0; k + 1 < K; ++k) xw[k] = xw[k + 1];
    xw[K - 1] = a.x.load(b, t, c0, cnt);
    V pre = bv;
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) pre += w[k] * xw[k];
    if (a.silu) pre *= vsigmoid(pre);
    vstore(a.out + (b * a.L + t) * d + c0, pre, cnt);
  }
}

template <typename T, int KS>
void conv_bwd_block(const ConvArgs<T>& a, int64_t b, int64_t c0, int cnt) {
  using V = typename VT<T>::V;
  const int K = KS > 0 ? KS : static_cast<int>(a.K);
  const int64_t d = a.d;
  V w[kMaxConv], xw[kMaxConv], gp[kMaxConv], dw[kMaxConv];
  for (int k = 0; k < K; ++k) {
    w[k] = vload(a.wt + k * d + c0, cnt);
    xw[k] = (k >= 1 && a.xprev) ? vload(a.xprev + (b * (K - 1) + k - 1) * d + c0, cnt) : V{};
    gp[k] = V{};  // gp[k] = dpre_{t-(K-1)+k}: the last K pre-activation gradients
    dw[k] = V{};
  }
  const V bv = a.bias ? vload(a.bias + c0, cnt) : V{};
  V dbv{};
  // dx_s = sum_k w_k dpre_{s+K-1-k}: complete once dpre_{s+K-1} is known, i.e. at t = s + K - 1.
  for (int64_t t = 0; t < a.L + K - 1; ++t) {
#pragma GCC unroll 16
    for (int k = 0; k + 1 < K; ++k) {
      xw[k] = xw[k + 1];
      gp[k] = gp[k + 1];
    }
    if (t < a.L) {
      __builtin_prefetch(a.x.at(b, t + 8, c0));
      __builtin_prefetch(a.dout.at(b, t + 8) + c0);
      xw[K - 1] = a.x.load(b, t, c0, cnt);
      V pre = bv;
#pragma GCC unroll 16
      for (int k = 0; k < K; ++k) pre += w[k] * xw[k];
      V g = vload(a.dout.at(b, t) + c0, cnt);
      if (a.silu) {
        const V sg = vsigmoid(pre);
        g *= sg * (1.0f + pre * (1.0f - sg));
      }
      gp[K - 1] = g;
#pragma GCC unroll 16
      for (int k = 0; k < K; ++k) dw[k] += g * xw[k];
      dbv += g;
    } else {
      xw[K - 1] = V{};
      gp[K - 1] = V{};
    }
    const int64_t s = t - (K - 1);
    V dx{};
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) dx += w[k] * gp[K - 1 - k];
    if (s >= 0) {
      a.dx.store(b, s, c0, dx, cnt);
    } else if (a.dxprev) {
      vstore(a.dxprev + (b * (K - 1) + (s + K - 1)) * d + c0, dx, cnt);
    }
  }
  for (int k = 0; k < K; ++k) vstore(a.dw + (b * K + k) * d + c0, dw[k], cnt);
  vstore(a.db + b * d + c0, dbv, cnt);
}

template <typename T, int KS, bool BWD>
void run_conv(const ConvArgs<T>& a) {
  constexpr int L = VT<T>::L;
  const int64_t nblk = (a.d + L - 1) / L, per = BWD ? blocks_per_task(a.dx) : 1, ntask = (nblk + per - 1) / per;
  parallel_tasks(
      a.batch * ntask, [] { return 0; },
      [&](int, int64_t i) {
        const int64_t b = i / ntask;
        ConvArgs<T> ar = a;
        if (a.M > 1) {
          const int64_t m = b / a.rows;
          ar.wt += m * a.K * a.d;
          if (ar.bias) ar.bias += m * a.d;
        }
        for (int64_t blk = (i % ntask) * per; blk < std::min(nblk, (i % ntask + 1) * per); ++blk) {
          const int64_t c0 = blk * L;
          const int cnt = static_cast<int>(std::min<int64_t>(L, a.d - c0));
          if (BWD) {
            conv_bwd_block<T, KS>(ar, b, c0, cnt);
          } else {
            conv_fwd_block<T, KS>(ar, b, c0, cnt);
          }
        }
      });
}

template <typename T, bool BWD>
void dispatch_conv(const ConvArgs<T>& a) {
  if (a.K == 4) {
    run_conv<T, 4, BWD>(a);
  } else {
    run_conv<T, 0, BWD>(a);
  }
}

void check_conv(const at::Tensor& x, const at::Tensor& wt, const std::optional<at::Tensor>& bias,
                const std::optional<at::Tensor>& xprev) {
  TORCH_CHECK(x.device().is_cpu() && (wt.scalar_type() == at::kFloat || wt.scalar_type() == at::kDouble) &&
                  act_dtype_ok(x, wt.scalar_type()),
              "causal_conv1d (fused CPU kernel): float32/float64 CPU tensors only (x may be bfloat16 for a float32 "
              "weight)");
  TORCH_CHECK(x.dim() == 3, "causal_conv1d: x must be (batch, seq_len, d)");
  const int64_t batch = x.size(0), d = x.size(2);
  TORCH_CHECK((wt.dim() == 2 || wt.dim() == 3) && wt.size(-1) == d && wt.size(-2) >= 1 && wt.size(-2) <= kMaxConv &&
                  wt.is_contiguous(),
              "causal_conv1d: weight must be contiguous (K, d), or (n_models, K, d) for stacked models, with 1 <= K <= ",
              kMaxConv);
  check_btk(x, "x", batch, x.size(1), d);
  const int64_t K = wt.size(-2);
  const bool stacked = wt.dim() == 3;
  TORCH_CHECK(!stacked || (wt.size(0) >= 1 && batch % wt.size(0) == 0), "causal_conv1d: batch ", batch,
              " is not a multiple of the ", wt.size(0), " stacked models");
  if (bias) {
    TORCH_CHECK(bias->dim() == (stacked ? 2 : 1) && (!stacked || bias->size(0) == wt.size(0)) && bias->size(-1) == d &&
                    bias->is_contiguous() && bias->scalar_type() == wt.scalar_type(),
                "causal_conv1d: bias must be contiguous ([n_models,] d) of the weight's dtype");
  }
  if (xprev) {
    TORCH_CHECK(xprev->dim() == 3 && xprev->size(0) == batch && xprev->size(1) == K - 1 && xprev->size(2) == d &&
                    xprev->is_contiguous() && xprev->scalar_type() == wt.scalar_type(),
                "causal_conv1d: x_prev must be contiguous (batch, K-1, d) of the weight's dtype");
  }
}

at::Tensor conv_fwd(const at::Tensor& x, const at::Tensor& wt, const std::optional<at::Tensor>& bias,
                    const std::optional<at::Tensor>& xprev, bool silu) {
  check_conv(x, wt, bias, xprev);
  at::Tensor out = at::empty({x.size(0), x.size(1), x.size(2)}, wt.options());
  AT_DISPATCH_FLOATING_TYPES(wt.scalar_type(), "mambacast_conv_fwd", [&] {
    ConvArgs<scalar_t> a;
    a.batch = x.size(0);
    a.L = x.size(1);
    a.d = x.size(2);
    a.K = wt.size(-2);
    a.M = wt.dim() == 3 ? wt.size(0) : 1;
    a.rows = a.batch / a.M;
    a.x = act<scalar_t>(x);
    a.wt = wt.data_ptr<scalar_t>();
    if (bias) a.bias = bias->data_ptr<scalar_t>();
    if (xprev && a.K > 1) a.xprev = xprev->data_ptr<scalar_t>();
    a.silu = silu;
    a.out = out.data_ptr<scalar_t>();
    dispatch_conv<scalar_t, false>(a);
  });
  return out;
}

// Returns dx (written into dx_out if given, e.g. a strided half of a larger gradient), dw (K, d)
// partial over batch as (batch, K, d), dbias partial (batch, d), dx_prev (batch, K-1, d).
std::vector<at::Tensor> conv_bwd(const at::Tensor& x, const at::Tensor& wt, const std::optional<at::Tensor>& bias,
                                 const std::optional<at::Tensor>& xprev, const at::Tensor& dout, bool silu,
                                 const std::optional<at::Tensor>& dx_out) {
  check_conv(x, wt, bias, xprev);
  const int64_t batch = x.size(0), L = x.size(1), d = x.size(2), K = wt.size(-2);
  check_btk(dout, "grad_output", batch, L, d);
  at::Tensor dx;
  TORCH_CHECK(dout.scalar_type() == wt.scalar_type(), "causal_conv1d backward: grad_output must have the weight's dtype");
  if (dx_out) {
    check_btk(*dx_out, "dx_out", batch, L, d);
    TORCH_CHECK(dx_out->scalar_type() == x.scalar_type(), "causal_conv1d backward: dx_out must have x's dtype");
    dx = *dx_out;
  } else {
    dx = at::empty({batch, L, d}, x.options());
  }
  at::Tensor dw = at::empty({batch, K, d}, wt.options());
  at::Tensor db = at::empty({batch, d}, wt.options());
  at::Tensor dxprev = at::empty({xprev ? batch : 0, K - 1, d}, wt.options());
  AT_DISPATCH_FLOATING_TYPES(wt.scalar_type(), "mambacast_conv_bwd", [&] {
    ConvArgs<scalar_t> a;
    a.batch = batch;
    a.L = L;
    a.d = d;
    a.K = K;
    a.M = wt.dim() == 3 ? wt.size(0) : 1;
    a.rows = batch / a.M;
    a.x = act<scalar_t>(x);
    a.dout = ptr2<scalar_t>(dout);
    a.wt = wt.data_ptr<scalar_t>();
    if (bias) a.bias = bias->data_ptr<scalar_t>();
    if (xprev && K > 1) {
      a.xprev = xprev->data_ptr<scalar_t>();
      a.dxprev = dxprev.data_ptr<scalar_t>();
    }
    a.silu = silu;
    a.dx = act<scalar_t>(dx);
    a.dw = dw.data_ptr<scalar_t>();
    a.db = db.data_ptr<scalar_t>();
    dispatch_conv<scalar_t, true>(a);
  });
  return {dx, dw, db, dxprev};
}

// ---------------------------------------------------------------- one recurrent step of a Mamba block
// hidden (batch, d_model) -> hidden + out_proj(y * silu(z)) for one new time step, with the new conv
// state (batch, d_inner, d_conv) (the last d_conv conv inputs) and SSM state (batch, d_inner, d_state).
// Everything (LayerNorm, in_proj, conv, x_proj, dt_proj, softplus, the state update, the gate,
// out_proj) runs in one call per layer, single-threaded for small batches: the latency of one new
// bar is a few microseconds of arithmetic instead of ~25 framework ops.
template <typename T>
struct StepArgs {
  int64_t batch = 0, dm = 0, d = 0, K = 0, N = 0, R = 0;
  T eps = 0;
  const T *hidden, *nw, *nb, *Win, *cw, *cb, *Wx, *Wdt, *dtb, *A, *D, *Wout, *conv, *ssm;
  T *out, *conv_new, *ssm_new;
};

template <typename T>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

template <typename T>
void step_row(const StepArgs<T>& a, int64_t b, T* work) {
  const int64_t dm = a.dm, d = a.d, K = a.K, N = a.N, R = a.R;
  const T* h = a.hidden + b * dm;
  T* xn = work;           // (dm)
  T* xz = xn + dm;        // (2d)
  T* xc = xz + 2 * d;     // (d)
  T* xdbl = xc + d;       // (R + 2N)
  T* y = xdbl + R + 2 * N;  // (d)
  T mean = 0, var = 0;
  for (int64_t i = 0; i < dm; ++i) mean += h[i];
  mean /= static_cast<T>(dm);
  for (int64_t i = 0; i < dm; ++i) var += (h[i] - mean) * (h[i] - mean);
  const T inv = T(1) / std::sqrt(var / static_cast<T>(dm) + a.eps);
  for (int64_t i = 0; i < dm; ++i) xn[i] = (h[i] - mean) * inv * a.nw[i] + a.nb[i];
  for (int64_t j = 0; j < 2 * d; ++j) xz[j] = dot(a.Win + j * dm, xn, dm);
  for (int64_t c = 0; c < d; ++c) {
    const T* cs = a.conv + (b * d + c) * K;
    T* cn = a.conv_new + (b * d + c) * K;
    for (int64_t k = 0; k + 1 < K; ++k) cn[k] = cs[k + 1];
    cn[K - 1] = xz[c];
    T pre = a.cb ? a.cb[c] : T(0);
    for (int64_t k = 0; k < K; ++k) pre += a.cw[c * K + k] * cn[k];
    xc[c] = pre / (T(1) + std::exp(-pre));
  }
  for (int64_t j = 0; j < R + 2 * N; ++j) xdbl[j] = dot(a.Wx + j * d, xc, d);
  const T* Bv = xdbl + R;
  const T* Cv = xdbl + R + N;
  for (int64_t c = 0; c < d; ++c) {
    T raw = a.dtb ? a.dtb[c] : T(0);
    for (int64_t r = 0; r < R; ++r) raw += a.Wdt[c * R + r] * xdbl[r];
    const T dt = raw > T(20) ? raw : std::log1p(std::exp(raw));  // torch's softplus (threshold 20)
    const T du = dt * xc[c];
    const T* hs = a.ssm + (b * d + c) * N;
    T* hn = a.ssm_new + (b * d + c) * N;
    T acc = 0;
    for (int64_t n = 0; n < N; ++n) {
      const T hv = std::exp(dt * a.A[c * N + n]) * hs[n] + du * Bv[n];
      hn[n] = hv;
      acc += hv * Cv[n];
    }
    const T zz = xz[d + c];
    y[c] = (acc + (a.D ? a.D[c] : T(0)) * xc[c]) * (zz / (T(1) + std::exp(-zz)));
  }
  for (int64_t i = 0; i < dm; ++i) a.out[b * dm + i] = h[i] + dot(a.Wout + i * d, y, d);
}

std::vector<at::Tensor> mamba_step(const at::Tensor& hidden, const at::Tensor& norm_w, const at::Tensor& norm_b,
                                   double eps, const at::Tensor& in_w, const at::Tensor& conv_w,
                                   const std::optional<at::Tensor>& conv_b, const at::Tensor& x_w,
                                   const at::Tensor& dt_w, const std::optional<at::Tensor>& dt_b, const at::Tensor& A,
                                   const std::optional<at::Tensor>& D, const at::Tensor& out_w,
                                   const at::Tensor& conv_state, const at::Tensor& ssm_state) {
  TORCH_CHECK(hidden.device().is_cpu() && (hidden.scalar_type() == at::kFloat || hidden.scalar_type() == at::kDouble),
              "mamba_step (fused CPU kernel): float32/float64 CPU tensors only");
  TORCH_CHECK(hidden.dim() == 2, "mamba_step: hidden must be (batch, d_model)");
  const int64_t batch = hidden.size(0), dm = hidden.size(1), d = conv_w.size(0), K = conv_w.size(1);
  const int64_t N = A.size(1), R = dt_w.size(1);
  auto ok = [&](const at::Tensor& t, std::initializer_list<int64_t> shape) {
    return t.is_contiguous() && t.scalar_type() == hidden.scalar_type() && t.sizes().equals(shape);
  };
  TORCH_CHECK(hidden.is_contiguous() && ok(norm_w, {dm}) && ok(norm_b, {dm}) && ok(in_w, {2 * d, dm}) &&
                  ok(conv_w, {d, K}) && ok(x_w, {R + 2 * N, d}) && ok(dt_w, {d, R}) && ok(A, {d, N}) &&
                  ok(out_w, {dm, d}) && ok(conv_state, {batch, d, K}) && ok(ssm_state, {batch, d, N}) &&
                  (!conv_b || ok(*conv_b, {d})) && (!dt_b || ok(*dt_b, {d})) && (!D || ok(*D, {d})),
              "mamba_step: parameter or state shapes/dtypes/layouts do not match the block");
  at::Tensor out = at::empty({batch, dm}, hidden.options());
  at::Tensor conv_new = at::empty({batch, d, K}, hidden.options());
  at::Tensor ssm_new = at::empty({batch, d, N}, hidden.options());
  AT_DISPATCH_FLOATING_TYPES(hidden.scalar_type(), "mambacast_step", [&] {
    StepArgs<scalar_t> a;
    a.batch = batch;
    a.dm = dm;
    a.d = d;
    a.K = K;
    a.N = N;
    a.R = R;
    a.eps = static_cast<scalar_t>(eps);
    a.hidden = hidden.data_ptr<scalar_t>();
    a.nw = norm_w.data_ptr<scalar_t>();
    a.nb = norm_b.data_ptr<scalar_t>();
    a.Win = in_w.data_ptr<scalar_t>();
    a.cw = conv_w.data_ptr<scalar_t>();
    a.cb = conv_b ? conv_b->data_ptr<scalar_t>() : nullptr;
    a.Wx = x_w.data_ptr<scalar_t>();
    a.Wdt = dt_w.data_ptr<scalar_t>();
    a.dtb = dt_b ? dt_b->data_ptr<scalar_t>() : nullptr;
    a.A = A.data_ptr<scalar_t>();
    a.D = D ? D->data_ptr<scalar_t>() : nullptr;
    a.Wout = out_w.data_ptr<scalar_t>();
    a.conv = conv_state.data_ptr<scalar_t>();
    a.ssm = ssm_state.data_ptr<scalar_t>();
    a.out = out.data_ptr<scalar_t>();
    a.conv_new = conv_new.data_ptr<scalar_t>();
    a.ssm_new = ssm_new.data_ptr<scalar_t>();
    const int64_t work = dm + 3 * d + R + 2 * N + d;
    // About 2 * (3 * dm * d + d * (R + 2N) + d * N) flops per row: rows in parallel only when a
    // task has enough of them to pay for waking a thread.
    const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, 3 * dm * d + d * N));
    at::parallel_for(0, batch, grain, [&](int64_t lo, int64_t hi) {
      std::vector<scalar_t> buf(work);
      for (int64_t b = lo; b < hi; ++b) step_row<scalar_t>(a, b, buf.data());
    });
  });
  return {out, conv_new, ssm_new};
}


// ---------------------------------------------------------------- the scan's exponential, for tests
// exp2 of a contiguous float32 tensor by the vector exp2 the scan uses (vexp2 in simd.h; with fast, vexp2_fast, its
// exponential under bfloat16 autocast), so that the tests can measure its error against float64 over every float32
// input in a range.
at::Tensor simd_exp2(const at::Tensor& x, bool fast) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "simd_exp2: a contiguous float32 CPU tensor");
  at::Tensor out = at::empty(x.sizes(), x.options());
  using V = VT<float>::V;
  constexpr int L = VT<float>::L;
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t n = x.numel();
  at::parallel_for(0, (n + L - 1) / L, 4096, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int cnt = static_cast<int>(std::min<int64_t>(L, n - i * L));
      const VT<float>::V v = vload(xp + i * L, cnt);
      vstore(op + i * L, fast ? vexp2_fast(v) : vexp2(v), cnt);
    }
  });
  return out;
}

#include "layer_norm.h"
#include "head_loss.h"
#include "mamba_block.h"

}  // namespace

TORCH_LIBRARY(mambacast, m) {
  m.def(
      "scan_fwd(Tensor u, Tensor delta, Tensor At, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
      "Tensor? dt_wt, Tensor? h0, bool softplus, int chunk, bool save_states, bool fast_exp=False, int y_from=0) -> "
      "(Tensor, Tensor, Tensor, Tensor)",
      &scan_fwd);
  m.def(
      "scan_bwd(Tensor u, Tensor delta, Tensor At, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
      "Tensor? dt_wt, Tensor hsave, Tensor? ypre, Tensor dout, Tensor? dhlast, bool softplus, int chunk, "
      "Tensor? dz_out, "
      "bool need_ddelta, bool fast_exp=False, int y_from=0) -> Tensor[]",
      &scan_bwd);
  m.def(
      "mamba_step(Tensor hidden, Tensor norm_w, Tensor norm_b, float eps, Tensor in_w, Tensor conv_w, Tensor? conv_b, "
      "Tensor x_w, Tensor dt_w, Tensor? dt_b, Tensor A, Tensor? D, Tensor out_w, Tensor conv_state, "
      "Tensor ssm_state) -> Tensor[]",
      &mamba_step);
  m.def(
      "mamba_block(Tensor hidden, Tensor norm_w, Tensor norm_b, float eps, Tensor in_w, Tensor conv_w, Tensor conv_b, "
      "Tensor x_w, Tensor dt_w, Tensor dt_b, Tensor A_log, Tensor D, Tensor out_w, bool lowp, bool last_only, "
      "int chunk) -> Tensor",
      &mamba_block);
  m.def("simd_exp2(Tensor x, bool fast=False) -> Tensor", &simd_exp2);
  m.def("layer_norm(Tensor x, Tensor w, Tensor b, float eps) -> Tensor", &layer_norm);
  m.def("layer_norm_fwd(Tensor x, Tensor w, Tensor b, float eps, bool save) -> Tensor[]", &layer_norm_fwd);
  m.def("layer_norm_bwd(Tensor x, Tensor w, Tensor b, Tensor mean, Tensor rstd, Tensor dout) -> Tensor[]",
        &layer_norm_bwd);
  m.def(
      "head_loss(Tensor h, Tensor wl, Tensor bl, Tensor ws, Tensor bs, Tensor df_raw, Tensor base, Tensor y, "
      "bool mse) -> Tensor[]",
      &head_loss);
  m.def("conv_fwd(Tensor x, Tensor wt, Tensor? bias, Tensor? x_prev, bool silu) -> Tensor", &conv_fwd);
  m.def(
      "conv_bwd(Tensor x, Tensor wt, Tensor? bias, Tensor? x_prev, Tensor dout, bool silu, Tensor? dx_out) -> Tensor[]",
      &conv_bwd);
}

