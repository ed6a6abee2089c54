// Fused CPU kernels for the elementwise parts of the EvoNorm layers.
//
// The statistics (batch, instance and group moments) are computed by the
// layers with TensorFlow's own ops; what is fused here is the rest, which
// TensorFlow would otherwise run as one kernel, and one pass over the
// activation, per elementwise op. Every kernel sees the input as
//
//   [N, S, C] (channels last)   or   [N, C, S] (channels first)
//
// and takes its small operands stacked as `params` of shape [K, N, C] (one
// value per sample and channel; per-channel operands are broadcast by the
// caller). Three families cover the six layers:
//
//   b_linear  (EvoNorm-B0, B1)  K=5  s, a, b, g, h
//       y = x / max(s, a*x + b) * g + h
//   b_sqrt    (EvoNorm-B2)      K=4  s, m, g, h
//       y = x / max(s, sign(m - x) * sqrt(|m - x| + eps)) * g + h
//   s_sigmoid (EvoNorm-S0..S2)  K=3  a, scale, shift
//       y = x * sigmoid(a*x) * scale + shift
//
// The forward kernel reads x once and writes y once. The backward kernel
// reads dy and x once, writes dx, and reduces the cotangents of the K
// operands over S in the same pass. Ties of the max send the gradient to s,
// as TensorFlow's Maximum does. Arithmetic is float32 whatever the input type
// (float, half, bfloat16); reductions accumulate in double.
//
// Gradients of these kernels are not registered here: the Python side wraps
// them in a custom gradient whose own gradient (second order) is plain
// autodiff of the composite formula (evonorm_layers/fused.py).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace evonorm {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;
using ::tensorflow::shape_inference::InferenceContext;

