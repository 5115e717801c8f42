// One pre-norm residual Mamba block as one C++ autograd node on the CPU (included by selective_scan.cpp):
//
//   xz  = LayerNorm(hidden) @ W_in^T                        (b*L, 2d): x and the gate z side by side
//   y   = mamba_inner(xz)                                   conv + SiLU, x_proj, dt_proj + softplus, scan, D, silu(z)
//   out = hidden + y @ W_out^T                              (b, L, d_model)
//
// with A = -exp(A_log). last_only (the model's last block, whose last step is all the heads read): x at every step,
// z, the gate, out_proj and the residual at the last step alone, out (b, d_model), as MambaBlock's last_only.
//
// Each piece is the kernel or matmul the Python path runs (nn.mamba.MambaBlock with nn.fused.mamba_inner and
// nn.norm.layer_norm), in the same order and dtypes, so the values and gradients are those of that path, bit for
// bit (tests/nn/test_block.py); this saves its ~25 framework ops and autograd nodes per block each way, and the
// Python of the fused Function, which at the guide's shapes cost as much as the conv kernels.
//
// lowp: the matmuls in bfloat16 as the CPU's bfloat16 autocast runs them (operands rounded to bfloat16, float32
// accumulation, bfloat16 results; x_proj too, as mamba_inner does under autocast), the weights' gradients cast back
// to float32 as autocast's casts do in the backward; the norm, the conv and the scan compute in float32 (the scan's
// exp the degree-4 one). Autocast itself is excluded inside the node: every cast is written out here.

// f() under a profiler range named as the kernel's op: torch.profiler (benchmarks/profile_step.py) then attributes the
// kernels this node calls directly as it does when Python calls the ops. Without a profiler it costs one flag test.
template <typename F>
auto profiled(const char* name, F&& f) {
  RECORD_FUNCTION(name, std::vector<c10::IValue>());
  return f();
}

