"""Triton kernels of the fused selective scan (launched by `scan.py`; maths in `mambacast.nn.scan`).

Per (batch row b, channel d, state n), with delta = softplus(delta_raw + bias) when SOFTPLUS:

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t          (Gu & Dao 2023, eq. 2a with ZOH's exp(delta A),
    y_t = C_t . h_t + D u_t,   out_t = y_t silu(z_t)         the Euler step delta B for B, Algorithm 2)

A program owns one batch row and a block of BLOCK_D channels and keeps its (BLOCK_D, BLOCK_N) state in
registers; exp(delta A) and delta B u are formed on the fly from the (b, l, d) and (b, l, n) inputs, so no
(b, l, d, n) tensor is ever written. Loads are converted to COMPUTE (float32, or float64 when every input is
float64) and results converted back on store. Row b reads the parameters A, D and bias of model
`b // rows_per_model` (stacked models; one model: rows_per_model = batch).

Forward, `_fwd_kernel`, program (b, d-block, chunk): runs its chunk of time steps from a start state.
MODE_LOCAL starts from zero and writes only its end state and sum(delta) over the chunk; `_combine_kernel`
then chains the chunks sequentially (exp(A sum delta) is the chunk's decay: the product of its exp(delta_t A))
into each chunk's true start state; MODE_FULL runs each chunk from that state and writes the outputs. Long
sequences with few rows are thereby parallel over time as well; one chunk needs MODE_FULL only. With SAVE,
the state entering every SEG-th step is written for the backward.

Backward, `_bwd_kernel`, program (b, d-block): walks the segments of SEG steps from last to first; for each
it recomputes the states inside the segment from the saved one into a per-program scratch (SEG states of
(BLOCK_D, BLOCK_N), L1/L2-resident), then runs the reverse recurrence

    g_t = dL/dh_t = dy_t C_t + exp(delta_{t+1} A) g_{t+1},     g after the last step = dL/dh_last
    dC_t = sum_d dy_t h_t,  dB_t = sum_d g_t delta_t u_t,  du_t = delta_t sum_n g_t B_t + D dy_t
    d delta_t = sum_n g_t (A exp(delta_t A) h_{t-1} + B_t u_t),  dA = sum_t g_t delta_t exp(delta_t A) h_{t-1}

dB and dC are sums over channels: each d-block writes its partial and the launcher adds them; dA, dD and
dbias are written per row and summed per model by the launcher.
"""

from __future__ import annotations

import triton
import triton.language as tl

MODE_LOCAL = 0
MODE_FULL = 1


@triton.jit
def _softplus(x):
    # PyTorch's F.softplus (threshold 20); exp(x) for very negative x, where 1 + exp(x) rounds to 1.
    return tl.where(x > 20.0, x, tl.where(x < -15.0, tl.exp(x), tl.log(1.0 + tl.exp(x))))


