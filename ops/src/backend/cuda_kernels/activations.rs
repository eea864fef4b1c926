//! The activation kernels; `act` numbers are [`act_code`]'s.

use crate::backend::Activation;

/// The kernel-side number of an elementwise activation (softmax has its own kernels).
pub(in crate::backend) fn act_code(act: Activation) -> i32 {
    match act {
        Activation::Linear => 0,
        Activation::Relu => 1,
        Activation::Sigmoid => 2,
        Activation::Tanh => 3,
        Activation::Gelu => 4,
        Activation::Softmax => 5,
    }
}

pub(super) const ACTIVATIONS: &str = r#"
extern "C" __global__ void act_forward(float* x, long long n, int act) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    if (act == 1) v = v > 0.0f ? v : 0.0f;
    else if (act == 2) v = 1.0f / (1.0f + expf(-v));
    else if (act == 3) v = tanhf(v);
    else if (act == 4) v = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    x[i] = v;
}

extern "C" __global__ void act_backward(const float* x, const float* y, float* dy, long long n, int act) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = dy[i];
    if (act == 1) g = y[i] > 0.0f ? g : 0.0f;
    else if (act == 2) g *= y[i] * (1.0f - y[i]);
    else if (act == 3) g *= 1.0f - y[i] * y[i];
    else if (act == 4) {
        float v = x[i];
        float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
        float pdf = expf(-0.5f * v * v) * 0.39894228040143268f;
        g *= cdf + v * pdf;
    }
    dy[i] = g;
}

// One block of 256 threads per row: max, sum of exponentials, scale.
extern "C" __global__ void softmax_rows(float* x, long long cols) {
    __shared__ float part[256];
    float* row = x + (long long)blockIdx.x * cols;
    float m = __int_as_float(0xff800000);  // -infinity, without the math headers
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, row[j]);
    part[threadIdx.x] = m;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) part[threadIdx.x] = fmaxf(part[threadIdx.x], part[threadIdx.x + s]);
        __syncthreads();
    }
    m = part[0];
    __syncthreads();
    float sum = 0.0f;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
        float e = expf(row[j] - m);
        row[j] = e;
        sum += e;
    }
    part[threadIdx.x] = sum;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    float inv = 1.0f / part[0];
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) row[j] *= inv;
}

// dy = y * (dy - <dy, y>) per row, one block of 256 threads per row.
extern "C" __global__ void softmax_backward_rows(const float* y, float* dy, long long cols) {
    __shared__ float part[256];
    const float* yr = y + (long long)blockIdx.x * cols;
    float* gr = dy + (long long)blockIdx.x * cols;
    float dot = 0.0f;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) dot += gr[j] * yr[j];
    part[threadIdx.x] = dot;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    dot = part[0];
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) gr[j] = yr[j] * (gr[j] - dot);
}
"#;
