// The CPU kernels' loops, compiled once per instruction set: gmm_cpu_<isa>.cpp includes this
// file inside namespace nuir::isa_<isa>, after gmm_cpu_variant.h (the headers) and, for a SIMD
// variant, under a `#pragma GCC target`, with NUIR_SIMD_BYTES the register width. It includes
// nothing and has no include guard; it defines this variant's kKernels (gmm_cpu_variant.h).
//
// kLanes (16) values of one row are held as kLanes / (lanes per register) native registers and
// every operation runs register by register. GCC's vector extension would take a 16-float vector
// directly, but for a vector wider than the target's registers it lowers comparisons and `?:`
// lane by lane and moves lanes through the stack: the AVX2 build of the former 64-byte vectors
// ran 4-6x slower than the AVX-512 one (docs/speed.md). Every lane sees the same operations in
// the same order in every variant.

namespace {

// Bands are kLanes rows high; every inner loop runs over kLanes lanes of one row, a fixed trip
// count that compiles to whole vector registers.
constexpr int64_t kLanes = 16;

// kLanes values of T: the lanes of one row.
template <typename T>
struct vec {
  static constexpr int kWidth = NUIR_SIMD_BYTES / int(sizeof(T));  // lanes per register
  static constexpr int kParts = int(kLanes) / kWidth;
  static_assert(kParts * kWidth == kLanes, "kLanes must fill whole registers");
  typedef T reg __attribute__((vector_size(NUIR_SIMD_BYTES)));
  reg part[kParts];
};

// The lanes where a comparison holds: all bits set in those lanes, none in the others.
template <typename T>
struct lane_mask {
  static constexpr int kParts = vec<T>::kParts;
  using reg = decltype(typename vec<T>::reg{} < typename vec<T>::reg{});
  reg part[kParts];
};

// Scalars next to vectors: T deduced from the vector only.
template <typename T>
struct scalar_of {
  using type = T;
};
template <typename T>
using scalar = typename scalar_of<T>::type;

// r.part[i] = f(i) for every register i.
template <typename R, typename F>
inline R each_part(F f) {
  R r;
  for (int i = 0; i < R::kParts; ++i) r.part[i] = f(i);
  return r;
}

template <typename T>
inline vec<T> splat(T x) {
  return each_part<vec<T>>([&](int) { return typename vec<T>::reg{} + x; });
}
template <typename T>
inline vec<T> operator+(const vec<T>& a, const vec<T>& b) {
  return each_part<vec<T>>([&](int i) { return a.part[i] + b.part[i]; });
}
template <typename T>
inline vec<T> operator-(const vec<T>& a, const vec<T>& b) {
  return each_part<vec<T>>([&](int i) { return a.part[i] - b.part[i]; });
}
template <typename T>
inline vec<T> operator*(const vec<T>& a, const vec<T>& b) {
  return each_part<vec<T>>([&](int i) { return a.part[i] * b.part[i]; });
}
template <typename T>
inline vec<T> operator-(const vec<T>& a) {
  return each_part<vec<T>>([&](int i) { return -a.part[i]; });
}
template <typename T>
inline vec<T> operator+(const vec<T>& a, scalar<T> s) {
  return each_part<vec<T>>([&](int i) { return a.part[i] + s; });
}
template <typename T>
inline vec<T> operator-(const vec<T>& a, scalar<T> s) {
  return each_part<vec<T>>([&](int i) { return a.part[i] - s; });
}
template <typename T>
inline vec<T> operator*(const vec<T>& a, scalar<T> s) {
  return each_part<vec<T>>([&](int i) { return a.part[i] * s; });
}
template <typename T>
inline vec<T> operator*(scalar<T> s, const vec<T>& a) {
  return each_part<vec<T>>([&](int i) { return s * a.part[i]; });
}
template <typename T>
inline vec<T>& operator+=(vec<T>& a, const vec<T>& b) {
  return a = a + b;
}
template <typename T>
inline lane_mask<T> operator<=(const vec<T>& a, scalar<T> s) {
  return each_part<lane_mask<T>>([&](int i) { return a.part[i] <= s; });
}
template <typename T>
inline lane_mask<T> operator&(const lane_mask<T>& a, const lane_mask<T>& b) {
  return each_part<lane_mask<T>>([&](int i) { return a.part[i] & b.part[i]; });
}
// mask ? x : 0, lane by lane.
template <typename T>
inline vec<T> where(const lane_mask<T>& mask, const vec<T>& x) {
  return each_part<vec<T>>(
      [&](int i) { return mask.part[i] ? x.part[i] : typename vec<T>::reg{}; });
}

// Unaligned loads and stores, register by register (a copy of the whole struct would go through
// general-purpose registers).
template <typename T>
inline vec<T> load(const T* p) {
  return each_part<vec<T>>([&](int i) {
    typename vec<T>::reg r;
    __builtin_memcpy(&r, p + i * vec<T>::kWidth, sizeof(r));
    return r;
  });
}
template <typename T>
inline void store(T* p, const vec<T>& v) {
  for (int i = 0; i < vec<T>::kParts; ++i)
    __builtin_memcpy(p + i * vec<T>::kWidth, &v.part[i], sizeof(v.part[i]));
}
template <typename T>
inline vec<T> lane_index() {
  T lanes[kLanes];
  for (int64_t j = 0; j < kLanes; ++j) lanes[j] = T(j);
  return load(lanes);
}

// The sum of kBytes / sizeof(T) lanes at p by a fixed pairwise tree (lane j + lane j + half, for
// half = kLanes / 2, ..., 1): deterministic, and the same in every variant.
template <typename T, int kBytes>
inline T tree_sum(const void* p) {
  if constexpr (kBytes == int(sizeof(T))) {
    T x;
    __builtin_memcpy(&x, p, sizeof(T));
    return x;
  } else {
    typedef T half __attribute__((vector_size(kBytes / 2)));
    half lo, hi;
    __builtin_memcpy(&lo, p, sizeof(half));
    __builtin_memcpy(&hi, static_cast<const char*>(p) + sizeof(half), sizeof(half));
    const half sum = lo + hi;
    return tree_sum<T, kBytes / 2>(&sum);
  }
}
template <typename T>
inline T lane_sum(const vec<T>& v) {
  return tree_sum<T, int(sizeof(vec<T>))>(&v);
}

// exp(x) for float lanes: Cody-Waite range reduction and a degree-6 polynomial (error < 1 ulp on
// [-87, 88]; 0 below -87, where expf is denormal or 0). Double lanes use std::exp.
inline vec<float>::reg exp_reg(vec<float>::reg x) {
  using R = vec<float>::reg;
  using RI = lane_mask<float>::reg;
  R xc = x < -87.0f ? R{} - 87.0f : x;
  xc = xc > 88.0f ? R{} + 88.0f : xc;
  const RI k = __builtin_convertvector(xc * 1.44269504088896341f + 128.5f, RI) - 128;
  const R kf = __builtin_convertvector(k, R);
  const R r = (xc - kf * 0.693359375f) + kf * 2.12194440e-4f;
  R p = R{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const R e = p * (R)((k + 127) << 23);
  return x < -87.0f ? R{} : e;
}
inline vec<float> exp_lanes(const vec<float>& x) {
  return each_part<vec<float>>([&](int i) { return exp_reg(x.part[i]); });
}
inline vec<double> exp_lanes(const vec<double>& x) {
  double lanes[kLanes];
  store(lanes, x);
  for (int64_t j = 0; j < kLanes; ++j) lanes[j] = std::exp(lanes[j]);
  return load(lanes);
}

// Points whose cutoff box meets the raster (batch-flat indices), in the order of the
// kLanes x kLanes tile where the box starts; stable, so equal keys keep the point order.
// Working through points in this order keeps both passes' memory accesses local.
// `boxes` [B * N, 4] receives every point's box (x0, x1, y0, y1).
template <typename scalar_t>
std::vector<int64_t> spatial_order(const scalar_t* points, const scalar_t* cov3, int64_t batch,
                                   int64_t n, int64_t height, int64_t width, double cutoff,
                                   std::vector<int64_t>& boxes) {
  const int64_t tiles_x = (width + kLanes - 1) / kLanes, tiles_y = (height + kLanes - 1) / kLanes;
  const int64_t total = batch * n;
  boxes.resize(4 * total);
  std::vector<int64_t> key(total);
  at::parallel_for(0, total, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* p = points + 2 * i;
      const scalar_t* c = cov3 + 3 * i;
      int64_t* bx = &boxes[4 * i];
      const bool reached = cutoff_box(double(p[0]), double(p[1]), double(c[0]), double(c[1]),
                                      double(c[2]), cutoff, height, width, bx[0], bx[1], bx[2],
                                      bx[3]);
      key[i] = reached ? ((i / n) * tiles_y + bx[2] / kLanes) * tiles_x + bx[0] / kLanes : -1;
    }
  });
  std::vector<int64_t> start(batch * tiles_x * tiles_y + 1, 0);
  for (int64_t i = 0; i < total; ++i)
    if (key[i] >= 0) ++start[key[i] + 1];
  for (size_t t = 1; t < start.size(); ++t) start[t] += start[t - 1];
  std::vector<int64_t> order(start.back());
  for (int64_t i = 0; i < total; ++i)
    if (key[i] >= 0) order[start[key[i]]++] = i;
  return order;
}

