// LayerNorm over the last dimension for the Mamba blocks (included by selective_scan.cpp: one translation unit).
//
//   out = (x - mean) rstd w + b,     mean, var over the row's D values (biased var), rstd = 1 / sqrt(var + eps)
//   backward, with xhat = (x - mean) rstd and g = dout w:
//     dx = rstd (g - mean(g) - xhat mean(g xhat)),     dw = sum over rows of dout xhat,     db = sum of dout
//
// x (rows, D) with unit stride is T or (T = float) bfloat16, and out and dx have x's dtype, as torch's LayerNorm under
// CPU autocast has (the blocks' residual stream is bfloat16 there); w, b, the statistics and every sum are T. x and
// dout are read from memory once, and the variance is summed from centred values (not E[x^2] - mean^2, which cancels
// for rows far from zero). The weight gradients accumulate in T: PyTorch 2.13's CPU LayerNorm backward
// on a bfloat16 x with float32 weights returns them about 4% off (docs/benchmarks.md).
//
// Stacked models: w and b hold M models' parameters, (M, D), and rows [m * per_model, (m + 1) * per_model) belong to
// model m. The weight gradients are partial over `chunks` fixed row ranges per model, (M * chunks, D), summed by the
// caller: the partition does not depend on the thread count, so the sums are deterministic.

#pragma once

template <typename T>
struct NormArgs {
  int64_t rows = 0, D = 0, M = 1, per_model = 0, chunks = 1;
  Act<T> x, out, dout, dx;  // (rows, D), read at step 0 of `act`'s (batch, seq_len, k): T or bfloat16
  const T* w = nullptr;     // (M, D)
  const T* b = nullptr;     // (M, D)
  T eps = 0;
  T* mean = nullptr;  // (rows): the forward's, when saved
  T* rstd = nullptr;
  const T* mean_in = nullptr;  // (rows): the backward's
  const T* rstd_in = nullptr;
  T* dw = nullptr;    // (M * chunks, D) partials
  T* db = nullptr;
};

// The row range [r0, r1) of task i: chunk i % chunks of model m = i / chunks.
template <typename T>
inline void norm_task_rows(const NormArgs<T>& a, int64_t i, int64_t& m, int64_t& r0, int64_t& r1) {
  m = i / a.chunks;
  const int64_t c = i % a.chunks, per = (a.per_model + a.chunks - 1) / a.chunks;
  r0 = m * a.per_model + std::min(a.per_model, c * per);
  r1 = m * a.per_model + std::min(a.per_model, (c + 1) * per);
}

// A row's D values are nv vectors, the last one `tail` lanes full.
template <typename T>
struct RowShape {
  int nv, tail;
  int cnt(int k) const { return k + 1 < nv ? VT<T>::L : tail; }
};

template <typename T>
RowShape<T> row_shape(int64_t D) {
  const int nv = static_cast<int>((D + VT<T>::L - 1) / VT<T>::L);
  return {nv, static_cast<int>(D - (nv - 1) * VT<T>::L)};
}

