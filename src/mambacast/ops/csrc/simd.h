// Vector maths for the fused CPU kernels (selective_scan.cpp): one 64-byte vector type per dtype
// (16 floats / 8 doubles) written with GCC vector extensions, so the same code compiles to zmm
// instructions with -march=native on an AVX-512 CPU and splits into ymm/xmm (or scalar) code
// elsewhere; the hot functions (exp2, 1/x) have explicit AVX-512 intrinsics under __AVX512F__
// beside their portable form. exp, exp2, log1p on [0, 1], softplus/sigmoid, masked loads and stores
// (also of bfloat16 activations, as float32 vectors), and transpose-add trees that sum the lanes of 16 (8) vectors at once.
//
// Everything is in an anonymous namespace: two builds of the kernel (different flags or sources)
// loaded into one process must not bind to each other's copies of these functions.

#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

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

// 2^t, the scan's exponential (called with t = (delta * log2 e) * A, one multiply per state element).
// With AVX-512: t = floor(t) + f, f in [0, 1). `vreduceps` (AVX512DQ) gives f in one instruction;
// 2^f is a degree-5 polynomial with p(0) = 1 exactly whose coefficients minimise the maximum absolute
// error on [0, 1) (1.2e-7 in exact arithmetic; absolute error is ulp error there, 2^f being in [1, 2));
// `vscalefps` multiplies by 2^floor(t) (it floors its second operand itself) and gives 0 / inf on
// underflow / overflow (and 0 for t = -inf). Measured against float64 over every float32 f in [0, 1)
// at several exponents (tests/nn/test_simd.py): at most 1.9 ulp, 1.8e-7 relative. That is 8 vector
// instructions per 16 exponentials with the multiply, against 10 with a round-to-nearest reduction
// (vrndscaleps + vsubps) and a degree-6 polynomial: the forward scan does 11 per state and step
// instead of 13. The AVX512F-only variant (vrndscaleps + vsubps for f) gives the same results.
// Elsewhere: exp(t ln 2) by the Cephes-style vexp above; rounding t ln 2 costs up to |t| * 6e-8 relative
// (measured: 4.1e-6 at t = -100, a few ulp for the scan's usual |t| < 20).
// FAST (`vexp2_fast`): a degree-4 polynomial for 2^f instead (p(0) = 1, coefficients fitted for the least maximum
// relative error on [0, 1): 2.9e-6 in exact arithmetic, 3.0e-6 measured in float32, about 25 ulp), one multiply-add
// fewer: the scan's exponential under bfloat16 autocast, where every other input of the scan carries bfloat16's
// 3.9e-3 rounding (`fast_exp` of scan_fwd / scan_bwd). Without AVX-512 (and for double) it is vexp2.
template <bool FAST>
inline VT<float>::V vexp2_poly(VT<float>::V t) {
#if defined(__AVX512F__)
  using V = VT<float>::V;
  const __m512 x = (__m512)t;
#if defined(__AVX512DQ__)
  const V f = (V)_mm512_reduce_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
#else
  const V f = (V)_mm512_sub_ps(x, _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
#endif
  V p;
  if constexpr (FAST) {
    p = bcast<V>(1.3426518572e-2f);
    p = p * f + 5.2242740296e-2f;
    p = p * f + 2.4128008099e-1f;
    p = p * f + 6.9304486025e-1f;
  } else {
    p = bcast<V>(1.8852928187698126e-3f);
    p = p * f + 8.973388932645321e-3f;
    p = p * f + 5.5835917592048645e-2f;
    p = p * f + 2.4015280604362488e-1f;
    p = p * f + 6.931524872779846e-1f;
  }
  p = p * f + 1.0f;
  return (V)_mm512_scalef_ps((__m512)p, x);
#else
  return vexp(t * 0.6931471805599453f);
#endif
}

inline VT<float>::V vexp2(VT<float>::V t) { return vexp2_poly<false>(t); }
inline VT<float>::V vexp2_fast(VT<float>::V t) { return vexp2_poly<true>(t); }
inline VT<double>::V vexp2(VT<double>::V t) { return vexp(t * 0.6931471805599453094); }
inline VT<double>::V vexp2_fast(VT<double>::V t) { return vexp2(t); }

// 1/x: AVX-512 rcp14 refined by one Newton step (~2^-28 relative) instead of a slow divide.
// Only used where x is in [1, 3].
inline VT<float>::V vrcp(VT<float>::V x) {
#if defined(__AVX512F__)
  using V = VT<float>::V;
  const V r = (V)_mm512_rcp14_ps((__m512)x);
  return r * (2.0f - x * r);
#else
  return 1.0f / x;
#endif
}
inline VT<double>::V vrcp(VT<double>::V x) { return 1.0 / x; }

// exp for the per-step (per channel, not per state) maths: the fast exp2 path where it exists.
inline VT<float>::V vexp_step(VT<float>::V x) {
#if defined(__AVX512F__)
  return vexp2(x * static_cast<float>(M_LOG2E));
#else
  return vexp(x);
#endif
}
inline VT<double>::V vexp_step(VT<double>::V x) { return vexp(x); }

// log1p(e) for e in [0, 1] via 2 atanh(s), s = e / (2 + e) in [0, 1/3]: an odd series in s.
template <typename V>
inline V log1p_unit(V e) {
  V s = e * vrcp(2.0f + e);
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

// softplus(x) = max(x, 0) + log1p(e) and sigmoid(x) = (x >= 0 ? 1 : e) / (1 + e), e = exp(-|x|) in
// (0, 1]: one exp for both, no overflow. (torch's softplus returns x itself above 20; this agrees to
// rounding.)
template <typename V>
inline void softplus_sigmoid(V x, V& sp, V* sg) {
  const V ax = x < 0 ? -x : x;
  const V e = vexp_step(-ax);
  sp = (x > 0 ? x : V{}) + log1p_unit(e);
  if (sg) {
    const V r = vrcp(1.0f + e);
    *sg = x >= 0 ? r : e * r;
  }
}

template <typename V>
inline V vsigmoid(V x) {
  const V ax = x < 0 ? -x : x;
  const V e = vexp_step(-ax);
  const V r = vrcp(1.0f + e);
  return x >= 0 ? r : e * r;
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

// bfloat16 is the upper half of a float32: widening is a 16-bit shift (exact); narrowing rounds to nearest even,
// NaN to the quiet NaN 0x7fc0, as c10::BFloat16 does, so a kernel reading or writing bfloat16 gives the values
// (finite ones bit for bit) that Tensor.float() / Tensor.bfloat16() around a float32 kernel give.
typedef uint16_t BF16x16 __attribute__((vector_size(32)));
typedef uint32_t U32x16 __attribute__((vector_size(64)));

inline VT<float>::V vload_bf16(const uint16_t* p, int cnt) {
  BF16x16 h;
  if (__builtin_expect(cnt == 16, 1)) {
#if defined(__AVX512F__)
    // (GCC's code for the portable form below round-trips the 16 halves through the stack)
    const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return reinterpret_cast<VT<float>::V>(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
#endif
    std::memcpy(&h, p, sizeof(h));
  } else {
    h = BF16x16{};
    for (int i = 0; i < cnt; ++i) h[i] = p[i];
  }
  return bitcast<VT<float>::V>(__builtin_convertvector(h, U32x16) << 16);
}

inline void vstore_bf16(uint16_t* p, VT<float>::V v, int cnt) {
  const U32x16 u = bitcast<U32x16>(v);
  const U32x16 rounded = v != v ? U32x16{} + 0x7fc0u : (u + (0x7fffu + ((u >> 16) & 1u))) >> 16;
  if (__builtin_expect(cnt == 16, 1)) {
#if defined(__AVX512F__)
    // (one vpmovdw; GCC builds the portable narrowing from two-source word permutes)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(reinterpret_cast<__m512i>(rounded)));
    return;
#endif
  }
  const BF16x16 h = __builtin_convertvector(rounded, BF16x16);
  if (__builtin_expect(cnt == 16, 1)) {
    std::memcpy(p, &h, sizeof(h));
  } else {
    for (int i = 0; i < cnt; ++i) p[i] = h[i];
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

}  // namespace
