//! Copies over strided views, elementwise arithmetic, row sums, dot products,
//! and row gathers and scatters.

pub(super) const DATA: &str = r#"
// dst[i, j] = src[i, j] (or +=) over two strided views of `rows x cols`.
extern "C" __global__ void copy_view(const float* src, long long so, long long srs, long long scs,
                                     float* dst, long long d0, long long drs, long long dcs,
                                     long long rows, long long cols, int accumulate) {
    long long n = rows * cols;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
        long long i = e / cols, j = e % cols;
        float v = src[so + i * srs + j * scs];
        float* d = dst + d0 + i * drs + j * dcs;
        *d = accumulate ? *d + v : v;
    }
}

// op 0: out = a + b; 1: out = a * b (+= when accumulate); 2: out += a * scale;
// 3: out = a * scale + offset; 4: out *= scale.
extern "C" __global__ void elementwise(int op, const float* a, const float* b, float* out, long long n,
                                       float scale, float offset, int accumulate) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        if (op == 0) out[i] = a[i] + b[i];
        else if (op == 1) out[i] = accumulate ? out[i] + a[i] * b[i] : a[i] * b[i];
        else if (op == 2) out[i] += a[i] * scale;
        else if (op == 3) out[i] = a[i] * scale + offset;
        else out[i] *= scale;
    }
}

// acc[j] += sum over rows of x[r, j]; one thread per column, rows in order.
extern "C" __global__ void sum_rows(const float* x, long long rows, long long cols, float* acc) {
    long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    float s = acc[j];
    for (long long r = 0; r < rows; r++) s += x[r * cols + j];
    acc[j] = s;
}

// partial[block] = sum of a[i] * b[i] (in double) over the block's fixed share;
// the host adds the partials in order.
extern "C" __global__ void dot_partials(const float* a, const float* b, long long n, double* partial) {
    __shared__ double part[256];
    double s = 0.0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        s += (double)a[i] * (double)b[i];
    part[threadIdx.x] = s;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) part[threadIdx.x] += part[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = part[0];
}

// out[i, :] = table[ids[i], :] (ids checked by the host).
extern "C" __global__ void gather_rows(const float* table, long long width, const int* ids, long long count, float* out) {
    long long n = count * width;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
        long long i = e / width, j = e % width;
        out[e] = table[(long long)ids[i] * width + j];
    }
}

// One block per distinct id: table[id, j] += rows[p, j] for the id's
// positions p in increasing order (the CPU's order), threads over j.
extern "C" __global__ void scatter_add_rows(const int* distinct, const int* starts, const int* positions,
                                            long long width, const float* rows, float* table) {
    long long id = distinct[blockIdx.x];
    int begin = starts[blockIdx.x], end = starts[blockIdx.x + 1];
    for (long long j = threadIdx.x; j < width; j += blockDim.x) {
        float s = table[id * width + j];
        for (int p = begin; p < end; p++) s += rows[(long long)positions[p] * width + j];
        table[id * width + j] = s;
    }
}
"#;
