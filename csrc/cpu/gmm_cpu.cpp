// CPU kernels of nuir::gmm_forward and nuir::gmm_backward.
//
// Forward: points are binned into 16x16 output tiles by a counting sort over (tile, point) pairs,
// in point order; tiles run in parallel, each accumulating its numerators and total weight in a
// small local buffer, point after point in a fixed order. No atomics: bitwise reproducible.
// Backward: one pass over the pixels makes g/W and <g, v>/W - dL/dW; then every point gathers over
// the pixels of its cutoff box (points in parallel), again without atomics.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "gmm_math.h"

namespace nuir {
namespace {

constexpr int64_t kTile = 16;

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

void check_inputs(const at::Tensor& points, const at::Tensor& values, const at::Tensor& cov3,
                  const at::Tensor& weights) {
  TORCH_CHECK(points.dim() == 3 && points.size(2) == 2, "nuir: points must be [B, N, 2]");
  TORCH_CHECK(values.dim() == 3 && values.size(0) == points.size(0) &&
                  values.size(1) == points.size(1),
              "nuir: values must be [B, N, C] matching points");
  TORCH_CHECK(cov3.dim() == 3 && cov3.size(2) == 3 && cov3.size(0) == points.size(0) &&
                  cov3.size(1) == points.size(1),
              "nuir: cov3 must be [B, N, 3] matching points");
  TORCH_CHECK(weights.dim() == 2 && weights.size(0) == points.size(0) &&
                  weights.size(1) == points.size(1),
              "nuir: weights must be [B, N] matching points");
  for (const auto* t : {&values, &cov3, &weights}) {
    TORCH_CHECK(t->scalar_type() == points.scalar_type(), "nuir: all inputs must share a dtype");
    TORCH_CHECK(t->device() == points.device(), "nuir: all inputs must be on one device");
  }
  TORCH_CHECK(points.scalar_type() == at::kFloat || points.scalar_type() == at::kDouble,
              "nuir: the CPU kernel takes float32 or float64");
}

// Per-point Gaussian and pixel box, for one batch element.
template <typename acc_t, typename scalar_t>
void setup_points(const scalar_t* points, const scalar_t* cov3, const scalar_t* weights, int64_t n,
                  int64_t height, int64_t width, double cutoff, Gaussian<acc_t>* gaussians,
                  int64_t* boxes /* [n, 4]: x0, x1, y0, y1 */) {
  at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* p = points + 2 * i;
      const scalar_t* c = cov3 + 3 * i;
      gaussians[i] = make_gaussian<acc_t>(acc_t(p[0]), acc_t(p[1]), acc_t(c[0]), acc_t(c[1]),
                                          acc_t(c[2]), acc_t(weights[i]), acc_t(cutoff));
      cutoff_box(double(p[0]), double(p[1]), double(c[0]), double(c[2]), cutoff, height, width,
                 boxes[4 * i], boxes[4 * i + 1], boxes[4 * i + 2], boxes[4 * i + 3]);
    }
  });
}