// The sigmoid as 1 / (1 + exp(-z)), with exp on float32 by Cody-Waite range
// reduction and a degree-6 polynomial (the Cephes expf, about 1 ulp). Written
// without branches or calls so that the compiler vectorizes the loops.
inline float Exp(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.7f ? 88.7f : x;
  const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  static_assert(sizeof(scale) == sizeof(bits), "float is 32 bits");
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float Sigmoid(float z) { return 1.0f / (1.0f + Exp(-z)); }

// y = x / max(s, a*x + b) * g + h
struct BLinear {
  static constexpr int K = 5;
  static inline float Forward(float x, const float* p, int64_t m, float) {
    const float t = p[1 * m] * x + p[2 * m];
    const float d = p[0 * m] >= t ? p[0 * m] : t;
    return x / d * p[3 * m] + p[4 * m];
  }
  // Returns dx; adds the cotangents of the K operands to acc.
  static inline float Backward(float dy, float x, const float* p, int64_t m,
                               float, double* acc) {
    const float t = p[1 * m] * x + p[2 * m];
    const bool to_s = p[0 * m] >= t;
    const float d = to_s ? p[0 * m] : t;
    const float u = x / d;
    const float du = dy * p[3 * m];
    const float dd = -du * u / d;
    acc[0 * m] += to_s ? dd : 0.0f;
    acc[1 * m] += to_s ? 0.0f : dd * x;
    acc[2 * m] += to_s ? 0.0f : dd;
    acc[3 * m] += dy * u;
    acc[4 * m] += dy;
    return du / d + (to_s ? 0.0f : dd * p[1 * m]);
  }
};

// y = x / max(s, sign(m - x) * sqrt(|m - x| + eps)) * g + h
struct BSqrt {
  static constexpr int K = 4;
  static inline float Term(float z, float eps) {
    const float root = std::sqrt(std::fabs(z) + eps);
    return z > 0.0f ? root : (z < 0.0f ? -root : 0.0f);
  }
  static inline float Forward(float x, const float* p, int64_t m, float eps) {
    const float t = Term(p[1 * m] - x, eps);
    const float d = p[0 * m] >= t ? p[0 * m] : t;
    return x / d * p[2 * m] + p[3 * m];
  }
  static inline float Backward(float dy, float x, const float* p, int64_t m,
                               float eps, double* acc) {
    const float z = p[1 * m] - x;
    const float root = std::sqrt(std::fabs(z) + eps);
    const float t = z > 0.0f ? root : (z < 0.0f ? -root : 0.0f);
    const bool to_s = p[0 * m] >= t;
    const float d = to_s ? p[0 * m] : t;
    const float u = x / d;
    const float du = dy * p[2 * m];
    const float dd = -du * u / d;
    // d sign(z) sqrt(|z| + eps) / dz = sign(z)^2 / (2 sqrt(|z| + eps)).
    const float dt_dz = z != 0.0f ? 0.5f / root : 0.0f;
    const float dz = to_s ? 0.0f : dd * dt_dz;
    acc[0 * m] += to_s ? dd : 0.0f;
    acc[1 * m] += dz;
    acc[2 * m] += dy * u;
    acc[3 * m] += dy;
    return du / d - dz;
  }
};

// y = x * sigmoid(a*x) * scale + shift
struct SSigmoid {
  static constexpr int K = 3;
  static inline float Forward(float x, const float* p, int64_t m, float) {
    return x * Sigmoid(p[0 * m] * x) * p[1 * m] + p[2 * m];
  }
  static inline float Backward(float dy, float x, const float* p, int64_t m,
                               float, double* acc) {
    const float sig = Sigmoid(p[0 * m] * x);
    const float f = x * sig;
    const float df = dy * p[1 * m];
    const float dsig = sig * (1.0f - sig);
    acc[0 * m] += df * x * x * dsig;
    acc[1 * m] += dy * f;
    acc[2 * m] += dy;
    return df * (sig + p[0 * m] * x * dsig);
  }
};

// The input's shape seen as [N, S, C] or [N, C, S].
struct Geometry {
  int64_t n, s, c;
  bool channels_last;
};

::tensorflow::Status GetGeometry(const Tensor& x, const Tensor& params, int k,
                                 bool channels_last, Geometry* g) {
  if (x.dims() < 2) {
    return InvalidArgument("x must have rank 2 or more, got shape ",
                           x.shape().DebugString());
  }
  if (params.dims() != 3 || params.dim_size(0) != k ||
      params.dim_size(1) != x.dim_size(0)) {
    return InvalidArgument("params must have shape [", k, ", ", x.dim_size(0),
                           ", C], got ", params.shape().DebugString());
  }
  g->n = x.dim_size(0);
  g->c = params.dim_size(2);
  g->channels_last = channels_last;
  const int64_t channel_dim =
      channels_last ? x.dim_size(x.dims() - 1) : x.dim_size(1);
  if (channel_dim != g->c) {
    return InvalidArgument("x has ", channel_dim, " channels but params ",
                           g->c);
  }
  const int64_t per_sample = g->n == 0 ? 0 : x.NumElements() / g->n;
  g->s = g->c == 0 ? 0 : per_sample / g->c;
  return ::tensorflow::OkStatus();
}

// Work is split into units of at least this many elements.
constexpr int64_t kUnitElements = 1 << 14;
// Channels-first rows are processed in chunks of this many positions.
constexpr int64_t kChunk = 4096;

// A float32 view of `len` inputs: the data itself for float, else a copy.
template <typename T>
inline const float* AsFloat(const T* src, int64_t len, float* buffer) {
  for (int64_t i = 0; i < len; ++i) buffer[i] = static_cast<float>(src[i]);
  return buffer;
}
template <>
inline const float* AsFloat<float>(const float* src, int64_t, float*) {
  return src;
}

// Where to compute `len` outputs: the output itself for float, else a buffer
// that Store() rounds into the output.
template <typename T>
inline float* Target(T*, float* buffer) { return buffer; }
template <>
inline float* Target<float>(float* dst, float*) { return dst; }
template <typename T>
inline void Store(const float* src, T* dst, int64_t len) {
  for (int64_t i = 0; i < len; ++i) dst[i] = static_cast<T>(src[i]);
}
template <>
inline void Store<float>(const float*, float*, int64_t) {}

// The elementwise loops, on float32 rows. With channels last, element i of a
// row is channel i and reads operand k at p[k * m + i]; with channels first,
// a row is one (sample, channel) and every element reads p[k] (m = 1).
template <typename Family, bool kLast>
void ForwardRow(const float* __restrict x, float* __restrict y,
                const float* __restrict p, int64_t m, int64_t len,
                float eps) {
  for (int64_t i = 0; i < len; ++i)
    y[i] = Family::Forward(x[i], p + (kLast ? i : 0), m, eps);
}

template <typename Family>
void BackwardRowLast(const float* __restrict dy, const float* __restrict x,
                     float* __restrict dx, const float* __restrict p,
                     int64_t m, int64_t len, float eps,
                     double* __restrict acc) {
  for (int64_t i = 0; i < len; ++i)
    dx[i] = Family::Backward(dy[i], x[i], p + i, m, eps, acc + i);
}

template <typename Family>
void BackwardRowFirst(const float* __restrict dy, const float* __restrict x,
                      float* __restrict dx, const float* __restrict p,
                      int64_t len, float eps, double* __restrict acc) {
  // Eight float partial sums per operand, so the loop has no serial chain.
  constexpr int kLanes = 8;
  double lanes[Family::K * kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes)
    for (int j = 0; j < kLanes; ++j)
      dx[i + j] = Family::Backward(dy[i + j], x[i + j], p, 1, eps,
                                   lanes + j * Family::K);
  for (; i < len; ++i)
    dx[i] = Family::Backward(dy[i], x[i], p, 1, eps, lanes);
  for (int j = 0; j < kLanes; ++j)
    for (int k = 0; k < Family::K; ++k) acc[k] += lanes[j * Family::K + k];
}

// Attributes shared by the forward and backward kernels.
class ElementwiseKernel : public OpKernel {
 public:
  explicit ElementwiseKernel(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("channels_last", &channels_last_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
  }

 protected:
  bool channels_last_;
  float epsilon_;
};

// Sample n's operands, [K, C], from params [K, N, C] (nc = N * C).
inline void LoadSample(const float* ps, int k_count, int64_t nc, int64_t n,
                       int64_t c, float* p) {
  for (int k = 0; k < k_count; ++k)
    std::copy_n(ps + k * nc + n * c, c, p + k * c);
}

template <typename Family, typename T>
class ForwardOp : public ElementwiseKernel {
 public:
  explicit ForwardOp(OpKernelConstruction* ctx) : ElementwiseKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& params = ctx->input(1);
    Geometry g;
    OP_REQUIRES_OK(ctx, GetGeometry(x, params, Family::K, channels_last_, &g));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    if (x.NumElements() == 0) return;
    const T* xs = x.flat<T>().data();
    T* ys = y->flat<T>().data();
    const float* ps = params.flat<float>().data();
    const int64_t nc = g.n * g.c;
    const float eps = epsilon_;
    auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
    constexpr int K = Family::K;

    if (g.channels_last) {
      // Units are blocks of rows (positions) of one sample.
      const int64_t rows = std::max<int64_t>(1, kUnitElements / g.c);
      const int64_t per_sample = (g.s + rows - 1) / rows;
      auto work = [&](int64_t begin, int64_t end) {
        std::vector<float> p(K * g.c), in(g.c), out(g.c);
        int64_t loaded = -1;
        for (int64_t unit = begin; unit < end; ++unit) {
          const int64_t n = unit / per_sample;
          if (n != loaded) {
            LoadSample(ps, K, nc, n, g.c, p.data());
            loaded = n;
          }
          const int64_t s0 = (unit % per_sample) * rows;
          const int64_t s1 = std::min(g.s, s0 + rows);
          for (int64_t s = s0; s < s1; ++s) {
            const int64_t base = (n * g.s + s) * g.c;
            float* target = Target(ys + base, out.data());
            ForwardRow<Family, true>(AsFloat(xs + base, g.c, in.data()),
                                     target, p.data(), g.c, g.c, eps);
            Store(target, ys + base, g.c);
          }
        }
      };
      ::tensorflow::Shard(threads->num_threads, threads->workers,
                          g.n * per_sample, rows * g.c * 8, work);
    } else {
      // Units are rows (sample, channel) of S positions.
      auto work = [&](int64_t begin, int64_t end) {
        std::vector<float> in(kChunk), out(kChunk);
        float p[K];
        for (int64_t row = begin; row < end; ++row) {
          for (int k = 0; k < K; ++k) p[k] = ps[k * nc + row];
          for (int64_t s = 0; s < g.s; s += kChunk) {
            const int64_t base = row * g.s + s;
            const int64_t len = std::min(kChunk, g.s - s);
            float* target = Target(ys + base, out.data());
            ForwardRow<Family, false>(AsFloat(xs + base, len, in.data()),
                                      target, p, 1, len, eps);
            Store(target, ys + base, len);
          }
        }
      };
      ::tensorflow::Shard(threads->num_threads, threads->workers, nc,
                          g.s * 8, work);
    }
  }
};

template <typename Family, typename T>
class BackwardOp : public ElementwiseKernel {
 public:
  explicit BackwardOp(OpKernelConstruction* ctx) : ElementwiseKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    const Tensor& params = ctx->input(2);
    OP_REQUIRES(ctx, dy.shape() == x.shape(),
                InvalidArgument("dy and x must have one shape, got ",
                                dy.shape().DebugString(), " and ",
                                x.shape().DebugString()));
    Geometry g;
    OP_REQUIRES_OK(ctx, GetGeometry(x, params, Family::K, channels_last_, &g));
    Tensor* dx = nullptr;
    Tensor* dparams = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, params.shape(), &dparams));
    float* dps = dparams->flat<float>().data();
    std::fill(dps, dps + params.NumElements(), 0.0f);
    if (x.NumElements() == 0) return;
    const T* dys = dy.flat<T>().data();
    const T* xs = x.flat<T>().data();
    T* dxs = dx->flat<T>().data();
    const float* ps = params.flat<float>().data();
    const int64_t nc = g.n * g.c;
    const float eps = epsilon_;
    constexpr int K = Family::K;
    auto* threads = ctx->device()->tensorflow_cpu_worker_threads();

    if (g.channels_last) {
      // Each unit (a block of rows of one sample) reduces into its own
      // [K, C] slot; the slots of a sample are summed afterwards.
      const int64_t rows = std::max<int64_t>(1, kUnitElements / g.c);
      const int64_t per_sample = (g.s + rows - 1) / rows;
      const int64_t units = g.n * per_sample;
      std::vector<double> partial(units * g.c * K, 0.0);
      auto work = [&](int64_t begin, int64_t end) {
        std::vector<float> p(K * g.c), in_dy(g.c), in_x(g.c), out(g.c);
        int64_t loaded = -1;
        for (int64_t unit = begin; unit < end; ++unit) {
          const int64_t n = unit / per_sample;
          if (n != loaded) {
            LoadSample(ps, K, nc, n, g.c, p.data());
            loaded = n;
          }
          double* acc = &partial[unit * g.c * K];
          const int64_t s0 = (unit % per_sample) * rows;
          const int64_t s1 = std::min(g.s, s0 + rows);
          for (int64_t s = s0; s < s1; ++s) {
            const int64_t base = (n * g.s + s) * g.c;
            float* target = Target(dxs + base, out.data());
            BackwardRowLast<Family>(AsFloat(dys + base, g.c, in_dy.data()),
                                    AsFloat(xs + base, g.c, in_x.data()),
                                    target, p.data(), g.c, g.c, eps, acc);
            Store(target, dxs + base, g.c);
          }
        }
      };
      ::tensorflow::Shard(threads->num_threads, threads->workers, units,
                          rows * g.c * 16, work);
      for (int64_t n = 0; n < g.n; ++n) {
        for (int k = 0; k < K; ++k) {
          for (int64_t c = 0; c < g.c; ++c) {
            double total = 0.0;
            for (int64_t u = 0; u < per_sample; ++u)
              total += partial[((n * per_sample + u) * K + k) * g.c + c];
            dps[k * nc + n * g.c + c] = static_cast<float>(total);
          }
        }
      }
    } else {
      auto work = [&](int64_t begin, int64_t end) {
        std::vector<float> in_dy(kChunk), in_x(kChunk), out(kChunk);
        float p[K];
        for (int64_t row = begin; row < end; ++row) {
          for (int k = 0; k < K; ++k) p[k] = ps[k * nc + row];
          double acc[K] = {};
          for (int64_t s = 0; s < g.s; s += kChunk) {
            const int64_t base = row * g.s + s;
            const int64_t len = std::min(kChunk, g.s - s);
            float* target = Target(dxs + base, out.data());
            BackwardRowFirst<Family>(AsFloat(dys + base, len, in_dy.data()),
                                     AsFloat(xs + base, len, in_x.data()),
                                     target, p, len, eps, acc);
            Store(target, dxs + base, len);
          }
          for (int k = 0; k < K; ++k)
            dps[k * nc + row] = static_cast<float>(acc[k]);
        }
      };
      ::tensorflow::Shard(threads->num_threads, threads->workers, nc,
                          g.s * 16, work);
    }
  }
};