struct MambaBlockFunction : public torch::autograd::Function<MambaBlockFunction> {
  // hidden (b, L, dm); norm_w, norm_b (dm); in_w (2d, dm); conv_w (d, 1, K) or (d, K); conv_b, dt_b, D (d);
  // x_w (R + 2N, d); dt_w (d, R); A_log (d, N); out_w (dm, d). Returns (b, L, dm), with last_only (b, dm).
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& norm_w,
                            const at::Tensor& norm_b, const at::Tensor& in_w, const at::Tensor& conv_w,
                            const at::Tensor& conv_b, const at::Tensor& x_w, const at::Tensor& dt_w,
                            const at::Tensor& dt_b, const at::Tensor& A_log, const at::Tensor& D,
                            const at::Tensor& out_w, double eps, bool lowp, bool last_only, int64_t chunk, bool save) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const int64_t b = hidden.size(0), L = hidden.size(1), dm = hidden.size(2);
    const int64_t d = conv_w.size(0), K = conv_w.size(-1), N = A_log.size(1), R = dt_w.size(1);
    const at::ScalarType mm_t = lowp ? at::kBFloat16 : norm_w.scalar_type();

    at::Tensor rows = hidden.reshape({-1, dm});
    if (rows.stride(1) != 1 || rows.stride(0) != dm) rows = rows.contiguous();
    std::vector<at::Tensor> ln =     // normed (in hidden's dtype), mean, rstd
        profiled("mambacast::layer_norm", [&] { return layer_norm_fwd(rows, norm_w, norm_b, eps, save); });
    at::Tensor normed = ln[0].to(mm_t);
    at::Tensor w_in = in_w.to(mm_t);
    at::Tensor xz, z_last;           // xz: x and z (b, L, 2d), or x alone (b, L, d) with z at the last step (b, d)
    if (last_only) {
      xz = normed.mm(w_in.narrow(0, 0, d).t()).view({b, L, d});
      z_last = normed.view({b, L, dm}).select(1, L - 1).mm(w_in.narrow(0, d, d).t());
    } else {
      xz = normed.mm(w_in.t()).view({b, L, 2 * d});
    }
    std::optional<at::Tensor> z;
    if (!last_only) z = xz.narrow(2, d, d);

    at::Tensor wt = conv_w.reshape({d, K}).t().contiguous();                           // (K, d)
    at::Tensor xc =                  // (b, L, d), after SiLU
        profiled("mambacast::conv_fwd", [&] { return conv_fwd(xz.narrow(2, 0, d), wt, conv_b, std::nullopt, true); });
    at::Tensor xc_mm = lowp ? xc.to(at::kBFloat16) : xc;
    at::Tensor x_dbl = xc_mm.view({-1, d}).mm(x_w.to(xc_mm.scalar_type()).t()).to(xc.scalar_type());
    x_dbl = x_dbl.view({b, L, R + 2 * N});
    at::Tensor dt_wt = dt_w.t().contiguous();                                          // (R, d)
    at::Tensor At = A_log.exp().neg().t().contiguous();                                // (N, d)
    auto [y, hlast, hsave, ypre] = profiled("mambacast::scan_fwd", [&] {  // y gated in xz's dtype, or (b, 1, d) not
      return scan_fwd(xc, x_dbl.narrow(2, 0, R), At, x_dbl.narrow(2, R, N), x_dbl.narrow(2, R + N, N), D, z, dt_b,
                      dt_wt, std::nullopt, true, chunk, save, lowp, last_only ? L - 1 : 0);
    });

    // out_proj's input g: the gated y, or at the last step y * silu(z) (float32 times z's dtype, as autograd mixes)
    at::Tensor g = last_only ? y.select(1, 0).mul(at::silu(z_last)).to(mm_t) : y.view({-1, d}).to(mm_t);
    at::Tensor w_out = out_w.to(mm_t);
    at::Tensor proj = g.mm(w_out.t());
    at::Tensor out = last_only ? hidden.select(1, L - 1).add(proj) : hidden.add(proj.view({b, L, dm}));
    if (save) {
      ctx->save_for_backward({rows, norm_w, norm_b, ln[1], ln[2], normed, w_in, xz, wt, conv_b, x_w, dt_wt, dt_b, At,
                              D, xc, xc_mm, x_dbl, hsave, ypre, g, w_out, y, z_last});
      ctx->saved_data["chunk"] = chunk;
      ctx->saved_data["lowp"] = lowp;
      ctx->saved_data["last_only"] = last_only;
      ctx->saved_data["conv_shape"] = conv_w.sizes().vec();
    }
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto s = ctx->get_saved_variables();
    const at::Tensor &rows = s[0], &norm_w = s[1], &norm_b = s[2], &mean = s[3], &rstd = s[4], &normed = s[5],
                     &w_in = s[6], &xz = s[7], &wt = s[8], &conv_b = s[9], &x_w = s[10], &dt_wt = s[11],
                     &dt_b = s[12], &At = s[13], &D = s[14], &xc = s[15], &xc_mm = s[16], &x_dbl = s[17],
                     &hsave = s[18], &ypre = s[19], &g = s[20], &w_out = s[21], &y = s[22], &z_last = s[23];
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const bool lowp = ctx->saved_data["lowp"].toBool(), last_only = ctx->saved_data["last_only"].toBool();
    const int64_t b = xz.size(0), L = xz.size(1), d = xc.size(2), dm = rows.size(1);
    const int64_t N = At.size(0), R = dt_wt.size(0);
    const at::ScalarType pt = x_w.scalar_type();
    const at::Tensor& dout = grads[0];   // (b, L, dm), with last_only (b, dm); in out's dtype

    // out_proj, as autograd's mm backward computes it (the weight's gradient as dout^T g), its casts' gradients cast
    at::Tensor dproj = dout.reshape({-1, dm}).to(w_out.scalar_type());
    at::Tensor d_out_w = dproj.t().mm(g).to(pt);
    at::Tensor dg = dproj.mm(w_out);
    at::Tensor dy, dz_last;
    if (last_only) {   // g = y_last * silu(z_last): each factor's gradient in its own dtype
      at::Tensor y_last = y.select(1, 0), dgf = dg.to(y.scalar_type());
      dy = dgf.mul(at::silu(z_last)).unsqueeze(1);                                     // (b, 1, d)
      dz_last = at::silu_backward(dgf.mul(y_last).to(z_last.scalar_type()), z_last);   // (b, d)
    } else {
      dy = dg.view({b, L, d});
    }

    // mamba_inner's backward (nn.fused._MambaInner.backward): dx (and dz) straight into dxz
    at::Tensor dxz = at::empty(xz.sizes(), xz.options());
    std::optional<at::Tensor> z, dz;
    if (!last_only) {
      z = xz.narrow(2, d, d);
      dz = dxz.narrow(2, d, d);
    }
    std::vector<at::Tensor> sc = profiled("mambacast::scan_bwd", [&] {
      return scan_bwd(xc, x_dbl.narrow(2, 0, R), At, x_dbl.narrow(2, R, N), x_dbl.narrow(2, R + N, N), D, z, dt_b,
                      dt_wt, hsave, ypre, dy, std::nullopt, true, chunk, dz, false, lowp, last_only ? L - 1 : 0);
    });
    at::Tensor dxc = sc[0];
    at::Tensor dx_dbl = (sc[11].size(0) == 1 ? sc[11][0] : sc[11].sum(0)).view({-1, R + 2 * N});
    at::Tensor parts = sc[12].size(0) == 1 ? sc[12][0] : sc[12].sum(0);                 // ((N + 2 + R) d)
    at::Tensor d_x_w = dx_dbl.to(xc_mm.scalar_type()).t().mm(xc_mm.view({-1, d})).to(xc.scalar_type());
    dxc.view({-1, d}).addmm_(dx_dbl, x_w);
    std::vector<at::Tensor> cv = profiled("mambacast::conv_bwd", [&] {
      return conv_bwd(xz.narrow(2, 0, d), wt, conv_b, std::nullopt, dxc, true, dxz.narrow(2, 0, d));
    });
    at::Tensor d_conv_w = (b == 1 ? cv[1][0] : cv[1].sum(0)).t().reshape(ctx->saved_data["conv_shape"].toIntVector());
    at::Tensor d_conv_b = b == 1 ? cv[2][0] : cv[2].sum(0);
    at::Tensor dA = parts.narrow(0, 0, N * d).view({N, d});
    at::Tensor d_A_log = dA.mul(At).t();           // dA_log = dA * dA/dA_log = dA * A (A = -exp(A_log))
    at::Tensor dD = parts.narrow(0, N * d, d);
    at::Tensor d_dt_b = parts.narrow(0, (N + 1) * d, d);
    at::Tensor d_dt_w = parts.narrow(0, (N + 2) * d, R * d).view({R, d}).t();

    // in_proj (with last_only its two halves), then the norm; the residual adds dout to the norm's input gradient
    at::Tensor dxz2 = dxz.view({-1, xz.size(2)});
    at::Tensor d_in_w, dnormed;
    if (last_only) {
      at::Tensor normed_last = normed.view({b, L, dm}).select(1, L - 1);
      d_in_w = at::empty({2 * d, dm}, x_w.options());
      d_in_w.narrow(0, 0, d).copy_(dxz2.t().mm(normed));
      d_in_w.narrow(0, d, d).copy_(dz_last.t().mm(normed_last));
      dnormed = dxz2.mm(w_in.narrow(0, 0, d)).to(rows.scalar_type());
      dnormed.view({b, L, dm}).select(1, L - 1).add_(dz_last.mm(w_in.narrow(0, d, d)).to(rows.scalar_type()));
    } else {
      d_in_w = dxz2.t().mm(normed).to(pt);
      dnormed = dxz2.mm(w_in).to(rows.scalar_type());
    }
    std::vector<at::Tensor> lb = profiled("mambacast::layer_norm_bwd", [&] {
      return layer_norm_bwd(rows, norm_w, norm_b, mean, rstd, dnormed);
    });
    at::Tensor d_hidden = lb[0].view({b, L, dm});
    if (last_only) {
      d_hidden.select(1, L - 1).add_(dout);
    } else {
      d_hidden = d_hidden.add(dout);
    }
    return {d_hidden, lb[1].sum(0), lb[2].sum(0), d_in_w, d_conv_w, d_conv_b, d_x_w, d_dt_w, d_dt_b, d_A_log, dD,
            d_out_w, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor mamba_block(const at::Tensor& hidden, const at::Tensor& norm_w, const at::Tensor& norm_b, double eps,
                       const at::Tensor& in_w, const at::Tensor& conv_w, const at::Tensor& conv_b,
                       const at::Tensor& x_w, const at::Tensor& dt_w, const at::Tensor& dt_b,
                       const at::Tensor& A_log, const at::Tensor& D, const at::Tensor& out_w, bool lowp,
                       bool last_only, int64_t chunk) {
  TORCH_CHECK(hidden.dim() == 3 && hidden.size(1) >= 1 && in_w.dim() == 2 && (conv_w.dim() == 2 || conv_w.dim() == 3) &&
                  A_log.dim() == 2,
              "mamba_block: takes one model's block: hidden (batch, seq_len >= 1, d_model), unstacked weights");
  bool save = false;
  if (at::GradMode::is_enabled()) {
    for (const at::Tensor* t : {&hidden, &norm_w, &norm_b, &in_w, &conv_w, &conv_b, &x_w, &dt_w, &dt_b, &A_log, &D,
                                &out_w}) {
      save = save || t->requires_grad();
    }
  }
  // the kernels read the vectors through raw pointers (a no-op for a module's own parameters)
  return MambaBlockFunction::apply(hidden, norm_w.contiguous(), norm_b.contiguous(), in_w, conv_w, conv_b.contiguous(),
                                   x_w, dt_w, dt_b.contiguous(), A_log, D.contiguous(), out_w, eps, lowp, last_only,
                                   chunk, save);
}