// Accumulates one point into a tile buffer acc [(C + 1), kTile, kTile]: channel planes, then W.
template <typename acc_t, int kC>
inline void splat_point(const Gaussian<acc_t>& g, const acc_t* value, int channels, int64_t tx0,
                        int64_t ty0, int64_t x0, int64_t x1, int64_t y0, int64_t y1,
                        acc_t* __restrict acc) {
  const int C = kC > 0 ? kC : channels;
  const int64_t nx = x1 - x0 + 1;
  acc_t dxs[kTile], qx[kTile], ex[kTile];
  for (int64_t j = 0; j < nx; ++j) {
    const acc_t dx = acc_t(x0 + j) - g.mx;
    dxs[j] = dx;
    qx[j] = g.ia * dx * dx;
    ex[j] = g.diagonal ? std::exp(acc_t(-0.5) * qx[j]) : acc_t(0);
  }
  acc_t cval[kC > 0 ? kC : 1];
  if constexpr (kC > 0) {
    for (int c = 0; c < kC; ++c) cval[c] = value[c];
  }
  const int64_t plane = kTile * kTile;
  for (int64_t y = y0; y <= y1; ++y) {
    const acc_t dy = acc_t(y) - g.my;
    const acc_t qy = g.ic * dy * dy;
    const int64_t row = (y - ty0) * kTile + (x0 - tx0);
    acc_t w[kTile];
    if (g.diagonal) {
      const acc_t wy = g.norm * std::exp(acc_t(-0.5) * qy);
      for (int64_t j = 0; j < nx; ++j) w[j] = (qx[j] + qy <= g.cut2) ? wy * ex[j] : acc_t(0);
    } else {
      const acc_t bdy = acc_t(2) * g.ib * dy;
      for (int64_t j = 0; j < nx; ++j) {
        const acc_t m2 = qx[j] + bdy * dxs[j] + qy;
        w[j] = m2 <= g.cut2 ? g.norm * std::exp(acc_t(-0.5) * m2) : acc_t(0);
      }
    }
    acc_t* __restrict wsum = acc + C * plane + row;
    for (int64_t j = 0; j < nx; ++j) wsum[j] += w[j];
    for (int c = 0; c < C; ++c) {
      const acc_t v = kC > 0 ? cval[c] : acc_t(value[c]);
      acc_t* __restrict num = acc + c * plane + row;
      for (int64_t j = 0; j < nx; ++j) num[j] += w[j] * v;
    }
  }
}