// Accumulates one point into a band buffer acc [(C + 1), kLanes, pitch]: the C numerator planes,
// then the total weight W, for the band's kLanes rows starting at row ty0. Rows y0..y1 and columns
// x0..x1 are the point's cutoff box inside the band; columns go kLanes at a time.
template <typename acc_t, int kC>
inline void splat_point(const Gaussian<acc_t>& g, const acc_t* value, int channels, int64_t ty0,
                        int64_t x0, int64_t x1, int64_t y0, int64_t y1, int64_t pitch,
                        acc_t* __restrict acc) {
  using V = vec<acc_t>;
  const int C = kC > 0 ? kC : channels;
  const int64_t plane = kLanes * pitch;
  const V lane = lane_index<acc_t>();
  acc_t qy[kLanes], ey[kLanes];  // per row of the band: the y terms of a diagonal Gaussian
  if (g.diagonal) {
    const V dy = lane + (acc_t(ty0) - g.my);
    const V q = g.ic * dy * dy;
    store(qy, q);
    store(ey, g.norm * exp_lanes(acc_t(-0.5) * q));
  }
  for (int64_t xc = x0; xc <= x1; xc += kLanes) {
    const V xs = lane + acc_t(xc);
    const V dx = xs - g.mx;
    const V qx = g.ia * dx * dx;
    const auto inbox = xs <= acc_t(x1);
    const V ex = g.diagonal ? where(inbox, exp_lanes(acc_t(-0.5) * qx)) : V{};
    for (int64_t y = y0; y <= y1; ++y) {
      const int64_t r = y - ty0;
      V w;
      if (g.diagonal) {
        w = where(qx + qy[r] <= g.cut2, ey[r] * ex);
      } else {
        const acc_t dy = acc_t(y) - g.my;
        const V m2 = qx + (acc_t(2) * g.ib * dy) * dx + g.ic * dy * dy;
        w = where((m2 <= g.cut2) & inbox, g.norm * exp_lanes(acc_t(-0.5) * m2));
      }
      acc_t* row = acc + r * pitch + xc;
      store(row + C * plane, load(row + C * plane) + w);
      for (int c = 0; c < C; ++c) store(row + c * plane, load(row + c * plane) + w * value[c]);
    }
  }
}

