// The forecaster's two heads, its Student-t and the training objective as one C++ autograd node on the CPU
// (nn/heads.py: `student_t_head_loss`, whose PyTorch-ops form is the fallback and the tests' oracle). Included by
// selective_scan.cpp: one translation unit.
//
//   delta = h wl^T + bl,  c = h ws^T + bs,  nu = 2 + softplus(theta),  s0 = exp(base)          (batch, H) each
//   loc = s0 delta,  s = s0 exp(c) sqrt((nu - 2) / nu),  z = (y - loc) / s
//   nll = log s - lgamma((nu + 1) / 2) + lgamma(nu / 2) + log(nu pi) / 2 + (nu + 1) / 2 log1p(z^2 / nu)
//   loss = mean(nll), or with mse mean(nll) + mean((loc - y)^2) (loc held fixed in the nll)
//
// The forward also forms each element's derivatives (w = (nu + 1) / (nu + z^2)):
//   d/d delta = s0 (-w z / s), or s0 2 (loc - y) with mse        d/dc = 1 - w z^2
//   d/d nu = (psi(nu/2) - psi((nu+1)/2) + 1/nu + log1p(z^2/nu) - w z^2/nu + (d/dc) (1/(nu-2) - 1/nu)) / 2
// so the backward only sums them against h and the weights. The batch's elements are a few hundred: one thread,
// every value in double, fixed summation orders (deterministic); a PyTorch-ops version of the same node costs about
// 60 small operations, 0.33 ms of a CPU train step.

#pragma once

// (ATen/native/Math.h, for calc_digamma, is included at the top of selective_scan.cpp, outside its namespace.)

// The forward's outputs: loss (0-d), loc (batch, H), and the per-element derivatives (3, batch, H) in double.
std::vector<at::Tensor> head_loss_fwd(const at::Tensor& h, const at::Tensor& wl, const at::Tensor& bl,
                                      const at::Tensor& ws, const at::Tensor& bs, const at::Tensor& df_raw,
                                      const at::Tensor& base, const at::Tensor& y, bool mse) {
  TORCH_CHECK(h.dim() == 2 && wl.dim() == 2 && ws.sizes() == wl.sizes() && wl.size(1) == h.size(1),
              "head_loss: h (batch, d) and two weights (H, d)");
  const int64_t B = h.size(0), d = h.size(1), H = wl.size(0);
  TORCH_CHECK(bl.numel() == H && bs.numel() == H && df_raw.numel() == H, "head_loss: biases and df_raw (H,)");
  TORCH_CHECK(base.sizes().equals({B, H}) && y.sizes().equals({B, H}), "head_loss: base and y (batch, H)");
  TORCH_CHECK(B > 0, "head_loss: an empty batch has no mean");
  auto loss = at::empty({}, h.options());
  auto loc = at::empty({B, H}, h.options());
  auto deriv = at::empty({3, B, H}, h.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "mambacast_head_loss_fwd", [&] {
    const at::Tensor hc = h.contiguous(), wlc = wl.contiguous(), wsc = ws.contiguous(), blc = bl.contiguous(),
                     bsc = bs.contiguous(), dfc = df_raw.contiguous(), basec = base.contiguous(), yc = y.contiguous();
    const scalar_t *hp = hc.data_ptr<scalar_t>(), *wlp = wlc.data_ptr<scalar_t>(), *wsp = wsc.data_ptr<scalar_t>();
    const scalar_t *blp = blc.data_ptr<scalar_t>(), *bsp = bsc.data_ptr<scalar_t>(), *dfp = dfc.data_ptr<scalar_t>();
    const scalar_t *bp = basec.data_ptr<scalar_t>(), *yp = yc.data_ptr<scalar_t>();
    scalar_t* lp = loc.data_ptr<scalar_t>();
    double *dd = deriv.data_ptr<double>(), *dc = dd + B * H, *dn = dc + B * H;
    double total = 0;
    for (int64_t k = 0; k < H; ++k) {
      const double th = dfp[k];
      const double nu = 2 + (th > 20 ? th : std::log1p(std::exp(th)));   // softplus, as torch's (threshold 20)
      const double log_norm = std::lgamma((nu + 1) / 2) - std::lgamma(nu / 2) - 0.5 * std::log(nu * M_PI);
      const double dnu_const =
          0.5 * (::calc_digamma(nu / 2) - ::calc_digamma((nu + 1) / 2) + 1 / nu);
      const double dlogk = 0.5 * (1 / (nu - 2) - 1 / nu);                  // d log sqrt((nu - 2) / nu) / d nu
      for (int64_t b = 0; b < B; ++b) {
        double delta = blp[k], c = bsp[k];
        const scalar_t* hr = hp + b * d;
        for (int64_t j = 0; j < d; ++j) {
          delta += static_cast<double>(hr[j]) * wlp[k * d + j];
          c += static_cast<double>(hr[j]) * wsp[k * d + j];
        }
        const double s0 = std::exp(static_cast<double>(bp[b * H + k]));
        const double l = s0 * delta, s = s0 * std::exp(c) * std::sqrt((nu - 2) / nu);
        const double err = l - yp[b * H + k], z = -err / s, z2 = z * z, w = (nu + 1) / (nu + z2);
        total += std::log(s) - log_norm + (nu + 1) / 2 * std::log1p(z2 / nu) + (mse ? err * err : 0.0);
        lp[b * H + k] = static_cast<scalar_t>(l);
        const double d_c = 1 - w * z2;
        dd[b * H + k] = s0 * (mse ? 2 * err : -w * z / s);
        dc[b * H + k] = d_c;
        dn[b * H + k] = dnu_const + 0.5 * (std::log1p(z2 / nu) - w * z2 / nu) + d_c * dlogk;
      }
    }
    loss.fill_(total / static_cast<double>(B * H));
  });
  return {loss, loc, deriv};
}

