// Fused CPU selective scan (forward and backward) for mambacast.
//
//   h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        h_{-1} = h0 (or 0)
//   y_t = C_t . h_t + D * u_t                                      out_t = y_t * silu(z_t) (if z)
//   delta_t = softplus(delta_raw_t + delta_bias) (if requested), else delta_raw_t + delta_bias
//
// Layout: u, delta, z, y are (batch, seq_len, d_inner) with unit stride along d_inner; B, C are
// (batch, seq_len, d_state) with unit stride along d_state. A is passed transposed, (d_state, d_inner).
// States are (batch, d_state, d_inner).
//
// Vectorisation runs over channels: one task owns a block of L consecutive channels of one batch
// row (L = 16 floats or 8 doubles, one 64-byte vector) and keeps its d_state state vectors in
// registers/stack. The d_state loop is unrolled when d_state is a compile-time size. No
// (batch, seq_len, d_inner, d_state) tensor exists: the forward saves only the state at chunk
// boundaries; the backward recomputes each chunk's states and exp(delta*A) from its boundary state
// into a (chunk, d_state, L) buffer per task, then runs the reverse recurrence. Reductions across
// channels (dB, dC) use a transpose-add tree over L vectors.
//
// Built on first use by mambacast.ops._loader with torch.utils.cpp_extension.load.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int kMaxState = 1024;

template <typename T>
struct VT;
template <>
struct VT<float> {
  typedef float V __attribute__((vector_size(64)));
  typedef float H __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(64)));
  static constexpr int L = 16;
};
template <>
struct VT<double> {
  typedef double V __attribute__((vector_size(64)));
  typedef double H __attribute__((vector_size(32)));
  typedef int64_t I __attribute__((vector_size(64)));
  static constexpr int L = 8;
};

template <typename To, typename From>
inline To bitcast(const From& f) {
  static_assert(sizeof(To) == sizeof(From), "size mismatch");
  To t;
  std::memcpy(&t, &f, sizeof(To));
  return t;
}

template <typename V, typename T>
inline V bcast(T s) {
  return V{} + s;
}

// ---------------------------------------------------------------- vector maths
// exp: Cephes range reduction x = n ln2 + r, |r| <= ln2/2, then 2^n built in the exponent bits.
inline VT<float>::V vexp(VT<float>::V x) {
  using V = VT<float>::V;
  using I = VT<float>::I;
  const float lo = -87.33654475f, hi = 88.0f;
  V xc = x < lo ? bcast<V>(lo) : x;
  xc = xc > hi ? bcast<V>(hi) : xc;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  V t = xc * 1.44269504088896341f + magic;
  I n = bitcast<I>(t) - bitcast<int32_t>(magic);
  V fx = t - magic;
  V r = xc - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  V p = bcast<V>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  V res = p * bitcast<V>((n + 127) << 23);
  res = x < lo ? bcast<V>(0.0f) : res;
  res = x > 88.72283905f ? bcast<V>(std::numeric_limits<float>::infinity()) : res;
  return res;
}

inline VT<double>::V vexp(VT<double>::V x) {
  using V = VT<double>::V;
  using I = VT<double>::I;
  const double lo = -708.3964185322641, hi = 709.0;
  V xc = x < lo ? bcast<V>(lo) : x;
  xc = xc > hi ? bcast<V>(hi) : xc;
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  V t = xc * 1.4426950408889634 + magic;
  I n = bitcast<I>(t) - bitcast<int64_t>(magic);
  V fx = t - magic;
  V r = xc - fx * 6.93145751953125e-1;
  r = r - fx * 1.42860682030941723212e-6;
  V xx = r * r;
  V px = r * ((1.26177193074810590878e-4 * xx + 3.02994407707441961300e-2) * xx + 9.99999999999999999910e-1);
  V qx = ((3.00198505138664455042e-6 * xx + 2.52448340349684104192e-3) * xx + 2.27265548208155028766e-1) * xx +
         2.00000000000000000009e0;
  V e = 1.0 + 2.0 * px / (qx - px);
  V res = e * bitcast<V>((n + 1023) << 52);
  res = x < lo ? bcast<V>(0.0) : res;
  res = x > 709.782712893384 ? bcast<V>(std::numeric_limits<double>::infinity()) : res;
  return res;
}