@triton.jit
def _fwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, start_ptr,
                y_ptr, save_ptr, end_ptr, dsum_ptr,
                seqlen, dim, dstate, rows_per_model, chunk_len, n_chunks,
                s_ub, s_ul, s_ud, s_tb, s_tl, s_td, s_Am, s_Ad, s_An, s_Bb, s_Bl, s_Bn, s_Cb, s_Cl, s_Cn,
                s_Dm, s_Dd, s_zb, s_zl, s_zd, s_bm, s_bd, s_hb, s_hc, s_hd, s_hn,
                s_yb, s_yl, s_yd, s_sb, s_ss, s_sd, s_sn, s_eb, s_ec, s_ed, s_en, s_qb, s_qc, s_qd,
                MODE: tl.constexpr, HAS_START: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SAVE: tl.constexpr, SEG: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, COMPUTE: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(2).to(tl.int64)
    model = b // rows_per_model
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + model * s_Am + offs_d[:, None] * s_Ad + offs_n[None, :] * s_An, mask=mask_dn,
                other=0.0).to(COMPUTE)
    if HAS_D:
        Dv = tl.load(D_ptr + model * s_Dm + offs_d * s_Dd, mask=mask_d, other=0.0).to(COMPUTE)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + model * s_bm + offs_d * s_bd, mask=mask_d, other=0.0).to(COMPUTE)
    state_offs = offs_d[:, None] * s_hd + offs_n[None, :] * s_hn
    if HAS_START:
        h = tl.load(start_ptr + b * s_hb + c * s_hc + state_offs, mask=mask_dn, other=0.0).to(COMPUTE)
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=COMPUTE)
    dsum = tl.zeros([BLOCK_D], dtype=COMPUTE)
    t0 = c * chunk_len
    t1 = tl.minimum(t0 + chunk_len, seqlen)
    for t in range(t0, t1):
        if SAVE:   # the state entering step t, every SEG steps (chunk_len is a multiple of SEG)
            if t % SEG == 0:
                tl.store(save_ptr + b * s_sb + (t // SEG) * s_ss + offs_d[:, None] * s_sd + offs_n[None, :] * s_sn,
                         h.to(save_ptr.dtype.element_ty), mask=mask_dn)
        u = tl.load(u_ptr + b * s_ub + t * s_ul + offs_d * s_ud, mask=mask_d, other=0.0).to(COMPUTE)
        dl = tl.load(dt_ptr + b * s_tb + t * s_tl + offs_d * s_td, mask=mask_d, other=0.0).to(COMPUTE)
        Bt = tl.load(B_ptr + b * s_Bb + t * s_Bl + offs_n * s_Bn, mask=mask_n, other=0.0).to(COMPUTE)
        if HAS_BIAS:
            dl = dl + bias
        if SOFTPLUS:
            dl = _softplus(dl)
        h = tl.exp(dl[:, None] * A) * h + (dl * u)[:, None] * Bt[None, :]
        if MODE == 0:
            dsum += dl
        else:
            Ct = tl.load(C_ptr + b * s_Cb + t * s_Cl + offs_n * s_Cn, mask=mask_n, other=0.0).to(COMPUTE)
            y = tl.sum(h * Ct[None, :], axis=1)
            if HAS_D:
                y += Dv * u
            if HAS_Z:
                z = tl.load(z_ptr + b * s_zb + t * s_zl + offs_d * s_zd, mask=mask_d, other=0.0).to(COMPUTE)
                y = y * z * tl.sigmoid(z)
            tl.store(y_ptr + b * s_yb + t * s_yl + offs_d * s_yd, y.to(y_ptr.dtype.element_ty), mask=mask_d)
    end_offs = offs_d[:, None] * s_ed + offs_n[None, :] * s_en
    if MODE == 0:
        tl.store(end_ptr + b * s_eb + c * s_ec + end_offs, h.to(end_ptr.dtype.element_ty), mask=mask_dn)
        tl.store(dsum_ptr + b * s_qb + c * s_qc + offs_d * s_qd, dsum.to(dsum_ptr.dtype.element_ty), mask=mask_d)
    elif c == n_chunks - 1:   # the final state, from the last chunk
        tl.store(end_ptr + b * s_eb + end_offs, h.to(end_ptr.dtype.element_ty), mask=mask_dn)


@triton.jit
def _combine_kernel(A_ptr, h0_ptr, local_ptr, dsum_ptr, start_ptr, rows_per_model, dim, dstate, n_chunks,
                    s_Am, s_Ad, s_An, s_hb, s_hd, s_hn, s_lb, s_lc, s_ld, s_ln, s_qb, s_qc, s_qd,
                    HAS_H0: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, COMPUTE: tl.constexpr):
    """start[c] = the state entering chunk c: start[0] = h0, start[c+1] = exp(A dsum[c]) start[c] + local[c]."""
    b = tl.program_id(0).to(tl.int64)
    model = b // rows_per_model
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_n < dstate)[None, :]
    A = tl.load(A_ptr + model * s_Am + offs_d[:, None] * s_Ad + offs_n[None, :] * s_An, mask=mask_dn,
                other=0.0).to(COMPUTE)
    if HAS_H0:
        h = tl.load(h0_ptr + b * s_hb + offs_d[:, None] * s_hd + offs_n[None, :] * s_hn, mask=mask_dn,
                    other=0.0).to(COMPUTE)
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=COMPUTE)
    offs = offs_d[:, None] * s_ld + offs_n[None, :] * s_ln
    for c in range(0, n_chunks):
        tl.store(start_ptr + b * s_lb + c * s_lc + offs, h.to(start_ptr.dtype.element_ty), mask=mask_dn)
        dsum = tl.load(dsum_ptr + b * s_qb + c * s_qc + offs_d * s_qd, mask=mask_d, other=0.0).to(COMPUTE)
        local = tl.load(local_ptr + b * s_lb + c * s_lc + offs, mask=mask_dn, other=0.0).to(COMPUTE)
        h = tl.exp(dsum[:, None] * A) * h + local