// Rows go L at a time: their values, widened to T, wait in a buffer in L1 (L * nv vectors) between the passes, and
// each pass's L row sums come out of one transpose-add tree (`lane_sums`) instead of L horizontal sums, whose
// dependency chains made the row-at-a-time form latency-bound. NV > 0: D takes exactly NV vectors (the blocks'
// d_model: the loops unroll); NV = 0 any D, with `scratch` sized by the caller.
template <typename T, int NV>
void norm_fwd_rows(const NormArgs<T>& a, int64_t m, int64_t r0, int64_t r1, typename VT<T>::V* scratch) {
  using V = typename VT<T>::V;
  constexpr int L = VT<T>::L;
  const RowShape<T> sh = row_shape<T>(a.D);
  const int nv = NV > 0 ? NV : sh.nv;
  V local[NV > 0 ? (L + 2) * NV : 1];
  V* buf = NV > 0 ? local : scratch;
  V *w = buf, *b = buf + nv, *xs = buf + 2 * nv;
  for (int k = 0; k < nv; ++k) {
    w[k] = vload(a.w + m * a.D + k * L, sh.cnt(k));
    b[k] = vload(a.b + m * a.D + k * L, sh.cnt(k));
  }
  V keep{};  // the last vector's full lanes as 1: zeroes its padding after centring
  for (int i = 0; i < sh.tail; ++i) keep[i] = 1;
  const T inv_d = static_cast<T>(1) / static_cast<T>(a.D);
  V s[L];
  for (int64_t g0 = r0; g0 < r1; g0 += L) {
    const int n = static_cast<int>(std::min<int64_t>(L, r1 - g0));
    for (int r = 0; r < L; ++r) {
      V acc{};
      for (int k = 0; r < n && k < nv; ++k) {
        const V x = a.x.load(g0 + r, 0, k * L, sh.cnt(k));
        xs[r * nv + k] = x;
        acc += x;
      }
      s[r] = acc;
    }
    const V mean = lane_sums(s) * inv_d;
    for (int r = 0; r < L; ++r) {
      V acc{};
      for (int k = 0; r < n && k < nv; ++k) {
        V c = xs[r * nv + k] - mean[r];
        if (k + 1 == nv) c *= keep;
        xs[r * nv + k] = c;
        acc += c * c;
      }
      s[r] = acc;
    }
    const V var = lane_sums(s) * inv_d;
    V rstd;
    for (int i = 0; i < L; ++i) rstd[i] = static_cast<T>(1) / std::sqrt(var[i] + a.eps);
    for (int r = 0; r < n; ++r) {
      for (int k = 0; k < nv; ++k) a.out.store(g0 + r, 0, k * L, xs[r * nv + k] * rstd[r] * w[k] + b[k], sh.cnt(k));
      if (a.mean) {
        a.mean[g0 + r] = mean[r];
        a.rstd[g0 + r] = rstd[r];
      }
    }
  }
}

template <typename T, int NV>
void norm_bwd_rows(const NormArgs<T>& a, int64_t task, int64_t m, int64_t r0, int64_t r1,
                   typename VT<T>::V* scratch) {
  using V = typename VT<T>::V;
  constexpr int L = VT<T>::L;
  const RowShape<T> sh = row_shape<T>(a.D);
  const int nv = NV > 0 ? NV : sh.nv;
  V local[NV > 0 ? (2 * L + 3) * NV : 1];
  V* buf = NV > 0 ? local : scratch;
  V *w = buf, *dw = buf + nv, *db = buf + 2 * nv, *xh = buf + 3 * nv, *gs = buf + (3 + L) * nv;
  for (int k = 0; k < nv; ++k) {
    w[k] = vload(a.w + m * a.D + k * L, sh.cnt(k));
    dw[k] = db[k] = V{};
  }
  const T inv_d = static_cast<T>(1) / static_cast<T>(a.D);
  V sg[L], sgx[L];
  for (int64_t g0 = r0; g0 < r1; g0 += L) {
    const int n = static_cast<int>(std::min<int64_t>(L, r1 - g0));
    // Padding lanes of a partial last vector: dout and w load as 0 there, so g, dw and db get nothing from them.
    for (int r = 0; r < L; ++r) {
      V ag{}, agx{};
      if (r < n) {
        const T mu = a.mean_in[g0 + r], rs = a.rstd_in[g0 + r];
        for (int k = 0; k < nv; ++k) {
          const V dy = a.dout.load(g0 + r, 0, k * L, sh.cnt(k));
          const V x = (a.x.load(g0 + r, 0, k * L, sh.cnt(k)) - mu) * rs;
          const V g = dy * w[k];
          xh[r * nv + k] = x;
          gs[r * nv + k] = g;
          ag += g;
          agx += g * x;
          dw[k] += dy * x;
          db[k] += dy;
        }
      }
      sg[r] = ag;
      sgx[r] = agx;
    }
    const V c1 = lane_sums(sg) * inv_d, c2 = lane_sums(sgx) * inv_d;
    for (int r = 0; r < n; ++r) {
      const T rs = a.rstd_in[g0 + r];
      for (int k = 0; k < nv; ++k) {
        a.dx.store(g0 + r, 0, k * L, (gs[r * nv + k] - c1[r] - xh[r * nv + k] * c2[r]) * rs, sh.cnt(k));
      }
    }
  }
  for (int k = 0; k < nv; ++k) {
    vstore(a.dw + task * a.D + k * L, dw[k], sh.cnt(k));
    vstore(a.db + task * a.D + k * L, db[k], sh.cnt(k));
  }
}