// The backward: g (0-d, the loss's gradient) -> the gradients of h, wl, bl, ws, bs, df_raw.
std::vector<at::Tensor> head_loss_bwd(const at::Tensor& g, const at::Tensor& h, const at::Tensor& wl,
                                      const at::Tensor& ws, const at::Tensor& df_raw, const at::Tensor& deriv) {
  const int64_t B = h.size(0), d = h.size(1), H = wl.size(0);
  auto dh = at::empty({B, d}, h.options());
  auto dwl = at::empty({H, d}, h.options()), dws = at::empty({H, d}, h.options());
  auto dbl = at::empty({H}, h.options()), dbs = at::empty({H}, h.options()), ddf = at::empty({H}, h.options());
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "mambacast_head_loss_bwd", [&] {
    const at::Tensor hc = h.contiguous(), wlc = wl.contiguous(), wsc = ws.contiguous(), dfc = df_raw.contiguous();
    const scalar_t *hp = hc.data_ptr<scalar_t>(), *wlp = wlc.data_ptr<scalar_t>(), *wsp = wsc.data_ptr<scalar_t>();
    const scalar_t* dfp = dfc.data_ptr<scalar_t>();
    const double* dd = deriv.data_ptr<double>();
    const double *dc = dd + B * H, *dn = dc + B * H;
    const double scale = g.item<double>() / static_cast<double>(B * H);   // the mean
    scalar_t *dhp = dh.data_ptr<scalar_t>(), *dwlp = dwl.data_ptr<scalar_t>(), *dwsp = dws.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < d; ++j) {
        double acc = 0;
        for (int64_t k = 0; k < H; ++k) acc += dd[b * H + k] * wlp[k * d + j] + dc[b * H + k] * wsp[k * d + j];
        dhp[b * d + j] = static_cast<scalar_t>(scale * acc);
      }
    }
    for (int64_t k = 0; k < H; ++k) {
      double sl = 0, sc = 0, sn = 0;
      for (int64_t b = 0; b < B; ++b) {
        sl += dd[b * H + k];
        sc += dc[b * H + k];
        sn += dn[b * H + k];
      }
      dbl.data_ptr<scalar_t>()[k] = static_cast<scalar_t>(scale * sl);
      dbs.data_ptr<scalar_t>()[k] = static_cast<scalar_t>(scale * sc);
      const double th = dfp[k];
      ddf.data_ptr<scalar_t>()[k] = static_cast<scalar_t>(scale * sn / (1 + std::exp(-th)));   // d nu / d theta
      for (int64_t j = 0; j < d; ++j) {
        double al = 0, as = 0;
        for (int64_t b = 0; b < B; ++b) {
          al += dd[b * H + k] * hp[b * d + j];
          as += dc[b * H + k] * hp[b * d + j];
        }
        dwlp[k * d + j] = static_cast<scalar_t>(scale * al);
        dwsp[k * d + j] = static_cast<scalar_t>(scale * as);
      }
    }
  });
  return {dh, dwl, dbl, dws, dbs, ddf};
}

struct HeadLossFunction : public torch::autograd::Function<HeadLossFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& h,
                                                const at::Tensor& wl, const at::Tensor& bl, const at::Tensor& ws,
                                                const at::Tensor& bs, const at::Tensor& df_raw, const at::Tensor& base,
                                                const at::Tensor& y, bool mse) {
    std::vector<at::Tensor> r = head_loss_fwd(h, wl, bl, ws, bs, df_raw, base, y, mse);
    ctx->save_for_backward({h, wl, ws, df_raw, r[2]});
    ctx->mark_non_differentiable({r[1]});
    return {r[0], r[1]};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list out(9);
    if (!grads[0].defined()) return out;   // only loc was used: it has no gradient
    const auto saved = ctx->get_saved_variables();
    std::vector<at::Tensor> r = head_loss_bwd(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4]);
    for (size_t i = 0; i < r.size(); ++i) {
      if (ctx->needs_input_grad(i)) out[i] = r[i];
    }
    return out;   // base, y and mse: constants
  }
};

std::vector<at::Tensor> head_loss(const at::Tensor& h, const at::Tensor& wl, const at::Tensor& bl, const at::Tensor& ws,
                                  const at::Tensor& bs, const at::Tensor& df_raw, const at::Tensor& base,
                                  const at::Tensor& y, bool mse) {
  return HeadLossFunction::apply(h, wl, bl, ws, bs, df_raw, base, y, mse);
}
