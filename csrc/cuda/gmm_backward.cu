// CUDA kernel of nuir::gmm_backward: gradients for points, values, cov3 and weights.
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
//   4. gather_big_points: one 256-thread block per listed point, fixed block reduction.
// Each point's gradient is summed in an order fixed by its box alone, whichever warp or block
// computes it: bitwise reproducible.
#include <array>
#include <algorithm>
#include <cub/device/device_radix_sort.cuh>

#include "gmm_cuda_common.cuh"

namespace nuir {
namespace {

using cuda_detail::acc_type;

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
    cutoff_box(double(p[0]), double(p[1]), double(cv[0]), double(cv[2]), cutoff, height, width, x0,
               x1, y0, y1);
    const int64_t b = int32_t(bi) / int32_t(n_points);
    int64_t cell = 0;  // an empty box: any cell will do, it reads nothing
    if (x0 <= x1 && y0 <= y1) {
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
    const scalar_t* __restrict__ image, const scalar_t* __restrict__ weight_map, int64_t b,
    int64_t pixel, int64_t hw, int channels, acc_t* __restrict__ map_g, acc_t* __restrict__ map_s) {
  const int64_t q = b * hw + pixel;
  const acc_t total = acc_t(weight_map[q]);
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
                          const scalar_t* __restrict__ weight_map, int64_t batch, int64_t hw,
                          int channels, acc_t* __restrict__ map_g, acc_t* __restrict__ map_s) {
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    for (int64_t pixel = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; pixel < hw;
         pixel += int64_t(gridDim.x) * blockDim.x) {
      pixel_map_one(grad_image, grad_weight, image, weight_map, b, pixel, hw, channels, map_g,
                    map_s);
    }
  }
}

// One point, as both gather kernels see it.
template <typename scalar_t, typename acc_t>
struct PointView {
  Gaussian<acc_t> g;
  acc_t weight;
  int x0, x1, y0, y1;
  const scalar_t* value;  // [C]
  const acc_t* map_g;     // [C, H, W] of the point's batch element
  const acc_t* map_s;     // [H, W]
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ PointView<scalar_t, acc_t> load_point(
    int64_t bi, const scalar_t* __restrict__ points, const scalar_t* __restrict__ values,
    const scalar_t* __restrict__ cov3, const scalar_t* __restrict__ weights, int64_t n_points,
    int channels, int height, int width, double cutoff, const acc_t* map_g, const acc_t* map_s) {
  PointView<scalar_t, acc_t> pv;
  const scalar_t* p = points + 2 * bi;
  const scalar_t* cv = cov3 + 3 * bi;
  pv.weight = acc_t(weights[bi]);
  pv.g = make_gaussian<acc_t>(acc_t(p[0]), acc_t(p[1]), acc_t(cv[0]), acc_t(cv[1]), acc_t(cv[2]),
                              pv.weight, acc_t(cutoff));
  int64_t x0, x1, y0, y1;
  cutoff_box(double(p[0]), double(p[1]), double(cv[0]), double(cv[2]), cutoff, height, width, x0,
             x1, y0, y1);
  pv.x0 = int(x0), pv.x1 = int(x1), pv.y0 = int(y0), pv.y1 = int(y1);
  pv.value = values + bi * channels;
  const int64_t b = int32_t(bi) / int32_t(n_points), hw = int64_t(height) * width;  // B N < 2^31
  pv.map_g = map_g + b * channels * hw;
  pv.map_s = map_s + b * hw;
  return pv;
}

// Per-thread partial sums over the pixels (x0 + tx + k * step_x, y0 + ty + l * step_y) of the box.
// kWithSums: also the PointGradSums (needs every channel for k = <G, c> - s); the value gradient
// covers channels [c_begin, c_begin + c_count), c_count <= kCv.
template <typename scalar_t, typename acc_t, int kC, bool kWithSums>
__device__ __forceinline__ void gather_box(const PointView<scalar_t, acc_t>& pv, int channels,
                                           int c_begin, int c_count, int width, int64_t hw, int tx,
                                           int ty, int step_x, int step_y,
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
#pragma unroll
      for (int c = 0; c < kCv; ++c) gval[c] += w * gmap[c];
    }
  }
}

