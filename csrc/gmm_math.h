// Per-point and per-pair maths of the Gaussian-mixture interpolation, shared by the CPU kernels
// (csrc/cpu) and the CUDA kernels (csrc/cuda). Everything here is plain inline arithmetic.
//
// A point i has mean mu = (mx, my), covariance Sigma = [[sxx, sxy], [sxy, syy]] and weight a.
// Its contribution to pixel q (centre (x, y) = (column, row)) is
//   w = a / (2 pi sqrt(det Sigma)) * exp(-1/2 d^T Sigma^-1 d),  d = q - mu,
// counted only where d^T Sigma^-1 d <= cutoff^2.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define NUIR_HD __host__ __device__ __forceinline__
#else
#define NUIR_HD inline
#endif

namespace nuir {

constexpr double kTwoPi = 6.283185307179586476925286766559;

// Gaussian of one point, in the form the per-pixel loops want.
template <typename T>
struct Gaussian {
  T mx, my;        // mean, pixel units
  T ia, ib, ic;    // Sigma^-1 = [[ia, ib], [ib, ic]]
  T density_norm;  // 1 / (2 pi sqrt(det Sigma))
  T norm;          // a * density_norm
  T cut2;          // cutoff^2, may be +inf
  bool diagonal;   // sxy == 0: the exponential separates into x and y factors
};

template <typename T>
NUIR_HD Gaussian<T> make_gaussian(T mx, T my, T sxx, T sxy, T syy, T weight, T cutoff) {
  Gaussian<T> g;
  const T det = sxx * syy - sxy * sxy;
  const T inv_det = T(1) / det;
  g.mx = mx;
  g.my = my;
  g.ia = syy * inv_det;
  g.ib = -sxy * inv_det;
  g.ic = sxx * inv_det;
  g.density_norm = T(1) / (T(kTwoPi) * sqrt(det));
  g.norm = weight * g.density_norm;
  g.cut2 = cutoff * cutoff;
  g.diagonal = sxy == T(0);
  return g;
}

// Squared Mahalanobis distance of offset (dx, dy).
template <typename T>
NUIR_HD T mahalanobis2(const Gaussian<T>& g, T dx, T dy) {
  return g.ia * dx * dx + T(2) * g.ib * dx * dy + g.ic * dy * dy;
}

// Inclusive pixel index range [lo, hi] along one axis of length n covered by centre +- radius.
// Empty (lo > hi) when no pixel centre is covered, or when centre or radius is NaN. Radius may be
// +inf (cutoff = inf): then the whole axis. Every value converted to an integer lies in [0, n - 1].
NUIR_HD void pixel_range(double centre, double radius, int64_t n, int64_t& lo, int64_t& hi) {
  const double a = centre - radius;
  const double b = centre + radius;
  if (!(a <= b) || b < 0.0 || a > double(n - 1)) {  // !(a <= b): also NaN
    lo = n;
    hi = n - 1;
    return;
  }
  lo = a <= 0.0 ? 0 : int64_t(ceil(a));
  hi = b >= double(n - 1) ? n - 1 : int64_t(floor(b));
}

NUIR_HD bool is_finite(double x) { return fabs(x) <= 1.7976931348623157e308; }  // not NaN, inf

// Bounding box of the cutoff ellipse: half extents cutoff * sqrt(sxx), cutoff * sqrt(syy).
// Returns whether it holds a pixel. A point whose mean or covariance is not finite, or whose
// covariance is not positive definite, gets an empty box: it reaches no pixel, so the kernels
// never evaluate its (meaningless) Gaussian.
NUIR_HD bool cutoff_box(double mx, double my, double sxx, double sxy, double syy, double cutoff,
                        int64_t height, int64_t width, int64_t& x0, int64_t& x1, int64_t& y0,
                        int64_t& y1) {
  const bool valid = is_finite(mx) && is_finite(my) && is_finite(sxx) && is_finite(sxy) &&
                     is_finite(syy) && sxx > 0.0 && syy > 0.0 && sxx * syy - sxy * sxy > 0.0;
  if (!valid) {
    x0 = width, x1 = width - 1, y0 = height, y1 = height - 1;
    return false;
  }
  pixel_range(mx, cutoff * sqrt(sxx), width, x0, x1);
  pixel_range(my, cutoff * sqrt(syy), height, y0, y1);
  return x0 <= x1 && y0 <= y1;
}

// Backward: accumulates, for one point, the sums that its gradients are made of.
// k = dL/dw for the pair, w the pair's weight, u = Sigma^-1 d.
template <typename T>
struct PointGradSums {
  T k_density = 0;          // sum k * density          -> dL/da
  T kw_ux = 0, kw_uy = 0;   // sum k w u                -> dL/dmu
  T kw_uxux = 0, kw_uxuy = 0, kw_uyuy = 0;  // sum k w u u^T
  T kw = 0;                 // sum k w                  -> dL/dSigma
};

// dL/dSigma = 1/2 (sum k w u u^T - (sum k w) Sigma^-1), returned for the parameters
// (sxx, sxy, syy) where sxy stands for both off-diagonal entries (hence the factor 2).
template <typename T>
NUIR_HD void cov_gradient(const Gaussian<T>& g, const PointGradSums<T>& s, T& g_sxx, T& g_sxy,
                          T& g_syy) {
  g_sxx = T(0.5) * (s.kw_uxux - s.kw * g.ia);
  g_sxy = (s.kw_uxuy - s.kw * g.ib);
  g_syy = T(0.5) * (s.kw_uyuy - s.kw * g.ic);
}

}  // namespace nuir