// Runs the forward or backward over every task, with the unrolled form for nv = 1, 2, 4 or 8, else the general one.
template <typename T, bool BWD>
void run_norm(const NormArgs<T>& a) {
  using V = typename VT<T>::V;
  const int nv = row_shape<T>(a.D).nv;
  auto run = [&](auto nv_const) {
    constexpr int NV = decltype(nv_const)::value;
    parallel_tasks(
        a.M * a.chunks, [&] { return std::vector<V>(NV > 0 ? 0 : (2 * VT<T>::L + 3) * nv); },
        [&](std::vector<V>& scratch, int64_t i) {
          int64_t m, r0, r1;
          norm_task_rows(a, i, m, r0, r1);
          if constexpr (BWD) {
            norm_bwd_rows<T, NV>(a, i, m, r0, r1, scratch.data());
          } else {
            norm_fwd_rows<T, NV>(a, m, r0, r1, scratch.data());
          }
        });
  };
  switch (nv) {
    case 1: return run(std::integral_constant<int, 1>{});
    case 2: return run(std::integral_constant<int, 2>{});
    case 4: return run(std::integral_constant<int, 4>{});
    case 8: return run(std::integral_constant<int, 8>{});
    default: return run(std::integral_constant<int, 0>{});
  }
}

void check_norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  TORCH_CHECK(x.device().is_cpu() && (w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble) &&
                  act_dtype_ok(x, w.scalar_type()) && b.scalar_type() == w.scalar_type(),
              "layer_norm (fused CPU kernel): float32/float64 CPU weights, x of their dtype (or bfloat16 for float32)");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && x.size(1) >= 1, "layer_norm: x must be (rows, D) with unit stride");
  TORCH_CHECK((w.dim() == 1 || w.dim() == 2) && w.size(-1) == x.size(1) && w.is_contiguous() &&
                  b.sizes() == w.sizes() && b.is_contiguous(),
              "layer_norm: weight and bias must be contiguous (D), or (n_models, D) for stacked models");
  TORCH_CHECK(w.dim() == 1 || (w.size(0) >= 1 && x.size(0) % w.size(0) == 0), "layer_norm: ", x.size(0),
              " rows are not a multiple of the ", w.size(0), " stacked models");
}

template <typename T>
NormArgs<T> norm_args(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
  NormArgs<T> a;
  a.rows = x.size(0);
  a.D = x.size(1);
  a.M = w.dim() == 2 ? w.size(0) : 1;
  a.per_model = a.rows / a.M;
  // Up to 8 row ranges of at least 64 rows per model: tasks enough for two threads' dynamic scheduling, few
  // partials to sum.
  a.chunks = std::max<int64_t>(1, std::min<int64_t>(8, a.per_model / 64));
  a.x = act<T>(x);
  a.w = w.data_ptr<T>();
  a.b = b.data_ptr<T>();
  a.eps = static_cast<T>(eps);
  return a;
}