::tensorflow::Status ForwardShape(InferenceContext* c) {
  c->set_output(0, c->input(0));
  return ::tensorflow::OkStatus();
}

::tensorflow::Status BackwardShape(InferenceContext* c) {
  c->set_output(0, c->input(1));
  c->set_output(1, c->input(2));
  return ::tensorflow::OkStatus();
}

}  // namespace

#define EVONORM_REGISTER_OPS(OP, FAMILY)                                   \
  REGISTER_OP("EvoNormFused" #OP "Forward")                                \
      .Input("x: T")                                                         \
      .Input("params: float")                                                \
      .Output("y: T")                                                        \
      .Attr("T: {float, half, bfloat16}")                                    \
      .Attr("channels_last: bool = true")                                    \
      .Attr("epsilon: float = 0.0")                                          \
      .SetShapeFn(ForwardShape);                                             \
  REGISTER_OP("EvoNormFused" #OP "Backward")                               \
      .Input("dy: T")                                                        \
      .Input("x: T")                                                         \
      .Input("params: float")                                                \
      .Output("dx: T")                                                       \
      .Output("dparams: float")                                              \
      .Attr("T: {float, half, bfloat16}")                                    \
      .Attr("channels_last: bool = true")                                    \
      .Attr("epsilon: float = 0.0")                                          \
      .SetShapeFn(BackwardShape);                                            \
  EVONORM_REGISTER_KERNELS(OP, FAMILY, float);                             \
  EVONORM_REGISTER_KERNELS(OP, FAMILY, Eigen::half);                       \
  EVONORM_REGISTER_KERNELS(OP, FAMILY, ::tensorflow::bfloat16)

#define EVONORM_REGISTER_KERNELS(OP, FAMILY, T)                            \
  REGISTER_KERNEL_BUILDER(Name("EvoNormFused" #OP "Forward")               \
                              .Device(DEVICE_CPU)                            \
                              .TypeConstraint<T>("T"),                       \
                          ForwardOp<FAMILY, T>);                             \
  REGISTER_KERNEL_BUILDER(Name("EvoNormFused" #OP "Backward")              \
                              .Device(DEVICE_CPU)                            \
                              .TypeConstraint<T>("T"),                       \
                          BackwardOp<FAMILY, T>)

EVONORM_REGISTER_OPS(BLinear, BLinear);
EVONORM_REGISTER_OPS(BSqrt, BSqrt);
EVONORM_REGISTER_OPS(SSigmoid, SSigmoid);

}  // namespace evonorm