// 2^t. With AVX-512 (float): t = n + f, |f| <= 1/2, 2^f by a degree-6 near-minimax polynomial
// (Chebyshev interpolant, max relative error ~1e-7 in float arithmetic) and vscalefps for 2^n,
// which also gives 0 / inf on underflow / overflow. Elsewhere: exp(t ln 2) above.
// The scan feeds it t = (delta * log2 e) * A, so one multiply per state element.
inline VT<float>::V vexp2(VT<float>::V t) {
#if defined(__AVX512F__)
  using V = VT<float>::V;
  const __m512 x = (__m512)t;
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const V f = (V)_mm512_sub_ps(x, n);
  V p = bcast<V>(1.5461444724808513e-4f);
  p = p * f + 1.3400428177711937e-3f;
  p = p * f + 9.61805667843204e-3f;
  p = p * f + 5.550327226669895e-2f;
  p = p * f + 2.4022650922289554e-1f;
  p = p * f + 6.931472067028329e-1f;
  p = p * f + 1.0f;
  return (V)_mm512_scalef_ps((__m512)p, n);
#else
  return vexp(t * 0.6931471805599453f);
#endif
}

inline VT<double>::V vexp2(VT<double>::V t) { return vexp(t * 0.6931471805599453094); }

// log1p(e) for e in [0, 1] via 2 atanh(s), s = e / (2 + e) in [0, 1/3]: an odd series in s.
template <typename V>
inline V log1p_unit(V e) {
  V s = e / (2.0f + e);
  V s2 = s * s;
  V p;
  if constexpr (sizeof(s[0]) == 4) {
    p = bcast<V>(1.0f / 15);
    p = p * s2 + 1.0f / 13;
    p = p * s2 + 1.0f / 11;
    p = p * s2 + 1.0f / 9;
    p = p * s2 + 1.0f / 7;
    p = p * s2 + 1.0f / 5;
    p = p * s2 + 1.0f / 3;
    p = p * s2 + 1.0f;
  } else {
    p = bcast<V>(1.0 / 35);
    for (int k = 16; k >= 0; --k) p = p * s2 + 1.0 / (2 * k + 1);
  }
  return 2.0f * s * p;
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)); torch returns x itself above 20, which this matches
// to rounding.
template <typename V>
inline V vsoftplus(V x) {
  V ax = x < 0 ? -x : x;
  V mx = x > 0 ? x : V{};
  return mx + log1p_unit(vexp(-ax));
}

template <typename V>
inline V vsigmoid(V x) {
  return 1.0f / (1.0f + vexp(-x));
}

// ---------------------------------------------------------------- loads, stores, lane reductions
template <typename T>
inline typename VT<T>::V vload(const T* p, int cnt) {
  using V = typename VT<T>::V;
  V v;
  if (__builtin_expect(cnt == VT<T>::L, 1)) {
    std::memcpy(&v, p, sizeof(V));
  } else {
    v = V{};
    for (int i = 0; i < cnt; ++i) v[i] = p[i];
  }
  return v;
}

template <typename T>
inline void vstore(T* p, typename VT<T>::V v, int cnt) {
  if (__builtin_expect(cnt == VT<T>::L, 1)) {
    std::memcpy(p, &v, sizeof(v));
  } else {
    for (int i = 0; i < cnt; ++i) p[i] = v[i];
  }
}

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define MC_SHUF(x, y, ...) __builtin_shufflevector(x, y, __VA_ARGS__)
#else
#define MC_SHUF(x, y, ...) __builtin_shuffle(x, y, (I){__VA_ARGS__})
#endif

