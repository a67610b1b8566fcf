// CUDA kernels of nuir::gmm_backward, their launch sequence and the op: gradients for points,
// values, cov3 and weights.
//
// Same maths as csrc/cpu/gmm_cpu.cpp, without atomics on any gradient:
//   1. pixel_map: per pixel G_c = g_c / W and s = <g, v> / W - dL/dW (G = 0, s = -dL/dW where
//      W == 0), so that for a pair dL/dw = <G, c_i> - s. Planar: G [B, C, H, W], s [B, H, W].
//   2. order_points + a radix sort (cub): points in row-major order of the output cell holding
//      their box centre, so that the warps in flight read neighbouring parts of the map (it is
//      larger than L2 at 2048^2 and more; in index order, random points would re-read it from
//      DRAM once per covering point).
//   3. gather_points: one warp per point, in that order, walks the point's cutoff box (the lanes
//      tile it, coalesced along rows) and sums the PointGradSums of gmm_math.h and the value
//      gradient; a fixed butterfly reduces the lanes. Points with a box over kWarpMaxPixels
//      pixels are put on a list instead (an integer atomic; the list's order does not matter), and
//   4. gather_big_points: one 256-thread block per listed point, fixed block reduction. Not
//      launched when no box can hold more than kWarpMaxPixels pixels (H * W <= kWarpMaxPixels):
//      otherwise the list's length is known only on the device.
// Each point's gradient is summed in an order fixed by its box alone, whichever warp or block
// computes it: bitwise reproducible. A gradient whose output_mask entry is false is not computed
// and comes back as zeros, as on the CPU.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

#include "device_common.cuh"
#include "gmm_math.h"
#include "op_common.h"

