// CUDA kernels of nuir::gmm_forward, their launch sequence and the op: image [B, C, H, W] and
// weight map [B, H, W] (in the accumulation type: float32 for half-precision inputs).
//
// Same result as csrc/cpu/gmm_cpu.cpp (the per-pair arithmetic is written in the same order), by
// a gather over 16x16 output tiles:
//   1. setup_points: per point its Gaussian (gmm_math.h), its clipped cutoff box, and a cell key.
//      Points live in a hierarchy of uniform grids: level l has square cells of side
//      S_l = S_0 * 2^l, and a point goes to the first level whose S_l is at least half its box
//      extent, into the cell holding its box centre. So a tile finds every point whose box can
//      touch it in the 3x3 (level 0: up to 6x6) cells around it on each level. S_0 follows the mean
//      point spacing, so level-0 cells hold about one point each.
//   2. a stable radix sort (cub) of (key, point index): points ordered by cell, by index within a
//      cell; then every cell's first position by a binary search (cell_begin).
//   3. render_tiles: one block per tile, one thread per pixel. The block walks the candidate cells
//      (each row of cells is one contiguous range of the sorted points), keeps the points whose box
//      meets the tile, stages them in shared memory in that fixed order (with, for a diagonal
//      Gaussian, its separable row and column factors over the tile, as the CPU kernel does), and
//      every thread accumulates its pixel's C numerators and total weight in registers.
// All sizes come from shapes (no host synchronisation); no floating-point atomics anywhere, and
// the order in which a pixel sums its points is fixed: the result is bitwise reproducible.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>

#include "device_common.cuh"
#include "gmm_math.h"
#include "op_common.h"