// Returns out (x's dtype), mean and rstd (rows,) in the weight's dtype (empty unless save).
std::vector<at::Tensor> layer_norm_fwd(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps,
                                       bool save) {
  check_norm(x, w, b);
  const int64_t rows = x.size(0);
  at::Tensor out = at::empty(x.sizes(), x.options());
  at::Tensor mean = at::empty({save ? rows : 0}, w.options());
  at::Tensor rstd = at::empty({save ? rows : 0}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "mambacast_norm_fwd", [&] {
    NormArgs<scalar_t> a = norm_args<scalar_t>(x, w, b, eps);
    a.out = act<scalar_t>(out);
    if (save) {
      a.mean = mean.data_ptr<scalar_t>();
      a.rstd = rstd.data_ptr<scalar_t>();
    }
    run_norm<scalar_t, false>(a);
  });
  return {out, mean, rstd};
}

// Returns dx (x's dtype), dw and db partials (n_models * chunks, D) in the weight's dtype.
std::vector<at::Tensor> layer_norm_bwd(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                                       const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& dout) {
  check_norm(x, w, b);
  TORCH_CHECK(dout.sizes() == x.sizes() && dout.stride(1) == 1 && act_dtype_ok(dout, w.scalar_type()),
              "layer_norm backward: grad_output must be (rows, D) with unit stride, of x's or the weight's dtype");
  TORCH_CHECK(mean.numel() == x.size(0) && rstd.numel() == x.size(0) && mean.scalar_type() == w.scalar_type() &&
                  rstd.scalar_type() == w.scalar_type() && mean.is_contiguous() && rstd.is_contiguous(),
              "layer_norm backward: mean and rstd must be the forward's (rows,)");
  at::Tensor dx = at::empty(x.sizes(), x.options());
  at::Tensor dw, db;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "mambacast_norm_bwd", [&] {
    NormArgs<scalar_t> a = norm_args<scalar_t>(x, w, b, 0.0);
    dw = at::empty({a.M * a.chunks, a.D}, w.options());
    db = at::empty({a.M * a.chunks, a.D}, w.options());
    a.dout = act<scalar_t>(dout);
    a.dx = act<scalar_t>(dx);
    a.mean_in = mean.data_ptr<scalar_t>();
    a.rstd_in = rstd.data_ptr<scalar_t>();
    a.dw = dw.data_ptr<scalar_t>();
    a.db = db.data_ptr<scalar_t>();
    run_norm<scalar_t, true>(a);
  });
  return {dx, dw, db};
}

// One autograd node over the two kernels, in C++: a Python autograd.Function around them cost 20-30 us a call forward
// and as much backward, as much as the kernels themselves at the blocks' shapes. x (..., D), weight and bias (D) or
// (M, D) with x (M, ..., D); the output has x's shape and dtype.
struct LayerNormFunction : public torch::autograd::Function<LayerNormFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& b, double eps, bool save) {
    at::Tensor rows = x.reshape({-1, x.size(-1)});
    if (rows.size(1) > 1 && rows.stride(1) != 1) rows = rows.contiguous();
    std::vector<at::Tensor> r = layer_norm_fwd(rows, w, b, eps, save);
    if (save) ctx->save_for_backward({rows, w, b, r[1], r[2]});
    return r[0].view(x.sizes());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &rows = saved[0], &w = saved[1];
    at::Tensor dout = grads[0].reshape(rows.sizes());
    if (dout.stride(1) != 1 || dout.stride(0) != rows.size(1)) dout = dout.contiguous();
    std::vector<at::Tensor> r = layer_norm_bwd(rows, w, saved[2], saved[3], saved[4], dout);
    // the kernel's partials are (M * chunks, D): summed per model
    const int64_t M = w.dim() == 2 ? w.size(0) : 1, D = rows.size(1);
    at::Tensor dw = r[1].view({M, -1, D}).sum(1).view(w.sizes());
    at::Tensor db = r[2].view({M, -1, D}).sum(1).view(w.sizes());
    return {r[0].view(grads[0].sizes()), dw, db, at::Tensor(), at::Tensor()};
  }
};

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
  const bool save = at::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad() || b.requires_grad());
  return LayerNormFunction::apply(x, w, b, eps, save);
}