template <typename acc_t>
__device__ __forceinline__ void warp_sum_all(PointGradSums<acc_t>& s) {
  using cuda_detail::warp_sum;
  s.k_density = warp_sum(s.k_density);
  s.kw = warp_sum(s.kw);
  s.kw_ux = warp_sum(s.kw_ux);
  s.kw_uy = warp_sum(s.kw_uy);
  s.kw_uxux = warp_sum(s.kw_uxux);
  s.kw_uxuy = warp_sum(s.kw_uxuy);
  s.kw_uyuy = warp_sum(s.kw_uyuy);
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void write_point_grads(int64_t bi, const Gaussian<acc_t>& g,
                                                  const PointGradSums<acc_t>& sums,
                                                  scalar_t* __restrict__ g_points,
                                                  scalar_t* __restrict__ g_cov3,
                                                  scalar_t* __restrict__ g_weights) {
  g_points[2 * bi] = scalar_t(sums.kw_ux);
  g_points[2 * bi + 1] = scalar_t(sums.kw_uy);
  acc_t g_sxx, g_sxy, g_syy;
  cov_gradient(g, sums, g_sxx, g_sxy, g_syy);
  g_cov3[3 * bi] = scalar_t(g_sxx);
  g_cov3[3 * bi + 1] = scalar_t(g_sxy);
  g_cov3[3 * bi + 2] = scalar_t(g_syy);
  g_weights[bi] = scalar_t(sums.k_density);
}

struct GradPointers {
  void* points;
  void* values;
  void* cov3;
  void* weights;
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
};

// One warp per point; boxes over kWarpMaxPixels pixels are listed for gather_big_points.
template <typename scalar_t, typename acc_t, int kC>
__global__ void __launch_bounds__(kBlockThreads)
    gather_points(Inputs<scalar_t, acc_t> in, GradPointers out, const int32_t* __restrict__ order,
                  int32_t* __restrict__ big_list, int32_t* __restrict__ big_count) {
  constexpr int kCv = kC > 0 ? kC : kChannelGroup;
  const int lane = threadIdx.x & 31;
  const int64_t position = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (position >= in.total) return;  // whole warps leave together
  const int64_t bi = order[position];
  const auto pv =
      load_point<scalar_t, acc_t>(bi, in.points, in.values, in.cov3, in.weights, in.n_points,
                                  in.channels, in.height, in.width, in.cutoff, in.map_g, in.map_s);
  const int64_t box_w = std::max(pv.x1 - pv.x0 + 1, 0), box_h = std::max(pv.y1 - pv.y0 + 1, 0);
  if (box_w * box_h > kWarpMaxPixels) {
    if (lane == 0) big_list[atomicAdd(big_count, 1)] = int32_t(bi);
    return;
  }
  // Lanes tile the box lane_w pixels wide, 32 / lane_w rows high.
  const int lane_w = box_w <= 4 ? 4 : box_w <= 8 ? 8 : box_w <= 16 ? 16 : 32;
  const int tx = lane % lane_w, ty = lane / lane_w, step_y = 32 / lane_w;
  const int64_t hw = int64_t(in.height) * in.width;
  auto* g_values = static_cast<scalar_t*>(out.values);
  for (int c_begin = 0; c_begin < in.channels; c_begin += kCv) {
    const int c_count = std::min(kCv, in.channels - c_begin);
    PointGradSums<acc_t> sums;
    acc_t gval[kCv];
#pragma unroll
    for (int c = 0; c < kCv; ++c) gval[c] = 0;
    if (c_begin == 0) {
      gather_box<scalar_t, acc_t, kC, true>(pv, in.channels, c_begin, c_count, in.width, hw, tx, ty,
                                            lane_w, step_y, sums, gval);
      warp_sum_all(sums);
      if (lane == 0) {
        write_point_grads(bi, pv.g, sums, static_cast<scalar_t*>(out.points),
                          static_cast<scalar_t*>(out.cov3), static_cast<scalar_t*>(out.weights));
      }
    } else {
      gather_box<scalar_t, acc_t, kC, false>(pv, in.channels, c_begin, c_count, in.width, hw, tx,
                                             ty, lane_w, step_y, sums, gval);
    }
#pragma unroll
    for (int c = 0; c < kCv; ++c) gval[c] = cuda_detail::warp_sum(gval[c]);
    if (lane == 0) {
#pragma unroll
      for (int c = 0; c < kCv; ++c) {
        if (c < c_count) g_values[bi * in.channels + c_begin + c] = scalar_t(gval[c]);
      }
    }
  }
}

// Sum over a block in a fixed order: warps by butterfly, then warp 0's lane 0 over the warps.
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

template <typename acc_t>
__device__ __forceinline__ void block_sum_all(PointGradSums<acc_t>& s, acc_t* scratch) {
  s.k_density = block_sum(s.k_density, scratch);
  s.kw = block_sum(s.kw, scratch);
  s.kw_ux = block_sum(s.kw_ux, scratch);
  s.kw_uy = block_sum(s.kw_uy, scratch);
  s.kw_uxux = block_sum(s.kw_uxux, scratch);
  s.kw_uxuy = block_sum(s.kw_uxuy, scratch);
  s.kw_uyuy = block_sum(s.kw_uyuy, scratch);
}

// One block per listed point (grid-stride over the list, whose length is read on the device).
template <typename scalar_t, typename acc_t, int kC>
__global__ void __launch_bounds__(kBlockThreads)
    gather_big_points(Inputs<scalar_t, acc_t> in, GradPointers out,
                      const int32_t* __restrict__ big_list, const int32_t* __restrict__ big_count) {
  constexpr int kCv = kC > 0 ? kC : kChannelGroup;
  __shared__ acc_t scratch[kBlockWarps];
  const int n_big = *big_count;
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const int64_t hw = int64_t(in.height) * in.width;
  auto* g_values = static_cast<scalar_t*>(out.values);
  for (int entry = blockIdx.x; entry < n_big; entry += gridDim.x) {
    const int64_t bi = big_list[entry];
    const auto pv = load_point<scalar_t, acc_t>(bi, in.points, in.values, in.cov3, in.weights,
                                                in.n_points, in.channels, in.height, in.width,
                                                in.cutoff, in.map_g, in.map_s);
    for (int c_begin = 0; c_begin < in.channels; c_begin += kCv) {
      const int c_count = std::min(kCv, in.channels - c_begin);
      PointGradSums<acc_t> sums;
      acc_t gval[kCv];
#pragma unroll
      for (int c = 0; c < kCv; ++c) gval[c] = 0;
      if (c_begin == 0) {
        gather_box<scalar_t, acc_t, kC, true>(pv, in.channels, c_begin, c_count, in.width, hw, tx,
                                              ty, 32, kBlockWarps, sums, gval);
        block_sum_all(sums, scratch);
        if (threadIdx.x == 0) {
          write_point_grads(bi, pv.g, sums, static_cast<scalar_t*>(out.points),
                            static_cast<scalar_t*>(out.cov3), static_cast<scalar_t*>(out.weights));
        }
      } else {
        gather_box<scalar_t, acc_t, kC, false>(pv, in.channels, c_begin, c_count, in.width, hw, tx,
                                               ty, 32, kBlockWarps, sums, gval);
      }
#pragma unroll
      for (int c = 0; c < kCv; ++c) gval[c] = block_sum(gval[c], scratch);
      if (threadIdx.x == 0) {
#pragma unroll
        for (int c = 0; c < kCv; ++c) {
          if (c < c_count) g_values[bi * in.channels + c_begin + c] = scalar_t(gval[c]);
        }
      }
    }
  }
}

template <typename scalar_t, int kC>
void backward_impl(const at::Tensor& grad_image, const at::Tensor* grad_weight,
                   const at::Tensor& image, const at::Tensor& weight_map, const at::Tensor& points,
                   const at::Tensor& values, const at::Tensor& cov3, const at::Tensor& weights,
                   double cutoff, at::Tensor& g_points, at::Tensor& g_values, at::Tensor& g_cov3,
                   at::Tensor& g_weights) {
  using acc_t = acc_type<scalar_t>;
  const int64_t batch = points.size(0), n_points = points.size(1), channels = values.size(2);
  const int64_t height = image.size(2), width = image.size(3), hw = height * width;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = batch * n_points;

  const OrderGrid order_grid = make_order_grid(batch, height, width);
  const int64_t n_keys = batch * order_grid.cells_per_batch;
  const int end_bit = 64 - __builtin_clzll(uint64_t(n_keys));
  size_t sort_bytes = 0;
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), int(total), 0, end_bit,
      stream));

  cuda_detail::Workspace ws;
  ws.add(batch * channels * hw * sizeof(acc_t));  // 0 map G
  ws.add(batch * hw * sizeof(acc_t));             // 1 map s
  ws.add(total * sizeof(int32_t));                // 2 big-point list
  ws.add(sizeof(int32_t));                        // 3 its length
  ws.add(total * sizeof(uint32_t));               // 4 order keys
  ws.add(total * sizeof(uint32_t));               // 5 sorted keys
  ws.add(total * sizeof(int32_t));                // 6 point indices
  ws.add(total * sizeof(int32_t));                // 7 points in gather order
  ws.add(sort_bytes);                             // 8 cub temporary storage
  ws.allocate(points);
  auto* map_g = ws.get<acc_t>(0);
  auto* map_s = ws.get<acc_t>(1);
  auto* big_list = ws.get<int32_t>(2);
  auto* big_count = ws.get<int32_t>(3);
  auto* keys = ws.get<uint32_t>(4);
  auto* order = ws.get<int32_t>(6);
  auto* sorted_order = ws.get<int32_t>(7);
  C10_CUDA_CHECK(cudaMemsetAsync(big_count, 0, sizeof(int32_t), stream));

  order_points<scalar_t><<<cuda_detail::grid_for(total, 256), 256, 0, stream>>>(
      points.data_ptr<scalar_t>(), cov3.data_ptr<scalar_t>(), total, n_points, int(height),
      int(width), cutoff, order_grid, keys, order);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(ws.raw(8), sort_bytes, keys, ws.get<uint32_t>(5),
                                                 order, sorted_order, int(total), 0, end_bit,
                                                 stream));

  const dim3 map_grid(cuda_detail::grid_for(hw, 256, 65535),
                      unsigned(std::min<int64_t>(batch, 65535)));
  pixel_map<scalar_t, acc_t><<<map_grid, 256, 0, stream>>>(
      grad_image.data_ptr<scalar_t>(),
      grad_weight != nullptr ? grad_weight->data_ptr<scalar_t>() : nullptr,
      image.data_ptr<scalar_t>(), weight_map.data_ptr<scalar_t>(), batch, hw, int(channels), map_g,
      map_s);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

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
                                   cutoff};
  const GradPointers out{g_points.data_ptr(), g_values.data_ptr(), g_cov3.data_ptr(),
                         g_weights.data_ptr()};
  constexpr int kPointsPerBlock = kBlockThreads / 32;
  const int64_t blocks = (total + kPointsPerBlock - 1) / kPointsPerBlock;
  gather_points<scalar_t, acc_t, kC>
      <<<unsigned(blocks), kBlockThreads, 0, stream>>>(in, out, sorted_order, big_list, big_count);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const unsigned big_blocks = unsigned(std::min<int64_t>(total, 2048));
  gather_big_points<scalar_t, acc_t, kC>
      <<<big_blocks, kBlockThreads, 0, stream>>>(in, out, big_list, big_count);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gmm_backward_cuda(
    const at::Tensor& grad_image, const std::optional<at::Tensor>& grad_weight,
    const at::Tensor& image, const at::Tensor& weight_map, const at::Tensor& points,
    const at::Tensor& values, const at::Tensor& cov3, const at::Tensor& weights, double cutoff,
    std::array<bool, 4> /*output_mask: every gradient is computed*/) {
  cuda_detail::check_inputs_cuda(points, values, cov3, weights);
  TORCH_CHECK(
      image.dim() == 4 && image.size(0) == points.size(0) && image.size(1) == values.size(2),
      "nuir: image must be [B, C, H, W] matching values");
  TORCH_CHECK(weight_map.dim() == 3 && weight_map.size(0) == image.size(0) &&
                  weight_map.size(1) == image.size(2) && weight_map.size(2) == image.size(3),
              "nuir: weight must be [B, H, W] matching image");
  TORCH_CHECK(grad_image.sizes() == image.sizes(), "nuir: grad_image must match image");
  TORCH_CHECK(image.size(2) < cuda_detail::kMaxSide && image.size(3) < cuda_detail::kMaxSide,
              "nuir: height and width must be < 2^30 on CUDA");
  for (const auto* t : {&grad_image, &image, &weight_map}) {
    TORCH_CHECK(t->device() == points.device(), "nuir: all inputs must be on one device");
  }
  const c10::cuda::CUDAGuard device_guard(points.device());
  const auto dtype = points.scalar_type();
  const auto p = points.contiguous(), v = values.contiguous(), c = cov3.contiguous(),
             w = weights.contiguous(), gi = grad_image.contiguous().to(dtype),
             img = image.contiguous().to(dtype), wm = weight_map.contiguous().to(dtype);
  at::Tensor gw;
  if (grad_weight.has_value() && grad_weight->defined()) {
    TORCH_CHECK(grad_weight->sizes() == weight_map.sizes(), "nuir: grad_weight must match weight");
    TORCH_CHECK(grad_weight->device() == points.device(), "nuir: all inputs must be on one device");
    gw = grad_weight->contiguous().to(dtype);
  }
  auto g_points = at::empty_like(p), g_values = at::empty_like(v), g_cov3 = at::empty_like(c),
       g_weights = at::empty_like(w);
  if (p.size(0) * p.size(1) == 0) return {g_points, g_values, g_cov3, g_weights};
  const at::Tensor* gw_ptr = gw.defined() ? &gw : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "gmm_backward_cuda", [&] {
    cuda_detail::dispatch_channels(v.size(2), [&](auto kc) {
      backward_impl<scalar_t, decltype(kc)::value>(gi, gw_ptr, img, wm, p, v, c, w, cutoff,
                                                   g_points, g_values, g_cov3, g_weights);
    });
  });
  return {g_points, g_values, g_cov3, g_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(nuir, CUDA, m) { m.impl("gmm_backward", &gmm_backward_cuda); }

}  // namespace nuir
