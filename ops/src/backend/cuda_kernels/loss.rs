//! The losses: a block per row for the cross-entropies, per-block partial
//! sums (in double, added in order by the host) for the elementwise ones.

pub(super) const LOSS: &str = r#"
// The sum of every thread's `v` over a block of 256, in `sh` (256 values).
template <typename T> __device__ T block_sum(T v, T* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) sh[threadIdx.x] += sh[threadIdx.x + k];
        __syncthreads();
    }
    T r = sh[0];
    __syncthreads();
    return r;
}

__device__ float block_max_f(float v, float* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + k]);
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

// One block of 256 threads per row of `c` predictions: the row's loss into
// row_loss[row] and d loss / d pred (already divided by the rows) into grad.
// Targets: labels[row] (sparse) when labels is not null, else dense[row, :].
extern "C" __global__ void cross_entropy_rows(const float* pred, long long c, const int* labels, const float* dense,
                                              int from_logits, float* grad, float inv_rows, double* row_loss) {
    __shared__ double dsh[256];
    __shared__ float fsh[256];
    long long r = blockIdx.x;
    const float* p = pred + r * c;
    float* g = grad + r * c;
    int label = labels ? labels[r] : -1;
    double loss = 0.0;
    if (from_logits) {
        float m = __int_as_float(0xff800000);
        for (long long j = threadIdx.x; j < c; j += blockDim.x) m = fmaxf(m, p[j]);
        m = block_max_f(m, fsh);
        double s = 0.0;
        float ts = 0.0f;
        for (long long j = threadIdx.x; j < c; j += blockDim.x) {
            s += (double)expf(p[j] - m);
            ts += dense ? dense[r * c + j] : (j == label ? 1.0f : 0.0f);
        }
        s = block_sum(s, dsh);
        ts = block_sum(ts, fsh);
        double lse = (double)m + log(s);
        for (long long j = threadIdx.x; j < c; j += blockDim.x) {
            float t = dense ? dense[r * c + j] : (j == label ? 1.0f : 0.0f);
            double logp = (double)p[j] - lse;
            loss -= (double)t * logp;
            g[j] = (ts * (float)exp(logp) - t) * inv_rows;
        }
    } else {
        float s = 0.0f;
        for (long long j = threadIdx.x; j < c; j += blockDim.x) s += p[j];
        s = block_sum(s, fsh);
        float dsum = 0.0f;
        for (long long j = threadIdx.x; j < c; j += blockDim.x) {
            float t = dense ? dense[r * c + j] : (j == label ? 1.0f : 0.0f);
            float pj = p[j] / s;
            float pc = fminf(fmaxf(pj, 1e-7f), 1.0f - 1e-7f);
            loss -= (double)t * log((double)pc);
            int unclipped = pj == pc;
            g[j] = (unclipped && t != 0.0f) ? -t / p[j] : 0.0f;
            if (unclipped) dsum += t;
        }
        dsum = block_sum(dsum, fsh);
        for (long long j = threadIdx.x; j < c; j += blockDim.x) g[j] = (g[j] + dsum / s) * inv_rows;
    }
    loss = block_sum(loss, dsh);
    if (threadIdx.x == 0) row_loss[r] = loss;
}

// kind 0: binary cross-entropy (from logits or probabilities); 1: squared
// error. grad = d mean / d pred; partial[block] = the block's loss sum.
extern "C" __global__ void elementwise_loss(int kind, const float* pred, const float* target, int from_logits,
                                            float* grad, long long n, double* partial) {
    __shared__ double dsh[256];
    float inv = 1.0f / (float)n;
    double total = 0.0;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (long long)gridDim.x * blockDim.x) {
        float x = pred[k], t = target[k];
        if (kind == 1) {
            float d = x - t;
            total += (double)d * (double)d;
            grad[k] = 2.0f * d / (float)n;
        } else if (from_logits) {
            total += (double)(fmaxf(x, 0.0f) - x * t + logf(1.0f + expf(-fabsf(x))));
            grad[k] = (1.0f / (1.0f + expf(-x)) - t) * inv;
        } else {
            float pc = fminf(fmaxf(x, 1e-7f), 1.0f - 1e-7f);
            total -= (double)t * log((double)pc) + (1.0 - (double)t) * log(1.0 - (double)pc);
            grad[k] = pc == x ? (-t / pc + (1.0f - t) / (1.0f - pc)) * inv : 0.0f;
        }
    }
    total = block_sum(total, dsh);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
}
"#;
