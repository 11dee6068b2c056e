// CUDA kernels of selfsup-kernels' fused training ops, compiled at first use
// with NVRTC. Layouts: activations (N, C, S) contiguous, S the spatial size;
// per-channel statistics (3, C): mean, biased variance, 1/sqrt(var + eps).
// Activation codes: 0 identity, 1 ReLU, 2 ReLU6 (as the CPU ops).

__device__ __forceinline__ float act_apply(float v, int act) {
    if (act == 1) return fmaxf(v, 0.f);
    if (act == 2) return fminf(fmaxf(v, 0.f), 6.f);
    return v;
}

// The gradient through the activation, read off its output y.
__device__ __forceinline__ float act_mask(float g, float y, int act) {
    if (act == 1) return y > 0.f ? g : 0.f;
    if (act == 2) return (y > 0.f && y < 6.f) ? g : 0.f;
    return g;
}

// Sums a value over the block (blockDim.x a multiple of 32, at most 1024);
// the result is valid in thread 0.
__device__ float block_sum(float v, float* shared) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int warps = blockDim.x >> 5;
    v = threadIdx.x < warps ? shared[threadIdx.x] : 0.f;
    if (warp == 0)
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// Block (c, split) sums its share of channel c's N*S values: partial[2 * (c
// * splits + split) + {0, 1}] = (sum of v, sum of v^2), in a fixed order (no
// atomics: the result does not depend on scheduling).
extern "C" __global__ void bn_stats_partial(const float* x, double* partial,
        int N, int C, int S, long per_block) {
    __shared__ float sh[32];
    int c = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
    long total = (long)N * S;
    long start = (long)split * per_block;
    long end = start + per_block < total ? start + per_block : total;
    float s = 0.f, ss = 0.f;
    for (long e = start + threadIdx.x; e < end; e += blockDim.x) {
        long n = e / S, i = e - n * S;
        float v = x[(n * C + c) * S + i];
        s += v;
        ss += v * v;
    }
    s = block_sum(s, sh);
    ss = block_sum(ss, sh);
    if (threadIdx.x == 0) {
        long o = 2 * ((long)c * splits + split);
        partial[o] = (double)s;
        partial[o + 1] = (double)ss;
    }
}

// stats (3, C) from the partial sums, in double.
extern "C" __global__ void bn_stats_finish(const double* partial, float* stats,
        int C, int splits, long count, float eps) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double s = 0.0, ss = 0.0;
    for (int k = 0; k < splits; ++k) {
        s += partial[2 * ((long)c * splits + k)];
        ss += partial[2 * ((long)c * splits + k) + 1];
    }
    double mean = s / (double)count;
    double var = ss / (double)count - mean * mean;
    if (var < 0.0) var = 0.0;
    stats[c] = (float)mean;
    stats[C + c] = (float)var;
    stats[2 * C + c] = (float)(1.0 / sqrt(var + (double)eps));
}

// y = act(x * a + b [+ r]), a = gamma * invstd, b = beta - mean * a; r, a
// residual, may be null.
extern "C" __global__ void bn_apply(const float* x, const float* gamma, const float* beta,
        const float* stats, const float* r, float* y, int C, int S, long n, int act) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n;
         i += (long)blockDim.x * gridDim.x) {
        int c = (int)((i / S) % C);
        float a = gamma[c] * stats[2 * C + c];
        float b = beta[c] - stats[c] * a;
        float v = x[i] * a + b;
        if (r) v += r[i];
        y[i] = act_apply(v, act);
    }
}

// out = g through the activation (read off its output y).
extern "C" __global__ void act_grad(const float* g, const float* y, float* out, long n,
        int act) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n;
         i += (long)blockDim.x * gridDim.x)
        out[i] = act_mask(g[i], y[i], act);
}

// An exponential moving average in place: r = r * keep + v * take.
extern "C" __global__ void ema_update(float* r, const float* v, int n, float keep,
        float take) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) r[i] = r[i] * keep + v[i] * take;
}

// Per (channel, split): sums of g' and g' * (x - mean), g' the gradient
// through the activation.
extern "C" __global__ void bn_grad_partial(const float* x, const float* y, const float* g,
        const float* stats, double* partial, int N, int C, int S, long per_block, int act) {
    __shared__ float sh[32];
    int c = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
    long total = (long)N * S;
    long start = (long)split * per_block;
    long end = start + per_block < total ? start + per_block : total;
    float mu = stats[c];
    float s = 0.f, sx = 0.f;
    for (long e = start + threadIdx.x; e < end; e += blockDim.x) {
        long n = e / S, i = e - n * S;
        long k = (n * C + c) * S + i;
        float gv = act_mask(g[k], y[k], act);
        s += gv;
        sx += gv * (x[k] - mu);
    }
    s = block_sum(s, sh);
    sx = block_sum(sx, sh);
    if (threadIdx.x == 0) {
        long o = 2 * ((long)c * splits + split);
        partial[o] = (double)s;
        partial[o + 1] = (double)sx;
    }
}