namespace nuir {
namespace cuda_forward {

constexpr int kTile = 16;
constexpr int kThreads = kTile * kTile;  // one pixel per thread
constexpr int kWarps = kThreads / 32;
constexpr int kMaxLevels = 32;
constexpr int kMaxRanges = 128;  // rows of candidate cells per tile, all levels together

// Points staged in shared memory per pass; the separable tables take 64 acc_t per point.
template <typename acc_t>
constexpr int kStage = sizeof(acc_t) == 8 ? 64 : 128;

struct CellGrid {
  int n_levels;
  int base_shift;  // S_0 = 2^base_shift >= 4; level l has cells of 2^(base_shift + l) < 2^30
  int64_t cells_per_batch;
  int64_t ncx[kMaxLevels], ncy[kMaxLevels];  // cells per row / column on each level
  int64_t offset[kMaxLevels];                // first cell of each level within a batch element
};

// The point's Gaussian as the tile loop wants it (2 * ib kept: the CPU's bdy = (2 * ib) * dy).
template <typename acc_t>
struct PointParams {
  acc_t mx, my, ia, ib2, ic, norm;
};

// A diagonal Gaussian (sxy == 0, so ib2 == 0) separates: over the tile's columns c and rows r,
// w = [qx_c + qy_r <= cutoff^2] * ey_r * ex_c, the CPU kernel's diagonal path. Tabulated once per
// staged point, these save the pixels a multiply-add chain and an exp each.
template <typename acc_t>
struct SeparableTables {
  acc_t qx[kTile], ex[kTile];  // ia dx^2 and exp(-qx / 2) of column tx0 + c
  acc_t qy[kTile], ey[kTile];  // ic dy^2 and norm exp(-qy / 2) of row ty0 + r
};

inline CellGrid make_cell_grid(int64_t height, int64_t width, int64_t n_points) {
  CellGrid grid{};
  const double spacing =
      std::sqrt(double(height) * double(width) / double(std::max<int64_t>(n_points, 1)));
  int base_shift = 2;
  while (double(int64_t(1) << base_shift) < spacing && base_shift < 24) ++base_shift;
  const int64_t base = int64_t(1) << base_shift;
  const int64_t max_extent = std::max(height, width) - 1;
  int levels = 1;  // the last level's cells are at least half the largest box extent
  while (((2 * base) << (levels - 1)) < max_extent) ++levels;
  TORCH_CHECK(levels <= kMaxLevels && base_shift + levels - 1 < 30,
              "nuir: output too large for the CUDA cell grid");
  grid.n_levels = levels;
  grid.base_shift = base_shift;
  int64_t cells = 0, ranges = 0;
  for (int l = 0; l < levels; ++l) {
    const int64_t size = base << l;
    grid.ncx[l] = (width + size - 1) / size;
    grid.ncy[l] = (height + size - 1) / size;
    grid.offset[l] = cells;
    cells += grid.ncx[l] * grid.ncy[l];
    ranges += std::max<int64_t>(3, kTile / size + 2);
  }
  TORCH_CHECK(ranges <= kMaxRanges, "nuir: too many cell levels for the CUDA kernel");
  grid.cells_per_batch = cells;
  return grid;
}

// Gaussian, clipped cutoff box and cell key of point bi (flat index b * N + i).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void setup_point(
    const scalar_t* __restrict__ points, const scalar_t* __restrict__ cov3,
    const scalar_t* __restrict__ weights, int64_t bi, int64_t total, int64_t n_points, int height,
    int width, double cutoff, const CellGrid& grid, PointParams<acc_t>* __restrict__ params,
    int4* __restrict__ boxes, uint32_t* __restrict__ keys, int32_t* __restrict__ order) {
  const scalar_t* p = points + 2 * bi;
  const scalar_t* c = cov3 + 3 * bi;
  const Gaussian<acc_t> g = make_gaussian<acc_t>(acc_t(p[0]), acc_t(p[1]), acc_t(c[0]), acc_t(c[1]),
                                                 acc_t(c[2]), acc_t(weights[bi]), acc_t(cutoff));
  int64_t x0, x1, y0, y1;
  const bool reached = cutoff_box(double(p[0]), double(p[1]), double(c[0]), double(c[1]),
                                  double(c[2]), cutoff, height, width, x0, x1, y0, y1);
  params[bi] = PointParams<acc_t>{g.mx, g.my, g.ia, acc_t(2) * g.ib, g.ic, g.norm};
  boxes[bi] = make_int4(int(x0), int(x1), int(y0), int(y1));
  order[bi] = int32_t(bi);
  const int64_t batch_count = total / n_points;
  // Sentinel: sorts last, in no cell. Keys fit 32 bits (checked by gmm_forward_device).
  uint32_t key = uint32_t(batch_count * grid.cells_per_batch);
  if (reached) {
    const int extent = int(std::max(x1 - x0, y1 - y0));
    int level = 0;
    while ((2 << (grid.base_shift + level)) < extent) ++level;
    // Cell of the box centre (x0 + x1) / 2: (x0 + x1) / (2 S_level).
    const int shift = grid.base_shift + level + 1;
    const int cx = int(x0 + x1) >> shift, cy = int(y0 + y1) >> shift;
    const int64_t b = int32_t(bi) / int32_t(n_points);
    key = uint32_t(b * grid.cells_per_batch + grid.offset[level] + int64_t(cy) * grid.ncx[level] +
                   cx);
  }
  keys[bi] = key;
}

template <typename scalar_t, typename acc_t>
__global__ void setup_points(const scalar_t* __restrict__ points, const scalar_t* __restrict__ cov3,
                             const scalar_t* __restrict__ weights, int64_t total, int64_t n_points,
                             int height, int width, double cutoff, CellGrid grid,
                             PointParams<acc_t>* __restrict__ params, int4* __restrict__ boxes,
                             uint32_t* __restrict__ keys, int32_t* __restrict__ order) {
  for (int64_t bi = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; bi < total;
       bi += int64_t(gridDim.x) * blockDim.x) {
    setup_point<scalar_t, acc_t>(points, cov3, weights, bi, total, n_points, height, width, cutoff,
                                 grid, params, boxes, keys, order);
  }
}

// cell_begin[c] = first position in the sorted keys whose key is >= c (c = 0 .. n_cells).
template <typename Key>
__global__ void find_cell_begin(const Key* __restrict__ sorted_keys, int32_t n_sorted,
                                int64_t n_cells_plus_one, int32_t* __restrict__ cell_begin) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < n_cells_plus_one;
       c += int64_t(gridDim.x) * blockDim.x) {
    int32_t lo = 0, hi = n_sorted;
    while (lo < hi) {
      const int32_t mid = lo + (hi - lo) / 2;
      if (sorted_keys[mid] < Key(c)) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    cell_begin[c] = lo;
  }
}