namespace nuir {
namespace cuda_backward {

constexpr int kWarpMaxPixels = 32 * 64;  // larger boxes go to a block each
constexpr int kBlockThreads = 256;
constexpr int kBlockWarps = kBlockThreads / 32;
constexpr int kChannelGroup = 4;  // generic C: value gradients four channels at a time

// Cells that order the points: 16 pixels, coarser if batch * cells would not fit 31 bits.
struct OrderGrid {
  int shift;  // cells of 2^shift pixels
  int cells_x;
  int64_t cells_per_batch;
};

inline OrderGrid make_order_grid(int64_t batch, int64_t height, int64_t width) {
  OrderGrid grid{};
  grid.shift = 4;
  while (true) {
    const int64_t side = int64_t(1) << grid.shift;
    const int64_t cells_x = (width + side - 1) / side, cells_y = (height + side - 1) / side;
    if (batch * cells_x * cells_y < (int64_t(1) << 31) || grid.shift >= 30) {
      grid.cells_x = int(cells_x);
      grid.cells_per_batch = cells_x * cells_y;
      return grid;
    }
    ++grid.shift;
  }
}

// Sort key of each point: its batch element, then the cell of its box centre, row-major.
template <typename scalar_t>
__global__ void order_points(const scalar_t* __restrict__ points, const scalar_t* __restrict__ cov3,
                             int64_t total, int64_t n_points, int height, int width, double cutoff,
                             OrderGrid grid, uint32_t* __restrict__ keys,
                             int32_t* __restrict__ order) {
  for (int64_t bi = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; bi < total;
       bi += int64_t(gridDim.x) * blockDim.x) {
    const scalar_t* p = points + 2 * bi;
    const scalar_t* cv = cov3 + 3 * bi;
    int64_t x0, x1, y0, y1;
    const bool reached = cutoff_box(double(p[0]), double(p[1]), double(cv[0]), double(cv[1]),
                                    double(cv[2]), cutoff, height, width, x0, x1, y0, y1);
    const int64_t b = int32_t(bi) / int32_t(n_points);
    int64_t cell = 0;  // an empty box: any cell will do, it reads nothing
    if (reached) {
      cell = (int64_t(int(y0 + y1) >> (grid.shift + 1)) * grid.cells_x) +
             (int(x0 + x1) >> (grid.shift + 1));
    }
    keys[bi] = uint32_t(b * grid.cells_per_batch + cell);
    order[bi] = int32_t(bi);
  }
}

// G_c = g_c / W and s = <g, v> / W - dL/dW of pixel `pixel` of batch element b.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void pixel_map_one(
    const scalar_t* __restrict__ grad_image, const scalar_t* __restrict__ grad_weight,
    const scalar_t* __restrict__ image, const acc_t* __restrict__ weight_map, int64_t b,
    int64_t pixel, int64_t hw, int channels, acc_t* __restrict__ map_g, acc_t* __restrict__ map_s) {
  const int64_t q = b * hw + pixel;
  const acc_t total = weight_map[q];  // never rounded to a half-precision type
  acc_t s = 0;
  if (total > acc_t(0)) {
    const acc_t inv = acc_t(1) / total;
    for (int c = 0; c < channels; ++c) {
      const int64_t idx = (b * channels + c) * hw + pixel;
      const acc_t g = acc_t(grad_image[idx]);
      map_g[idx] = g * inv;
      s += g * acc_t(image[idx]);
    }
    s *= inv;
  } else {
    for (int c = 0; c < channels; ++c) map_g[(b * channels + c) * hw + pixel] = 0;
  }
  map_s[q] = s - (grad_weight != nullptr ? acc_t(grad_weight[q]) : acc_t(0));
}

// blockIdx.y walks the batch, the threads of blockIdx.x the pixels: no index divisions.
template <typename scalar_t, typename acc_t>
__global__ void pixel_map(const scalar_t* __restrict__ grad_image,
                          const scalar_t* __restrict__ grad_weight,  // may be null
                          const scalar_t* __restrict__ image,
                          const acc_t* __restrict__ weight_map, int64_t batch, int64_t hw,
                          int channels, acc_t* __restrict__ map_g, acc_t* __restrict__ map_s) {
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    for (int64_t pixel = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; pixel < hw;
         pixel += int64_t(gridDim.x) * blockDim.x) {
      pixel_map_one(grad_image, grad_weight, image, weight_map, b, pixel, hw, channels, map_g,
                    map_s);
    }
  }
}

// Which gradients to compute (gmm_backward's output_mask); the others are written as zeros.
struct Need {
  bool points, values, cov3, weights;
  __device__ __forceinline__ bool sums() const { return points || cov3 || weights; }
};

template <typename scalar_t, typename acc_t>
struct Inputs {
  const scalar_t* points;
  const scalar_t* values;
  const scalar_t* cov3;
  const scalar_t* weights;
  const acc_t* map_g;
  const acc_t* map_s;
  int64_t total, n_points;
  int channels, height, width;
  double cutoff;
  Need need;
};

template <typename scalar_t>
struct Grads {
  scalar_t* points;
  scalar_t* values;
  scalar_t* cov3;
  scalar_t* weights;
};

