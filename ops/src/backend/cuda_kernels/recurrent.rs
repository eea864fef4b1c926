//! The LSTM and GRU gate work of one step: a thread per (batch row, unit),
//! which owns that unit's gates, as `backend/cpu/recurrent.rs` computes them.
//! `mask` is one byte per (batch, step) row, or null for all valid.

pub(super) const RECURRENT: &str = r#"
__device__ float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }

extern "C" __global__ void lstm_step(long long step, long long b, long long t, long long u, const unsigned char* mask,
                                     float* gates, float* cs, float* tc, float* hprev, float* h_last) {
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= b * u) return;
    long long row = e / u, k = e % u, r = row * t + step;
    float* z = gates + r * 4 * u;
    float ig = sigm(z[k]), fg = sigm(z[u + k]), gg = tanhf(z[2 * u + k]), og = sigm(z[3 * u + k]);
    z[k] = ig; z[u + k] = fg; z[2 * u + k] = gg; z[3 * u + k] = og;
    int valid = mask ? mask[r] : 1;
    float cp = step > 0 ? cs[(r - 1) * u + k] : 0.0f;
    float c = valid ? fg * cp + ig * gg : cp;
    cs[r * u + k] = c;
    float th = tanhf(c);
    tc[r * u + k] = th;
    float h = valid ? og * th : hprev[r * u + k];
    if (step + 1 < t) hprev[(r + 1) * u + k] = h; else h_last[row * u + k] = h;
}

extern "C" __global__ void lstm_step_backward(long long step, long long b, long long t, long long u,
                                              const unsigned char* mask, const float* gates, const float* cs,
                                              const float* tc, const float* dh, float* dc, float* dz) {
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= b * u) return;
    long long row = e / u, k = e % u, r = row * t + step;
    if (mask && !mask[r]) return;
    const float* z = gates + r * 4 * u;
    float ig = z[k], fg = z[u + k], gg = z[2 * u + k], og = z[3 * u + k];
    float cp = step > 0 ? cs[(r - 1) * u + k] : 0.0f;
    float th = tc[r * u + k], dhk = dh[row * u + k];
    float dcn = dc[row * u + k] + dhk * og * (1.0f - th * th);
    float* d = dz + r * 4 * u;
    d[k] = dcn * gg * ig * (1.0f - ig);
    d[u + k] = dcn * cp * fg * (1.0f - fg);
    d[2 * u + k] = dcn * ig * (1.0f - gg * gg);
    d[3 * u + k] = dhk * th * og * (1.0f - og);
    dc[row * u + k] = dcn * fg;
}

extern "C" __global__ void carry_masked(long long step, long long b, long long t, long long u,
                                        const unsigned char* mask, const float* dh, float* dh_prev) {
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= b * u) return;
    long long row = e / u;
    if (!mask[row * t + step]) dh_prev[e] = dh[e];
}

extern "C" __global__ void gru_step(long long step, long long b, long long t, long long u, const unsigned char* mask,
                                    float* xz, const float* rec, float* hprev, float* h_last) {
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= b * u) return;
    long long row = e / u, k = e % u, r = row * t + step;
    float* z = xz + r * 3 * u;
    const float* rc = rec + r * 3 * u;
    float zg = sigm(z[k] + rc[k]), rg = sigm(z[u + k] + rc[u + k]);
    float hh = tanhf(z[2 * u + k] + rg * rc[2 * u + k]);
    z[k] = zg; z[u + k] = rg; z[2 * u + k] = hh;
    float hp = hprev[r * u + k];
    int valid = mask ? mask[r] : 1;
    float h = valid ? zg * hp + (1.0f - zg) * hh : hp;
    if (step + 1 < t) hprev[(r + 1) * u + k] = h; else h_last[row * u + k] = h;
}

extern "C" __global__ void gru_step_backward(long long step, long long b, long long t, long long u,
                                             const unsigned char* mask, const float* xz, const float* rec,
                                             const float* hprev, const float* dh, float* dh_prev, float* dxz,
                                             float* drec) {
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= b * u) return;
    long long row = e / u, k = e % u, r = row * t + step;
    float dhk = dh[row * u + k];
    if (mask && !mask[r]) { dh_prev[row * u + k] = dhk; return; }
    const float* z = xz + r * 3 * u;
    const float* rc = rec + r * 3 * u;
    float zg = z[k], rg = z[u + k], hh = z[2 * u + k], hp = hprev[r * u + k];
    float dzg = dhk * (hp - hh);
    float dah = dhk * (1.0f - zg) * (1.0f - hh * hh);
    float drg = dah * rc[2 * u + k];
    float daz = dzg * zg * (1.0f - zg);
    float dar = drg * rg * (1.0f - rg);
    float* dx = dxz + r * 3 * u;
    float* dr = drec + r * 3 * u;
    dx[k] = daz; dx[u + k] = dar; dx[2 * u + k] = dah;
    dr[k] = daz; dr[u + k] = dar; dr[2 * u + k] = dah * rg;
    dh_prev[row * u + k] = dhk * zg;
}
"#;