// One block per (batch element, tile); blockIdx.y is the channel group (generic C only).
template <typename scalar_t, typename acc_t, int kC>
__global__ void __launch_bounds__(kThreads)
    render_tiles(const PointParams<acc_t>* __restrict__ params, const int4* __restrict__ boxes,
                 const int32_t* __restrict__ sorted_order, const int32_t* __restrict__ cell_begin,
                 const scalar_t* __restrict__ values, int channels, int height, int width,
                 int tiles_x, int n_tiles, CellGrid grid, acc_t cut2, double fill,
                 scalar_t* __restrict__ image, acc_t* __restrict__ weight_map) {
  constexpr int kCv = kC > 0 ? kC : 4;  // channels held in registers
  constexpr int kCapacity = kStage<acc_t>;
  NUIR_SHARED(staged, PointParams<acc_t>[kCapacity]);
  NUIR_SHARED(staged_box, int4[kCapacity]);  // x0, x1, y0, y1
  NUIR_SHARED(staged_values, acc_t[kCapacity][kCv]);
  NUIR_SHARED(tables, SeparableTables<acc_t>[kCapacity]);
  NUIR_SHARED(range_start, int[kMaxRanges]);
  NUIR_SHARED(range_prefix, int[kMaxRanges + 1]);
  NUIR_SHARED(warp_counts, int[kWarps]);

  const int64_t b = blockIdx.x / unsigned(n_tiles);
  const int tile = int(blockIdx.x % unsigned(n_tiles));
  const int tx0 = (tile % tiles_x) * kTile, ty0 = (tile / tiles_x) * kTile;
  const int tx1 = std::min(tx0 + kTile, width) - 1, ty1 = std::min(ty0 + kTile, height) - 1;
  const int c_begin = kC > 0 ? 0 : int(blockIdx.y) * kCv;
  const int c_count = kC > 0 ? kC : std::min(kCv, channels - c_begin);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // Each warp owns an 8 x 4 block of pixels: small point boxes meet few warps.
  const int wx0 = tx0 + (warp & 1) * 8, wy0 = ty0 + (warp >> 1) * 4;
  const int px = wx0 + (lane & 7), py = wy0 + (lane >> 3);
  const bool pixel_in_image = px <= tx1 && py <= ty1;

  // 1. Candidate ranges: on each level, the rows of cells whose points may reach the tile.
  //    Thread t reads range t; the levels' row counts are plain arithmetic, the same everywhere.
  int n_ranges = 0, my_start = 0, my_length = 0;
  for (int l = 0; l < grid.n_levels; ++l) {
    const int shift = grid.base_shift + l;  // cells of 2^shift pixels
    const int64_t cx_lo = std::max(0, (tx0 >> shift) - 1);
    const int64_t cx_hi = std::min<int64_t>(grid.ncx[l] - 1, (tx1 >> shift) + 1);
    const int64_t cy_lo = std::max(0, (ty0 >> shift) - 1);
    const int64_t cy_hi = std::min<int64_t>(grid.ncy[l] - 1, (ty1 >> shift) + 1);
    const int rows = int(cy_hi - cy_lo + 1);
    if (tid >= n_ranges && tid < n_ranges + rows) {
      const int64_t row_first =
          b * grid.cells_per_batch + grid.offset[l] + (cy_lo + tid - n_ranges) * grid.ncx[l];
      my_start = cell_begin[row_first + cx_lo];
      my_length = cell_begin[row_first + cx_hi + 1] - my_start;
    }
    n_ranges += rows;
  }
  // Exclusive prefix of the range lengths, by warp 0 (four ranges per lane).
  if (tid < kMaxRanges) {
    range_start[tid] = my_start;
    range_prefix[tid] = tid < n_ranges ? my_length : 0;
  }
  __syncthreads();
  if (warp == 0) {
    int lengths[kMaxRanges / 32];
    int local = 0;
#pragma unroll
    for (int k = 0; k < kMaxRanges / 32; ++k) {
      lengths[k] = range_prefix[lane * (kMaxRanges / 32) + k];
      local += lengths[k];
    }
    int inclusive = local;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int other = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += other;
    }
    int running = inclusive - local;
#pragma unroll
    for (int k = 0; k < kMaxRanges / 32; ++k) {
      range_prefix[lane * (kMaxRanges / 32) + k] = running;
      running += lengths[k];
    }
    if (lane == 31) range_prefix[kMaxRanges] = inclusive;
  }
  __syncthreads();
  const int n_candidates = range_prefix[kMaxRanges];

  acc_t total = 0;
  acc_t numer[kCv];