// Forward. The output is cut into bands of kLanes rows; a counting sort lists, for every band,
// the points whose cutoff box meets it, in point order. Bands run in parallel, each summing its
// points into a local buffer in that fixed order: no atomics, the same bits for any thread count.
template <typename scalar_t, int kC>
void forward_impl(const at::Tensor& points, const at::Tensor& values, const at::Tensor& cov3,
                  const at::Tensor& weights, int64_t height, int64_t width, double cutoff,
                  double fill, at::Tensor& image, at::Tensor& weight_map) {
  using acc_t = acc_type<scalar_t>;
  const int64_t batch = points.size(0), n = points.size(1), channels = values.size(2);
  const int64_t bands = (height + kLanes - 1) / kLanes, pitch = width + kLanes;
  const scalar_t* val = values.data_ptr<scalar_t>();
  scalar_t* out = image.data_ptr<scalar_t>();
  scalar_t* wout = weight_map.data_ptr<scalar_t>();

  // Points in spatial order, with their Gaussian, box and values copied next to each other.
  std::vector<int64_t> all_boxes;
  const std::vector<int64_t> order = spatial_order(points.data_ptr<scalar_t>(),
                                                   cov3.data_ptr<scalar_t>(), batch, n, height,
                                                   width, cutoff, all_boxes);
  const int64_t m = int64_t(order.size());
  std::vector<Gaussian<acc_t>> gaussians(m);
  std::vector<int64_t> boxes(4 * m);
  std::vector<acc_t> values_acc(m * channels);
  {
    const scalar_t* pts = points.data_ptr<scalar_t>();
    const scalar_t* cov = cov3.data_ptr<scalar_t>();
    const scalar_t* wts = weights.data_ptr<scalar_t>();
    at::parallel_for(0, m, 2048, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t i = order[k];
        const scalar_t* p = pts + 2 * i;
        const scalar_t* c = cov + 3 * i;
        gaussians[k] = make_gaussian<acc_t>(acc_t(p[0]), acc_t(p[1]), acc_t(c[0]), acc_t(c[1]),
                                            acc_t(c[2]), acc_t(wts[i]), acc_t(cutoff));
        for (int j = 0; j < 4; ++j) boxes[4 * k + j] = all_boxes[4 * i + j];
        for (int64_t c2 = 0; c2 < channels; ++c2)
          values_acc[k * channels + c2] = acc_t(val[i * channels + c2]);
      }
    });
  }

  // Counting sort of (band, point) pairs by band, points in spatial order within a band.
  std::vector<int64_t> band_start(batch * bands + 1, 0), band_points;
  for (int pass = 0; pass < 2; ++pass) {
    std::vector<int64_t> cursor;
    if (pass == 1) cursor.assign(band_start.begin(), band_start.end() - 1);
    for (int64_t k = 0; k < m; ++k) {
      const int64_t* bx = &boxes[4 * k];
      const int64_t first = (order[k] / n) * bands;
      for (int64_t band = bx[2] / kLanes; band <= bx[3] / kLanes; ++band) {
        if (pass == 0) {
          ++band_start[first + band + 1];
        } else {
          band_points[cursor[first + band]++] = k;
        }
      }
    }
    if (pass == 0) {
      for (int64_t t = 0; t < batch * bands; ++t) band_start[t + 1] += band_start[t];
      band_points.resize(band_start.back());
    }
  }

  at::parallel_for(0, batch * bands, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc((channels + 1) * kLanes * pitch);
    const int64_t plane = kLanes * pitch;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / bands, ty0 = (t % bands) * kLanes;
      const int64_t ty1 = std::min(ty0 + kLanes, height) - 1;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t e = band_start[t]; e < band_start[t + 1]; ++e) {
        const int64_t k = band_points[e];
        const int64_t* bx = &boxes[4 * k];
        splat_point<acc_t, kC>(gaussians[k], &values_acc[k * channels], int(channels), ty0,
                               bx[0], bx[1], std::max(bx[2], ty0), std::min(bx[3], ty1), pitch,
                               acc.data());
      }
      scalar_t* out_b = out + b * channels * height * width;
      scalar_t* wout_b = wout + b * height * width;
      for (int64_t y = ty0; y <= ty1; ++y) {
        const acc_t* total = &acc[channels * plane + (y - ty0) * pitch];
        for (int64_t x = 0; x < width; ++x) wout_b[y * width + x] = scalar_t(total[x]);
        for (int64_t c = 0; c < channels; ++c) {
          const acc_t* num = &acc[c * plane + (y - ty0) * pitch];
          scalar_t* dst = out_b + (c * height + y) * width;
          for (int64_t x = 0; x < width; ++x)
            dst[x] = total[x] > acc_t(0) ? scalar_t(num[x] / total[x]) : scalar_t(fill);
        }
      }
    }
  });
}