@triton.jit
def _bwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, save_ptr, dy_ptr, dhl_ptr,
                scratch_ptr, du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr,
                seqlen, dim, dstate, rows_per_model, n_seg,
                s_ub, s_ul, s_ud, s_tb, s_tl, s_td, s_Am, s_Ad, s_An, s_Bb, s_Bl, s_Bn, s_Cb, s_Cl, s_Cn,
                s_Dm, s_Dd, s_zb, s_zl, s_zd, s_bm, s_bd, s_sb, s_ss, s_sd, s_sn, s_gb, s_gl, s_gd,
                s_kb, s_kd, s_kn,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                HAS_DHL: tl.constexpr, SEG: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                COMPUTE: tl.constexpr):
    """Outputs: du, ddt, dz (b, l, d) with the strides s_g*; dB, dC partials (d-blocks, b, l, n), contiguous;
    dA (b, d, n), dh0 (b, d, n) with the strides s_k*; dD, dbias (b, d), contiguous."""
    b = tl.program_id(0).to(tl.int64)
    pd = tl.program_id(1)
    n_dblocks = tl.num_programs(1)
    model = b // rows_per_model
    batch = tl.num_programs(0)
    offs_d = pd * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + model * s_Am + offs_d[:, None] * s_Ad + offs_n[None, :] * s_An, mask=mask_dn,
                other=0.0).to(COMPUTE)
    if HAS_D:
        Dv = tl.load(D_ptr + model * s_Dm + offs_d * s_Dd, mask=mask_d, other=0.0).to(COMPUTE)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + model * s_bm + offs_d * s_bd, mask=mask_d, other=0.0).to(COMPUTE)
    k_offs = offs_d[:, None] * s_kd + offs_n[None, :] * s_kn
    if HAS_DHL:   # g after the last step: dL/dh_last
        carry = tl.load(dhl_ptr + b * s_kb + k_offs, mask=mask_dn, other=0.0).to(COMPUTE)
    else:
        carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=COMPUTE)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=COMPUTE)
    dD_acc = tl.zeros([BLOCK_D], dtype=COMPUTE)
    dbias_acc = tl.zeros([BLOCK_D], dtype=COMPUTE)
    tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + offs_n[None, :]
    scratch = scratch_ptr + (b * n_dblocks + pd) * (SEG * BLOCK_D * BLOCK_N)
    part = (pd * batch + b) * seqlen * dstate        # this program's rows of the dB / dC partials
    for j in range(0, n_seg):
        seg = n_seg - 1 - j
        s0 = seg * SEG
        s1 = tl.minimum(s0 + SEG, seqlen)
        # 1. recompute the states entering each step of the segment, from the one the forward saved
        h = tl.load(save_ptr + b * s_sb + seg * s_ss + offs_d[:, None] * s_sd + offs_n[None, :] * s_sn,
                    mask=mask_dn, other=0.0).to(COMPUTE)
        for t in range(s0, s1):
            tl.store(scratch + (t - s0) * (BLOCK_D * BLOCK_N) + tile, h)
            u = tl.load(u_ptr + b * s_ub + t * s_ul + offs_d * s_ud, mask=mask_d, other=0.0).to(COMPUTE)
            dl = tl.load(dt_ptr + b * s_tb + t * s_tl + offs_d * s_td, mask=mask_d, other=0.0).to(COMPUTE)
            Bt = tl.load(B_ptr + b * s_Bb + t * s_Bl + offs_n * s_Bn, mask=mask_n, other=0.0).to(COMPUTE)
            if HAS_BIAS:
                dl = dl + bias
            if SOFTPLUS:
                dl = _softplus(dl)
            h = tl.exp(dl[:, None] * A) * h + (dl * u)[:, None] * Bt[None, :]
        tl.debug_barrier()   # the scratch is written and read by different threads of the program
        # 2. the reverse recurrence over the segment
        for k in range(0, s1 - s0):
            t = s1 - 1 - k
            h_prev = tl.load(scratch + (t - s0) * (BLOCK_D * BLOCK_N) + tile)
            u = tl.load(u_ptr + b * s_ub + t * s_ul + offs_d * s_ud, mask=mask_d, other=0.0).to(COMPUTE)
            raw = tl.load(dt_ptr + b * s_tb + t * s_tl + offs_d * s_td, mask=mask_d, other=0.0).to(COMPUTE)
            Bt = tl.load(B_ptr + b * s_Bb + t * s_Bl + offs_n * s_Bn, mask=mask_n, other=0.0).to(COMPUTE)
            Ct = tl.load(C_ptr + b * s_Cb + t * s_Cl + offs_n * s_Cn, mask=mask_n, other=0.0).to(COMPUTE)
            dout = tl.load(dy_ptr + b * s_gb + t * s_gl + offs_d * s_gd, mask=mask_d, other=0.0).to(COMPUTE)
            if HAS_BIAS:
                raw = raw + bias
            dl = raw
            if SOFTPLUS:
                dl = _softplus(raw)
            dA = tl.exp(dl[:, None] * A)
            h = dA * h_prev + (dl * u)[:, None] * Bt[None, :]
            if HAS_Z:   # out = y silu(z): dy = dout silu(z), dz = dout y silu'(z), y recomputed
                z = tl.load(z_ptr + b * s_zb + t * s_zl + offs_d * s_zd, mask=mask_d, other=0.0).to(COMPUTE)
                sig = tl.sigmoid(z)
                y = tl.sum(h * Ct[None, :], axis=1)
                if HAS_D:
                    y += Dv * u
                dz = dout * y * sig * (1.0 + z * (1.0 - sig))
                tl.store(dz_ptr + b * s_gb + t * s_gl + offs_d * s_gd, dz.to(dz_ptr.dtype.element_ty), mask=mask_d)
                dy = dout * z * sig
            else:
                dy = dout
            g = carry + dy[:, None] * Ct[None, :]
            gB = tl.sum(g * Bt[None, :], axis=1)
            du = gB * dl
            if HAS_D:
                du += Dv * dy
                dD_acc += dy * u
            gdAh = g * dA * h_prev
            ddl = tl.sum(gdAh * A, axis=1) + gB * u
            dA_acc += gdAh * dl[:, None]
            if SOFTPLUS:
                ddl = ddl * tl.sigmoid(raw)
            dbias_acc += ddl
            tl.store(du_ptr + b * s_gb + t * s_gl + offs_d * s_gd, du.to(du_ptr.dtype.element_ty), mask=mask_d)
            tl.store(ddt_ptr + b * s_gb + t * s_gl + offs_d * s_gd, ddl.to(ddt_ptr.dtype.element_ty), mask=mask_d)
            tl.store(dC_ptr + part + t * dstate + offs_n, tl.sum(dy[:, None] * h, axis=0), mask=mask_n)
            tl.store(dB_ptr + part + t * dstate + offs_n, tl.sum(g * (dl * u)[:, None], axis=0), mask=mask_n)
            carry = dA * g
        tl.debug_barrier()   # before the next segment overwrites the scratch
    tl.store(dA_ptr + b * s_kb + k_offs, dA_acc, mask=mask_dn)
    tl.store(dh0_ptr + b * s_kb + k_offs, carry, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + b * dim + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + b * dim + offs_d, dbias_acc, mask=mask_d)