#pragma unroll
  for (int c = 0; c < kCv; ++c) numer[c] = 0;

  // 2. Candidates in chunks of kCapacity: keep those whose box meets the tile, in order.
  for (int chunk = 0; chunk < n_candidates; chunk += kCapacity) {
    const int v = chunk + tid;
    bool keep = false;
    int32_t bi = 0;
    int4 box = make_int4(0, -1, 0, -1);
    if (tid < kCapacity && v < n_candidates) {
      int lo = 0, hi = n_ranges - 1;  // the last range r with range_prefix[r] <= v
      while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (range_prefix[mid] <= v) {
          lo = mid;
        } else {
          hi = mid - 1;
        }
      }
      bi = sorted_order[range_start[lo] + (v - range_prefix[lo])];
      box = boxes[bi];
      keep = box.x <= tx1 && box.y >= tx0 && box.z <= ty1 && box.w >= ty0;
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, keep);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int slot = __popc(ballot & ((1u << lane) - 1u)), n_staged = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const int count = warp_counts[w];
      slot += w < warp ? count : 0;
      n_staged += count;
    }
    if (keep) {
      staged[slot] = params[bi];
      staged_box[slot] = box;
      const scalar_t* row = values + int64_t(bi) * channels + c_begin;
#pragma unroll
      for (int c = 0; c < kCv; ++c) staged_values[slot][c] = c < c_count ? acc_t(row[c]) : acc_t(0);
    }
    __syncthreads();
    // Separable tables of the staged diagonal Gaussians: 2 * kTile entries per point.
    for (int e = tid; e < n_staged * 2 * kTile; e += kThreads) {
      const int j = e / (2 * kTile), k = e % (2 * kTile);
      const PointParams<acc_t>& s = staged[j];
      if (s.ib2 != acc_t(0)) continue;
      if (k < kTile) {
        const acc_t dx = acc_t(tx0 + k) - s.mx;
        const acc_t qx = s.ia * dx * dx;
        tables[j].qx[k] = qx;
        tables[j].ex[k] = cuda_detail::exp_neg_half(qx);
      } else {
        const acc_t dy = acc_t(ty0 + k - kTile) - s.my;
        const acc_t qy = s.ic * dy * dy;
        tables[j].qy[k - kTile] = qy;
        tables[j].ey[k - kTile] = s.norm * cuda_detail::exp_neg_half(qy);
      }
    }
    __syncthreads();

    // 3. Every pixel sums the staged points in staging order, with the CPU kernel's arithmetic.
    //    A warp first picks, 32 at a time, the points whose box meets its 8 x 4 pixels (the
    //    others add nothing to them), then walks those in order.
    const acc_t x = acc_t(px), y = acc_t(py);
    const int col = px - tx0, row = py - ty0;
    for (int j0 = 0; j0 < n_staged; j0 += 32) {
      bool meets = false;
      if (j0 + lane < n_staged) {
        const int4 other = staged_box[j0 + lane];
        meets = other.x <= wx0 + 7 && other.y >= wx0 && other.z <= wy0 + 3 && other.w >= wy0;
      }
      unsigned todo = __ballot_sync(0xffffffffu, meets);
      while (todo != 0u) {
        const int j = j0 + __ffs(int(todo)) - 1;
        todo &= todo - 1u;
        const int4 bj = staged_box[j];
        if (!pixel_in_image || px < bj.x || px > bj.y || py < bj.z || py > bj.w) continue;
        const PointParams<acc_t>& s = staged[j];
        acc_t w;
        if (s.ib2 == acc_t(0)) {
          const SeparableTables<acc_t>& t = tables[j];
          w = t.qx[col] + t.qy[row] <= cut2 ? t.ey[row] * t.ex[col] : acc_t(0);
        } else {
          const acc_t dx = x - s.mx, dy = y - s.my;
          const acc_t m2 = s.ia * dx * dx + s.ib2 * dy * dx + s.ic * dy * dy;
          w = m2 <= cut2 ? s.norm * cuda_detail::exp_neg_half(m2) : acc_t(0);
        }
        total += w;
#pragma unroll
        for (int c = 0; c < kCv; ++c) numer[c] += w * staged_values[j][c];
      }
    }
    __syncthreads();  // the next chunk overwrites the staging area
  }

  if (pixel_in_image) {
    const int64_t hw = int64_t(height) * width;
    const int64_t pixel = int64_t(py) * width + px;
    if (kC > 0 || blockIdx.y == 0) weight_map[b * hw + pixel] = total;
    scalar_t* out = image + (b * channels + c_begin) * hw + pixel;
#pragma unroll
    for (int c = 0; c < kCv; ++c) {
      if (c < c_count) {
        out[c * hw] = total > acc_t(0) ? scalar_t(numer[c] / total) : scalar_t(acc_t(fill));
      }
    }
  }
}