// Gradient sums of one point, gathered over the pixels of its box, kLanes pixels of a row at a
// time. `map` holds, for the point's batch element, C + 1 planes of row stride `pitch`
// (>= W + kLanes, zero padded): G_c = g_c / W and s = <g, v> / W - dL/dW, so that dL/dw for a
// pair is <G, c_i> - s.
template <typename acc_t, int kC>
void gather_point(const Gaussian<acc_t>& g, acc_t weight, const acc_t* value, int channels,
                  int64_t x0, int64_t x1, int64_t y0, int64_t y1, const acc_t* map,
                  int64_t plane, int64_t pitch, std::vector<acc_t>& ex_buf,
                  std::vector<acc_t>& ey_buf, const std::array<bool, 4>& need, acc_t* grad_value,
                  PointGradSums<acc_t>& sums) {
  const bool need_points = need[0], need_values = need[1], need_cov = need[2],
             need_weights = need[3];
  using V = vec<acc_t>;
  const int C = kC > 0 ? kC : channels;
  const V lane = lane_index<acc_t>();
  if (g.diagonal) {  // the Gaussian's x and y factors, once per column and row of the box
    const int64_t nx = (x1 - x0 + kLanes) / kLanes * kLanes;
    const int64_t ny = (y1 - y0 + kLanes) / kLanes * kLanes;
    ex_buf.resize(nx);
    ey_buf.resize(ny);
    for (int64_t j = 0; j < nx; j += kLanes) {
      const V dx = lane + (acc_t(x0 + j) - g.mx);
      store(&ex_buf[j], exp_lanes(acc_t(-0.5) * g.ia * dx * dx));
    }
    for (int64_t j = 0; j < ny; j += kLanes) {
      const V dy = lane + (acc_t(y0 + j) - g.my);
      store(&ey_buf[j], g.density_norm * exp_lanes(acc_t(-0.5) * g.ic * dy * dy));
    }
  }
  constexpr int kMaxC = kC > 0 ? kC : 1;
  V a_gv[kMaxC] = {};
  // Any other C: the sums in memory, C rows of kLanes (a heap array of vec<T> would not be
  // aligned as its registers need).
  std::vector<acc_t> a_gv_dyn(kC > 0 ? 0 : C * kLanes, acc_t(0));
  V a_kd{}, a_kw{}, a_ux{}, a_uy{}, a_uxux{}, a_uxuy{}, a_uyuy{};
  for (int64_t y = y0; y <= y1; ++y) {
    const acc_t dy = acc_t(y) - g.my;
    const acc_t qy = g.ic * dy * dy, bdy = acc_t(2) * g.ib * dy;
    const acc_t ey = g.diagonal ? ey_buf[y - y0] : acc_t(0);
    for (int64_t xc = x0; xc <= x1; xc += kLanes) {
      const acc_t* row = map + y * pitch + xc;
      const V xs = lane + acc_t(xc);
      const V dx = xs - g.mx;
      const V m2 = g.ia * dx * dx + bdy * dx + qy;
      const auto live = (xs <= acc_t(x1)) & (m2 <= g.cut2);
      const V e = g.diagonal ? ey * load(&ex_buf[xc - x0])
                             : g.density_norm * exp_lanes(acc_t(-0.5) * m2);
      const V dens = where(live, e);
      const V w = weight * dens;
      V k = where(live, -load(row + C * plane));
      for (int c = 0; c < C; ++c) {
        const V gc = where(live, load(row + c * plane));
        k += gc * value[c];
        if (!need_values) continue;
        if constexpr (kC > 0) {
          a_gv[c] += w * gc;
        } else {
          store(&a_gv_dyn[c * kLanes], load(&a_gv_dyn[c * kLanes]) + w * gc);
        }
      }
      if (need_weights) a_kd += k * dens;
      if (need_points || need_cov) {
        const V ux = g.ia * dx + g.ib * dy, uy = g.ib * dx + g.ic * dy;
        const V kw = k * w;
        if (need_points) {
          a_ux += kw * ux;
          a_uy += kw * uy;
        }
        if (need_cov) {
          a_kw += kw;
          a_uxux += kw * ux * ux;
          a_uxuy += kw * ux * uy;
          a_uyuy += kw * uy * uy;
        }
      }
    }
  }
  for (int c = 0; c < C; ++c)
    grad_value[c] = lane_sum<acc_t>(kC > 0 ? a_gv[c] : load(&a_gv_dyn[c * kLanes]));
  sums.k_density = lane_sum<acc_t>(a_kd);
  sums.kw = lane_sum<acc_t>(a_kw);
  sums.kw_ux = lane_sum<acc_t>(a_ux);
  sums.kw_uy = lane_sum<acc_t>(a_uy);
  sums.kw_uxux = lane_sum<acc_t>(a_uxux);
  sums.kw_uxuy = lane_sum<acc_t>(a_uxuy);
  sums.kw_uyuy = lane_sum<acc_t>(a_uyuy);
}