// One point, as both gather kernels see it.
template <typename scalar_t, typename acc_t>
struct PointView {
  Gaussian<acc_t> g;
  acc_t weight;
  bool reached;  // its box holds a pixel
  int x0, x1, y0, y1;
  const scalar_t* value;  // [C]
  const acc_t* map_g;     // [C, H, W] of the point's batch element
  const acc_t* map_s;     // [H, W]
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ PointView<scalar_t, acc_t> load_point(const Inputs<scalar_t, acc_t>& in,
                                                                 int64_t bi) {
  PointView<scalar_t, acc_t> pv;
  const scalar_t* p = in.points + 2 * bi;
  const scalar_t* cv = in.cov3 + 3 * bi;
  pv.weight = acc_t(in.weights[bi]);
  pv.g = make_gaussian<acc_t>(acc_t(p[0]), acc_t(p[1]), acc_t(cv[0]), acc_t(cv[1]), acc_t(cv[2]),
                              pv.weight, acc_t(in.cutoff));
  int64_t x0, x1, y0, y1;
  pv.reached = cutoff_box(double(p[0]), double(p[1]), double(cv[0]), double(cv[1]), double(cv[2]),
                          in.cutoff, in.height, in.width, x0, x1, y0, y1);
  pv.x0 = int(x0), pv.x1 = int(x1), pv.y0 = int(y0), pv.y1 = int(y1);
  pv.value = in.values + bi * in.channels;
  const int64_t b = int32_t(bi) / int32_t(in.n_points);  // B N < 2^31
  const int64_t hw = int64_t(in.height) * in.width;
  pv.map_g = in.map_g + b * in.channels * hw;
  pv.map_s = in.map_s + b * hw;
  return pv;
}

// Per-thread partial sums over the pixels (x0 + tx + k * step_x, y0 + ty + l * step_y) of the box.
// kWithSums: the PointGradSums (needs every channel for k = <G, c> - s); with_values: the value
// gradient of channels [c_begin, c_begin + c_count), c_count <= kCv.
template <typename scalar_t, typename acc_t, int kC, bool kWithSums>
__device__ __forceinline__ void gather_box(const PointView<scalar_t, acc_t>& pv, int channels,
                                           int c_begin, int c_count, bool with_values, int width,
                                           int64_t hw, int tx, int ty, int step_x, int step_y,
                                           PointGradSums<acc_t>& sums,
                                           acc_t (&gval)[kC > 0 ? kC : kChannelGroup]) {
  constexpr int kCv = kC > 0 ? kC : kChannelGroup;
  const Gaussian<acc_t>& g = pv.g;
  acc_t cval[kCv];
#pragma unroll
  for (int c = 0; c < kCv; ++c) cval[c] = c < c_count ? acc_t(pv.value[c_begin + c]) : acc_t(0);
  for (int y = pv.y0 + ty; y <= pv.y1; y += step_y) {
    const acc_t dy = acc_t(y) - g.my;
    const acc_t qy = g.ic * dy * dy;
    const acc_t bdy = acc_t(2) * g.ib * dy;
    const int64_t row = int64_t(y) * width;
    for (int x = pv.x0 + tx; x <= pv.x1; x += step_x) {
      const acc_t dx = acc_t(x) - g.mx;
      const acc_t m2 = g.ia * dx * dx + bdy * dx + qy;
      if (!(m2 <= g.cut2)) continue;
      const acc_t density = g.density_norm * cuda_detail::exp_neg_half(m2);
      const acc_t w = density * pv.weight;
      const int64_t pixel = row + x;
      acc_t gmap[kCv];
#pragma unroll
      for (int c = 0; c < kCv; ++c) {
        gmap[c] = c < c_count ? pv.map_g[(c_begin + c) * hw + pixel] : acc_t(0);
      }
      if constexpr (kWithSums) {
        acc_t k = -pv.map_s[pixel];
        if constexpr (kC > 0) {
#pragma unroll
          for (int c = 0; c < kC; ++c) k += gmap[c] * cval[c];
        } else {
          for (int c = 0; c < channels; ++c) k += pv.map_g[c * hw + pixel] * acc_t(pv.value[c]);
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
      if (with_values) {
#pragma unroll
        for (int c = 0; c < kCv; ++c) gval[c] += w * gmap[c];
      }
    }
  }
}

template <typename acc_t, typename Reduce>
__device__ __forceinline__ void reduce_sums(PointGradSums<acc_t>& s, Reduce reduce) {
  s.k_density = reduce(s.k_density);
  s.kw = reduce(s.kw);
  s.kw_ux = reduce(s.kw_ux);
  s.kw_uy = reduce(s.kw_uy);
  s.kw_uxux = reduce(s.kw_uxux);
  s.kw_uxuy = reduce(s.kw_uxuy);
  s.kw_uyuy = reduce(s.kw_uyuy);
}

// The gradients of point bi from the partial sums of every thread over its box: `reduce` sums a
// value over the threads that share the point (a warp or a block) and gives every one of them
// the result; `leader` (one of those threads) writes. Masked gradients are written as zeros.
template <typename scalar_t, typename acc_t, int kC, typename Reduce>
__device__ __forceinline__ void point_gradients(const Inputs<scalar_t, acc_t>& in,
                                                const Grads<scalar_t>& out, int64_t bi,
                                                const PointView<scalar_t, acc_t>& pv, int tx,
                                                int ty, int step_x, int step_y, bool leader,
                                                Reduce reduce) {
  constexpr int kCv = kC > 0 ? kC : kChannelGroup;
  const Need need = in.need;
  const int64_t hw = int64_t(in.height) * in.width;
  for (int c_begin = 0; c_begin < in.channels; c_begin += kCv) {
    const int c_count = std::min(kCv, in.channels - c_begin);
    PointGradSums<acc_t> s;
    acc_t gval[kCv];
#pragma unroll
    for (int c = 0; c < kCv; ++c) gval[c] = 0;
    if (c_begin == 0 && need.sums()) {
      gather_box<scalar_t, acc_t, kC, true>(pv, in.channels, c_begin, c_count, need.values,
                                            in.width, hw, tx, ty, step_x, step_y, s, gval);
      reduce_sums(s, reduce);
    } else if (need.values) {
      gather_box<scalar_t, acc_t, kC, false>(pv, in.channels, c_begin, c_count, true, in.width,
                                             hw, tx, ty, step_x, step_y, s, gval);
    }
    if (need.values) {
#pragma unroll
      for (int c = 0; c < kCv; ++c) gval[c] = reduce(gval[c]);
    }
    if (!leader) continue;
    if (c_begin == 0) {
      // A point that reaches no pixel has zero gradients (its Gaussian need not even be valid).
      acc_t g_sxx = 0, g_sxy = 0, g_syy = 0;
      if (pv.reached && need.cov3) cov_gradient(pv.g, s, g_sxx, g_sxy, g_syy);
      out.points[2 * bi] = scalar_t(need.points ? s.kw_ux : acc_t(0));
      out.points[2 * bi + 1] = scalar_t(need.points ? s.kw_uy : acc_t(0));
      out.cov3[3 * bi] = scalar_t(g_sxx);
      out.cov3[3 * bi + 1] = scalar_t(g_sxy);
      out.cov3[3 * bi + 2] = scalar_t(g_syy);
      out.weights[bi] = scalar_t(need.weights ? s.k_density : acc_t(0));
    }
#pragma unroll
    for (int c = 0; c < kCv; ++c) {
      if (c < c_count) out.values[bi * in.channels + c_begin + c] = scalar_t(gval[c]);
    }
  }
}

// One warp per point; boxes over kWarpMaxPixels pixels are listed for gather_big_points.
template <typename scalar_t, typename acc_t, int kC>
__global__ void __launch_bounds__(kBlockThreads)
    gather_points(Inputs<scalar_t, acc_t> in, Grads<scalar_t> out,
                  const int32_t* __restrict__ order, int32_t* __restrict__ big_list,
                  int32_t* __restrict__ big_count) {
  const int lane = threadIdx.x & 31;
  const int64_t position = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (position >= in.total) return;  // whole warps leave together
  const int64_t bi = order[position];
  const auto pv = load_point(in, bi);
  const int64_t box_w = pv.reached ? pv.x1 - pv.x0 + 1 : 0, box_h = pv.y1 - pv.y0 + 1;
  if (box_w * box_h > kWarpMaxPixels) {
    if (lane == 0) big_list[atomicAdd(big_count, 1)] = int32_t(bi);
    return;
  }
  // Lanes tile the box lane_w pixels wide, 32 / lane_w rows high.
  const int lane_w = box_w <= 4 ? 4 : box_w <= 8 ? 8 : box_w <= 16 ? 16 : 32;
  point_gradients<scalar_t, acc_t, kC>(in, out, bi, pv, lane % lane_w, lane / lane_w, lane_w,
                                       32 / lane_w, lane == 0,
                                       [](acc_t v) { return cuda_detail::warp_sum(v); });
}

// Sum over a block in a fixed order: warps by butterfly, then every thread over the warps.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* scratch /* [kBlockWarps] */) {
  v = cuda_detail::warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // scratch may still be read from the previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  acc_t total = 0;
#pragma unroll
  for (int w = 0; w < kBlockWarps; ++w) total += scratch[w];
  return total;  // the same in every thread
}

// One block per listed point (grid-stride over the list, whose length is read on the device).
template <typename scalar_t, typename acc_t, int kC>
__global__ void __launch_bounds__(kBlockThreads)
    gather_big_points(Inputs<scalar_t, acc_t> in, Grads<scalar_t> out,
                      const int32_t* __restrict__ big_list, const int32_t* __restrict__ big_count) {
  NUIR_SHARED(scratch, acc_t[kBlockWarps]);
  const int n_big = *big_count;
  for (int entry = blockIdx.x; entry < n_big; entry += gridDim.x) {
    const int64_t bi = big_list[entry];
    point_gradients<scalar_t, acc_t, kC>(in, out, bi, load_point(in, bi), threadIdx.x & 31,
                                         threadIdx.x >> 5, 32, kBlockWarps, threadIdx.x == 0,
                                         [&](acc_t v) { return block_sum(v, scratch); });
  }
}

// The launch sequence: spatial order, per-pixel maps, warp per point, block per big point.
template <typename scalar_t, int kC, typename Backend>
void launch_backward(Backend& be, const at::Tensor& grad_image, const at::Tensor* grad_weight,
                     const at::Tensor& image, const at::Tensor& weight_map,
                     const at::Tensor& points, const at::Tensor& values, const at::Tensor& cov3,
                     const at::Tensor& weights, double cutoff, Need need, at::Tensor& g_points,
                     at::Tensor& g_values, at::Tensor& g_cov3, at::Tensor& g_weights) {
  using acc_t = acc_type<scalar_t>;
  const int64_t batch = points.size(0), n_points = points.size(1), channels = values.size(2);
  const int64_t height = image.size(2), width = image.size(3), hw = height * width;
  const int64_t total = batch * n_points;

  const OrderGrid order_grid = make_order_grid(batch, height, width);
  const int64_t n_keys = batch * order_grid.cells_per_batch;
  const int end_bit = 64 - __builtin_clzll(uint64_t(n_keys));
  // The maps G and s; the big-point list and its length; keys and point indices, then sorted.
  const auto [map_g, map_s, big_list, big_count, keys, sorted_keys, order, sorted_order] =
      cuda_detail::allocate<acc_t, acc_t, int32_t, int32_t, uint32_t, uint32_t, int32_t, int32_t>(
          be, {batch * channels * hw, batch * hw, total, 1, total, total, total, total});
  be.zero(big_count, sizeof(int32_t));

  be.launch(order_points<scalar_t>, dim3(cuda_detail::grid_for(total, 256)), dim3(256),
            points.data_ptr<scalar_t>(), cov3.data_ptr<scalar_t>(), total, n_points, int(height),
            int(width), cutoff, order_grid, keys, order);
  be.sort_pairs(keys, sorted_keys, order, sorted_order, int(total), end_bit);
  be.launch(pixel_map<scalar_t, acc_t>,
            dim3(cuda_detail::grid_for(hw, 256, 65535), unsigned(std::min<int64_t>(batch, 65535))),
            dim3(256), grad_image.data_ptr<scalar_t>(),
            grad_weight != nullptr ? grad_weight->data_ptr<scalar_t>() : nullptr,
            image.data_ptr<scalar_t>(), weight_map.data_ptr<acc_t>(), batch, hw, int(channels),
            map_g, map_s);

  const Inputs<scalar_t, acc_t> in{points.data_ptr<scalar_t>(),
                                   values.data_ptr<scalar_t>(),
                                   cov3.data_ptr<scalar_t>(),
                                   weights.data_ptr<scalar_t>(),
                                   map_g,
                                   map_s,
                                   total,
                                   n_points,
                                   int(channels),
                                   int(height),
                                   int(width),
                                   cutoff,
                                   need};
  const Grads<scalar_t> out{g_points.data_ptr<scalar_t>(), g_values.data_ptr<scalar_t>(),
                            g_cov3.data_ptr<scalar_t>(), g_weights.data_ptr<scalar_t>()};
  constexpr int kPointsPerBlock = kBlockThreads / 32;
  const int64_t blocks = (total + kPointsPerBlock - 1) / kPointsPerBlock;
  be.launch(gather_points<scalar_t, acc_t, kC>, dim3(unsigned(blocks)), dim3(kBlockThreads), in,
            out, sorted_order, big_list, big_count);
  if (hw > kWarpMaxPixels) {  // else no box is big enough to be listed
    be.launch(gather_big_points<scalar_t, acc_t, kC>,
              dim3(unsigned(std::min<int64_t>(total, 2048))), dim3(kBlockThreads), in, out,
              big_list, big_count);
  }
}

}  // namespace cuda_backward

// The op (checks, outputs, dtype and channel dispatch) on the device of Backend.
template <typename Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gmm_backward_device(
    const at::Tensor& grad_image, const std::optional<at::Tensor>& grad_weight,
    const at::Tensor& image, const at::Tensor& weight_map, const at::Tensor& points,
    const at::Tensor& values, const at::Tensor& cov3, const at::Tensor& weights, double cutoff,
    std::array<bool, 4> output_mask) {
  TORCH_CHECK(image.dim() != 4 ||
                  (image.size(2) < cuda_detail::kMaxSide && image.size(3) < cuda_detail::kMaxSide),
              "nuir: height and width must be < 2^30 on CUDA");
  const PointTensors in =
      checked_inputs(points, values, cov3, weights, cutoff, Backend::kDevice, /*half=*/true);
  TORCH_CHECK(points.size(0) * points.size(1) < std::numeric_limits<int32_t>::max(),
              "nuir: too many points (B * N must be < 2^31)");
  Backend be(points.device());
  const BackwardTensors t =
      backward_tensors(grad_image, grad_weight, image, weight_map, points, values);
  // Every gradient entry is written by the kernels (zeros where masked or out of reach).
  auto g_points = be.empty(points.sizes(), points.options()),
       g_values = be.empty(values.sizes(), values.options()),
       g_cov3 = be.empty(cov3.sizes(), cov3.options()),
       g_weights = be.empty(weights.sizes(), weights.options());
  if (points.size(0) * points.size(1) == 0) return {g_points, g_values, g_cov3, g_weights};
  const cuda_backward::Need need{output_mask[0], output_mask[1], output_mask[2], output_mask[3]};
  const at::Tensor* gw = t.grad_weight.defined() ? &t.grad_weight : nullptr;
  const auto dtype = points.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "gmm_backward", [&] {
    dispatch_channels(values.size(2), [&](auto kc) {
      cuda_backward::launch_backward<scalar_t, decltype(kc)::value>(
          be, t.grad_image, gw, t.image, t.weight_map, in.points, in.values, in.cov3, in.weights,
          cutoff, need, g_points, g_values, g_cov3, g_weights);
    });
  });
  return {g_points, g_values, g_cov3, g_weights};
}

}  // namespace nuir