template <typename scalar_t, int kC>
void forward_impl(const at::Tensor& points, const at::Tensor& values, const at::Tensor& cov3,
                  const at::Tensor& weights, int64_t height, int64_t width, double cutoff,
                  double fill, at::Tensor& image, at::Tensor& weight_map) {
  using acc_t = acc_type<scalar_t>;
  const int64_t batch = points.size(0), n = points.size(1), channels = values.size(2);
  const int64_t tiles_x = (width + kTile - 1) / kTile, tiles_y = (height + kTile - 1) / kTile;
  const int64_t n_tiles = tiles_x * tiles_y;
  const scalar_t* pts = points.data_ptr<scalar_t>();
  const scalar_t* val = values.data_ptr<scalar_t>();
  const scalar_t* cov = cov3.data_ptr<scalar_t>();
  const scalar_t* wts = weights.data_ptr<scalar_t>();
  scalar_t* out = image.data_ptr<scalar_t>();
  scalar_t* wout = weight_map.data_ptr<scalar_t>();

  std::vector<Gaussian<acc_t>> gaussians(n);
  std::vector<int64_t> boxes(4 * n);
  std::vector<int64_t> tile_start(n_tiles + 1);
  std::vector<int32_t> tile_points;
  std::vector<acc_t> values_acc(n * channels);

  for (int64_t b = 0; b < batch; ++b) {
    setup_points<acc_t>(pts + b * n * 2, cov + b * n * 3, wts + b * n, n, height, width, cutoff,
                        gaussians.data(), boxes.data());
    for (int64_t k = 0; k < n * channels; ++k) values_acc[k] = acc_t(val[b * n * channels + k]);
    // Counting sort of (tile, point) pairs by tile, points in order within a tile.
    std::fill(tile_start.begin(), tile_start.end(), 0);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t* bx = &boxes[4 * i];
      if (bx[0] > bx[1] || bx[2] > bx[3]) continue;
      for (int64_t ty = bx[2] / kTile; ty <= bx[3] / kTile; ++ty)
        for (int64_t tx = bx[0] / kTile; tx <= bx[1] / kTile; ++tx) ++tile_start[ty * tiles_x + tx + 1];
    }
    for (int64_t t = 0; t < n_tiles; ++t) tile_start[t + 1] += tile_start[t];
    tile_points.resize(tile_start[n_tiles]);
    {
      std::vector<int64_t> cursor(tile_start.begin(), tile_start.end() - 1);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t* bx = &boxes[4 * i];
        if (bx[0] > bx[1] || bx[2] > bx[3]) continue;
        for (int64_t ty = bx[2] / kTile; ty <= bx[3] / kTile; ++ty)
          for (int64_t tx = bx[0] / kTile; tx <= bx[1] / kTile; ++tx)
            tile_points[cursor[ty * tiles_x + tx]++] = int32_t(i);
      }
    }

    scalar_t* out_b = out + b * channels * height * width;
    scalar_t* wout_b = wout + b * height * width;
    at::parallel_for(0, n_tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc((channels + 1) * kTile * kTile);
      const int64_t plane = kTile * kTile;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t tx0 = (t % tiles_x) * kTile, ty0 = (t / tiles_x) * kTile;
        const int64_t tx1 = std::min(tx0 + kTile, width) - 1, ty1 = std::min(ty0 + kTile, height) - 1;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t k = tile_start[t]; k < tile_start[t + 1]; ++k) {
          const int64_t i = tile_points[k];
          const int64_t* bx = &boxes[4 * i];
          const int64_t x0 = std::max(bx[0], tx0), x1 = std::min(bx[1], tx1);
          const int64_t y0 = std::max(bx[2], ty0), y1 = std::min(bx[3], ty1);
          splat_point<acc_t, kC>(gaussians[i], &values_acc[i * channels], int(channels), tx0, ty0,
                                 x0, x1, y0, y1, acc.data());
        }
        for (int64_t y = ty0; y <= ty1; ++y) {
          for (int64_t x = tx0; x <= tx1; ++x) {
            const int64_t local = (y - ty0) * kTile + (x - tx0);
            const acc_t total = acc[channels * plane + local];
            wout_b[y * width + x] = scalar_t(total);
            for (int64_t c = 0; c < channels; ++c) {
              out_b[(c * height + y) * width + x] =
                  total > acc_t(0) ? scalar_t(acc[c * plane + local] / total) : scalar_t(fill);
            }
          }
        }
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor> gmm_forward_cpu(const at::Tensor& points,
                                                   const at::Tensor& values,
                                                   const at::Tensor& cov3,
                                                   const at::Tensor& weights, int64_t height,
                                                   int64_t width, double cutoff, double fill) {
  check_inputs(points, values, cov3, weights);
  TORCH_CHECK(height > 0 && width > 0, "nuir: height and width must be positive");
  TORCH_CHECK(points.size(1) < std::numeric_limits<int32_t>::max(), "nuir: too many points");
  const auto p = points.contiguous(), v = values.contiguous(), c = cov3.contiguous(),
             w = weights.contiguous();
  const int64_t batch = p.size(0), channels = v.size(2);
  auto image = at::empty({batch, channels, height, width}, v.options());
  auto weight_map = at::empty({batch, height, width}, v.options());
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "gmm_forward_cpu", [&] {
    auto run = [&](auto kc) {
      forward_impl<scalar_t, decltype(kc)::value>(p, v, c, w, height, width, cutoff, fill, image,
                                                 weight_map);
    };
    switch (channels) {
      case 1: run(std::integral_constant<int, 1>{}); break;
      case 3: run(std::integral_constant<int, 3>{}); break;
      case 4: run(std::integral_constant<int, 4>{}); break;
      default: run(std::integral_constant<int, 0>{});
    }
  });
  return {image, weight_map};
}

// ---------------------------------------------------------------------------------------------
// Backward.