template <typename scalar_t, int kC>
void backward_impl(const at::Tensor& grad_image, const at::Tensor* grad_weight,
                   const at::Tensor& image, const at::Tensor& weight_map, const at::Tensor& points,
                   const at::Tensor& values, const at::Tensor& cov3, const at::Tensor& weights,
                   double cutoff, const std::array<bool, 4>& need, at::Tensor& g_points,
                   at::Tensor& g_values, at::Tensor& g_cov3, at::Tensor& g_weights) {
  using acc_t = acc_type<scalar_t>;
  const int64_t batch = points.size(0), n = points.size(1), C = values.size(2);
  const int64_t height = image.size(2), width = image.size(3);
  const int64_t pitch = width + kLanes, plane = height * pitch + kLanes;

  // Per-pixel maps [B, C + 1, plane]: G = g / W and s = <g, v> / W - dL/dW (G = 0 and
  // s = -dL/dW where W == 0), rows of `pitch` columns, zero in the padding. The extra kLanes at
  // the end of each plane keep the planes off the same cache sets.
  // Left uninitialised: the loop below writes every column, padding included.
  std::unique_ptr<acc_t[]> pixel_map(new acc_t[size_t(batch) * (C + 1) * plane]);
  {
    const scalar_t* gi = grad_image.data_ptr<scalar_t>();
    const scalar_t* gw = grad_weight ? grad_weight->data_ptr<scalar_t>() : nullptr;
    const scalar_t* img = image.data_ptr<scalar_t>();
    const acc_t* wm = weight_map.data_ptr<acc_t>();  // the accumulation type
    at::parallel_for(0, batch * height, 16, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> inv(width), s(width);
      for (int64_t by = begin; by < end; ++by) {
        const int64_t b = by / height, y = by % height;
        const acc_t* wrow = wm + by * width;
        for (int64_t x = 0; x < width; ++x) {
          const acc_t total = acc_t(wrow[x]);
          inv[x] = total > acc_t(0) ? acc_t(1) / total : acc_t(0);
          s[x] = acc_t(0);
        }
        acc_t* map = &pixel_map[size_t(b) * (C + 1) * plane + y * pitch];
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* grow = gi + ((b * C + c) * height + y) * width;
          const scalar_t* vrow = img + ((b * C + c) * height + y) * width;
          acc_t* out = map + c * plane;
          for (int64_t x = 0; x < width; ++x) {
            const acc_t g = acc_t(grow[x]) * inv[x];
            out[x] = g;
            s[x] += g * acc_t(vrow[x]);
          }
          std::fill(out + width, out + pitch, acc_t(0));
        }
        acc_t* out = map + C * plane;
        for (int64_t x = 0; x < width; ++x) {
          out[x] = s[x] - (gw ? acc_t(gw[by * width + x]) : acc_t(0));
        }
        std::fill(out + width, out + pitch, acc_t(0));
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

  // Visit points in spatial order so that neighbouring work reads neighbouring pixels. Each point
  // is handled by exactly one thread: no atomics. Points whose box misses the raster keep the
  // zero gradients they were allocated with.
  std::vector<int64_t> boxes;
  const std::vector<int64_t> order =
      spatial_order(pts, cov, batch, n, height, width, cutoff, boxes);

  at::parallel_for(0, int64_t(order.size()), 256, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> ex_buf, ey_buf;
    acc_t cval[kC > 0 ? kC : 1];
    std::vector<acc_t> cval_dyn(kC > 0 ? 0 : C), gval(C);
    for (int64_t o = begin; o < end; ++o) {
      const int64_t bi = order[o], b = bi / n;
      if (o + 8 < end) {  // the inputs of points in spatial order are scattered in memory
        const int64_t next = order[o + 8];
        __builtin_prefetch(pts + 2 * next);
        __builtin_prefetch(cov + 3 * next);
        __builtin_prefetch(wts + next);
        __builtin_prefetch(val + C * next);
      }
      const scalar_t* p = pts + 2 * bi;
      const scalar_t* cv = cov + 3 * bi;
      const Gaussian<acc_t> g = make_gaussian<acc_t>(acc_t(p[0]), acc_t(p[1]), acc_t(cv[0]),
                                                     acc_t(cv[1]), acc_t(cv[2]), acc_t(wts[bi]),
                                                     acc_t(cutoff));
      const int64_t x0 = boxes[4 * bi], x1 = boxes[4 * bi + 1];
      const int64_t y0 = boxes[4 * bi + 2], y1 = boxes[4 * bi + 3];
      acc_t* value = kC > 0 ? cval : cval_dyn.data();
      for (int64_t c = 0; c < C; ++c) value[c] = acc_t(val[bi * C + c]);
      PointGradSums<acc_t> sums;
      std::fill(gval.begin(), gval.end(), acc_t(0));
      gather_point<acc_t, kC>(g, acc_t(wts[bi]), value, int(C), x0, x1, y0, y1,
                              &pixel_map[size_t(b) * (C + 1) * plane], plane, pitch, ex_buf, ey_buf,
                              need, gval.data(), sums);
      for (int64_t c = 0; c < C; ++c) gv[bi * C + c] = scalar_t(gval[c]);
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

}  // namespace

// This variant's entry points, by precision and channel slot (gmm_cpu_variant.h).
const CpuKernels kKernels = {
    {{forward_impl<float, 1>, forward_impl<float, 3>, forward_impl<float, 4>,
      forward_impl<float, 0>},
     {forward_impl<double, 1>, forward_impl<double, 3>, forward_impl<double, 4>,
      forward_impl<double, 0>}},
    {{backward_impl<float, 1>, backward_impl<float, 3>, backward_impl<float, 4>,
      backward_impl<float, 0>},
     {backward_impl<double, 1>, backward_impl<double, 3>, backward_impl<double, 4>,
      backward_impl<double, 0>}},
};
