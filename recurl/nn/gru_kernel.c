/* The time loops of one GRU layer (nn.GRU's math), forward and backward, for small CPU shapes.
 *
 * Compiled on first use by recurl/nn/native.py (`cc -O3 -march=native`), called through ctypes. PyTorch
 * runs everything that is batched over time (the input projections, the weight gradients); these two
 * functions run only what is sequential: per step, the recurrent matmul and the gate arithmetic, for all
 * T steps in one call, so the loop costs no Python or dispatcher overhead per step.
 *
 * Layouts (float32, C-contiguous): gi[T, B, 3H] = x W_ih^T + b_ih; whh_t[H, 3H] = W_hh^T; whh[3H, H] = W_hh;
 * keep[T, B] (1, or 0 at an episode start; NULL: no reset after t = 0); gate order r, z, n as in nn.GRU.
 * Every loop over a row is branch-free arithmetic on contiguous floats, so the compiler vectorises it;
 * exp is computed inline for that reason (libm's expf and tanhf are scalar calls).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* exp(x) to about 1 ulp for |x| < 87: x = k ln2 + r (Cody-Waite), exp(r) by Cephes' degree-6 polynomial,
 * 2^k by building the float's exponent bits. */
static inline float exp_(float x) {
    x = x < -87.0f ? -87.0f : (x > 87.0f ? 87.0f : x);
    const float k = (x * 1.44269504089f + 12582912.0f) - 12582912.0f; /* round to nearest */
    const float r = (x - k * 0.693359375f) - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float sigmoid_(float x) { return 1.0f / (1.0f + exp_(-x)); }
static inline float tanh_(float x) { return 1.0f - 2.0f / (1.0f + exp_(2.0f * x)); }

/* Forward. Writes, for every step: hp[t] = the state the step reads (keep * h_{t-1}), rz[t] = (r, z),
 * ghn[t] = W_hn hp + b_hn, n[t] and y[t] = h_t = n + z (hp - n). gh[B, 3H] is scratch. */
void gru_forward(int T, int B, int H, const float *restrict gi, const float *restrict b_hh,
                 const float *restrict whh_t, const float *restrict h0, const float *restrict keep,
                 float *restrict hp, float *restrict rz, float *restrict ghn, float *restrict n,
                 float *restrict y, float *restrict gh) {
    const int H3 = 3 * H;
    for (int t = 0; t < T; t++) {
        const float *h_prev = t ? y + (size_t)(t - 1) * B * H : h0;
        float *hp_t = hp + (size_t)t * B * H;
        for (int b = 0; b < B; b++) {
            const float k = keep ? keep[(size_t)t * B + b] : 1.0f;
            for (int i = 0; i < H; i++) hp_t[b * H + i] = k * h_prev[b * H + i];
            memcpy(gh + (size_t)b * H3, b_hh, sizeof(float) * H3);
        }
        for (int i = 0; i < H; i++) { /* gh[b] += hp[b, i] * W_hh^T[i]: each row of W_hh^T read once */
            const float *w = whh_t + (size_t)i * H3;
            for (int b = 0; b < B; b++) {
                const float hv = hp_t[b * H + i];
                float *g = gh + (size_t)b * H3;
                for (int j = 0; j < H3; j++) g[j] += hv * w[j];
            }
        }
        for (int b = 0; b < B; b++) {
            const size_t row = (size_t)t * B + b;
            const float *g_in = gi + row * H3, *g_h = gh + (size_t)b * H3, *hp_r = hp_t + b * H;
            float *rz_r = rz + row * 2 * H, *ghn_r = ghn + row * H, *n_r = n + row * H, *y_r = y + row * H;
            for (int j = 0; j < 2 * H; j++) rz_r[j] = sigmoid_(g_in[j] + g_h[j]);
            for (int i = 0; i < H; i++) {
                const float r = rz_r[i], z = rz_r[H + i], gn = g_h[2 * H + i];
                const float nv = tanh_(g_in[2 * H + i] + r * gn);
                ghn_r[i] = gn;
                n_r[i] = nv;
                y_r[i] = nv + z * (hp_r[i] - nv);
            }
        }
    }
}

/* Backward, from dy[T, B, H] = dL/dy. Writes dgh[T, B, 3H] = dL/d(W_hh hp + b_hh), dgin[T, B, H] =
 * dL/d(gi_n) and dh0[B, H]. g[B, H] and g_prev[B, H] are scratch. The gradient carried into step t - 1 is
 * multiplied by keep[t]: exactly zero across a reset. */
void gru_backward(int T, int B, int H, const float *restrict dy, const float *restrict whh,
                  const float *restrict keep, const float *restrict hp, const float *restrict rz,
                  const float *restrict ghn, const float *restrict n, float *restrict dgh, float *restrict dgin,
                  float *restrict dh0, float *restrict g, float *restrict g_prev) {
    const int H3 = 3 * H;
    memset(g, 0, sizeof(float) * B * H);
    for (int t = T - 1; t >= 0; t--) {
        float *dgh_t = dgh + (size_t)t * B * H3;
        for (int b = 0; b < B; b++) {
            const size_t row = (size_t)t * B + b;
            const float *g_r = g + b * H, *dy_r = dy + row * H, *rz_r = rz + row * 2 * H;
            const float *ghn_r = ghn + row * H, *n_r = n + row * H, *hp_r = hp + row * H;
            float *dgh_r = dgh_t + (size_t)b * H3, *dgin_r = dgin + row * H, *gp = g_prev + b * H;
            for (int i = 0; i < H; i++) {
                const float gv = g_r[i] + dy_r[i];
                const float r = rz_r[i], z = rz_r[H + i], nv = n_r[i];
                const float dn = gv * (1.0f - z) * (1.0f - nv * nv);
                dgin_r[i] = dn;
                dgh_r[i] = dn * ghn_r[i] * r * (1.0f - r);
                dgh_r[H + i] = gv * (hp_r[i] - nv) * z * (1.0f - z);
                dgh_r[2 * H + i] = dn * r;
                gp[i] = gv * z;
            }
        }
        for (int j = 0; j < H3; j++) { /* g_prev[b] += dgh[b, j] * W_hh[j]: each row of W_hh read once */
            const float *w = whh + (size_t)j * H;
            for (int b = 0; b < B; b++) {
                const float d = dgh_t[(size_t)b * H3 + j];
                float *gp = g_prev + b * H;
                for (int i = 0; i < H; i++) gp[i] += d * w[i];
            }
        }
        for (int b = 0; b < B; b++) {
            const float k = keep ? keep[(size_t)t * B + b] : 1.0f;
            for (int i = 0; i < H; i++) g[b * H + i] = k * g_prev[b * H + i];
        }
    }
    memcpy(dh0, g, sizeof(float) * B * H);
}