// Transpose-add trees: lane i of the result is the sum of the lanes of v[i]. The first levels
// interleave within 128-bit lanes (unpack), the last ones move 128-bit blocks, so every step is a
// single-cycle shuffle on AVX-512 (and splits cleanly on narrower machines).
inline VT<float>::V lane_sums(const VT<float>::V* v) {
  using V = VT<float>::V;
  using I = VT<float>::I;
  (void)sizeof(I);
  V a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i) {  // per 128-bit lane k: [x(4k)+x(4k+2), y(4k)+y(4k+2), x(4k+1)+x(4k+3), ...]
    V x = v[2 * i], y = v[2 * i + 1];
    a[i] = MC_SHUF(x, y, 0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29) +
           MC_SHUF(x, y, 2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31);
  }
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane k: partial sums of v[4i .. 4i+3]
    V x = a[2 * i], y = a[2 * i + 1];
    b[i] = MC_SHUF(x, y, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
           MC_SHUF(x, y, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
  }
  for (int i = 0; i < 2; ++i) {  // fold 128-bit blocks pairwise
    V x = b[2 * i], y = b[2 * i + 1];
    c[i] = MC_SHUF(x, y, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           MC_SHUF(x, y, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  }
  V x = c[0], y = c[1];
  return MC_SHUF(x, y, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
         MC_SHUF(x, y, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
}

inline VT<double>::V lane_sums(const VT<double>::V* v) {
  using V = VT<double>::V;
  using I = VT<double>::I;
  (void)sizeof(I);
  V a[4], b[2];
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane k: [x(2k)+x(2k+1), y(2k)+y(2k+1)]
    V x = v[2 * i], y = v[2 * i + 1];
    a[i] = MC_SHUF(x, y, 0, 8, 2, 10, 4, 12, 6, 14) + MC_SHUF(x, y, 1, 9, 3, 11, 5, 13, 7, 15);
  }
  for (int i = 0; i < 2; ++i) {
    V x = a[2 * i], y = a[2 * i + 1];
    b[i] = MC_SHUF(x, y, 0, 1, 4, 5, 8, 9, 12, 13) + MC_SHUF(x, y, 2, 3, 6, 7, 10, 11, 14, 15);
  }
  V x = b[0], y = b[1];
  return MC_SHUF(x, y, 0, 1, 4, 5, 8, 9, 12, 13) + MC_SHUF(x, y, 2, 3, 6, 7, 10, 11, 14, 15);
}

// out[n] += sum over lanes of v[n], n < N.
template <typename T>
inline void add_lane_sums(const typename VT<T>::V* v, int N, T* out) {
  using V = typename VT<T>::V;
  constexpr int L = VT<T>::L;
  int n0 = 0;
  for (; n0 + L <= N; n0 += L) {
    V s = lane_sums(v + n0);
    V o;
    std::memcpy(&o, out + n0, sizeof(V));
    o += s;
    std::memcpy(out + n0, &o, sizeof(V));
  }
  if (n0 < N) {
    V tmp[L];
    for (int i = 0; i < L; ++i) tmp[i] = n0 + i < N ? v[n0 + i] : V{};
    V s = lane_sums(tmp);
    for (int i = 0; n0 + i < N; ++i) out[n0 + i] += s[i];
  }
}

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

template <typename T>
struct Args {
  int64_t batch = 0, L = 0, d = 0, N = 0, chunk = 1, K = 0;
  Ptr2<T> u, delta, B, C, z, dout;
  const T* At = nullptr;      // (N, d)
  const T* D = nullptr;       // (d)
  const T* bias = nullptr;    // (d)
  const T* h0 = nullptr;      // (batch, N, d)
  const T* dhlast = nullptr;  // (batch, N, d)
  bool softplus = false;
  // forward outputs
  T* y = nullptr;      // (batch, L, d)
  T* hlast = nullptr;  // (batch, N, d)
  T* hsave = nullptr;  // (batch, K, N, d): state entering each chunk
  const T* hsave_in = nullptr;
  // backward outputs
  T *du = nullptr, *ddelta = nullptr, *dz = nullptr;  // (batch, L, d)
  T* dA = nullptr;                                    // (batch, N, d) partial over batch
  T* dB = nullptr;                                    // (groups, batch, L, N) partial over channel groups
  T* dC = nullptr;
  T* dD = nullptr;     // (batch, d)
  T* dbias = nullptr;  // (batch, d)
  T* dh0 = nullptr;    // (batch, N, d)
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

// Per-step quantities shared by every state of one chunk: delta (after bias and softplus),
// delta * log2(e), delta * u, u, sigmoid(raw delta) for the softplus derivative, and D * u.
template <typename T>
void prep_chunk(const Args<T>& a, Scratch<T>& s, int64_t b, int64_t c0, int cnt, int64_t t0, int64_t T_,
                bool backward) {
  using V = typename VT<T>::V;
  const V Dv = a.D ? vload(a.D + c0, cnt) : V{};
  const V biasv = a.bias ? vload(a.bias + c0, cnt) : V{};
  for (int64_t i = 0; i < T_; ++i) {
    __builtin_prefetch(a.delta.at(b, t0 + i + 8) + c0);
    __builtin_prefetch(a.u.at(b, t0 + i + 8) + c0);
    const V raw = vload(a.delta.at(b, t0 + i) + c0, cnt) + biasv;
    const V dt = a.softplus ? vsoftplus(raw) : raw;
    const V uv = vload(a.u.at(b, t0 + i) + c0, cnt);
    s.dt[i] = dt;
    s.dt2[i] = dt * static_cast<T>(M_LOG2E);
    s.du[i] = dt * uv;
    s.uu[i] = uv;
    s.yacc[i] = Dv * uv;
    if (backward && a.softplus) s.sig[i] = vsigmoid(raw);
  }
}

// Forward over one chunk for states n0 .. n0+ng-1: h carried in s.h; accumulates C.h into s.yacc.
// With ab/hb, also records exp(delta A) and every state for the backward.
template <typename T, int G, bool FULL, bool REC, bool ACC_Y>
inline void scan_group(const Args<T>& a, Scratch<T>& s, int64_t b, int64_t t0, int64_t T_, int n0, int ng_rt,
                       typename VT<T>::V* h_io) {
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
  for (int64_t i = 0; i < T_; ++i) {
    const T* Bt = a.B.at(b, t0 + i) + n0;
    const T* Ct = a.C.at(b, t0 + i) + n0;
    const V dt2 = s.dt2[i], du = s.du[i];
    V y = s.yacc[i];
    V* ab = rec ? s.ab.data() + i * N + n0 : nullptr;
    V* hb = rec ? s.hb.data() + i * N + n0 : nullptr;
#pragma GCC unroll 16
    for (int j = 0; j < ng; ++j) {
      const V e = vexp2(dt2 * Av[j]);
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

// Reverse recurrence over one chunk for states n0 .. n0+ng-1:
//   g_t = dL/dh_t = dy_t C_t + exp(delta_{t+1} A) g_{t+1}          (carried in s.g)
//   gz  = g_t exp(delta_t A) h_{t-1}   (gradient w.r.t. delta_t A)
// accumulating sum_n gz A and sum_n g B per step (for ddelta and du), dA, and the per-step dB, dC.
template <typename T, int G, bool FULL>
inline void reverse_group(const Args<T>& a, Scratch<T>& s, int64_t b, int64_t t0, int64_t T_, int n0, int ng_rt,
                          T* dBrow, T* dCrow) {
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
  for (int64_t i = T_ - 1; i >= 0; --i) {
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
      const V gn = g[j] + dyv * Ct[j];
      const V q = gn * ab[j];
      const V gz = q * hp[j];
      sA += gz * Av[j];
      dA[j] += gz * dt;
      sB += gn * Bt[j];
      red[j] = gn * du;
      red[G + j] = dyv * hb[j];
      g[j] = q;
    }
    if (!FULL) {
      for (int j = ng; j < G; ++j) red[j] = red[G + j] = V{};
    }
    s.sA[i] = sA;
    s.sB[i] = sB;
    const V sums = lane_sums(red);
    T* db = dBrow + (t0 + i) * N + n0;
    T* dc = dCrow + (t0 + i) * N + n0;
    if (FULL) {  // lanes 0..G-1 of sums are dB, G..2G-1 are dC: two half-vector read-modify-writes
      using H = typename VT<T>::H;
      static_assert(sizeof(H) * 2 == sizeof(V) && 2 * G == VT<T>::L, "half vector");
      H lo, hi, o;
      std::memcpy(&lo, &sums, sizeof(H));
      std::memcpy(&hi, reinterpret_cast<const char*>(&sums) + sizeof(H), sizeof(H));
      std::memcpy(&o, db, sizeof(H));
      o += lo;
      std::memcpy(db, &o, sizeof(H));
      std::memcpy(&o, dc, sizeof(H));
      o += hi;
      std::memcpy(dc, &o, sizeof(H));
    } else {
      for (int j = 0; j < ng; ++j) {
        db[j] += sums[j];
        dc[j] += sums[G + j];
      }
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < ng; ++j) {
    s.g[n0 + j] = g[j];
    s.dA[n0 + j] = dA[j];
  }
}

template <typename T, bool REC, bool ACC_Y>
void scan_groups(const Args<T>& a, Scratch<T>& s, int64_t b, int64_t t0, int64_t T_, typename VT<T>::V* h_io) {
  constexpr int G = kGroup<T>;
  for (int n0 = 0; n0 < a.N; n0 += G) {
    const int ng = static_cast<int>(std::min<int64_t>(G, a.N - n0));
    if (ng == G) {
      scan_group<T, G, true, REC, ACC_Y>(a, s, b, t0, T_, n0, ng, h_io);
    } else {
      scan_group<T, G, false, REC, ACC_Y>(a, s, b, t0, T_, n0, ng, h_io);
    }
  }
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
    scan_groups<T, false, true>(a, s, b, t0, T_, s.h.data());
    for (int64_t i = 0; i < T_; ++i) {
      V yv = s.yacc[i];
      if (a.z.p) {
        const V zv = vload(a.z.at(b, t0 + i) + c0, cnt);
        yv *= zv * vsigmoid(zv);
      }
      vstore(a.y + (b * a.L + t0 + i) * d + c0, yv, cnt);
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
  T* dBrow = a.dB + (group * a.batch + b) * a.L * N;
  T* dCrow = a.dC + (group * a.batch + b) * a.L * N;
  for (int64_t k = a.K - 1; k >= 0; --k) {
    const int64_t t0 = k * a.chunk, T_ = std::min(a.chunk, a.L - t0);
    // Recompute the chunk's exp(delta A) and states (into s.ab, s.hb) from the state entering it.
    const T* hs = a.hsave_in + ((b * a.K + k) * N) * d + c0;
    for (int64_t n = 0; n < N; ++n) s.h[n] = s.h1[n] = vload(hs + n * d, cnt);
    prep_chunk(a, s, b, c0, cnt, t0, T_, true);
    if (a.z.p) {
      scan_groups<T, true, true>(a, s, b, t0, T_, s.h1.data());
    } else {
      scan_groups<T, true, false>(a, s, b, t0, T_, s.h1.data());
    }
    // Gradient reaching y (through the z gate), and dz.
    for (int64_t i = 0; i < T_; ++i) {
      __builtin_prefetch(a.dout.at(b, t0 + i + 8) + c0);
      V dyv = vload(a.dout.at(b, t0 + i) + c0, cnt);
      if (a.z.p) {
        const V zv = vload(a.z.at(b, t0 + i) + c0, cnt);
        const V sg = vsigmoid(zv);
        vstore(a.dz + (b * a.L + t0 + i) * d + c0, dyv * s.yacc[i] * sg * (1.0f + zv * (1.0f - sg)), cnt);
        dyv = dyv * zv * sg;
      }
      s.dy[i] = dyv;
      s.sA[i] = V{};
      s.sB[i] = V{};
    }
    for (int n0 = 0; n0 < N; n0 += G) {
      const int ng = static_cast<int>(std::min<int64_t>(G, N - n0));
      if (ng == G) {
        reverse_group<T, G, true>(a, s, b, t0, T_, n0, ng, dBrow, dCrow);
      } else {
        reverse_group<T, G, false>(a, s, b, t0, T_, n0, ng, dBrow, dCrow);
      }
    }
    for (int64_t i = 0; i < T_; ++i) {
      const int64_t t = t0 + i;
      __builtin_prefetch(a.ddelta + (b * a.L + t + 8) * d + c0, 1);
      __builtin_prefetch(a.du + (b * a.L + t + 8) * d + c0, 1);
      V ddt = s.sA[i] + s.sB[i] * s.uu[i];
      if (a.softplus) ddt *= s.sig[i];
      dbiasacc += ddt;
      vstore(a.ddelta + (b * a.L + t) * d + c0, ddt, cnt);
      vstore(a.du + (b * a.L + t) * d + c0, s.sB[i] * s.dt[i] + Dv * s.dy[i], cnt);
      dDacc += s.dy[i] * s.uu[i];
    }
  }
  for (int64_t n = 0; n < N; ++n) {
    vstore(a.dA + (b * N + n) * d + c0, s.dA[n], cnt);
    vstore(a.dh0 + (b * N + n) * d + c0, s.g[n], cnt);
  }
  vstore(a.dD + b * d + c0, dDacc, cnt);
  vstore(a.dbias + b * d + c0, dbiasacc, cnt);
}

// ---------------------------------------------------------------- drivers
template <typename T>
void run_fwd(const Args<T>& a) {
  constexpr int L = VT<T>::L;
  const int64_t nblk = (a.d + L - 1) / L;
  at::parallel_for(0, a.batch * nblk, 1, [&](int64_t lo, int64_t hi) {
    Scratch<T> s(std::max<int64_t>(1, std::min(a.chunk, a.L)), a.N, false);
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t b = i / nblk, blk = i % nblk, c0 = blk * L;
      fwd_block<T>(a, s, b, c0, static_cast<int>(std::min<int64_t>(L, a.d - c0)));
    }
  });
}

template <typename T>
void run_bwd(const Args<T>& a, int64_t groups) {
  constexpr int L = VT<T>::L;
  const int64_t nblk = (a.d + L - 1) / L;
  const int64_t per_group = (nblk + groups - 1) / groups;
  at::parallel_for(0, a.batch * groups, 1, [&](int64_t lo, int64_t hi) {
    Scratch<T> s(std::max<int64_t>(1, std::min(a.chunk, a.L)), a.N, true);
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t b = i / groups, grp = i % groups;
      for (int64_t blk = grp * per_group; blk < std::min(nblk, (grp + 1) * per_group); ++blk) {
        const int64_t c0 = blk * L;
        bwd_block<T>(a, s, b, c0, static_cast<int>(std::min<int64_t>(L, a.d - c0)), grp);
      }
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
                 const std::optional<at::Tensor>& bias, bool softplus, int64_t chunk) {
  a.batch = u.size(0);
  a.L = u.size(1);
  a.d = u.size(2);
  a.N = At.size(0);
  a.chunk = std::max<int64_t>(1, chunk);
  a.K = (a.L + a.chunk - 1) / a.chunk;
  a.u = ptr2<T>(u);
  a.delta = ptr2<T>(delta);
  a.B = ptr2<T>(B);
  a.C = ptr2<T>(C);
  a.At = At.data_ptr<T>();
  if (D) a.D = D->data_ptr<T>();
  if (z) a.z = ptr2<T>(*z);
  if (bias) a.bias = bias->data_ptr<T>();
  a.softplus = softplus;
}

void check_common(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& At, const at::Tensor& B,
                  const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                  const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(u.device().is_cpu(), "selective_scan (fused CPU kernel): tensors must be on the CPU");
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble,
              "selective_scan (fused CPU kernel): float32 or float64 only, got ", u.scalar_type());
  TORCH_CHECK(u.dim() == 3, "selective_scan: u must be (batch, seq_len, d_inner)");
  const int64_t batch = u.size(0), L = u.size(1), d = u.size(2);
  TORCH_CHECK(At.dim() == 2 && At.size(1) == d && At.is_contiguous(), "selective_scan: At must be (d_state, d_inner)");
  const int64_t N = At.size(0);
  TORCH_CHECK(N >= 1 && N <= kMaxState, "selective_scan (fused CPU kernel): d_state must be in [1, ", kMaxState,
              "], got ", N);
  check_btk(u, "u", batch, L, d);
  check_btk(delta, "delta", batch, L, d);
  check_btk(B, "B", batch, L, N);
  check_btk(C, "C", batch, L, N);
  if (z) check_btk(*z, "z", batch, L, d);
  for (const at::Tensor* t : {&u, &delta, &At, &B, &C}) {
    TORCH_CHECK(t->scalar_type() == u.scalar_type(), "selective_scan: all inputs must share one dtype");
  }
  if (z) TORCH_CHECK(z->scalar_type() == u.scalar_type(), "selective_scan: z dtype");
  for (const std::optional<at::Tensor>* o : {&D, &bias}) {
    if (*o) {
      TORCH_CHECK((*o)->dim() == 1 && (*o)->size(0) == d && (*o)->is_contiguous() &&
                      (*o)->scalar_type() == u.scalar_type(),
                  "selective_scan: D and delta_bias must be contiguous (d_inner,) of the input dtype");
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scan_fwd(const at::Tensor& u, const at::Tensor& delta,
                                                        const at::Tensor& At, const at::Tensor& B,
                                                        const at::Tensor& C, const std::optional<at::Tensor>& D,
                                                        const std::optional<at::Tensor>& z,
                                                        const std::optional<at::Tensor>& bias,
                                                        const std::optional<at::Tensor>& h0, bool softplus,
                                                        int64_t chunk, bool save_states) {
  check_common(u, delta, At, B, C, D, z, bias);
  const int64_t batch = u.size(0), L = u.size(1), d = u.size(2), N = At.size(0);
  if (h0) {
    TORCH_CHECK(h0->dim() == 3 && h0->size(0) == batch && h0->size(1) == N && h0->size(2) == d &&
                    h0->is_contiguous() && h0->scalar_type() == u.scalar_type(),
                "selective_scan: h0 must be contiguous (batch, d_state, d_inner)");
  }
  at::Tensor y = at::empty({batch, L, d}, u.options());
  at::Tensor hlast = at::empty({batch, N, d}, u.options());
  const int64_t K = (L + std::max<int64_t>(1, chunk) - 1) / std::max<int64_t>(1, chunk);
  at::Tensor hsave = at::empty({save_states ? batch : 0, K, N, d}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mambacast_scan_fwd", [&] {
    Args<scalar_t> a;
    fill_common<scalar_t>(a, u, delta, At, B, C, D, z, bias, softplus, chunk);
    if (h0) a.h0 = h0->data_ptr<scalar_t>();
    a.y = y.data_ptr<scalar_t>();
    a.hlast = hlast.data_ptr<scalar_t>();
    if (save_states) a.hsave = hsave.data_ptr<scalar_t>();
    run_fwd<scalar_t>(a);
  });
  return {y, hlast, hsave};
}

std::vector<at::Tensor> scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& At,
                                 const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                                 const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& bias,
                                 const at::Tensor& hsave, const at::Tensor& dout,
                                 const std::optional<at::Tensor>& dhlast, bool softplus, int64_t chunk) {
  check_common(u, delta, At, B, C, D, z, bias);
  const int64_t batch = u.size(0), L = u.size(1), d = u.size(2), N = At.size(0);
  const int64_t K = (L + std::max<int64_t>(1, chunk) - 1) / std::max<int64_t>(1, chunk);
  TORCH_CHECK(hsave.dim() == 4 && hsave.size(0) == batch && hsave.size(1) == K && hsave.size(2) == N &&
                  hsave.size(3) == d && hsave.is_contiguous(),
              "selective_scan backward: saved states have shape ", hsave.sizes());
  check_btk(dout, "grad_output", batch, L, d);
  if (dhlast) {
    TORCH_CHECK(dhlast->dim() == 3 && dhlast->size(0) == batch && dhlast->size(1) == N && dhlast->size(2) == d &&
                    dhlast->is_contiguous(),
                "selective_scan backward: grad of the final state must be contiguous (batch, d_state, d_inner)");
  }
  // Channel groups: enough (batch x group) tasks to feed every thread; dB and dC are summed over groups after.
  constexpr int64_t kL32 = 16;
  const int64_t nblk = (d + kL32 - 1) / kL32;
  const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
  const int64_t groups = std::max<int64_t>(1, std::min(nblk, (want + batch - 1) / std::max<int64_t>(1, batch)));
  auto opt = u.options();
  at::Tensor du = at::empty({batch, L, d}, opt);
  at::Tensor ddelta = at::empty({batch, L, d}, opt);
  at::Tensor dz = at::empty({z ? batch : 0, L, d}, opt);
  at::Tensor dA = at::empty({batch, N, d}, opt);
  at::Tensor dB = at::zeros({groups, batch, L, N}, opt);
  at::Tensor dC = at::zeros({groups, batch, L, N}, opt);
  at::Tensor dD = at::empty({batch, d}, opt);
  at::Tensor dbias = at::empty({batch, d}, opt);
  at::Tensor dh0 = at::empty({batch, N, d}, opt);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mambacast_scan_bwd", [&] {
    Args<scalar_t> a;
    fill_common<scalar_t>(a, u, delta, At, B, C, D, z, bias, softplus, chunk);
    a.hsave_in = hsave.data_ptr<scalar_t>();
    a.dout = ptr2<scalar_t>(dout);
    if (dhlast) a.dhlast = dhlast->data_ptr<scalar_t>();
    a.du = du.data_ptr<scalar_t>();
    a.ddelta = ddelta.data_ptr<scalar_t>();
    if (z) a.dz = dz.data_ptr<scalar_t>();
    a.dA = dA.data_ptr<scalar_t>();
    a.dB = dB.data_ptr<scalar_t>();
    a.dC = dC.data_ptr<scalar_t>();
    a.dD = dD.data_ptr<scalar_t>();
    a.dbias = dbias.data_ptr<scalar_t>();
    a.dh0 = dh0.data_ptr<scalar_t>();
    run_bwd<scalar_t>(a, groups);
  });
  return {du, ddelta, dz, dA, dB, dC, dD, dbias, dh0};
}

}  // namespace

TORCH_LIBRARY(mambacast, m) {
  m.def(
      "scan_fwd(Tensor u, Tensor delta, Tensor At, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
      "Tensor? h0, bool softplus, int chunk, bool save_states) -> (Tensor, Tensor, Tensor)",
      &scan_fwd);
  m.def(
      "scan_bwd(Tensor u, Tensor delta, Tensor At, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
      "Tensor hsave, Tensor dout, Tensor? dhlast, bool softplus, int chunk) -> Tensor[]",
      &scan_bwd);
}