template <typename scalar_t, int kC>
void backward_impl(const at::Tensor& grad_image, const at::Tensor* grad_weight,
                   const at::Tensor& image, const at::Tensor& weight_map, const at::Tensor& points,
                   const at::Tensor& values, const at::Tensor& cov3, const at::Tensor& weights,
                   double cutoff, at::Tensor& g_points, at::Tensor& g_values, at::Tensor& g_cov3,
                   at::Tensor& g_weights) {
  using acc_t = acc_type<scalar_t>;
  const int64_t batch = points.size(0), n = points.size(1), C = values.size(2);
  const int64_t height = image.size(2), width = image.size(3), hw = height * width;
  const int64_t stride = C + 1;  // per pixel: g_c / W for each channel, then s

  // Per-pixel map [B, H, W, C + 1]: G = g / W and s = <g, v> / W - dL/dW (G = 0, s = -dL/dW where
  // W == 0), so that for a pair dL/dw = <G, c_i> - s.
  std::vector<acc_t> pixel_map(batch * hw * stride);
  {
    const scalar_t* gi = grad_image.data_ptr<scalar_t>();
    const scalar_t* gw = grad_weight ? grad_weight->data_ptr<scalar_t>() : nullptr;
    const scalar_t* img = image.data_ptr<scalar_t>();
    const scalar_t* wm = weight_map.data_ptr<scalar_t>();
    at::parallel_for(0, batch * hw, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) {
        const int64_t b = q / hw, pix = q % hw;
        const acc_t total = acc_t(wm[q]);
        acc_t* m = &pixel_map[q * stride];
        acc_t s = 0;
        if (total > acc_t(0)) {
          const acc_t inv = acc_t(1) / total;
          for (int64_t c = 0; c < C; ++c) {
            const int64_t idx = (b * C + c) * hw + pix;
            const acc_t g = acc_t(gi[idx]);
            m[c] = g * inv;
            s += g * acc_t(img[idx]);
          }
          s *= inv;
        } else {
          for (int64_t c = 0; c < C; ++c) m[c] = 0;
        }
        m[C] = s - (gw ? acc_t(gw[q]) : acc_t(0));
      }
    });
  }

  const scalar_t* pts = points.data_ptr<scalar_t>();
  const scalar_t* val = values.data_ptr<scalar_t>();
  const scalar_t* cov = cov3.data_ptr<scalar_t>();
  const scalar_t* wts = weights.data_ptr<scalar_t>();
  scalar_t* gp = g_points.data_ptr<scalar_t>();
  scalar_t* gv = g_values.data_ptr<scalar_t>();
  scalar_t* gc = g_cov3.data_ptr<scalar_t>();
  scalar_t* ga = g_weights.data_ptr<scalar_t>();

  at::parallel_for(0, batch * n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t bi = begin; bi < end; ++bi) {
      const int64_t b = bi / n;
      const scalar_t* p = pts + 2 * bi;
      const scalar_t* cv = cov + 3 * bi;
      const Gaussian<acc_t> g = make_gaussian<acc_t>(acc_t(p[0]), acc_t(p[1]), acc_t(cv[0]),
                                                     acc_t(cv[1]), acc_t(cv[2]), acc_t(wts[bi]),
                                                     acc_t(cutoff));
      int64_t x0, x1, y0, y1;
      cutoff_box(double(p[0]), double(p[1]), double(cv[0]), double(cv[2]), cutoff, height, width,
                 x0, x1, y0, y1);
      const int Cn = kC > 0 ? kC : int(C);
      acc_t cval[kC > 0 ? kC : 1];
      if constexpr (kC > 0) {
        for (int c = 0; c < kC; ++c) cval[c] = acc_t(val[bi * kC + c]);
      }
      acc_t gval[kC > 0 ? kC : 1] = {};
      std::vector<acc_t> gval_dyn(kC > 0 ? 0 : C, acc_t(0));
      PointGradSums<acc_t> sums;
      const acc_t* map_b = &pixel_map[b * hw * stride];
      for (int64_t y = y0; y <= y1; ++y) {
        const acc_t dy = acc_t(y) - g.my;
        const acc_t qy = g.ic * dy * dy;
        const acc_t bdy = acc_t(2) * g.ib * dy;
        const acc_t ey = g.diagonal ? std::exp(acc_t(-0.5) * qy) : acc_t(0);
        for (int64_t x = x0; x <= x1; ++x) {
          const acc_t dx = acc_t(x) - g.mx;
          const acc_t m2 = g.ia * dx * dx + bdy * dx + qy;
          if (!(m2 <= g.cut2)) continue;
          const acc_t density =
              g.density_norm *
              (g.diagonal ? ey * std::exp(acc_t(-0.5) * g.ia * dx * dx) : std::exp(acc_t(-0.5) * m2));
          const acc_t w = density * acc_t(wts[bi]);
          const acc_t* m = map_b + (y * width + x) * stride;
          acc_t k = -m[Cn];
          for (int c = 0; c < Cn; ++c) {
            const acc_t cvalue = kC > 0 ? cval[c] : acc_t(val[bi * C + c]);
            k += m[c] * cvalue;
            if constexpr (kC > 0) {
              gval[c] += w * m[c];
            } else {
              gval_dyn[c] += w * m[c];
            }
          }
          const acc_t ux = g.ia * dx + g.ib * dy, uy = g.ib * dx + g.ic * dy;
          const acc_t kw = k * w;
          sums.k_density += k * density;
          sums.kw += kw;
          sums.kw_ux += kw * ux;
          sums.kw_uy += kw * uy;
          sums.kw_uxux += kw * ux * ux;
          sums.kw_uxuy += kw * ux * uy;
          sums.kw_uyuy += kw * uy * uy;
        }
      }
      for (int c = 0; c < Cn; ++c) gv[bi * C + c] = scalar_t(kC > 0 ? gval[c] : gval_dyn[c]);
      gp[2 * bi] = scalar_t(sums.kw_ux);
      gp[2 * bi + 1] = scalar_t(sums.kw_uy);
      acc_t g_sxx, g_sxy, g_syy;
      cov_gradient(g, sums, g_sxx, g_sxy, g_syy);
      gc[3 * bi] = scalar_t(g_sxx);
      gc[3 * bi + 1] = scalar_t(g_sxy);
      gc[3 * bi + 2] = scalar_t(g_syy);
      ga[bi] = scalar_t(sums.k_density);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gmm_backward_cpu(
    const at::Tensor& grad_image, const std::optional<at::Tensor>& grad_weight,
    const at::Tensor& image, const at::Tensor& weight_map, const at::Tensor& points,
    const at::Tensor& values, const at::Tensor& cov3, const at::Tensor& weights, double cutoff) {
  check_inputs(points, values, cov3, weights);
  TORCH_CHECK(grad_image.sizes() == image.sizes(), "nuir: grad_image must match image");
  const auto p = points.contiguous(), v = values.contiguous(), c = cov3.contiguous(),
             w = weights.contiguous(), gi = grad_image.contiguous().to(p.scalar_type()),
             img = image.contiguous(), wm = weight_map.contiguous();
  at::Tensor gw;
  if (grad_weight.has_value() && grad_weight->defined()) {
    TORCH_CHECK(grad_weight->sizes() == weight_map.sizes(), "nuir: grad_weight must match weight");
    gw = grad_weight->contiguous().to(p.scalar_type());
  }
  auto g_points = at::empty_like(p), g_values = at::empty_like(v), g_cov3 = at::empty_like(c),
       g_weights = at::empty_like(w);
  const int64_t channels = v.size(2);
  const at::Tensor* gw_ptr = gw.defined() ? &gw : nullptr;
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "gmm_backward_cpu", [&] {
    auto run = [&](auto kc) {
      backward_impl<scalar_t, decltype(kc)::value>(gi, gw_ptr, img, wm, p, v, c, w, cutoff,
                                                  g_points, g_values, g_cov3, g_weights);
    };
    switch (channels) {
      case 1: run(std::integral_constant<int, 1>{}); break;
      case 3: run(std::integral_constant<int, 3>{}); break;
      case 4: run(std::integral_constant<int, 4>{}); break;
      default: run(std::integral_constant<int, 0>{});
    }
  });
  return {g_points, g_values, g_cov3, g_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(nuir, CPU, m) {
  m.impl("gmm_forward", &gmm_forward_cpu);
  m.impl("gmm_backward", &gmm_backward_cpu);
}

}  // namespace nuir