// The launch sequence: per-point setup, sort by cell, cell table, tiles.
template <typename scalar_t, int kC, typename Backend>
void launch_forward(Backend& be, const at::Tensor& points, const at::Tensor& values,
                    const at::Tensor& cov3, const at::Tensor& weights, int64_t height,
                    int64_t width, double cutoff, double fill, at::Tensor& image,
                    at::Tensor& weight_map, const CellGrid& grid) {
  using acc_t = acc_type<scalar_t>;
  const int64_t batch = points.size(0), n_points = points.size(1), channels = values.size(2);
  const int64_t total = batch * n_points;
  const int64_t n_cells = batch * grid.cells_per_batch;
  const int end_bit = 64 - __builtin_clzll(uint64_t(n_cells));  // the sentinel n_cells fits

  // Per point its Gaussian, box, key and index; keys and indices in cell order; the cell table.
  const auto [params, boxes, keys, sorted_keys, order, sorted_order, cell_begin] =
      cuda_detail::allocate<PointParams<acc_t>, int4, uint32_t, uint32_t, int32_t, int32_t,
                            int32_t>(be, {total, total, total, total, total, total, n_cells + 1});

  be.launch(setup_points<scalar_t, acc_t>, dim3(cuda_detail::grid_for(total, 256)), dim3(256),
            points.data_ptr<scalar_t>(), cov3.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
            total, n_points, int(height), int(width), cutoff, grid, params, boxes, keys, order);
  be.sort_pairs(keys, sorted_keys, order, sorted_order, int(total), end_bit);
  be.launch(find_cell_begin<uint32_t>, dim3(cuda_detail::grid_for(n_cells + 1, 256)), dim3(256),
            sorted_keys, int32_t(total), n_cells + 1, cell_begin);

  const int tiles_x = int((width + kTile - 1) / kTile), tiles_y = int((height + kTile - 1) / kTile);
  const int64_t tiles = int64_t(tiles_x) * tiles_y;
  const int64_t groups = kC > 0 ? 1 : (channels + 3) / 4;
  TORCH_CHECK(batch * tiles < std::numeric_limits<int32_t>::max() && groups <= 65535,
              "nuir: output too large for one CUDA launch");
  const int n_tiles = int(tiles);
  const acc_t cut2 = acc_t(cutoff) * acc_t(cutoff);  // as make_gaussian computes it
  be.launch(render_tiles<scalar_t, acc_t, kC>, dim3(unsigned(batch * n_tiles), unsigned(groups)),
            dim3(kThreads), params, boxes, sorted_order, cell_begin, values.data_ptr<scalar_t>(),
            int(channels), int(height), int(width), tiles_x, n_tiles, grid, cut2, fill,
            image.data_ptr<scalar_t>(), weight_map.data_ptr<acc_t>());
}

}  // namespace cuda_forward

// The op (checks, outputs, dtype and channel dispatch) on the device of Backend.
template <typename Backend>
std::tuple<at::Tensor, at::Tensor> gmm_forward_device(const at::Tensor& points,
                                                      const at::Tensor& values,
                                                      const at::Tensor& cov3,
                                                      const at::Tensor& weights, int64_t height,
                                                      int64_t width, double cutoff, double fill) {
  const PointTensors in =
      checked_inputs(points, values, cov3, weights, cutoff, Backend::kDevice, /*half=*/true);
  TORCH_CHECK(height > 0 && width > 0, "nuir: height and width must be positive");
  TORCH_CHECK(height < cuda_detail::kMaxSide && width < cuda_detail::kMaxSide,
              "nuir: height and width must be < 2^30 on CUDA");
  TORCH_CHECK(points.size(0) * points.size(1) < std::numeric_limits<int32_t>::max(),
              "nuir: too many points (B * N must be < 2^31)");
  Backend be(points.device());
  const int64_t batch = points.size(0), n_points = points.size(1), channels = values.size(2);
  const auto acc = acc_dtype(values.scalar_type());
  auto image = be.empty({batch, channels, height, width}, values.options());
  auto weight_map = be.empty({batch, height, width}, values.options().dtype(acc));
  if (batch == 0) return {image, weight_map};
  if (n_points == 0) {
    // No point reaches any pixel. fill goes through the accumulation type, as in the kernel.
    image.fill_(acc == at::kDouble ? fill : double(float(fill)));
    weight_map.zero_();
    return {image, weight_map};
  }
  const cuda_forward::CellGrid grid = cuda_forward::make_cell_grid(height, width, n_points);
  // 2^32 cells would take an output far beyond any GPU's memory (cells of 4 x 4 pixels or more).
  TORCH_CHECK(batch * grid.cells_per_batch < int64_t(std::numeric_limits<uint32_t>::max()),
              "nuir: output too large for the CUDA kernel's 32-bit cell keys");
  const auto dtype = points.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "gmm_forward", [&] {
    dispatch_channels(channels, [&](auto kc) {
      cuda_forward::launch_forward<scalar_t, decltype(kc)::value>(
          be, in.points, in.values, in.cov3, in.weights, height, width, cutoff, fill, image,
          weight_map, grid);
    });
  });
  return {image, weight_map};
}

}  // namespace nuir