// grads (2, C): d gamma = sum g' x_hat, d beta = sum g'.
extern "C" __global__ void bn_grad_finish(const double* partial, const float* stats,
        float* grads, int C, int splits) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double s = 0.0, sx = 0.0;
    for (int k = 0; k < splits; ++k) {
        s += partial[2 * ((long)c * splits + k)];
        sx += partial[2 * ((long)c * splits + k) + 1];
    }
    grads[c] = (float)(sx * (double)stats[2 * C + c]);
    grads[C + c] = (float)s;
}

// dx = k g' + b x + d per channel, k = gamma invstd, b = -k invstd dgamma / M,
// d = -k dbeta / M - b mean (the CPU op's coefficients).
extern "C" __global__ void bn_input_grad(const float* x, const float* y, const float* g,
        const float* gamma, const float* stats, const float* grads, float* dx,
        int C, int S, long n, float count, int act) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n;
         i += (long)blockDim.x * gridDim.x) {
        int c = (int)((i / S) % C);
        float inv = stats[2 * C + c];
        float k = gamma[c] * inv;
        float b = -k * inv * grads[c] / count;
        float d = -k * grads[C + c] / count - b * stats[c];
        dx[i] = k * act_mask(g[i], y[i], act) + b * x[i] + d;
    }
}

extern "C" __global__ void add_relu(const float* a, const float* b, float* y, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n;
         i += (long)blockDim.x * gridDim.x)
        y[i] = fmaxf(a[i] + b[i], 0.f);
}


// One AdamW step in place, in candle_nn::AdamW's order of operations.
// c: beta1, 1 - beta1, beta2, 1 - beta2, 1 / (1 - beta1^t),
// 1 / (1 - beta2^t), 1 - lr * weight_decay, eps, lr.
extern "C" __global__ void adamw_step(float* theta, const float* g, float* m, float* v,
        long n, float beta1, float omb1, float beta2, float omb2, float scale_m,
        float scale_v, float decay, float eps, float lr) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n;
         i += (long)blockDim.x * gridDim.x) {
        float gi = g[i];
        float nm = __fadd_rn(__fmul_rn(m[i], beta1), __fmul_rn(gi, omb1));
        float nv = __fadd_rn(__fmul_rn(v[i], beta2), __fmul_rn(__fmul_rn(gi, gi), omb2));
        float m_hat = __fmul_rn(nm, scale_m);
        float v_hat = __fmul_rn(nv, scale_v);
        float adjusted = __fdiv_rn(m_hat, __fadd_rn(__fsqrt_rn(v_hat), eps));
        theta[i] = __fsub_rn(__fmul_rn(theta[i], decay), __fmul_rn(adjusted, lr));
        m[i] = nm;
        v[i] = nv;
    }
}

// Depthwise convolution's weight gradient, K x K taps: block (c, split) sums
// g * x over its share of channel c's B*Ho*Wo output positions for every tap
// at once (each output's gradient read once), writing partial[(c * splits +
// split) * K*K + tap]; dw_wgrad_finish adds the splits in order.
template <int K>
__device__ void dw_wgrad_partial(const float* x, const float* g, float* partial,
        int B, int C, int H, int W, int Ho, int Wo, int S, int P, long per_block) {
    __shared__ float sh[32];
    int c = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
    long total = (long)B * Ho * Wo;
    long start = (long)split * per_block;
    long end = start + per_block < total ? start + per_block : total;
    float acc[K * K];
#pragma unroll
    for (int t = 0; t < K * K; ++t) acc[t] = 0.f;
    for (long e = start + threadIdx.x; e < end; e += blockDim.x) {
        int j = (int)(e % Wo);
        long t = e / Wo;
        int i = (int)(t % Ho);
        long plane = (t / Ho) * C + c;
        float gv = g[(plane * Ho + i) * Wo + j];
        const float* xp = x + plane * (long)H * W;
#pragma unroll
        for (int u = 0; u < K; ++u) {
            int r = i * S + u - P;
            if (r < 0 || r >= H) continue;
#pragma unroll
            for (int v = 0; v < K; ++v) {
                int q = j * S + v - P;
                if (q >= 0 && q < W) acc[u * K + v] += gv * xp[r * W + q];
            }
        }
    }
#pragma unroll
    for (int t = 0; t < K * K; ++t) {
        float s = block_sum(acc[t], sh);
        if (threadIdx.x == 0) partial[((long)c * splits + split) * (K * K) + t] = s;
    }
}

extern "C" __global__ void dw_wgrad_partial3(const float* x, const float* g, float* partial,
        int B, int C, int H, int W, int Ho, int Wo, int S, int P, long per_block) {
    dw_wgrad_partial<3>(x, g, partial, B, C, H, W, Ho, Wo, S, P, per_block);
}

extern "C" __global__ void dw_wgrad_partial5(const float* x, const float* g, float* partial,
        int B, int C, int H, int W, int Ho, int Wo, int S, int P, long per_block) {
    dw_wgrad_partial<5>(x, g, partial, B, C, H, W, Ho, Wo, S, P, per_block);
}

extern "C" __global__ void dw_wgrad_finish(const float* partial, float* gw, int C, int KK,
        int splits) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= C * KK) return;
    int c = idx / KK, t = idx % KK;
    float s = 0.f;
    for (int k = 0; k < splits; ++k) s += partial[((long)c * splits + k) * KK + t];
    gw[idx] = s;
}
