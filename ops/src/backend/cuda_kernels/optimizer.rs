//! The optimizer rules (Keras 3's formulas, as `backend/cpu/optimizer.rs`).

pub(super) const OPTIMIZER: &str = r#"
// rule 0: SGD; 1: SGD with momentum a (flag: Nesterov), slot s0 = m;
// 2: Adam/AdamW with alpha a, beta_1 b, beta_2 c, epsilon d, decay e (= weight_decay * lr), s0 = m, s1 = v;
// 3: RMSprop with rho a, momentum b, epsilon c, s0 = v, s1 = m (when b != 0).
extern "C" __global__ void optimizer_step(int rule, float* w, const float* g, float* s0, float* s1, long long n,
                                          float lr, float a, float b, float c, float d, float e, int flag) {
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (long long)gridDim.x * blockDim.x) {
        float gk = g[k];
        if (rule == 0) {
            w[k] -= lr * gk;
        } else if (rule == 1) {
            float m = a * s0[k] - lr * gk;
            s0[k] = m;
            w[k] += flag ? a * m - lr * gk : m;
        } else if (rule == 2) {
            float wk = w[k];
            wk -= wk * e;
            float m = s0[k] + (gk - s0[k]) * (1.0f - b);
            float v = s1[k] + (gk * gk - s1[k]) * (1.0f - c);
            s0[k] = m;
            s1[k] = v;
            w[k] = wk - m * a / (sqrtf(v) + d);
        } else {
            float v = a * s0[k] + (1.0f - a) * gk * gk;
            s0[k] = v;
            if (b == 0.0f) {
                w[k] -= lr * gk / sqrtf(v + c);
            } else {
                float m = b * s1[k] + lr * gk / sqrtf(v + c);
                s1[k] = m;
                w[k] -= m;
            }
        }
    }
}
"#;
